"""Data management (issue 10): the query workflow and who may take each step, the automatic
checks, adverse events with the 24-hour clock and e-mail to a real local SMTP server, a fatal SAE
and the died event, source verification cleared by a change, the lock over open queries, and the
new tables in the bundle read back from CSV, XPT and DTA."""
from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import re
import socket
import time
import zipfile

import pytest
from sqlalchemy import func, select

from tests.helpers import CLI, PASSWORD, as_csv, backdate_randomization, dictionary_of
from tests.test_lock import SEED, R, backdate_all, child, iso
from trial.audit import service as audit
from trial.audit.models import AuditRecord
from trial.course.service import log_session
from trial.dataquality.models import DataQuery, QueryMessage, Verification
from trial.notify.models import MailMessage, Notification
from trial.notify.service import send_pending
from trial.outcomes import service as outcomes
from trial.participants.models import Assessment, StatusEvent
from trial.safety.models import AdverseEvent, AdverseEventFollowUp

ROLES = ("coordinator", "coordinator_no", "therapist", "assessor", "statistician", "monitor", "manager", "admin")


@pytest.fixture()
def kids(world, db):
    """AT01 with the fixed seed: a usual-care child and a 3-a-week child with three sessions, both
    with a month-2 ADOS-2 inside its window."""
    world.open(SEED)
    usual, high = child(world), child(world)
    assert world.randomize(usual, "u").allocation.arm == "usual"
    assert world.randomize(high, "h").allocation.arm == "high"
    backdate_all(db)
    for n in (3, 10, 17):
        log_session(db, CLI, high.study_id, {"held_on": iso(R + dt.timedelta(days=n)), "attendance": "attended",
                                             "minutes": 30, "techniques": ["songs"]})
    for p in (usual, high):
        outcomes.record_assessment(db, CLI, p.study_id, {"visit": "month2", "instrument": "ados2",
                                                         "performed_on": iso(R + dt.timedelta(days=61)),
                                                         "values": {"social_affect": 9, "rrb": 3, "css": 5}})
    db.commit()
    return {"usual": usual, "high": high, "world": world}


def sae_report(**kw) -> dict:
    """A serious adverse event's report onwards (the API's body): to the ethics committee a minute ago."""
    at = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).replace(microsecond=0)
    return {"reported_to": "ethics_committee", "reported_at": at.isoformat().replace("+00:00", "Z"),
            "reference": "EC-2026-017", **kw}


def ok(r, status=201):
    assert r.status_code == status, (r.status_code, r.get_data(as_text=True))
    return r.get_json()


def state(db) -> tuple:
    """What a refused request must leave as it was."""
    db.expire_all()
    return (sorted((q.id, q.status, q.open_key) for q in db.execute(select(DataQuery)).scalars()),
            db.execute(select(func.count()).select_from(QueryMessage)).scalar(),
            db.execute(select(func.count()).select_from(AdverseEvent)).scalar(),
            db.execute(select(func.count()).select_from(Verification)).scalar(),
            db.execute(select(func.max(AuditRecord.seq))).scalar())


def aid(db, p, instrument="ados2", visit="month2"):
    return db.execute(select(Assessment.id).where(Assessment.participant_id == p.id, Assessment.visit == visit,
                                                  Assessment.instrument == instrument)).scalar()


def session_id(db, p):
    from trial.course.models import TherapySession
    return db.execute(select(TherapySession.id).where(TherapySession.participant_id == p.id).order_by(TherapySession.id)).scalar()


# --- the query workflow: every role x every step --------------------------------------------------

def test_every_role_at_every_step_of_a_query(kids, db):
    """Raise (manager, the site's monitor), answer (the role that enters the data), close and reopen
    (manager, monitor). The rest get 403, or 404 where they may not even know the query exists (another
    site; an assessor and a query on a session). Nothing changes on a refusal; every step is audited."""
    w, u, hi = kids["world"], kids["usual"], kids["high"]
    cases = {  # kind -> (target, the role that answers)
        "participant": ({"study_id": u.study_id, "on": {"kind": "participant"}}, "coordinator"),
        "assessment": ({"study_id": u.study_id, "on": {"kind": "assessment", "id": aid(db, u), "field": "rrb"}}, "assessor"),
        "session": ({"study_id": hi.study_id, "on": {"kind": "session", "id": session_id(db, hi)}}, "therapist"),
    }
    raisers = {"manager", "monitor"}
    for kind, (target, answerer) in cases.items():
        for who in ROLES:
            if who in raisers:
                continue
            before = state(db)
            r = w.api("POST", "/queries", who, json={**target, "text": "Please check."})
            assert r.status_code == 403, (kind, who, r.status_code)
            assert state(db) == before
        qid = ok(w.api("POST", "/queries", "monitor", json={**target, "text": f"Please check the {kind}."}))["id"]
        ok(w.api("POST", "/queries", "manager", json={**target, "text": "And the manager's own."}))

        def hidden(who):  # a query reaches only the role that answers it (and the raisers)
            return who in ("statistician", "admin") or who == "coordinator_no" or \
                (who in ("coordinator", "therapist", "assessor") and who != answerer)

        def refused(method, path, who, body, allowed):
            for other in ROLES:
                if other in allowed:
                    continue
                before = state(db)
                r = w.api(method, path, other, json=body)
                policy_403 = other in ("statistician", "admin") or (path.endswith("responses") and other in raisers) \
                    or (not path.endswith("responses") and other not in raisers)
                expected = 403 if policy_403 or not hidden(other) else 404
                assert r.status_code == expected, (kind, path, other, r.status_code, r.get_data(as_text=True))
                assert str(qid) not in r.get_data(as_text=True).replace(f"/queries/{qid}/", "") or expected == 404
                assert state(db) == before, (kind, path, other)

        refused("POST", f"/queries/{qid}/responses", None, {"text": "Checked."}, {answerer})
        assert ok(w.api("POST", f"/queries/{qid}/responses", answerer, json={"text": "Checked against the source."}))["status"] == "answered"
        refused("POST", f"/queries/{qid}/close", None, {}, raisers)
        assert ok(w.api("POST", f"/queries/{qid}/close", "monitor", json={"text": "Fine."}), 200)["status"] == "closed"
        assert w.api("POST", f"/queries/{qid}/close", "manager", json={}).status_code == 409
        assert w.api("POST", f"/queries/{qid}/responses", answerer, json={"text": "more"}).status_code == 409
        refused("POST", f"/queries/{qid}/reopen", None, {}, raisers)
        assert ok(w.api("POST", f"/queries/{qid}/reopen", "manager", json={"text": "One more thing."}), 200)["status"] == "open"
        assert w.api("POST", f"/queries/{qid}/reopen", "monitor", json={}).status_code == 409
        thread = ok(w.api("GET", f"/queries/{qid}", "manager"), 200)["thread"]
        assert [m["action"] for m in thread] == ["raise", "response", "close", "reopen"]
        assert [m["by"] for m in thread] == ["monitor@example.org", f"{answerer}@example.org", "monitor@example.org",
                                             "manager@example.org"]
        steps = db.execute(select(AuditRecord.action).where(AuditRecord.entity == "query", AuditRecord.entity_id == str(qid))
                           .order_by(AuditRecord.seq)).scalars().all()
        assert [a for i, a in enumerate(steps) if i == 0 or steps[i - 1] != a] == ["create", "respond", "close", "reopen"]
    assert audit.verify(db).ok


