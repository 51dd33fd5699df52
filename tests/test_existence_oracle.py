"""No existence oracle: a record the caller may not see answers exactly as a record that does not
exist -- the same status and the same bytes -- on every route of the app that takes an id or a
study id (web and API, every method), for staff of another site (coordinators, a monitor, a
therapist, an assessor) and, for a blinded assessor, for the records of its own site that reveal
an arm (sessions, goals, adverse events, the queries on them). Ids sent in a body or a query
string (a screening to enroll, a child to raise a query on, the record a query or a verification
is about) are crawled the same way. A route with an id parameter this test does not know how to
fill fails the suite."""
from __future__ import annotations

import datetime as dt
import re

import pytest
from sqlalchemy import select

from tests.helpers import CLI, PASSWORD, backdate_randomization, page_body, randomized_before
from trial.course.models import ChildGoal, TherapySession
from trial.course.service import log_session, set_goals
from trial.credentials.models import Credential
from trial.enrollment.service import enroll
from trial.notify.models import Notification
from trial.notify.service import notify
from trial.outcomes import notdone
from trial.participants.models import Assessment
from trial.policy import ANY, POLICY, PUBLIC
from trial.queries import service as queries
from trial.safety import service as safety
from trial.surveys import service as surveys
from trial.timeline import today

SEED = bytes(range(32))
R = today() - dt.timedelta(days=120)
MISSING_INT = 987_654
# the parameters that name a record, and the values of a record that does not exist
MISSING = {"study_id": "{site}-9876", "screening_id": MISSING_INT, "assessment_id": MISSING_INT,
           "session_id": MISSING_INT, "goal_id": MISSING_INT, "ae_id": MISSING_INT, "query_id": MISSING_INT,
           "notification_id": MISSING_INT,
           "ref": "no-such-reference-at-all", "user_id": MISSING_INT, "credential_id": MISSING_INT,
           "lock_id": MISSING_INT, "grant_id": MISSING_INT, "survey_id": MISSING_INT,
           "not_done_id": MISSING_INT}
# parameters that name no record (the protocol's words; the language of a parent's thank-you page)
FIXED = {"instrument": "ados2", "language": "de"}
# a one-time link is its own credential; static files; a site's code (every user reads the list of
# sites: GET /sites), whose pages refuse another site's staff with 403
NOT_AN_ID = {"token", "filename", "code"}
# who asks, and the site whose records it may not see
CALLERS = {"coordinator_no": "AT01", "coordinator": "NO01", "monitor": "NO01", "therapist": "NO01", "assessor": "NO01"}


def iso(d: dt.date) -> str:
    return d.isoformat()


def _child(world, db, site):
    return randomized_before(world, db, R, site)


