"""A hard lock answers as soon as it is signed; its bundles are built afterwards by a worker, with
their state in the database (building, ready, failed) and their progress. A worker process
(`trial worker`) builds both variants from one read, sharing the work with helper processes, and
gives the same bytes as a serial build; a build abandoned by a dead worker is reported failed and
taken over; a helper that dies fails the build, which `trial lock rebuild` makes again with the
same bytes."""
from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
import time

import pytest
from sqlalchemy import select, update

from tests.conftest import is_pg
from tests.helpers import PASSWORD
from trial.db import make_session_factory, utcnow
from trial.esign.models import Signature
from trial.exports.bundle import build_bundle
from trial.lock import service as locks
from trial.lock.models import DataLock, LockBuild, LockBundle

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
    taken = locks.claim_lock(db, "w:2", lock_id)
    assert len(taken) == 1, "the variant waiting (the unblinded one is built)"
    assert db.execute(select(LockBuild.worker).where(LockBuild.lock_id == lock_id, LockBuild.variant == "blinded")).scalar() == "w:2"
    assert locks.claim_lock(db, "w:3", lock_id) == [], "a build is claimed by one worker only"


# --- a real worker process against a committed database ----------------------------------------------------

@pytest.fixture()
def trial_db(monkeypatch, tmp_path):
    """A fresh database (PostgreSQL when the suite runs on it, else an SQLite file) with a trial of
    four randomized children, all committed (other processes see it); no lock yet."""
    from tests.conftest import FreshDatabase
    from tests.helpers import World
    monkeypatch.setenv("TRIAL_AUDIT_KEY", "k" * 40)
    monkeypatch.setenv("TRIAL_INSTANCE_PATH", str(tmp_path / "instance"))
    fresh = FreshDatabase("lockbuild")
    factory = make_session_factory(fresh.engine)
    db = factory()
    world = World(db, None)
    world.setup()
    db.commit()
    world.open(b"\x02" * 32)
    for site in ("AT01", "AT01", "NO01", "NO01"):
        p = world.ready(site)
        world.randomize(p, p.study_id)
    db.commit()
    yield {"url": fresh.url, "engine": fresh.engine, "factory": factory, "db": db,
           "env": {**os.environ, "TRIAL_DATABASE_URL": fresh.url}}
    db.close()
    fresh.drop()


def sign_hard_lock(db) -> int:
    from trial.auth import service as users
    lock = locks.create_lock(db, users.get_user_by_email(db, "manager@example.org"), "hard", MEANING, PASSWORD)
    db.commit()
    return lock.id


