"""`trial backup create | verify | restore` (issue 27), on the suite's database kind (SQLite, or
PostgreSQL with TRIAL_TEST_DATABASE_URL): each test backs up a database of its own (a committed
small trial built with the services) and restores into an empty database it makes (PostgreSQL: a
database with a unique name, dropped afterwards; SQLite: a temporary file). The drill under load
randomizes and enters data in real threads while the backup is taken, and the restored system must
then allocate exactly as the original does."""
from __future__ import annotations

import json
import os
import queue
import stat
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.pool import NullPool

from tests.conftest import PG_URL, FreshDatabase, is_pg
from tests.helpers import CLI, PASSWORD, World
from tests.test_cli import Db, ok, one_line_error, trial
from trial.audit import anchors, replay
from trial.audit import service as audit
from trial.audit.anchors import head_line
from trial.audit.models import AuditRecord
from trial.backup import service as backups
from trial.backup.service import BackupError
from trial.db import make_engine, make_session_factory
from trial.errors import Conflict
from trial.migrate import alembic_config, head_revision, revision_of
from trial.models import metadata
from trial.participants.models import Allocation, Participant
from trial.randomize import service as randomization
from trial.randomize.journal import reconcile
from trial.randomize.models import Stratum
from trial.trialstate.models import TrialState
from trial.visitplan.models import PlannedVisit

# --- databases of the tests' own ------------------------------------------------------------------

