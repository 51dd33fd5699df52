"""A hard lock answers as soon as it is signed; its bundles are built afterwards by a worker, with
their state in the database (building, ready, failed) and their progress. A worker process
(`trial worker`) builds both variants in parallel and gives the same bytes as a serial build; a
build abandoned by a dead worker is reported failed and taken over; `trial lock rebuild` makes
the same bytes again."""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pytest
from sqlalchemy import select, update

from tests.helpers import CLI, PASSWORD
from trial.db import make_engine, make_session_factory, utcnow
from trial.esign.models import Signature
from trial.exports.bundle import build_bundle
from trial.lock import service as locks
from trial.lock.models import DataLock, LockBuild, LockBundle
from trial.migrate import upgrade

MEANING = "Final lock of the trial database."


def ok(r, status=200):
    assert r.status_code == status, r.get_data(as_text=True)
    return r


def test_a_hard_lock_reports_its_bundles_state_and_progress(world, db, app):
    world.open(b"\x01" * 32)
    p = world.ready("AT01")
    world.randomize(p, p.study_id)
    soft = ok(world.api("POST", "/locks", "manager", json={"kind": "soft", "meaning": MEANING, "password": PASSWORD}), 201).get_json()
    assert soft["status"] is None
    assert ok(world.api("GET", f"/locks/{soft['id']}", "manager")).get_json()["status"] is None
    r = ok(world.api("POST", "/locks", "manager", json={"kind": "hard", "meaning": MEANING, "password": PASSWORD}), 201).get_json()
    lock_id = r["id"]
    assert r["status"] == "ready"  # the test app builds inline (TRIAL_LOCK_BUILDER=inline)
    info = ok(world.api("GET", f"/locks/{lock_id}", "statistician")).get_json()
    assert (info["status"], info["progress"]) == ("ready", 1.0) and info["manifest_sha256"]
    assert world.api("GET", f"/locks/{lock_id}", "coordinator").status_code == 403
    assert world.api("GET", "/locks/999", "manager").status_code == 404
    # while a variant is being built: its bundle is not there yet, the lock cannot be lifted
    db.execute(update(LockBuild).where(LockBuild.lock_id == lock_id, LockBuild.variant == "blinded")
               .values(status="building", progress=0.4, worker="w:1", heartbeat=utcnow()))
    db.execute(LockBundle.__table__.delete().where(LockBundle.lock_id == lock_id, LockBundle.variant == "blinded"))
    db.commit()
    info = ok(world.api("GET", f"/locks/{lock_id}", "manager")).get_json()
    assert (info["status"], info["progress"]) == ("building", 0.7)
    r = world.api("GET", f"/locks/{lock_id}/bundle.zip", "statistician")
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "bundle_not_ready"
    assert "being built (70% done)" in r.get_json()["error"]["message"]
    assert world.api("GET", f"/locks/{lock_id}/bundle.zip", "manager").status_code == 200, "the unblinded one is ready"
    r = world.api("DELETE", f"/locks/{lock_id}", "manager", json={"reason": "too early", "password": PASSWORD})
    assert r.status_code == 409 and "still being built" in r.get_json()["error"]["message"]
    assert db.get(DataLock, lock_id).lifted_at is None
    # a worker that stopped reporting two minutes ago is taken for dead: the build failed
    db.execute(update(LockBuild).where(LockBuild.lock_id == lock_id, LockBuild.variant == "blinded")
               .values(heartbeat=utcnow() - dt.timedelta(minutes=3)))
    db.commit()
    assert ok(world.api("GET", f"/locks/{lock_id}", "manager")).get_json()["status"] == "failed"
    r = world.api("GET", f"/locks/{lock_id}/bundle.zip", "statistician")
    assert r.status_code == 409 and f"trial lock rebuild {lock_id}" in r.get_json()["error"]["message"]
    c = app.test_client()
    assert c.post("/login", data={"email": "manager@example.org", "password": PASSWORD}).status_code == 302
    page = c.get("/locks").get_data(as_text=True)
    assert f"trial lock rebuild {lock_id}" in page
    # another worker takes it over
    assert locks.claim_build(db, "w:2", lock_id) is not None
    assert db.execute(select(LockBuild.worker).where(LockBuild.lock_id == lock_id, LockBuild.variant == "blinded")).scalar() == "w:2"
    assert locks.claim_build(db, "w:3", lock_id) is None, "a build is claimed by one worker only"


# --- a real worker process against a committed database ----------------------------------------------------