def test_an_answer_that_is_not_enough_is_sent_back_and_the_page_offers_it(kids, app, db):
    w, u = kids["world"], kids["usual"]
    qid = ok(w.api("POST", "/queries", "monitor", json={"study_id": u.study_id, "on": {"kind": "participant"},
                                                        "text": "Which document gives the date of birth?"}))["id"]
    ok(w.api("POST", f"/queries/{qid}/responses", "coordinator", json={"text": "The passport."}))
    ref = ok(w.api("GET", f"/queries/{qid}", "monitor"), 200)["ref"]  # its number at its site: what pages show
    c = app.test_client()
    c.post("/login", data={"email": "monitor@example.org", "password": PASSWORD})
    page = c.get(f"/queries/{ref}").get_data(as_text=True)
    assert f'action="/queries/{ref}/close"' in page and f'action="/queries/{ref}/reopen"' in page
    r = c.post(f"/queries/{qid}/reopen", data={"text": "Please give the passport number too."})
    assert r.status_code == 302
    q = next(x for x in w.api("GET", f"/queries?study_id={u.study_id}", "monitor").get_json() if x["id"] == qid)
    assert q["status"] == "open" and q["thread"][-1]["text"] == "Please give the passport number too."
    assert w.api("POST", f"/queries/{qid}/reopen", "monitor", json={}).status_code == 409  # open already


def test_bad_queries_are_refused_naming_the_part_and_change_nothing(kids, db):
    w, u = kids["world"], kids["usual"]
    before = state(db)
    for body, field in (({"on": {"kind": "participant"}, "text": "x"}, "study_id"),
                        ({"study_id": u.study_id, "on": {"kind": "visit"}, "text": "x"}, "on.kind"),
                        ({"study_id": u.study_id, "on": {"kind": "assessment"}, "text": "x"}, "on.id"),
                        ({"study_id": u.study_id, "on": {"kind": "assessment", "id": aid(db, u), "field": "colour"},
                          "text": "x"}, "on.field"),
                        ({"study_id": u.study_id, "on": {"kind": "participant"}, "text": "  "}, "text"),
                        ({"study_id": u.study_id, "on": {"kind": "participant"}, "text": "a\x07b"}, "text")):
        r = w.api("POST", "/queries", "manager", json=body)
        assert r.status_code == 400 and field in r.get_json()["error"]["fields"], (body, r.get_json())
    assert w.api("POST", "/queries", "manager", json={"study_id": u.study_id, "on": {"kind": "assessment", "id": 99999},
                                                      "text": "x"}).status_code == 404
    assert state(db) == before


def test_an_answer_with_a_correction_is_linked_to_the_query(kids, db):
    w, u = kids["world"], kids["usual"]
    a = aid(db, u)
    qid = ok(w.api("POST", "/queries", "monitor", json={"study_id": u.study_id, "on": {"kind": "assessment", "id": a, "field": "rrb"},
                                                        "text": "The worksheet says RRB 5."}))["id"]
    ok(w.api("POST", f"/queries/{qid}/responses", "assessor",
             json={"text": "Transcription error.", "correction": {"values": {"rrb": 5}}}))
    db.expire_all()
    assert db.get(Assessment, a).values["rrb"] == 5
    rec = db.execute(select(AuditRecord).where(AuditRecord.entity == "assessment", AuditRecord.action == "correct")).scalar_one()
    assert (rec.old, rec.new) == ("3", "5") and rec.reason == "answer to query AT01-Q1: Transcription error."
    thread = ok(w.api("GET", f"/queries/{qid}", "assessor"), 200)["thread"]
    assert thread[1]["correction"] == {"rrb": [3, 5]}
    # a correction on a query that is not on an assessment is refused, and so is an invalid value
    pq = ok(w.api("POST", "/queries", "manager", json={"study_id": u.study_id, "on": {"kind": "participant"}, "text": "Consent?"}))["id"]
    before = state(db)
    r = w.api("POST", f"/queries/{pq}/responses", "coordinator", json={"text": "x", "correction": {"values": {"rrb": 1}}})
    assert r.status_code == 400 and "correction" in r.get_json()["error"]["fields"]
    r = w.api("POST", f"/queries/{qid}/responses", "assessor", json={"text": "x", "correction": {"values": {"rrb": 99}}})
    assert r.status_code == 400 and state(db) == before


def test_lists_by_site_status_and_the_home_page_counts(kids, app, db):
    w, u = kids["world"], kids["usual"]
    for _ in range(3):
        ok(w.api("POST", "/queries", "manager", json={"study_id": u.study_id, "on": {"kind": "participant"}, "text": "Consent?"}))
    assert len(ok(w.api("GET", "/queries?status=open", "coordinator"), 200)) == 3
    assert ok(w.api("GET", "/queries?site=NO01", "manager"), 200) == []
    assert ok(w.api("GET", "/queries", "coordinator_no"), 200) == []
    assert w.api("GET", "/queries?status=pending", "manager").status_code == 400
    c = app.test_client()
    c.post("/login", data={"email": "coordinator@example.org", "password": PASSWORD})
    home = " ".join(c.get("/").get_data(as_text=True).split())
    assert "3 queries wait for your answer." in home
    page = c.get(f"/participants/{u.study_id}").get_data(as_text=True)
    assert "3 queries are not closed" in page
    grid = c.get("/dashboard/").get_data(as_text=True)
    assert f'href="/participants/{u.study_id}#queries" title="queries not closed">3</a>' in grid
    listing = c.get("/queries?status=open").get_data(as_text=True)
    assert listing.count(f"/participants/{u.study_id}") >= 3


