"""The audit chain is keyed: HMAC-SHA256 under TRIAL_AUDIT_KEY, which is never in the database. The
attack of issue 8 is reproduced as written: someone who can write the database changes an
allocation's audit record and recomputes every later hash and the head; `trial audit verify` must
name the forged record. Chains written before the key existed are re-anchored by migration 0005,
which records the re-anchoring in the chain. `trial audit rotate-key` continues the chain under a new
key: the retired key (TRIAL_AUDIT_KEYS_RETIRED) verifies the older part, and without it that part is
named unverified."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import subprocess
import types

import pytest
from sqlalchemy import select, text

from tests.conftest import FreshDatabase, is_pg
from tests.helpers import CLI, PASSWORD
from tests.test_cli import TRIAL, Db, Run, ok, one_line_error
from trial.audit import rotation
from trial.audit import service as audit
from trial.audit.models import AuditAnchor, AuditHead, AuditKeyEpoch, AuditRecord
from trial.db import make_session_factory
from trial.errors import Forbidden, ValidationError

GENESIS = "0" * 64


def _rows(conn):
    return conn.execute(select(AuditRecord.__table__).order_by(AuditRecord.seq)).all()


def _write(conn, sql, **params):
    if is_pg():
        conn.execute(text("ALTER TABLE audit_record DISABLE TRIGGER USER"))
    conn.execute(text(sql), params)
    if is_pg():
        conn.execute(text("ALTER TABLE audit_record ENABLE TRIGGER USER"))


def forge(conn, target_seq: int, field: str, value: str, rehash=audit.legacy_hash) -> None:
    """The attacker: change one record, recompute every later hash with ``rehash`` (by default the
    plain SHA-256 the chain used to have; the attacker has the code but not the key) and the head."""
    rows = _rows(conn)
    prev = GENESIS if target_seq == 1 else rows[target_seq - 2].hash
    for r in rows[target_seq - 1:]:
        d = dict(r._mapping)
        if r.seq == target_seq:
            d[field] = value
        d["prev_hash"] = prev
        d["hash"] = prev = rehash(types.SimpleNamespace(**d))
        _write(conn, f"UPDATE audit_record SET {field} = :v, prev_hash = :p, hash = :h WHERE id = :id",
               v=d[field], p=d["prev_hash"], h=d["hash"], id=r.id)
    conn.execute(text("UPDATE audit_head SET hash = :h WHERE id = 1"), {"h": prev})


@pytest.fixture()
def randomized(world, db):
    world.open()
    for _ in range(4):
        world.randomize(world.ready())
    return world


def _allocation_record(db):
    return db.execute(select(AuditRecord).where(AuditRecord.entity == "allocation")
                      .order_by(AuditRecord.seq).limit(1)).scalar_one()


def test_the_chain_is_keyed_not_plain_sha256(randomized, db):
    rec = _allocation_record(db)
    assert rec.hash == audit.compute_hash(rec) != audit.legacy_hash(rec)
    assert audit.verify(db).ok


def test_rewriting_an_allocation_and_every_later_hash_is_detected(randomized, db):
    rec = _allocation_record(db)
    later = db.execute(select(AuditRecord.seq).where(AuditRecord.seq > rec.seq)).scalars().all()
    assert len(later) > 10, "the forgery must recompute many later hashes"
    arm = json.loads(rec.new)
    arm["arm"] = "usual" if arm["arm"] != "usual" else "low"
    forge(db.connection(), rec.seq, "new", json.dumps(arm, sort_keys=True, separators=(",", ":")))
    db.expire_all()
    res = audit.verify(db)
    assert not res.ok and res.broken_seq == rec.seq and "forged" in res.problem, res


def test_a_forgery_under_a_guessed_key_is_detected(randomized, db):
    rec = _allocation_record(db)

    def guessed(r):
        blob = audit._payload(r)
        return hmac.new(b"a guessed key", blob, hashlib.sha256).hexdigest()
    forge(db.connection(), rec.seq, "new", '{"arm":"usual"}', rehash=guessed)
    db.expire_all()
    res = audit.verify(db)
    assert not res.ok and res.broken_seq == rec.seq


def test_cli_verify_names_the_forged_record(tmp_path):
    fresh = FreshDatabase("forged")
    try:
        d = Db(fresh, tmp_path)
        ok(d.run("site", "create", "--code", "AT01", "--name", "Vienna"))
        ok(d.run("site", "create", "--code", "NO01", "--name", "Bergen"))
        assert "intact" in ok(d.run("audit", "verify")).stdout
        with fresh.engine.begin() as conn:
            target = conn.execute(text("SELECT seq FROM audit_record WHERE entity = 'site' AND entity_id = 'AT01' "
                                       "ORDER BY seq LIMIT 1")).scalar()
            forge(conn, target, "new", "Forged City")
        line = one_line_error(d.run("audit", "verify"), f"record {target}", "forged")
        assert "broken" in line
    finally:
        fresh.drop()


def test_another_audit_key_refuses_to_append_and_to_vouch(randomized, db, monkeypatch):
    monkeypatch.setenv("TRIAL_AUDIT_KEY", "another-key-of-at-least-32-characters!")
    with pytest.raises(audit.AuditKeyMismatch):
        audit.record(db, "test", "noop", "thing", 1)
    db.rollback()
    res = audit.verify(db)
    assert not res.ok and "TRIAL_AUDIT_KEY" in res.problem


# --- re-anchoring a chain written before the key ----------------------------------------------

def _legacy_chain(conn, n: int) -> None:
    """What a chain looked like before migration 0005: plain SHA-256 records and head."""
    prev = GENESIS
    at = dt.datetime(2026, 11, 20, 9, 0)
    for seq in range(1, n + 1):
        rec = {"seq": seq, "at": at + dt.timedelta(minutes=seq), "actor_id": None, "actor": "cli:old", "action": "create",
               "entity": "site", "entity_id": f"S{seq:03d}", "field": "name", "old": None, "new": f"Site {seq}",
               "reason": None, "reveals_allocation": False, "prev_hash": prev}
        rec["hash"] = prev = audit.legacy_hash(types.SimpleNamespace(**rec))
        conn.execute(AuditRecord.__table__.insert().values(**rec))
    conn.execute(text("UPDATE audit_head SET seq = :n, hash = :h WHERE id = 1"), {"n": n, "h": prev})


def test_migration_reanchors_an_existing_chain_and_records_it():
    from trial.migrate import upgrade
    fresh = FreshDatabase("reanchor", revision="0004")
    try:
        with fresh.engine.begin() as conn:
            _legacy_chain(conn, 40)
        upgrade(fresh.engine)
        s = make_session_factory(fresh.engine)()
        try:
            res = audit.verify(s)
            assert res.ok and res.checked == 41, res
            assert s.execute(select(AuditAnchor.seq)).scalars().all() == list(range(1, 41))
            last = s.execute(select(AuditRecord).where(AuditRecord.seq == 41)).scalar_one()
            assert (last.action, last.entity, last.old, last.new) == ("reanchor", "audit_chain", "sha256", "hmac-sha256")
            assert "40 records" in last.reason and last.prev_hash == s.execute(
                select(AuditRecord.hash).where(AuditRecord.seq == 40)).scalar()
            assert s.execute(select(AuditHead.key_check)).scalar() == audit.key_check()
            audit.record(s, "test", "create", "thing", 1)  # the chain goes on, keyed
            s.commit()
            assert audit.verify(s).ok
        finally:
            s.close()
        # the attack on a record from before the key: the SHA-256 is recomputable, its anchor is not
        with fresh.engine.begin() as conn:
            forge(conn, 7, "new", "Forged Site")
        s = make_session_factory(fresh.engine)()
        try:
            res = audit.verify(s)
            assert not res.ok and res.broken_seq == 7 and "forged" in res.problem, res
        finally:
            s.close()
    finally:
        fresh.drop()


# --- the end of the chain: the head is sealed, hard locks seal it again --------------------------

def _cut_back_to(conn, seq: int) -> None:
    """The attacker without the key: delete every record after ``seq`` and point the head at the
    new last record (plain SQL, as anyone who can write the database could)."""
    last = conn.execute(select(AuditRecord.hash).where(AuditRecord.seq == seq)).scalar() if seq else GENESIS
    _write(conn, "DELETE FROM audit_record WHERE seq > :n", n=seq)
    conn.execute(text("UPDATE audit_head SET seq = :n, hash = :h WHERE id = 1"), {"n": seq, "h": last})


def test_cutting_the_allocations_off_the_end_is_detected(randomized, db):
    first = _allocation_record(db).seq
    assert audit.verify(db).ok
    _cut_back_to(db.connection(), first - 1)
    db.expire_all()
    res = audit.verify(db)
    assert not res.ok and "chain head" in res.problem and "cut off" in res.problem, res


def test_wiping_the_whole_chain_is_detected(randomized, db):
    _cut_back_to(db.connection(), 0)
    db.expire_all()
    res = audit.verify(db)
    assert not res.ok and res.checked == 0, res


def test_a_replayed_old_head_is_caught_by_the_seal_of_a_hard_lock(randomized, db):
    """The attacker kept the head row (seq, hash, mac) from before the hard lock, cuts the chain back
    to it and restores that head: the head's seal is genuine, but the lock's seal names a record
    that is gone."""
    w = randomized
    old = db.execute(select(AuditHead.seq, AuditHead.hash, AuditHead.mac)).one()
    r = w.api("POST", "/locks", "manager", json={"kind": "hard", "meaning": "Final lock.", "password": PASSWORD})
    assert r.status_code == 201, r.get_data(as_text=True)
    db.expire_all()
    assert audit.verify(db).ok
    conn = db.connection()
    _write(conn, "DELETE FROM audit_record WHERE seq > :n", n=old.seq)
    conn.execute(text("UPDATE audit_head SET seq = :n, hash = :h, mac = :m WHERE id = 1"),
                 {"n": old.seq, "h": old.hash, "m": old.mac})
    db.expire_all()
    res = audit.verify(db)
    assert not res.ok and "sealed at hard lock" in res.problem, res


def test_the_unblinded_bundle_names_the_sealed_head_the_blinded_does_not(randomized, db):
    import io
    import zipfile
    w = randomized
    lock_id = w.api("POST", "/locks", "manager", json={"kind": "hard", "meaning": "Final lock.",
                                                         "password": PASSWORD}).get_json()["id"]
    seal = db.execute(select(audit.AuditSeal)).scalar_one()
    readme = {}
    for who in ("manager", "statistician"):
        z = zipfile.ZipFile(io.BytesIO(w.api("GET", f"/locks/{lock_id}/bundle.zip", who).data))
        readme[who] = next(z.read(n).decode() for n in z.namelist() if n.endswith("README.txt"))
    assert f"record {seal.seq}, hash {seal.hash}" in readme["manager"]
    assert seal.hash not in readme["statistician"] and "Audit chain" not in readme["statistician"]


# --- rotating the key: the chain goes on under a new one, the retired one verifies the older part ---

NEW_KEY = "rotated-audit-key-" + "7" * 32
NEWER_KEY = "rotated-again-audit-key-" + "8" * 32


def _chain_state(db) -> tuple:
    return (db.execute(select(AuditHead.seq, AuditHead.hash, AuditHead.key_check, AuditHead.mac)).one(),
            db.execute(select(AuditKeyEpoch.from_seq)).scalars().all())


@pytest.mark.parametrize("bad, why", [
    ("", "empty"), ("short-key", "at least 32 characters"), ("with,a,comma-" + "x" * 32, "comma"),
    (" " + "x" * 40, "space"), (None, "the key in force"), ("retired", "retired before")])
def test_a_bad_new_audit_key_is_refused_and_nothing_changes(randomized, db, monkeypatch, bad, why):
    old = os.environ["TRIAL_AUDIT_KEY"]
    if bad == "retired":
        monkeypatch.setenv("TRIAL_AUDIT_KEYS_RETIRED", NEWER_KEY)
        bad = NEWER_KEY
    before = _chain_state(db)
    with pytest.raises(ValidationError, match=why) as e:
        rotation.rotate_key(db, CLI, old if bad is None else bad)
    assert "key" in e.value.fields
    db.rollback()
    assert _chain_state(db) == before and audit.verify(db).ok


def test_only_the_command_line_rotates_the_key(randomized, db):
    with pytest.raises(Forbidden):
        rotation.rotate_key(db, randomized.users["manager"], NEW_KEY)


def test_rotation_continues_the_chain_and_the_retired_key_verifies_the_older_part(randomized, db, monkeypatch):
    old = os.environ["TRIAL_AUDIT_KEY"]
    top = audit.head(db)[0]
    r = rotation.rotate_key(db, CLI, NEW_KEY)
    db.commit()
    assert r.from_seq == top + 1 and (r.old_check, r.new_check) == (audit.key_check(), audit.key_check(NEW_KEY.encode()))
    assert db.execute(select(AuditKeyEpoch.from_seq, AuditKeyEpoch.key_check).order_by(AuditKeyEpoch.from_seq)).all() \
        == [(1, r.old_check), (top + 1, r.new_check)]
    rec = db.execute(select(AuditRecord).where(AuditRecord.seq == top + 1)).scalar_one()
    assert (rec.action, rec.entity, rec.old, rec.new) == ("rotate_key", "audit_chain", r.old_check, r.new_check)
    assert rec.hash == audit.compute_hash(rec, NEW_KEY.encode()) != audit.compute_hash(rec)
    # the deployment after the rotation: the new key in force, the old one retired
    monkeypatch.setenv("TRIAL_AUDIT_KEY", NEW_KEY)
    monkeypatch.setenv("TRIAL_AUDIT_KEYS_RETIRED", old)
    head = db.execute(select(AuditHead)).scalar_one()
    assert head.key_check == r.new_check and head.mac == audit.head_mac(head.seq, head.hash)
    randomized.randomize(randomized.ready())  # the chain goes on under the new key
    res = audit.verify(db)
    assert res.ok and res.checked == audit.head(db)[0] > top + 1, res
    # the retired key withheld: the part it keyed is named, and the chain does not pass
    monkeypatch.delenv("TRIAL_AUDIT_KEYS_RETIRED")
    res = audit.verify(db)
    assert not res.ok and res.unverified == [(1, top)] and res.broken_seq == 1, res
    assert f"records 1 to {top} " in res.problem and r.old_check[:12] in res.problem and "not verified" in res.problem


def test_after_rotation_the_old_key_refuses_to_append_and_a_leaked_old_key_forges_nothing(randomized, db, monkeypatch):
    w = randomized
    old = os.environ["TRIAL_AUDIT_KEY"]
    first = _allocation_record(db).seq
    r = rotation.rotate_key(db, CLI, NEW_KEY)
    db.commit()
    # an app server still holding the old key: refused, nothing written
    before = audit.head(db)
    db.commit()
    body = {"site": "AT01", "screened_on": dt.date.today().isoformat(), "answers": w.answers()}
    refused = w.api("POST", "/screenings", "coordinator", json=body)
    assert refused.status_code == 503 and refused.get_json()["error"]["code"] == "audit_key_mismatch"
    assert audit.head(db) == before
    with pytest.raises(audit.AuditKeyMismatch):
        audit.record(db, "test", "noop", "thing", 1)
    db.rollback()
    res = audit.verify(db)
    assert not res.ok and "retired key" in res.problem and f"re-keyed at record {r.from_seq}" in res.problem
    # given the new key, the same server writes
    monkeypatch.setenv("TRIAL_AUDIT_KEY", NEW_KEY)
    monkeypatch.setenv("TRIAL_AUDIT_KEYS_RETIRED", old)
    assert w.api("POST", "/screenings", "coordinator", json=body).status_code == 201
    assert audit.verify(db).ok
    # someone who stole the old key rewrites an allocation and every later hash under it: the part
    # under the new key does not verify under the old one
    forge(db.connection(), first, "new", '{"arm":"usual"}',
          rehash=lambda rec: hmac.new(old.encode(), audit._payload(rec), hashlib.sha256).hexdigest())
    db.expire_all()
    res = audit.verify(db)
    assert not res.ok and res.broken_seq == r.from_seq and "forged" in res.problem, res


def _run(d, *args, stdin=None, **env):
    """The CLI with some settings of its own (the keys): unset with None."""
    full = dict(os.environ, TRIAL_DATABASE_URL=d.url, TRIAL_INSTANCE_PATH=str(d.instance))
    for k, v in env.items():
        full.pop(k, None) if v is None else full.__setitem__(k, v)
    p = subprocess.run(TRIAL + list(args), env=full, input=stdin, capture_output=True, text=True, timeout=300,
                       check=False)
    return Run(p.returncode, p.stdout, p.stderr)


def test_cli_rotate_key_twice_and_verify_with_and_without_the_retired_keys(tmp_path):
    fresh = FreshDatabase("rotate")
    old = os.environ["TRIAL_AUDIT_KEY"]
    try:
        d = Db(fresh, tmp_path)
        ok(d.run("site", "create", "--code", "AT01", "--name", "Vienna"))
        top = d.scalar("SELECT seq FROM audit_head")
        before = d.snapshot()
        for bad, why in (("", "empty"), ("too-short", "at least 32"), (old, "key in force")):
            one_line_error(_run(d, "audit", "rotate-key", stdin=bad + "\n"), "not rotated", why)
        assert d.snapshot() == before and d.count("audit_key_epoch") == 0
        out = ok(_run(d, "audit", "rotate-key", stdin=NEW_KEY + "\n")).stdout
        assert f"records 1 to {top} stay under the retired key" in out and f"from record {top + 1}" in out
        assert "TRIAL_AUDIT_KEYS_RETIRED" in out and NEW_KEY not in out and old not in out
        # the old key alone: it neither verifies nor writes
        one_line_error(_run(d, "audit", "verify"), "retired key")
        one_line_error(_run(d, "site", "create", "--code", "NO01", "--name", "Bergen"), "TRIAL_AUDIT_KEY")
        assert d.count("site") == 1 and d.scalar("SELECT seq FROM audit_head") == top + 1
        new_env = {"TRIAL_AUDIT_KEY": NEW_KEY, "TRIAL_AUDIT_KEYS_RETIRED": old}
        ok(_run(d, "site", "create", "--code", "NO01", "--name", "Bergen", **new_env))
        assert "intact" in ok(_run(d, "audit", "verify", **new_env)).stdout
        line = one_line_error(_run(d, "audit", "verify", TRIAL_AUDIT_KEY=NEW_KEY), f"records 1 to {top} ",
                              "not verified", "TRIAL_AUDIT_KEYS_RETIRED")
        assert "broken" not in line
        # a second rotation: both retired keys verify their parts; each withheld is named
        second = d.scalar("SELECT seq FROM audit_head") + 1
        one_line_error(_run(d, "audit", "rotate-key", stdin=old + "\n", **new_env), "retired before")
        ok(_run(d, "audit", "rotate-key", stdin=NEWER_KEY + "\n", **new_env))
        assert d.count("audit_key_epoch") == 3
        newest = {"TRIAL_AUDIT_KEY": NEWER_KEY}
        assert "intact" in ok(_run(d, "audit", "verify", TRIAL_AUDIT_KEYS_RETIRED=f"{old},{NEW_KEY}", **newest)).stdout
        one_line_error(_run(d, "audit", "verify", TRIAL_AUDIT_KEYS_RETIRED=NEW_KEY, **newest), f"records 1 to {top} ")
        one_line_error(_run(d, "audit", "verify", TRIAL_AUDIT_KEYS_RETIRED=old, **newest),
                       f"records {top + 1} to {second - 1} ")
        assert d.scalar("SELECT count(*) FROM audit_record WHERE action = 'rotate_key'") == 2
    finally:
        fresh.drop()
