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
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.pool import NullPool

from tests.conftest import PG_URL, FreshDatabase, is_pg
from tests.helpers import CLI, PASSWORD, World
from tests.test_cli import Db, ok, one_line_error, trial
from trial.audit import replay
from trial.audit import service as audit
from trial.audit.anchors import head_line
from trial.audit.models import AuditRecord
from trial.backup import service as backups
from trial.backup.service import BackupError
from trial.db import make_engine, make_session_factory
from trial.errors import Conflict
from trial.migrate import head_revision, revision_of
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
    for name in ("digests", "restore into a scratch database", "schema revision", "row counts", "audit head",
                 "audit chain", "randomization lists"):
        assert name in names
    assert "all 3 allocations follow the lists" in checks[-1].detail

    res = backups.restore(out, target.url)
    assert res.ok and res.held and not res.upgrade_needed, [c.line() for c in res.checks]
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
    assert lines[0].startswith("digests: ok") and lines[-1].endswith("verified: every check agrees")
    assert any(x.startswith("randomization lists: ok (all 3 allocations") for x in lines), r.stdout
    assert not any("FAILED" in x for x in lines)
    if is_pg():
        assert "dropped afterwards" in r.stdout
    r = ok(d.run("backup", "restore", str(out), "--to", target.url))
    assert "randomization held: ok" in r.stdout and "audit chain after the hold: ok" in r.stdout
    assert "trial randomization reconcile" in r.stdout.splitlines()[-1]
    # the second restore into the now-full target, and a backup into a folder that is not empty
    before = _counts(target.engine)
    one_line_error(d.run("backup", "restore", str(out), "--to", target.url), "is not empty", "nothing was changed")
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
                      "dump", "sha256"}
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
    (out / "manifest.json").write_text(json.dumps(m))
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

def test_a_backup_of_a_newer_schema_is_refused_and_one_of_an_older_is_restored_as_it_is(tmp_path):
    old = FreshDatabase("backup_old", revision="0022")
    try:
        out = tmp_path / "old"
        made = backups.create(out, url=old.url)
        assert made.manifest["schema_revision"] == "0022"
        assert "allocation_reservation" not in made.manifest["row_counts"]
        checks = {c.name: c for c in backups.verify(out, url=old.url)}
        assert all(c.ok for c in checks.values()), checks
        assert "older than this software's" in checks["schema revision"].detail
        t = Empty(tmp_path)
        try:
            res = backups.restore(out, t.url)
            with t.engine.connect() as c:
                assert revision_of(c) == "0022"  # as it is: the operator upgrades it
            assert res.upgrade_needed and not res.held
            failed = [c for c in res.checks if not c.ok]
            assert [c.name for c in failed] == ["randomization held"] and "trial db upgrade" in failed[0].detail
            d = Db(old, tmp_path / "instance")
            t2 = Empty(tmp_path)
            try:
                r = d.run("backup", "restore", str(out), "--to", t2.url)
                assert "run `trial db upgrade` on it" in r.stdout
                one_line_error(r, "could NOT be held", "trial db upgrade")
            finally:
                t2.drop()
        finally:
            t.drop()
        # newer: a schema revision this software does not know
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
