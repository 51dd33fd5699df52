"""The five-month course: music-therapy sessions (therapists of the site, music-therapy arms only),
parent counselling for every arm, dose and adherence, therapist scoping, status events and their
effects on data entry, protocol deviations. Through the API wherever an endpoint exists."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select, text

from tests.helpers import CLI, PASSWORD, backdate_randomization, page_body
from trial.audit.models import AuditRecord
from trial.auth.service import create_user, issue_token
from trial.course import service as course
from trial.course.models import CounsellingSession, TherapySession
from trial.errors import Conflict
from trial.participants.models import Assessment, StatusEvent
from trial.status.models import Deviation
from trial.timeline import course_window, planned_sessions, today

SEED = bytes(range(32))
ADOS = {"social_affect": 10, "rrb": 3, "css": 5}


# --- helpers ---------------------------------------------------------------------------------

def rand(world, p, who="coordinator"):
    r = world.api("POST", f"/participants/{p.study_id}/randomize", who, headers={"Idempotency-Key": p.study_id})
    assert r.status_code == 201, r.get_json()
    return r.get_json()["arm"]


def backdate(world, p, days: int | None = None, at: dt.datetime | None = None) -> dt.date:
    """Move the child's randomization into the past; returns the randomization day (UTC site)."""
    at = at or dt.datetime.combine(today() - dt.timedelta(days=days), dt.time(12, 0))
    backdate_randomization(world.db, at, p.id)
    return at.date()


def state(db) -> dict:
    db.expire_all()
    return {m.__name__: db.execute(select(func.count()).select_from(m)).scalar()
            for m in (TherapySession, CounsellingSession, StatusEvent, Deviation, Assessment, AuditRecord)}


def add_user(world, key, roles):
    u = create_user(world.db, CLI, f"{key}@example.org", key.title(), PASSWORD, roles)
    world.users[key] = u
    world.tokens[key] = issue_token(world.db, CLI, u)
    world.db.commit()
    return u


def session(world, p, held_on, who="therapist", **kw):
    body = {"held_on": held_on.isoformat() if isinstance(held_on, dt.date) else held_on, "attendance": "attended",
            "minutes": 30, "techniques": ["songs"]}
    body.update(kw)
    return world.api("POST", f"/participants/{p.study_id}/sessions", who, json=body)


def err(r):
    return r.get_json()["error"]


def d(days_ago: int) -> dt.date:
    return today() - dt.timedelta(days=days_ago)


def one_child_per_arm(world) -> dict:
    """One randomized child per arm at AT01 (fixed seed: the AT01 list starts usual, high, high, low)."""
    world.open(SEED)
    out = {}
    while len(out) < 3:
        p = world.ready()
        out.setdefault(rand(world, p), p)
    return out


@pytest.fixture()
def kids(world):
    return one_child_per_arm(world)


# --- sessions --------------------------------------------------------------------------------

def test_session_is_logged_with_every_field_and_audited_as_allocation_revealing(world, kids, db):
    low = kids["low"]
    backdate(world, low, 30)
    before = state(db)
    r = session(world, low, d(7), minutes=35, techniques=["songs", "free_improvisation", "songs"], engagement=4,
                note="Joined the drum game.")
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["outside_course"] is False
    after = state(db)
    assert after["TherapySession"] == before["TherapySession"] + 1
    s = db.get(TherapySession, r.get_json()["id"])
    assert (s.held_on, s.attendance, s.minutes, s.engagement, s.note) == (d(7), "attended", 35, 4, "Joined the drum game.")
    assert s.techniques == ["free_improvisation", "songs"] and s.logged_by_id == world.users["therapist"].id
    recs = db.execute(select(AuditRecord).where(AuditRecord.entity == "therapy_session",
                                                AuditRecord.entity_id == str(s.id))).scalars().all()
    assert recs and all(rec.reveals_allocation for rec in recs)
    assert {rec.field: rec.new for rec in recs}["attendance"] == "attended"
    c = world.api("GET", f"/participants/{low.study_id}/course", "therapist").get_json()
    assert c["sessions"] == [{"id": s.id, "held_on": d(7).isoformat(), "attendance": "attended", "minutes": 35,
                              "techniques": ["free_improvisation", "songs"], "engagement": 4,
                              "note": "Joined the drum game.", "outside_course": False, "present": None, "goals": []}]


def test_cancelled_and_no_show_sessions_need_no_minutes(world, kids, db):
    low = kids["low"]
    backdate(world, low, 30)
    for i, att in enumerate(("cancelled", "no_show")):
        r = world.api("POST", f"/participants/{low.study_id}/sessions", "therapist",
                      json={"held_on": d(10 + i).isoformat(), "attendance": att})
        assert r.status_code == 201, r.get_json()
    assert sorted(db.execute(select(TherapySession.attendance)).scalars()) == ["cancelled", "no_show"]


def test_session_outside_the_course_window_is_flagged(world, kids, db):
    low = kids["low"]
    start = backdate(world, low, 200)
    _, end = course_window(start, 5)
    assert end < today()
    flags = {}
    for day in (start, end, end + dt.timedelta(days=1), d(3)):
        r = session(world, low, day)
        assert r.status_code == 201, r.get_json()
        flags[day] = r.get_json()["outside_course"]
    assert flags == {start: False, end: False, end + dt.timedelta(days=1): True, d(3): True}
    db.expire_all()
    stored = dict(db.execute(select(TherapySession.held_on, TherapySession.outside_course)).all())
    assert stored == flags


def test_session_before_randomization_is_refused_naming_held_on(world, kids, db):
    low = kids["low"]
    start = backdate(world, low, 30)
    before = state(db)
    r = session(world, low, start - dt.timedelta(days=1))
    assert r.status_code == 400
    assert "held_on" in err(r)["fields"] and "before randomization" in err(r)["message"]
    assert state(db) == before


def test_duplicate_session_is_refused_with_a_clear_message(world, kids, db):
    low = kids["low"]
    backdate(world, low, 30)
    assert session(world, low, d(5)).status_code == 201
    before = state(db)
    r = session(world, low, d(5), attendance="cancelled", minutes=None)
    assert r.status_code == 409
    assert f"A session on {d(5).isoformat()} is already logged for {low.study_id}" in err(r)["message"]
    assert state(db) == before


def test_session_for_a_usual_care_child_is_refused(world, kids, db):
    usual = kids["usual"]
    add_user(world, "both", [("therapist", "AT01"), ("coordinator", "AT01")])
    before = state(db)
    # a therapist does not even see the child
    r = session(world, usual, d(0))
    assert r.status_code == 404 and err(r)["message"] == "No such participant."  # as for an unknown study id
    # someone who sees the child (therapist and coordinator of the site) gets the reason
    r = session(world, usual, d(0), who="both")
    assert r.status_code == 409
    assert err(r)["message"] == f"{usual.study_id} is not in a music-therapy arm: no sessions are logged for this child."
    with pytest.raises(Conflict, match="not in a music-therapy arm"):
        course.log_session(db, CLI, usual.study_id, {"held_on": d(0).isoformat(), "attendance": "attended", "minutes": 30})
    db.rollback()
    assert state(db) == before


