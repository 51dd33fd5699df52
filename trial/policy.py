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
    "ops.healthz": PUBLIC,  # liveness for the load balancer; touches no database
    "ops.readyz": PUBLIC,  # readiness: each check "ok" or why not (operator's words, no data)
    "ops.metrics_text": PUBLIC,  # 404 unless the bearer token TRIAL_METRICS_TOKEN comes with it (trial.views.ops)
    "auth.login": PUBLIC,
    "auth.reset_password": PUBLIC,  # the one-time link of `trial user reset-password` is the credential
    "survey_parent.form": PUBLIC,  # a parent's survey: the link's token is the credential (trial.surveys)
    "survey_parent.done": PUBLIC,  # the thank-you page after a survey (nothing of the survey in it)
    "sso.start": PUBLIC,  # single sign-on: 404 unless configured; the provider proves who signs in
    "sso.callback": PUBLIC,  # the provider's answer (code, state), checked before anyone is signed in
    "auth.logout": ANY,
    "mfa.code": PUBLIC,  # the second step of a login: the session holds who gave the right password
    "mfa.enrol": ANY,  # two-factor enrolment (the user's own)
    "auth.password": ANY,
    "auth.language": ANY,
    "auth.digest": ANY,  # the user's own choice of the weekly digest e-mail
    "auth.keepalive": ANY,  # the idle warning's "stay signed in" (trial.websession)
    "main.home": ANY,
    "admin.users": ("admin",),
    "admin.user_new": ("admin",),
    "admin.user_edit": ("admin",),
    "admin.revoke_tokens": ("admin",),
    "grants.list": ("manager", "admin"),
    "access.review": ("manager",),  # the access review: every account, its roles, 2FA and last login
    "access.sign": ("manager",),
    "access.deactivate": ("manager",),
    "dm.queries": ("coordinator", "therapist", "assessor", "monitor", "investigator", "manager"),
    "dm.query": ("coordinator", "therapist", "assessor", "monitor", "investigator", "manager"),
    "dm.respond": ("coordinator", "therapist", "assessor"),
    "dm.close": ("manager", "monitor"),
    "dm.reopen": ("manager", "monitor"),
    "dm.raise_query": ("manager", "monitor"),
    "dm.adverse_events": ("coordinator", "monitor", "investigator", "manager"),
    "dm.new_adverse_event": ("coordinator",),
    "dm.adverse_event": ("coordinator", "monitor", "investigator", "manager"),
    "dm.follow_up": ("coordinator",),
    "dm.acknowledge": ("manager",),
    "dm.sae_report": ("manager",),
    "dm.verify": ("monitor",),
    "dm.dismiss": ANY,
    "grants.approve": ("manager",),
    "grants.reject": ("manager",),
    "admin.sites": ("admin",),
    "admin.protocol": ("admin",),
    "admin.site_new": ("admin",),
    "admin.site_edit": ("admin",),
    "audit.trail": ("manager",),
    "enrollment.participants": ("coordinator", "therapist", "assessor", "monitor", "investigator", "manager"),
    "enrollment.participant": ("coordinator", "therapist", "assessor", "monitor", "investigator", "manager"),
    "enrollment.screen": ("coordinator",),
    "enrollment.screenings": ("coordinator", "monitor", "manager"),
    "enrollment.enroll": ("coordinator",),
    "enrollment.randomize": ("coordinator",),
    "enrollment.randomization_pdf": ANY,  # as api.randomization_pdf
    "enrollment.assess": ("coordinator", "assessor"),
    "course.log_session": ("therapist",),
    "course.correct_session": ("therapist",),
    "course.log_counselling": ("coordinator",),
    "course.adherence": ("coordinator", "therapist", "monitor", "manager"),
    "course.set_goals": ("therapist",),
    "course.revise_goal": ("therapist",),
    "intervention.therapists": ("admin", "manager", "coordinator"),
    "intervention.new_credential": ("admin",),
    "intervention.fidelity_page": ("manager", "therapist"),
    "intervention.draw": ("manager",),
    "intervention.rate": ("therapist",),
    "status.event": ("coordinator",),
    "status.deviation": ("coordinator",),
    "status.withdraw": ("coordinator", "manager"),
    "outcomes.visits": ("coordinator", "assessor", "monitor", "manager"),
    "outcomes.correct": ("coordinator", "assessor"),
    "outcomes.blinding_break": ("assessor",),
    "outcomes.not_done": ("coordinator", "assessor"),
    "outcomes.randomization_errors_page": ("manager",),
    "dashboard.grid": ("coordinator", "assessor", "monitor", "manager"),
    "dashboard.overview": ("manager",),
    "dashboard.recruitment_over_time_svg": ("manager",),
    "dashboard.recruitment_svg": ("coordinator", "therapist", "assessor", "statistician", "monitor", "manager"),
    "dashboard.site": ("coordinator", "monitor", "manager"),  # a site's own coordinators and monitors (trial.dashboard)
    # JSON API
    "api.openapi": PUBLIC,
    "api.me": ANY,
    "api.sites": ANY,
    "api.protocol": ANY,
    "api.create_screening": ("coordinator",),
    "api.create_participant": ("coordinator",),
    "api.list_participants": ("coordinator", "therapist", "assessor", "statistician", "monitor", "investigator", "manager"),
    "api.get_participant": ("coordinator", "therapist", "assessor", "statistician", "monitor", "investigator", "manager"),
    "api.create_assessment": ("coordinator", "assessor"),
    "api.record_not_done": ("coordinator", "assessor"),  # the role that enters the form (trial.outcomes.notdone)
    "api.retract_not_done": ("coordinator", "assessor"),  # (the same roles: the role that enters the form)
    "api.retract_randomization_error": ("manager",),
    "api.record_randomization_error": ("manager",),
    "api.list_randomization_errors": ("manager", "statistician"),
    "api.randomize": ("coordinator",),
    # every role may ask: who may have it is decided by the allocation's visibility (trial.scope), and
    # everyone else gets the 404 of an unknown study id (a 403 would say that the child exists)
    "api.randomization_pdf": ANY,
    "api.log_session": ("therapist",),
    "api.correct_session": ("therapist",),
    "api.participant_course": ("coordinator", "therapist", "monitor", "manager"),
    "api.log_counselling": ("coordinator",),
    "api.create_event": ("coordinator",),
    "api.create_deviation": ("coordinator",),
    "api.withdraw_consent": ("coordinator", "manager"),
    "api.create_consent": ("coordinator",),
    "consent.record": ("coordinator",),
    "api.list_consents": ("coordinator", "monitor", "manager"),
    "api.consents_due": ("coordinator", "monitor", "manager"),
    # parents' surveys (issue 28): the coordinator sends, resends and revokes; the readers of consents list
    "api.send_survey": ("coordinator",),
    "api.list_surveys": ("coordinator", "monitor", "manager"),
    "api.resend_survey": ("coordinator",),
    "api.revoke_survey": ("coordinator",),
    # the parent's link: no account, the token in the path is the credential (rate-limited, trial.surveys)
    "api.survey_form": PUBLIC,
    "api.submit_survey": PUBLIC,
    "surveys.send": ("coordinator",),
    "surveys.resend": ("coordinator",),
    "surveys.revoke": ("coordinator",),
    "surveys.qr": ("coordinator",),  # the link itself: only the site's coordinator hands it to the family
    "api.report_blinding_break": ("assessor",),
    "api.correct_assessment": ("coordinator", "assessor"),
    "api.participant_visits": ("coordinator", "assessor", "monitor", "investigator", "manager"),
    "api.visits": ("coordinator", "assessor", "monitor", "manager"),
    "api.adherence": ("coordinator", "therapist", "monitor", "manager"),
    "api.therapists": ("admin", "manager", "coordinator"),
    "api.record_credential": ("admin",),
    "api.revoke_credential": ("admin",),
    "api.set_goals": ("therapist",),
    "api.revise_goal": ("therapist",),
    "api.draw_fidelity": ("manager",),
    "api.list_fidelity_draws": ("manager",),
    "api.fidelity_due": ("therapist", "manager"),
    "api.rate_fidelity": ("therapist",),
    "api.fidelity_report": ("manager",),
    "api.intervention_delivered": ("manager",),
    "api.notifications": ANY,
    "api.list_grants": ("manager", "admin"),
    "api.approve_grant": ("manager",),
    "api.reject_grant": ("manager",),
    "api.raise_query": ("manager", "monitor"),
    "api.list_queries": ("coordinator", "therapist", "assessor", "monitor", "investigator", "manager"),
    "api.get_query": ("coordinator", "therapist", "assessor", "monitor", "investigator", "manager"),
    "api.respond_query": ("coordinator", "therapist", "assessor"),
    "api.close_query": ("manager", "monitor"),
    "api.reopen_query": ("manager", "monitor"),
    "api.create_adverse_event": ("coordinator",),
    "api.follow_up_adverse_event": ("coordinator",),
    "api.acknowledge_adverse_event": ("manager",),
    "api.report_adverse_event": ("manager",),
    "api.list_adverse_events": ("coordinator", "monitor", "investigator", "manager"),
    "api.get_adverse_event": ("coordinator", "monitor", "investigator", "manager"),
    "api.verify_record": ("monitor",),
    "api.dismiss_notification": ANY,
    # the investigator's casebook sign-offs (issue 29): signed by the site's investigator; read by the
    # site's unblinded staff and the managers (trial.oversight.signoff.may_read)
    "api.sign_casebook": ("investigator",),
    "api.list_signoffs": ("coordinator", "monitor", "investigator", "manager"),
    "signoffs.worklist": ("investigator",),
    "signoffs.sign": ("investigator",),
    "api.create_lock": ("manager",),
    "api.lift_lock": ("manager",),
    "api.list_locks": ("manager", "statistician"),
    "api.get_lock": ("manager", "statistician"),
    "api.bundle": ("manager", "statistician"),
    "api.unblinding": ("manager",),
    "api.list_unblinding": ("manager", "statistician"),
    # the countersigner of an unblinding: the roles a protocol may name (trial.protocol.schema.UNBLINDING_COUNTERSIGNERS)
    "api.countersign_unblinding": ("statistician",),
    "api.withdraw_unblinding": ("manager",),
    "api.open_addendum": ("manager",),
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
    "lock.countersign_unblinding": ("statistician",),
    "lock.withdraw_unblinding": ("manager",),
    "lock.addendum": ("manager",),
    "lock.consort": ("manager", "statistician"),
    "lock.consort_svg": ("manager", "statistician"),
    "lock.consort_pdf": ("manager", "statistician"),
    "lock.baseline_csv": ("manager", "statistician"),
    # the de-identified sharing bundle of a locked, unblinded trial (issue 30): asked for by the manager,
    # downloaded by the manager and the statistician
    "api.request_sharing": ("manager",),
    "api.sharing_status": ("manager", "statistician"),
    "api.sharing_zip": ("manager", "statistician"),
    "api.sharing_review": ("manager",),  # the rarest children's list: the manager's alone, never in the bundle
    "lock.request_sharing": ("manager",),
    "lock.sharing_zip": ("manager", "statistician"),
    "lock.sharing_review": ("manager",),  # as api.sharing_review: the manager's alone
    # interim looks (issue 30): data cuts, their open (pooled) and closed (by arm: the dmc ONLY) reports
    "api.create_data_cut": ("manager",),
    "api.list_data_cuts": ("manager", "statistician", "dmc"),
    "api.get_data_cut": ("manager", "statistician", "dmc"),
    "api.open_report_pdf": ("manager", "statistician", "dmc"),
    "api.closed_report_pdf": ("dmc",),
    "api.closed_report_json": ("dmc",),
    "api.recommend": ("dmc",),
    "interim.cuts": ("manager", "statistician", "dmc"),
    "interim.create": ("manager",),
    "interim.open_report": ("manager", "statistician", "dmc"),
    "interim.closed_report": ("dmc",),
    "interim.recommendation": ("dmc",),
    "interim.recommend": ("dmc",),
    # the close-out documents (issue 29): a child's casebook for the site roles that read the child (the
    # blinded casebook for blinded readers; the 404 of an unknown child for a reader who may not see it),
    # the audit trail of a child or a site for its readers, the site archive for the manager
    "closeout.casebook_pdf": ("coordinator", "therapist", "assessor", "monitor", "manager", "investigator"),
    "api.casebook_pdf": ("coordinator", "therapist", "assessor", "monitor", "manager", "investigator"),
    "closeout.participant_audit_csv": ("manager", "investigator"),
    "closeout.participant_audit_pdf": ("manager", "investigator"),
    "api.participant_audit_csv": ("manager", "investigator"),
    "closeout.site_audit_csv": ("manager", "investigator"),
    "closeout.site_audit_pdf": ("manager", "investigator"),
    "closeout.archives_page": ("manager",),
    "closeout.archive_zip": ("manager",),
}


