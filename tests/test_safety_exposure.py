"""Adverse events by arm with exposure-adjusted rates (issue 31): each arm's child-months in the
course (randomization day to the earliest of the course's last day, the child's exit and the lock's
day) and sessions attended, the rate per 100 child-months with its exact Poisson 95% interval, and
per 100 sessions attended (empty for the reference arm), on a hand-made trial whose exposure is
known; the same numbers in the unblinded bundle's reports/ae_summary.csv."""
from __future__ import annotations

import calendar
import csv
import datetime as dt
import io

import pytest
from scipy.stats import chi2

from tests.helpers import CLI, PASSWORD
from tests.test_exports import bundle_files
from tests.test_lock import SEED, R, backdate_all, child, iso
from trial.course.service import log_session
from trial.safety.service import poisson_ci, summary_by_arm

AE = {"term": "Otitis media", "severity": "moderate", "serious": False, "relatedness": "not_related",
      "expectedness": "expected", "outcome": "recovering", "description": "Antibiotics for a week."}


def course_days(start: dt.date) -> int:
    """The days of a five-month course, both ends counted: to the day before the same date five
    calendar months later (the month's last day when it has no such date)."""
    y, m = divmod(start.month - 1 + 5, 12)
    year, month = start.year + y, m + 1
    return (dt.date(year, month, min(start.day, calendar.monthrange(year, month)[1])) - start).days


def on(n: int) -> str:
    return iso(R + dt.timedelta(days=n))


@pytest.fixture()
def trial(world, db):
    """AT01 with the fixed seed (slots: usual, high, high, low, usual), every child randomized on R.
    high 1: attends 4 sessions (and is a no-show at one more), events on days 10, 60 (serious) and
    170 (after the course); high 2: attends 2, an event on day 20, withdrawn on day 40; low:
    attends 3 in the course and 1 after it, no event; usual 1: an event on day 10; usual 2: lost
    to follow-up on day 90."""
    world.open(SEED)
    kids = [child(world) for _ in range(5)]
    arms = [world.randomize(p, f"k{i}").allocation.arm for i, p in enumerate(kids)]
    assert arms == ["usual", "high", "high", "low", "usual"]
    backdate_all(db)
    usual1, high1, high2, low, usual2 = kids
    for p, days in ((high1, (3, 10, 17, 24)), (high2, (5, 12)), (low, (4, 11, 18, 170))):
        for n in days:
            log_session(db, CLI, p.study_id, {"held_on": on(n), "attendance": "attended", "minutes": 30,
                                              "techniques": ["songs"]})
    log_session(db, CLI, high1.study_id, {"held_on": on(31), "attendance": "no_show"})
    db.commit()
    for p, n, extra in ((high1, 10, {}), (high1, 60, {"serious": True, "seriousness": ["hospitalisation"]}),
                        (high1, 170, {}), (high2, 20, {}), (usual1, 10, {})):
        assert world.api("POST", f"/participants/{p.study_id}/adverse-events", "coordinator",
                         json={**AE, "onset": on(n), **extra}).status_code == 201
    for p, kind, n in ((high2, "withdrawn", 40), (usual2, "lost_to_follow_up", 90)):
        assert world.api("POST", f"/participants/{p.study_id}/events", "coordinator",
                         json={"type": kind, "on": on(n), "reason": "family moved away"}).status_code == 201
    return world


def rate(events: int, days: int) -> float:
    return round(100 * events / (days / 30.4375), 3)