def test_session_for_a_child_not_yet_randomized_is_refused(world, kids, db):
    p = world.ready()
    add_user(world, "both", [("therapist", "AT01"), ("coordinator", "AT01")])
    before = state(db)
    assert session(world, p, d(0)).status_code == 404
    r = session(world, p, d(0), who="both")
    assert r.status_code == 409 and "is not randomized" in err(r)["message"]
    assert state(db) == before


BAD_SESSIONS = [
    ("held_on", {"held_on": None}, "is required"),
    ("held_on", {"held_on": "2024-02-30"}, "is not a date"),
    ("held_on", {"held_on": "FUTURE"}, "is in the future"),
    ("attendance", {"attendance": "late"}, "must be one of attended, cancelled, no_show"),
    ("attendance", {"attendance": None}, "must be one of"),
    ("minutes", {"minutes": -1}, "0 to 240"),
    ("minutes", {"minutes": 241}, "0 to 240"),
    ("minutes", {"minutes": "30"}, "whole number"),
    ("minutes", {"minutes": 30.5}, "whole number"),
    ("minutes", {"minutes": True}, "whole number"),
    ("minutes", {"minutes": 0}, "more than 0 minutes"),
    ("minutes", {"minutes": None}, "is required for an attended session"),
    ("minutes", {"minutes": "ABSENT"}, "is required for an attended session"),
    ("minutes", {"attendance": "cancelled", "minutes": 30}, "must be empty (or 0) when Attendance is Cancelled"),
    ("minutes", {"attendance": "no_show", "minutes": 1}, "must be empty (or 0) when Attendance is No show"),
    ("techniques", {"techniques": None}, "must be a list drawn from"),
    ("techniques", {"techniques": ["dance"]}, "must be a list drawn from"),
    ("techniques", {"techniques": "songs"}, "must be a list"),  # the declared body's words for a text
    ("engagement", {"engagement": 0}, "from 1 (none) to 5"),
    ("engagement", {"engagement": 6}, "from 1 (none) to 5"),
    ("note", {"note": "x" * 1001}, "at most 1000 characters"),
    ("note", {"note": 5}, "must be text"),
]


@pytest.mark.parametrize("field,change,why", BAD_SESSIONS, ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD_SESSIONS)])
def test_bad_session_input_is_400_naming_the_field_and_saves_nothing(world, kids, db, field, change, why):
    low = kids["low"]
    backdate(world, low, 30)
    change = {k: (today() + dt.timedelta(days=1)).isoformat() if v == "FUTURE" else v for k, v in change.items()}
    body = {"held_on": d(3).isoformat(), "attendance": "attended", "minutes": 30, "techniques": ["songs"], **change}
    body = {k: v for k, v in body.items() if v != "ABSENT"}
    before = state(db)
    r = world.api("POST", f"/participants/{low.study_id}/sessions", "therapist", json=body)
    assert r.status_code == 400
    e = err(r)
    assert e["code"] == "invalid" and why in e["fields"][field]
    # the message names the field by the label the form shows, never by its key
    assert e["message"] == f"The session was not saved: {course.LABELS[field]} {e['fields'][field]}"
    assert state(db) == before


def test_a_cancelled_or_missed_session_may_say_0_minutes(world, kids, db):
    low = kids["low"]
    backdate(world, low, 30)
    for i, att in enumerate(("cancelled", "no_show")):
        r = session(world, low, d(10 + i), attendance=att, minutes=0, techniques=[])
        assert r.status_code == 201, r.get_json()
    assert sorted(db.execute(select(TherapySession.minutes)).scalars()) == [0, 0]


# --- the web form: an attended session needs its minutes --------------------------------------

def web(app, who="therapist"):
    c = app.test_client()
    assert c.post("/login", data={"email": f"{who}@example.org", "password": PASSWORD}).status_code == 302
    return c


@pytest.mark.parametrize("form,message", [
    ({"attendance": "attended", "minutes": ""}, "Minutes: is required for an attended session"),
    ({"attendance": "attended", "minutes": "0"}, "Minutes: is required for an attended session (more than 0 minutes"),
    ({"attendance": "cancelled", "minutes": "30"}, "Minutes: must be empty (or 0) when Attendance is Cancelled"),
])
def test_the_session_form_refuses_minutes_that_do_not_fit_the_attendance(world, kids, app, db, form, message):
    low = kids["low"]
    backdate(world, low, 30)
    c = web(app)
    before = state(db)  # (after the login, which is audited)
    r = c.post(f"/participants/{low.study_id}/sessions/new",
               data={"held_on": d(3).isoformat(), "techniques": "songs", "engagement": "", "note": "", **form})
    page = r.get_data(as_text=True)
    assert r.status_code == 400 and message in page and "The session was not saved" in page
    assert "minutes " not in page.split("The session was not saved")[1].split("<")[0]  # named by its label only
    assert state(db) == before


def test_the_session_form_saves_an_attended_session_with_minutes(world, kids, app, db):
    low = kids["low"]
    backdate(world, low, 30)
    r = web(app).post(f"/participants/{low.study_id}/sessions/new",
                      data={"held_on": d(3).isoformat(), "attendance": "attended", "minutes": "40", "techniques": "songs",
                            "engagement": "3", "note": ""})
    assert r.status_code == 302
    s = db.execute(select(TherapySession)).scalar_one()
    assert (s.held_on, s.attendance, s.minutes, s.techniques, s.engagement) == (d(3), "attended", 40, ["songs"], 3)


# --- corrections ------------------------------------------------------------------------------

def logged(world, p, days_ago: int, **kw) -> int:
    r = session(world, p, d(days_ago), **kw)
    assert r.status_code == 201, r.get_json()
    return r.get_json()["id"]


def row(db, sid) -> tuple:
    db.expire_all()
    s = db.get(TherapySession, sid)
    return (s.held_on, s.attendance, s.minutes, s.techniques, s.engagement, s.note, s.outside_course)


def correct(world, sid, who="therapist", **body):
    return world.api("POST", f"/sessions/{sid}/corrections", who, json=body)


def corrections(db, sid) -> list[tuple]:
    db.expire_all()
    return [(x.field, x.old, x.new, x.reason, x.actor, x.reveals_allocation) for x in db.execute(
        select(AuditRecord).where(AuditRecord.action == "correct", AuditRecord.entity == "therapy_session",
                                  AuditRecord.entity_id == str(sid)).order_by(AuditRecord.seq)).scalars()]


