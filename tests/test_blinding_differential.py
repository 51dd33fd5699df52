"""The differential blinding test: two trials that differ only in the allocation (and in what the
allocation causes: sessions for the children in a music-therapy arm, an intervention event and an
intervention deviation) give every blinded role byte-identical answers, once ids, timestamps and
form tokens are normalized, on every route that role can reach (found from the URL map, web and
API, for each child and each query variant) and in every file of the blinded bundle.

The blinded roles are the assessor (always), the statistician (until the signed unblinding) and
the admin (always). A route a blinded role can reach that is not fetched here fails the test."""
from __future__ import annotations

import datetime as dt
import io
import re
import subprocess
import zipfile

import pytest
from sqlalchemy import select, text

from tests.conftest import FreshDatabase
from tests.helpers import CLI, PASSWORD, World, backdate_randomization
from trial.course.models import TherapySession
from trial.course.service import log_counselling, log_session
from trial.db import make_session_factory
from trial.enrollment import service as enrollment
from trial.monitoring import service as monitoring
from trial.outcomes.service import check_missing_forms, record_assessment
from trial.participants.models import Allocation, Assessment, StatusEvent
from trial.policy import ANY, POLICY, PUBLIC
from trial.queries import service as queries
from trial.safety import service as safety
from trial.status.service import record_deviation, record_event
from trial.timeline import today

BLINDED = ("assessor", "statistician", "admin")
SEEDS = (bytes(range(32)), bytes(range(100, 132)))
DUMMY_SEED = "5e" * 32
LOCK_TIME = dt.datetime(2026, 11, 30, 12, 0, 0)
DM_TIME = dt.datetime(2026, 11, 29, 9, 30, 0)
CUT_TIME = dt.datetime(2026, 11, 29, 18, 0, 0)
R = today() - dt.timedelta(days=200)
CHILDREN = 10
QUERY_VARIANTS = {
    "outcomes.visits": ["?kind=due", "?kind=overdue", "?kind=out_of_window"],
    "api.visits": ["?kind=due", "?kind=overdue", "?kind=out_of_window"],
    "enrollment.participants": ["", "?site=AT01"],
    "api.list_participants": ["", "?site=AT01", "?site=NO01"],
    "dashboard.grid": ["", "?site=AT01"],
    "lock.consort": ["", "?site=AT01", "?site=NO01"],
    "lock.consort_svg": ["", "?site=AT01"],
    "lock.consort_pdf": ["", "?site=NO01"],
    "api.consort": ["", "?site=AT01", "?site=NO01"],
    "api.consort_svg": ["", "?site=NO01"],
    "api.consort_pdf": ["", "?site=AT01"],
    "api.list_grants": ["", "?status=all"],
    "audit.trail": ["", "?entity=allocation"],
    "dm.queries": ["", "?status=all", "?status=answered", "?status=closed", "?site=AT01"],
    "api.list_queries": ["", "?status=open", "?status=answered", "?status=closed", "?site=AT01", "?study_id=AT01-0001"],
    "dm.adverse_events": ["", "?serious=yes"],
    "api.list_adverse_events": ["", "?serious=true"],
}
# routes that answer every blinded reader, for every child, as for an unknown one (404)
REFUSED_TO_BLINDED = {"api.randomization_pdf", "enrollment.randomization_pdf"}
SKIP = {"static", "auth.logout", "auth.login", "auth.keepalive"}  # no data (a clock); logging out ends the crawl
# the two-factor enrolment page shows a new random secret each session, nothing of the trial (tests/test_blinding.py
# reads it as the assessor for leaks)
SKIP |= {"mfa.enrol"}


def iso(d: dt.date) -> str:
    return d.isoformat()


def d(n: int) -> str:
    return iso(R + dt.timedelta(days=n))


