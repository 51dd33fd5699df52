"""Issue 27, builds that cannot stick: a hard lock's bundles end ready or failed, never "building"
for ever. A worker killed before it picked the build up: the build is queued again and a worker
started (once), then failed naming `trial lock rebuild`; a worker killed during the build: failed
for every reader after two minutes, taken over by the next worker, its temporary folder swept. The
lock's commit and the build's start are not separated by a 500 (an unwritable instance folder: 201,
the build failed, the log says why). A build's temporary files live in a private folder in the
instance folder (never /tmp), removed on failure and success; a full disk fails the build with "no
space left". Real worker processes, real signals, real (tmpfs) disks."""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from tests.conftest import FreshDatabase, is_pg
from tests.helpers import PASSWORD, World
from trial import create_app
from trial.db import make_session_factory, utcnow
from trial.exports import bundle
from trial.lock import service as locks
from trial.lock.models import DataLock, LockBuild, LockBundle
from trial.trialstate.service import active_lock_id

MEANING = "Final lock of the trial database."
WAIT = 180  # seconds a bounded wait gives a worker process (it loads NumPy, SciPy, ReportLab first)


@pytest.fixture()
def trial(monkeypatch, tmp_path):
    """A committed trial of four randomized children in a fresh database (other processes see it),
    its own instance folder; the world (users and tokens) to sign a lock and call the API."""
    monkeypatch.setenv("TRIAL_AUDIT_KEY", "k" * 40)
    instance = tmp_path / "instance"
    instance.mkdir()
    monkeypatch.setenv("TRIAL_INSTANCE_PATH", str(instance))
    fresh = FreshDatabase("builds")
    factory = make_session_factory(fresh.engine)
    db = factory()
    world = World(db, None)
    world.setup()
    db.commit()
    world.open(b"\x03" * 32)
    for site in ("AT01", "AT01", "NO01", "NO01"):
        p = world.ready(site)
        world.randomize(p, p.study_id)
    db.commit()
    yield {"url": fresh.url, "engine": fresh.engine, "factory": factory, "db": db, "world": world,
           "instance": instance, "env": {**os.environ, "TRIAL_DATABASE_URL": fresh.url}}
    db.close()
    fresh.drop()


def sign_hard_lock(world) -> int:
    lock = locks.create_lock(world.db, world.users["manager"], "hard", MEANING, PASSWORD)
    world.db.commit()
    return lock.id