def test_a_session_correction_is_saved_and_audited_field_by_field_with_the_reason(world, kids, db):
    from trial.audit import service as audit
    low = kids["low"]
    backdate(world, low, 30)
    sid = logged(world, low, 7, minutes=30, techniques=["songs"], engagement=2, note="Joined in.")
    created = {x.field: x.new for x in db.execute(select(AuditRecord).where(
        AuditRecord.entity == "therapy_session", AuditRecord.action == "create")).scalars()}
    r = correct(world, sid, minutes=45, techniques=["songs", "free_improvisation"], note=None,
                reason="  The paper log says 45 minutes  ")
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"id": sid, "held_on": d(7).isoformat(), "attendance": "attended", "minutes": 45,
                            "techniques": ["free_improvisation", "songs"], "engagement": 2, "note": None,
                            "outside_course": False, "present": None, "goals": []}
    assert row(db, sid) == (d(7), "attended", 45, ["free_improvisation", "songs"], 2, None, False)
    reason = "The paper log says 45 minutes"
    assert corrections(db, sid) == [
        ("minutes", "30", "45", reason, "therapist@example.org", True),
        ("techniques", '["songs"]', '["free_improvisation","songs"]', reason, "therapist@example.org", True),
        ("note", "Joined in.", None, reason, "therapist@example.org", True)]
    assert created["minutes"] == "30" and created["note"] == "Joined in."  # the original records are untouched
    assert audit.verify(db).ok
    # the course shows the corrected session
    c = world.api("GET", f"/participants/{low.study_id}/course", "therapist").get_json()
    assert c["sessions"] == [r.get_json()]


def test_a_session_moved_to_another_day_is_checked_and_outside_course_follows(world, kids, db):
    low = kids["low"]
    start = backdate(world, low, 200)
    _, end = course_window(start, 5)
    sid = logged(world, low, 190)
    other = logged(world, low, 180)
    before = state(db)
    refusals = [
        ({"held_on": d(180).isoformat()}, 409, f"A session on {d(180).isoformat()} is already logged for {low.study_id}."),
        ({"held_on": (start - dt.timedelta(days=1)).isoformat()}, 400,
         f"The correction was not saved: Date is before randomization ({start.isoformat()})"),
        ({"held_on": (today() + dt.timedelta(days=1)).isoformat()}, 400, "The correction was not saved: Date "),
        ({"held_on": "2024-02-30"}, 400, "The correction was not saved: Date 2024-02-30 is not a date of the calendar"),
    ]
    for change, status, message in refusals:
        r = correct(world, sid, reason="wrong day", **change)
        assert r.status_code == status and err(r)["message"].startswith(message), (change, r.get_json())
        assert "held_on" in err(r)["fields"]
    assert state(db) == before and row(db, sid)[0] == d(190) and row(db, other)[0] == d(180)
    # moved past the end of the course: flagged, and the flag's change is audited with the date's
    r = correct(world, sid, held_on=(end + dt.timedelta(days=1)).isoformat(), reason="typed the wrong month")
    assert r.status_code == 200 and r.get_json()["outside_course"] is True
    assert [(f, o, n) for f, o, n, *_ in corrections(db, sid)] == [
        ("held_on", d(190).isoformat(), (end + dt.timedelta(days=1)).isoformat()), ("outside_course", "false", "true")]
    dose = world.api("GET", f"/participants/{low.study_id}/course", "therapist").get_json()["dose"]
    assert dose["attended"] == 1 and dose["logged"] == 2


def test_a_session_cannot_be_moved_past_the_end_of_the_intervention_but_can_be_corrected(world, kids, db):
    low = kids["low"]
    backdate(world, low, 60)
    sid = logged(world, low, 40)
    assert world.api("POST", f"/participants/{low.study_id}/events", "coordinator",
                     json={"type": "discontinued_intervention", "on": d(20).isoformat(),
                           "reason": "Child distressed"}).status_code == 201
    before = state(db)
    r = correct(world, sid, held_on=d(10).isoformat(), reason="wrong day")
    assert r.status_code == 409 and "the intervention was discontinued on " + d(20).isoformat() in err(r)["message"]
    assert state(db) == before and row(db, sid)[0] == d(40)
    # the session as it was held can still be corrected
    assert correct(world, sid, engagement=5, reason="rated on paper").status_code == 200
    assert row(db, sid)[4] == 5


def test_an_attended_session_corrected_needs_its_minutes(world, kids, db):
    """A session logged before minutes were required (attended, no minutes) must get its minutes
    with any correction; a session that did not take place loses them."""
    low = kids["low"]
    backdate(world, low, 30)
    sid = logged(world, low, 7)
    db.execute(text("UPDATE therapy_session SET minutes = NULL WHERE id = :i"), {"i": sid})
    db.commit()
    before = state(db)
    r = correct(world, sid, note="Drums", reason="note added")
    assert r.status_code == 400 and err(r)["fields"] == {"minutes": err(r)["fields"]["minutes"]}
    assert err(r)["message"] == ("The correction was not saved: Minutes is required for an attended session "
                                 "(more than 0 minutes, at most 240)")
    assert state(db) == before
    assert correct(world, sid, note="Drums", minutes=30, reason="note and minutes from the paper log").status_code == 200
    # now cancelled: the minutes must go
    r = correct(world, sid, attendance="cancelled", reason="the family cancelled")
    assert r.status_code == 400 and "Minutes must be empty (or 0) when Attendance is Cancelled" in err(r)["message"]
    r = correct(world, sid, attendance="cancelled", minutes=None, reason="the family cancelled")
    assert r.status_code == 200 and (r.get_json()["attendance"], r.get_json()["minutes"]) == ("cancelled", None)
    dose = world.api("GET", f"/participants/{low.study_id}/course", "therapist").get_json()["dose"]
    assert dose["attended"] == 0


BAD_CORRECTIONS = [
    # (body, field, exact message)
    ({"minutes": 45}, "reason", "The correction was not saved: Reason for the correction is required for a correction"),
    ({"minutes": 45, "reason": "   "}, "reason", "The correction was not saved: Reason for the correction is required for a correction"),
    ({"minutes": 45, "reason": None}, "reason", "The correction was not saved: Reason for the correction is required for a correction"),
    ({"minutes": 45, "reason": "x" * 501}, "reason",
     "The correction was not saved: Reason for the correction must be at most 500 characters"),
    ({"minutes": 45, "reason": 7}, "reason", "The correction was not saved: Reason for the correction must be text"),
    ({"minutes": None, "reason": "typo"}, "minutes",
     "The correction was not saved: Minutes is required for an attended session (more than 0 minutes, at most 240)"),
    ({"minutes": 0, "reason": "typo"}, "minutes",
     "The correction was not saved: Minutes is required for an attended session (more than 0 minutes, at most 240)"),
    ({"minutes": 241, "reason": "typo"}, "minutes",
     "The correction was not saved: Minutes must be a whole number of minutes from 0 to 240"),
    ({"minutes": "45", "reason": "typo"}, "minutes",
     "The correction was not saved: Minutes must be a whole number of minutes from 0 to 240"),
    ({"attendance": "no_show", "reason": "typo"}, "minutes",
     "The correction was not saved: Minutes must be empty (or 0) when Attendance is No show: the session did not take place"),
    ({"attendance": "late", "reason": "typo"}, "attendance",
     "The correction was not saved: Attendance must be one of attended, cancelled, no_show"),
    ({"techniques": ["dance"], "reason": "typo"}, "techniques", "The correction was not saved: Techniques must be a list drawn"),
    ({"techniques": None, "reason": "typo"}, "techniques", "The correction was not saved: Techniques must be a list drawn"),
    ({"engagement": 6, "reason": "typo"}, "engagement",
     "The correction was not saved: Child engagement must be a whole number from 1 (none) to 5 (fully engaged)"),
    ({"note": "x" * 1001, "reason": "typo"}, "note", "The correction was not saved: Short note must be at most 1000 characters"),
    ({"held_on": None, "reason": "typo"}, "held_on", "The correction was not saved: Date is required (YYYY-MM-DD)"),
    ({"outside_course": False, "reason": "typo"}, "outside_course",
     "The correction was not saved: outside_course is not a field of a session that can be corrected"),
    ({"minutes": 30, "reason": "typo"}, None, "The correction changes nothing: every field is as recorded."),
    ({"reason": "typo"}, None, "The correction changes nothing: every field is as recorded."),
]


