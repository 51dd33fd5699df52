"""Blinded outcome assessment: validation and who enters what, visit windows and the
out-of-window flag, allocation guesses, audited corrections, blinding-break reports with the
coordinator's notification and the warnings, visit schedules and worklists, the date arithmetic of
trial/timeline.py, the record status grid and the recruitment chart."""
from __future__ import annotations

import datetime as dt
import re
import tomllib
import xml.etree.ElementTree as ET

import pytest
from sqlalchemy import func, select

from tests.helpers import CLI, PASSWORD, backdate_randomization
from trial.audit import service as audit
from trial.audit.models import AuditRecord
from trial.auth.service import create_user, issue_token
from trial.notify.models import Notification
from trial.outcomes.models import BlindingBreak
from trial.outcomes.service import FORM_LABELS, GUESS_LABELS
from trial.participants.models import Assessment
from trial.protocol.service import DEFAULT_PROTOCOL, current
from trial.timeline import add_months, course_window, local_date, planned_sessions, today, visit_window

SEED = bytes(range(32))
ADOS = {"social_affect": 10, "rrb": 3, "css": 5}
VISITS = {v["key"]: v for v in tomllib.loads(DEFAULT_PROTOCOL.read_text())["visits"]}
D = dt.date


# --- helpers ---------------------------------------------------------------------------------

def rand(world, p, who="coordinator"):
    r = world.api("POST", f"/participants/{p.study_id}/randomize", who, headers={"Idempotency-Key": p.study_id})
    assert r.status_code == 201, r.get_json()
    return r.get_json()["arm"]


def backdate(world, p, days: int | None = None, at: dt.datetime | None = None) -> dt.date:
    at = at or dt.datetime.combine(today() - dt.timedelta(days=days), dt.time(12, 0))
    backdate_randomization(world.db, at, p.id)
    return at.date()


def state(db) -> dict:
    db.expire_all()
    return {m.__name__: db.execute(select(func.count()).select_from(m)).scalar()
            for m in (Assessment, BlindingBreak, Notification, AuditRecord)}


def add_user(world, key, roles):
    u = create_user(world.db, CLI, f"{key}@example.org", key.title(), PASSWORD, roles)
    world.users[key] = u
    world.tokens[key] = issue_token(world.db, CLI, u)
    world.db.commit()
    return u


def d(days_ago: int) -> dt.date:
    return today() - dt.timedelta(days=days_ago)


def err(r):
    return r.get_json()["error"]


def assess(world, p, visit="month2", instrument="ados2", performed_on=None, values=None, who=None, **extra):
    who = who or ("assessor" if instrument == "ados2" else "coordinator")
    body = {"visit": visit, "instrument": instrument,
            "performed_on": (performed_on or today()).isoformat() if not isinstance(performed_on, str) else performed_on,
            "values": dict(ADOS if instrument == "ados2" else {"total_t": 65}) if values is None else values, **extra}
    return world.api("POST", f"/participants/{p.study_id}/assessments", who, json=body)


@pytest.fixture()
def opened(world):
    world.open(SEED)
    return world


def randomized(world, days_ago: int | None = None, site="AT01"):
    p = world.ready(site)
    rand(world, p, "coordinator" if site == "AT01" else "coordinator_no")
    if days_ago is not None:
        backdate(world, p, days_ago)
    return p


def visits_of(world, p, who="assessor"):
    r = world.api("GET", f"/participants/{p.study_id}/visits", who)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


# --- timeline arithmetic ---------------------------------------------------------------------

@pytest.mark.parametrize("start,months,expected", [
    (D(2024, 1, 31), 1, D(2024, 2, 29)),    # leap year: clamped to 29 February
    (D(2023, 1, 31), 1, D(2023, 2, 28)),    # common year: clamped to 28 February
    (D(2024, 2, 29), 12, D(2025, 2, 28)),
    (D(2024, 2, 29), 48, D(2028, 2, 29)),
    (D(2023, 10, 31), 4, D(2024, 2, 29)),   # across the year end into a leap February
    (D(2023, 11, 30), 3, D(2024, 2, 29)),
    (D(2023, 8, 31), 1, D(2023, 9, 30)),    # 31st into a 30-day month
    (D(2023, 3, 31), 3, D(2023, 6, 30)),
    (D(2023, 12, 15), 1, D(2024, 1, 15)),   # December + 1 is January of the next year
    (D(2023, 8, 15), 5, D(2024, 1, 15)),
    (D(2023, 7, 31), 5, D(2023, 12, 31)),
    (D(2024, 3, 31), -1, D(2024, 2, 29)),
    (D(2024, 1, 15), -13, D(2022, 12, 15)),
    (D(2024, 5, 31), 0, D(2024, 5, 31)),
])
def test_add_months_clamps_at_month_ends_and_knows_leap_years(start, months, expected):
    assert add_months(start, months) == expected


@pytest.mark.parametrize("start,end,days", [
    (D(2023, 10, 1), D(2024, 2, 29), 152),   # the course takes in 29 February
    (D(2022, 10, 1), D(2023, 2, 28), 151),
    (D(2024, 1, 1), D(2024, 5, 31), 152),
    (D(2023, 1, 1), D(2023, 5, 31), 151),
    (D(2023, 12, 15), D(2024, 5, 14), 152),
    (D(2024, 8, 31), D(2025, 1, 30), 153),
])
def test_five_month_course_window(start, end, days):
    assert course_window(start, 5) == (start, end)
    assert (end - start).days + 1 == days


@pytest.mark.parametrize("spw,start,end,planned", [
    (1, D(2023, 10, 1), D(2024, 2, 29), 22),   # 152 days = 21.7 weeks
    (3, D(2023, 10, 1), D(2024, 2, 29), 65),   # 65.1
    (0, D(2023, 10, 1), D(2024, 2, 29), 0),
    (1, D(2022, 10, 1), D(2023, 2, 28), 22),   # 151 days = 21.6 weeks
    (3, D(2022, 10, 1), D(2023, 2, 28), 65),   # 64.7
    (1, D(2024, 1, 1), D(2024, 1, 7), 1),
    (3, D(2024, 2, 23), D(2024, 3, 7), 6),     # two weeks across 29 February
    (3, D(2024, 1, 1), D(2024, 1, 1), 0),
])
def test_planned_sessions_from_the_arms_frequency(spw, start, end, planned):
    assert planned_sessions(spw, start, end) == planned


@pytest.mark.parametrize("visit,start,lo,target,hi", [
    ("month2", D(2023, 12, 31), D(2024, 2, 16), D(2024, 3, 1), D(2024, 3, 15)),   # 61 days across 29 Feb
    ("month2", D(2022, 12, 31), D(2023, 2, 16), D(2023, 3, 2), D(2023, 3, 16)),
    ("month2", D(2024, 1, 31), D(2024, 3, 18), D(2024, 4, 1), D(2024, 4, 15)),
    ("month2", D(2024, 2, 29), D(2024, 4, 16), D(2024, 4, 30), D(2024, 5, 14)),
    ("month5", D(2023, 10, 1), D(2024, 2, 9), D(2024, 3, 1), D(2024, 3, 22)),
    ("month5", D(2022, 10, 1), D(2023, 2, 9), D(2023, 3, 2), D(2023, 3, 23)),
    ("month5", D(2023, 12, 31), D(2024, 5, 10), D(2024, 5, 31), D(2024, 6, 21)),
    ("month12", D(2023, 3, 1), D(2024, 1, 30), D(2024, 2, 29), D(2024, 3, 30)),
    ("month12", D(2024, 3, 1), D(2025, 1, 30), D(2025, 3, 1), D(2025, 3, 31)),
    ("month12", D(2023, 2, 28), D(2024, 1, 29), D(2024, 2, 28), D(2024, 3, 29)),
    ("baseline", D(2024, 3, 1), D(2024, 1, 1), D(2024, 3, 1), D(2024, 3, 1)),
])
def test_visit_window_arithmetic_across_month_ends_and_leap_years(visit, start, lo, target, hi):
    assert visit_window(VISITS[visit], start) == (lo, target, hi)


