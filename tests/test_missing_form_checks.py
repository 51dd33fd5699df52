"""The missing-form check raises a run's queries in one batch (issue: checks that do not slow down
as the trial grows): one query per missing form with its text and first message, each query's
audit records as their own links of a chain that verifies, the same rows and records as a query
raised one at a time, and nothing new from a second run."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from tests.helpers import CLI
from tests.test_lock import SEED, backdate_all, child
from trial.audit import service as audit
from trial.audit.models import AuditRecord
from trial.dataquality.models import DataQuery, QueryMessage
from trial.dataquality.service import SYSTEM, Check, raise_check
from trial.outcomes import service as outcomes
from trial.participants.models import Allocation, Participant
from trial.protocol.service import current as current_protocol
from trial.timeline import visit_window

CHILDREN = 30
FIELDS = ["participant", "on", "origin", "check", "text"]


@pytest.fixture()
def thirty(world, db):
    """30 children at AT01 randomized 200 days ago; every third has its 2-month ADOS-2 entered."""
    world.open(SEED)
    kids = [child(world) for _ in range(CHILDREN)]
    for i, p in enumerate(kids):
        world.randomize(p, f"k{i}")
    backdate_all(db)
    for p in kids[::3]:
        start = db.execute(select(Allocation.randomized_at).where(Allocation.participant_id == p.id)).scalar().date()
        outcomes.record_assessment(db, CLI, p.study_id, {
            "visit": "month2", "instrument": "ados2", "performed_on": (start + dt.timedelta(days=61)).isoformat(),
            "values": {"social_affect": 9, "rrb": 3, "css": 5}})
    db.commit()
    return [db.get(Participant, p.id) for p in kids]


def expected(db, kids) -> dict[tuple, str]:
    """Each form missing after its window closed, with the text of its query."""
    content = current_protocol(db).content
    entered = {p.id for p in kids[::3]}
    out = {}
    for p in kids:
        start = db.execute(select(Allocation.randomized_at).where(Allocation.participant_id == p.id)).scalar().date()
        for v in content["visits"]:
            hi = visit_window(v, start)[2] if v["key"] != "baseline" else None
            if hi is None or hi >= dt.date.today():
                continue
            for ins in content["instruments"]:
                if v["key"] in ins["visits"] and not (p.id in entered and (v["key"], ins["key"]) == ("month2", "ados2")):
                    out[(p.id, v["key"], ins["key"])] = (f"{ins['label']} at {v['label']} is missing: its window closed "
                                                         f"on {hi.isoformat()}. Enter it, or answer why it cannot be.")
    return out


def audit_of(db, query_id: int) -> list[AuditRecord]:
    return list(db.execute(select(AuditRecord).where(AuditRecord.entity == "query", AuditRecord.entity_id == str(query_id))
                           .order_by(AuditRecord.seq)).scalars())


def test_a_run_raising_many_queries_writes_one_per_missing_form_and_a_chain_that_verifies(thirty, db):
    want = expected(db, thirty)
    assert len(want) == 4 * CHILDREN - CHILDREN // 3  # both forms at 2 and 5 months, but ADOS-2 at 2 of every third
    before = audit.head(db)[0]
    assert outcomes.check_missing_forms(db, thirty) == len(want)
    db.commit()
    qs = list(db.execute(select(DataQuery).order_by(DataQuery.id)).scalars())
    assert {(q.participant_id, q.visit, q.instrument): q.text for q in qs} == want
    assert len(qs) == len(want)
    assert audit.verify(db).ok
    seqs = []
    for q in qs:
        assert (q.status, q.origin, q.kind, q.target_id, q.raised_by) == ("open", "check", "assessment", None, SYSTEM)
        assert q.open_key == q.check_key == outcomes.missing_key(q.participant_id, q.visit, q.instrument)
        assert q.answer_role == ("assessor" if q.instrument == "ados2" else "coordinator")
        assert q.assessor_visible == (q.instrument == "ados2") and q.words["template"].startswith("%(form)s at %(visit)s is missing")
        [m] = q.messages
        assert (m.action, m.text, m.words, m.by) == ("raise", q.text, q.words, SYSTEM)
        recs = audit_of(db, q.id)
        assert [r.field for r in recs] == FIELDS and {r.action for r in recs} == {"create"}
        assert {r.actor for r in recs} == {SYSTEM} and {r.reveals_allocation for r in recs} == {not q.assessor_visible}
        assert {r.field: r.new for r in recs}["check"] == q.check_key
        seqs += [r.seq for r in recs]
    assert seqs == list(range(before + 1, before + 1 + len(FIELDS) * len(qs)))  # each query's records in a row
    # a second run raises nothing, and writes nothing
    head = audit.head(db)
    assert outcomes.check_missing_forms(db, thirty) == 0
    db.commit()
    assert audit.head(db) == head
    assert db.execute(select(func.count()).select_from(DataQuery)).scalar() == len(want)
    assert db.execute(select(func.count()).select_from(QueryMessage)).scalar() == len(want)


def test_a_batch_writes_what_a_query_raised_alone_writes_and_skips_its_open_key(thirty, db):
    p = thirty[1]
    content = current_protocol(db).content
    ins = next(i for i in content["instruments"] if i["key"] == "srs2")
    alone = raise_check(db, p, "assessment", None, outcomes.missing_key(p.id, "month2", "srs2"), "placeholder",
                        "coordinator", False, visit="month2", instrument="srs2")
    db.commit()
    assert alone is not None and ins
    assert outcomes.check_missing_forms(db, thirty) == len(expected(db, thirty)) - 1  # that form's query is open
    db.commit()
    batch = db.execute(select(DataQuery).where(DataQuery.participant_id == p.id, DataQuery.visit == "month5",
                                               DataQuery.instrument == "srs2")).scalar_one()
    columns = [c.key for c in DataQuery.__table__.columns if c.key not in ("id", "number", "text", "words", "check_key", "open_key",
                                                                           "visit", "raised_at", "updated_at")]
    assert [getattr(alone, c) for c in columns] == [getattr(batch, c) for c in columns]
    one, many = audit_of(db, alone.id), audit_of(db, batch.id)
    shape = ("actor", "actor_id", "action", "entity", "field", "old", "reason", "reveals_allocation")
    assert [[getattr(r, c) for c in shape] for r in one] == [[getattr(r, c) for c in shape] for r in many]
    assert audit.verify(db).ok


def test_a_check_of_a_key_twice_in_one_batch_raises_it_once(thirty, db):
    from trial.dataquality.service import raise_checks
    p = thirty[0]
    c = Check(p, "assessment", None, outcomes.missing_key(p.id, "month5", "srs2"), "twice", "coordinator", False,
              visit="month5", instrument="srs2")
    assert len(raise_checks(db, [c, c])) == 1
    assert raise_checks(db, [c]) == []
    db.commit()
    assert audit.verify(db).ok


def test_the_unique_open_key_is_the_backstop_when_a_run_misses_an_open_query(thirty, db, monkeypatch):
    """A run that did not see an open query (as a concurrent run's, committed after it looked)
    skips that row at the insert (ON CONFLICT DO NOTHING) and raises and audits only the others."""
    from trial.dataquality import service as dq
    p = thirty[0]
    checks = [Check(p, "assessment", None, outcomes.missing_key(p.id, v, "srs2"), f"srs2 at {v}", "coordinator", False,
                    visit=v, instrument="srs2") for v in ("month2", "month5")]
    [first] = dq.raise_checks(db, checks[:1])
    monkeypatch.setattr(dq, "_open_keys", lambda db, keys: set())
    [second] = dq.raise_checks(db, checks)
    db.commit()
    assert second != first and db.get(DataQuery, second).visit == "month5"
    assert len(audit_of(db, first)) == len(audit_of(db, second)) == len(FIELDS)
    assert db.execute(select(func.count()).select_from(QueryMessage)).scalar() == 2
    assert audit.verify(db).ok