def test_a_query_reaches_exactly_the_role_that_answers_it_and_every_count_is_its_list(kids, app, db):
    w, u, hi = kids["world"], kids["usual"], kids["high"]
    targets = {"coordinator": {"study_id": u.study_id, "on": {"kind": "participant"}},
               "assessor": {"study_id": u.study_id, "on": {"kind": "assessment", "id": aid(db, u), "field": "rrb"}},
               "therapist": {"study_id": hi.study_id, "on": {"kind": "session", "id": session_id(db, hi)}}}
    ids = {role: ok(w.api("POST", "/queries", "monitor", json={**t, "text": "Please check."}))["id"]
           for role, t in targets.items()}
    # every query a role is shown is one it answers, or one it raised and closes
    for who in ROLES:
        listed = {q["id"]: q for q in ok(w.api("GET", "/queries", who), 200)} if who not in ("statistician", "admin") else {}
        for q in listed.values():
            assert who.split("_")[0] in (q["answer_role"], "monitor", "manager"), (who, q)
        if who in targets:
            assert set(listed) == {ids[who]}, (who, listed)
    assert set(ids.values()) <= {q["id"] for q in ok(w.api("GET", "/queries", "manager"), 200)}
    # the home page's count is the list it links to; its notice goes once the query is answered
    c = app.test_client()
    c.post("/login", data={"email": "coordinator@example.org", "password": PASSWORD})
    refs = {role: ok(w.api("GET", f"/queries/{i}", "manager"), 200)["ref"] for role, i in ids.items()}  # what pages show
    home = " ".join(c.get("/").get_data(as_text=True).split())
    assert "1 query waits for your answer." in home and f"/queries/{refs['coordinator']}" in home
    link = re.search(r'href="(/queries\?[^"]*mine=1[^"]*)"', home).group(1).replace("&amp;", "&")
    listing = c.get(link).get_data(as_text=True)
    assert listing.count('href="/queries/') == 1 and f'href="/queries/{refs["coordinator"]}"' in listing
    ok(w.api("POST", f"/queries/{ids['coordinator']}/responses", "coordinator", json={"text": "Checked."}))
    home = " ".join(c.get("/").get_data(as_text=True).split())
    assert "waits for your answer" not in home and f"/queries/{refs['coordinator']}" not in home
    # closing settles the raisers' and answerers' notices too
    ok(w.api("POST", f"/queries/{ids['therapist']}/close", "monitor", json={}), 200)
    assert not db.execute(select(Notification).where(Notification.link == f"/queries/{refs['therapist']}",
                                                     Notification.read_at.is_(None))).first()


def test_a_monitor_picks_the_field_by_its_label(kids, app, db):
    u = kids["usual"]
    c = app.test_client()
    c.post("/login", data={"email": "monitor@example.org", "password": PASSWORD})
    url = f"/participants/{u.study_id}/queries/new?kind=assessment&id={aid(db, u)}"
    page = c.get(url).get_data(as_text=True)
    assert '<select' in page and '<option value="rrb">' in page and "Restricted and repetitive behaviour" in page
    assert 'name="field" type="text"' not in page
    before = state(db)
    r = c.post(url, data={"kind": "assessment", "target_id": str(aid(db, u)), "field": "total_t",
                          "text": "Please check."})
    assert r.status_code == 400 and state(db) == before  # not a field of the ADOS-2: not offered, refused
    r = c.post(url, data={"kind": "assessment", "target_id": str(aid(db, u)), "field": "rrb",
                          "text": "Please check."})
    assert r.status_code == 302
    q = db.execute(select(DataQuery).order_by(DataQuery.id.desc())).scalars().first()
    assert (q.kind, q.field) == ("assessment", "rrb")


# --- automatic queries ---------------------------------------------------------------------------

def checks(db, origin="check"):
    db.expire_all()
    return db.execute(select(DataQuery).where(DataQuery.origin == origin).order_by(DataQuery.id)).scalars().all()


def test_an_assessment_outside_its_window_raises_one_query(kids, db):
    w, u = kids["world"], kids["usual"]
    r = ok(w.api("POST", f"/participants/{u.study_id}/assessments", "coordinator",
                 json={"visit": "month2", "instrument": "srs2", "performed_on": iso(R + dt.timedelta(days=20)),
                       "values": {"total_t": 70}}))
    assert r["out_of_window"] is True
    [q] = checks(db)
    assert (q.kind, q.target_id, q.answer_role, q.assessor_visible, q.status) == ("assessment", r["id"], "coordinator", False, "open")
    assert "window" in q.text
    # raised in the same transaction as the assessment: its audit record comes right after
    recs = db.execute(select(AuditRecord.entity).order_by(AuditRecord.seq.desc()).limit(2)).scalars().all()
    assert "query" in recs
    from trial.dataquality.service import raise_check
    assert raise_check(db, u, "assessment", r["id"], q.check_key, "again", "coordinator", False) is None  # once only
    assert len(checks(db)) == 1


def test_a_value_outside_its_soft_range_raises_one_query_and_a_correction_closes_it(kids, db):
    w, u = kids["world"], kids["usual"]
    r = ok(w.api("POST", f"/participants/{u.study_id}/assessments", "coordinator",
                 json={"visit": "month2", "instrument": "srs2", "performed_on": iso(R + dt.timedelta(days=61)),
                       "values": {"total_t": 41}}))
    [q] = checks(db)
    assert (q.field, q.answer_role, q.assessor_visible) == ("total_t", "coordinator", False)
    assert "41" in q.text and "at least 45" in q.text
    ok(w.api("POST", f"/assessments/{r['id']}/corrections", "coordinator", json={"values": {"total_t": 40}, "reason": "rescored"}), 200)
    assert len(checks(db)) == 1 and checks(db)[0].status == "open"  # still outside: the same query, no second
    ok(w.api("POST", f"/assessments/{r['id']}/corrections", "coordinator", json={"values": {"total_t": 62}, "reason": "rescored"}), 200)
    [q] = checks(db)
    assert q.status == "closed" and "within the expected range" in q.messages[-1].text
    # a hard limit still refuses
    r = w.api("POST", f"/assessments/{r['id']}/corrections", "coordinator", json={"values": {"total_t": 150}, "reason": "x"})
    assert r.status_code == 400


def test_a_missing_form_raises_one_query_per_form_on_each_read_and_entering_it_closes_it(kids, app, db):
    w, u, hi = kids["world"], kids["usual"], kids["high"]
    # R is 200 days ago: the month-2 SRS-2 window has closed for both children
    assert checks(db) == []
    assert ok(w.api("GET", "/visits?kind=overdue", "coordinator"), 200) is not None
    first = checks(db)
    # (R is 200 days ago: the windows of the month-2 SRS-2 and of both month-5 forms have closed)
    assert sorted((q.participant_id, q.visit, q.instrument) for q in first) == sorted(
        (p.id, v, i) for p in (u, hi) for v, i in (("month2", "srs2"), ("month5", "ados2"), ("month5", "srs2")))
    assert {q.answer_role for q in first if q.instrument == "ados2"} == {"assessor"}
    assert all(q.assessor_visible == (q.instrument == "ados2") for q in first)
    for _ in range(2):  # every later read, the web worklist and the periodic run: nothing new
        w.api("GET", "/visits?kind=due", "assessor")
        c = app.test_client()
        c.post("/login", data={"email": "coordinator@example.org", "password": PASSWORD})
        c.get("/visits?kind=overdue")
        assert outcomes.check_missing_forms(db, [u, hi]) == 0
        db.commit()
    assert [q.id for q in checks(db)] == [q.id for q in first]
    ok(w.api("POST", f"/participants/{u.study_id}/assessments", "coordinator",
             json={"visit": "month2", "instrument": "srs2", "performed_on": iso(R + dt.timedelta(days=61)),
                   "values": {"total_t": 70}}))
    status = {(q.participant_id, q.visit, q.instrument): q.status for q in checks(db)}
    assert status.pop((u.id, "month2", "srs2")) == "closed" and set(status.values()) == {"open"}