@pytest.mark.parametrize("utc,tz,expected", [
    (dt.datetime(2024, 2, 28, 23, 30), "Pacific/Auckland", D(2024, 2, 29)),
    (dt.datetime(2024, 2, 28, 10, 59), "Pacific/Auckland", D(2024, 2, 28)),   # 23:59 NZDT
    (dt.datetime(2024, 2, 28, 11, 0), "Pacific/Auckland", D(2024, 2, 29)),    # 00:00 NZDT
    (dt.datetime(2024, 3, 1, 3, 0), "America/New_York", D(2024, 2, 29)),
    (dt.datetime(2023, 12, 31, 23, 0), "Europe/Vienna", D(2024, 1, 1)),
    (dt.datetime(2024, 3, 30, 23, 30), "Europe/Vienna", D(2024, 3, 31)),       # CET, +1
    (dt.datetime(2024, 3, 31, 21, 59), "Europe/Vienna", D(2024, 3, 31)),       # CEST, +2
    (dt.datetime(2024, 3, 31, 22, 0), "Europe/Vienna", D(2024, 4, 1)),
    (dt.datetime(2024, 10, 26, 22, 30), "Europe/Oslo", D(2024, 10, 27)),
    (dt.datetime(2024, 2, 29, 23, 59), "UTC", D(2024, 2, 29)),
    (dt.datetime(2024, 2, 29, 23, 59), "", D(2024, 2, 29)),
    (dt.datetime(2024, 2, 29, 23, 59), None, D(2024, 2, 29)),
])
def test_local_date_in_the_sites_time_zone(utc, tz, expected):
    assert local_date(utc, tz) == expected


# --- visit schedule and worklists ------------------------------------------------------------

def test_visit_schedule_runs_from_the_randomization_date(opened):
    p = randomized(opened)
    backdate(opened, p, at=dt.datetime(2023, 12, 31, 12, 0))
    v = visits_of(opened, p)
    assert v["study_id"] == p.study_id and "warning" not in v
    rows = {r["visit"]: r for r in v["visits"]}
    assert [r["visit"] for r in v["visits"]] == ["baseline", "month2", "month5", "month12"]
    assert rows["baseline"]["status"] == "done" and rows["baseline"]["instruments_done"] == ["ados2"]
    assert {k: (rows[k]["window_start"], rows[k]["target"], rows[k]["window_end"]) for k in ("month2", "month5", "month12")} == {
        "month2": ("2024-02-16", "2024-03-01", "2024-03-15"),
        "month5": ("2024-05-10", "2024-05-31", "2024-06-21"),
        "month12": ("2024-11-30", "2024-12-30", "2025-01-29")}
    assert rows["month5"]["primary"] is True and rows["month2"]["primary"] is False
    assert all(rows[k]["status"] == "overdue" and rows[k]["instruments_expected"] == ["ados2"]
               for k in ("month2", "month5", "month12"))
    # the coordinator's schedule is about the instruments the coordinator enters
    coord = {r["visit"]: r for r in visits_of(opened, p, "coordinator")["visits"]}
    assert coord["month2"]["instruments_expected"] == ["srs2"] and coord["baseline"]["status"] == "missing"
    not_yet = {r["visit"]: r["status"] for r in visits_of(opened, opened.ready())["visits"]}
    assert not_yet == {"baseline": "done", "month2": "not_yet_randomized", "month5": "not_yet_randomized",
                       "month12": "not_yet_randomized"}


def test_visit_schedule_uses_the_site_time_zone(opened, db):
    from trial.sites.service import update_site
    update_site(db, CLI, "AT01", {"timezone": "Pacific/Auckland"}, reason="test")
    update_site(db, CLI, "NO01", {"timezone": "America/Los_Angeles"}, reason="test")
    db.commit()
    at = opened.ready()
    while rand(opened, at) == "usual":   # a music-therapy child, so that the course has a dose
        at = opened.ready()
    no = randomized(opened, site="NO01")
    backdate(opened, at, at=dt.datetime(2024, 2, 28, 20, 0))   # 29 Feb 09:00 in Auckland
    backdate(opened, no, at=dt.datetime(2024, 3, 1, 5, 0))     # 29 Feb 21:00 in Los Angeles
    m2 = {r["visit"]: r for r in visits_of(opened, at, "coordinator")["visits"]}
    assert m2["month2"]["target"] == "2024-04-30" and m2["month12"]["target"] == "2025-02-28"
    m2 = {r["visit"]: r for r in visits_of(opened, no, "coordinator_no")["visits"]}
    assert m2["month2"]["target"] == "2024-04-30"
    c = opened.api("GET", f"/participants/{at.study_id}/course", "coordinator").get_json()
    assert (c["dose"]["course_start"], c["dose"]["course_end"]) == ("2024-02-29", "2024-07-28")


def test_randomized_on_is_the_randomization_day_of_the_site(opened, db):
    from trial.sites.service import update_site
    update_site(db, CLI, "AT01", {"timezone": "Pacific/Auckland"}, reason="test")
    db.commit()
    p = randomized(opened)
    backdate(opened, p, at=dt.datetime(2024, 2, 28, 20, 0))
    seen = opened.api("GET", f"/participants/{p.study_id}", "coordinator").get_json()
    assert seen["randomized_on"] == "2024-02-29"


def test_schedule_is_identical_for_children_of_every_arm(opened):
    by_arm = {}
    while len(by_arm) < 3:
        p = opened.ready()
        by_arm.setdefault(rand(opened, p), p)
    for p in by_arm.values():
        backdate(opened, p, 70)
    views = [visits_of(opened, p)["visits"] for p in by_arm.values()]
    assert views[0] == views[1] == views[2]
    text_ = str(views)
    assert not any(w in text_ for w in ("low", "high", "usual", "Music", "session"))


def test_due_overdue_and_out_of_window_worklists(opened, db):
    a, b, c, e = (randomized(opened, n) for n in (61, 100, 61, 100))
    assert assess(opened, c).get_json()["out_of_window"] is False
    r = assess(opened, e)
    assert r.status_code == 201 and r.get_json()["out_of_window"] is True

    def lst(kind, who="assessor", site=None):
        q = f"/visits?kind={kind}" + (f"&site={site}" if site else "")
        r = opened.api("GET", q, who)
        assert r.status_code == 200, r.get_json()
        return {(i["study_id"], i["visit"]) for i in r.get_json()}

    assert lst("due") == {(a.study_id, "month2")}
    assert lst("overdue") == {(b.study_id, "month2")}
    assert lst("out_of_window") == {(e.study_id, "month2")}
    # the coordinator's lists follow the parent-reported instrument, still outstanding for all four
    assert lst("due", "coordinator") == {(a.study_id, "month2"), (c.study_id, "month2")}
    assert lst("overdue", "coordinator") == {(b.study_id, "month2"), (e.study_id, "month2")}
    assert lst("out_of_window", "coordinator") == set()
    assert lst("due", "coordinator", "AT01") == lst("due", "coordinator")
    assert lst("due", "manager") == {(a.study_id, "month2"), (c.study_id, "month2")}
    assert lst("due", "coordinator_no") == set() and lst("overdue", "coordinator_no") == set()
    item = next(i for i in opened.api("GET", "/visits?kind=due", "assessor").get_json())
    start = d(61)
    assert (item["window_start"], item["target"], item["window_end"]) == (
        (start + dt.timedelta(days=47)).isoformat(), today().isoformat(), (start + dt.timedelta(days=75)).isoformat())
    assert item["status"] == "due" and item["instruments_expected"] == ["ados2"]
    # default kind is due
    assert {(i["study_id"], i["visit"]) for i in opened.api("GET", "/visits", "assessor").get_json()} == lst("due")
    # a withdrawn child's visits are no longer expected
    assert opened.api("POST", f"/participants/{a.study_id}/events", "coordinator",
                      json={"type": "withdrawn", "on": d(1).isoformat(), "reason": "Family decision"}).status_code == 201
    assert lst("due") == set()
    rows = {r["visit"]: r["status"] for r in visits_of(opened, a)["visits"]}
    assert rows["month2"] == rows["month5"] == rows["month12"] == "not_expected"


