"""Concurrency with real threads against a real, committed database (a fresh one per module):
PostgreSQL when TRIAL_TEST_DATABASE_URL is set, else a SQLite file. Requests go through the whole
Flask stack, each thread with its own client and database connection."""
from __future__ import annotations

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from tests.conftest import FreshDatabase
from tests.helpers import World
from trial import create_app
from trial.audit import service as audit
from trial.audit.models import AuditRecord
from trial.dataquality.models import DataQuery
from trial.outcomes.service import check_missing_forms
from trial.participants.models import Allocation, Participant
from trial.randomize import lists
from trial.randomize.models import Stratum

SEED = b"\x07" * 32


@pytest.fixture(scope="module")
def live():
    fresh = FreshDatabase("concurrency")
    app = create_app({"DATABASE_URL": fresh.url, "ENGINE": fresh.engine, "TESTING": True, "SECRET_KEY": "t"})
    session = app.extensions["trial.sessions"]()
    world = World(session, app).setup()
    world.open(SEED)
    yield world
    session.close()
    fresh.drop()


def fire(n, fn):
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait()
        return fn(i)
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))


def test_fifty_participants_at_once_take_slots_one_to_fifty(live):
    people = [live.ready("AT01") for _ in range(50)]
    results = fire(50, lambda i: live.api("POST", f"/participants/{people[i].study_id}/randomize", "coordinator",
                                          headers={"Idempotency-Key": f"fifty-{i}"}))
    assert [r.status_code for r in results] == [201] * 50, {r.status_code: r.get_data(as_text=True) for r in results}
    db = live.db
    db.expire_all()
    stratum = db.execute(select(Stratum).where(Stratum.key == "site=AT01")).scalar_one()
    allocs = db.execute(select(Allocation).where(Allocation.stratum_id == stratum.id)).scalars().all()
    assert sorted(a.seq for a in allocs) == list(range(1, 51))
    assert len({a.participant_id for a in allocs}) == 50 and stratum.last_seq == 50
    expected = lists.StratumList(SEED, "site=AT01", [("low", 1), ("high", 1), ("usual", 2)], [4, 8])
    assert all(a.arm == expected.arm_at(a.seq) for a in allocs)
    by_study = {r.get_json()["study_id"]: r.get_json()["arm"] for r in results}
    assert len(by_study) == 50
    assert audit.verify(db).ok


def test_twenty_requests_for_one_child_make_one_allocation(live):
    p = live.ready("NO01")
    results = fire(20, lambda i: live.api("POST", f"/participants/{p.study_id}/randomize", "coordinator_no",
                                          headers={"Idempotency-Key": "same-key"}))
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200] * 19 + [201], statuses
    bodies = {r.get_data(as_text=True) for r in results}
    assert len(bodies) == 1
    db = live.db
    db.expire_all()
    assert len(db.execute(select(Allocation).where(Allocation.participant_id == p.id)).scalars().all()) == 1
    recs = db.execute(select(AuditRecord).where(AuditRecord.action == "randomize",
                                                AuditRecord.entity_id == p.study_id)).scalars().all()
    assert len(recs) == 1
    assert audit.verify(db).ok


def test_twenty_requests_with_different_keys_one_wins_the_rest_409(live):
    p = live.ready("NO01")
    results = fire(20, lambda i: live.api("POST", f"/participants/{p.study_id}/randomize", "coordinator_no",
                                          headers={"Idempotency-Key": f"key-{i}"}))
    statuses = sorted(r.status_code for r in results)
    assert statuses == [201] + [409] * 19
    assert all("already randomized" in r.get_json()["error"]["message"] for r in results if r.status_code == 409)


def test_concurrent_audit_appends_never_fork_the_chain(live):
    from tests.helpers import CLI
    from trial.sites.service import update_site

    def edit(i):
        s = live.app.extensions["trial.sessions"]()
        try:
            update_site(s, CLI, "AT01", {"target": 100 + i}, reason=f"edit {i}")
            s.commit()
        finally:
            s.close()
    fire(16, edit)
    db = live.db
    db.expire_all()
    assert audit.verify(db).ok
    seqs = db.execute(select(AuditRecord.seq).order_by(AuditRecord.seq)).scalars().all()
    assert seqs == list(range(1, len(seqs) + 1))


def test_concurrent_missing_form_checks_raise_each_query_once(live):
    """Four runs of the missing-form check at once, as of a day when every window has closed: the
    first to take the chain head raises a query for each missing form in one batch, the others
    then find them open and raise none; the chain verifies."""
    on = dt.date.today() + dt.timedelta(days=800)
    for i in range(3):
        live.randomize(live.ready("AT01"), f"checks-{i}")
    live.db.commit()  # (this session's reads hold SQLite's write lock until it ends)

    def run(i):
        s = live.app.extensions["trial.sessions"]()
        try:
            people = list(s.execute(select(Participant).join(Allocation, Allocation.participant_id == Participant.id)
                                    .order_by(Participant.id)).scalars())
            n = check_missing_forms(s, people, on)
            s.commit()
            return n
        finally:
            s.close()
    raised = fire(4, run)
    db = live.db
    db.expire_all()
    keys = db.execute(select(DataQuery.open_key).where(DataQuery.origin == "check")).scalars().all()
    assert len(keys) > 3 and len(set(keys)) == len(keys)
    assert sorted(raised) == [0, 0, 0, len(keys)]
    assert len(db.execute(select(AuditRecord.id).where(AuditRecord.entity == "query")).all()) == 5 * len(keys)
    assert audit.verify(db).ok
    db.commit()


def test_queries_raised_at_once_by_people_and_by_a_check_take_each_number_of_their_site_once(live):
    """Twelve queries raised at once through the API at one site and a run of the missing-form
    check (which raises its batch) at the same moment: every query of the site has its own number,
    the site's numbers run 1, 2, 3, ... without a hole, and the other site's start again at 1."""
    on = dt.date.today() + dt.timedelta(days=900)
    people = [live.ready("NO01") for _ in range(3)]
    for i, p in enumerate(people):
        live.randomize(p, f"numbers-{i}")
    live.db.commit()

    def run(i):
        if i < 12:
            return live.api("POST", "/queries", "manager", json={
                "study_id": people[i % 3].study_id, "on": {"kind": "participant"}, "text": f"Question {i}?"}).status_code
        s = live.app.extensions["trial.sessions"]()
        try:
            n = check_missing_forms(s, [s.get(Participant, p.id) for p in people], on)
            s.commit()
            return n
        finally:
            s.close()
    results = fire(13, run)
    assert results[:12] == [201] * 12 and results[12] > 0
    db = live.db
    db.expire_all()
    no = db.execute(select(DataQuery.number).join(Participant, Participant.id == DataQuery.participant_id)
                    .where(Participant.study_id.like("NO01-%"))).scalars().all()
    assert sorted(no) == list(range(1, len(no) + 1))
    mine = db.execute(select(DataQuery.number).where(DataQuery.participant_id.in_([p.id for p in people]))).scalars().all()
    assert len(mine) == 12 + results[12]
    at = db.execute(select(DataQuery.number).join(Participant, Participant.id == DataQuery.participant_id)
                    .where(Participant.study_id.like("AT01-%"))).scalars().all()
    assert sorted(at) == list(range(1, len(at) + 1))
    assert audit.verify(db).ok
    db.commit()