def _records(world, db, site: str, music) -> dict:
    """A site's records of every kind a route names: its music-therapy child, with a session, a
    goal, a serious adverse event, a query on its assessment and one on its session; a screening
    not yet enrolled."""
    log_session(db, CLI, music.study_id, {"held_on": iso(R + dt.timedelta(days=3)), "attendance": "attended",
                                          "minutes": 30, "techniques": ["songs"], "engagement": 3})
    set_goals(db, CLI, music.study_id, {"goals": [{"goal": "eye_contact"}]})
    ae = safety.record(db, CLI, music.study_id, {
        "term": "bruise", "onset": iso(R + dt.timedelta(days=4)), "severity": "mild", "serious": True,
        "seriousness": ["other_important"], "relatedness": "possible", "outcome": "recovering"})
    assessment = db.execute(select(Assessment.id).where(Assessment.participant_id == music.id)).scalar_one()
    session = db.execute(select(TherapySession.id).where(TherapySession.participant_id == music.id)).scalar_one()
    manager = world.users["manager"]
    q = queries.raise_query(db, manager, {"study_id": music.study_id, "text": "Check RRB, please.",
                                          "on": {"kind": "assessment", "id": assessment, "field": "rrb"}})
    hidden = queries.raise_query(db, manager, {"study_id": music.study_id, "text": "Check the minutes, please.",
                                               "on": {"kind": "session", "id": session}})
    # a parent's survey (issue 28): the baseline questionnaire of a child enrolled today (its window open)
    enrolled = world.screen(site, screened_on=iso(today() - dt.timedelta(days=3)))
    p = enroll(db, CLI, {"screening_id": enrolled.id, "consent_date": iso(today() - dt.timedelta(days=2)),
                         "date_of_birth": iso(today() - dt.timedelta(days=5 * 365)), "sex": "female"})
    survey, _ = surveys.send_survey(db, CLI, p.study_id, {"visit": "baseline", "instrument": "srs2", "language": "de"})
    # a form recorded as not done (issue 29), to retract
    nd = notdone.record_not_done(db, CLI, music.study_id, {"visit": "month2", "instrument": "srs2", "reason": "refused"})
    sc = world.screen(site, screened_on=iso(today() - dt.timedelta(days=1)))
    db.commit()
    return {"study_id": music.study_id, "screening_id": sc.id, "assessment_id": assessment, "session_id": session,
            "goal_id": db.execute(select(ChildGoal.id).where(ChildGoal.participant_id == music.id)).scalar_one(),
            "ae_id": ae.id, "query_id": q.id, "session_query_id": hidden.id,
            "query_ref": f"{site}-Q{q.number}", "session_query_ref": f"{site}-Q{hidden.number}",
            "survey_id": survey.id, "not_done_id": nd.id}


@pytest.fixture()
def sites(world, db):
    """Both sites' records, and what no caller here may see of the other users' (a manager's
    notification, the therapist's credential, the therapist's account)."""
    world.open(SEED)
    kids: dict = {}
    while not {("AT01", "music"), ("AT01", "usual"), ("NO01", "music")} <= set(kids):
        site = "AT01" if ("AT01", "music") not in kids or ("AT01", "usual") not in kids else "NO01"
        p, arm = _child(world, db, site)
        kids.setdefault((site, "usual" if arm == "usual" else "music"), p)
    backdate_randomization(db, dt.datetime.combine(R, dt.time(10, 0)))
    out = {site: _records(world, db, site, kids[(site, "music")]) for site in ("AT01", "NO01")}
    notify(db, [world.users["manager"].id], "Only for the manager.")
    db.commit()
    note = db.execute(select(Notification).where(Notification.user_id == world.users["manager"].id)).scalars().first()
    others = {"notification_id": note.id, "ref": note.ref, "user_id": world.users["therapist"].id,
              "credential_id": db.execute(select(Credential.id)).scalars().first()}
    for records in out.values():
        records.update(others)
    out["usual"] = kids[("AT01", "usual")].study_id
    return out


def day(n: int) -> str:
    return iso(R + dt.timedelta(days=n))