@pytest.mark.parametrize("body,field,message", BAD_CORRECTIONS, ids=[f"{f}-{i}" for i, (_, f, _) in enumerate(BAD_CORRECTIONS)])
def test_bad_session_corrections_are_400_naming_the_field_and_change_nothing(world, kids, db, body, field, message):
    low = kids["low"]
    backdate(world, low, 30)
    sid = logged(world, low, 7)
    recorded, before = row(db, sid), state(db)
    r = correct(world, sid, **body)
    assert r.status_code == 400, r.get_json()
    e = err(r)
    assert e["code"] == "invalid" and e["message"].startswith(message), e
    assert list(e["fields"]) == ([field] if field else [])
    assert row(db, sid) == recorded and state(db) == before


def test_every_bad_field_of_a_correction_is_named_at_once(world, kids, db):
    low = kids["low"]
    backdate(world, low, 30)
    sid = logged(world, low, 7)
    before = state(db)
    # what the declared body refuses (a value of the wrong kind, a limit) is named at once, every field of it
    r = correct(world, sid, minutes=-1, engagement=0, note=7)
    assert r.status_code == 400
    assert set(err(r)["fields"]) == {"reason", "minutes", "engagement", "note"}
    for label in ("Reason for the correction", "Minutes", "Child engagement", "Short note"):
        assert label in err(r)["message"]
    assert state(db) == before
    # then what the service checks against the session and the protocol, every field of it
    r = correct(world, sid, minutes=None, techniques=["dance"], reason="typo")
    assert r.status_code == 400
    assert set(err(r)["fields"]) == {"minutes", "techniques"}
    assert state(db) == before


@pytest.mark.parametrize("who,status", [("coordinator", 403), ("coordinator_no", 403), ("assessor", 403), ("monitor", 403),
                                        ("statistician", 403), ("manager", 403), ("admin", 403), (None, 401)])
def test_only_the_therapist_corrects_a_session_and_nobody_else_learns_of_it(world, kids, db, who, status):
    low = kids["low"]
    backdate(world, low, 30)
    sid = logged(world, low, 7, note="played drums")
    recorded, before = row(db, sid), state(db)
    answers = []
    for target in (sid, sid + 1000):  # the session, and one that does not exist: the same answer
        r = correct(world, target, who=who, minutes=45, reason="typo")
        assert r.status_code == status
        body = r.get_data(as_text=True)
        assert "drums" not in body and low.study_id not in body and "Music therapy" not in body
        answers.append(body)
    assert answers[0] == answers[1]
    assert row(db, sid) == recorded and state(db) == before


def test_a_therapist_of_another_site_gets_404_like_a_session_that_does_not_exist(world, kids, db):
    low = kids["low"]
    backdate(world, low, 30)
    sid = logged(world, low, 7)
    add_user(world, "therapist_no", [("therapist", "NO01")])
    recorded, before = row(db, sid), state(db)
    seen = correct(world, sid, who="therapist_no", minutes=45, reason="typo")
    missing = correct(world, 999999, who="therapist_no", minutes=45, reason="typo")
    assert seen.status_code == missing.status_code == 404
    assert err(seen) == err(missing) and err(seen)["message"] == "No such session."
    assert row(db, sid) == recorded and state(db) == before


def test_a_session_correction_clears_its_verification_mark(world, kids, db, app):
    from trial.dataquality.models import Verification
    low = kids["low"]
    backdate(world, low, 30)
    sid = logged(world, low, 7)
    other = logged(world, low, 6)
    for target in (sid, other):
        assert world.api("POST", f"/participants/{low.study_id}/verifications", "monitor",
                         json={"on": {"kind": "session", "id": target}}).status_code == 201
    assert correct(world, sid, minutes=50, reason="paper log says 50").status_code == 200
    db.expire_all()
    marks = {v.target_id: v for v in db.execute(select(Verification)).scalars()}
    assert marks[sid].current_key is None and "paper log says 50" in marks[sid].cleared_reason
    assert marks[other].current_key is not None and marks[other].cleared_at is None  # only the corrected one
    rec = db.execute(select(AuditRecord).where(AuditRecord.action == "clear_verification")).scalar_one()
    assert rec.reveals_allocation and "paper log says 50" in rec.reason
    page = web(app, "monitor").get(f"/participants/{low.study_id}").get_data(as_text=True)
    assert page.count("✓ verified") == 1
    # a refused correction clears nothing
    assert correct(world, other, minutes=0, reason="typo").status_code == 400
    db.expire_all()
    assert db.get(Verification, marks[other].id).current_key is not None


def test_the_session_correction_form(world, kids, db, app):
    low = kids["low"]
    backdate(world, low, 30)
    sid = logged(world, low, 7, minutes=30, techniques=["songs"], engagement=4, note="Joined in.")
    c = web(app)
    # the participant's course links each session to its correction, for the site's therapist only
    assert f'href="/sessions/{sid}/correct"' in c.get(f"/participants/{low.study_id}").get_data(as_text=True)
    for who in ("coordinator", "monitor", "manager"):
        seen = web(app, who).get(f"/participants/{low.study_id}").get_data(as_text=True)
        assert f"session-{sid}" in seen and f"/sessions/{sid}/correct" not in seen, who
    page = c.get(f"/sessions/{sid}/correct")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "Reason for the correction" in html and "Save correction" in html
    assert f'value="{d(7).isoformat()}"' in html and 'value="30"' in html and "Joined in." in html
    form = {"held_on": d(7).isoformat(), "attendance": "attended", "techniques": "songs", "engagement": "4",
            "note": "Joined in."}
    recorded, before = row(db, sid), state(db)
    # no reason: refused next to the field; an attended session without minutes: refused naming Minutes
    r = c.post(f"/sessions/{sid}/correct", data={**form, "minutes": "45", "reason": ""})
    assert r.status_code == 400 and "This field is required." in r.get_data(as_text=True)
    r = c.post(f"/sessions/{sid}/correct", data={**form, "minutes": "", "reason": "typo"})
    html = r.get_data(as_text=True)
    assert r.status_code == 400 and "The correction was not saved" in html
    assert "Minutes: is required for an attended session" in html  # in the summary above the form, linked to the field
    r = c.post(f"/sessions/{sid}/correct", data={**form, "minutes": "30", "reason": "typo"})
    assert r.status_code == 400 and "The correction changes nothing" in r.get_data(as_text=True)
    assert row(db, sid) == recorded and state(db) == before
    r = c.post(f"/sessions/{sid}/correct", data={**form, "minutes": "45", "reason": "paper log says 45"})
    assert r.status_code == 302 and r.headers["Location"].endswith(f"/participants/{low.study_id}#session-{sid}")
    assert row(db, sid)[2] == 45
    assert corrections(db, sid) == [("minutes", "30", "45", "paper log says 45", "therapist@example.org", True)]
    assert "Correction saved" in c.get(f"/participants/{low.study_id}").get_data(as_text=True)