class Empty:
    """An empty database to restore into: a new PostgreSQL database (unique name) or an SQLite path."""

    def __init__(self, tmp_path: Path):
        self.admin = None
        if is_pg():
            self.name = f"trial_test_restore_{os.getpid()}_{uuid.uuid4().hex[:6]}"
            self.admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
            with self.admin.connect() as c:
                c.execute(text(f'CREATE DATABASE "{self.name}"'))
            self.url = f"{PG_URL.rsplit('/', 1)[0]}/{self.name}"
        else:
            self.url = f"sqlite:///{tmp_path / f'restored-{uuid.uuid4().hex[:6]}' / 'trial.db'}"
        self._engine = None

    @property
    def engine(self):
        if self._engine is None:
            self._engine = make_engine(self.url)
        return self._engine

    def tables(self) -> list[str]:
        if not is_pg() and not Path(self.url.removeprefix("sqlite:///")).exists():
            return []
        eng = create_engine(self.url, poolclass=NullPool)
        try:
            with eng.connect() as c:
                sql = ("SELECT tablename FROM pg_tables WHERE schemaname = 'public'" if is_pg()
                       else "SELECT name FROM sqlite_master WHERE type = 'table'")
                return sorted(c.execute(text(sql)).scalars())
        finally:
            eng.dispose()

    def drop(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
        if self.admin is not None:
            with self.admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
            self.admin.dispose()


@pytest.fixture()
def target(tmp_path):
    t = Empty(tmp_path)
    yield t
    t.drop()


def _small_trial(fresh: FreshDatabase, randomized: int = 3) -> None:
    """Protocol, two sites, a user of each role, randomization open and children randomized at both
    sites, all committed through the services."""
    s = make_session_factory(fresh.engine)()
    w = World(s, None).setup()
    w.open()
    for i in range(randomized):
        w.randomize(w.ready("AT01" if i % 2 == 0 else "NO01"))
    s.close()


@pytest.fixture(scope="module")
def source():
    """The module's source database: a small committed trial (never changed by the tests)."""
    fresh = FreshDatabase("backup")
    _small_trial(fresh)
    yield fresh
    fresh.drop()


@pytest.fixture()
def own_source():
    fresh = FreshDatabase("backup_own")
    _small_trial(fresh, randomized=2)
    yield fresh
    fresh.drop()


def _counts(engine) -> dict[str, int]:
    with engine.connect() as c:
        out = backups.row_counts(c)
        c.rollback()
    return out


def _head(engine) -> dict:
    with engine.connect() as c:
        line = head_line(c)
        c.rollback()
    return {k: line[k] for k in backups.HEAD_FIELDS}


def _allocations(engine) -> dict[str, tuple]:
    with engine.connect() as c:
        rows = c.execute(select(Allocation.study_id, Stratum.key, Allocation.seq, Allocation.arm)
                         .join(Stratum, Stratum.id == Allocation.stratum_id)).all()
        c.rollback()
    return {r.study_id: (r.key, r.seq, r.arm) for r in rows}


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _scratch_databases() -> set[str]:
    eng = create_engine(PG_URL, poolclass=NullPool)
    try:
        with eng.connect() as c:
            return set(c.execute(text("SELECT datname FROM pg_database WHERE datname LIKE 'trial_verify_%'")).scalars())
    finally:
        eng.dispose()


# --- create, verify, restore ---------------------------------------------------------------------

def test_create_verify_restore_round_trip(source, target, tmp_path):
    out = tmp_path / "backups" / "b1"
    made = backups.create(out, url=source.url)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(["manifest.json", "database.dump" if is_pg() else "database.sqlite"])
    for p in out.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    m = json.loads((out / "manifest.json").read_text())
    assert m == made.manifest and m["format"] == "trial-backup/1" and m["app_version"]
    assert m["created_at"].endswith("Z") and m["schema_revision"] == head_revision()
    assert m["database"] == {"dialect": "postgresql" if is_pg() else "sqlite",
                             "name": source.name if is_pg() else source.name + ".db"}
    assert m["audit_head"] == _head(source.engine)
    counts = _counts(source.engine)
    assert m["row_counts"] == counts and counts["allocation"] == 3
    assert counts["audit_record"] == m["audit_head"]["records"]
    assert {t.name for t in metadata.sorted_tables} == set(counts)
    assert m["sha256"] == {m["dump"]["file"]: backups.sha256_of(out / m["dump"]["file"])}

    said = []
    checks = backups.verify(out, url=source.url, say=said.append)
    assert said == checks and all(c.ok for c in checks), [c.line() for c in checks]
    names = [c.name for c in checks]
    for name in ("manifest MAC", "digests", "restore into a scratch database", "schema revision", "row counts",
                 "audit head", "audit chain", "randomization lists", "data against the trail"):
        assert name in names
    assert names[:2] == ["manifest MAC", "digests"]
    by_name = {c.name: c for c in checks}
    assert "all 3 allocations follow the lists" in by_name["randomization lists"].detail
    assert by_name["manifest MAC"].detail == "signed under TRIAL_AUDIT_KEY"

    res = backups.restore(out, target.url)
    assert res.ok and res.held and res.held_audited and res.upgraded_from is None, [c.line() for c in res.checks]
    assert res.interrupted is None and res.marker is None  # (no anchor file set: no marker)
    names = [c.name for c in res.checks]
    assert names.index("randomization held") < names.index("schema revision")  # held before any check
    # the same rows: every table's count, and the allocations themselves
    restored = _counts(target.engine)
    assert restored["audit_record"] == counts["audit_record"] + 2  # the hold's two field records
    assert {t: n for t, n in restored.items() if t != "audit_record"} == {
        t: n for t, n in counts.items() if t != "audit_record"}
    assert _allocations(target.engine) == _allocations(source.engine)
    with make_session_factory(target.engine)() as s:
        assert audit.verify(s).ok
        st = s.get(TrialState, 1)
        assert m["created_at"] in st.randomization_hold and st.randomization_hold_at is not None
        last = s.execute(select(AuditRecord).order_by(AuditRecord.seq.desc()).limit(2)).scalars().all()
        assert {r.action for r in last} == {"restore"} and {r.entity for r in last} == {"trial_state"}
        assert {r.field for r in last} == {"randomization_hold", "randomization_hold_at"}
    # the source was only read
    assert _counts(source.engine) == counts


def test_the_cli_creates_verifies_and_restores_in_subprocesses(source, target, tmp_path):
    d = Db(source, tmp_path / "instance")
    out = tmp_path / "b"
    r = ok(d.run("backup", "create", "--to", str(out)))
    assert "backup written to" in r.stdout and "trial backup verify" in r.stdout
    r = ok(d.run("backup", "verify", str(out)))
    lines = r.stdout.splitlines()
    assert lines[0] == "manifest MAC: ok (signed under TRIAL_AUDIT_KEY)" and lines[1].startswith("digests: ok")
    assert lines[-1].endswith("verified: every check agrees")
    assert "data against the trail: ok (every audited row matches its audit trail)" in lines
    assert any(x.startswith("randomization lists: ok (all 3 allocations") for x in lines), r.stdout
    assert not any("FAILED" in x for x in lines)
    if is_pg():
        assert "dropped afterwards" in r.stdout
    r = ok(d.run("backup", "restore", str(out), "--to", target.url))
    assert "randomization held: ok (HELD: restored from the backup of" in r.stdout
    assert "audit chain after the hold: ok" in r.stdout
    assert r.stdout.splitlines()[-1].startswith("restored and verified; the target is HELD")
    assert "trial randomization reconcile" in r.stdout.splitlines()[-1]
    # the second restore into the now-full target, and a backup into a folder that is not empty
    before = _counts(target.engine)
    one_line_error(d.run("backup", "restore", str(out), "--to", target.url), "is not empty", "nothing was changed",
                   "nothing held")
    assert _counts(target.engine) == before
    one_line_error(d.run("backup", "create", "--to", str(out)), str(out), "is not empty")
    # the restored database works with the CLI: its chain verifies after the hold's record
    assert "audit chain intact" in ok(trial(target.url, tmp_path / "instance", "audit", "verify")).stdout


def test_a_tampered_dump_is_refused_by_verify_and_restore(source, target, tmp_path):
    out = tmp_path / "b"
    made = backups.create(out, url=source.url)
    dump = out / made.manifest["dump"]["file"]
    _flip_a_byte(dump)
    with pytest.raises(BackupError) as e:
        backups.verify(out, url=source.url)
    assert f"{dump.name} does not match its SHA-256" in str(e.value)
    with pytest.raises(BackupError) as e:
        backups.restore(out, target.url)
    assert f"{dump.name} does not match its SHA-256" in str(e.value)
    assert target.tables() == []
    d = Db(source, tmp_path / "instance")
    one_line_error(d.run("backup", "verify", str(out)), dump.name, "does not match its SHA-256")
    one_line_error(d.run("backup", "restore", str(out), "--to", target.url), dump.name, "refused")
    assert target.tables() == []
    # a file added to the backup, and the dump missing
    _flip_a_byte(dump)  # (back as it was)
    (out / "extra.sql").write_text("DROP TABLE participant;")
    with pytest.raises(BackupError, match="extra.sql is not in the manifest"):
        backups.verify(out, url=source.url)
    (out / "extra.sql").unlink()
    dump.unlink()
    with pytest.raises(BackupError, match=f"{dump.name} is missing"):
        backups.restore(out, target.url)
    assert target.tables() == []


def test_a_restore_into_a_database_that_is_not_empty_is_refused_and_changes_nothing(source, tmp_path):
    out = tmp_path / "b"
    backups.create(out, url=source.url)
    busy = FreshDatabase("restore_busy")  # migrated: its tables exist, a few rows in them
    try:
        before, head, rev = _counts(busy.engine), _head(busy.engine), None
        with busy.engine.connect() as c:
            rev = revision_of(c)
        with pytest.raises(BackupError, match="is not empty .* nothing was changed"):
            backups.restore(out, busy.url)
        assert _counts(busy.engine) == before and _head(busy.engine) == head
        with busy.engine.connect() as c:
            assert revision_of(c) == rev
    finally:
        busy.drop()


def test_a_target_with_any_table_at_all_is_refused(source, target, tmp_path):
    out = tmp_path / "b"
    backups.create(out, url=source.url)
    with target.engine.begin() as c:
        c.execute(text("CREATE TABLE notes (id integer)"))
    with pytest.raises(BackupError, match=r"not empty \(1 tables: (public\.)?notes\)"):
        backups.restore(out, target.url)
    assert target.tables() == ["notes"]


def test_a_folder_that_is_not_empty_or_a_file_is_refused(source, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "old.txt").write_text("an earlier backup's notes")
    with pytest.raises(BackupError, match="is not empty"):
        backups.create(out, url=source.url)
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    f = tmp_path / "a-file"
    f.write_text("x")
    with pytest.raises(BackupError, match="is a file"):
        backups.create(f, url=source.url)
    # an empty folder is taken, and made private
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o755)
    backups.create(empty, url=source.url)
    assert stat.S_IMODE(empty.stat().st_mode) == 0o700