SAE_REPORT = {"reported_to": "ethics_committee", "reported_at": f"{day(5)}T09:30:00Z", "reference": "EC-1"}
# a body each API write accepts up to the record's lookup (fields the service checks afterwards may be wrong)
API_BODIES = {
    "api.acknowledge_adverse_event": SAE_REPORT, "api.report_adverse_event": SAE_REPORT,
    "api.follow_up_adverse_event": {"on": day(6), "outcome": "recovering", "text": "Home."},
    "api.correct_assessment": {"values": {"rrb": 3}, "reason": "typo"},
    "api.revise_goal": {"description": "looks up at the drum", "reason": "made concrete"},
    "api.create_adverse_event": {"term": "Otitis", "onset": day(7), "severity": "mild", "serious": False,
                                 "relatedness": "not_related", "outcome": "recovering"},
    "api.create_assessment": {"visit": "month2", "instrument": "ados2", "performed_on": day(61),
                              "values": {"social_affect": 10, "rrb": 3, "css": 5}},
    "api.report_blinding_break": {"description": "the parent mentioned the drums"},
    "api.log_counselling": {"held_on": day(8)},
    "api.create_deviation": {"on": day(9), "category": "other", "description": "late visit"},
    "api.create_event": {"type": "lost_to_follow_up", "on": day(10), "reason": "moved"},
    "api.set_goals": {"goals": [{"goal": "turn_taking"}]},
    "api.log_session": {"held_on": day(11), "attendance": "attended", "minutes": 30, "techniques": ["songs"],
                        "engagement": 3},
    "api.verify_record": {"on": {"kind": "participant"}},
    "api.close_query": {"text": "fine"}, "api.reopen_query": {"text": "again"},
    "api.respond_query": {"text": "Checked."},
    "api.retract_not_done": {"reason": "the form was done after all"},
    "api.correct_session": {"minutes": 45, "reason": "the paper log says 45"},
    "api.rate_fidelity": {"scores": {"follows_lead": 4, "attunement": 4, "affect_sharing": 5, "joint_attention": 3,
                                     "reciprocity": 4}},
}
WEB_FORMS = {
    "dm.acknowledge": {"reported_to": "authority", "reported_at": f"{day(5)}T11:15", "reference": "X-1"},
    "dm.sae_report": {"reported_to": "authority", "reported_at": f"{day(5)}T11:15", "reference": "X-1"},
    "dm.follow_up": {"on": day(6), "outcome": "recovering", "text": "Home."},
    "outcomes.correct": {"v_social_affect": "13", "v_rrb": "4", "v_css": "6", "reason": "typo"},
    "course.revise_goal": {"description": "looks up", "reason": "made concrete", "active": "y"},
    "course.correct_session": {"held_on": day(3), "attendance": "attended", "minutes": "45", "techniques": "songs",
                               "engagement": "", "note": "", "reason": "the log says 45"},
    "dm.new_adverse_event": {"term": "Otitis", "onset": day(7), "severity": "mild", "relatedness": "not_related",
                             "expectedness": "", "outcome": "recovering"},
    "enrollment.assess": {"visit": "month2", "performed_on": day(61), "v_social_affect": "10", "v_rrb": "3",
                          "v_css": "5", "allocation_guess": "unsure", "guess_confidence": "2"},
    "outcomes.blinding_break": {"reported_on": iso(today()), "description": "the drums"},
    "course.log_counselling": {"held_on": day(8), "attended": "y"},
    "status.deviation": {"category": "other", "on": day(9), "description": "late visit"},
    "status.event": {"type": "lost_to_follow_up", "on": day(10), "reason": "moved"},
    "course.set_goals": {"pick_turn_taking": "y", "describe_turn_taking": ""},
    "dm.raise_query": {"kind": "participant", "text": "Is the birth date right?"},
    "course.log_session": {"held_on": day(11), "attendance": "attended", "minutes": "30", "techniques": "songs",
                           "engagement": "4", "note": ""},
    "dm.verify": {"kind": "participant"},
    "enrollment.randomize": {"confirm": "y", "idempotency_key": "oracle"},
    "dm.respond": {"text": "Checked."}, "dm.close": {"text": "fine"}, "dm.reopen": {"text": "again"},
    "enrollment.enroll": {"consent_date": iso(today()), "date_of_birth": iso(today() - dt.timedelta(days=5 * 365)),
                          "sex": "male"},
    "intervention.rate": {"s_follows_lead": "4", "s_attunement": "4", "s_affect_sharing": "5", "s_joint_attention": "3",
                          "s_reciprocity": "4"},
}


def _id_params(rule) -> set[str]:
    return set(rule.arguments) - set(FIXED) - NOT_AN_ID


def _routes(app):
    for rule in app.url_map.iter_rules():
        if _id_params(rule) and not set(rule.arguments) & NOT_AN_ID:
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                yield rule, method


def _admits(endpoint: str, who: str, roles) -> bool:
    policy = POLICY[endpoint]
    return policy in (PUBLIC, ANY) or bool({r for r, _ in roles[who]} & set(policy))