def test_the_session_correction_page_is_refused_to_everyone_else(world, kids, db, app):
    low = kids["low"]
    backdate(world, low, 30)
    sid = logged(world, low, 7, note="played drums")
    add_user(world, "therapist_no", [("therapist", "NO01")])
    for who, status in (("coordinator", 403), ("assessor", 403), ("statistician", 403), ("admin", 403),
                        ("manager", 403), ("monitor", 403), ("therapist_no", 404)):
        c = web(app, who)
        pages = [c.get(f"/sessions/{target}/correct") for target in (sid, 999999)]
        assert [p.status_code for p in pages] == [status, status], who
        for p in pages:
            assert "drums" not in p.get_data(as_text=True) and low.study_id not in p.get_data(as_text=True)
        if status == 403:  # the same page for a session and for none
            assert page_body(pages[0]) == page_body(pages[1]), who
        r = c.post(f"/sessions/{sid}/correct", data={"held_on": d(7).isoformat(), "attendance": "attended",
                                                     "minutes": "45", "reason": "typo"})
        assert r.status_code in (400, 403, 404)  # the CSRF token is missing, or refused outright
    assert row(db, sid)[2] == 30


# --- therapist scoping and blinding ----------------------------------------------------------

def test_therapist_sees_only_music_therapy_children_of_their_sites(world, kids, db):
    world.ready()  # enrolled, not randomized
    listed = {p["study_id"] for p in world.api("GET", "/participants", "therapist").get_json()}
    music = {p["study_id"] for p in world.api("GET", "/participants", "coordinator").get_json()
             if p.get("arm") in ("low", "high")}
    assert listed == music and {kids["low"].study_id, kids["high"].study_id} <= music
    assert kids["usual"].study_id not in listed
    assert world.api("GET", f"/participants/{kids['usual'].study_id}", "therapist").status_code == 404
    assert world.api("GET", f"/participants/{kids['usual'].study_id}/course", "therapist").status_code == 404
    seen = world.api("GET", f"/participants/{kids['low'].study_id}", "therapist").get_json()
    assert seen["arm"] == "low"


def test_therapist_of_another_site_is_refused_and_sees_nothing(world, kids, db):
    low = kids["low"]
    backdate(world, low, 30)
    add_user(world, "therapist_no", [("therapist", "NO01")])
    before = state(db)
    r = session(world, low, d(3), who="therapist_no")
    assert r.status_code == 404 and err(r)["message"] == "No such participant."  # as for an unknown study id
    assert world.api("GET", f"/participants/{low.study_id}", "therapist_no").status_code == 404
    assert world.api("GET", f"/participants/{low.study_id}/course", "therapist_no").status_code == 404
    assert world.api("GET", "/participants", "therapist_no").get_json() == []
    adh = world.api("GET", "/adherence", "therapist_no").get_json()
    assert all(row["participants"] == 0 for row in adh)
    assert state(db) == before


@pytest.mark.parametrize("who,status", [("coordinator", 403), ("coordinator_no", 403), ("assessor", 403),
                                        ("statistician", 403), ("manager", 403), ("admin", 403), (None, 401)])
def test_only_therapists_log_sessions(world, kids, db, who, status):
    low = kids["low"]
    backdate(world, low, 30)
    before = state(db)
    r = session(world, low, d(3), who=who)
    assert r.status_code == status
    assert '"low"' not in r.get_data(as_text=True) and "Music therapy" not in r.get_data(as_text=True)
    assert state(db) == before


@pytest.mark.parametrize("who", ["assessor", "statistician", "admin"])
def test_blinded_roles_get_no_session_data_or_adherence(world, kids, who):
    low = kids["low"]
    backdate(world, low, 30)
    assert session(world, low, d(3)).status_code == 201
    for path in (f"/participants/{low.study_id}/course", "/adherence"):
        r = world.api("GET", path, who)
        assert r.status_code == 403
        assert "attended" not in r.get_data(as_text=True) and "Music therapy" not in r.get_data(as_text=True)


# --- dose and adherence ----------------------------------------------------------------------

def test_dose_received_per_child_is_attended_over_planned(world, kids, db):
    low, high, usual = kids["low"], kids["high"], kids["usual"]
    start = backdate(world, low, 30)
    backdate(world, high, 30)
    _, end = course_window(start, 5)
    for i, att in enumerate(("attended", "attended", "cancelled", "no_show")):
        assert session(world, low, d(20 - i), attendance=att, minutes=30 if att == "attended" else None).status_code == 201
    c = world.api("GET", f"/participants/{low.study_id}/course", "therapist").get_json()
    planned = planned_sessions(1, start, end)
    assert 21 <= planned <= 22
    assert c["arm"] == "low" and len(c["sessions"]) == 4
    assert c["dose"] == {"planned": planned, "attended": 2, "logged": 4, "dose": round(2 / planned, 3),
                         "course_start": start.isoformat(), "course_end": end.isoformat()}
    h = world.api("GET", f"/participants/{high.study_id}/course", "coordinator").get_json()
    assert h["dose"]["planned"] == planned_sessions(3, start, end) and h["dose"]["dose"] == 0
    u = world.api("GET", f"/participants/{usual.study_id}/course", "coordinator").get_json()
    assert u["sessions"] == [] and "dose" not in u and u["arm"] == "usual"


def test_sessions_outside_the_course_do_not_count_towards_the_dose(world, kids):
    low = kids["low"]
    start = backdate(world, low, 200)
    _, end = course_window(start, 5)
    assert session(world, low, start + dt.timedelta(days=7)).status_code == 201
    assert session(world, low, end + dt.timedelta(days=7)).status_code == 201
    dose = world.api("GET", f"/participants/{low.study_id}/course", "coordinator").get_json()["dose"]
    assert dose["attended"] == 1 and dose["logged"] == 2


