"""Rotating the seal key: `trial randomization rotate-seal-key` re-seals the randomization seed under a
new key (the key in force opens it). Afterwards the new key allocates and verifies, the old one does
neither; a bad new key is refused and nothing changes; the rotation is audited."""
from __future__ import annotations

import hashlib
import os
import subprocess

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from tests.conftest import FreshDatabase
from tests.helpers import CLI, World
from tests.test_cli import TRIAL, one_line_error
from tests.test_lock import SEED, child, lock, unblind
from trial.audit import service as audit
from trial.audit.models import AuditRecord
from trial.errors import Conflict, Forbidden, ValidationError
from trial.randomize import sealkey
from trial.randomize import service as randomization
from trial.randomize.models import SealedSeed

NEW = Fernet.generate_key().decode()


@pytest.fixture()
def opened(world, db):
    world.open(SEED)
    for _ in range(2):
        world.randomize(world.ready())
    return world


def _sealed(db) -> bytes:
    db.expire_all()
    return bytes(db.execute(select(SealedSeed.ciphertext)).scalar_one())


def _rotations(db) -> list[AuditRecord]:
    return db.execute(select(AuditRecord).where(AuditRecord.action == "rotate_seal_key")).scalars().all()


@pytest.mark.parametrize("bad, why", [
    ("", "empty"), ("c2hvcnQ=", "Fernet key"), ("x" * 44, "Fernet key"), (NEW[:-4], "Fernet key"),
    (None, "the key in force")], ids=["empty", "short", "not-base64-key", "cut-key", "key-in-force"])
def test_a_bad_new_seal_key_is_refused_and_nothing_changes(opened, db, bad, why):
    before = _sealed(db)
    with pytest.raises(ValidationError, match=why) as e:
        sealkey.rotate_seal_key(db, CLI, os.environ["TRIAL_SEAL_KEY"] if bad is None else bad)
    assert "key" in e.value.fields
    db.rollback()
    assert _sealed(db) == before and not _rotations(db)


def test_only_the_command_line_rotates_the_seal_key(opened, db):
    with pytest.raises(Forbidden):
        sealkey.rotate_seal_key(db, opened.users["manager"], NEW)


def test_the_seed_re_sealed_opens_under_the_new_key_only(opened, db, monkeypatch):
    w = opened
    old_ciphertext = _sealed(db)
    assert sealkey.rotate_seal_key(db, CLI, NEW) == 1
    db.commit()
    fresh = _sealed(db)
    assert fresh != old_ciphertext and Fernet(NEW.encode()).decrypt(fresh) == SEED
    (rec,) = _rotations(db)
    assert (rec.entity, rec.field, rec.old, rec.new) == (
        "sealed_seed", "ciphertext_sha256", hashlib.sha256(old_ciphertext).hexdigest(), hashlib.sha256(fresh).hexdigest())
    assert not rec.reveals_allocation and audit.verify(db).ok
    # an app server still holding the old key cannot allocate (nothing is written)
    p = w.ready()
    r = w.api("POST", f"/participants/{p.study_id}/randomize", "coordinator")
    assert r.status_code == 409 and "TRIAL_SEAL_KEY" in r.get_json()["error"]["message"], r.get_data(as_text=True)
    with pytest.raises(Conflict):
        randomization.unseal_for_verification(db, CLI)
    db.rollback()
    res = randomization.verify(db, CLI, seed=SEED)
    assert not res.ok and any("cannot be unsealed with TRIAL_SEAL_KEY" in x for x in res.problems)
    # given the new key, the same server allocates the next slot and the lists verify
    monkeypatch.setenv("TRIAL_SEAL_KEY", NEW)
    r = w.api("POST", f"/participants/{p.study_id}/randomize", "coordinator")
    assert r.status_code == 201, r.get_data(as_text=True)
    assert randomization.unseal_for_verification(db, CLI) == SEED
    res = randomization.verify(db, CLI, seed=SEED)
    assert res.ok and res.checked == 3, res.problems


def test_rotation_before_randomization_opens_is_audited_and_the_new_key_seals(world, db, monkeypatch):
    assert sealkey.rotate_seal_key(db, CLI, NEW) == 0
    db.commit()
    (rec,) = _rotations(db)
    assert rec.entity_id == "-" and "not opened" in rec.reason
    monkeypatch.setenv("TRIAL_SEAL_KEY", NEW)
    world.open(SEED)
    assert Fernet(NEW.encode()).decrypt(_sealed(db)) == SEED


@pytest.fixture()
def live():
    """A committed database with its own app: the CLI runs against it in a subprocess."""
    from trial import create_app
    fresh = FreshDatabase("sealkey")
    app = create_app({"DATABASE_URL": fresh.url, "ENGINE": fresh.engine, "TESTING": True, "SECRET_KEY": "t"})
    session = app.extensions["trial.sessions"]()
    try:
        yield fresh, World(session, app).setup()
    finally:
        session.close()
        fresh.drop()


def _cli(url: str, *args: str, stdin: str | None = None, key: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, TRIAL_DATABASE_URL=url)
    if key:
        env["TRIAL_SEAL_KEY"] = key
    return subprocess.run(TRIAL + list(args), env=env, input=stdin, capture_output=True, text=True, timeout=300,
                          check=False)


def test_cli_rotate_seal_key_then_verify_passes_with_the_new_key_and_fails_with_the_old(live):
    fresh, world = live
    world.open(SEED)
    for site in ("AT01", "NO01", "AT01"):
        world.randomize(child(world, site))
    db = world.db
    assert lock(world, "hard").status_code == 201
    assert unblind(world).status_code == 201
    db.commit()
    db.close()  # hold no transaction while the CLI uses the database
    r = _cli(fresh.url, "randomization", "verify")
    assert r.returncode == 0 and "all 3 allocations" in r.stdout, (r.stdout, r.stderr)
    before = _cli(fresh.url, "audit", "verify").stdout
    for bad, why in (("\n", "empty"), ("too-short\n", "Fernet key"), (os.environ["TRIAL_SEAL_KEY"] + "\n", "in force")):
        one_line_error(_cli(fresh.url, "randomization", "rotate-seal-key", stdin=bad), "not rotated", why)
    assert _cli(fresh.url, "audit", "verify").stdout == before  # nothing written
    r = _cli(fresh.url, "randomization", "rotate-seal-key", stdin=NEW + "\n")
    assert r.returncode == 0 and "1 sealed seed(s) re-sealed" in r.stdout and NEW not in r.stdout, (r.stdout, r.stderr)
    r = _cli(fresh.url, "randomization", "verify", key=NEW)
    assert r.returncode == 0 and "all 3 allocations" in r.stdout, (r.stdout, r.stderr)
    r = _cli(fresh.url, "randomization", "verify")
    assert r.returncode != 0 and "cannot be unsealed with TRIAL_SEAL_KEY" in r.stderr, (r.stdout, r.stderr)
    assert r.stderr.strip().splitlines()[-1].startswith("error: verification failed")
    assert "intact" in _cli(fresh.url, "audit", "verify").stdout