@pytest.mark.parametrize("who,query,status,why", [
    ("assessor", "?kind=late", 400, "kind"),
    ("coordinator_no", "?kind=due&site=AT01", 403, "do not work at that site"),
    ("coordinator", "?kind=due&site=XX99", 404, "XX99"),
    ("therapist", "?kind=due", 403, None),
    ("statistician", "?kind=due", 403, None),
    ("admin", "?kind=due", 403, None),
    (None, "?kind=due", 401, None),
])
def test_worklist_refusals(opened, who, query, status, why):
    randomized(opened, 61)
    r = opened.api("GET", "/visits" + query, who)
    assert r.status_code == status
    if status == 400:
        assert "kind" in err(r)["fields"] and "due, overdue, out_of_window or week" in err(r)["message"]
    elif why:
        assert why in err(r)["message"]


@pytest.mark.parametrize("who,status", [("coordinator_no", 404), ("therapist", 403), ("statistician", 403),
                                        ("admin", 403), (None, 401)])
def test_visit_schedule_refusals(opened, who, status):
    p = randomized(opened, 61)
    assert opened.api("GET", f"/participants/{p.study_id}/visits", who).status_code == status


# --- outcome entry: validation ---------------------------------------------------------------

BAD_ASSESSMENTS = [
    # (instrument, change, field, why)
    ("ados2", {"values": {**ADOS, "social_affect": 21}}, "values.social_affect", "21 is out of range 0–20"),
    ("ados2", {"values": {**ADOS, "social_affect": -1}}, "values.social_affect", "out of range 0–20"),
    ("ados2", {"values": {**ADOS, "css": 0}}, "values.css", "out of range 1–10"),
    ("ados2", {"values": {**ADOS, "rrb": 9}}, "values.rrb", "out of range 0–8"),
    ("ados2", {"values": {**ADOS, "rrb": None}}, "values.rrb", "is required"),
    ("ados2", {"values": {"social_affect": 10, "css": 5}}, "values.rrb", "is required"),
    ("ados2", {"values": {**ADOS, "css": ""}}, "values.css", "is required"),
    ("ados2", {"values": {**ADOS, "css": "high"}}, "values.css", "must be a whole number"),
    ("ados2", {"values": {**ADOS, "social_affect": 12.5}}, "values.social_affect", "must be a whole number"),
    ("ados2", {"values": {**ADOS, "social_affect": True}}, "values.social_affect", "must be a whole number"),
    ("ados2", {"values": {**ADOS, "mood": 3}}, "values.mood", "is not a field of ADOS-2"),
    ("ados2", {"values": [10, 3, 5]}, "values", "must be an object"),
    ("ados2", {"values": None}, "values", "must be an object"),
    ("ados2", {"visit": "month3"}, "visit", "must be one of: Baseline, 2 months, 5 months (primary endpoint), 12 months"),
    ("ados2", {"visit": None}, "visit", "is required"),  # the declared body: a visit's key, not null
    ("ados2", {"instrument": "cars2"}, "instrument", "must be one of: ADOS-2"),
    ("ados2", {"performed_on": ""}, "performed_on", "is required"),
    ("ados2", {"performed_on": "31.12.2024"}, "performed_on", "is not a date"),
    ("ados2", {"performed_on": "FUTURE"}, "performed_on", "is in the future"),
    ("ados2", {"allocation_guess": "low"}, "allocation_guess", "must be one of music_therapy, usual_care, unsure"),
    ("ados2", {"allocation_guess": "unsure", "guess_confidence": 0}, "guess_confidence", "from 1 (pure guess) to 5"),
    ("ados2", {"allocation_guess": "unsure", "guess_confidence": 6}, "guess_confidence", "from 1 (pure guess) to 5"),
    ("ados2", {"allocation_guess": "unsure", "guess_confidence": "sure"}, "guess_confidence", "from 1"),
    ("ados2", {"guess_confidence": 3}, "guess_confidence", "is recorded only with an allocation guess"),
    ("srs2", {"values": {"total_t": 29}}, "values.total_t", "29 is out of range 30–90"),
    ("srs2", {"values": {"total_t": 91}}, "values.total_t", "out of range 30–90"),
    ("srs2", {"values": {}}, "values.total_t", "is required"),
    ("srs2", {"allocation_guess": "usual_care"}, "allocation_guess", "only with a blinded assessment"),
]


@pytest.mark.parametrize("instrument,change,field,why", BAD_ASSESSMENTS,
                         ids=[f"{i}-{f}-{n}" for n, (i, _, f, _) in enumerate(BAD_ASSESSMENTS)])
def test_bad_outcome_is_400_naming_the_field_and_saves_nothing(opened, db, instrument, change, field, why):
    p = randomized(opened, 61)
    body = {"visit": "month2", "instrument": instrument, "performed_on": today().isoformat(),
            "values": dict(ADOS) if instrument == "ados2" else {"total_t": 65}}
    body.update({k: (today() + dt.timedelta(days=1)).isoformat() if v == "FUTURE" else v for k, v in change.items()})
    before = state(db)
    r = opened.api("POST", f"/participants/{p.study_id}/assessments",
                   "assessor" if instrument == "ados2" else "coordinator", json=body)
    assert r.status_code == 400, r.get_json()
    e = err(r)
    assert e["code"] == "invalid" and field in e["fields"] and why in e["fields"][field]
    if field in GUESS_LABELS:  # named by the entry form's label, never by its key
        assert e["message"] == f"The assessment was not saved: {GUESS_LABELS[field]} {e['fields'][field]}"
    elif field.startswith("values.") and field != "values.mood":  # a field of the form: by its label
        ins = next(i for i in current(db).content["instruments"] if i["key"] == instrument)
        label = next(f["label"] for f in ins["fields"] if f"values.{f['key']}" == field)
        assert f"{label} {e['fields'][field]}" in e["message"] and field not in e["message"]
    else:  # the form's own fields by their labels (the body's declared checks by its names)
        assert field in e["message"] or FORM_LABELS[field] in e["message"]
    assert state(db) == before


def test_every_bad_field_is_named_at_once(opened, db):
    p = randomized(opened, 61)
    before = state(db)
    r = assess(opened, p, values={"social_affect": 30, "css": 11, "extra": 1})
    assert r.status_code == 400
    assert set(err(r)["fields"]) == {"values.social_affect", "values.rrb", "values.css", "values.extra"}
    assert state(db) == before


def test_a_valid_assessment_is_saved_and_audited(opened, db):
    p = randomized(opened, 61)
    before = state(db)
    r = assess(opened, p, values={"social_affect": 11.0, "rrb": 2, "css": 4})
    assert r.status_code == 201 and r.get_json()["out_of_window"] is False and "warning" not in r.get_json()
    a = db.get(Assessment, r.get_json()["id"])
    assert (a.visit, a.instrument, a.performed_on, a.values) == ("month2", "ados2", today(),
                                                                 {"social_affect": 11, "rrb": 2, "css": 4})
    assert a.entered_by_id == opened.users["assessor"].id and a.allocation_guess is None
    after = state(db)
    assert after["Assessment"] == before["Assessment"] + 1 and after["AuditRecord"] > before["AuditRecord"]
    recs = db.execute(select(AuditRecord).where(AuditRecord.entity == "assessment",
                                                AuditRecord.entity_id == str(a.id))).scalars().all()
    assert {rec.field for rec in recs} >= {"values", "visit", "instrument", "performed_on"}
    assert all(rec.actor == "assessor@example.org" and not rec.reveals_allocation for rec in recs)


# --- who enters what -------------------------------------------------------------------------