def build(seed: bytes, monkeypatch):
    """One trial on a database of its own. Everything but the randomization seed is the same."""
    from trial import create_app
    fresh = FreshDatabase("differential")
    db = make_session_factory(fresh.engine)()
    app = create_app({"ENGINE": fresh.engine, "SESSION_FACTORY": make_session_factory(fresh.engine), "TESTING": True,
                      "WTF_CSRF_ENABLED": False, "SECRET_KEY": "test-secret"})
    world = World(db, app).setup()
    world.open(seed)
    kids = []
    for i in range(CHILDREN):
        site = "AT01" if i < CHILDREN - 2 else "NO01"
        sc = world.screen(site, screened_on=iso(R - dt.timedelta(days=30)))
        p = enrollment.enroll(db, CLI, {"screening_id": sc.id, "consent_date": iso(R - dt.timedelta(days=25)),
                                        "date_of_birth": iso(R - dt.timedelta(days=5 * 365 + 30 * i)),
                                        "sex": "female" if i % 3 else "male"})
        for ins, values in (("ados2", {"social_affect": 8 + i, "rrb": 4, "css": 6}), ("srs2", {"total_t": 60 + i})):
            record_assessment(db, CLI, p.study_id, {"visit": "baseline", "instrument": ins, "values": values,
                                                    "performed_on": iso(R - dt.timedelta(days=5))})
        db.commit()
        world.randomize(p, f"key-{p.study_id}")
        kids.append(p)
    world.ready()  # a child ready but not randomized
    world.screen("AT01", screened_on=iso(R), answers=world.answers(asd_diagnosis=False))
    backdate_randomization(db, dt.datetime.combine(R, dt.time(10, 0)))
    db.execute(text("UPDATE participant SET enrolled_at = :t"), {"t": dt.datetime.combine(R - dt.timedelta(days=25), dt.time(9))})
    db.commit()
    arms = dict(db.execute(select(Allocation.participant_id, Allocation.arm)).all())
    music = [p for p in kids if arms[p.id] != "usual"]
    # what the allocation causes
    for p in music:
        for n in (2, 9, 16, 23):
            log_session(db, CLI, p.study_id, {"held_on": d(n), "attendance": "attended" if n != 16 else "no_show",
                                              "minutes": 30 if n != 16 else None, "techniques": ["songs"], "engagement": 3,
                                              "note": "played the drums together"})
    if music:
        record_event(db, CLI, music[0].study_id, {"type": "discontinued_intervention", "on": d(40), "reason": "distressed by sessions"})
        record_deviation(db, CLI, music[-1].study_id, {"on": d(20), "category": "intervention", "description": "two sessions in one day"})
    # the same for every child, whatever the arm
    for i, p in enumerate(kids):
        log_counselling(db, CLI, p.study_id, {"held_on": d(20)})
        for visit, n in (("month2", 61), ("month5", 152)):
            if i == 4 and visit == "month5":
                continue
            record_assessment(db, CLI, p.study_id, {"visit": visit, "instrument": "ados2", "performed_on": d(n + i % 3),
                                                    "values": {"social_affect": 6 + i, "rrb": 3, "css": 5},
                                                    "allocation_guess": ("music_therapy", "usual_care", "unsure")[i % 3],
                                                    "guess_confidence": 1 + i % 5})
            record_assessment(db, CLI, p.study_id, {"visit": visit, "instrument": "srs2", "performed_on": d(n + i % 3),
                                                    "values": {"total_t": 55 + i}})
    record_event(db, CLI, kids[4].study_id, {"type": "withdrawn", "on": d(100), "reason": "family withdrew consent"})
    record_event(db, CLI, kids[5].study_id, {"type": "lost_to_follow_up", "on": d(170), "reason": "moved away"})
    # data management the same for every child: the missing-form checks, queries on assessments
    # (one answered with a correction and closed) and on a participant, verification marks
    check_missing_forms(db, kids)
    for mod in ("queries", "monitoring", "safety", "dataquality"):  # the two trials' clocks agree
        monkeypatch.setattr(f"trial.{mod}.service.utcnow", lambda: DM_TIME)
    manager, monitor, assessor = world.users["manager"], world.users["monitor"], world.users["assessor"]
    for i, p in enumerate(kids[:3]):
        a = db.execute(select(Assessment.id).where(Assessment.participant_id == p.id, Assessment.visit == "month2",
                                                   Assessment.instrument == "ados2")).scalar()
        q = queries.raise_query(db, monitor, {"study_id": p.study_id, "on": {"kind": "assessment", "id": a, "field": "rrb"},
                                              "text": "The worksheet gives RRB 4."})
        if i == 0:
            queries.respond(db, assessor, q.id, {"text": "Corrected.", "correction": {"values": {"social_affect": 6, "rrb": 4, "css": 5}}})
            queries.close(db, monitor, q.id, {"text": "Matches now."})
        monitoring.verify(db, monitor, p.study_id, {"on": {"kind": "assessment", "id": a}})
    queries.raise_query(db, manager, {"study_id": kids[1].study_id, "on": {"kind": "participant"}, "text": "Consent scan missing."})
    monitoring.verify(db, monitor, kids[2].study_id, {"on": {"kind": "participant"}})
    # and what the allocation causes: queries on a session, an intervention event and an adverse
    # event during a session, a verified session, a serious AE (after the rest: ids are global)
    if music:
        m = music[0]
        sess = db.execute(select(TherapySession.id).where(TherapySession.participant_id == m.id).order_by(TherapySession.id)).scalar()
        ae = safety.record(db, world.users["coordinator"], m.study_id, {
            "term": "hand bruised by a drum in a session", "onset": d(9), "severity": "moderate", "serious": True,
            "seriousness": ["other_important"], "relatedness": "probable", "outcome": "recovering"})
        safety.follow_up(db, world.users["coordinator"], ae.id, {"on": d(12), "outcome": "recovered", "resolved_on": d(12),
                                                                   "text": "healed"})
        queries.raise_query(db, monitor, {"study_id": m.study_id, "on": {"kind": "session", "id": sess}, "text": "45 minutes?"})
        queries.raise_query(db, manager, {"study_id": m.study_id, "on": {"kind": "adverse_event", "id": ae.id}, "text": "Related?"})
        monitoring.verify(db, monitor, m.study_id, {"on": {"kind": "session", "id": sess}})
        ev = db.execute(select(StatusEvent.id).where(StatusEvent.participant_id == music[0].id,
                                                     StatusEvent.type == "discontinued_intervention")).scalar()
        queries.raise_query(db, monitor, {"study_id": m.study_id, "on": {"kind": "event", "id": ev}, "text": "Date?"})
    db.commit()
    # a data cut (issue 30) before the final lock, taken by the manager: the blinded roles read its state and its
    # open report (pooled) in the crawl; its closed report is the data monitoring committee's alone
    from trial.auth import service as users
    dmc = users.create_user(db, CLI, "dmc@example.org", "Dmc", PASSWORD, [("dmc", None)])
    world.users["dmc"], world.tokens["dmc"] = dmc, users.issue_token(db, CLI, dmc)
    db.commit()
    monkeypatch.setattr("trial.interim.cuts.utcnow", lambda: CUT_TIME)
    r = world.api("POST", "/data-cuts", "manager", json={"label": "Interim look"})
    assert r.status_code == 202 and r.get_json()["status"] == "ready", r.get_json()
    # a second cut, a formal look, built as a worker builds one (claimed, one snapshot, stored in its own
    # transaction); the committee opens the closed reports and signs a recommendation (its second factor on a
    # fixed clock: the same step in both trials) before the crawl
    from trial.auth import mfa
    from trial.interim import cuts
    cut2 = cuts.request_cut(db, world.users["manager"], "Formal interim look", True)
    db.commit()
    factory = make_session_factory(fresh.engine)
    with factory() as s:
        assert cuts.claim(s, "w:differential", cut2.id) == cut2.id
    assert cuts.run(factory, cut2.id, "w:differential", parallel=False) == "ready"
    dmc.mfa_secret, dmc.mfa_enrolled_at = mfa.seal(dmc.id, "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"), CUT_TIME
    db.commit()
    for path in ("/data-cuts/1/closed-report.json", f"/data-cuts/{cut2.id}/closed-report.pdf"):
        assert world.api("GET", path, "dmc").status_code == 200
    monkeypatch.setattr("trial.auth.mfa.utcnow", lambda: CUT_TIME)
    monkeypatch.setattr("trial.esign.service.utcnow", lambda: CUT_TIME)
    code = __import__("pyotp").TOTP("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP").at(CUT_TIME.replace(tzinfo=dt.UTC))
    r = world.api("POST", f"/data-cuts/{cut2.id}/recommendation", "dmc",
                  json={"decision": "continue", "text": "No concern: continue.", "password": PASSWORD, "code": code})
    assert r.status_code == 201, r.get_json()
    monkeypatch.setattr("trial.lock.service.new_dummy_seed", lambda: DUMMY_SEED)
    monkeypatch.setattr("trial.esign.service.utcnow", lambda: LOCK_TIME)
    r = world.api("POST", "/locks", "manager", json={"kind": "hard", "meaning": "Final lock.", "password": PASSWORD,
                                                     "accept_open_queries": True})
    assert r.status_code == 201, r.get_json()
    monkeypatch.undo()
    return fresh, db, app, world, kids, arms