@contextlib.contextmanager
def cli_trial(tmp_path, name: str):
    """A fresh database with the trial open and one randomized child, for the CLI to work on:
    yields (the CLI runner, a session, the world, the child); dropped afterwards."""
    from tests.conftest import FreshDatabase
    from tests.helpers import World
    from tests.test_cli import Db
    from trial import create_app
    from trial.db import make_session_factory
    fresh = FreshDatabase(name)
    try:
        s = make_session_factory(fresh.engine)()
        w = World(s, create_app({"ENGINE": fresh.engine, "SESSION_FACTORY": make_session_factory(fresh.engine),
                                 "TESTING": True, "SECRET_KEY": "t"})).setup()
        w.open(SEED)
        p = child(w)
        w.randomize(p)
        s.commit()
        yield Db(fresh, tmp_path), s, w, p
        s.close()
    finally:
        fresh.drop()


def test_the_cli_runs_the_checks_once(tmp_path):
    from tests.test_cli import ok as cli_ok
    with cli_trial(tmp_path, "checks") as (d, s, w, p):
        backdate_randomization(s, dt.datetime.combine(R, dt.time(10)))
        s.close()
        out = cli_ok(d.run("checks", "run")).stdout
        assert "1 randomized participants checked; 4 new queries for missing forms" in out  # both forms, month 2 and 5
        assert "0 new queries" in cli_ok(d.run("checks", "run")).stdout
        assert d.count("data_query", "origin = 'check' AND status = 'open'") == 4
        assert "TRIAL_SMTP_URL is not set" in d.run("mail", "send").stderr


def test_checks_run_repairs_a_visit_plan_changed_behind_the_services(tmp_path):
    from sqlalchemy import text

    from tests.test_cli import ok as cli_ok
    with cli_trial(tmp_path, "replan") as (d, s, w, p):
        # the first run records what the plan is derived under (protocol version, sites' time zones)
        assert "visit plan re-derived for every randomized child" in cli_ok(d.run("checks", "run")).stdout
        s.execute(text("UPDATE planned_visit SET other_entered = 1 WHERE participant_id = :p"), {"p": p.id})
        s.commit()
        out = cli_ok(d.run("checks", "run")).stdout
        assert "visit plan: 3 rows of 1 participants re-derived" in out
        assert d.count("planned_visit", "other_entered > 0") == 0
        assert "visit plan" not in cli_ok(d.run("checks", "run")).stdout  # nothing to repair the second time


def test_the_web_form_warns_before_saving_an_out_of_window_date(kids, app, db):
    u = kids["usual"]
    c = app.test_client()
    c.post("/login", data={"email": "assessor@example.org", "password": PASSWORD})
    form = {"visit": "month5", "performed_on": iso(R + dt.timedelta(days=100)), "v_social_affect": "9", "v_rrb": "3",
            "v_css": "5", "allocation_guess": "unsure", "guess_confidence": "2"}
    before = state(db)
    r = c.post(f"/participants/{u.study_id}/assess/ados2", data=form)
    page = r.get_data(as_text=True)
    assert r.status_code == 400 and "is outside the window of this visit" in page and 'name="confirm_window"' in page
    assert aid(db, u, visit="month5") is None and state(db) == before
    assert 'name="confirm_window"' not in c.get(f"/participants/{u.study_id}/assess/ados2").get_data(as_text=True)
    r = c.post(f"/participants/{u.study_id}/assess/ados2", data={**form, "confirm_window": "y"})
    assert r.status_code == 302 and aid(db, u, visit="month5") is not None
    assert [q.instrument for q in checks(db)] == ["ados2"]


# --- adverse events ------------------------------------------------------------------------------

AE = {"term": "Otitis media", "onset": None, "severity": "moderate", "serious": False, "relatedness": "not_related",
      "expectedness": "expected", "outcome": "recovering", "description": "Antibiotics for a week."}


def ae_body(**kw):
    return {**AE, "onset": iso(R + dt.timedelta(days=30)), **kw}


def test_each_bad_field_of_an_adverse_event_is_named_and_nothing_is_saved(kids, db):
    w, u = kids["world"], kids["usual"]
    before = state(db)
    future = iso(dt.date.today() + dt.timedelta(days=3))
    for body, field in ((ae_body(term=""), "term"), (ae_body(onset="2026-02-30"), "onset"), (ae_body(onset=future), "onset"),
                        (ae_body(onset=iso(R - dt.timedelta(days=60))), "onset"), (ae_body(severity="grade 3"), "severity"),
                        (ae_body(serious="yes"), "serious"), (ae_body(serious=True), "seriousness"),
                        (ae_body(seriousness=["death"]), "seriousness"), (ae_body(serious=True, seriousness=["sad"]), "seriousness"),
                        (ae_body(relatedness="maybe"), "relatedness"), (ae_body(expectedness="rare"), "expectedness"),
                        (ae_body(outcome="better"), "outcome"), (ae_body(outcome="recovered"), "resolved_on"),
                        (ae_body(outcome="recovered", resolved_on=iso(R + dt.timedelta(days=20))), "resolved_on"),
                        (ae_body(resolved_on=iso(R + dt.timedelta(days=40))), "resolved_on"),
                        (ae_body(outcome="fatal", resolved_on=iso(R + dt.timedelta(days=31))), "serious"),
                        (ae_body(description="a\x00b"), "description")):
        r = w.api("POST", f"/participants/{u.study_id}/adverse-events", "coordinator", json=body)
        assert r.status_code == 400, (body, r.get_json())
        assert field in r.get_json()["error"]["fields"], (field, r.get_json())
    # several at once are all named
    r = w.api("POST", f"/participants/{u.study_id}/adverse-events", "coordinator", json=ae_body(term="", severity="x", outcome="y"))
    assert {"term", "severity", "outcome"} <= set(r.get_json()["error"]["fields"])
    assert state(db) == before
    for who in ROLES:
        if who != "coordinator":
            assert w.api("POST", f"/participants/{u.study_id}/adverse-events", who, json=ae_body()).status_code in (403, 404), who
    assert state(db) == before
    body = ok(w.api("POST", f"/participants/{u.study_id}/adverse-events", "coordinator", json=ae_body()))
    assert body["serious"] is False and body.get("report_due") is None