@pytest.mark.parametrize("who,instrument,status,why", [
    ("coordinator", "ados2", 403, "not allow this at that site"),      # blinded instruments: assessors only
    ("assessor", "srs2", 403, "not allow this at that site"),          # others: coordinators only
    ("coordinator_no", "srs2", 404, "No such participant."),  # another site's child: as an unknown one
    ("assessor_no", "ados2", 404, "No such participant."),
    ("therapist", "ados2", 403, None),
    ("therapist", "srs2", 403, None),
    ("manager", "ados2", 403, None),
    ("statistician", "ados2", 403, None),
    ("admin", "srs2", 403, None),
    (None, "ados2", 401, None),
])
def test_outcome_entry_by_role(opened, db, who, instrument, status, why):
    p = randomized(opened, 61)
    add_user(opened, "assessor_no", [("assessor", "NO01")])
    before = state(db)
    if who:
        r = assess(opened, p, instrument=instrument, who=who)
    else:
        r = opened.api("POST", f"/participants/{p.study_id}/assessments", None,
                       json={"visit": "month2", "instrument": instrument, "performed_on": today().isoformat(), "values": ADOS})
    assert r.status_code == status
    if why:
        assert why in err(r)["message"]
    body = r.get_data(as_text=True)
    assert not any(w in body for w in ('"low"', '"high"', '"usual"', "Music therapy"))
    assert state(db) == before


def test_duplicate_and_out_of_sequence_assessments_are_409(opened, db):
    p = randomized(opened, 61)
    assert assess(opened, p).status_code == 201
    q = opened.enroll()
    before = state(db)
    r = assess(opened, p, values={"social_affect": 5, "rrb": 1, "css": 2})
    assert r.status_code == 409 and f"ADOS-2 (blinded assessor) at 2 months is already recorded for {p.study_id}" in err(r)["message"]
    r = assess(opened, p, visit="baseline", performed_on=d(30))
    assert r.status_code == 409 and "already randomized" in err(r)["message"]
    r = assess(opened, q)
    assert r.status_code == 409 and "is not randomized yet" in err(r)["message"]
    r = assess(opened, q, visit="baseline", performed_on=q.consent_date - dt.timedelta(days=1))
    assert r.status_code == 400 and "is before consent" in err(r)["fields"]["performed_on"]
    assert state(db) == before


# --- windows ---------------------------------------------------------------------------------

@pytest.mark.parametrize("visit,days_after,flagged", [
    ("month2", 46, True), ("month2", 47, False), ("month2", 61, False), ("month2", 75, False), ("month2", 76, True),
    ("month5", 130, True), ("month5", 131, False), ("month5", 173, False), ("month5", 174, True),
])
def test_assessment_outside_its_window_is_accepted_with_a_flag(opened, db, visit, days_after, flagged):
    p = randomized(opened)
    start = backdate(opened, p, 200)
    r = assess(opened, p, visit=visit, performed_on=start + dt.timedelta(days=days_after))
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["out_of_window"] is flagged
    db.expire_all()
    assert db.get(Assessment, r.get_json()["id"]).out_of_window is flagged
    row = next(v for v in visits_of(opened, p)["visits"] if v["visit"] == visit)
    assert row["status"] == ("done_out_of_window" if flagged else "done")
    listed = {(i["study_id"], i["visit"]) for i in opened.api("GET", "/visits?kind=out_of_window", "assessor").get_json()}
    assert ((p.study_id, visit) in listed) is flagged


# --- allocation guesses ----------------------------------------------------------------------

@pytest.mark.parametrize("guess,confidence", [("music_therapy", 5), ("usual_care", 1), ("unsure", 3),
                                              ("music_therapy", None), ("unsure", None)])
def test_assessor_records_a_guess_and_confidence_after_a_blinded_assessment(opened, db, guess, confidence):
    p = randomized(opened, 61)
    # the contract (API.md): the guess is optional and says nothing of a confidence; a body exactly as
    # API.md shows it, a guess without a confidence, is recorded
    extra = {"guess_confidence": confidence} if confidence is not None else {}
    r = assess(opened, p, allocation_guess=guess, **extra)
    assert r.status_code == 201, r.get_json()
    a = db.get(Assessment, r.get_json()["id"])
    assert (a.allocation_guess, a.guess_confidence) == (guess, confidence)
    recs = {rec.field: rec.new for rec in db.execute(select(AuditRecord).where(
        AuditRecord.entity == "assessment", AuditRecord.entity_id == str(a.id))).scalars()}
    assert recs["allocation_guess"] == guess


def test_no_guess_at_baseline(opened, db):
    p = opened.enroll()
    before = state(db)
    r = assess(opened, p, visit="baseline", performed_on=d(10), allocation_guess="unsure", guess_confidence=2)
    assert r.status_code == 400 and err(r)["fields"] == {
        "allocation_guess": "is not taken at baseline: there is no allocation to guess before randomization"}
    assert err(r)["message"].startswith("The assessment was not saved: Allocation guess is not taken at baseline")
    assert state(db) == before


def test_confidence_without_a_guess_is_refused(opened, db):
    p = randomized(opened, 61)
    before = state(db)
    r = assess(opened, p, guess_confidence=9)
    assert r.status_code == 400 and "guess_confidence" in err(r)["fields"]
    assert state(db) == before


def test_the_protocol_says_where_the_guess_is_taken(opened):
    from trial.protocol.schema import ProtocolError, parse
    text_ = DEFAULT_PROTOCOL.read_text()
    assert [(v["key"], v["allocation_guess"]) for v in parse(text_)["visits"]] == [
        ("baseline", False), ("month2", True), ("month5", True), ("month12", True)]
    # without the key: at every follow-up visit with a blinded instrument, never at baseline
    bare = text_.replace("allocation_guess = true ", "# ").replace("allocation_guess = false ", "# ")
    assert "allocation_guess =" not in bare
    assert [v["allocation_guess"] for v in parse(bare)["visits"]] == [False, True, True, True]
    ados_twice = bare.replace('visits = ["baseline", "month2", "month5", "month12"]', 'visits = ["baseline", "month5"]', 1)
    ados_twice = ados_twice.replace('visits = ["baseline", "month2", "month5"]\n', 'visits = ["baseline", "month5"]\n', 1)  # [analysis]
    assert [v["allocation_guess"] for v in parse(ados_twice)["visits"]] == [False, False, True, False]
    bad = [
        (text_.replace("allocation_guess = false", "allocation_guess = true", 1), "visits[0].allocation_guess",
         "there is no allocation to guess at baseline"),
        (text_.replace("allocation_guess = true", 'allocation_guess = "yes"', 1), "visits[1].allocation_guess", "must be a"),
        (ados_twice.replace("window_after = 14\nprimary = false\n", "window_after = 14\nprimary = false\nallocation_guess = true\n"),
         "visits[1].allocation_guess", "no blinded instrument is collected at this visit"),
        (text_.replace("allocation_guess = true", "alocation_guess = true", 1), "visits[1].alocation_guess", "not a known key"),
    ]
    for t, key, problem in bad:
        with pytest.raises(ProtocolError) as exc:
            parse(t)
        assert exc.value.key == key and problem in exc.value.problem, str(exc.value)
    # a protocol stored before the key: the guess at every follow-up visit, never at baseline
    from trial.outcomes.service import takes_guess
    content = parse(text_)
    for v in content["visits"]:
        del v["allocation_guess"]
    ados, srs = content["instruments"]
    assert [takes_guess(content, ados, v["key"]) for v in content["visits"]] == [False, True, True, True]
    assert not any(takes_guess(content, srs, v["key"]) for v in content["visits"])


def _no_guess_at_month2(db):
    from trial.protocol.service import load_text
    text_ = DEFAULT_PROTOCOL.read_text()
    amended = text_.replace("allocation_guess = true", "allocation_guess = false", 1).replace(
        'amendment = "1.0"', 'amendment = "1.1"')
    assert amended.count("allocation_guess = true") == 2
    load_text(db, CLI, amended, source_name="no-guess-at-month2.toml")
    db.commit()


