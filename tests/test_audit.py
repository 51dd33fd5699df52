"""The audit trail: a record for every service write, hash chain, tamper detection, append-only."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from tests.conftest import is_pg
from tests.helpers import CLI, PASSWORD
from trial.audit import service as audit
from trial.audit.models import AuditRecord
from trial.auth import service as users
from trial.enrollment import service as enrollment
from trial.participants.models import Allocation
from trial.protocol.service import DEFAULT_PROTOCOL, load_text
from trial.randomize import service as randomization
from trial.sites import service as sites


def count(db):
    return db.execute(select(func.count()).select_from(AuditRecord)).scalar()


def latest(db, n=1):
    return db.execute(select(AuditRecord).order_by(AuditRecord.seq.desc()).limit(n)).scalars().all()


WRITES = {
    "create_site": lambda w, db: sites.create_site(db, CLI, {"code": "IT01", "name": "Rome"}),
    "update_site": lambda w, db: sites.update_site(db, CLI, "AT01", {"target": 99}, reason="amended target"),
    "create_user": lambda w, db: users.create_user(db, CLI, "z@example.org", "Z", PASSWORD, [("manager", None)]),
    "set_roles": lambda w, db: users.set_roles(db, CLI, w.users["therapist"], [("therapist", "NO01")], reason="moved"),
    "update_user": lambda w, db: users.update_user(db, CLI, w.users["therapist"], active=False, reason="left"),
    "reset_password": lambda w, db: users.reset_password(db, CLI, w.users["therapist"], "temporary-pass-1"),
    "change_password": lambda w, db: users.change_password(db, w.users["therapist"], PASSWORD, "new-password-123"),
    "logout": lambda w, db: users.end_sessions(db, w.users["therapist"]),
    "login": lambda w, db: users.authenticate(db, "therapist@example.org", PASSWORD),
    "issue_token": lambda w, db: users.issue_token(db, CLI, w.users["therapist"]),
    "protocol_amendment": lambda w, db: load_text(db, CLI, DEFAULT_PROTOCOL.read_text().replace(
        "Is the child aged between", "Is the child aged (years and months) between")),
    "screening": lambda w, db: enrollment.record_screening(db, CLI, {"site": "AT01", "screened_on": dt.date.today().isoformat(),
                                                                     "answers": w.answers()}),
    "enrollment": lambda w, db: w.enroll(),
    "assessment": lambda w, db: w.baseline(w.enroll()),
    "open_randomization": lambda w, db: randomization.open_randomization(db, CLI),
}


@pytest.mark.parametrize("name", sorted(WRITES))
def test_every_service_write_is_audited(world, db, name):
    before = count(db)
    WRITES[name](world, db)
    db.flush()
    assert count(db) > before, f"{name} wrote no audit record"
    rec = latest(db)[0]
    assert rec.actor and rec.at and rec.entity and rec.hash
    assert abs((dt.datetime.utcnow() - rec.at).total_seconds()) < 120  # UTC


def test_randomization_is_audited_and_marked_as_revealing(world, db):
    world.open()
    p = world.ready()
    before = count(db)
    world.randomize(p)
    recs = db.execute(select(AuditRecord).where(AuditRecord.seq > before)).scalars().all()
    assert len(recs) == 1 and recs[0].field == "allocation"
    arm, at = world.db.execute(select(Allocation.arm, Allocation.randomized_at)
                               .where(Allocation.participant_id == p.id)).one()
    assert recs[0].new == '{"arm":"%s","randomized_at":"%s","seq":1,"stratum":"site=AT01"}' % (arm, at.isoformat())
    assert all(r.reveals_allocation and r.entity == "allocation" and r.entity_id == p.study_id for r in recs)


def test_update_records_field_old_new_and_reason(world, db):
    sites.update_site(db, CLI, "AT01", {"name": "Wien", "target": 55}, reason="site renamed")
    recs = {r.field: r for r in latest(db, 2)}
    assert (recs["name"].old, recs["name"].new, recs["name"].reason) == ("Vienna", "Wien", "site renamed")
    assert (recs["target"].old, recs["target"].new) == ("40", "55")


def test_failed_write_leaves_no_audit_record(world, db):
    before = count(db)
    with pytest.raises(Exception):
        sites.create_site(db, CLI, {"code": "bad", "name": ""})
    db.rollback()
    assert count(db) == before


def test_chain_verifies_and_links(world, db):
    res = audit.verify(db)
    assert res.ok and res.checked == count(db) > 10
    recs = db.execute(select(AuditRecord).order_by(AuditRecord.seq)).scalars().all()
    assert recs[0].prev_hash == audit.GENESIS
    assert all(b.prev_hash == a.hash for a, b in zip(recs, recs[1:]))


def _tamper(db, sql, **params):
    if is_pg():
        db.execute(text("ALTER TABLE audit_record DISABLE TRIGGER USER"))
    db.execute(text(sql), params)
    if is_pg():
        db.execute(text("ALTER TABLE audit_record ENABLE TRIGGER USER"))
    db.expire_all()


def test_tamper_detection_names_the_first_broken_record(world, db):
    target = db.execute(select(AuditRecord).order_by(AuditRecord.seq).offset(5).limit(1)).scalar_one()
    _tamper(db, "UPDATE audit_record SET new = 'forged' WHERE id = :id", id=target.id)
    res = audit.verify(db)
    assert not res.ok and res.broken_seq == target.seq and "altered" in res.problem


def test_deleted_record_is_detected(world, db):
    target = db.execute(select(AuditRecord).order_by(AuditRecord.seq).offset(3).limit(1)).scalar_one()
    seq = target.seq
    _tamper(db, "DELETE FROM audit_record WHERE id = :id", id=target.id)
    res = audit.verify(db)
    assert not res.ok and res.broken_seq == seq and "missing" in res.problem


def test_truncated_tail_is_detected(world, db):
    last = latest(db)[0]
    _tamper(db, "DELETE FROM audit_record WHERE id = :id", id=last.id)
    assert not audit.verify(db).ok


@pytest.mark.skipif(not is_pg(), reason="the append-only trigger is PostgreSQL's")
@pytest.mark.parametrize("sql", ["UPDATE audit_record SET reason = 'x'", "DELETE FROM audit_record",
                                 "TRUNCATE audit_record"])
def test_postgres_trigger_refuses_changes_to_audit_rows(world, db, sql):
    db.flush()
    with pytest.raises(DBAPIError, match="append-only"):
        with db.begin_nested():
            db.execute(text(sql))


def test_audit_view_for_managers_only_and_blinded_users_never_see_allocations(world, db, app):
    world.open()
    p = world.ready()
    world.randomize(p)
    manager_rows = audit.visible_records(db, world.users["manager"], limit=10000)
    assert any(r.reveals_allocation for r in manager_rows)
    stat_rows = audit.visible_records(db, world.users["statistician"], limit=10000)
    assert stat_rows and not any(r.reveals_allocation for r in stat_rows)
    c = app.test_client()
    c.post("/login", data={"email": "manager@example.org", "password": PASSWORD})
    page = c.get("/audit/?entity=allocation").get_data(as_text=True)
    assert p.study_id in page
    for who in ("assessor", "statistician", "admin", "coordinator", "therapist"):
        c = app.test_client()
        c.post("/login", data={"email": f"{who}@example.org", "password": PASSWORD})
        r = c.get("/audit/?entity=allocation")
        assert r.status_code == 403 and p.study_id not in r.get_data(as_text=True)