def test_the_web_adverse_event_form_names_what_is_wrong(kids, app, db):
    u = kids["usual"]
    c = app.test_client()
    c.post("/login", data={"email": "coordinator@example.org", "password": PASSWORD})
    assert "Record an adverse event" in c.get(f"/participants/{u.study_id}").get_data(as_text=True)
    before = state(db)
    r = c.post(f"/participants/{u.study_id}/adverse-events/new",
               data={"term": "Fall", "onset": iso(R + dt.timedelta(days=30)), "severity": "mild", "serious": "y",
                     "relatedness": "not_related", "expectedness": "", "outcome": "recovering"})
    assert r.status_code == 400 and "which criteria make it serious" in r.get_data(as_text=True)
    assert state(db) == before
    r = c.post(f"/participants/{u.study_id}/adverse-events/new",
               data={"term": "Fall", "onset": iso(R + dt.timedelta(days=30)), "severity": "mild", "serious": "y",
                     "seriousness": "hospitalisation", "relatedness": "not_related", "expectedness": "", "outcome": "recovering"})
    assert r.status_code == 302
    page = c.get(r.headers["Location"]).get_data(as_text=True)
    assert "Fall" in page and "Hospitalisation" in page  # the seriousness criterion by its label


class Inbox:
    """A real SMTP server (aiosmtpd) on a free local port; what arrived, parsed."""

    def __init__(self):
        from aiosmtpd.controller import Controller
        self.messages = []
        inbox = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                import email
                inbox.messages.append(email.message_from_bytes(envelope.content))
                return "250 OK"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def to(self, address):
        return [m for m in self.messages if m["To"] == address]

    def wait(self, n, timeout=5.0):
        end = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < end:
            time.sleep(0.02)
        return self.messages

    def stop(self):
        self.controller.stop()


@pytest.fixture()
def inbox(monkeypatch):
    box = Inbox()
    monkeypatch.setenv("TRIAL_SMTP_URL", f"smtp://127.0.0.1:{box.port}")
    monkeypatch.setenv("TRIAL_MAIL_FROM", "trial@example.org")
    monkeypatch.setenv("TRIAL_BASE_URL", "https://trial.example.org")
    monkeypatch.setattr("trial.notify.service._relay_down_until", 0.0)
    yield box
    box.stop()


def test_an_sae_tells_every_manager_in_app_and_by_e_mail_and_runs_a_24_hour_clock(kids, app, db, inbox):
    from trial.auth.service import create_user
    w, hi = kids["world"], kids["high"]
    create_user(db, CLI, "manager2@example.org", "Second Manager", PASSWORD, [("manager", None)])
    db.commit()
    body = ok(w.api("POST", f"/participants/{hi.study_id}/adverse-events", "coordinator",
                    json=ae_body(serious=True, seriousness=["hospitalisation"], severity="severe", term="Febrile seizure")))
    assert body["serious"] is True and body["report_due"]
    inbox.wait(2)
    assert sorted(m["To"] for m in inbox.messages) == ["manager2@example.org", "manager@example.org"]
    m = inbox.to("manager@example.org")[0]
    assert m["From"] == "trial@example.org" and m["Subject"] == f"SAE at AT01: {hi.study_id}"
    text_ = m.get_payload(decode=True).decode()
    assert "Febrile seizure" in text_ and f"https://trial.example.org/adverse-events/{body['id']}" in text_
    db.expire_all()
    assert db.execute(select(func.count()).select_from(MailMessage).where(MailMessage.sent_at.is_(None))).scalar() == 0
    managers = {w.users["manager"].id, db.execute(select(Notification.user_id).where(Notification.user_id != w.users["manager"].id)).scalar()}
    assert {n.user_id for n in db.execute(select(Notification)).scalars()} == managers
    # the clock on the manager's home page, until one acknowledges it
    c = app.test_client()
    c.post("/login", data={"email": "manager@example.org", "password": PASSWORD})
    home = " ".join(c.get("/").get_data(as_text=True).split())
    assert "report due in 23 h" in home and "waits for your acknowledgement" in home
    for who in ROLES:
        if who != "manager":
            r = w.api("POST", f"/adverse-events/{body['id']}/acknowledge", who, json=sae_report())
            assert r.status_code in (403, 404), who
    acked = ok(w.api("POST", f"/adverse-events/{body['id']}/acknowledge", "manager", json=sae_report()), 200)
    assert acked["acknowledged_at"] and acked.get("clock") is None
    assert w.api("POST", f"/adverse-events/{body['id']}/acknowledge", "manager", json=sae_report()).status_code == 409
    assert "waits for your acknowledgement" not in c.get("/").get_data(as_text=True)
    # a non-serious event e-mails nobody
    n = len(inbox.messages)
    ok(w.api("POST", f"/participants/{hi.study_id}/adverse-events", "coordinator", json=ae_body()))
    time.sleep(0.2)
    assert len(inbox.messages) == n


def test_e_mails_to_a_blinded_assessor_name_no_arm_and_no_session(kids, db, inbox):
    w, u, hi = kids["world"], kids["usual"], kids["high"]
    for p in (u, hi):
        ok(w.api("POST", "/queries", "monitor", json={"study_id": p.study_id, "on": {"kind": "assessment", "id": aid(db, p)},
                                                      "text": "Is CSS right?"}))
    ok(w.api("POST", "/queries", "monitor", json={"study_id": hi.study_id, "on": {"kind": "session", "id": session_id(db, hi)},
                                                  "text": "Was the session 45 minutes?"}))
    ok(w.api("POST", f"/participants/{hi.study_id}/adverse-events", "coordinator",
             json=ae_body(serious=True, seriousness=["other_important"], term="Hit by a drum in a session")))
    inbox.wait(4)
    time.sleep(0.2)
    mine = inbox.to("assessor@example.org")
    assert len(mine) == 2
    for m in mine:
        body = m.get_payload(decode=True).decode() + m["Subject"]
        for word in ("session", "drum", "Music therapy", "usual care", "high", "arm", "adverse"):
            assert word not in body.lower().replace("(arm", ""), (word, body)
    told = {m["To"] for m in inbox.messages if "session" in m.get_payload(decode=True).decode()}
    assert told == {"therapist@example.org", "manager@example.org"}  # the session query; the SAE


def test_a_broken_blinding_report_e_mails_the_sites_coordinators(kids, inbox):
    w, u = kids["world"], kids["usual"]
    ok(w.api("POST", f"/participants/{u.study_id}/blinding-breaks", "assessor", json={"description": "the parent said so"}))
    inbox.wait(1)
    assert [m["To"] for m in inbox.messages] == ["coordinator@example.org"]
    assert inbox.messages[0]["Subject"] == f"Blinding broken for {u.study_id}"