def test_a_guess_is_refused_at_a_visit_where_the_protocol_takes_none(opened, db):
    _no_guess_at_month2(db)
    p = randomized(opened, 61)
    before = state(db)
    r = assess(opened, p, visit="month2", allocation_guess="unsure", guess_confidence=2)
    assert r.status_code == 400 and err(r)["fields"] == {
        "allocation_guess": "is not taken at 2 months; the protocol takes it at 5 months (primary endpoint), 12 months"}
    assert err(r)["message"].startswith("The assessment was not saved: Allocation guess is not taken at 2 months")
    assert state(db) == before
    assert assess(opened, p, visit="month2").status_code == 201
    q = randomized(opened, 152)
    assert assess(opened, q, visit="month5", allocation_guess="unsure", guess_confidence=2).status_code == 201


def _fields(html: str) -> set[str]:
    import re
    return set(re.findall(r'name="([a-z_]+)"', html))


def test_the_entry_form_asks_for_the_guess_only_where_it_is_taken(opened, app, db):
    waiting = opened.enroll()
    p = randomized(opened, 61)
    c = login(app, "assessor")
    # baseline (before randomization): no guess fields, and only the baseline to choose
    html = c.get(f"/participants/{waiting.study_id}/assess/ados2").get_data(as_text=True)
    assert "allocation_guess" not in _fields(html) and "guess_confidence" not in _fields(html)
    assert 'value="baseline"' in html and 'value="month2"' not in html
    # after randomization: the follow-up visits, each of which takes the guess, with its confidence
    html = c.get(f"/participants/{p.study_id}/assess/ados2").get_data(as_text=True)
    assert {"allocation_guess", "guess_confidence"} <= _fields(html)
    assert "Allocation guess" in html and "Confidence in the guess" in html and "5 (certain)" in html
    assert 'value="baseline"' not in html and 'value="month2"' in html
    # the parent-reported instrument never asks for a guess
    coord = login(app, "coordinator").get(f"/participants/{p.study_id}/assess/srs2").get_data(as_text=True)
    assert "allocation_guess" not in _fields(coord)
    # ?visit= preselects the visit (the worklists link to it)
    html = c.get(f"/participants/{p.study_id}/assess/ados2?visit=month5").get_data(as_text=True)
    assert 'value="month5" selected' in html or 'selected value="month5"' in html


def test_the_entry_form_asks_which_visit_when_only_some_take_the_guess(opened, app, db):
    _no_guess_at_month2(db)
    p = randomized(opened, 61)
    c = login(app, "assessor")
    r = c.get(f"/participants/{p.study_id}/assess/ados2")
    html = r.get_data(as_text=True)
    assert r.status_code == 200 and "Which visit are you entering?" in html and "allocation_guess" not in html
    for visit in ("month2", "month5", "month12"):
        assert f"/participants/{p.study_id}/assess/ados2?visit={visit}" in html
    month2 = c.get(f"/participants/{p.study_id}/assess/ados2?visit=month2").get_data(as_text=True)
    assert "allocation_guess" not in _fields(month2) and 'value="month5"' not in month2
    month5 = c.get(f"/participants/{p.study_id}/assess/ados2?visit=month5").get_data(as_text=True)
    assert {"allocation_guess", "guess_confidence"} <= _fields(month5) and 'value="month2"' not in month5
    # a post of month2 (no guess fields) saves the assessment without a guess
    r = c.post(f"/participants/{p.study_id}/assess/ados2?visit=month2",
               data={"visit": "month2", "performed_on": today().isoformat(), "v_social_affect": "9", "v_rrb": "3",
                     "v_css": "5"})
    assert r.status_code == 302
    a = db.execute(select(Assessment).where(Assessment.participant_id == p.id, Assessment.visit == "month2")).scalar_one()
    assert a.allocation_guess is None


def test_the_entry_form_saves_a_guess_without_its_confidence_and_refuses_a_confidence_without_a_guess(opened, app, db):
    p = randomized(opened, 61)
    c = login(app, "assessor")
    form = {"visit": "month2", "performed_on": today().isoformat(), "v_social_affect": "9", "v_rrb": "3", "v_css": "5",
            "allocation_guess": "music_therapy", "guess_confidence": ""}
    before = state(db)
    # a confidence without a guess is refused, summed up above the form, in words
    r = c.post(f"/participants/{p.study_id}/assess/ados2", data={**form, "allocation_guess": "", "guess_confidence": "3"})
    html = r.get_data(as_text=True)
    assert r.status_code == 400 and "is recorded only with an allocation guess" in html
    assert html.index('class="error-summary"') < html.index('name="guess_confidence"')
    assert "guess_confidence is" not in html
    assert state(db) == before
    # the confidence is asked for, never required: a guess alone is saved
    r = c.post(f"/participants/{p.study_id}/assess/ados2", data=form)
    assert r.status_code == 302
    a = db.execute(select(Assessment).where(Assessment.participant_id == p.id, Assessment.visit == "month2")).scalar_one()
    assert (a.allocation_guess, a.guess_confidence) == ("music_therapy", None)


def test_a_baseline_entry_form_post_with_a_guess_saves_no_guess(opened, app, db):
    """The baseline form has no guess fields: a guess posted anyway (not from the form) is not read."""
    p = opened.enroll()
    c = login(app, "assessor")
    r = c.post(f"/participants/{p.study_id}/assess/ados2",
               data={"visit": "baseline", "performed_on": d(1).isoformat(), "v_social_affect": "9", "v_rrb": "3",
                     "v_css": "5", "allocation_guess": "usual_care", "guess_confidence": "3"})
    assert r.status_code == 302, r.get_data(as_text=True)
    a = db.execute(select(Assessment).where(Assessment.participant_id == p.id, Assessment.instrument == "ados2")).scalar_one()
    assert (a.visit, a.allocation_guess, a.guess_confidence) == ("baseline", None, None)


# --- corrections -----------------------------------------------------------------------------

def test_correction_keeps_the_old_value_in_the_audit_trail_with_the_reason(opened, db):
    p = randomized(opened, 61)
    aid = assess(opened, p).get_json()["id"]
    created = db.execute(select(AuditRecord).where(AuditRecord.entity == "assessment", AuditRecord.entity_id == str(aid),
                                                   AuditRecord.field == "values")).scalar_one()
    r = opened.api("POST", f"/assessments/{aid}/corrections", "assessor",
                   json={"values": {"social_affect": 14}, "reason": "  Transcription error from the paper form  "})
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"id": aid, "values": {**ADOS, "social_affect": 14}}
    db.expire_all()
    assert db.get(Assessment, aid).values == {**ADOS, "social_affect": 14}
    recs = db.execute(select(AuditRecord).where(AuditRecord.action == "correct")).scalars().all()
    assert [(x.entity, x.entity_id, x.field, x.old, x.new, x.reason, x.actor) for x in recs] == [
        ("assessment", str(aid), "values.social_affect", "10", "14", "Transcription error from the paper form",
         "assessor@example.org")]
    assert '"social_affect":10' in created.new   # the original record is untouched
    assert audit.verify(db).ok
    # parent-reported outcomes are corrected by the coordinator
    sid = assess(opened, p, instrument="srs2").get_json()["id"]
    r = opened.api("POST", f"/assessments/{sid}/corrections", "coordinator",
                   json={"values": {"total_t": 70}, "reason": "Parent re-scored item 12"})
    assert r.status_code == 200 and r.get_json()["values"] == {"total_t": 70}
    rec = db.execute(select(AuditRecord).where(AuditRecord.action == "correct", AuditRecord.entity_id == str(sid))).scalar_one()
    assert (rec.old, rec.new, rec.reason) == ("65", "70", "Parent re-scored item 12")