def _value(param: str, seen, site: str):
    """The value naming a record that does not exist, of the same form as ``seen``."""
    if param == "study_id":
        return MISSING["study_id"].format(site=site)
    if param == "query_id" and isinstance(seen, str):  # a query's number at its site (the pages' addresses)
        return f"{site}-Q9876"
    return MISSING[param]


class Caller:
    """A user as a browser (logged in) and as an API client (its token)."""

    def __init__(self, app, world, who):
        self.world, self.who = world, who
        self.web = app.test_client()
        assert self.web.post("/login", data={"email": f"{who}@example.org", "password": PASSWORD}).status_code == 302
        self.web.get("/")  # what the login flashed is shown there

    def call(self, method: str, url: str, body=None, web_form=None):
        if url.startswith("/api/"):
            r = self.world.api(method, url[len("/api/v1"):], self.who, json=body)
            return r.status_code, r.get_data()
        r = self.web.open(url, method=method, data=web_form or {}, follow_redirects=True)
        return r.status_code, page_body(r)


def _answer(caller, rule, method, values: dict, typed: str):
    """The answer to one request, with the value typed in the address put back as <typed> where a
    page repeats the address it was asked (a form's action, a redirect back to the same page)."""
    url = rule.build(values, append_unknown=False)[1]
    status, body = caller.call(method, url, API_BODIES.get(rule.endpoint), WEB_FORMS.get(rule.endpoint))
    body = body.replace(url.encode(), b"<url>")
    return status, body.replace(typed.encode(), b"<typed>") if isinstance(typed, str) else body


def _compare(caller, rule, method, param, seen_value, site, others: dict) -> str | None:
    """None when the record and a record that does not exist answer alike, else what differs. A
    route's other id (a child's record under the child's address) names the hidden site's own (or
    none, on a route none of the callers reaches: a randomization error's, the manager's)."""
    base = {a: FIXED[a] if a in FIXED else others.get(a, MISSING_INT) for a in rule.arguments}
    missing = _value(param, seen_value, site)
    a = _answer(caller, rule, method, {**base, param: seen_value}, seen_value)
    b = _answer(caller, rule, method, {**base, param: missing}, missing)
    if a == b:
        return None
    at = next((i for i, (x, y) in enumerate(zip(a[1], b[1])) if x != y), min(len(a[1]), len(b[1])))
    return (f"{caller.who} {method} {rule.rule} {param}={seen_value}: {a[0]} {a[1][max(0, at - 60):at + 100]!r} "
            f"vs missing: {b[0]} {b[1][max(0, at - 60):at + 100]!r}")


def _hidden_values(sites: dict, who: str, param: str, rule) -> list:
    """The records of ``param``'s kind that ``who`` may not see (a page's address names a query by
    its number at its site too)."""
    other = sites[CALLERS[who]]
    if param == "query_id":
        values = [other["query_id"], other["session_query_id"]]
        if not rule.rule.startswith("/api/"):
            values += [other["query_ref"], other["session_query_ref"]]
    else:
        values = [other[param]] if param in other else []
    if who == "assessor" and param in ("session_id", "goal_id", "ae_id"):
        values.append(sites["AT01"][param])  # its own site's, which reveal an arm
    if who == "assessor" and param == "query_id":
        values.append(sites["AT01"]["session_query_id"])
        if not rule.rule.startswith("/api/"):
            values.append(sites["AT01"]["session_query_ref"])
    if who == "therapist" and param == "study_id":
        values.append(sites["usual"])  # a therapist sees the children of the music-therapy arms only
    return values


def test_every_route_with_an_id_answers_a_hidden_record_as_a_missing_one(app, world, sites):
    from tests.helpers import ROLES
    differences, checked, unknown = [], 0, set()
    for who, site in CALLERS.items():
        caller = Caller(app, world, who)
        for rule, method in _routes(app):
            for param in sorted(_id_params(rule)):
                if param not in MISSING:
                    if _admits(rule.endpoint, who, ROLES):
                        unknown.add(f"{rule.rule} ({param})")
                    continue
                for value in _hidden_values(sites, who, param, rule):
                    checked += 1
                    if (diff := _compare(caller, rule, method, param, value, site, sites[site])) is not None:
                        differences.append(diff)
    assert not unknown, f"routes with a parameter this test cannot fill: {sorted(unknown)}"
    assert checked > 150, checked
    assert not differences, "\n".join(differences)