def test_the_exposure_adjusted_rates_by_arm_to_the_digit(trial, db):
    d = course_days(R)
    by_arm = {r["arm"]: r for r in summary_by_arm(db)}
    high, low, usual = by_arm["high"], by_arm["low"], by_arm["usual"]
    # the existing counts stay: every event, in the course or not
    assert (high["events"], high["participants_with_event"], high["serious"]) == (4, 2, 1)
    # high: the whole course of high 1, and high 2 to the withdrawal (days 0-40: 41 days); the event
    # after the course left out of the rate; sessions in the course only, attended only
    assert (high["children"], high["sessions_attended"], high["events_in_exposure"]) == (2, 6, 3)
    assert high["child_months"] == round((d + 41) / 30.4375, 2)
    assert high["rate_per_100_child_months"] == rate(3, d + 41)
    t = (d + 41) / 30.4375 / 100
    assert high["rate_ci_low"] == round(chi2.ppf(0.025, 6) / 2 / t, 3)
    assert high["rate_ci_high"] == round(chi2.ppf(0.975, 8) / 2 / t, 3)
    assert high["rate_per_100_sessions"] == 50.0  # 3 events in 6 sessions attended
    # low: no event is a rate of 0 with an upper limit; its session after the course does not count
    assert (low["children"], low["sessions_attended"], low["events_in_exposure"]) == (1, 3, 0)
    assert (low["rate_per_100_child_months"], low["rate_ci_low"], low["rate_per_100_sessions"]) == (0.0, 0.0, 0.0)
    assert low["rate_ci_high"] == round(chi2.ppf(0.975, 2) / 2 / (d / 30.4375 / 100), 3)
    # usual care: usual 2 lost to follow-up on day 90 (91 days); no sessions, so no per-session rate
    assert (usual["children"], usual["events_in_exposure"]) == (2, 1)
    assert usual["child_months"] == round((d + 91) / 30.4375, 2)
    assert usual["rate_per_100_child_months"] == rate(1, d + 91)
    assert usual["sessions_attended"] is None and usual["rate_per_100_sessions"] is None


def test_the_locks_day_caps_the_exposure(trial, db):
    by_arm = {r["arm"]: r for r in summary_by_arm(db, until=R + dt.timedelta(days=30))}
    high = by_arm["high"]
    # both high children days 0-30; the events of days 10 and 20; the sessions held by day 30
    assert (high["child_months"], high["events_in_exposure"], high["sessions_attended"]) == (round(62 / 30.4375, 2), 2, 6)
    assert high["rate_per_100_child_months"] == rate(2, 62)
    assert by_arm["low"]["sessions_attended"] == 3
    low = {r["arm"]: r for r in summary_by_arm(db, until=R + dt.timedelta(days=10))}["low"]
    assert (low["child_months"], low["sessions_attended"]) == (round(11 / 30.4375, 2), 1)  # days 0-10: the session of day 4
    usual = by_arm["usual"]
    assert usual["child_months"] == round(62 / 30.4375, 2) and usual["events_in_exposure"] == 1


def test_an_arm_nobody_was_randomized_to_has_no_rate(world, db):
    world.open(SEED)
    rows = summary_by_arm(db)
    assert [r["arm"] for r in rows] == ["low", "high", "usual"]
    for r in rows:
        assert (r["children"], r["child_months"], r["events"]) == (0, 0.0, 0)
        assert r["rate_per_100_child_months"] is None and r["rate_ci_low"] is None and r["rate_per_100_sessions"] is None


def test_the_exact_poisson_interval():
    # Garwood's limits, checked against tabulated values (e.g. Ulm 1990): 0 -> (0, 3.689), 1 -> (0.0253, 5.572),
    # 10 -> (4.795, 18.39)
    assert [tuple(round(x, 3) for x in poisson_ci(k)) for k in (0, 1, 10)] == [
        (0.0, 3.689), (0.025, 5.572), (4.795, 18.39)]


def test_the_unblinded_bundle_carries_the_rates(trial, db):
    lock = trial.api("POST", "/locks", "manager", json={"kind": "hard", "meaning": "Final lock.", "password": PASSWORD})
    assert lock.status_code in (201, 202), lock.get_data(as_text=True)
    lock_id = lock.get_json()["id"]
    files = bundle_files(trial.api("GET", f"/locks/{lock_id}/bundle.zip", "manager").data)
    rows = {r["arm"]: r for r in csv.DictReader(io.StringIO(files["reports/ae_summary.csv"].decode()))}
    d = course_days(R)
    assert rows["high"]["rate_per_100_child_months"] == str(rate(3, d + 41))
    assert rows["usual"]["rate_per_100_sessions"] == "" and rows["high"]["rate_per_100_sessions"] == "50.0"
    blinded = bundle_files(trial.api("GET", f"/locks/{lock_id}/bundle.zip", "statistician").data)
    assert "reports/ae_summary.csv" not in blinded