@pytest.mark.parametrize("who,body,status,field,why", [
    ("assessor", {"values": {"social_affect": 14}}, 400, "reason", "is required"),
    ("assessor", {"values": {"social_affect": 14}, "reason": "   "}, 400, "reason", "is required"),
    ("assessor", {"values": {"social_affect": 14}, "reason": None}, 400, "reason", "is required"),
    ("assessor", {"values": {"social_affect": 25}, "reason": "typo"}, 400, "values.social_affect", "out of range 0–20"),
    ("assessor", {"values": {"social_affect": None}, "reason": "typo"}, 400, "values.social_affect", "is required"),
    ("assessor", {"values": {"mood": 2}, "reason": "typo"}, 400, "values.mood", "is not a field"),
    ("assessor", {"values": 14, "reason": "typo"}, 400, "values", "must be an object"),
    ("assessor", {"values": {"social_affect": 10}, "reason": "typo"}, 400, "values", "same as recorded"),
    ("coordinator", {"values": {"social_affect": 14}, "reason": "typo"}, 403, None, "not allow this at that site"),
    ("coordinator_no", {"values": {"social_affect": 14}, "reason": "typo"}, 404, None, "No such assessment."),
    ("therapist", {"values": {"social_affect": 14}, "reason": "typo"}, 403, None, None),
    ("manager", {"values": {"social_affect": 14}, "reason": "typo"}, 403, None, None),
    (None, {"values": {"social_affect": 14}, "reason": "typo"}, 401, None, None),
])
def test_correction_failures_change_nothing(opened, db, who, body, status, field, why):
    p = randomized(opened, 61)
    aid = assess(opened, p).get_json()["id"]
    before = state(db)
    r = opened.api("POST", f"/assessments/{aid}/corrections", who, json=body)
    assert r.status_code == status
    if field:
        assert why in err(r)["fields"][field]
        named = {"values.social_affect": "Social affect score"}.get(field, field)  # a form's field: by its label
        assert named in err(r)["message"] or err(r)["message"] == "The correction changes nothing."
    elif why:
        assert why in err(r)["message"]
    db.expire_all()
    assert db.get(Assessment, aid).values == ADOS
    assert state(db) == before


def test_correcting_an_unknown_assessment_is_404(opened, db):
    before = state(db)
    r = opened.api("POST", "/assessments/999999/corrections", "assessor",
                   json={"values": {"social_affect": 1}, "reason": "typo"})
    assert r.status_code == 404 and err(r)["message"] == "No such assessment."
    assert state(db) == before


# --- blinding breaks -------------------------------------------------------------------------

def test_blinding_break_is_recorded_the_coordinator_told_and_the_assessor_warned(opened, db):
    p, other = randomized(opened, 61), randomized(opened, 61)
    add_user(opened, "assessor2", [("assessor", "AT01")])
    before = state(db)
    r = opened.api("POST", f"/participants/{p.study_id}/blinding-breaks", "assessor",
                   json={"description": "  The mother mentioned the music sessions.  "})
    assert r.status_code == 201, r.get_json()
    b = db.get(BlindingBreak, r.get_json()["id"])
    assert (b.participant_id, b.assessor_id, b.reported_on, b.description) == (
        p.id, opened.users["assessor"].id, today(), "The mother mentioned the music sessions.")
    after = state(db)
    assert after["BlindingBreak"] == before["BlindingBreak"] + 1 and after["Notification"] == before["Notification"] + 1
    assert db.execute(select(AuditRecord).where(AuditRecord.entity == "blinding_break")).scalars().first() is not None
    # the site's coordinator is told, nobody else
    notes = opened.api("GET", "/notifications", "coordinator").get_json()
    assert len(notes) == 1
    msg = notes[0]["message"]
    assert "Blinding broken" in msg and p.study_id in msg and "Assessor" in msg and today().isoformat() in msg
    assert notes[0]["created_at"].endswith("Z")
    assert not any(w in msg for w in ("low", "high", "usual", "Music therapy"))
    for who in ("coordinator_no", "assessor", "assessor2", "manager", "therapist"):
        assert opened.api("GET", "/notifications", who).get_json() == []
    # the assessor is warned whenever scheduled for this child again; other assessors and children are not
    warn = f"You reported on {today().isoformat()} that your blinding for this child was broken"
    assert warn in visits_of(opened, p)["warning"]
    assert "warning" not in visits_of(opened, p, "assessor2") and "warning" not in visits_of(opened, other)
    due = opened.api("GET", "/visits?kind=due", "assessor").get_json()
    assert {i["study_id"]: i.get("warning") for i in due} == {p.study_id: visits_of(opened, p)["warning"], other.study_id: None}
    assert all("warning" not in i for i in opened.api("GET", "/visits?kind=due", "assessor2").get_json())
    r = assess(opened, p)
    assert r.status_code == 201 and warn in r.get_json()["warning"]
    r = assess(opened, other)
    assert r.status_code == 201 and "warning" not in r.get_json()


def test_a_dated_report_keeps_its_date(opened, db):
    p = randomized(opened, 61)
    r = opened.api("POST", f"/participants/{p.study_id}/blinding-breaks", "assessor",
                   json={"reported_on": d(3).isoformat(), "description": "Saw a session schedule on the desk"})
    assert r.status_code == 201
    assert f"You reported on {d(3).isoformat()}" in visits_of(opened, p)["warning"]
    assert d(3).isoformat() in opened.api("GET", "/notifications", "coordinator").get_json()[0]["message"]


@pytest.mark.parametrize("who,body,status,field,why", [
    ("assessor", {}, 400, "description", "is required"),
    ("assessor", {"description": "   "}, 400, "description", "is required"),
    ("assessor", {"description": 42}, 400, "description", "must be text"),
    ("assessor", {"description": "x" * 1001}, 400, "description", "at most 1000"),
    ("assessor", {"description": "told", "reported_on": "last week"}, 400, "reported_on", "is not a date"),
    ("assessor_no", {"description": "told"}, 404, None, "No such participant."),
    ("coordinator", {"description": "told"}, 403, None, None),
    ("therapist", {"description": "told"}, 403, None, None),
    ("manager", {"description": "told"}, 403, None, None),
    (None, {"description": "told"}, 401, None, None),
])
def test_blinding_break_failures_change_nothing(opened, db, who, body, status, field, why):
    p = randomized(opened, 61)
    add_user(opened, "assessor_no", [("assessor", "NO01")])
    before = state(db)
    r = opened.api("POST", f"/participants/{p.study_id}/blinding-breaks", who, json=body)
    assert r.status_code == status
    if field:
        assert why in err(r)["fields"][field] and field in err(r)["message"]
    elif why:
        assert why in err(r)["message"]
    assert state(db) == before
    assert opened.api("GET", "/notifications", "coordinator").get_json() == []


def test_blinding_break_in_the_future_is_refused(opened, db):
    p = randomized(opened, 61)
    before = state(db)
    r = opened.api("POST", f"/participants/{p.study_id}/blinding-breaks", "assessor",
                   json={"description": "told", "reported_on": (today() + dt.timedelta(days=30)).isoformat()})
    assert r.status_code == 400 and "reported_on" in err(r)["fields"]
    assert state(db) == before


# --- dashboards ------------------------------------------------------------------------------

def login(app, who):
    c = app.test_client()
    r = c.post("/login", data={"email": f"{who}@example.org", "password": PASSWORD})
    assert r.status_code == 302
    return c