def test_adherence_by_arm_for_unblinded_roles(world, kids, db):
    low, high = kids["low"], kids["high"]
    for p in list(kids.values()):
        backdate(world, p, 30)
    others = [p for p in world.api("GET", "/participants", "coordinator").get_json()
              if p.get("arm") == "high" and p["study_id"] != high.study_id]
    start = d(30)
    _, end = course_window(start, 5)
    pl_low, pl_high = planned_sessions(1, start, end), planned_sessions(3, start, end)
    for i in range(2):
        assert session(world, low, d(20 - i)).status_code == 201
    for i in range(3):
        assert session(world, high, d(20 - i)).status_code == 201
    assert session(world, high, d(10), attendance="no_show", minutes=None).status_code == 201
    rows = {r["arm"]: r for r in world.api("GET", "/adherence", "coordinator").get_json()}
    assert set(rows) == {"low", "high", "usual"}
    assert rows["low"] == {"arm": "low", "label": "Music therapy, 1 session per week", "participants": 1,
                           "sessions_attended": 2, "mean_dose": round(2 / pl_low, 3), "received_minimum": 1}
    n_high = 1 + len(others)
    high_doses = [round(3 / pl_high, 3)] + [0.0] * len(others)
    assert rows["high"]["participants"] == n_high and rows["high"]["sessions_attended"] == 3
    assert rows["high"]["received_minimum"] == 1
    # the other high-arm children were randomized today: their planned count may differ by one
    assert rows["high"]["mean_dose"] == pytest.approx(sum(high_doses) / n_high, abs=0.002)
    assert rows["usual"] == {"arm": "usual", "label": "Enhanced usual care", "participants": 1, "sessions_attended": 0,
                             "mean_dose": None, "received_minimum": None}
    assert world.api("GET", "/adherence", "manager").get_json() == list(rows.values())
    assert {r["arm"]: r["participants"] for r in world.api("GET", "/adherence?site=AT01", "manager").get_json()} == \
        {a: r["participants"] for a, r in rows.items()}
    assert all(r["participants"] == 0 for r in world.api("GET", "/adherence?site=NO01", "manager").get_json())
    assert all(r["participants"] == 0 for r in world.api("GET", "/adherence", "coordinator_no").get_json())


def test_adherence_follows_every_change_though_kept_per_process(world, kids, db):
    """The summary is kept by the audit chain's head: the same numbers while nothing changes, new
    ones after any change (a session logged, then corrected)."""
    low = kids["low"]
    backdate(world, low, 30)

    def attended():
        return {r["arm"]: r["sessions_attended"] for r in world.api("GET", "/adherence", "manager").get_json()}["low"]
    assert attended() == attended() == 0
    assert session(world, low, d(20)).status_code == 201
    assert attended() == 1
    assert session(world, low, d(19)).status_code == 201
    assert attended() == 2
    sid = world.api("GET", f"/participants/{low.study_id}/course", "coordinator").get_json()["sessions"][-1]["id"]
    r = world.api("POST", f"/sessions/{sid}/corrections", "therapist",
                  json={"attendance": "cancelled", "minutes": None, "reason": "logged in error"})
    assert r.status_code == 200, r.get_json()
    assert attended() == 1


# --- parent counselling ----------------------------------------------------------------------

def test_parent_counselling_for_every_arm_up_to_the_protocol_count(world, kids, db):
    for arm in ("usual", "low"):
        p = kids[arm]
        for n in (1, 2, 3):
            r = world.api("POST", f"/participants/{p.study_id}/counselling", "coordinator",
                          json={"held_on": d(10 - n).isoformat(), "note": f"session {n}"})
            assert r.status_code == 201, r.get_json()
            assert r.get_json()["number"] == n
        before = state(db)
        r = world.api("POST", f"/participants/{p.study_id}/counselling", "coordinator", json={"held_on": d(1).isoformat()})
        assert r.status_code == 409
        assert err(r)["message"] == f"All 3 parent-counselling sessions of the protocol are already logged for {p.study_id}."
        assert state(db) == before
        c = world.api("GET", f"/participants/{p.study_id}/course", "coordinator").get_json()
        assert c["counselling"] == [{"number": n, "held_on": d(10 - n).isoformat(), "attended": True} for n in (1, 2, 3)]
    recs = db.execute(select(AuditRecord).where(AuditRecord.entity == "counselling_session")).scalars().all()
    assert recs and not any(r.reveals_allocation for r in recs)


@pytest.mark.parametrize("who,body,status,field,why", [
    ("coordinator", {"held_on": "DUP"}, 409, None, "already logged"),
    ("coordinator", {}, 400, "held_on", "is required"),
    ("coordinator", {"held_on": "yesterday"}, 400, "held_on", "is not a date"),
    ("coordinator", {"held_on": "FUTURE"}, 400, "held_on", "is in the future"),
    ("coordinator", {"held_on": "OK", "attended": "yes"}, 400, "attended", "true or false"),
    ("coordinator", {"held_on": "OK", "note": "x" * 1001}, 400, "note", "at most 1000"),
    ("coordinator_no", {"held_on": "OK"}, 404, None, "No such participant."),
    ("therapist", {"held_on": "OK"}, 403, None, None),
    ("assessor", {"held_on": "OK"}, 403, None, None),
    ("manager", {"held_on": "OK"}, 403, None, None),
])
def test_counselling_failures_change_nothing(world, kids, db, who, body, status, field, why):
    p = kids["usual"]
    assert world.api("POST", f"/participants/{p.study_id}/counselling", "coordinator",
                     json={"held_on": d(5).isoformat()}).status_code == 201
    subst = {"DUP": d(5).isoformat(), "OK": d(2).isoformat(), "FUTURE": (today() + dt.timedelta(days=1)).isoformat()}
    body = {k: subst.get(v, v) if isinstance(v, str) else v for k, v in body.items()}
    before = state(db)
    r = world.api("POST", f"/participants/{p.study_id}/counselling", who, json=body)
    assert r.status_code == status
    if field:
        assert why in err(r)["fields"][field] and field in err(r)["message"]
    elif why:
        assert why in err(r)["message"]
    assert state(db) == before


# --- status events ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["withdrawn", "lost_to_follow_up", "discontinued_intervention", "not_received", "died"])
def test_each_status_event_is_recorded_dated_with_a_reason(world, kids, db, kind):
    p = kids["low"]
    before = state(db)
    r = world.api("POST", f"/participants/{p.study_id}/events", "coordinator",
                  json={"type": kind, "on": d(2).isoformat(), "reason": "  Family moved abroad  "})
    assert r.status_code == 201, r.get_json()
    ev = db.get(StatusEvent, r.get_json()["id"])
    assert (ev.type, ev.on, ev.reason, ev.recorded_by_id) == (kind, d(2), "Family moved abroad", world.users["coordinator"].id)
    assert state(db)["StatusEvent"] == before["StatusEvent"] + 1
    recs = db.execute(select(AuditRecord).where(AuditRecord.entity == "status_event",
                                                AuditRecord.entity_id == str(ev.id))).scalars().all()
    assert {r.field: r.new for r in recs}["type"] == kind
    view = world.api("GET", f"/participants/{p.study_id}", "coordinator").get_json()
    assert view["status"] == kind and view["events"] == [{"type": kind, "on": d(2).isoformat()}]


