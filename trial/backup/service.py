"""Backups that prove themselves: `trial backup create | verify | restore` (README "Backups").

``create`` takes a consistent online copy of the database the app uses, while it is in use:

- PostgreSQL: ``pg_dump --format=custom`` inside a snapshot exported by a REPEATABLE READ
  transaction (``pg_export_snapshot()``, passed to pg_dump as ``--snapshot``). The row counts, the
  audit head and the schema revision of the manifest are read in that same transaction, so they
  describe exactly the dump: a randomization committed meanwhile is in both whole, or in neither.
  The password goes to pg_dump in ``PGPASSWORD``, never on its command line.
- SQLite: the online backup API (``sqlite3.Connection.backup``) copies the whole file in one step,
  one consistent snapshot however the app writes meanwhile; the manifest's figures are read from
  the copy.

``DIR/manifest.json`` then holds ``format``, ``app_version``, ``created_at``, ``database``
(dialect and database name only), ``schema_revision``, ``audit_head`` (as
:func:`trial.audit.anchors.head_line` gives it), ``row_counts`` (every table of the metadata the
database has), ``dump`` (its file and the tool) and ``sha256`` (of every other file of DIR). A backup
holds no key: the seal and audit keys are backed up apart.

``verify`` checks the digests first (a changed file is named and refused), restores into a scratch
database (PostgreSQL: ``trial_verify_<random>`` on the app's server, dropped afterwards whatever
happens; SQLite: a temporary file), and there compares the schema revision, the row counts and the
audit head with the manifest, verifies the audit chain and every randomization list against the
sealed seed (which needs TRIAL_AUDIT_KEY and TRIAL_SEAL_KEY, as the app has them).

``restore`` refuses a target that is not empty and a backup whose digests do not match, restores,
runs the same checks on the target, and holds randomization there (audited) until the allocation
journal is reconciled: allocations acknowledged after the backup was taken are not in it.

No Flask here; the texts are the operator's (English), like the rest of the command line's.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, inspect, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

import trial.models  # noqa: F401  every table of the schema in the metadata
from trial.audit import service as audit
from trial.audit.anchors import head_line
from trial.db import Base, default_url, make_engine, make_session_factory
from trial.errors import DomainError
from trial.migrate import alembic_config, head_revision, revision_of
from trial.randomize import service as randomization
from trial.randomize.journal import hold_randomization
from trial.scope import CliActor
from trial.version import __version__

FORMAT = "trial-backup/1"
MANIFEST = "manifest.json"
PG_DUMP_FILE = "database.dump"
SQLITE_FILE = "database.sqlite"
HEAD_FIELDS = ("seq", "hash", "mac", "records", "seals")
CHUNK = 1 << 20


class BackupError(Exception):
    """A refusal or a failure, in a sentence for the operator; nothing was changed by it (a
    restore's target is left as it was)."""


@dataclass
class Check:
    """One check of a backup: what was checked, whether it agrees, and the figures or why not."""
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{self.name}: {'ok' if self.ok else 'FAILED'} ({self.detail})"


@dataclass
class Created:
    path: Path
    manifest: dict
    size: int  # bytes of the dump


@dataclass
class Restored:
    checks: list[Check] = field(default_factory=list)
    held: bool = False
    upgrade_needed: bool = False

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


Say = Callable[[Check], None]


def _quiet(_check: Check) -> None:
    pass


# --- create --------------------------------------------------------------------------------------

def create(to: Path, url: str | None = None) -> Created:
    """Back up the database at ``url`` (default: the app's, TRIAL_DATABASE_URL) into the folder
    ``to``, which must be new or empty (made with mode 0700; every file in it 0600)."""
    to = Path(to)
    made_dir = _prepare_dir(to)
    u = make_url(url or default_url())
    written: list[Path] = []
    try:
        if u.get_backend_name() == "postgresql":
            figures, dump_info = _create_pg(u, to / PG_DUMP_FILE, written)
        elif u.get_backend_name() == "sqlite":
            figures, dump_info = _create_sqlite(u, to / SQLITE_FILE, written)
        else:
            raise BackupError(f"cannot back up a {u.get_backend_name()} database: PostgreSQL and SQLite only")
        dump = to / dump_info["file"]
        manifest = {
            "format": FORMAT,
            "app_version": __version__,
            "created_at": figures["created_at"],
            "database": {"dialect": u.get_backend_name(), "name": Path(u.database or "").name
                         if u.get_backend_name() == "sqlite" else u.database},
            "schema_revision": figures["revision"],
            "audit_head": figures["head"],
            "row_counts": figures["counts"],
            "dump": dump_info,
            "sha256": {dump.name: sha256_of(dump)},
        }
        written.append(to / MANIFEST)
        _write_private(to / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        if made_dir:
            to.rmdir()
        raise
    return Created(to, manifest, dump.stat().st_size)


def _prepare_dir(to: Path) -> bool:
    """``to`` made (mode 0700) or found empty; True when made here."""
    if to.exists() and not to.is_dir():
        raise BackupError(f"{to} is a file, not a folder: give a new or empty folder")
    if to.is_dir():
        if any(to.iterdir()):
            raise BackupError(f"{to} is not empty: give a new or empty folder (a backup never overwrites another)")
        to.chmod(0o700)
        return False
    try:
        to.mkdir(mode=0o700, parents=True)
    except OSError as e:
        raise BackupError(f"cannot make the folder {to}: {e.strerror}") from e
    to.chmod(0o700)  # whatever the umask
    return True


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _figures(conn: Connection) -> dict:
    """What the manifest says of the database, read on ``conn`` (the snapshot or the copy)."""
    line = head_line(conn)
    return {"revision": revision_of(conn), "head": {k: line[k] for k in HEAD_FIELDS}, "counts": row_counts(conn)}


def row_counts(conn: Connection) -> dict[str, int]:
    """Rows of every table of the metadata that the database has (an older schema lacks the newer ones)."""
    present = set(inspect(conn).get_table_names())
    return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in sorted(Base.metadata.sorted_tables, key=lambda t: t.name) if t.name in present}


def _create_sqlite(u: URL, dump: Path, written: list[Path]) -> tuple[dict, dict]:
    source = u.database
    if not source or source == ":memory:" or source.startswith("file:"):
        raise BackupError("the SQLite database must be a file path (sqlite:////path/to/trial.db)")
    if not Path(source).is_file():
        raise BackupError(f"no SQLite database at {source}")
    created_at = _now()
    written.append(dump)
    _write_private(dump, b"")  # mode 0600 before a byte is in it
    try:
        src = sqlite3.connect(source, timeout=30)
    except sqlite3.Error as e:
        raise BackupError(f"cannot open {source}: {e}") from e
    dst = sqlite3.connect(dump)
    try:
        src.backup(dst)  # the whole file in one step: one consistent snapshot
        dst.execute("PRAGMA journal_mode=DELETE")  # the copy is one self-contained file, no WAL beside it
    except sqlite3.Error as e:
        raise BackupError(f"the SQLite online backup failed: {e}") from e
    finally:
        dst.close()
        src.close()
    engine = _read_only_sqlite(dump)
    try:
        with engine.connect() as conn:
            figures = _figures(conn)
    finally:
        engine.dispose()
    figures["created_at"] = created_at
    return figures, {"file": dump.name, "tool": f"SQLite {sqlite3.sqlite_version} online backup API"}


def _read_only_sqlite(path: Path) -> Engine:
    return create_engine(f"sqlite:///file:{path}?mode=ro&uri=true", poolclass=NullPool)


def _create_pg(u: URL, dump: Path, written: list[Path]) -> tuple[dict, dict]:
    pg_dump, major, version = tool("pg_dump")
    engine = create_engine(u, poolclass=NullPool, isolation_level="REPEATABLE READ")
    try:
        try:
            conn = engine.connect()
        except sa_exc.DBAPIError as e:
            raise BackupError(f"cannot connect to the database: {_first_line(e)}") from e
        with conn:
            server = engine.dialect.server_version_info
            if server and major < server[0]:
                raise BackupError(f"{pg_dump} is version {major}, older than the server ({server[0]}): install the "
                                  f"PostgreSQL {server[0]} client programs (Debian: postgresql-client-{server[0]}) "
                                  "and put them first on PATH")
            created_at = _now()
            # the first statement of this REPEATABLE READ transaction takes its snapshot and exports
            # it; pg_dump imports it, and the figures below are read in it too
            snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
            figures = _figures(conn)
            args, env = pg_tool_args(u)
            written.append(dump)
            fd = os.open(dump, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                run = subprocess.run([pg_dump, "--format=custom", f"--snapshot={snapshot}", *args,
                                      f"--dbname={u.database}"], stdout=fd, stderr=subprocess.PIPE, env=env,
                                     text=True, check=False)
                os.fsync(fd)
            finally:
                os.close(fd)
            conn.rollback()
    finally:
        engine.dispose()
    if run.returncode != 0:
        raise BackupError(f"pg_dump failed (exit {run.returncode}): {_last_line(run.stderr)}")
    figures["created_at"] = created_at
    server_text = ".".join(str(x) for x in server) if server else "unknown"
    return figures, {"file": dump.name, "tool": version, "server_version": server_text}


def tool(name: str) -> tuple[str, int, str]:
    """A PostgreSQL client program on PATH: its path, major version and version line."""
    path = shutil.which(name)
    if path is None:
        raise BackupError(f"{name} is not on PATH: install the PostgreSQL client programs of the server's major "
                          "version (Debian: postgresql-client-NN)")
    out = subprocess.run([path, "--version"], check=False, capture_output=True, text=True, timeout=60).stdout.strip()
    m = re.search(r"\)\s*(\d+)", out) or re.search(r"(\d+)\.\d+", out)
    if m is None:
        raise BackupError(f"cannot tell the version of {path} (it printed {out[:80]!r})")
    return path, int(m.group(1)), out


_PG_QUERY_ENV = {"sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT",
                 "sslkey": "PGSSLKEY", "connect_timeout": "PGCONNECT_TIMEOUT",
                 "target_session_attrs": "PGTARGETSESSIONATTRS"}


def pg_tool_args(u: URL) -> tuple[list[str], dict[str, str]]:
    """The connection options of pg_dump / pg_restore for the database URL ``u`` (without the
    database) and their environment: the password in ``PGPASSWORD``, never on the command line
    (where any user of the machine could read it); no TRIAL_* variable is passed on."""
    args = ["--no-password"]
    host = u.host or _one(u.query.get("host"))
    if host:
        args.append(f"--host={host}")
    if u.port:
        args.append(f"--port={u.port}")
    if u.username:
        args.append(f"--username={u.username}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAL_")}
    if u.password is not None:
        env["PGPASSWORD"] = str(u.password)
    for key, var in _PG_QUERY_ENV.items():
        if u.query.get(key) is not None:
            env[var] = _one(u.query[key])
    return args, env


def _one(value) -> str | None:
    return value[0] if isinstance(value, tuple) else value


def _first_line(e: BaseException) -> str:
    orig = getattr(e, "orig", None) or e
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


def _last_line(stderr: str) -> str:
    lines = [x for x in stderr.strip().splitlines() if x.strip()]
    return lines[-1] if lines else "no message"


# --- reading a backup ----------------------------------------------------------------------------

def read_manifest(path: Path) -> dict:
    path = Path(path)
    if not path.is_dir():
        raise BackupError(f"{path} is not a folder")
    try:
        m = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupError(f"{path} has no {MANIFEST}: not a backup made by `trial backup create`") from None
    except (OSError, ValueError) as e:
        raise BackupError(f"{path / MANIFEST} cannot be read as JSON: {e}") from e
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        found = m.get("format") if isinstance(m, dict) else None
        raise BackupError(f"{path / MANIFEST} is not a {FORMAT} manifest (format {found!r})")
    missing = [k for k in ("created_at", "database", "schema_revision", "audit_head", "row_counts", "dump", "sha256")
               if k not in m]
    if missing:
        raise BackupError(f"{path / MANIFEST} lacks {', '.join(missing)}")
    return m


def check_digests(path: Path, manifest: dict) -> Check:
    """Every file of the backup against its SHA-256 in the manifest; a file changed, missing or not
    listed is named and the backup refused (BackupError)."""
    path = Path(path)
    listed = manifest["sha256"]
    faults = []
    if manifest["dump"].get("file") not in listed:
        faults.append(f"the dump {manifest['dump'].get('file')!r} has no digest in the manifest")
    for name, digest in sorted(listed.items()):
        f = path / name
        if Path(name).name != name or name == MANIFEST:
            faults.append(f"{name!r} is not a file name of the backup")
        elif not f.is_file():
            faults.append(f"{name} is missing")
        elif sha256_of(f) != digest:
            faults.append(f"{name} does not match its SHA-256 in the manifest (changed or damaged since the backup)")
    faults += [f"{p.name} is not in the manifest" for p in sorted(path.iterdir())
               if p.name != MANIFEST and p.name not in listed]
    if faults:
        raise BackupError(f"backup {path} refused: " + "; ".join(faults))
    return Check("digests", True, f"{len(listed)} file(s) match the manifest's SHA-256")


def _revision_known(revision: str | None) -> bool:
    if revision is None:
        return True
    return any(s.revision == revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions())


def _refuse_newer(manifest: dict) -> None:
    rev = manifest["schema_revision"]
    if not _revision_known(rev):
        raise BackupError(f"the backup is at schema revision {rev}, which this version of the software does not know "
                          f"(its newest is {head_revision()}): it was made by a newer version; restore it with "
                          "that one")


# --- the checks, on a restored copy -----------------------------------------------------------------

def check_restored(engine: Engine, manifest: dict, say: Say = _quiet) -> list[Check]:
    """The restored database at ``engine`` against the manifest: schema revision, row counts, audit
    head; then the audit chain and every randomization list from the sealed seed."""
    checks: list[Check] = []

    def add(c: Check) -> None:
        checks.append(c)
        say(c)

    try:
        with engine.connect() as conn:
            rev = revision_of(conn)
            counts = row_counts(conn)
            line = head_line(conn)
            conn.rollback()
    except sa_exc.DBAPIError as e:
        raise BackupError(f"the restored database cannot be read: {_first_line(e)}") from e
    add(_schema_check(rev, manifest["schema_revision"]))
    add(_counts_check(counts, manifest["row_counts"]))
    add(_head_check(line, manifest["audit_head"]))
    if not _revision_known(rev):
        add(Check("audit chain", False, "not checked: the schema is newer than this software"))
        add(Check("randomization lists", False, "not checked: the schema is newer than this software"))
        return checks
    with make_session_factory(engine)() as s:
        add(_guarded("audit chain", lambda: _chain_check(s)))
        s.rollback()
        add(_guarded("randomization lists", lambda: _lists_check(s)))
        s.rollback()
    return checks


def _guarded(name: str, check: Callable[[], Check]) -> Check:
    try:
        return check()
    except DomainError as e:
        return Check(name, False, str(e.message))
    except sa_exc.DBAPIError as e:
        return Check(name, False, f"database error: {_first_line(e)}")


def _schema_check(rev: str | None, expected: str | None) -> Check:
    head = head_revision()
    if rev != expected:
        return Check("schema revision", False, f"the copy is at {rev}, the manifest says {expected}")
    if rev == head:
        return Check("schema revision", True, f"{rev}, this software's newest")
    if _revision_known(rev):
        return Check("schema revision", True, f"{rev}, as the manifest says; older than this software's {head}: "
                                               "a restored database needs `trial db upgrade`")
    return Check("schema revision", False, f"{rev} is newer than this software knows (its newest: {head})")


def _counts_check(counts: dict[str, int], expected: dict[str, int]) -> Check:
    diffs = [f"{t}: {counts.get(t, 'no table')} in the copy, {expected.get(t, 'none')} in the manifest"
             for t in sorted(set(counts) | set(expected)) if counts.get(t) != expected.get(t)]
    if diffs:
        return Check("row counts", False, "; ".join(diffs))
    return Check("row counts", True, f"{len(counts)} tables, {sum(counts.values())} rows, as in the manifest")


def _head_check(line: dict, expected: dict) -> Check:
    diffs = [f"{k} {line.get(k)!r} in the copy, {expected.get(k)!r} in the manifest"
             for k in ("seq", "hash", "records", "seals") if line.get(k) != expected.get(k)]
    if diffs:
        return Check("audit head", False, "; ".join(diffs))
    return Check("audit head", True, f"record {line['seq']}, {line['records']} records, {line['seals']} seals, "
                                     "as in the manifest")


def _chain_check(s: Session) -> Check:
    res = audit.verify(s)
    if res.ok:
        return Check("audit chain", True, f"{res.checked} records chain under TRIAL_AUDIT_KEY")
    where = "" if res.unverified else f"broken at record {res.broken_seq}: "
    return Check("audit chain", False, where + str(res.problem))


def _lists_check(s: Session) -> Check:
    if randomization.get_design(s) is None:
        return Check("randomization lists", True, "randomization was never opened: no list to check")
    actor = CliActor()
    seed = randomization.unseal_for_verification(s, actor)
    res = randomization.verify(s, actor, seed=seed)
    if res.ok:
        return Check("randomization lists", True, f"all {res.checked} allocations follow the lists of the sealed seed")
    shown = "; ".join(res.problems[:10]) + (f" (and {len(res.problems) - 10} more)" if len(res.problems) > 10 else "")
    return Check("randomization lists", False, f"{len(res.problems)} problem(s) in {res.checked} allocations: {shown}")


# --- verify --------------------------------------------------------------------------------------

def verify(path: Path, url: str | None = None, say: Say = _quiet) -> list[Check]:
    """Prove the backup at ``path``: digests, then a restore into a scratch database and the checks
    of :func:`check_restored` there. PostgreSQL: the scratch database is made on the server of
    ``url`` (default: the app's database) and dropped afterwards, also when a step fails."""
    path = Path(path)
    manifest = read_manifest(path)
    checks: list[Check] = []

    def collect(c: Check) -> None:
        checks.append(c)
        say(c)

    collect(check_digests(path, manifest))
    dump = path / manifest["dump"]["file"]
    dialect = manifest["database"]["dialect"]
    if dialect == "sqlite":
        _verify_sqlite(dump, manifest, collect)
    elif dialect == "postgresql":
        _verify_pg(dump, manifest, make_url(url or default_url()), collect)
    else:
        raise BackupError(f"the manifest names a {dialect} database: PostgreSQL and SQLite only")
    return checks


def _verify_sqlite(dump: Path, manifest: dict, collect: Say) -> None:
    with tempfile.TemporaryDirectory(prefix="trial-verify-") as tmp:
        copy = Path(tmp) / "verify.db"
        shutil.copyfile(dump, copy)
        collect(sqlite_integrity(copy))
        collect(Check("restore into a scratch database", True, "a temporary copy of the SQLite file"))
        engine = make_engine(f"sqlite:///{copy}")
        try:
            check_restored(engine, manifest, collect)
        finally:
            engine.dispose()


def _verify_pg(dump: Path, manifest: dict, server: URL, collect: Say) -> None:
    """pg_restore into ``trial_verify_<random>`` on ``server``, checked, then dropped whatever happened."""
    if server.get_backend_name() != "postgresql":
        raise BackupError("a PostgreSQL backup is verified on a PostgreSQL server: set TRIAL_DATABASE_URL to a "
                          "database on it (the scratch database is made beside it)")
    pg_restore = _pg_restore_for(manifest)
    name = f"trial_verify_{secrets.token_hex(6)}"
    admin = create_engine(server, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        try:
            with admin.connect() as c:
                c.execute(text(f'CREATE DATABASE "{name}"'))
        except sa_exc.DBAPIError as e:
            raise BackupError(f"cannot make the scratch database {name} on the server: {_first_line(e)} (the role "
                              "needs CREATEDB)") from e
        try:
            scratch = server.set(database=name)
            _pg_restore(pg_restore, scratch, dump)
            collect(Check("restore into a scratch database", True, f"{name} on the server, dropped afterwards"))
            engine = make_engine(scratch.render_as_string(hide_password=False))
            try:
                check_restored(engine, manifest, collect)
            finally:
                engine.dispose()
        finally:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def _pg_restore_for(manifest: dict) -> str:
    """pg_restore, refused when older than the pg_dump that wrote the dump (it cannot read it)."""
    path, major, _ = tool("pg_restore")
    m = re.search(r"\)\s*(\d+)", manifest["dump"].get("tool", ""))
    if m and major < int(m.group(1)):
        raise BackupError(f"{path} is version {major}, older than the pg_dump {m.group(1)} that wrote the backup: "
                          f"install the PostgreSQL {m.group(1)} client programs")
    return path


def _pg_restore(pg_restore: str, target: URL, dump: Path) -> None:
    """pg_restore into ``target`` in one transaction: all of it, or nothing (the target as it was)."""
    args, env = pg_tool_args(target)
    run = subprocess.run([pg_restore, "--no-owner", "--single-transaction", "--exit-on-error", *args,
                          f"--dbname={target.database}", str(dump)], capture_output=True, text=True, env=env,
                         check=False)
    if run.returncode != 0:
        raise BackupError(f"pg_restore into {target.database} failed (exit {run.returncode}), nothing was restored: "
                          f"{_last_line(run.stderr)}")


# --- restore -------------------------------------------------------------------------------------

def restore(path: Path, to: str, actor=None, say: Say = _quiet) -> Restored:
    """Restore the backup at ``path`` into the empty database ``to`` (a URL), check it as
    :func:`verify` does, and hold randomization there until the allocation journal is reconciled
    (`trial randomization reconcile`): the allocations made after the backup are not in it."""
    path = Path(path)
    manifest = read_manifest(path)
    out = Restored()

    def collect(c: Check) -> None:
        out.checks.append(c)
        say(c)

    collect(check_digests(path, manifest))
    _refuse_newer(manifest)
    target = make_url(to)
    dialect = manifest["database"]["dialect"]
    if target.get_backend_name() != dialect:
        raise BackupError(f"the backup is of a {dialect} database; the target is {target.get_backend_name()}")
    dump = path / manifest["dump"]["file"]
    if dialect == "sqlite":
        collect(sqlite_integrity(dump))
        _restore_sqlite(dump, target)
    elif dialect == "postgresql":
        pg_restore = _pg_restore_for(manifest)
        _refuse_non_empty_pg(target)
        _pg_restore(pg_restore, target, dump)
    else:
        raise BackupError(f"the manifest names a {dialect} database: PostgreSQL and SQLite only")
    collect(Check("restore", True, f"into {_shown(target)}"))
    engine = make_engine(target.render_as_string(hide_password=False))
    try:
        check_restored(engine, manifest, collect)
        out.upgrade_needed = manifest["schema_revision"] != head_revision()
        _hold(engine, actor or CliActor(), manifest, out, collect)
    finally:
        engine.dispose()
    return out


def _hold(engine: Engine, actor, manifest: dict, out: Restored, collect: Say) -> None:
    """Randomization held on the restored database, and its chain verified after the hold's record."""
    hold = _hold_check(engine, actor, manifest)
    out.held = hold.ok
    collect(hold)
    if out.held:
        with make_session_factory(engine)() as s:
            after = _guarded("audit chain after the hold", lambda: _chain_check(s))
        after.name = "audit chain after the hold"  # (the chain's check, named for this step)
        collect(after)


def _shown(u: URL) -> str:
    return u.render_as_string(hide_password=True)


def _restore_sqlite(dump: Path, target: URL) -> None:
    dest = target.database
    if not dest or dest == ":memory:" or dest.startswith("file:"):
        raise BackupError("the SQLite target must be a file path (sqlite:////path/to/trial.db)")
    dest_path = Path(dest)
    if dest_path.exists():
        _refuse_non_empty_sqlite(dest_path)
    dest_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".restore-", dir=dest_path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as out, dump.open("rb") as src:
            shutil.copyfileobj(src, out, CHUNK)
            out.flush()
            os.fsync(out.fileno())
        for stale in (Path(dest + "-wal"), Path(dest + "-shm")):  # an empty database's, from before
            stale.unlink(missing_ok=True)
        os.replace(tmp, dest_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sqlite_integrity(path: Path) -> Check:
    """SQLite's own check of the file (``PRAGMA quick_check``): a file that is not an SQLite
    database, or a damaged one, is refused (BackupError)."""
    try:
        c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            found = [r[0] for r in c.execute("PRAGMA quick_check")]
        finally:
            c.close()
    except sqlite3.Error as e:
        raise BackupError(f"{path.name} cannot be read as an SQLite database: {e}") from e
    if found != ["ok"]:
        raise BackupError(f"{path.name} is damaged (SQLite quick_check: {'; '.join(found[:5])})")
    return Check("SQLite integrity", True, "quick_check ok")


def _refuse_non_empty_sqlite(path: Path) -> None:
    if path.is_dir():
        raise BackupError(f"the target {path} is a folder")
    if path.stat().st_size == 0:
        return
    try:
        c = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            names = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                                             "AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        finally:
            c.close()
    except sqlite3.Error as e:
        raise BackupError(f"the target {path} is not an empty SQLite database ({e}): give a new file or an empty "
                          "database") from e
    if names:
        raise BackupError(_not_empty(str(path), names))


def _not_empty(what: str, names: list[str]) -> str:
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return (f"the target {what} is not empty ({len(names)} tables: {shown}): a restore goes only into an empty "
            "database; nothing was changed")


def _refuse_non_empty_pg(target: URL) -> None:
    engine = create_engine(target, poolclass=NullPool)
    try:
        with engine.connect() as c:
            names = list(c.execute(text(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') "
                "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                "AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' ORDER BY 1")).scalars())
    except sa_exc.DBAPIError as e:
        raise BackupError(f"cannot connect to the target {_shown(target)}: {_first_line(e)} (make the empty database "
                          "first: createdb -O OWNER NAME)") from e
    finally:
        engine.dispose()
    if names:
        raise BackupError(_not_empty(target.database or "", names))


def hold_reason(manifest: dict) -> str:
    return (f"restored from the backup of {manifest['created_at']}: randomization is held until "
            "`trial randomization reconcile` has replayed the allocation journal")


def _hold_check(engine: Engine, actor, manifest: dict) -> Check:
    """Hold randomization on the restored database, audited; a schema from before the hold
    (revision 0023) cannot hold it: the operator is told."""
    with engine.connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("trial_state")}
        conn.rollback()
    if "randomization_hold" not in columns:
        return Check("randomization held", False, f"NOT held: the restored schema ({manifest['schema_revision']}) "
                                                  "predates the hold; run `trial db upgrade` on it and keep the app "
                                                  "stopped until `trial randomization reconcile` has run")
    why = hold_reason(manifest)
    with make_session_factory(engine)() as s:
        hold_randomization(s, actor, why)
        s.commit()
    return Check("randomization held", True, why)