def test_record_status_grid_per_site(opened, app, db):
    from trial.dashboard.service import status_grid
    from trial.paging import PageRequest
    late = randomized(opened, 100)
    done = randomized(opened, 61)
    assert assess(opened, done).status_code == 201
    gone = randomized(opened, 61)
    assert opened.api("POST", f"/participants/{gone.study_id}/events", "coordinator",
                      json={"type": "withdrawn", "on": d(1).isoformat(), "reason": "Family decision"}).status_code == 201
    waiting = opened.enroll()
    norway = randomized(opened, 10, site="NO01")
    grid = status_grid(db, opened.users["assessor"], PageRequest(), "AT01")
    # the assessor's columns: the blinded instrument at each visit where it is taken
    assert [(c["visit"], c["instrument"]) for c in grid["columns"]] == [
        ("baseline", "ados2"), ("month2", "ados2"), ("month5", "ados2"), ("month12", "ados2")]
    assert [(v["label"], v["span"]) for v in grid["visits"]][0] == ("Baseline", 1)
    rows = grid["page"].items
    cells = {r["study_id"]: [c["state"] for c in r["cells"]] for r in rows}
    status = {r["study_id"]: r["status"] for r in rows}
    assert cells[late.study_id] == ["entered", "missing", "upcoming", "upcoming"]
    assert cells[done.study_id] == ["entered", "entered", "upcoming", "upcoming"]
    assert cells[gone.study_id] == ["entered", "not_expected", "not_expected", "not_expected"]
    assert cells[waiting.study_id] == ["due", "not_yet_randomized", "not_yet_randomized", "not_yet_randomized"]
    assert status[gone.study_id] == "withdrawn" and status[late.study_id] == "randomized"
    assert norway.study_id not in cells and {r["site"] for r in rows} == {"AT01"}
    assert grid["page"].total == 4
    manager = status_grid(db, opened.users["manager"], PageRequest(), "NO01")
    assert {r["study_id"] for r in manager["page"].items} == {norway.study_id}
    assert {c["instrument"] for c in manager["columns"]} == {"ados2", "srs2"}  # a manager reads every form
    assert {r["site"] for r in status_grid(db, opened.users["manager"], PageRequest())["page"].items} == {"AT01", "NO01"}
    # a page of two, sorted by status descending: the withdrawn child first
    two = status_grid(db, opened.users["manager"], PageRequest(1, 2, "-status"), "AT01")
    assert two["page"].total == 4 and len(two["page"].items) == 2 and two["page"].pages == 2
    assert two["page"].items[0]["study_id"] == gone.study_id
    assert status_grid(db, opened.users["manager"], PageRequest(), search=norway.study_id[-4:],
                       site_code="NO01")["page"].total == 1

    page = login(app, "coordinator").get("/dashboard/?site=AT01")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert late.study_id in html and gone.study_id in html and norway.study_id not in html
    assert "cell-missing" in html and "Not expected" in html and "not_expected" not in html.replace("cell-not_expected", "")
    # a due baseline form links to its entry form, for the role that enters it
    assert f'/participants/{waiting.study_id}/assess/srs2?visit=baseline' in html
    assessor = login(app, "assessor").get("/dashboard/?site=AT01").get_data(as_text=True)
    assert f'/participants/{late.study_id}/assess/ados2?visit=month2' in assessor and "SRS-2" not in assessor
    monitor = login(app, "monitor").get("/dashboard/?site=AT01").get_data(as_text=True)
    assert "/assess/" not in monitor and "not verified" in monitor  # a monitor enters nothing
    page = login(app, "manager").get("/dashboard/?site=NO01").get_data(as_text=True)
    assert norway.study_id in page and late.study_id not in page
    paged = login(app, "manager").get("/dashboard/?site=AT01&per_page=2&sort=-status").get_data(as_text=True)
    assert "1–2 of 4 participants" in paged and "page=2" in paged and "sort=-status" in paged
    assert login(app, "manager").get("/dashboard/?sort=arm").status_code == 400  # the grid never sorts by arm
    assert login(app, "manager").get("/dashboard/?per_page=201").status_code == 400
    assert login(app, "coordinator").get("/dashboard/?site=NO01").status_code == 403
    for who in ("therapist", "statistician", "admin"):
        assert login(app, who).get("/dashboard/").status_code == 403


def test_recruitment_svg_parses_and_shows_each_site_against_its_target(opened, app):
    for _ in range(3):
        randomized(opened)
    opened.enroll()
    randomized(opened, site="NO01")
    r = login(app, "manager").get("/dashboard/recruitment.svg")
    assert r.status_code == 200 and r.mimetype == "image/svg+xml"
    root = ET.fromstring(r.get_data())
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg" and root.get("viewBox")
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert "AT01" in texts and "NO01" in texts
    assert "3 / 40" in texts and "1 / 40" in texts
    rects = [rc for rc in root.iter(f"{ns}rect")]
    assert len(rects) == 2 * 3 + 3
    # the coordinator's chart shows only the coordinator's site
    own = ET.fromstring(login(app, "coordinator").get("/dashboard/recruitment.svg").get_data())
    own_texts = [t.text for t in own.iter(f"{ns}text")]
    assert "AT01" in own_texts and "NO01" not in own_texts and "3 / 40" in own_texts
    # no per-arm figure anywhere
    body = r.get_data(as_text=True)
    assert not any(w in body for w in ("low", "high", "usual", "Music"))
    assert login(app, "admin").get("/dashboard/recruitment.svg").status_code == 403


def test_non_text_instrument_or_visit_is_400_not_500(world):
    p = world.enroll()
    for body in ({"instrument": ["ados2"], "visit": "baseline"}, {"instrument": "ados2", "visit": {"k": 1}}):
        r = world.api("POST", f"/participants/{p.study_id}/assessments", "assessor",
                      json={**body, "performed_on": "2026-01-01", "values": {}})
        assert r.status_code == 400 and set(r.get_json()["error"]["fields"]) & {"instrument", "visit"}


# --- the visit plan (the worklists' index) ----------------------------------------------------

def plan_rows(db, p) -> dict:
    from trial.visitplan.models import PlannedVisit
    db.expire_all()
    return {r.visit: r for r in db.execute(select(PlannedVisit).where(PlannedVisit.participant_id == p.id)).scalars()}


def test_the_visit_plan_is_kept_by_the_writers(opened, db):
    from trial.visitplan.service import stale
    p = randomized(opened)
    rows = plan_rows(db, p)
    # every post-randomization visit, none at baseline, windows from the randomization day; the
    # blinded ADOS-2 and the parent-reported SRS-2 at months 2, 5 and 12
    assert set(rows) == {"month2", "month5", "month12"}
    assert (rows["month2"].opens, rows["month2"].target, rows["month2"].closes) == visit_window(VISITS["month2"], today())
    assert {(r.blinded_forms, r.other_forms, r.blinded_entered, r.other_entered, r.ended) for r in rows.values()} == {(1, 1, 0, 0, False)}
    assert stale(db) == []
    backdate(opened, p, 61)
    assert assess(opened, p).status_code == 201
    assert assess(opened, p, instrument="srs2", performed_on=d(80)).status_code == 201  # before its window opened
    m2 = plan_rows(db, p)["month2"]
    assert (m2.blinded_entered, m2.blinded_late, m2.other_entered, m2.other_late) == (1, False, 1, True)
    assert opened.api("POST", f"/participants/{p.study_id}/events", "coordinator",
                      json={"type": "withdrawn", "on": d(1).isoformat(), "reason": "Family decision"}).status_code == 201
    assert all(r.ended for r in plan_rows(db, p).values())  # every window closes after the withdrawal
    assert stale(db) == []


def test_a_protocol_amendment_or_a_new_time_zone_replans_every_child(opened, db):
    from trial.protocol.service import load_text
    from trial.sites.service import update_site
    from trial.visitplan.service import stale
    p = randomized(opened, 61)
    assert opened.api("GET", "/visits?kind=due", "assessor").get_json()[0]["window_end"] == (d(61) + dt.timedelta(days=75)).isoformat()
    # an amendment widens the 2-month window: the next read of a worklist re-plans everyone
    text_ = DEFAULT_PROTOCOL.read_text()
    load_text(db, CLI, text_.replace('key = "month2"\nlabel = "2 months"\nday = 61\nwindow_before = 14\nwindow_after = 14',
                                     'key = "month2"\nlabel = "2 months"\nday = 61\nwindow_before = 14\nwindow_after = 28'))
    db.commit()
    assert stale(db) != []  # the plan still holds the old window until it is re-derived
    item = opened.api("GET", "/visits?kind=due", "assessor").get_json()[0]
    assert item["window_end"] == (d(61) + dt.timedelta(days=89)).isoformat()
    assert stale(db) == []
    # a site moved to a zone far east: its children's local randomization day can change
    backdate_randomization(db, dt.datetime.combine(d(61), dt.time(20, 0)), p.id)
    update_site(db, CLI, "AT01", {"timezone": "Pacific/Kiritimati"}, reason="test")
    db.commit()
    opened.api("GET", "/visits?kind=due", "assessor")
    assert plan_rows(db, p)["month2"].target == d(60) + dt.timedelta(days=61)
    assert stale(db) == []