def test_no_key_password_or_secret_in_any_file_of_the_backup(source, tmp_path, monkeypatch):
    secret_key = "test-secret-key-" + uuid.uuid4().hex
    monkeypatch.setenv("TRIAL_SECRET_KEY", secret_key)
    url = source.url
    db_password = None
    if is_pg():  # a password in the URL (the test server trusts local connections and ignores it)
        db_password = "pg-password-" + uuid.uuid4().hex[:12]
        url = url.replace("://postgres@", f"://postgres:{db_password}@", 1)
        assert db_password in url
    d = Db(source, tmp_path / "instance")
    d.url = url
    out = tmp_path / "b"
    ok(d.run("backup", "create", "--to", str(out)))
    secrets = {"TRIAL_SEAL_KEY": os.environ["TRIAL_SEAL_KEY"], "TRIAL_AUDIT_KEY": os.environ["TRIAL_AUDIT_KEY"],
               "TRIAL_SECRET_KEY": secret_key, "a user's password": PASSWORD}
    if db_password:
        secrets["the database password"] = db_password
    contents = {p.name: p.read_bytes() for p in out.iterdir()}
    if is_pg():  # the custom format is compressed: read it as the SQL it restores
        contents["(pg_restore's SQL)"] = subprocess.run(["pg_restore", "-f", "-", str(out / "database.dump")],
                                                        capture_output=True, check=True).stdout
        assert b"COPY public.allocation" in contents["(pg_restore's SQL)"]
    for name, data in contents.items():
        for what, value in secrets.items():
            assert value.encode() not in data, f"{what} in {name}"
    m = json.loads(contents["manifest.json"])
    assert set(m["database"]) == {"dialect", "name"}
    assert set(m) == {"format", "app_version", "created_at", "database", "schema_revision", "audit_head", "row_counts",
                      "dump", "sha256", "key_id", "mac"}
    assert set(m["audit_head"]) == {"seq", "hash", "mac", "records", "seals"}


def test_the_password_goes_to_pg_dump_in_its_environment_never_on_its_command_line():
    from sqlalchemy.engine import make_url
    assert "TRIAL_AUDIT_KEY" in os.environ  # (the environment holds TRIAL_* secrets: none is passed on)
    args, env = backups.pg_tool_args(make_url("postgresql+psycopg://trial:s3cret-pw@db.example.org:5433/trial"
                                              "?sslmode=verify-full"))
    assert "s3cret-pw" not in " ".join(args)
    assert args == ["--no-password", "--host=db.example.org", "--port=5433", "--username=trial"]
    assert env["PGPASSWORD"] == "s3cret-pw" and env["PGSSLMODE"] == "verify-full"
    assert not [k for k in env if k.startswith("TRIAL_")]


# --- what verify proves, and its scratch database ----------------------------------------------------

def test_verify_names_row_counts_and_a_head_that_disagree_with_the_manifest(source, tmp_path):
    out = tmp_path / "b"
    backups.create(out, url=source.url)
    path = out / "manifest.json"
    m = json.loads(path.read_text())
    m["row_counts"]["allocation"] += 1
    m["audit_head"]["seq"] += 1
    path.write_text(json.dumps(m))
    with pytest.raises(BackupError, match="MAC does not match its content"):
        backups.verify(out, url=source.url)  # changed without the audit key: refused at once
    path.write_text(json.dumps(backups.sign_manifest(m)))  # (signed again with the key: what the checks say)
    before = _scratch_databases() if is_pg() else set()
    checks = {c.name: c for c in backups.verify(out, url=source.url)}
    assert not checks["row counts"].ok and "allocation: 3 in the copy, 4 in the manifest" in checks["row counts"].detail
    assert not checks["audit head"].ok and "seq" in checks["audit head"].detail
    assert checks["audit chain"].ok and checks["randomization lists"].ok
    if is_pg():
        assert _scratch_databases() <= before, "the scratch database was not dropped"
    d = Db(source, tmp_path / "instance")
    r = d.run("backup", "verify", str(out))
    assert r.returncode == 1 and "row counts: FAILED" in r.stdout
    one_line_error(r, "NOT verified", "row counts", "audit head")


