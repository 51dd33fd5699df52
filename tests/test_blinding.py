"""Blinding, proved: an assessor visits every route the role may reach (web and API) and nothing
reveals an allocation; for two children in different arms every per-child page and response is
identical once IDs are normalized. A route reachable by assessors that this test does not cover
fails the suite."""
from __future__ import annotations

import datetime as dt
import re
import subprocess

import pytest
from babel.dates import format_date
from sqlalchemy import text

from tests.helpers import CLI, PASSWORD, backdate_randomization, page_body
from trial.course.service import log_counselling, log_session, set_goals
from trial.outcomes.service import record_assessment
from trial.policy import ANY, POLICY, PUBLIC
from trial.queries import service as queries
from trial.safety import service as safety
from trial.status.service import record_event

SEED = bytes(range(32))
TODAY = dt.date.today()
R = TODAY - dt.timedelta(days=200)          # both children randomized on this day
SESSION_DAYS = [R + dt.timedelta(days=d) for d in (2, 9, 16, 23, 30)]

# Every route an assessor may reach, and how to build its URL for one child ("{id}" = study ID,
# "{aid}" = an assessment of that child). General routes take no child.
PER_CHILD_WEB = {
    "enrollment.participant": "/participants/{id}",
    "enrollment.assess": "/participants/{id}/assess/ados2",
    "outcomes.correct": "/assessments/{aid}/correct",
    "outcomes.blinding_break": "/participants/{id}/blinding-break",
    "outcomes.not_done": "/participants/{id}/not-done?visit=month5&instrument=ados2",
    "closeout.casebook_pdf": "/participants/{id}/casebook.pdf",  # the blinded casebook (tests/test_casebook.py)
}
PER_CHILD_API = {
    "api.get_participant": "/participants/{id}",
    "api.participant_visits": "/participants/{id}/visits",
    "api.casebook_pdf": "/participants/{id}/casebook.pdf",
}
PER_QUERY = {"dm.query": "/queries/{qid}", "api.get_query": "/queries/{qid}"}
# per-child routes an assessor may call that answer it, for every child, as for an unknown one (404)
REFUSED_PER_CHILD = {"enrollment.randomization_pdf": "/participants/{id}/randomization.pdf",
                     "api.randomization_pdf": "/api/v1/participants/{id}/randomization.pdf"}
GENERAL_WEB = {
    "main.home": "/", "enrollment.participants": "/participants", "outcomes.visits": "/visits?kind={kind}",
    "dm.queries": "/queries?status={status}",
    "dashboard.grid": "/dashboard/", "dashboard.recruitment_svg": "/dashboard/recruitment.svg",
    "auth.password": "/password", "auth.language": "/language", "auth.login": "/login", "auth.logout": None, "static": None,
    "auth.reset_password": "/reset-password/no-such-link",  # a one-time link: nothing of the trial, 404 when unknown
    "auth.keepalive": "/session/alive",  # the session's clock (the idle warning)
    # single sign-on, not configured here: 404 (tests/test_sso.py runs it against a real provider)
    "sso.start": "/login/sso", "sso.callback": "/login/sso/callback",
    # two-factor sign-in: the user's own enrolment page (a new secret, nothing of the trial) and the
    # code step of a login, which sends a reader with no login waiting for a code to the login page
    "mfa.enrol": "/account/mfa", "mfa.code": "/login/code",
    # the operators' probes (issue 27): liveness, readiness, and the metrics (404 without their token)
    "ops.healthz": "/healthz", "ops.readyz": "/readyz", "ops.metrics_text": "/metrics",
    # a parent's survey (issue 28): the link is the credential, 404 when unknown; the thank-you page
    "survey_parent.form": "/s/no-such-link", "survey_parent.done": "/s/done/de",
}
NOT_HERE = {"auth.reset_password", "sso.start", "sso.callback", "ops.metrics_text", "survey_parent.form"}  # general pages that answer 404 to the assessor
SENT_ON = {"mfa.code"}  # general pages that redirect the assessor (302)
GENERAL_API = {
    "api.me": "/me", "api.sites": "/sites", "api.protocol": "/protocol", "api.openapi": "/openapi.json",
    "api.list_participants": "/participants", "api.visits": "/visits?kind={kind}", "api.notifications": "/notifications",
    "api.list_queries": "/queries?status={status}",
    # a parent's survey (issue 28): the link's token is the credential, 404 when unknown
    "api.survey_form": "/surveys/no-such-link",
}
API_NOT_HERE = {"api.survey_form"}  # general API routes that answer 404 to the assessor
# the parent's answers through an unknown link: 404, nothing of the trial (tests/test_survey_api.py
# answers a real link)
PARENT_WRITES = {"api.submit_survey": "/surveys/no-such-link"}
WRITE_ONLY = {"api.create_assessment", "api.record_not_done", "api.retract_not_done", "api.report_blinding_break", "api.correct_assessment", "api.respond_query",
              "dm.respond", "api.dismiss_notification", "dm.dismiss", "auth.digest"}