# ids sent in a body or a query string: (who, method, url, body or form); "{x}" is the record that
# ``who`` may not see (or one that does not exist), "{own}" the caller's own site's child
IN_BODIES = [
    ("coordinator", "POST", "/api/v1/participants", {"screening_id": "{screening_id}", "consent_date": day(-20),
                                                     "date_of_birth": day(-5 * 365), "sex": "male"}),
    ("coordinator_no", "POST", "/api/v1/participants", {"screening_id": "{screening_id}", "consent_date": day(-20),
                                                        "date_of_birth": day(-5 * 365), "sex": "male"}),
    ("monitor", "POST", "/api/v1/queries", {"study_id": "{study_id}", "on": {"kind": "participant"}, "text": "Why?"}),
    ("monitor", "GET", "/api/v1/queries?study_id={study_id}", None),
    ("coordinator", "GET", "/api/v1/queries?study_id={study_id}", None),
    ("assessor", "GET", "/api/v1/queries?study_id={study_id}", None),
    *[("monitor", "POST", "/api/v1/queries", {"study_id": "{own}", "on": {"kind": kind, "id": f"{{{param}}}"},
                                              "text": "Why?"})
      for kind, param in (("assessment", "assessment_id"), ("session", "session_id"), ("adverse_event", "ae_id"),
                          ("screening", "screening_id"))],
    *[("monitor", "POST", "/api/v1/participants/{own}/verifications", {"on": {"kind": kind, "id": f"{{{param}}}"}})
      for kind, param in (("assessment", "assessment_id"), ("session", "session_id"), ("adverse_event", "ae_id"))],
    ("monitor", "GET", "/participants/{own}/queries/new?kind=assessment&id={assessment_id}", None),
    ("monitor", "GET", "/participants/{own}/queries/new?kind=session&id={session_id}", None),
    ("monitor", "POST", "/participants/{own}/queries/new?kind=assessment&id={assessment_id}",
     {"kind": "assessment", "target_id": "{assessment_id}", "text": "Why?"}),
    ("monitor", "POST", "/participants/{own}/verify", {"kind": "assessment", "target_id": "{assessment_id}"}),
]


def _fill(template, values: dict):
    """The template with each "{name}" replaced (a whole "{name}" value keeps the value's type)."""
    if isinstance(template, dict):
        return {k: _fill(v, values) for k, v in template.items()}
    if isinstance(template, str):
        whole = re.fullmatch(r"\{(\w+)\}", template)
        if whole:
            return values[whole[1]]
        return re.sub(r"\{(\w+)\}", lambda m: str(values[m[1]]), template)
    return template


@pytest.mark.parametrize("case", range(len(IN_BODIES)))
def test_ids_in_bodies_and_query_strings_answer_a_hidden_record_as_a_missing_one(app, world, sites, case):
    who, method, url, body = IN_BODIES[case]
    other = sites[CALLERS[who]]
    own = sites["NO01" if CALLERS[who] == "AT01" else "AT01"]["study_id"]
    caller = Caller(app, world, who)
    answers = []
    for values in (dict(other, own=own), {**{k: MISSING_INT for k in other if k.endswith("_id")},
                                          "study_id": MISSING["study_id"].format(site=CALLERS[who]), "own": own}):
        if url.startswith("/api/"):
            r = world.api(method, _fill(url, values)[len("/api/v1"):], who, json=_fill(body, values))
            answers.append((r.status_code, r.get_data()))
        else:
            form = {k: str(v) for k, v in _fill(body or {}, values).items()}
            answers.append(caller.call(method, _fill(url, values), web_form=form))
    assert answers[0] == answers[1], (who, method, url, answers)
    assert answers[0][0] in (200, 404), answers[0]