def test_the_managers_overview_counts_per_site_and_links_each_number(opened, app, db):
    late = randomized(opened, 100)            # month 2 window closed, nothing entered
    done = randomized(opened, 100)
    assert assess(opened, done, performed_on=d(40)).status_code == 201
    assert assess(opened, done, instrument="srs2", performed_on=d(40)).status_code == 201
    gone = randomized(opened, 100)
    assert opened.api("POST", f"/participants/{gone.study_id}/events", "coordinator",
                      json={"type": "withdrawn", "on": d(1).isoformat(), "reason": "Family decision"}).status_code == 201
    randomized(opened, 10, site="NO01")         # nothing due yet
    assert opened.api("POST", "/queries", "monitor", json={"study_id": late.study_id, "on": {"kind": "participant"},
                                                           "text": "Please check the consent date."}).status_code == 201
    assert opened.api("POST", f"/participants/{late.study_id}/adverse-events", "coordinator", json={
        "term": "Febrile seizure", "onset": d(20).isoformat(), "severity": "severe", "serious": True,
        "seriousness": ["hospitalisation"], "relatedness": "not_related", "expectedness": "unexpected",
        "outcome": "recovering", "description": "Two nights in hospital."}).status_code == 201
    from trial.dashboard.service import overview
    o = overview(db, opened.users["manager"])
    at = next(s for s in o["sites"] if s["code"] == "AT01")
    no = next(s for s in o["sites"] if s["code"] == "NO01")
    assert at["randomized"] == 3 and no["randomized"] == 1 and o["total"]["randomized"] == 4
    month2 = next(r for r in at["retention"] if r["visit"] == "month2")
    assert (month2["due"], month2["complete"]) == (3, 1)  # the child withdrawn since counts as not retained
    assert next(r for r in no["retention"] if r["visit"] == "month2")["due"] == 0
    # forms: two entered; the late and the withdrawn child's month-2 forms overdue (the window closed
    # before the withdrawal); nothing after the withdrawal is expected
    assert (at["forms_entered"], at["forms_expected"], at["overdue"]) == (2, 6, 4)
    assert at["completeness"] == pytest.approx(1 / 3) and no["completeness"] is None
    assert at["queries"] >= 1 and at["saes"] == 1 and at["saes_unresolved"] == 1 and no["saes"] == 0
    # the page: each number a link to its filtered list, and what the link opens agrees
    c = login(app, "manager")
    page = c.get("/dashboard/overview")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for href in ("/visits?kind=overdue&amp;site=AT01", "/visits?kind=overdue&amp;visit=month2&amp;site=AT01",
                 "/queries?status=open&amp;site=AT01", "/adverse-events?serious=yes&amp;site=AT01",
                 "/dashboard/?site=AT01", "/participants?site=AT01"):
        assert f'href="{href}"' in html, href
    overdue = c.get("/visits?kind=overdue&visit=month2&site=AT01").get_data(as_text=True)
    assert late.study_id in overdue and gone.study_id in overdue and done.study_id not in overdue
    assert not any(w in html for w in ("low", "high", "usual care", "Music"))  # pooled over the arms
    svg = c.get("/dashboard/recruitment-over-time.svg")
    assert svg.status_code == 200 and svg.mimetype == "image/svg+xml"
    root = ET.fromstring(svg.get_data())
    ns = "{http://www.w3.org/2000/svg}"
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert {"AT01", "NO01", "All sites"} <= set(texts) and "3 of 40" in texts and "4 of 80" in texts
    assert len(list(root.iter(f"{ns}polyline"))) == len(o["sites"]) + 1
    # in German the page and the chart speak German
    c.post("/language", data={"language": "de"})
    assert "Randomisiert nach Monat" in c.get("/dashboard/recruitment-over-time.svg").get_data(as_text=True)
    for who in ("coordinator", "assessor", "monitor", "therapist", "statistician", "admin"):
        cl = login(app, who)
        assert cl.get("/dashboard/overview").status_code == 403, who
        assert cl.get("/dashboard/recruitment-over-time.svg").status_code == 403, who


def test_the_follow_up_form_opens_on_the_visit_due_now(opened, app, db):
    c = login(app, "assessor")

    def selected(p):
        page = c.get(f"/participants/{p.study_id}/assess/ados2").get_data(as_text=True)
        select_ = page.split('name="visit"')[1].split("</select>")[0]
        return re.search(r'<option selected value="([a-z0-9_]+)"', select_).group(1)
    at5 = randomized(opened, 152)                  # the 5-month window is open; the 2-month one closed
    assert selected(at5) == "month5"
    at2 = randomized(opened, 61)
    assert selected(at2) == "month2"
    assert assess(opened, at2).status_code == 201  # month 2 done: the next to come is month 5
    assert selected(at2) == "month5"


def test_the_entry_form_warns_before_saving_a_value_outside_its_usual_range(opened, app, db):
    p = randomized(opened, 61)
    c = login(app, "assessor")
    form = {"visit": "month2", "performed_on": today().isoformat(), "v_social_affect": "9", "v_rrb": "3", "v_css": "2",
            "allocation_guess": "", "guess_confidence": ""}
    before = state(db)
    r = c.post(f"/participants/{p.study_id}/assess/ados2", data=form)
    html = " ".join(r.get_data(as_text=True).split())
    assert r.status_code == 400 and "the protocol expects" in html and 'name="confirm_values"' in html
    assert 'name="confirm_window"' not in html and state(db) == before
    r = c.post(f"/participants/{p.study_id}/assess/ados2", data={**form, "confirm_values": "y"})
    assert r.status_code == 302
    a = db.execute(select(Assessment).where(Assessment.participant_id == p.id, Assessment.visit == "month2")).scalar_one()
    assert a.values["css"] == 2
    from trial.dataquality.models import DataQuery
    assert db.execute(select(func.count()).select_from(DataQuery).where(DataQuery.target_id == a.id,
                                                                          DataQuery.field == "css")).scalar() == 1


def test_a_date_outside_the_window_and_an_unusual_value_are_asked_about_at_once(opened, app, db):
    p = randomized(opened, 61)
    c = login(app, "assessor")
    form = {"visit": "month2", "performed_on": (today() - dt.timedelta(days=20)).isoformat(), "v_social_affect": "9",
            "v_rrb": "3", "v_css": "2", "allocation_guess": "", "guess_confidence": ""}
    before = state(db)
    r = c.post(f"/participants/{p.study_id}/assess/ados2", data=form)
    html = " ".join(r.get_data(as_text=True).split())
    assert r.status_code == 400 and 'name="confirm_window"' in html and 'name="confirm_values"' in html
    assert "outside the window" in html and "the protocol expects" in html and state(db) == before
    r = c.post(f"/participants/{p.study_id}/assess/ados2", data={**form, "confirm_window": "y", "confirm_values": "y"})
    assert r.status_code == 302


def test_the_entry_form_offers_only_the_visits_still_to_enter(opened, app, db):
    p = randomized(opened, 61)
    c = login(app, "assessor")
    page = c.get(f"/participants/{p.study_id}/assess/ados2").get_data(as_text=True)
    assert 'value="month2"' in page and 'value="month5"' in page
    assert assess(opened, p).status_code == 201
    page = c.get(f"/participants/{p.study_id}/assess/ados2").get_data(as_text=True)
    assert 'value="month2"' not in page and 'value="month5"' in page


def test_visits_due_this_week_on_the_home_page_and_in_their_list(opened, app, db):
    now = randomized(opened, 61)       # month 2 due now
    soon = randomized(opened, 44)      # its month-2 window opens in 3 days
    randomized(opened, 20)             # nothing within the week
    week = {(i["study_id"], i["visit"]) for i in opened.api("GET", "/visits?kind=week", "assessor").get_json()}
    assert week == {(now.study_id, "month2"), (soon.study_id, "month2")}
    c = login(app, "assessor")
    home = " ".join(c.get("/").get_data(as_text=True).split())
    assert "2 visits are due this week." in home
    listing = c.get("/visits?kind=week").get_data(as_text=True)
    assert now.study_id in listing and soon.study_id in listing
