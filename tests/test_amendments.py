"""Amendments that apply from a date (API.md, "A site's day"): a visit or instrument an amendment
adds is due for children randomized on or after the version's ``effective_from`` (default: the day
it is loaded); with ``applies_to = "all"`` also for earlier children, but only where the window had
not closed by then. A window that closed before the amendment never becomes missing or overdue:
no query, no overdue row. ``trial protocol load --dry-run`` says what would follow and changes
nothing; ``trial protocol show`` and ``diff``."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from tests.helpers import CLI
from tests.test_outcomes import backdate, opened, randomized, today  # noqa: F401 (opened: a fixture)
from trial.dataquality.models import DataQuery
from trial.outcomes.service import check_missing_forms, missing_form_candidates, schedule
from trial.participants.models import Participant
from trial.protocol.models import ProtocolVersion
from trial.protocol.service import DEFAULT_PROTOCOL, load_text
from trial.visitplan.models import PlannedVisit
from trial.visitplan.service import replan_all, stale

TOML = DEFAULT_PROTOCOL.read_text()
MONTH1 = '''[[visits]]
key = "month1"
label = "1 month"
day = 30
window_before = 7
window_after = 7
primary = false
allocation_guess = false
{applies}
'''


def with_month1(effective_from: dt.date | None = None, applies: str = "") -> str:
    """The default protocol with a 1-month visit at which both instruments are collected."""
    text = TOML.replace('[[visits]]\nkey = "month2"', MONTH1.format(applies=applies) + '\n[[visits]]\nkey = "month2"', 1)
    text = text.replace('visits = ["baseline", "month2", "month5", "month12"]',
                        'visits = ["baseline", "month1", "month2", "month5", "month12"]')
    if effective_from is not None:
        text = f"effective_from = {effective_from.isoformat()}\n\n" + text
    return text


def month1(db, p) -> PlannedVisit | None:
    db.expire_all()
    return db.execute(select(PlannedVisit).where(PlannedVisit.participant_id == p.id,
                                                 PlannedVisit.visit == "month1")).scalar_one_or_none()


def month1_queries(db, p) -> int:
    return db.execute(select(func.count()).select_from(DataQuery).where(
        DataQuery.participant_id == p.id, DataQuery.visit == "month1")).scalar_one()


def amend(world, db, text: str) -> None:
    load_text(db, CLI, text, "amendment.toml")
    replan_all(db)
    db.commit()


def run_checks(db, on: dt.date) -> int:
    people = missing_form_candidates(db, select(Participant), on)
    n = check_missing_forms(db, people, on)
    db.commit()
    return n


def test_an_added_visit_is_due_only_for_children_randomized_from_its_date(opened, db):
    closed = randomized(opened, 100)     # its 1-month window closed 63 days ago
    open_now = randomized(opened, 33)    # its 1-month window is open today
    amend(opened, db, with_month1())
    later = randomized(opened)           # randomized on the amendment's day
    assert month1(db, closed) is None and month1(db, open_now) is None
    row = month1(db, later)
    assert row is not None and (row.blinded_forms, row.other_forms) == (1, 1)
    assert stale(db) == []
    # nothing becomes missing for the earlier children, now or ever; the later child's forms do
    run_checks(db, today())
    assert month1_queries(db, closed) == 0 and month1_queries(db, open_now) == 0
    run_checks(db, today() + dt.timedelta(days=60))
    assert month1_queries(db, closed) == 0 and month1_queries(db, open_now) == 0 and month1_queries(db, later) == 2
    # the schedules say so
    sched = schedule(db, opened.users["assessor"], [closed, later])
    by = {p: {e["visit"]: e for e in sched[p.id]} for p in (closed, later)}
    assert by[closed]["month1"]["status"] == "not_expected" and by[closed]["month1"]["instruments_expected"] == []
    assert by[later]["month1"]["status"] == "upcoming" and by[later]["month1"]["instruments_expected"] == ["ados2"]
    # the overdue worklist names no earlier child at the new visit
    overdue = opened.api("GET", "/visits?kind=overdue", "manager").get_json()
    assert not [i for i in overdue if i["visit"] == "month1"]


def test_applies_to_all_makes_only_windows_still_open_due(opened, db):
    closed = randomized(opened, 100)
    open_now = randomized(opened, 33)
    amend(opened, db, with_month1(applies='applies_to = "all"'))
    assert month1(db, closed) is None
    assert month1(db, open_now) is not None
    run_checks(db, today() + dt.timedelta(days=10))  # the open window's two forms, once it closed
    assert month1_queries(db, closed) == 0 and month1_queries(db, open_now) == 2
    due = {(i["study_id"], i["visit"]) for i in opened.api("GET", "/visits?kind=due", "assessor").get_json()}
    assert (open_now.study_id, "month1") in due and (closed.study_id, "month1") not in due


def test_an_effective_date_in_the_future_leaves_todays_children_out(opened, db):
    amend(opened, db, with_month1(effective_from=today() + dt.timedelta(days=10)))
    now = randomized(opened)
    assert month1(db, now) is None
    backdate(opened, now, -11)  # as if randomized after the date
    replan_all(db)
    db.commit()
    assert month1(db, now) is not None


def test_an_added_instrument_at_an_existing_visit_follows_the_same_rule(opened, db):
    closed = randomized(opened, 100)
    # the SRS-2 is also collected at... nothing new; add the ADOS-2 later at no visit: instead drop
    # the SRS-2 at month 2 in version 2 and bring it back in version 3: it is new in neither
    text = TOML.replace('visits = ["baseline", "month2", "month5", "month12"]', 'visits = ["baseline", "month5", "month12"]')
    text = text.replace('visits = ["baseline", "month5", "month12"]', 'visits = ["baseline", "month2", "month5", "month12"]', 1)
    amend(opened, db, text)
    amend(opened, db, TOML.replace('amendment = "1.0"', 'amendment = "3.0"'))
    row = db.execute(select(PlannedVisit).where(PlannedVisit.participant_id == closed.id,
                                                PlannedVisit.visit == "month2")).scalar_one()
    assert (row.blinded_forms, row.other_forms) == (1, 1)  # the first version's forms apply to every child


def test_a_dry_run_says_what_would_follow_and_changes_nothing(opened, db):
    from trial.audit.models import AuditRecord
    from trial.outcomes.amendments import preview
    randomized(opened, 100)
    randomized(opened, 33)
    text = with_month1(applies='applies_to = "all"').replace('amendment = "1.0"', 'amendment = "1.1"')

    def counts():
        db.expire_all()
        return tuple(db.execute(select(func.count()).select_from(m)).scalar_one()
                     for m in (ProtocolVersion, PlannedVisit, DataQuery, AuditRecord))
    before = counts()
    p = preview(db, CLI, text, "amendment.toml", on=today() + dt.timedelta(days=10))
    assert not p.problems, p.message
    assert "amendment 1.0 -> 1.1" in p.changes and any(c.startswith("added visit month1") for c in p.changes)
    assert "instrument ados2: now also at month1" not in p.changes and "ados2: now also at month1" in p.changes
    # the child whose window is still open gets both forms; ten days on, both would be queried
    assert (p.version, p.replanned, p.newly_due, p.queries) == (2, 1, 2, 2)
    assert counts() == before
    bad = preview(db, CLI, TOML.replace("window_before = 14", "window_before = -1", 1))
    assert bad.problems == {"visits[1].window_before": "must be 0 or more"}
    assert counts() == before
    same = preview(db, CLI, TOML)
    assert (same.version, same.changes, same.replanned, same.newly_due) == (1, [], 0, 0)


def test_show_and_diff(opened, db):
    from trial.protocol.diff import describe
    from trial.protocol.service import version
    amend(opened, db, with_month1(effective_from=today()).replace('label = "2 months"', 'label = "Two months"', 1))
    assert version(db, 1).source == TOML and version(db).version == 2
    lines = describe(version(db, 1).content, version(db, 2).content)
    assert lines[0] == f"effective from {today().isoformat()}"
    assert "added visit month1 (1 month, day 30, window -7/+7)" in lines
    assert "visit month2: label '2 months' -> 'Two months'" in lines
    assert "ados2: now also at month1" in lines and "srs2: now also at month1" in lines
    assert describe(version(db, 2).content, version(db, 2).content) == []


@pytest.mark.parametrize("lang", ["sv", "fr", "es-MX"])
def test_labels_in_languages_the_ui_does_not_speak_are_kept(lang):
    from trial.protocol.schema import parse
    text = TOML.replace('[arms.labels]\n', f'[arms.labels]\n{lang} = "Musikterapi"\n', 1)
    assert parse(text)["arms"][0]["labels"][lang.replace("-", "_")] == "Musikterapi"


def test_a_form_an_amendment_added_cannot_be_entered_for_a_child_it_does_not_apply_to(opened, db):
    from tests.test_outcomes import ADOS, assess
    earlier = randomized(opened, 33)     # its 1-month window is open, but it was randomized before the amendment
    amend(opened, db, with_month1())
    later = randomized(opened)
    r = assess(opened, earlier, visit="month1", performed_on=today().isoformat(), values=dict(ADOS))
    assert r.status_code == 409 and "is not in the plan of" in r.get_json()["error"]["message"]
    assert "1 month" in r.get_json()["error"]["message"] and "month1" not in r.get_json()["error"]["message"]
    assert db.execute(select(func.count()).select_from(DataQuery).where(DataQuery.visit == "month1")).scalar() == 0
    r = assess(opened, later, visit="month1", performed_on=(today() + dt.timedelta(days=0)).isoformat(),
               values=dict(ADOS))
    assert r.status_code == 201, r.get_json()