def normalize(body: str) -> str:
    body = re.sub(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?Z?", "<ts>", body)
    body = re.sub(r'(name="csrf_token"[^>]*?value=")[^"]+', r"\1<csrf>", body)
    body = re.sub(r"trl_[A-Za-z0-9_-]{8}", "<token>", body)  # API token prefixes (random)
    body = re.sub(r'("ref":\s*"|/notifications/)[A-Za-z0-9_-]{22}', r"\1<ref>", body)  # notifications' (random)
    return body


def _ctx(db, world, p) -> dict:
    aid = db.execute(select(Assessment.id).where(Assessment.participant_id == p.id, Assessment.visit == "month2",
                                                 Assessment.instrument == "ados2")).scalar()
    out = {"study_id": p.study_id, "assessment_id": aid, "user_id": world.users["coordinator"].id, "code": "AT01",
           "instrument": "ados2", "screening_id": 1, "lock_id": 1, "grant_id": 1, "token": "no-such-link",
           "cut_id": 1, "language": "de"}
    db.commit()  # hold no transaction (on SQLite: no write lock) while the app answers
    return out


def _urls(app, role: str, db, world, kids):
    """(endpoint, label, url) for every GET route the role may call: per child where the route
    takes a child, with each query variant."""
    for rule in app.url_map.iter_rules():
        if "GET" not in rule.methods or rule.endpoint in SKIP:
            continue
        pol = POLICY[rule.endpoint]
        if not (pol in (PUBLIC, ANY) or role in pol):
            continue
        per_child = bool({"study_id", "assessment_id"} & set(rule.arguments))
        for i, p in enumerate(kids if per_child else kids[:1]):
            ctx = _ctx(db, world, p)
            for key, n in _per_record(db, rule):  # every query, every adverse event: seen or not
                ctx[key] = n
                url = rule.build({a: ctx.get(a, 1) for a in rule.arguments}, append_unknown=False)[1]
                for q in QUERY_VARIANTS.get(rule.endpoint, [""]):
                    yield rule.endpoint, f"child {i}" if per_child else f"{key} {n}" if key else "", url + q


def _per_record(db, rule):
    for key, table in (("query_id", "data_query"), ("ae_id", "adverse_event")):
        if key in rule.arguments:
            n = db.execute(text(f"SELECT count(*) FROM {table}")).scalar()
            db.commit()
            return [(key, i) for i in range(1, n + 2)]  # and one that does not exist
    return [(None, None)]


def _zip_files(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {n: z.read(n) for n in z.namelist()}


CONTROL = ("api.consort", "api.bundle", "api.get_participant")  # fetched as the manager too: they must differ


CASEBOOKS = {"closeout.casebook_pdf", "api.casebook_pdf"}  # printed now, with the times of each change


def casebook_text(pdf: bytes) -> str:
    """The casebook's text (pdftotext), its print and change times (the site's clock) and its digest normalized."""
    text = subprocess.run(["pdftotext", "-raw", "-", "-"], input=pdf, capture_output=True, check=True).stdout.decode()
    text = re.sub(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} \S+", "<ts>", text)
    return re.sub(r"\b[0-9a-f]{64}\b", "<digest>", text)


def crawl(app, db, world, kids) -> dict:
    out = {}
    for endpoint, label, url in _urls(app, "manager", db, world, kids):
        if endpoint in CONTROL:
            r = world.api("GET", url[len("/api/v1"):], "manager")
            out[("manager", endpoint, label, url)] = (r.status_code, _zip_files(r.data) if r.mimetype == "application/zip"
                                                      else normalize(r.get_data(as_text=True)))
    # the data cut: the manager's open report (pooled: the same whatever the arms) and the committee's closed
    # report (by arm: the control that tells the trials apart)
    for who, path in (("manager", "/data-cuts/1/open-report.pdf"), ("manager", "/data-cuts/1/closed-report.json"),
                      ("dmc", "/data-cuts/1/closed-report.json"), ("dmc", "/data-cuts/1/open-report.pdf")):
        r = world.api("GET", path, who)
        out[(f"{who}:cut", path, "", path)] = (r.status_code, r.data)
    for role in BLINDED:
        web = app.test_client()
        assert web.post("/login", data={"email": f"{role}@example.org", "password": PASSWORD}).status_code == 302
        for endpoint, label, url in _urls(app, role, db, world, kids):
            if url.startswith("/api/"):
                r = world.api("GET", url[len("/api/v1"):], role)
            else:
                r = web.get(url)
            key = (role, endpoint, label, url)
            if r.mimetype == "application/zip":
                out[key] = (r.status_code, _zip_files(r.data))
            elif r.mimetype == "application/pdf":
                out[key] = (r.status_code, casebook_text(r.data) if endpoint in CASEBOOKS else r.data)
            else:
                out[key] = (r.status_code, normalize(r.get_data(as_text=True)))
    return out


@pytest.fixture(scope="module")
def two_trials():
    mp = pytest.MonkeyPatch()
    results = []
    try:
        for seed in SEEDS:
            fresh, db, app, world, kids, arms = build(seed, mp)
            try:
                results.append({"answers": crawl(app, db, world, kids), "arms": [arms[p.id] for p in kids]})
            finally:
                db.close()
                fresh.drop()
    finally:
        mp.undo()
    return results


def test_the_two_trials_differ_in_the_allocation(two_trials):
    a, b = (t["arms"] for t in two_trials)
    assert a != b
    assert sum(x != y for x, y in zip(a, b)) >= 3, (a, b)
    # and in whether a child is in a music-therapy arm, which decides its sessions
    assert [x == "usual" for x in a] != [x == "usual" for x in b]


def test_every_blinded_route_gives_identical_answers(two_trials):
    a, b = (t["answers"] for t in two_trials)
    assert set(a) == set(b)
    blinded = [k for k in sorted(a) if k[0] in BLINDED]
    assert len(blinded) > 120, len(blinded)
    differing = [k for k in blinded if a[k] != b[k]]
    assert not differing, f"answers that depend on the allocation: {differing[:10]}"


def test_control_an_unblinded_reader_sees_the_two_trials_differ(two_trials):
    """The comparison has teeth: the manager's answers on the same routes tell the trials apart."""
    a, b = (t["answers"] for t in two_trials)
    control = [k for k in a if k[0] == "manager"]
    assert {k[1] for k in control} == set(CONTROL)
    assert sum(a[k] != b[k] for k in control) >= 3


def test_the_crawl_covers_every_route_of_every_blinded_role(two_trials, app):
    answers = two_trials[0]["answers"]
    fetched = {(role, endpoint) for role, endpoint, _, _ in answers}
    for role in BLINDED:
        for rule in app.url_map.iter_rules():
            if "GET" not in rule.methods or rule.endpoint in SKIP:
                continue
            pol = POLICY[rule.endpoint]
            if pol in (PUBLIC, ANY) or role in pol:
                assert (role, rule.endpoint) in fetched, (role, rule.endpoint)
    # the crawl reads real pages, not a wall of refusals (besides the routes that refuse every blinded reader)
    refused = {k: v for k, v in answers.items() if k[1] in REFUSED_TO_BLINDED and k[0] in BLINDED}
    assert refused and {status for status, _ in refused.values()} == {404}
    read = {k: v for k, v in answers.items() if k not in refused}
    ok = sum(1 for (status, _) in read.values() if status == 200)
    assert ok >= 0.8 * len(read), f"only {ok} of {len(read)} answers are 200"
    for endpoint in ("api.consort", "api.bundle", "lock.bundle", "api.get_participant", "enrollment.participant",
                     "api.summary", "lock.consort_pdf", "dashboard.grid", "outcomes.visits", "enrollment.assess"):
        assert any(v[0] == 200 for key, v in answers.items() if key[1] == endpoint), endpoint


def test_every_file_of_the_blinded_bundle_is_identical(two_trials):
    a, b = (t["answers"] for t in two_trials)
    bundles = [k for k in a if k[1] == "api.bundle" and k[0] == "statistician"]
    assert bundles
    for key in bundles:
        fa, fb = a[key][1], b[key][1]
        assert isinstance(fa, dict) and len(fa) > 30, "a whole bundle: every table in every format"
        assert set(fa) == set(fb)
        differing = sorted(n for n in fa if fa[n] != fb[n])
        assert not differing, f"blinded bundle files that depend on the allocation: {differing}"
        assert not any("sessions" in n for n in fa)


def test_the_cuts_open_report_is_identical_and_its_closed_report_is_not(two_trials):
    """A data cut taken on the two trials: the open report (pooled) is byte-identical for every reader,
    the manager included, the manager is refused the closed report alike, and the committee's closed
    report (by arm) tells the trials apart (the comparison has teeth)."""
    a, b = (t["answers"] for t in two_trials)
    keys = {k[1]: k for k in a if k[0].endswith(":cut")}
    for path in ("/data-cuts/1/open-report.pdf", "/data-cuts/1/closed-report.json"):
        mine = next(k for k in a if k[0] == "manager:cut" and k[1] == path)
        assert a[mine] == b[mine], path
    assert a[next(k for k in a if k[0] == "manager:cut" and k[1].endswith("closed-report.json"))][0] == 403
    opened = next(k for k in a if k[0] == "manager:cut" and k[1].endswith("open-report.pdf"))
    assert a[opened][0] == 200 and a[opened][1].startswith(b"%PDF")
    dmc_open = next(k for k in a if k[0] == "dmc:cut" and k[1].endswith("open-report.pdf"))
    assert a[dmc_open] == b[dmc_open] and a[dmc_open][1] == a[opened][1]
    closed = next(k for k in a if k[0] == "dmc:cut" and k[1].endswith("closed-report.json"))
    assert a[closed][0] == b[closed][0] == 200 and a[closed][1] != b[closed][1]
    assert keys
    # the blinded roles' crawl read the cut: its list, its state and its open report
    for endpoint in ("api.list_data_cuts", "api.get_data_cut", "api.open_report_pdf", "interim.cuts",
                     "interim.open_report"):
        assert any(k[0] == "statistician" and k[1] == endpoint and v[0] == 200 for k, v in a.items()), endpoint
