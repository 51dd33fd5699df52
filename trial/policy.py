"""Who may call which route: every endpoint of the app is declared here. A route that is not
declared is refused (and the test suite fails), so no route can be added without a policy.

Roles decide *whether* a route may be called; site scoping and blinding (trial.scope)
decide *what* it shows.
"""
from __future__ import annotations

PUBLIC = "public"          # no login needed
ANY = "any"                # any logged-in user

POLICY: dict[str, object] = {
    "static": PUBLIC,
    "auth.login": PUBLIC,
    "auth.logout": ANY,
    "auth.password": ANY,
    "main.home": ANY,
    "admin.users": ("admin",),
    "admin.user_new": ("admin",),
    "admin.user_edit": ("admin",),
    "admin.revoke_tokens": ("admin",),
    "grants.list": ("manager", "admin"),
    "grants.approve": ("manager",),
    "grants.reject": ("manager",),
    "admin.sites": ("admin",),
    "admin.protocol": ("admin",),
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
    "course.log_session": ("therapist",),
    "course.log_counselling": ("coordinator",),
    "course.adherence": ("coordinator", "therapist", "manager"),
    "status.event": ("coordinator",),
    "status.deviation": ("coordinator",),
    "outcomes.visits": ("coordinator", "assessor", "manager"),
    "outcomes.correct": ("coordinator", "assessor"),
    "outcomes.blinding_break": ("assessor",),
    "dashboard.grid": ("coordinator", "assessor", "manager"),
    "dashboard.recruitment_svg": ("coordinator", "therapist", "assessor", "statistician", "manager"),
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
    "api.log_session": ("therapist",),
    "api.participant_course": ("coordinator", "therapist", "manager"),
    "api.log_counselling": ("coordinator",),
    "api.create_event": ("coordinator",),
    "api.create_deviation": ("coordinator",),
    "api.report_blinding_break": ("assessor",),
    "api.correct_assessment": ("coordinator", "assessor"),
    "api.participant_visits": ("coordinator", "assessor", "manager"),
    "api.visits": ("coordinator", "assessor", "manager"),
    "api.adherence": ("coordinator", "therapist", "manager"),
    "api.notifications": ANY,
    "api.list_grants": ("manager", "admin"),
    "api.approve_grant": ("manager",),
    "api.reject_grant": ("manager",),
    "api.create_lock": ("manager",),
    "api.lift_lock": ("manager",),
    "api.list_locks": ("manager", "statistician"),
    "api.bundle": ("manager", "statistician"),
    "api.unblinding": ("manager",),
    "api.consort": ("manager", "statistician"),
    "api.consort_svg": ("manager", "statistician"),
    "api.consort_pdf": ("manager", "statistician"),
    "api.baseline_csv": ("manager", "statistician"),
    "api.summary": ("manager", "statistician"),
    "lock.locks": ("manager", "statistician"),
    "lock.bundle": ("manager", "statistician"),
    "lock.create": ("manager",),
    "lock.lift": ("manager",),
    "lock.unblind": ("manager",),
    "lock.consort": ("manager", "statistician"),
    "lock.consort_svg": ("manager", "statistician"),
    "lock.consort_pdf": ("manager", "statistician"),
    "lock.baseline_csv": ("manager", "statistician"),
}


# The query parameters each API operation declares (filled by trial.api.route): any other is
# refused with 400, so a misspelt filter is never silently ignored.
QUERY_PARAMS: dict[str, frozenset[str]] = {}