def test_a_relay_that_is_down_keeps_the_mail_queued_and_the_request_succeeds(kids, db, monkeypatch):
    w, hi = kids["world"], kids["high"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    monkeypatch.setenv("TRIAL_SMTP_URL", f"smtp://127.0.0.1:{dead}")
    monkeypatch.setattr("trial.notify.service._relay_down_until", 0.0)
    ok(w.api("POST", f"/participants/{hi.study_id}/adverse-events", "coordinator",
             json=ae_body(serious=True, seriousness=["hospitalisation"])))
    db.expire_all()
    [m] = db.execute(select(MailMessage)).scalars().all()
    assert m.sent_at is None and m.attempts == 1 and "unreachable" in m.last_error
    assert m.next_attempt_at is not None and send_pending(db) == (0, 0)  # not tried again before it is due
    m.next_attempt_at = None  # (its wait over; tests/test_mail_outbox.py: the backoff)
    db.commit()
    box = Inbox()
    try:
        monkeypatch.setenv("TRIAL_SMTP_URL", f"smtp://127.0.0.1:{box.port}")
        assert send_pending(db) == (1, 0)
        assert [x["To"] for x in box.wait(1)] == ["manager@example.org"]
        assert send_pending(db) == (0, 0)  # sent once only
    finally:
        box.stop()


def test_notifications_are_dismissed_by_their_owner_only(kids, app, db):
    w, u = kids["world"], kids["usual"]
    ok(w.api("POST", "/queries", "manager", json={"study_id": u.study_id, "on": {"kind": "participant"}, "text": "Consent?"}))
    [n] = ok(w.api("GET", "/notifications", "coordinator"), 200)
    assert set(n) == {"ref", "message", "created_at"} and len(n["ref"]) >= 20  # random: no id, no sequence
    assert "Query AT01-Q1 on" in n["message"]
    other = w.api("POST", f"/notifications/{n['ref']}/dismiss", "assessor")
    unknown = w.api("POST", "/notifications/no-such-reference/dismiss", "assessor")
    assert other.status_code == unknown.status_code == 404 and other.data == unknown.data
    ok(w.api("POST", f"/notifications/{n['ref']}/dismiss", "coordinator"), 200)
    assert ok(w.api("GET", "/notifications", "coordinator"), 200) == []


# --- a fatal SAE and the died event --------------------------------------------------------------

def test_a_fatal_sae_records_the_death_in_the_same_transaction(kids, db):
    w, hi = kids["world"], kids["high"]
    died_on = iso(R + dt.timedelta(days=45))
    body = ok(w.api("POST", f"/participants/{hi.study_id}/adverse-events", "coordinator",
                    json=ae_body(serious=True, seriousness=["death"], outcome="fatal", resolved_on=died_on, term="Drowning")))
    db.expire_all()
    [ev] = db.execute(select(StatusEvent).where(StatusEvent.participant_id == hi.id)).scalars().all()
    assert (ev.type, ev.on.isoformat()) == ("died", died_on)
    assert "Drowning" not in ev.reason and str(body["id"]) in ev.reason  # the term stays in the AE
    assert ok(w.api("GET", f"/participants/{hi.study_id}", "coordinator"), 200)["status"] == "died"
    # a second fatal event with another date is refused, with the recorded date named
    before = state(db)
    r = w.api("POST", f"/participants/{hi.study_id}/adverse-events", "coordinator",
              json=ae_body(serious=True, seriousness=["death"], outcome="fatal", resolved_on=iso(R + dt.timedelta(days=46))))
    assert r.status_code == 409 and died_on in r.get_json()["error"]["message"]
    assert state(db) == before


def test_a_fatal_sae_is_refused_when_a_death_is_recorded_on_another_date(kids, db):
    w, u = kids["world"], kids["usual"]
    ok(w.api("POST", f"/participants/{u.study_id}/events", "coordinator",
             json={"type": "died", "on": iso(R + dt.timedelta(days=50)), "reason": "road accident"}))
    before = state(db)
    r = w.api("POST", f"/participants/{u.study_id}/adverse-events", "coordinator",
              json=ae_body(serious=True, seriousness=["death"], outcome="fatal", resolved_on=iso(R + dt.timedelta(days=49))))
    assert r.status_code == 409 and "resolved_on" in r.get_json()["error"]["fields"]
    assert state(db) == before
    # the same date: the AE is recorded and no second died event
    ok(w.api("POST", f"/participants/{u.study_id}/adverse-events", "coordinator",
             json=ae_body(serious=True, seriousness=["death"], outcome="fatal", resolved_on=iso(R + dt.timedelta(days=50)))))
    assert db.execute(select(func.count()).select_from(StatusEvent).where(StatusEvent.participant_id == u.id)).scalar() == 1


def test_a_follow_up_with_a_fatal_outcome_records_the_death(kids, db):
    w, hi = kids["world"], kids["high"]
    ae = ok(w.api("POST", f"/participants/{hi.study_id}/adverse-events", "coordinator",
                  json=ae_body(serious=True, seriousness=["life_threatening"])))["id"]
    r = w.api("POST", f"/adverse-events/{ae}/follow-ups", "coordinator", json={"on": iso(R + dt.timedelta(days=33)), "outcome": "fatal",
                                                                             "text": "Died in hospital."})
    assert r.status_code == 400 and "resolved_on" in r.get_json()["error"]["fields"]
    ok(w.api("POST", f"/adverse-events/{ae}/follow-ups", "coordinator", json={"on": iso(R + dt.timedelta(days=33)), "outcome": "fatal",
                                                                            "resolved_on": iso(R + dt.timedelta(days=33)),
                                                                            "text": "Died in hospital."}))
    db.expire_all()
    a = db.get(AdverseEvent, ae)
    assert a.outcome == "fatal" and "death" in a.seriousness
    assert db.execute(select(StatusEvent.type).where(StatusEvent.participant_id == hi.id)).scalars().all() == ["died"]
    assert w.api("POST", f"/adverse-events/{ae}/follow-ups", "coordinator",
                 json={"on": iso(R + dt.timedelta(days=34)), "outcome": "fatal", "text": "again"}).status_code == 409
    assert db.execute(select(func.count()).select_from(AdverseEventFollowUp)).scalar() == 1


# --- monitoring ----------------------------------------------------------------------------------

def grid_cell(html: str, assessment_id: int) -> str:
    """The status grid's cell of one entered form."""
    m = re.search(r'<td class="cell[^"]*">(?:(?!</td>).)*#assessment-%d"(?:(?!</td>).)*</td>' % assessment_id, html, re.S)
    assert m, f"no grid cell for assessment {assessment_id}"
    return m.group(0)


def test_a_change_to_a_verified_record_clears_the_mark(kids, app, db):
    w, u = kids["world"], kids["usual"]
    a = aid(db, u)
    for who in ROLES:
        if who != "monitor":
            assert w.api("POST", f"/participants/{u.study_id}/verifications", who,
                         json={"on": {"kind": "assessment", "id": a}}).status_code in (403, 404), who
    ok(w.api("POST", f"/participants/{u.study_id}/verifications", "monitor", json={"on": {"kind": "assessment", "id": a}}))
    assert w.api("POST", f"/participants/{u.study_id}/verifications", "monitor",
                 json={"on": {"kind": "assessment", "id": a}}).status_code == 409
    c = app.test_client()
    c.post("/login", data={"email": "monitor@example.org", "password": PASSWORD})
    assert "✓ verified" in grid_cell(c.get("/dashboard/").get_data(as_text=True), a)
    ok(w.api("POST", f"/assessments/{a}/corrections", "assessor", json={"values": {"rrb": 4}, "reason": "rescored"}), 200)
    db.expire_all()
    [v] = db.execute(select(Verification)).scalars().all()
    assert v.current_key is None and v.cleared_at is not None and "rescored" in v.cleared_reason
    rec = db.execute(select(AuditRecord).where(AuditRecord.entity == "source_verification", AuditRecord.action == "clear_verification")).scalar_one()
    assert "rescored" in rec.reason
    grid = c.get("/dashboard/").get_data(as_text=True)
    assert "✓ verified" not in grid_cell(grid, a) and "not verified" in grid_cell(grid, a)
    ok(w.api("POST", f"/participants/{u.study_id}/verifications", "monitor", json={"on": {"kind": "assessment", "id": a}}))
    # the grid shows no marks to the sites' staff and assessors
    for who in ("coordinator", "assessor"):
        c2 = app.test_client()
        c2.post("/login", data={"email": f"{who}@example.org", "password": PASSWORD})
        assert "verified" not in c2.get("/dashboard/").get_data(as_text=True)


def test_the_monitor_reads_its_sites_and_nothing_else(kids, world, db):
    w = kids["world"]
    no = child(world, site="NO01")
    assert {p["study_id"] for p in ok(w.api("GET", "/participants", "monitor"), 200)} == {kids["usual"].study_id, kids["high"].study_id}
    assert "arm" in ok(w.api("GET", f"/participants/{kids['high'].study_id}", "monitor"), 200)
    assert w.api("GET", f"/participants/{no.study_id}", "monitor").status_code == 404  # as for other sites' staff
    assert ok(w.api("GET", f"/participants/{kids['high'].study_id}/course", "monitor"), 200)["sessions"]
    assert w.api("POST", f"/participants/{no.study_id}/verifications", "monitor", json={"on": {"kind": "participant"}}).status_code == 404
    from trial.auth.service import set_roles
    from trial.errors import ValidationError
    with pytest.raises(ValidationError, match="same site"):
        set_roles(db, CLI, w.users["monitor"], [("monitor", "AT01"), ("assessor", "AT01")], reason="both")


# --- the lock over open queries ------------------------------------------------------------------

def test_a_hard_lock_with_open_queries_answers_409_unless_accepted(kids, db):
    w, u, hi = kids["world"], kids["usual"], kids["high"]
    visible = ok(w.api("POST", "/queries", "monitor", json={"study_id": u.study_id, "on": {"kind": "assessment", "id": aid(db, u)},
                                                            "text": "CSS?"}))["id"]
    hidden = ok(w.api("POST", "/queries", "monitor", json={"study_id": hi.study_id, "on": {"kind": "session", "id": session_id(db, hi)},
                                                           "text": "45 minutes?"}))["id"]
    before = state(db)
    lock = {"kind": "hard", "meaning": "Final lock.", "password": PASSWORD}
    r = w.api("POST", "/locks", "manager", json=lock)
    assert r.status_code == 409
    e = r.get_json()["error"]
    assert e["code"] == "open_queries" and e["fields"] == {str(visible): "Open", str(hidden): "Open"}
    assert state(db) == before
    assert w.api("POST", "/locks", "manager", json={**lock, "accept_open_queries": "yes"}).status_code == 400
    assert ok(w.api("POST", "/locks", "manager", json={"kind": "soft", "meaning": "Soft.", "password": PASSWORD}))  # soft: no check
    body = ok(w.api("POST", "/locks", "manager", json={**lock, "accept_open_queries": True}))
    mine = ok(w.api("GET", "/locks", "manager"), 200)[-1]
    assert mine["id"] == body["id"] and mine["accepted_open_queries"] == [visible, hidden]
    assert "accepting the queries not closed" in mine["meaning"] and str(hidden) not in mine["meaning"]
    blinded = ok(w.api("GET", "/locks", "statistician"), 200)[-1]
    assert blinded["accepted_open_queries"] == [visible] and blinded["meaning"] == mine["meaning"]
    readme = {}
    for who in ("manager", "statistician"):
        z = zipfile.ZipFile(io.BytesIO(w.api("GET", f"/locks/{body['id']}/bundle.zip", who).data))
        readme[who] = next(z.read(n).decode() for n in z.namelist() if n.endswith("README.txt"))
    assert f"Signed with 2 queries not closed, accepted by the signer: {visible}, {hidden}" in readme["manager"]
    assert f"the ones in this dataset: {visible} (see queries.csv)" in readme["statistician"]
    assert str(hidden) not in readme["statistician"].split("Meaning")[1].split("Protocol")[0]
    db.expire_all()
    assert db.execute(select(AuditRecord.reveals_allocation).where(AuditRecord.action == "accept_open_queries")).scalar() is True


def test_every_closed_query_lets_the_hard_lock_through(kids, db):
    w, u = kids["world"], kids["usual"]
    q = ok(w.api("POST", "/queries", "manager", json={"study_id": u.study_id, "on": {"kind": "participant"}, "text": "Consent?"}))["id"]
    ok(w.api("POST", f"/queries/{q}/close", "manager", json={}), 200)
    ok(w.api("POST", "/locks", "manager", json={"kind": "hard", "meaning": "Final lock.", "password": PASSWORD}))


# --- the bundle --------------------------------------------------------------------------------

def _files(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {n.split("/", 1)[1]: z.read(n) for n in z.namelist()}


def _csv(b: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(b.decode())))


def test_the_bundle_holds_the_data_management_tables_in_every_format(kids, db, tmp_path):
    import pyreadstat
    w, u, hi = kids["world"], kids["usual"], kids["high"]
    ae = ok(w.api("POST", f"/participants/{hi.study_id}/adverse-events", "coordinator",
                  json=ae_body(serious=True, seriousness=["hospitalisation"], term="Hit by a drum in a session",
                               relatedness="probable")))["id"]
    ok(w.api("POST", f"/adverse-events/{ae}/follow-ups", "coordinator",
             json={"on": iso(R + dt.timedelta(days=35)), "outcome": "recovered", "resolved_on": iso(R + dt.timedelta(days=35)),
                   "text": "Fully recovered."}))
    vq = ok(w.api("POST", "/queries", "monitor", json={"study_id": u.study_id, "on": {"kind": "assessment", "id": aid(db, u), "field": "css"},
                                                       "text": "CSS 5 or 6?"}))["id"]
    ok(w.api("POST", f"/queries/{vq}/responses", "assessor", json={"text": "6.", "correction": {"values": {"css": 6}}}))
    ok(w.api("POST", f"/queries/{vq}/close", "monitor", json={}), 200)
    hq = ok(w.api("POST", "/queries", "manager", json={"study_id": hi.study_id, "on": {"kind": "adverse_event", "id": ae},
                                                       "text": "Related to the drum?"}))["id"]
    ok(w.api("POST", f"/queries/{hq}/close", "manager", json={}), 200)
    ok(w.api("POST", f"/participants/{u.study_id}/verifications", "monitor", json={"on": {"kind": "participant"}}))
    ok(w.api("POST", f"/participants/{hi.study_id}/verifications", "monitor", json={"on": {"kind": "adverse_event", "id": ae}}))
    ok(w.api("POST", f"/participants/{hi.study_id}/events", "coordinator",
             json={"type": "withdrawn", "on": iso(R + dt.timedelta(days=60)), "reason": "the drumming upset him"}))
    lock_id = ok(w.api("POST", "/locks", "manager", json={"kind": "hard", "meaning": "Final lock.", "password": PASSWORD}))["id"]
    un = _files(w.api("GET", f"/locks/{lock_id}/bundle.zip", "manager").data)
    bl = _files(w.api("GET", f"/locks/{lock_id}/bundle.zip", "statistician").data)
    [row] = _csv(un["csv/ae.csv"])
    assert (row["studyid"], row["term"], row["serious"], row["outcome"]) == (hi.study_id, "Hit by a drum in a session", "1", "recovered")
    assert [r["text"] for r in _csv(un["csv/aefu.csv"])] == ["Fully recovered."]
    assert sorted(int(r["qid"]) for r in _csv(un["csv/queries.csv"])) == [vq, hq]
    assert [int(r["qid"]) for r in _csv(bl["csv/queries.csv"])] == [vq]
    msgs = _csv(bl["csv/querymsg.csv"])
    assert [m["action"] for m in msgs] == ["raise", "response", "close"] and '"css": [5, 6]' in msgs[1]["correctn"]
    assert sorted(r["kind"] for r in _csv(un["csv/verif.csv"])) == ["adverse_event", "participant"]
    assert [r["kind"] for r in _csv(bl["csv/verif.csv"])] == ["participant"]
    summary = {r["arm"]: r for r in _csv(un["reports/ae_summary.csv"])}
    assert summary["high"]["events"] == "1" and summary["high"]["serious"] == "1" and summary["usual"]["events"] == "0"
    assert not any(n.startswith(("csv/ae", "xpt/ae", "dta/ae")) or "ae_summary" in n for n in bl)
    # free text by unblinded staff stays out of the blinded bundle; the drum is nowhere in it
    assert {r["reason"] for r in _csv(bl["csv/events.csv"])} == {"(withheld while blinded)"}
    assert not any(b"drum" in content for content in bl.values())
    assert any(b"drum" in content for content in un.values())
    # the dictionary and the ODM snapshot have them; XPT and DTA read back equal to the CSV
    dictionary = {(r["table"], r["name"]) for r in _csv(un["dictionary.csv"])}
    assert {("ae", "term"), ("aefu", "text"), ("queries", "qid"), ("querymsg", "correctn"), ("verif", "verifby")} <= dictionary
    assert b'ItemGroupOID="IG.AE"' in un["odm/snapshot.xml"] and b'ItemGroupOID="IG.AE"' not in bl["odm/snapshot.xml"]
    for files, tables in ((un, ("ae", "aefu", "queries", "querymsg", "verif")), (bl, ("queries", "querymsg", "verif"))):
        for t in tables:
            rows = _csv(files[f"csv/{t}.csv"])
            for fmt, reader in (("xpt", pyreadstat.read_xport), ("dta", pyreadstat.read_dta)):
                path = tmp_path / f"{t}.{fmt}"
                path.write_bytes(files[f"{fmt}/{t}.{fmt}"])
                df, _ = reader(str(path))
                assert len(df) == len(rows) and [c.lower() for c in df.columns] == list(rows[0]), (t, fmt)
                entries = dictionary_of(files)
                for rec, expect in zip(df.to_dict("records"), rows):
                    for k, v in rec.items():
                        e = expect[k.lower()]
                        assert as_csv(v, entries[(t, k.lower())]) == e, (t, fmt, k, v, e)


def test_what_a_query_is_about_is_named_in_the_protocols_words_in_the_readers_language(kids, app, db):
    """The notification, the list and the query's page name the form, the visit and the field by
    the protocol's labels (in German on a German page), never by their keys."""
    import html

    from trial.protocol.service import current, localized
    w, u = kids["world"], kids["usual"]
    qid = ok(w.api("POST", "/queries", "monitor", json={"study_id": u.study_id, "on": {
        "kind": "assessment", "id": aid(db, u), "field": "rrb"}, "text": "The worksheet says RRB 5."}))["id"]
    content = current(db).content
    said = {}
    for lang in ("en", "de"):
        words = localized(content, lang)
        ins = next(i for i in words["instruments"] if i["key"] == "ados2")
        field = next(f for f in ins["fields"] if f["key"] == "rrb")["label"]
        visit = next(v for v in words["visits"] if v["key"] == "month2")["label"]
        assert field != "rrb" and visit != "month2"
        said[lang] = f"{ins['label']} at {visit}, {field}" if lang == "en" else f"{ins['label']} zur Visite „{visit}“, {field}"
        c = app.test_client()
        assert c.post("/login", data={"email": "assessor@example.org", "password": PASSWORD}).status_code == 302
        for url in (f"/queries/{qid}", "/queries?status=all", "/"):  # the page, the list, the home page's notification
            page = html.unescape(c.get(url, headers={"Accept-Language": lang}).get_data(as_text=True))
            assert said[lang] in page, (lang, url)
            assert ", rrb" not in page and " month2" not in page, (lang, url)
    assert said["en"] != said["de"]
    # as stored (English, for the API and the e-mail's fallback), with its words for each reader
    assessor = w.users["assessor"]
    note = db.execute(select(Notification).where(Notification.user_id == assessor.id)
                      .order_by(Notification.id.desc())).scalars().first()
    assert said["en"] in note.message and "rrb" not in note.message.replace("RRB", "")


def test_the_raise_form_warns_of_assessors_only_on_what_assessors_read(kids, app, db):
    w, u = kids["world"], kids["usual"]
    outcomes.record_assessment(db, CLI, u.study_id, {"visit": "month2", "instrument": "srs2",
                                                     "performed_on": iso(R + dt.timedelta(days=61)),
                                                     "values": {"total_t": 66}})
    db.commit()
    c = app.test_client()
    c.post("/login", data={"email": "monitor@example.org", "password": PASSWORD})
    warned = {}
    for ins in ("ados2", "srs2"):
        page = c.get(f"/participants/{u.study_id}/queries/new?kind=assessment&id={aid(db, u, ins)}")
        assert page.status_code == 200
        warned[ins] = "Assessors read the queries" in page.get_data(as_text=True)
    assert warned == {"ados2": True, "srs2": False}