@pytest.mark.parametrize("who,body,status,field,why", [
    ("coordinator", {"type": "moved_away"}, 400, "type",
     "must be one of withdrawn, lost_to_follow_up, discontinued_intervention, not_received, died"),
    ("coordinator", {"type": None}, 400, "type", "must be one of"),
    ("coordinator", {"reason": ""}, 400, "reason", "is required"),
    ("coordinator", {"reason": "   "}, 400, "reason", "is required"),
    ("coordinator", {"reason": None}, 400, "reason", "is required"),
    ("coordinator", {"reason": "x" * 501}, 400, "reason", "at most 500"),
    ("coordinator", {"on": None}, 400, "on", "is required"),
    ("coordinator", {"on": "02/03/2024"}, 400, "on", "is not a date"),
    ("coordinator", {"on": "FUTURE"}, 400, "on", "is in the future"),
    ("coordinator", {"on": "BEFORE_CONSENT"}, 400, "on", "is before consent"),
    ("coordinator_no", {}, 404, None, "No such participant."),
    ("therapist", {}, 403, None, None),
    ("assessor", {}, 403, None, None),
    ("manager", {}, 403, None, None),
    ("statistician", {}, 403, None, None),
    (None, {}, 401, None, None),
])
def test_status_event_failures_change_nothing(world, kids, db, who, body, status, field, why):
    p = kids["low"]
    data = {"type": "withdrawn", "on": d(1).isoformat(), "reason": "Parents withdrew consent"}
    subst = {"FUTURE": (today() + dt.timedelta(days=1)).isoformat(),
             "BEFORE_CONSENT": (p.consent_date - dt.timedelta(days=1)).isoformat()}
    data.update({k: subst.get(v, v) if isinstance(v, str) else v for k, v in body.items()})
    before = state(db)
    r = world.api("POST", f"/participants/{p.study_id}/events", who, json=data)
    assert r.status_code == status
    if field:
        assert why in err(r)["fields"][field] and field in err(r)["message"]
        assert err(r)["message"].startswith("The event was not recorded")
    elif why:
        assert why in err(r)["message"]
    assert state(db) == before


def test_the_same_event_twice_is_409(world, kids, db):
    p = kids["low"]
    body = {"type": "lost_to_follow_up", "on": d(3).isoformat(), "reason": "No contact"}
    assert world.api("POST", f"/participants/{p.study_id}/events", "coordinator", json=body).status_code == 201
    before = state(db)
    r = world.api("POST", f"/participants/{p.study_id}/events", "coordinator", json={**body, "on": d(1).isoformat()})
    assert r.status_code == 409 and "already has the event “Lost to follow-up”" in err(r)["message"]
    assert state(db) == before


@pytest.mark.parametrize("kind", ["withdrawn", "died"])
def test_withdrawn_or_deceased_child_refuses_new_data(world, kids, db, kind):
    low = kids["low"]
    backdate(world, low, 61)
    assert world.api("POST", f"/participants/{low.study_id}/events", "coordinator",
                     json={"type": kind, "on": d(5).isoformat(), "reason": "Parents' decision"}).status_code == 201
    before = state(db)
    refused = f"{low.study_id}: {kind} on {d(5).isoformat()}; no further data is accepted."
    attempts = [
        ("therapist", f"/participants/{low.study_id}/sessions", {"held_on": d(6).isoformat(), "attendance": "attended", "minutes": 30}),
        ("therapist", f"/participants/{low.study_id}/sessions", {"held_on": d(1).isoformat(), "attendance": "attended", "minutes": 30}),
        ("coordinator", f"/participants/{low.study_id}/counselling", {"held_on": d(1).isoformat()}),
        ("assessor", f"/participants/{low.study_id}/assessments",
         {"visit": "month2", "instrument": "ados2", "performed_on": d(0).isoformat(), "values": ADOS}),
        ("coordinator", f"/participants/{low.study_id}/assessments",
         {"visit": "month2", "instrument": "srs2", "performed_on": d(0).isoformat(), "values": {"total_t": 60}}),
        ("coordinator", f"/participants/{low.study_id}/events",
         {"type": "lost_to_follow_up", "on": d(1).isoformat(), "reason": "no contact"}),
    ]
    for who, path, body in attempts:
        r = world.api("POST", path, who, json=body)
        assert r.status_code == 409, (path, r.get_json())
        assert err(r)["message"] == refused
    assert state(db) == before
    assert world.api("GET", f"/participants/{low.study_id}", "coordinator").get_json()["status"] == kind


def test_discontinued_intervention_stops_sessions_but_the_child_is_still_followed_up(world, kids, db):
    low = kids["low"]
    backdate(world, low, 61)
    assert world.api("POST", f"/participants/{low.study_id}/events", "coordinator",
                     json={"type": "discontinued_intervention", "on": d(10).isoformat(),
                           "reason": "Child distressed by the sessions"}).status_code == 201
    before = state(db)
    for day in (d(10), d(3)):
        r = session(world, low, day)
        assert r.status_code == 409
        assert f"the intervention was discontinued on {d(10).isoformat()}" in err(r)["message"]
        assert "still followed up" in err(r)["message"]
    assert state(db) == before
    # a session held before the discontinuation can still be logged late
    assert session(world, low, d(20)).status_code == 201
    # follow-up continues: visits, parent-reported outcomes and counselling are accepted
    r = world.api("POST", f"/participants/{low.study_id}/assessments", "assessor",
                  json={"visit": "month2", "instrument": "ados2", "performed_on": d(0).isoformat(), "values": ADOS})
    assert r.status_code == 201, r.get_json()
    assert world.api("POST", f"/participants/{low.study_id}/assessments", "coordinator",
                     json={"visit": "month2", "instrument": "srs2", "performed_on": d(0).isoformat(),
                           "values": {"total_t": 62}}).status_code == 201
    assert world.api("POST", f"/participants/{low.study_id}/counselling", "coordinator",
                     json={"held_on": d(1).isoformat()}).status_code == 201
    assert world.api("GET", f"/participants/{low.study_id}", "coordinator").get_json()["status"] == "discontinued_intervention"


def test_not_received_refuses_sessions_and_lost_to_follow_up_still_accepts_data(world, kids, db):
    low, high = kids["low"], kids["high"]
    backdate(world, low, 61)
    backdate(world, high, 61)
    assert world.api("POST", f"/participants/{low.study_id}/events", "coordinator",
                     json={"type": "not_received", "on": d(20).isoformat(), "reason": "Family declined therapy"}).status_code == 201
    before = state(db)
    r = session(world, low, d(5))
    assert r.status_code == 409 and "not received" in err(r)["message"]
    assert state(db) == before
    assert world.api("POST", f"/participants/{high.study_id}/events", "coordinator",
                     json={"type": "lost_to_follow_up", "on": d(5).isoformat(), "reason": "No contact"}).status_code == 201
    assert session(world, high, d(2)).status_code == 201
    assert world.api("POST", f"/participants/{high.study_id}/assessments", "assessor",
                     json={"visit": "month2", "instrument": "ados2", "performed_on": d(0).isoformat(),
                           "values": ADOS}).status_code == 201