# The endpoints whose path holds a credential (a parent's survey link): their answers tell the browser
# to send no Referer on (trial.http), so that the link never reaches another site's logs.
NO_REFERRER: set[str] = {"api.survey_form", "api.submit_survey", "survey_parent.form"}


# The data monitoring committee (role dmc, never combined with another role) reaches these and nothing
# else (trial.http): the data cuts' list, their open and closed reports, its recommendation, and its
# own account (signing out, its password, language, two-factor enrolment, the session clock, who it
# is). Every other route, ANY ones included, is refused to it (403; the home page sends it to the
# cuts, its home page): no live page, no participant, no identifier, no audit trail, no team page.
DMC_REACHES = frozenset({
    "api.list_data_cuts", "api.get_data_cut", "api.open_report_pdf", "api.closed_report_pdf", "api.closed_report_json",
    "api.recommend", "interim.cuts", "interim.open_report", "interim.closed_report", "interim.recommendation",
    "interim.recommend",
    "auth.logout", "auth.password", "auth.language", "auth.keepalive", "mfa.enrol", "api.me", "static",
})


# What a user of a role in TRIAL_MFA_ROLES who has not enrolled may reach (trial.http): the
# enrolment page, logging out, the session clock of the idle warning and the static files; every
# other page sends them to the enrolment page.
BEFORE_ENROLMENT = frozenset({"mfa.enrol", "auth.logout", "auth.keepalive", "static"})


# The query parameters each API operation declares (filled by trial.api.route): any other is
# refused with 400, so a misspelt filter is never silently ignored.
QUERY_PARAMS: dict[str, frozenset[str]] = {}