def test_a_dump_that_cannot_be_restored_fails_verify_and_leaves_no_scratch_database(source, tmp_path):
    out = tmp_path / "b"
    made = backups.create(out, url=source.url)
    dump = out / made.manifest["dump"]["file"]
    dump.write_bytes(b"not a dump at all" * 100)  # and the manifest made to agree with it
    m = json.loads((out / "manifest.json").read_text())
    m["sha256"][dump.name] = backups.sha256_of(dump)
    (out / "manifest.json").write_text(json.dumps(backups.sign_manifest(m)))
    before = _scratch_databases() if is_pg() else set()
    why = "pg_restore into trial_verify_.* failed" if is_pg() else "cannot be read as an SQLite"
    with pytest.raises(BackupError, match=why):
        backups.verify(out, url=source.url)
    if is_pg():
        assert _scratch_databases() <= before


def test_verify_with_another_seal_key_says_the_lists_cannot_be_checked(source, tmp_path, monkeypatch):
    from cryptography.fernet import Fernet
    out = tmp_path / "b"
    backups.create(out, url=source.url)
    monkeypatch.setenv("TRIAL_SEAL_KEY", Fernet.generate_key().decode())
    checks = {c.name: c for c in backups.verify(out, url=source.url)}
    assert checks["audit chain"].ok
    assert not checks["randomization lists"].ok and "seal key" in checks["randomization lists"].detail


# --- schema revisions ------------------------------------------------------------------------------

def _downgraded_to_0022(label: str) -> FreshDatabase:
    """A database at revision 0022 (before the hold, the reservations and the journal's table) with
    randomization opened and children allocated: the trial built at head, then migrated down."""
    old = FreshDatabase(label)
    s = make_session_factory(old.engine)()
    w = World(s, None).setup()
    w.open()
    for site in ("AT01", "NO01", "AT01"):
        w.randomize(w.ready(site))
    w.ready("NO01")  # one child ready, not randomized
    s.close()
    with old.engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0022")
    return old


@pytest.mark.xfail(strict=True, reason="the old database is built at head and migrated down: its audit trail keeps the "
                   "consents (with options and languages) that the downgrade of 0024 dropped, and 0024's upgrade writes "
                   "migrated consents in their place, so the data check rightly reports 4 consents differing from their "
                   "trail; the test needs an old database made without consent records (issue 29's note, to do)")
def test_a_backup_of_an_older_schema_with_allocations_is_upgraded_then_verified_and_held(tmp_path):
    old = _downgraded_to_0022("backup_old")
    try:
        out = tmp_path / "old"
        made = backups.create(out, url=old.url)
        assert made.manifest["schema_revision"] == "0022" and made.manifest["row_counts"]["allocation"] == 3
        assert "allocation_reservation" not in made.manifest["row_counts"]
        checks = {c.name: c for c in backups.verify(out, url=old.url)}
        assert all(c.ok for c in checks.values()), "\n".join(c.line() for c in checks.values() if not c.ok)
        assert checks["upgrade of the copy"].detail == f"from 0022 to {head_revision()}"
        assert "older than this software's" in checks["schema revision"].detail
        assert "all 3 allocations follow the lists" in checks["randomization lists"].detail
        assert checks["data against the trail"].ok
        t = Empty(tmp_path)
        try:
            res = backups.restore(out, t.url)
            assert res.ok and res.held and res.held_audited, [c.line() for c in res.checks]
            assert res.upgraded_from == "0022"
            names = [c.name for c in res.checks]
            assert names.index("upgrade") < names.index("randomization held") < names.index("row counts")
            with t.engine.connect() as c:
                assert revision_of(c) == head_revision()  # upgraded by the restore itself
            with make_session_factory(t.engine)() as s:
                st = s.get(TrialState, 1)
                assert made.manifest["created_at"] in st.randomization_hold
                with pytest.raises(Conflict, match="restored from a backup"):
                    randomization.randomize(s, CLI, _unrandomized(s))
            assert _allocations(t.engine) == _allocations(old.engine)
        finally:
            t.drop()
        t2 = Empty(tmp_path)
        try:
            d = Db(old, tmp_path / "instance")
            r = ok(d.run("backup", "restore", str(out), "--to", t2.url))
            assert "upgrade: ok (from 0022" in r.stdout
            assert r.stdout.splitlines()[-1].startswith("restored and verified; the target is HELD")
        finally:
            t2.drop()
    finally:
        old.drop()


def _unrandomized(s) -> str:
    return s.execute(select(Participant.study_id).outerjoin(Allocation, Allocation.participant_id == Participant.id)
                     .where(Allocation.id.is_(None)).order_by(Participant.id)).scalars().first()