def test_intervention_events_are_hidden_from_blinded_readers(world, kids, db):
    low = kids["low"]
    assert world.api("POST", f"/participants/{low.study_id}/events", "coordinator",
                     json={"type": "discontinued_intervention", "on": d(1).isoformat(), "reason": "x"}).status_code == 201
    seen = world.api("GET", f"/participants/{low.study_id}", "assessor").get_json()
    assert seen["status"] == "randomized" and seen["events"] == [] and "arm" not in seen
    recs = db.execute(select(AuditRecord).where(AuditRecord.entity == "status_event")).scalars().all()
    assert recs and all(r.reveals_allocation for r in recs)


# --- protocol deviations ---------------------------------------------------------------------

def test_protocol_deviation_is_recorded_and_audited(world, kids, db):
    p = kids["usual"]
    before = state(db)
    r = world.api("POST", f"/participants/{p.study_id}/deviations", "coordinator",
                  json={"on": d(3).isoformat(), "category": "visit_out_of_window",
                        "description": " 2-month visit done 3 weeks late "})
    assert r.status_code == 201, r.get_json()
    dev = db.get(Deviation, r.get_json()["id"])
    assert (dev.on, dev.category, dev.description) == (d(3), "visit_out_of_window", "2-month visit done 3 weeks late")
    assert state(db)["Deviation"] == before["Deviation"] + 1
    r = world.api("POST", f"/participants/{p.study_id}/deviations", "coordinator",
                  json={"on": d(2).isoformat(), "category": "intervention", "description": "Extra session given"})
    assert r.status_code == 201
    recs = db.execute(select(AuditRecord).where(AuditRecord.entity == "deviation")).scalars().all()
    by_id = {}
    for rec in recs:
        by_id.setdefault(rec.entity_id, set()).add(rec.reveals_allocation)
    assert by_id == {str(dev.id): {False}, str(r.get_json()["id"]): {True}}


@pytest.mark.parametrize("who,body,status,field,why", [
    ("coordinator", {"category": "bad_weather"}, 400, "category", "must be one of eligibility, consent"),
    ("coordinator", {"category": None}, 400, "category", "must be one of"),
    ("coordinator", {"description": ""}, 400, "description", "is required"),
    ("coordinator", {"description": None}, 400, "description", "is required"),
    ("coordinator", {"on": None}, 400, "on", "is required"),
    ("coordinator", {"on": "FUTURE"}, 400, "on", "is in the future"),
    ("coordinator_no", {}, 404, None, "No such participant."),
    ("therapist", {}, 403, None, None),
    ("assessor", {}, 403, None, None),
    ("manager", {}, 403, None, None),
])
def test_deviation_failures_change_nothing(world, kids, db, who, body, status, field, why):
    p = kids["low"]
    data = {"on": d(1).isoformat(), "category": "consent", "description": "Consent form version outdated"}
    data.update({k: (today() + dt.timedelta(days=1)).isoformat() if v == "FUTURE" else v for k, v in body.items()})
    before = state(db)
    r = world.api("POST", f"/participants/{p.study_id}/deviations", who, json=data)
    assert r.status_code == status
    if field:
        assert why in err(r)["fields"][field] and field in err(r)["message"]
    elif why:
        assert why in err(r)["message"]
    assert state(db) == before


# --- site time zone --------------------------------------------------------------------------

def test_session_held_today_in_the_sites_time_zone_is_accepted(world, kids, db, monkeypatch):
    from trial.sites.service import update_site
    update_site(db, CLI, "AT01", {"timezone": "Pacific/Auckland"}, reason="site moved for the test")
    db.commit()
    low = kids["low"]
    # randomized on 29 Feb 2024, 09:00 in Auckland (28 Feb 20:00 UTC); it is now 10:00 the same day there
    backdate(world, low, at=dt.datetime(2024, 2, 28, 20, 0))
    monkeypatch.setattr("trial.timeline.utc_now", lambda: dt.datetime(2024, 2, 28, 21, 0))
    before = state(db)
    r = session(world, low, dt.date(2024, 2, 29))
    assert r.status_code == 201, r.get_json()
    assert state(db)["TherapySession"] == before["TherapySession"] + 1


def test_intervention_events_need_a_randomized_child(world):
    import datetime as _dt
    p = world.enroll()
    for kind in ("not_received", "discontinued_intervention", "lost_to_follow_up"):
        r = world.api("POST", f"/participants/{p.study_id}/events", "coordinator",
                      json={"type": kind, "on": _dt.date.today().isoformat(), "reason": "x"})
        assert r.status_code == 409 and "not randomized" in r.get_json()["error"]["message"]


# --- the session tallies (adherence reads them) --------------------------------------------------

def test_each_childs_session_tally_is_kept_by_the_writers(world, kids, db):
    from trial.course.models import CourseTally
    from trial.course.service import adherence_by_arm, recount_all, tally_stale
    low, high = kids["low"], kids["high"]
    backdate(world, low, 200)  # the five-month course has ended: a session now is outside it
    backdate(world, high, 30)

    def tally(p):
        db.expire_all()
        t = db.get(CourseTally, p.id)
        return (t.attended, t.logged) if t else None
    assert tally(low) is None  # no session yet: no tally, read as zero
    logged(world, low, 190)
    logged(world, low, 183, attendance="no_show", minutes=None)
    late = logged(world, low, 2)  # after the course
    assert tally(low) == (1, 3)
    for days in (20, 13, 6):
        logged(world, high, days)
    assert tally(high) == (3, 3)
    # a correction counts again: a session marked as not attended no longer counts
    first = db.execute(select(TherapySession.id).where(TherapySession.participant_id == high.id)
                       .order_by(TherapySession.held_on)).scalars().first()
    assert correct(world, first, attendance="cancelled", minutes=None, reason="Entered the wrong way").status_code == 200
    assert tally(high) == (2, 3)
    assert correct(world, late, note="After the course.", reason="Note added").status_code == 200
    assert tally(low) == (1, 3) and tally_stale(db) == []
    by_arm = {r["arm"]: r for r in adherence_by_arm(db, world.users["manager"])}
    assert by_arm["low"]["sessions_attended"] == 1 and by_arm["high"]["sessions_attended"] == 2
    # a tally changed behind the writers is found, and counted again from the sessions
    db.execute(text("UPDATE course_tally SET attended = 9 WHERE participant_id = :p"), {"p": low.id})
    assert tally_stale(db) == [low.id]
    recount_all(db)
    assert tally(low) == (1, 3) and tally_stale(db) == []