def trial_cli(env, *args, timeout=WAIT):
    return subprocess.run([sys.executable, "-m", "trial.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def builds(db, lock_id) -> list:
    """The lock's builds as they are now (plain rows: reading them asks the database nothing more)."""
    rows = db.execute(select(LockBuild.variant, LockBuild.status, LockBuild.worker, LockBuild.error, LockBuild.queued_at)
                      .where(LockBuild.lock_id == lock_id).order_by(LockBuild.variant)).all()
    db.rollback()  # (on SQLite every transaction holds the write lock: end it before other processes write)
    return rows


def status_of(db, lock_id) -> dict:
    db.expire_all()
    st = locks.build_status(db, lock_id)
    db.rollback()
    return st


def age(db, lock_id, **columns) -> None:
    """Time passing, as the database sees it: the builds' timestamps moved back."""
    db.execute(update(LockBuild).where(LockBuild.lock_id == lock_id).values(**columns))
    db.commit()


def wait_until(what, timeout=WAIT, every=0.05):
    """A bounded wait for ``what()`` to give something true; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(every)


def leftovers(instance: Path) -> list[str]:
    """Temporary files of builds: in the instance folder's tmp/, and in the system's temporary folder."""
    mine = list((instance / "tmp").glob("build-*")) if (instance / "tmp").exists() else []
    legacy = list(Path(tempfile.gettempdir()).glob(f"{bundle.FOLDER_PREFIX}*"))
    return [str(p) for p in mine + legacy if p.exists()]


def start_worker(env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trial.cli", "worker", "--until-idle"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def alive(pid: str) -> bool:
    """A process that runs (not gone, not a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)


# --- a worker killed before it picked the build up ---------------------------------------------------------

def test_a_worker_killed_before_pickup_is_started_again_and_the_lock_ends_ready(trial):
    db, lock_id = trial["db"], sign_hard_lock(trial["world"])
    worker = start_worker(trial["env"])
    kill(worker)  # (killed while it loads: long before it could claim anything)
    assert [(b.status, b.worker) for b in builds(db, lock_id)] == [("building", None)] * 2
    # within the minute nothing is done: a worker has that long to pick it up
    env = {**trial["env"], "TRIAL_LOCK_BUILDER": "worker"}
    waiting = trial_cli(env, "lock", "status", str(lock_id))
    assert waiting.returncode == 3 and "queued again" not in waiting.stdout, waiting.stdout
    # a minute later `trial lock status` queues it again and starts a worker, as the signing did
    age(db, lock_id, queued_at=utcnow() - dt.timedelta(minutes=2))
    again = trial_cli(env, "lock", "status", str(lock_id))
    assert f"lock {lock_id}: its bundles were not picked up by a worker within a minute: queued again and a " \
           "worker started" in again.stdout, (again.stdout, again.stderr)
    assert again.returncode in (0, 3), again.stderr
    assert all(b.error.startswith("not picked up within 60 s: queued again") for b in builds(db, lock_id)
               if b.worker is None), "(until the worker it started claims it)"
    # the worker it started builds the bundles (its output in the instance folder's worker.log)
    assert wait_until(lambda: status_of(db, lock_id)["status"] != "building"), "still building"
    assert status_of(db, lock_id) == {"status": "ready", "progress": 1.0, "error": None}, \
        (trial["instance"] / "worker.log").read_text()
    assert [b.error for b in builds(db, lock_id)] == [None, None]
    assert leftovers(trial["instance"]) == []
    assert trial_cli(env, "lock", "status", str(lock_id)).returncode == 0


def test_a_build_nobody_picks_up_is_queued_again_once_then_failed_naming_the_rebuild(trial, caplog):
    """With TRIAL_LOCK_BUILDER=external and no `trial worker` running: reading the lock (the API,
    the Locks page) queues the build again a minute after the lock (waking a worker on
    PostgreSQL); a minute later still unclaimed, it is failed, and `trial lock rebuild` builds it."""
    world, db = trial["world"], trial["db"]
    lock_id = sign_hard_lock(world)
    world.app = create_app({"ENGINE": trial["engine"], "TESTING": True, "WTF_CSRF_ENABLED": False,
                            "SECRET_KEY": "test-secret", "LOCK_BUILDER": "external"})
    info = world.api("GET", f"/locks/{lock_id}", "manager").get_json()
    assert (info["status"], info["progress"]) == ("building", 0.0)
    age(db, lock_id, queued_at=utcnow() - dt.timedelta(seconds=61))
    with caplog.at_level(logging.WARNING, logger="trial.lock"):
        info = world.api("GET", "/locks", "manager").get_json()
    assert [x["status"] for x in info if x["id"] == lock_id] == ["building"]
    assert [(b.status, b.worker) for b in builds(db, lock_id)] == [("building", None)] * 2
    requeued = [b.queued_at for b in builds(db, lock_id)]
    assert all(q > utcnow() - dt.timedelta(seconds=30) for q in requeued), "queued again now"
    assert f"the bundles of lock {lock_id} were not picked up by a worker within 60 s: queued again" in caplog.text
    # read again within the minute: nothing more happens (once)
    assert world.api("GET", f"/locks/{lock_id}", "manager").get_json()["status"] == "building"
    assert [b.queued_at for b in builds(db, lock_id)] == requeued
    # still nobody a minute later: failed, the reason naming the command that builds it
    age(db, lock_id, queued_at=utcnow() - dt.timedelta(seconds=61))
    client = world.app.test_client()
    assert client.post("/login", data={"email": "manager@example.org", "password": PASSWORD}).status_code == 302
    page = client.get("/locks").get_data(as_text=True)
    assert f"trial lock rebuild {lock_id}" in page
    assert world.api("GET", f"/locks/{lock_id}", "manager").get_json()["status"] == "failed"
    st = status_of(db, lock_id)
    assert st["status"] == "failed" and f"`trial lock rebuild {lock_id}` builds it" in st["error"]
    assert "no worker picked the build up" in st["error"]
    r = world.api("GET", f"/locks/{lock_id}/bundle.zip", "statistician")
    assert r.status_code == 409 and f"trial lock rebuild {lock_id}" in r.get_json()["error"]["message"]
    failed = trial_cli(trial["env"], "lock", "status", str(lock_id))
    assert failed.returncode == 1 and f"trial lock rebuild {lock_id}" in failed.stderr
    done = trial_cli(trial["env"], "lock", "rebuild", str(lock_id))
    assert done.returncode == 0, done.stderr
    assert status_of(db, lock_id) == {"status": "ready", "progress": 1.0, "error": None}
    assert leftovers(trial["instance"]) == []


# --- a worker killed during the build -----------------------------------------------------------------------

@contextlib.contextmanager
def builds_held(db, lock_id):
    """The lock's build rows held by this test's transaction: a worker that has claimed them waits
    at its first progress report, in the middle of its build (its helpers forked, its files being
    written), until released."""
    if is_pg():
        db.execute(select(LockBuild.id).where(LockBuild.lock_id == lock_id).with_for_update())
    else:
        db.execute(text("UPDATE trial_state SET id = id"))  # (a write: this transaction holds SQLite's write lock)
    try:
        yield
    finally:
        db.rollback()


def test_a_worker_killed_during_a_build_ends_failed_then_taken_over_and_leaves_no_file(trial):
    db, instance = trial["db"], trial["instance"]
    lock_id = sign_hard_lock(trial["world"])
    worker = start_worker(trial["env"])
    try:
        claimed = wait_until(lambda: all(b.worker for b in builds(db, lock_id)), every=0.02)
        assert claimed, "the worker claimed the builds"
        with builds_held(db, lock_id):
            # its helpers' folder: private (0700), in the instance folder (PostgreSQL builds with helpers)
            folder = wait_until(lambda: [p for p in (instance / "tmp").glob(f"build-{lock_id}-{worker.pid}")],
                                timeout=60) if is_pg() else []
            if is_pg():
                assert folder, "the build's private folder"
                assert stat.S_IMODE(folder[0].stat().st_mode) == 0o700
                assert stat.S_IMODE((instance / "tmp").stat().st_mode) == 0o700
            helpers = wait_until(lambda: subprocess.run(["pgrep", "-P", str(worker.pid)], capture_output=True,
                                                        text=True, check=False).stdout.split(), timeout=60) if is_pg() else []
            assert helpers or not is_pg(), "its helper processes"
            kill(worker)  # SIGKILL, in the middle of the build
    finally:
        if worker.poll() is None:
            kill(worker)
    assert [b.status for b in builds(db, lock_id)] == ["building"] * 2
    if is_pg():
        assert leftovers(instance) == [str(folder[0])], "what the killed build left (unblinded files)"
        assert wait_until(lambda: not any(alive(pid) for pid in helpers), timeout=10), \
            "its helpers died with it: none goes on writing there"
    # two minutes without a report: failed for every reader, naming the rebuild
    age(db, lock_id, heartbeat=utcnow() - locks.STALE - dt.timedelta(seconds=1))
    failed = trial_cli(trial["env"], "lock", "status", str(lock_id))
    assert failed.stdout.startswith(f"lock {lock_id}: failed") and failed.returncode == 1
    assert f"trial lock rebuild {lock_id}" in failed.stdout + failed.stderr
    # the next worker sweeps the killed build's folder and takes the build over
    done = trial_cli(trial["env"], "worker", "--until-idle")
    assert done.returncode == 0 and done.stdout.count(" ready") == 2, (done.stdout, done.stderr)
    if is_pg():
        assert f"removed the temporary folder of a build whose process is gone: {folder[0]}" in done.stdout
    assert status_of(db, lock_id) == {"status": "ready", "progress": 1.0, "error": None}
    assert leftovers(instance) == []


def test_the_daily_checks_sweep_a_killed_builds_folder_and_keep_a_live_ones(trial):
    instance = trial["instance"]
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    (instance / "tmp").mkdir(mode=0o700)
    dead, live = instance / "tmp" / f"build-7-{gone}", instance / "tmp" / f"build-8-{os.getpid()}"
    for folder in (dead, live):
        folder.mkdir(mode=0o700)
        (folder / "adsl.csv").write_text("unblinded")
    r = trial_cli(trial["env"], "checks", "run")
    assert r.returncode == 0, r.stderr
    assert f"removed the temporary folder of a build whose process is gone: {dead}" in r.stdout
    assert not dead.exists() and live.exists()


# --- the instance folder cannot be written ---------------------------------------------------------------------

@contextlib.contextmanager
def unwritable(folder: Path):
    """``folder`` made unwritable: chmod 0500, or (root ignores modes) a read-only tmpfs mounted on it."""
    if os.geteuid() != 0:
        folder.chmod(0o500)
        try:
            yield
        finally:
            folder.chmod(0o700)
        return
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        pytest.skip(f"running as root, and no read-only folder can be made here ({r.stderr.strip()})")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_an_unwritable_instance_folder_answers_the_committed_lock_with_its_build_failed(trial, caplog):
    """POST /locks commits the lock; the worker cannot be started (its log cannot be written): the
    answer is still 201 with the lock, its build "failed" with the reason (and in the log), never a
    500; once the folder is writable again `trial lock rebuild` builds it. A build that cannot make
    its private folder fails saying so, never falling back to /tmp."""
    world, db, instance = trial["world"], trial["db"], trial["instance"]
    world.app = create_app({"ENGINE": trial["engine"], "TESTING": True, "WTF_CSRF_ENABLED": False,
                            "SECRET_KEY": "test-secret", "LOCK_BUILDER": "worker"})
    with unwritable(instance):
        with caplog.at_level(logging.ERROR, logger="trial.lock"):
            r = world.api("POST", "/locks", "manager", json={"kind": "hard", "meaning": MEANING, "password": PASSWORD})
        assert r.status_code == 201, r.get_data(as_text=True)
        lock_id = r.get_json()["id"]
        assert r.get_json()["status"] == "failed"
        db.expire_all()
        assert active_lock_id(db) == lock_id and db.get(DataLock, lock_id).kind == "hard", "the lock committed"
        db.rollback()
        assert f"the bundle worker for lock {lock_id} could not be started" in caplog.text
        assert "worker.log" in caplog.text
        st = status_of(db, lock_id)
        assert st["status"] == "failed" and "could not be started" in st["error"]
        assert f"`trial lock rebuild {lock_id}` builds the bundles" in st["error"]
        # with helpers (PostgreSQL) a build needs its private folder: it fails saying so
        rebuilt = trial_cli(trial["env"], "lock", "rebuild", str(lock_id))
        if is_pg():
            assert rebuilt.returncode == 1, rebuilt.stdout
            st = status_of(db, lock_id)
            assert st["status"] == "failed" and "cannot create the build's private folder" in st["error"]
            assert "TRIAL_INSTANCE_PATH" in st["error"]
            assert "cannot create the build's private folder" in rebuilt.stderr  # (the log)
        else:  # (an SQLite build is serial: it writes no temporary file)
            assert rebuilt.returncode == 0, rebuilt.stderr
        assert leftovers(instance) == [] and not list(Path(tempfile.gettempdir()).glob("helper-*"))
    if is_pg():
        assert trial_cli(trial["env"], "lock", "rebuild", str(lock_id)).returncode == 0
    assert status_of(db, lock_id)["status"] == "ready"
    assert len(db.execute(select(LockBundle.id).where(LockBundle.lock_id == lock_id)).all()) == 2


@pytest.mark.skipif(not is_pg(), reason="a build writes temporary files only with its helper processes (PostgreSQL)")
def test_a_full_disk_fails_the_build_saying_no_space_left(trial):
    """The instance folder on a small disk (tmpfs) filled up: the build fails with "no space left"
    in its error and in the worker's log, and leaves nothing behind."""
    db, instance = trial["db"], trial["instance"]
    lock_id = sign_hard_lock(trial["world"])
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(instance)], capture_output=True,
                       text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"no small disk can be mounted here ({r.stderr.strip()})")
    try:
        (instance / "tmp").mkdir(mode=0o700)
        with open(instance / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
        done = trial_cli(trial["env"], "worker", "--until-idle")
        assert done.returncode == 0, done.stderr
        assert "failed: no space left on the disk while the bundle was written" in done.stdout, done.stdout
        assert f"the bundles of lock {lock_id} failed: no space left" in done.stderr
        st = status_of(db, lock_id)
        assert st["status"] == "failed" and st["error"].startswith("no space left on the disk")
        assert "No space left on device" in st["error"] and f"trial lock rebuild {lock_id}" in st["error"]
        assert list((instance / "tmp").iterdir()) == [], "the failed build removed its files"
    finally:
        subprocess.run(["umount", str(instance)], check=True)
    assert db.execute(select(LockBundle.id).where(LockBundle.lock_id == lock_id)).first() is None