@pytest.fixture()
def committed(tmp_path, monkeypatch):
    """A file database with a trial of four randomized children and a signed hard lock, all
    committed (other processes see it), the bundles not built yet."""
    from tests.helpers import World
    from trial.auth import service as users
    monkeypatch.setenv("TRIAL_AUDIT_KEY", "k" * 40)
    monkeypatch.setenv("TRIAL_INSTANCE_PATH", str(tmp_path / "instance"))
    url = f"sqlite:///{tmp_path / 'trial.db'}"
    engine = make_engine(url)
    upgrade(engine)
    factory = make_session_factory(engine)
    db = factory()
    world = World(db, None)
    world.setup()
    db.commit()
    world.open(b"\x02" * 32)
    for site in ("AT01", "AT01", "NO01", "NO01"):
        p = world.ready(site)
        world.randomize(p, p.study_id)
    db.commit()
    manager = users.get_user_by_email(db, "manager@example.org")
    lock = locks.create_lock(db, manager, "hard", MEANING, PASSWORD)
    db.commit()
    yield {"url": url, "engine": engine, "factory": factory, "db": db, "lock_id": lock.id,
           "env": {**os.environ, "TRIAL_DATABASE_URL": url}}
    db.close()
    engine.dispose()


def trial_cli(env, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "trial.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def serial_bytes(db, lock_id) -> dict[str, str]:
    lock = db.get(DataLock, lock_id)
    sig = db.get(Signature, lock.signature_id)
    out = {v: build_bundle(db, lock, sig, blinded=v == "blinded")[1] for v in ("unblinded", "blinded")}
    db.rollback()
    return out


def test_the_worker_builds_both_variants_in_parallel_with_the_bytes_of_a_serial_build(committed):
    db, lock_id = committed["db"], committed["lock_id"]
    assert locks.build_status(db, lock_id)["status"] == "building"
    db.rollback()  # (on SQLite every transaction takes the write lock: end it before the worker runs)
    done = trial_cli(committed["env"], "worker", "--until-idle", "--processes", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(" ready") == 2, done.stdout
    workers = {line.split(":")[1] for line in done.stdout.splitlines()}
    assert len(workers) == 2, ("two processes, a variant each", done.stdout)
    db.expire_all()
    assert locks.build_status(db, lock_id) == {"status": "ready", "progress": 1.0, "error": None}
    stored = {b.variant: b.sha256 for b in db.execute(select(LockBundle).where(LockBundle.lock_id == lock_id)).scalars()}
    assert stored == serial_bytes(db, lock_id), "the same bytes as a serial build"
    again = trial_cli(committed["env"], "worker", "--until-idle")
    assert again.returncode == 0 and "build" not in again.stdout, "nothing is built twice"
    status = trial_cli(committed["env"], "lock", "status", str(lock_id))
    assert status.stdout.strip() == f"lock {lock_id}: ready, 100% done"


def test_a_dead_workers_build_is_taken_over_and_rebuild_gives_the_same_bytes(committed):
    db, lock_id = committed["db"], committed["lock_id"]
    # a worker claimed the blinded variant and died (no heartbeat for ten minutes): failed, then taken over
    db.execute(update(LockBuild).where(LockBuild.lock_id == lock_id, LockBuild.variant == "blinded")
               .values(worker="gone:1", heartbeat=utcnow() - dt.timedelta(minutes=10), progress=0.3))
    db.commit()
    assert trial_cli(committed["env"], "lock", "status", str(lock_id)).stdout.startswith(f"lock {lock_id}: failed")
    db.rollback()
    done = trial_cli(committed["env"], "worker", "--until-idle", "--processes", "1")
    assert done.returncode == 0 and done.stdout.count(" ready") == 2, done.stdout
    db.expire_all()
    first = {b.variant: b.sha256 for b in db.execute(select(LockBundle).where(LockBundle.lock_id == lock_id)).scalars()}
    # a crash after the unblinded bundle was lost: its build is failed, `trial lock rebuild` makes it again
    db.execute(LockBundle.__table__.delete().where(LockBundle.lock_id == lock_id, LockBundle.variant == "unblinded"))
    db.execute(update(LockBuild).where(LockBuild.lock_id == lock_id, LockBuild.variant == "unblinded")
               .values(status="failed", error="RuntimeError: killed"))
    db.commit()
    r = trial_cli(committed["env"], "lock", "rebuild", str(lock_id))
    assert r.returncode == 0, r.stderr
    assert f"lock {lock_id} unblinded: ready" in r.stdout and f"lock {lock_id} blinded: same bytes" in r.stdout
    db.expire_all()
    assert {b.variant: b.sha256 for b in db.execute(select(LockBundle).where(LockBundle.lock_id == lock_id)).scalars()} == first
    assert locks.build_status(db, lock_id)["status"] == "ready"
    # once lifted, the data may change: no rebuild
    manager = db.execute(select(Signature.user_id).where(Signature.id == db.get(DataLock, lock_id).signature_id)).scalar()
    from trial.auth.models import User
    locks.lift_lock(db, db.get(User, manager), lock_id, "reopened for corrections", PASSWORD)
    db.commit()
    r = trial_cli(committed["env"], "lock", "rebuild", str(lock_id))
    assert r.returncode == 1 and "not in force" in r.stderr