PROTOCOL_ROUTES = {"api.protocol", "api.openapi"}  # the protocol itself names the arms; it says nothing of a child


def assessor_routes(app):
    out = {}
    for rule in app.url_map.iter_rules():
        pol = POLICY[rule.endpoint]
        if pol in (PUBLIC, ANY) or "assessor" in pol:
            out[rule.endpoint] = rule
    return out


def test_every_assessor_route_is_covered(app):
    covered = (set(PER_CHILD_WEB) | set(PER_CHILD_API) | set(GENERAL_WEB) | set(GENERAL_API) | WRITE_ONLY | set(PER_QUERY)
               | set(REFUSED_PER_CHILD) | set(PARENT_WRITES))
    missing = sorted(set(assessor_routes(app)) - covered)
    assert not missing, f"routes an assessor can reach but the blinding test does not cover: {missing}"


@pytest.fixture()
def trial(world, db):
    world.open(SEED)
    children = {}
    while len({"usual", "music"} & set(children)) < 2:
        sc = world.screen(screened_on=(R - dt.timedelta(days=30)).isoformat())
        from trial.enrollment.service import enroll
        p = enroll(db, CLI, {"screening_id": sc.id, "consent_date": (R - dt.timedelta(days=25)).isoformat(),
                             "date_of_birth": (R - dt.timedelta(days=5 * 365)).isoformat(), "sex": "female"})
        for ins, values in (("ados2", {"social_affect": 12, "rrb": 4, "css": 6}), ("srs2", {"total_t": 70})):
            record_assessment(db, CLI, p.study_id, {"visit": "baseline", "instrument": ins, "values": values,
                                                    "performed_on": (R - dt.timedelta(days=5)).isoformat()})
        db.commit()
        arm = world.randomize(p, p.study_id).allocation.arm
        children.setdefault("usual" if arm == "usual" else "music", p)
    backdate_randomization(db, dt.datetime.combine(R, dt.time(10, 0)))
    music, usual = children["music"], children["usual"]
    for day in SESSION_DAYS:
        log_session(db, CLI, music.study_id, {"held_on": day.isoformat(), "attendance": "attended", "minutes": 30,
                                              "techniques": ["songs"], "engagement": 4, "note": "played drums together"})
    set_goals(db, CLI, music.study_id, {"goals": [{"goal": "eye_contact", "description": "looks up when the drum pauses"}]})
    for p in (music, usual):
        log_counselling(db, CLI, p.study_id, {"held_on": (R + dt.timedelta(days=20)).isoformat()})
        for visit, day in (("month2", 61), ("month5", 152)):
            record_assessment(db, CLI, p.study_id, {"visit": visit, "instrument": "ados2",
                                                    "performed_on": (R + dt.timedelta(days=day)).isoformat(),
                                                    "values": {"social_affect": 10, "rrb": 3, "css": 5},
                                                    "allocation_guess": "unsure", "guess_confidence": 2})
    ev = record_event(db, CLI, music.study_id, {"type": "discontinued_intervention", "on": (R + dt.timedelta(days=40)).isoformat(),
                                                "reason": "family moved"})
    # queries: one on each child's ADOS-2 (assessors answer those), and on the music child's
    # session, intervention event and adverse event (an assessor must not learn they exist)
    manager = world.users["manager"]
    visible = {}
    for name, p in (("music", music), ("usual", usual)):
        a = db.execute(text("SELECT id FROM assessment WHERE participant_id = :p AND visit = 'month2' AND instrument = 'ados2'"),
                       {"p": p.id}).scalar()
        visible[name] = queries.raise_query(db, manager, {"study_id": p.study_id, "on": {"kind": "assessment", "id": a, "field": "rrb"},
                                                          "text": "Please check RRB against the worksheet."}).id
    sess = db.execute(text("SELECT id FROM therapy_session WHERE participant_id = :p ORDER BY id"), {"p": music.id}).scalar()
    ae = safety.record(db, world.users["coordinator"], music.study_id, {
        "term": "bruised hand from a drum during a session", "onset": (R + dt.timedelta(days=9)).isoformat(),
        "severity": "mild", "serious": True, "seriousness": ["other_important"], "relatedness": "possible", "outcome": "recovering"})
    hidden = [queries.raise_query(db, manager, {"study_id": music.study_id, "on": on, "text": f"hidden query {i}: drums?"}).id
              for i, on in enumerate(({"kind": "session", "id": sess}, {"kind": "event", "id": ev.id},
                                      {"kind": "adverse_event", "id": ae.id}))]
    db.commit()
    return {"music": music, "usual": usual, "world": world, "visible": visible, "hidden": hidden}