@pytest.fixture()
def committed(trial_db):
    """The trial with a signed hard lock, committed, its bundles not built yet."""
    return {**trial_db, "lock_id": sign_hard_lock(trial_db["db"])}


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
    waiting = trial_cli(committed["env"], "lock", "status", str(lock_id))  # a timer can tell building from ready
    assert waiting.stdout.startswith(f"lock {lock_id}: building") and waiting.returncode == 3
    done = trial_cli(committed["env"], "worker", "--until-idle", "--processes", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(" ready") == 2, done.stdout
    workers = {line.split(":")[1] for line in done.stdout.splitlines()}
    assert len(workers) == 1, ("one process builds both variants from one read", done.stdout)
    if is_pg():  # (on SQLite a build is serial: a connection is not carried across a fork)
        helper_cpu = [float(x) for x in re.findall(r"helper peak RSS \d+ MB, CPU ([\d.]+) s", done.stdout)]
        assert helper_cpu and helper_cpu[0] > 0, ("its helper processes did part of the work", done.stdout)
    db.expire_all()
    assert locks.build_status(db, lock_id) == {"status": "ready", "progress": 1.0, "error": None}
    stored = {b.variant: b.sha256 for b in db.execute(select(LockBundle).where(LockBundle.lock_id == lock_id)).scalars()}
    assert stored == serial_bytes(db, lock_id), "the same bytes as a serial build"
    again = trial_cli(committed["env"], "worker", "--until-idle")
    assert again.returncode == 0 and "build" not in again.stdout, "nothing is built twice"
    status = trial_cli(committed["env"], "lock", "status", str(lock_id))
    assert status.stdout.strip() == f"lock {lock_id}: ready, 100% done" and status.returncode == 0


def test_a_dead_workers_build_is_taken_over_and_rebuild_gives_the_same_bytes(committed):
    db, lock_id = committed["db"], committed["lock_id"]
    # a worker claimed the blinded variant and died (no heartbeat for ten minutes): failed, then taken over
    db.execute(update(LockBuild).where(LockBuild.lock_id == lock_id, LockBuild.variant == "blinded")
               .values(worker="gone:1", heartbeat=utcnow() - dt.timedelta(minutes=10), progress=0.3))
    db.commit()
    failed = trial_cli(committed["env"], "lock", "status", str(lock_id))
    assert failed.stdout.startswith(f"lock {lock_id}: failed") and failed.returncode == 1
    assert f"trial lock rebuild {lock_id}" in failed.stderr
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


@pytest.mark.skipif(not is_pg(), reason="helper processes build on PostgreSQL only (an SQLite connection is not forked)")
def test_the_helpers_give_the_serial_bytes_and_a_helper_that_dies_or_fails_fails_the_build(committed, monkeypatch, tmp_path):
    """The parallel build (helper processes, zip threads) gives the bytes of the serial one; a helper
    that ends without its results, or whose job raises, fails the build with the reason, leaves no
    temporary file and stores nothing."""
    from trial.exports import bundle
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the helpers' temporary folders go here
    db, lock_id = committed["db"], committed["lock_id"]
    lock = db.get(DataLock, lock_id)
    sig = db.get(Signature, lock.signature_id)
    parallel = {v: built[1] for v, built in bundle.build_bundles(db, lock, sig, parallel=True).items()}
    db.rollback()
    assert parallel == serial_bytes(db, lock_id)
    lock, sig = db.get(DataLock, lock_id), db.get(Signature, lock.signature_id)
    data_job = bundle._data_job
    monkeypatch.setattr(bundle, "_data_job", lambda send, plain, tables: os._exit(3))
    with pytest.raises(RuntimeError, match=r"helper process ended \(exit code 3\)"):
        bundle.build_bundles(db, lock, sig, parallel=True)
    db.rollback()
    monkeypatch.setattr(bundle, "_data_job", data_job)

    def broken(send, plain, variants):
        raise ValueError("no reports today")
    monkeypatch.setattr(bundle, "_other_job", broken)
    with pytest.raises(RuntimeError, match="failed: ValueError: no reports today"):
        bundle.build_bundles(db, lock, sig, parallel=True)
    db.rollback()
    assert not list(tmp_path.glob("trial-bundle-*")), "no temporary file is left behind"
    # through the worker's build: both variants failed with the reason, nothing stored
    taken = locks.claim_lock(db, "w:t", lock_id)
    assert len(taken) == 2
    assert locks.run_build(committed["factory"], taken, "w:t") == {"unblinded": "failed", "blinded": "failed"}
    db.expire_all()
    assert "no reports today" in locks.build_error(db, taken[0])
    assert locks.build_status(db, lock_id)["status"] == "failed"
    assert db.execute(select(LockBundle.id).where(LockBundle.lock_id == lock_id)).first() is None


def test_a_waiting_worker_is_woken_by_a_new_hard_lock(trial_db):
    """`trial worker` kept running (TRIAL_LOCK_BUILDER=external): on PostgreSQL the lock's commit
    wakes it at once (NOTIFY), far sooner than its next look; on SQLite it looks every --poll."""
    poll = "120" if is_pg() else "0.5"
    worker = subprocess.Popen([sys.executable, "-m", "trial.cli", "worker", "--poll", poll], env=trial_db["env"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "waiting for hard locks" in worker.stdout.readline()
        t0 = time.monotonic()
        lock_id = sign_hard_lock(trial_db["db"])
        lines = [worker.stdout.readline(), worker.stdout.readline()]
        took = time.monotonic() - t0
        assert sorted(line.split()[1:3] for line in lines) == [["blinded", "ready"], ["unblinded", "ready"]], lines
        assert took < 60, f"woken at once, not at its next look ({took:.1f} s)"
        db = trial_db["db"]
        db.expire_all()
        assert locks.build_status(db, lock_id)["status"] == "ready"
    finally:
        worker.terminate()
        worker.wait(30)


def test_a_build_taken_over_meanwhile_is_not_stored_by_the_worker_that_lost_it(committed):
    """A worker taken for dead (silent too long) whose build another worker took over stores
    nothing when it finishes after all, and leaves the build to the other worker."""
    db, lock_id = committed["db"], committed["lock_id"]
    taken = locks.claim_lock(db, "w:slow", lock_id)
    assert len(taken) == 2
    db.execute(update(LockBuild).where(LockBuild.id.in_(taken)).values(worker="w:other", heartbeat=utcnow()))
    db.commit()
    assert locks.run_build(committed["factory"], taken, "w:slow") == {v: "taken over by another worker"
                                                                      for v in ("unblinded", "blinded")}
    db.expire_all()
    assert db.execute(select(LockBundle.id).where(LockBundle.lock_id == lock_id)).first() is None
    rows = db.execute(select(LockBuild.status, LockBuild.worker).where(LockBuild.id.in_(taken))).all()
    assert rows == [("building", "w:other")] * 2, "the other worker's build, untouched"
    db.rollback()  # (on SQLite every transaction takes the write lock)
    assert locks.run_build(committed["factory"], taken, "w:other") == {"unblinded": "ready", "blinded": "ready"}


def test_a_killed_builds_temporary_folder_is_swept_and_a_live_ones_kept(monkeypatch, tmp_path):
    from trial.exports import bundle
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    dead = tmp_path / f"trial-bundle-{gone}-abc"
    live = tmp_path / f"trial-bundle-{os.getpid()}-def"
    other = tmp_path / "something-else"
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "adsl.csv").write_text("unblinded")
    assert bundle.sweep_folders() == [str(dead)]
    assert not dead.exists() and live.exists() and other.exists()