def test_a_backup_of_a_newer_schema_is_refused(tmp_path):
    old = FreshDatabase("backup_new", revision="0022")
    try:
        with old.engine.begin() as c:
            c.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
        out = tmp_path / "new"
        backups.create(out, url=old.url)
        t = Empty(tmp_path)
        try:
            with pytest.raises(BackupError, match="9999_future, which this version of the software does not know"):
                backups.restore(out, t.url)
            assert t.tables() == []
        finally:
            t.drop()
        checks = {c.name: c for c in backups.verify(out, url=old.url)}
        assert not checks["schema revision"].ok and "newer" in checks["schema revision"].detail
        assert not checks["audit chain"].ok and "upgrade of the copy" not in checks
    finally:
        old.drop()


# --- the drill under load ---------------------------------------------------------------------------

def test_a_backup_under_load_is_whole_and_the_restored_system_allocates_as_the_original(tmp_path, target,
                                                                                        monkeypatch):
    journal = tmp_path / "journal" / "allocations.jsonl"  # the allocation journal, outside the database
    journal.parent.mkdir(mode=0o700)
    monkeypatch.setenv("TRIAL_ALLOCATION_JOURNAL", str(journal))
    src = FreshDatabase("backup_load")
    try:
        factory = make_session_factory(src.engine)
        s = factory()
        w = World(s, None).setup()
        w.open()
        w.randomize(w.ready("AT01"))
        pool = [w.ready("AT01" if i % 2 else "NO01").study_id for i in range(60)]
        spare = {site: w.ready(site).study_id for site in ("AT01", "NO01")}  # never randomized before the end
        s.close()
        todo: queue.Queue[str] = queue.Queue()
        for sid in pool:
            todo.put(sid)
        stop, errors, entered = threading.Event(), [], []

        def randomizer():
            with factory() as db:
                while not stop.is_set():
                    try:
                        sid = todo.get_nowait()
                    except queue.Empty:
                        return
                    try:
                        randomization.randomize(db, CLI, sid, f"load-{sid}")
                        db.commit()
                    except Exception as e:  # noqa: BLE001
                        db.rollback()
                        errors.append(e)
                    time.sleep(0.01)

        def data_entry():
            with factory() as db:
                ww = World(db, None)
                while not stop.is_set():
                    try:
                        entered.append(ww.ready("NO01").study_id)  # screening, enrolment, baseline: 3 commits
                    except Exception as e:  # noqa: BLE001
                        db.rollback()
                        errors.append(e)

        threads = [threading.Thread(target=randomizer) for _ in range(3)] + [threading.Thread(target=data_entry)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while _count(src.engine, Allocation) < 6 and time.monotonic() < deadline and not errors:
            time.sleep(0.02)
        during = _count(src.engine, Allocation)
        out = tmp_path / "under-load"
        made = backups.create(out, url=src.url)
        left = todo.qsize()
        in_backup = made.manifest["row_counts"]["allocation"]
        while _count(src.engine, Allocation) < in_backup + 3 and time.monotonic() < deadline and not errors:
            time.sleep(0.02)  # randomizing goes on after the snapshot: the allocations the backup lacks
        stop.set()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        assert left > 0, "the randomizations ended before the backup did: not under load"
        final = _allocations(src.engine)
        assert during <= in_backup <= len(final) and entered

        checks = backups.verify(out, url=src.url)
        assert all(c.ok for c in checks), [c.line() for c in checks]
        res = backups.restore(out, target.url)
        assert res.ok and res.held, [c.line() for c in res.checks]

        # whole, never half: each allocation in the backup has its audit record and its whole visit plan
        restored = _allocations(target.engine)
        assert len(restored) == in_backup and all(final[sid] == v for sid, v in restored.items())
        with target.engine.connect() as c:
            audited = set(c.execute(select(AuditRecord.entity_id).where(AuditRecord.action == "randomize",
                                                                        AuditRecord.entity == "allocation")).scalars())
            plans = dict(c.execute(select(Participant.study_id, func.count(PlannedVisit.id))
                                   .join(PlannedVisit, PlannedVisit.participant_id == Participant.id)
                                   .group_by(Participant.study_id)).all())
        with src.engine.connect() as c:
            plans_then = dict(c.execute(select(Participant.study_id, func.count(PlannedVisit.id))
                                        .join(PlannedVisit, PlannedVisit.participant_id == Participant.id)
                                        .group_by(Participant.study_id)).all())
        assert audited == set(restored)
        assert set(plans) == set(restored) and all(plans[sid] == plans_then[sid] > 0 for sid in restored)
        with make_session_factory(target.engine)() as rs:
            assert replay.compare(rs) == []  # every clinical row matches its trail in the copy

        # held: nothing is allocated on the restored system until the journal is reconciled
        lacking = sorted(sid for sid in final if sid not in restored)
        assert lacking, "no allocation was made after the snapshot"
        rfactory = make_session_factory(target.engine)
        with rfactory() as rs:
            with pytest.raises(Conflict, match="restored from a backup"):
                randomization.randomize(rs, CLI, spare["AT01"])
            rs.rollback()
        assert _allocations(target.engine) == restored
        # the hold lifted by reconciling the journal: the allocations the backup lacks come back in
        # their slots with their arms; then the next child of each site gets what the original gives it
        with rfactory() as rs:
            report = reconcile(rs, CLI, [journal])
            rs.commit()
        assert report.ok and report.hold_cleared, report.conflicts
        assert sorted(report.replayed) == lacking and sorted(report.present) == sorted(restored)
        assert _allocations(target.engine) == final
        with rfactory() as rs:
            for site, sid in spare.items():
                again = randomization.randomize(rs, CLI, sid).allocation
                rs.commit()
                with factory() as db:
                    first = randomization.randomize(db, CLI, sid).allocation
                    db.commit()
                assert (again.stratum_id, again.seq, again.arm) == (first.stratum_id, first.seq, first.arm), site
        assert _allocations(target.engine) == _allocations(src.engine)
        with rfactory() as rs:
            assert audit.verify(rs).ok
    finally:
        src.drop()


def _count(engine, model) -> int:
    with engine.connect() as c:
        n = c.execute(select(func.count()).select_from(model)).scalar_one()
        c.rollback()
    return n


# --- the hostile review (issue 27): a restore that fails or is stopped stays held ----------------------

def _hold_of(engine) -> str | None:
    with engine.connect() as c:
        hold = c.execute(select(TrialState.randomization_hold).where(TrialState.id == 1)).scalar_one()
        c.rollback()
    return hold


def _restore_records(engine) -> int:
    with engine.connect() as c:
        n = c.execute(select(func.count()).select_from(AuditRecord).where(AuditRecord.action == "restore")).scalar_one()
        c.rollback()
    return n


def test_a_restore_whose_hold_cannot_be_audited_is_held_all_the_same_and_says_so(own_source, target, tmp_path,
                                                                                  monkeypatch):
    with make_session_factory(own_source.engine)() as s:
        spare = World(s, None).ready("AT01").study_id  # ready, not randomized
    out = tmp_path / "b"
    backups.create(out, url=own_source.url)
    # the audit key was rotated since the backup: its manifest verifies under the retired key, but
    # the restored chain expects the old key, so the hold's audit record cannot be written
    old_key = os.environ["TRIAL_AUDIT_KEY"]
    monkeypatch.setenv("TRIAL_AUDIT_KEY", "rotated-audit-key-" + uuid.uuid4().hex)
    monkeypatch.setenv("TRIAL_AUDIT_KEYS_RETIRED", old_key)
    res = backups.restore(out, target.url)
    checks = {c.name: c for c in res.checks}
    assert checks["manifest MAC"].ok and "retired audit key" in checks["manifest MAC"].detail
    assert res.held and not res.held_audited and not res.ok
    hold = checks["randomization held"]
    assert not hold.ok and hold.detail.startswith("HELD WITHOUT AN AUDIT RECORD")
    assert "TRIAL_AUDIT_KEY is not the key this audit chain was written with" in hold.detail
    assert _hold_of(target.engine).startswith("restored — the audit record could not be written: TRIAL_AUDIT_KEY is "
                                              "not the key")
    assert _restore_records(target.engine) == 0
    assert not checks["audit chain"].ok  # (the chain is not under the current key: named, not a traceback)
    monkeypatch.setenv("TRIAL_AUDIT_KEY", old_key)
    monkeypatch.delenv("TRIAL_AUDIT_KEYS_RETIRED")
    with make_session_factory(target.engine)() as s, \
            pytest.raises(Conflict, match="restored from a backup"):  # held: nothing is allocated there
        randomization.randomize(s, CLI, spare)
    # the command line says so, loudly, in its one line
    monkeypatch.setenv("TRIAL_AUDIT_KEY", "rotated-audit-key-" + uuid.uuid4().hex)
    monkeypatch.setenv("TRIAL_AUDIT_KEYS_RETIRED", old_key)
    t2 = Empty(tmp_path)
    try:
        r = Db(own_source, tmp_path / "instance").run("backup", "restore", str(out), "--to", t2.url)
        assert "randomization held: FAILED (HELD WITHOUT AN AUDIT RECORD" in r.stdout
        one_line_error(r, "NOT verified", "the target is HELD, WITHOUT the hold's audit record")
        assert _hold_of(t2.engine).startswith("restored — the audit record could not be written")
    finally:
        t2.drop()


def test_ctrl_c_during_the_chain_check_leaves_the_target_held(own_source, target, tmp_path):
    out = tmp_path / "b"
    made = backups.create(out, url=own_source.url)
    said = []

    def say(check):
        said.append(check)
        if check.name == "audit head":  # the next step is the audit chain's check
            raise KeyboardInterrupt

    res = backups.restore(out, target.url, say=say)
    assert res.interrupted == "interrupted (Ctrl-C)" and res.held and res.held_audited
    assert said[-1].name == "checks" and not said[-1].ok and "Ctrl-C" in said[-1].detail
    assert "audit chain" not in [c.name for c in said]
    assert made.manifest["created_at"] in _hold_of(target.engine) and _restore_records(target.engine) == 2


def test_a_restore_of_a_tampered_backup_fails_its_checks_with_the_target_held(own_source, target, tmp_path):
    """A backup with a genuine MAC (made with the key) of a database changed by a plain UPDATE: the
    restore holds first, then names the difference from the trail."""
    with own_source.engine.begin() as c:
        pid, dob = c.execute(select(Participant.id, Participant.date_of_birth)).first()
        c.execute(text("UPDATE participant SET date_of_birth = :d WHERE id = :id"), {"d": dob.replace(year=dob.year - 1),
                                                                                    "id": pid})
    out = tmp_path / "b"
    backups.create(out, url=own_source.url)
    res = backups.restore(out, target.url)
    checks = {c.name: c for c in res.checks}
    assert res.held and res.held_audited and not res.ok
    assert not checks["data against the trail"].ok and "date_of_birth" in checks["data against the trail"].detail
    assert _hold_of(target.engine)


# --- the manifest's MAC, and the data against the trail -------------------------------------------------

def test_a_reforged_backup_is_refused_and_a_changed_value_is_found(source, target, tmp_path, monkeypatch):
    out = tmp_path / "b"
    made = backups.create(out, url=source.url)
    # the attack: restore, UPDATE a clinical value, dump again, recompute digests, counts and head
    assert backups.restore(out, target.url).ok
    with target.engine.begin() as c:
        pid, dob = c.execute(select(Participant.id, Participant.date_of_birth)).first()
        c.execute(text("UPDATE participant SET date_of_birth = :d WHERE id = :id"), {"d": dob.replace(year=dob.year - 1),
                                                                                    "id": pid})
    again = tmp_path / "again"
    remade = backups.create(again, url=target.url)  # (made with the key: the insider's own backup)
    forged = tmp_path / "forged"
    forged.mkdir(mode=0o700)
    dump = made.manifest["dump"]["file"]
    (forged / dump).write_bytes((again / dump).read_bytes())
    m = dict(made.manifest, sha256=remade.manifest["sha256"], row_counts=remade.manifest["row_counts"],
             audit_head=remade.manifest["audit_head"])  # every figure recomputed; the MAC cannot be
    (forged / "manifest.json").write_text(json.dumps(m))
    t2 = Empty(tmp_path)
    try:
        for why in ("the manifest's MAC does not match its content",):
            with pytest.raises(BackupError, match=why):
                backups.verify(forged, url=source.url)
            with pytest.raises(BackupError, match=why):
                backups.restore(forged, t2.url)
        del m["mac"]  # no MAC at all
        (forged / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(BackupError, match="carries no MAC"):
            backups.verify(forged, url=source.url)
        (forged / "manifest.json").write_text(json.dumps(backups.sign_manifest(m, b"another-key-" * 4)))
        with pytest.raises(BackupError, match="another audit key than TRIAL_AUDIT_KEY .* wrong audit key"):
            backups.restore(forged, t2.url)
        assert t2.tables() == []
        d = Db(source, tmp_path / "instance")
        (forged / "manifest.json").write_text(json.dumps(dict(m, mac=made.manifest["mac"])))
        one_line_error(d.run("backup", "verify", str(forged)), "MAC does not match")
        one_line_error(d.run("backup", "restore", str(forged), "--to", t2.url), "MAC does not match",
                       "the target was not changed")
        assert t2.tables() == []
    finally:
        t2.drop()
    # a genuine backup checked with another TRIAL_AUDIT_KEY: the key is named
    monkeypatch.setenv("TRIAL_AUDIT_KEY", "some-other-audit-key-" + uuid.uuid4().hex)
    with pytest.raises(BackupError, match="wrong audit key"):
        backups.verify(out, url=source.url)
    monkeypatch.undo()
    # the insider's backup (a genuine MAC): the UPDATE without its audit record is named
    checks = {c.name: c for c in backups.verify(again, url=source.url)}
    assert checks["manifest MAC"].ok and checks["audit chain"].ok and checks["randomization lists"].ok
    data = checks["data against the trail"]
    assert not data.ok and "1 difference(s)" in data.detail and "participant" in data.detail
    assert "date_of_birth" in data.detail


# --- anchors: checked by verify, marked by restore ---------------------------------------------------

def _anchor(engine, path: Path) -> dict:
    with make_session_factory(engine)() as s:
        return anchors.anchor(s, path)[1]


def _randomize_one(engine) -> None:
    s = make_session_factory(engine)()
    w = World(s, None)
    w.randomize(w.ready("AT01"))
    s.close()


def _after_a_second() -> None:
    """Anchors and backups are stamped to the second: the next one is written in a later second."""
    start = time.time()
    time.sleep(1.05 - (start % 1))


def test_verify_checks_the_copy_against_the_anchors_written_before_the_backup(own_source, tmp_path, monkeypatch):
    path = tmp_path / "offsite" / "anchors.jsonl"
    before = _anchor(own_source.engine, path)
    _after_a_second()
    out = tmp_path / "b"
    made = backups.create(out, url=own_source.url)
    _after_a_second()
    _randomize_one(own_source.engine)
    later = _anchor(own_source.engine, path)  # written after the backup: not the copy's business
    assert later["seq"] > made.manifest["audit_head"]["seq"] >= before["seq"]
    checks = {c.name: c for c in backups.verify(out, url=own_source.url, anchors=path)}
    assert checks["anchors"].ok and checks["anchors"].detail.startswith("1 line(s) of"), checks["anchors"].line()
    # an anchor file that does not exist: given, it fails; named by the setting (no anchor written
    # yet, a new deployment), it is said not to be checked
    missing = tmp_path / "offsite" / "none-yet.jsonl"
    checks = {c.name: c for c in backups.verify(out, url=own_source.url, anchors=missing)}
    assert not checks["anchors"].ok and "no such anchor file" in checks["anchors"].detail
    monkeypatch.setenv("TRIAL_AUDIT_ANCHORS", str(missing))
    checks = {c.name: c for c in backups.verify(out, url=own_source.url)}
    assert checks["anchors"].ok and checks["anchors"].detail.startswith("not checked: no anchor has been written")
    # the same anchor stamped before the backup: the copy's chain is shorter than an anchor it
    # should hold (a backup of a database cut back behind its anchor)
    backdated = dict(later, at=before["at"])
    path.write_text(path.read_text() + json.dumps(backdated) + "\n")
    monkeypatch.setenv("TRIAL_AUDIT_ANCHORS", str(path))  # (the setting, as the app has it)
    checks = {c.name: c for c in backups.verify(out, url=own_source.url)}
    assert not checks["anchors"].ok and f"shorter than the anchor's record {later['seq']}" in checks["anchors"].detail
    r = Db(own_source, tmp_path / "instance").run("backup", "verify", str(out), "--anchors", str(path))
    assert "anchors: FAILED" in r.stdout
    one_line_error(r, "NOT verified", "anchors")


def test_a_restore_marks_the_anchor_file_so_verify_anchors_takes_the_restored_chain(own_source, target, tmp_path):
    path = tmp_path / "offsite" / "anchors.jsonl"
    _anchor(own_source.engine, path)
    _after_a_second()
    out = tmp_path / "b"
    made = backups.create(out, url=own_source.url)
    _after_a_second()
    _randomize_one(own_source.engine)
    later = _anchor(own_source.engine, path)  # production anchored past the backup, then was lost
    unmarked = path.read_text()
    res = backups.restore(out, target.url, anchors=path)
    assert res.ok and res.held_audited and res.marker == path, [c.line() for c in res.checks]
    marker = json.loads(path.read_text().splitlines()[-1])
    assert marker["restore"] is True and marker["backup_created_at"] == made.manifest["created_at"]
    assert marker["head"] == made.manifest["audit_head"] and marker["at"].endswith("Z")
    assert marker["after_hold"]["seq"] == made.manifest["audit_head"]["seq"] + 2
    # the restore is in the audit trail: the hold's record names the backup and the restored head
    with make_session_factory(target.engine)() as s:
        reasons = set(s.execute(select(AuditRecord.reason).where(AuditRecord.action == "restore")).scalars())
        assert reasons == {backups.hold_reason(made.manifest, backups.Copy(None, {}, made.manifest["audit_head"]))}
        assert f"audit head record {made.manifest['audit_head']['seq']}" in reasons.pop()
        # without the marker the restored chain fails the later anchor for ever; with it, it is superseded
        unmarked_path = tmp_path / "unmarked.jsonl"
        unmarked_path.write_text(unmarked)
        assert not anchors.check_anchors(s, unmarked_path).ok
        checked = anchors.check_anchors(s, path)
        assert checked.ok and checked.restores == 1, checked.problems
        line2 = f"anchors.jsonl line 2 (record {later['seq']}): superseded by the restore of line 3"
        assert checked.superseded == [line2]
    r = ok(trial(target.url, tmp_path / "instance", "audit", "verify", "--anchors", str(path)))
    assert "2 anchors hold; 1 superseded by a restore" in r.stdout
    # anchors after the restore are checked against the restored chain
    _anchor(target.engine, path)
    with make_session_factory(target.engine)() as s:
        assert anchors.check_anchors(s, path).ok
    # a marker of another restore of the same backup (a drill on a copy) does not pass for this one
    other = tmp_path / "other.jsonl"
    other.write_text(unmarked)
    t2 = Empty(tmp_path)
    try:
        assert backups.restore(out, t2.url, anchors=other).marker == other
        with make_session_factory(target.engine)() as s:
            checked = anchors.check_anchors(s, other)
        assert not checked.ok
        assert any("line 3 (the marker of a restore)" in p and "not a restore of this database" in p
                   for p in checked.problems), checked.problems
    finally:
        t2.drop()


# --- the scratch database of verify (PostgreSQL) --------------------------------------------------------

@pytest.mark.skipif(not is_pg(), reason="PostgreSQL's scratch database")
def test_verify_closes_its_scratch_database_and_drops_the_leftovers_of_killed_ones(source, tmp_path):
    import datetime as dt
    now = dt.datetime.now(dt.UTC)
    stale = backups.scratch_name(now - dt.timedelta(hours=7))
    recent = backups.scratch_name(now - dt.timedelta(hours=1))
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as c:
            for name in (stale, recent):
                c.execute(text(f'CREATE DATABASE "{name}"'))
        out = tmp_path / "b"
        backups.create(out, url=source.url)
        seen = {}

        def say(check):
            if check.name == "restore into a scratch database":  # the copy exists now: who may connect?
                with admin.connect() as c:
                    name = c.execute(text("SELECT datname FROM pg_database WHERE datname LIKE 'trial\\_verify\\_%' "
                                          "AND datname NOT IN (:a, :b) ORDER BY oid DESC LIMIT 1"),
                                     {"a": stale, "b": recent}).scalar_one()
                    seen["name"] = name
                    seen["public"] = c.execute(text("SELECT has_database_privilege('public', :n, 'CONNECT')"),
                                               {"n": name}).scalar_one()

        checks = {c.name: c for c in backups.verify(out, url=source.url, say=say)}
        assert all(c.ok for c in checks.values()), "\n".join(c.line() for c in checks.values() if not c.ok)
        assert seen["public"] is False
        assert backups.SCRATCH_NAME.fullmatch(seen["name"])
        made = dt.datetime.strptime(seen["name"].split("_")[2], "%Y%m%d%H%M%S").replace(tzinfo=dt.UTC)
        assert abs(made - now) < dt.timedelta(hours=1)
        assert stale in checks["leftover scratch databases"].detail
        names = _scratch_databases()
        assert stale not in names and recent in names and seen["name"] not in names
    finally:
        with admin.connect() as c:
            for name in (stale, recent):
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