def normalize(body: str, p) -> str:
    body = body.replace(p.study_id, "<ID>")
    body = re.sub(r"/assessments/\d+/", "/assessments/<n>/", body)
    body = re.sub(r"assessment-\d+", "assessment-<n>", body)  # the anchor of an assessment's row
    body = re.sub(r"/queries/\d+", "/queries/<n>", body)
    body = re.sub(r"\b[A-Z]{2}\d{2}-Q\d+\b", "<query>", body)  # a query's number at its site (AT01-Q3)
    body = re.sub(r'"number":\s*\d+', '"number": <n>', body)
    body = re.sub(r'(/queries/<n>">)\d+', r"\1<n>", body)
    body = re.sub(r"Query \d+", "Query <n>", body)
    body = re.sub(r'(name="target_id" value=")\d+', r"\1<n>", body)
    body = re.sub(r'"id":\s*\d+', '"id": <n>', body)
    body = re.sub(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z?", "<ts>", body)
    body = re.sub(r'(name="csrf_token"[^>]*?value=")[^"]+', r"\1<csrf>", body)  # time-signed per render
    return body


FORBIDDEN_WORDS = ["Music therapy, 1 session per week", "Music therapy, 3 sessions per week", "Enhanced usual care",
                   '"arm"', "arm_label", "arm code",
                   "sessions_per_week", "attended", "no_show", "played drums", "discontinued", "not received",
                   "not_received", "dose", "<h2>Course", "<dt>Allocation", "Parent counselling", "outside course",
                   "hidden query", "drum", "adverse event", "Adverse event", "the session of", "Sessions",
                   "Individual goals", "Eye contact", "eye_contact", "Fidelity", "fidelity"]


def page_text(r) -> str:
    """A page's text; a PDF's (the blinded casebook) as pdftotext reads it, with its print and change
    times (the site's clock) and its digest normalized."""
    if r.mimetype != "application/pdf":
        return r.get_data(as_text=True)
    text = subprocess.run(["pdftotext", "-raw", "-", "-"], input=r.data, capture_output=True, check=True).stdout.decode()
    text = re.sub(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} \S+", "<ts>", text)
    return re.sub(r"\b[0-9a-f]{64}\b", "<digest>", text)


def assert_no_leak(body: str, where: str):
    for word in FORBIDDEN_WORDS:
        assert word not in body, f"{where} shows {word!r}"
    for day in SESSION_DAYS:
        assert day.isoformat() not in body, f"{where} shows a session date {day}"
        # the pages show days by Babel's locale data (English without Accept-Language)
        assert format_date(day, "medium", locale="en") not in body, f"{where} shows a session date {day}"
    assert not re.search(r'"(low|high|usual)"', body), f"{where} names an arm key"


def assessor_client(app):
    c = app.test_client()
    assert c.post("/login", data={"email": "assessor@example.org", "password": PASSWORD}).status_code == 302
    return c


def aid(db, p):
    return db.execute(text("SELECT id FROM assessment WHERE participant_id = :p AND visit = 'month2'"), {"p": p.id}).scalar()


def test_assessor_pages_reveal_nothing_and_are_identical_across_arms(app, db, trial):
    c = assessor_client(app)
    pages = {}
    for arm in ("music", "usual"):
        p = trial[arm]
        for endpoint, tmpl in PER_CHILD_WEB.items():
            r = c.get(tmpl.format(id=p.study_id, aid=aid(db, p)))
            assert r.status_code == 200, f"{endpoint}: {r.status_code}"
            body = page_text(r)
            assert_no_leak(body, f"{endpoint} for the {arm} child")
            pages.setdefault(endpoint, []).append(normalize(body, p))
        for endpoint, tmpl in PER_CHILD_API.items():
            r = trial["world"].api("GET", tmpl.format(id=p.study_id), "assessor")
            assert r.status_code == 200, endpoint
            body = page_text(r)
            assert_no_leak(body, f"{endpoint} for the {arm} child")
            pages.setdefault(endpoint, []).append(normalize(body, p))
    for endpoint, (a, b) in pages.items():
        assert a == b, f"{endpoint} differs between a music-therapy child and a usual-care child"


def test_assessor_is_refused_alike_for_every_child_and_an_unknown_one(app, db, trial):
    c = assessor_client(app)
    c.get("/")  # what the login flashed is shown there, not on the pages compared
    for endpoint, tmpl in REFUSED_PER_CHILD.items():
        answers = set()
        for study_id in (trial["music"].study_id, trial["usual"].study_id, "AT01-9999"):
            if tmpl.startswith("/api/"):
                r = trial["world"].api("GET", tmpl[len("/api/v1"):].format(id=study_id), "assessor")
            else:
                r = c.get(tmpl.format(id=study_id))
            answers.add((r.status_code, r.data))
        assert len(answers) == 1 and next(iter(answers))[0] == 404, endpoint


def test_assessor_general_pages_reveal_nothing(app, db, trial):
    c = assessor_client(app)
    for endpoint, tmpl in GENERAL_WEB.items():
        if tmpl is None:
            continue
        for kind, status in (("due", "open"), ("overdue", "answered"), ("out_of_window", "closed"), ("due", "all")):
            r = c.get(tmpl.format(kind=kind, status=status))
            assert r.status_code == (404 if endpoint in NOT_HERE else 302 if endpoint in SENT_ON else 200), \
                f"{endpoint}: {r.status_code}"
            assert_no_leak(r.get_data(as_text=True), endpoint)
    for endpoint, tmpl in GENERAL_API.items():
        for kind, status in (("due", "open"), ("overdue", "answered"), ("out_of_window", "closed")):
            r = trial["world"].api("GET", tmpl.format(kind=kind, status=status), "assessor")
            assert r.status_code == (404 if endpoint in API_NOT_HERE else 200), endpoint
            if endpoint not in PROTOCOL_ROUTES:
                assert_no_leak(r.get_data(as_text=True), endpoint)
    for endpoint, path in PARENT_WRITES.items():
        r = trial["world"].api("POST", path, "assessor", json={"values": {"total_t": 61}})
        assert r.status_code == 404, (endpoint, r.status_code)
        assert_no_leak(r.get_data(as_text=True), endpoint)


def test_assessor_is_refused_everything_that_shows_sessions_or_arms(app, trial):
    c = assessor_client(app)
    p = trial["music"]
    for url in (f"/participants/{p.study_id}/sessions/new", "/adherence", "/audit/", "/screenings",
                f"/participants/{p.study_id}/events/new"):
        r = c.get(url)
        assert r.status_code == 403, url
        assert_no_leak(r.get_data(as_text=True), url)
    for path in (f"/participants/{p.study_id}/course", "/adherence"):
        r = trial["world"].api("GET", path, "assessor")
        assert r.status_code == 403
        assert_no_leak(r.get_data(as_text=True), path)
    # correcting a session: the same refusal for a session of the music child and for none at all
    sid = trial["world"].db.execute(text("SELECT min(id) FROM therapy_session")).scalar()
    trial["world"].db.commit()
    pages = [c.get(f"/sessions/{n}/correct") for n in (sid, sid + 1000)]
    apis = [trial["world"].api("POST", f"/sessions/{n}/corrections", "assessor", json={"minutes": 45, "reason": "typo"})
            for n in (sid, sid + 1000)]
    for r in pages + apis:
        assert r.status_code == 403
        assert_no_leak(r.get_data(as_text=True), "session correction")
    assert page_body(pages[0]) == page_body(pages[1]) and apis[0].get_data() == apis[1].get_data()


def test_assessor_is_refused_every_page_and_route_of_the_intervention_as_delivered(app, trial):
    """Goals, fidelity and the therapists: 403 for the assessor, the same for a goal that exists
    and one that does not, and no word of either in the answer."""
    c = assessor_client(app)
    w, p = trial["world"], trial["music"]
    gid = w.db.execute(text("SELECT min(id) FROM child_goal")).scalar()
    sid = w.db.execute(text("SELECT min(id) FROM therapy_session")).scalar()
    w.db.commit()
    for url in ("/fidelity", "/therapists", f"/participants/{p.study_id}/goals/new", f"/sessions/{sid}/fidelity"):
        r = c.get(url)
        assert r.status_code == 403, url
        assert_no_leak(r.get_data(as_text=True), url)
    pages = [c.get(f"/goals/{n}/revise") for n in (gid, gid + 1000)]
    apis = [w.api("POST", f"/goals/{n}/revisions", "assessor", json={"active": False, "reason": "x"}) for n in (gid, gid + 1000)]
    for r in pages + apis:
        assert r.status_code == 403
        assert_no_leak(r.get_data(as_text=True), "goal revision")
    assert page_body(pages[0]) == page_body(pages[1]) and apis[0].get_data() == apis[1].get_data()
    for method, path in (("GET", "/fidelity"), ("GET", "/fidelity/due"), ("GET", "/fidelity/draws"), ("GET", "/therapists"),
                         ("POST", f"/participants/{p.study_id}/goals"), ("POST", f"/sessions/{sid}/fidelity")):
        r = w.api(method, path, "assessor", json={} if method == "POST" else None)
        assert r.status_code == 403, path
        assert_no_leak(r.get_data(as_text=True), path)


def test_assessment_responses_are_identical_across_arms(trial, db):
    w = trial["world"]
    bodies = []
    for arm in ("music", "usual"):
        p = trial[arm]
        db.execute(text("DELETE FROM assessment WHERE participant_id = :p AND visit = 'month5'"), {"p": p.id})
        db.commit()
        r = w.api("POST", f"/participants/{p.study_id}/assessments", "assessor",
                  json={"visit": "month5", "instrument": "ados2", "performed_on": (R + dt.timedelta(days=150)).isoformat(),
                        "values": {"social_affect": 9, "rrb": 2, "css": 4}, "allocation_guess": "music_therapy",
                        "guess_confidence": 3})
        assert r.status_code == 201
        bodies.append(normalize(r.get_data(as_text=True), p))
    assert bodies[0] == bodies[1]


def test_statistician_and_admin_see_no_arm(trial):
    w = trial["world"]
    for p in (trial["music"], trial["usual"]):
        r = w.api("GET", f"/participants/{p.study_id}", "statistician")
        assert r.status_code == 200 and "arm" not in r.get_json()
        assert r.get_json()["status"] == "randomized"  # the intervention event is withheld
        assert w.api("GET", f"/participants/{p.study_id}", "admin").status_code == 403


def test_an_assessor_sees_the_queries_on_assessments_and_nothing_of_the_others(app, db, trial):
    """The assessor reads the ADOS-2 queries of both children, identical but for the IDs; the queries
    on the music child's session, intervention event and adverse event answer 404 like a query that
    does not exist, and appear in no list, count or badge."""
    c, w = assessor_client(app), trial["world"]
    bodies = {}
    for name in ("music", "usual"):
        qid, p = trial["visible"][name], trial[name]
        for endpoint, tmpl in PER_QUERY.items():
            r = c.get(tmpl.format(qid=qid)) if endpoint.startswith("dm.") else w.api("GET", tmpl.format(qid=qid), "assessor")
            assert r.status_code == 200, endpoint
            body = r.get_data(as_text=True)
            assert_no_leak(body, f"{endpoint} for the {name} child")
            bodies.setdefault(endpoint, []).append(normalize(body, p))
    for endpoint, (a, b) in bodies.items():
        assert a == b, f"{endpoint} differs between a music-therapy child and a usual-care child"
    missing = max(trial["hidden"]) + 100
    for qid in trial["hidden"] + [missing]:
        r = c.get(f"/queries/{qid}")
        assert r.status_code == 404 and "drum" not in r.get_data(as_text=True)
        api = w.api("GET", f"/queries/{qid}", "assessor")
        assert api.status_code == 404
        assert api.get_json()["error"]["message"] == "No such query."  # the same bytes for each (no id repeated)
    listed = w.api("GET", "/queries?status=open", "assessor").get_json()
    assert sorted(q["id"] for q in listed) == sorted(trial["visible"].values())
    assert w.api("GET", f"/queries?study_id={trial['music'].study_id}", "assessor").get_json()[0]["id"] == trial["visible"]["music"]
    home = c.get("/").get_data(as_text=True)
    assert "2\n  queries wait for your answer" in home or "2 queries wait" in " ".join(home.split())
    # the manager sees every one of them (the control)
    assert len(w.api("GET", "/queries", "manager").get_json()) == 5


def test_the_assessor_is_refused_every_safety_route(app, db, trial):
    c, w = assessor_client(app), trial["world"]
    ae = db.execute(text("SELECT id FROM adverse_event")).scalar()
    p = trial["music"]
    for url in ("/adverse-events", f"/adverse-events/{ae}", f"/participants/{p.study_id}/adverse-events/new"):
        r = c.get(url)
        assert r.status_code == 403 and "drum" not in r.get_data(as_text=True), url
    for method, path in (("GET", "/adverse-events"), ("GET", f"/adverse-events/{ae}"), ("POST", f"/participants/{p.study_id}/adverse-events"),
                         ("POST", f"/adverse-events/{ae}/follow-ups"), ("POST", f"/adverse-events/{ae}/acknowledge"),
                         ("POST", f"/adverse-events/{ae}/reports")):
        r = w.api(method, path, "assessor", json={})
        assert r.status_code == 403 and "drum" not in r.get_data(as_text=True), path


def test_the_investigator_sees_the_arms_of_their_sites_only_and_is_never_also_their_assessor(world, db):
    """The site investigator (issue 29) is an unblinded site role: the arms of their own site's
    children, none of another site's, blinded for the trial as a whole; and never the blinded
    assessor of the same site."""
    from trial.auth import service as users
    from trial.errors import ValidationError
    from trial.scope import can_see_arm, is_blinded
    from trial.sites.models import Site
    sites = {s.code: s.id for s in db.query(Site)}
    inv = users.create_user(db, CLI, "investigator@example.org", "Ivo", PASSWORD, [("investigator", "AT01")])
    assert can_see_arm(db, inv, sites["AT01"]) and not can_see_arm(db, inv, sites["NO01"])
    assert is_blinded(db, inv)
    with pytest.raises(ValidationError):
        users.create_user(db, CLI, "both@example.org", "Both", PASSWORD,
                          [("investigator", "AT01"), ("assessor", "AT01")])
    other = users.create_user(db, CLI, "apart@example.org", "Apart", PASSWORD,
                              [("investigator", "NO01"), ("assessor", "AT01")])
    assert not can_see_arm(db, other, sites["AT01"]) and can_see_arm(db, other, sites["NO01"])
