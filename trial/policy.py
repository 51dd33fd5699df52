"""Who may call which route: every endpoint of the app is declared here. A route that is not
declared is refused (and the test suite fails), so no route can be added without a policy.

Roles decide *whether* a route may be called; site scoping and blinding (trial.auth.scope)
decide *what* it shows.
"""
from __future__ import annotations

PUBLIC = "public"          # no login needed
ANY = "any"                # any logged-in user
ALL_ROLES = ("coordinator", "therapist", "assessor", "statistician", "manager", "admin")
CLINICAL = ("coordinator", "therapist", "assessor", "statistician", "manager")

POLICY: dict[str, object] = {
    "static": PUBLIC,
    "auth.login": PUBLIC,
    "auth.logout": ANY,
    "auth.password": ANY,
    "main.home": ANY,
    "admin.users": ("admin",),
    "admin.user_new": ("admin",),
    "admin.user_edit": ("admin",),
    "admin.sites": ("admin",),
    "admin.site_new": ("admin",),
    "admin.site_edit": ("admin",),
    "audit.trail": ("manager",),
    "enrollment.participants": ("coordinator", "therapist", "assessor", "manager"),
    "enrollment.participant": ("coordinator", "therapist", "assessor", "manager"),
    "enrollment.screen": ("coordinator",),
    "enrollment.screenings": ("coordinator", "manager"),
    "enrollment.enroll": ("coordinator",),
    "enrollment.randomize": ("coordinator",),
    "enrollment.assess": ("coordinator", "assessor"),
    # JSON API
    "api.openapi": PUBLIC,
    "api.me": ANY,
    "api.sites": ANY,
    "api.protocol": ANY,
    "api.create_screening": ("coordinator",),
    "api.create_participant": ("coordinator",),
    "api.list_participants": ("coordinator", "therapist", "assessor", "statistician", "manager"),
    "api.get_participant": ("coordinator", "therapist", "assessor", "statistician", "manager"),
    "api.create_assessment": ("coordinator", "assessor"),
    "api.randomize": ("coordinator",),
}
