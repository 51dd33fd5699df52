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
database has), ``dump`` (its file and the tool), ``sha256`` (of every other file of DIR), and
``key_id`` and ``mac``: an HMAC of all the other fields under a key derived from TRIAL_AUDIT_KEY, so
that a re-forged backup (restored, changed, dumped again, its figures recomputed) is refused. A
backup holds no key: the seal and audit keys are backed up apart.

``verify`` checks the manifest's MAC and the digests first (a changed file is named and refused),
restores into a scratch database (PostgreSQL: ``trial_verify_<UTC time>_<random>`` on the app's
server, closed to PUBLIC, dropped afterwards whatever happens, and leftovers of killed verifies
older than 6 hours dropped first; SQLite: a temporary file), and there compares the schema
revision, the row counts and the audit head with the manifest, upgrades the copy when older,
verifies the audit chain, every randomization list against the sealed seed (which needs
TRIAL_AUDIT_KEY and TRIAL_SEAL_KEY, as the app has them), the data against the audit trail
(trial.audit.replay) and, with an anchor file, the chain against the anchors written before the
backup.

``restore`` refuses a target that is not empty and a backup whose MAC or digests do not match,
restores, and at once upgrades the target when older and holds randomization there (audited, else
by a plain UPDATE that says the record is missing) until the allocation journal is reconciled:
allocations acknowledged after the backup was taken are not in it. Then it runs the same checks on
the target (a failure or an interruption leaves it held) and appends a restore marker to the anchor
file (trial.audit.anchors).

No Flask here; the texts are the operator's (English), like the rest of the command line's.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
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
from sqlalchemy import create_engine, func, insert, inspect, select, text, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

import trial.models  # noqa: F401  every table of the schema in the metadata
from trial import config
from trial.audit import replay
from trial.audit import service as audit
from trial.audit.anchors import anchor_file, append_line, check_anchors, head_line
from trial.db import Base, default_url, make_engine, make_session_factory, utcnow
from trial.errors import DomainError
from trial.migrate import alembic_config, head_revision, revision_of, upgrade
from trial.randomize import service as randomization
from trial.randomize.journal import hold_randomization
from trial.scope import CliActor
from trial.trialstate.models import TrialState
from trial.version import __version__

FORMAT = "trial-backup/1"
MANIFEST = "manifest.json"
PG_DUMP_FILE = "database.dump"
SQLITE_FILE = "database.sqlite"
HEAD_FIELDS = ("seq", "hash", "mac", "records", "seals")
CHUNK = 1 << 20
MAC_CONTEXT = b"backup-manifest"  # the manifest's key: HMAC(TRIAL_AUDIT_KEY, this)
SCRATCH_PREFIX = "trial_verify_"
SCRATCH_NAME = re.compile(r"trial_verify_(\d{14})_[0-9a-f]+")
SCRATCH_MAX_AGE = dt.timedelta(hours=6)


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
    held: bool = False  # randomization_hold set on the target (with its audit record or, failing that, without)
    held_audited: bool = False  # ... and its audit record written
    upgraded_from: str | None = None  # the backup's older schema revision, upgraded to this software's
    interrupted: str | None = None  # what stopped the restore after the copy (the checks then incomplete)
    marker: Path | None = None  # the anchor file the restore's marker was appended to

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
    key = _audit_key()  # before anything is written: a backup that cannot be signed is not made
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
        manifest = sign_manifest(manifest, key)
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
    return create_engine(f"sqlite:///file:{path}?mode=ro&uri=true", poolclass=NullPool, hide_parameters=True)


def _create_pg(u: URL, dump: Path, written: list[Path]) -> tuple[dict, dict]:
    pg_dump, major, version = tool("pg_dump")
    engine = create_engine(u, poolclass=NullPool, isolation_level="REPEATABLE READ", hide_parameters=True)
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


# --- the manifest's MAC -----------------------------------------------------------------------------

def _audit_key() -> bytes:
    try:
        return config.audit_key()
    except Exception as e:  # (a ConfigError: no key in production)
        raise BackupError(f"no audit key: {e} A backup's manifest is signed with a key derived from it.") from e


def manifest_key(audit_key: bytes) -> bytes:
    """The manifest's MAC key, derived from the audit key (HMAC(TRIAL_AUDIT_KEY, "backup-manifest")):
    who can write the backups but does not hold the audit key cannot re-forge a manifest."""
    return hmac.new(audit_key, MAC_CONTEXT, hashlib.sha256).digest()


def _key_id(mkey: bytes) -> str:
    """Names the key a manifest was signed under, without revealing it: a wrong key is told apart
    from a changed manifest."""
    return hmac.new(mkey, b"key-id", hashlib.sha256).hexdigest()[:16]


def _signed_text(manifest: dict) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "mac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign_manifest(manifest: dict, audit_key: bytes | None = None) -> dict:
    """The manifest with ``key_id`` and ``mac``: an HMAC-SHA256 of all its other fields under
    :func:`manifest_key` of the audit key (default: TRIAL_AUDIT_KEY)."""
    mkey = manifest_key(audit_key or _audit_key())
    out = {k: v for k, v in manifest.items() if k != "mac"}
    out["key_id"] = _key_id(mkey)
    out["mac"] = hmac.new(mkey, _signed_text(out), hashlib.sha256).hexdigest()
    return out


def check_manifest_mac(manifest: dict) -> Check:
    """The manifest's MAC under TRIAL_AUDIT_KEY (or a key of TRIAL_AUDIT_KEYS_RETIRED): a manifest
    without a MAC, signed under another key, or changed since, is refused (BackupError), naming which."""
    mac, key_id = manifest.get("mac"), manifest.get("key_id")
    if not isinstance(mac, str) or not mac:
        raise BackupError("the manifest carries no MAC: it was not written by `trial backup create` of this version, "
                          "or someone rewrote it; it cannot be trusted (refused)")
    keys = [("TRIAL_AUDIT_KEY", _audit_key())]
    with contextlib.suppress(Exception):  # a malformed setting: the current key alone
        keys += [("a retired audit key (TRIAL_AUDIT_KEYS_RETIRED)", k) for k in config.retired_audit_keys()]
    for which, k in keys:
        mkey = manifest_key(k)
        if key_id != _key_id(mkey):
            continue
        if not hmac.compare_digest(mac, hmac.new(mkey, _signed_text(manifest), hashlib.sha256).hexdigest()):
            raise BackupError("the manifest's MAC does not match its content: the manifest was changed after the "
                              "backup was made (a forged or re-forged backup); refused")
        return Check("manifest MAC", True, f"signed under {which}")
    raise BackupError("the manifest was signed under another audit key than TRIAL_AUDIT_KEY (nor any key of "
                      "TRIAL_AUDIT_KEYS_RETIRED): wrong audit key; give the key the backup was made with (or the "
                      "key_id was altered); refused")


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

@dataclass
class Copy:
    """What a restored copy holds as restored, read before anything is changed in it (an upgrade, the hold)."""
    revision: str | None
    counts: dict[str, int]
    head: dict


def read_copy(engine: Engine) -> Copy:
    try:
        with engine.connect() as conn:
            out = Copy(revision_of(conn), row_counts(conn), head_line(conn))
            conn.rollback()
    except sa_exc.DBAPIError as e:
        raise BackupError(f"the restored database cannot be read: {_first_line(e)}") from e
    return out


def upgrade_copy(engine: Engine, copy: Copy) -> str | None:
    """The restored copy upgraded to this software's schema when it is older (trial.migrate.upgrade);
    the revision it was at (None: nothing to do)."""
    if copy.revision == head_revision() or not _revision_known(copy.revision):
        return None
    upgrade(engine)
    return copy.revision or "(none)"


def check_restored(engine: Engine, manifest: dict, say: Say = _quiet, copy: Copy | None = None,
                   anchors: Path | None = None) -> list[Check]:
    """The restored database at ``engine`` against the manifest: schema revision, row counts, audit
    head (as restored: ``copy``, read before an upgrade or the hold); then the audit chain, every
    randomization list from the sealed seed, the data against the audit trail and, with ``anchors``,
    the chain against the anchors written before the backup was taken."""
    checks: list[Check] = []

    def add(c: Check) -> None:
        checks.append(c)
        say(c)

    copy = copy or read_copy(engine)
    add(_schema_check(copy.revision, manifest["schema_revision"]))
    add(_counts_check(copy.counts, manifest["row_counts"]))
    add(_head_check(copy.head, manifest["audit_head"]))
    if not _revision_known(copy.revision):
        for name in ("audit chain", "randomization lists", "data against the trail"):
            add(Check(name, False, "not checked: the schema is newer than this software"))
        return checks
    with engine.connect() as conn:
        now = revision_of(conn)
        conn.rollback()
    if now != head_revision():
        for name in ("audit chain", "randomization lists", "data against the trail"):
            add(Check(name, False, f"not checked: the copy is at {now}, not upgraded to {head_revision()}"))
        return checks
    with make_session_factory(engine)() as s:
        add(_guarded("audit chain", lambda: _chain_check(s)))
        s.rollback()
        add(_guarded("randomization lists", lambda: _lists_check(s)))
        s.rollback()
        add(_guarded("data against the trail", lambda: _data_check(s)))
        s.rollback()
        if anchors is not None:
            add(_guarded("anchors", lambda: _anchors_check(s, anchors, manifest["created_at"])))
            s.rollback()
    return checks


def _data_check(s: Session) -> Check:
    differences = replay.compare(s)
    if not differences:
        return Check("data against the trail", True, "every audited row matches its audit trail")
    shown = "; ".join(str(d) for d in differences[:10])
    more = f" (and {len(differences) - 10} more)" if len(differences) > 10 else ""
    return Check("data against the trail", False, f"{len(differences)} difference(s) from the audit trail: "
                                                  f"{shown}{more}")


def _anchors_check(s: Session, path: Path, created_at: str) -> Check:
    if not path.exists() and path == anchor_file(None):
        # the setting names a file no anchor was written to yet (a new deployment); given with
        # --anchors, a missing file fails (check_anchors says so)
        return Check("anchors", True, f"not checked: no anchor has been written to {path} (TRIAL_AUDIT_ANCHORS) yet")
    res = check_anchors(s, path, before=created_at)
    if not res.ok:
        return Check("anchors", False, "; ".join(res.problems))
    superseded = f"; {len(res.superseded)} superseded by a restore" if res.superseded else ""
    return Check("anchors", True, f"{res.anchors - len(res.superseded)} line(s) of {path} written before "
                                  f"{created_at} hold{superseded}")


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
                                               f"the copy is upgraded to {head} before the checks below")
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

def verify(path: Path, url: str | None = None, say: Say = _quiet, anchors: Path | None = None) -> list[Check]:
    """Prove the backup at ``path``: the manifest's MAC and the digests, then a restore into a
    scratch database, upgraded to this software's schema when older, and the checks of
    :func:`check_restored` there (``anchors``: an anchor file, default TRIAL_AUDIT_ANCHORS).
    PostgreSQL: the scratch database is made on the server of ``url`` (default: the app's
    database), closed to PUBLIC, and dropped afterwards, also when a step fails."""
    path = Path(path)
    manifest = read_manifest(path)
    anchors = anchor_file(anchors)
    checks: list[Check] = []

    def collect(c: Check) -> None:
        checks.append(c)
        say(c)

    collect(check_manifest_mac(manifest))
    collect(check_digests(path, manifest))
    dump = path / manifest["dump"]["file"]
    dialect = manifest["database"]["dialect"]
    if dialect == "sqlite":
        _verify_sqlite(dump, manifest, collect, anchors)
    elif dialect == "postgresql":
        _verify_pg(dump, manifest, make_url(url or default_url()), collect, anchors)
    else:
        raise BackupError(f"the manifest names a {dialect} database: PostgreSQL and SQLite only")
    return checks


def _prove_copy(engine: Engine, manifest: dict, collect: Say, anchors: Path | None) -> None:
    """The figures of the copy as restored, then the copy upgraded to this software's schema, then the checks."""
    copy = read_copy(engine)
    try:
        was = upgrade_copy(engine, copy)
    except Exception as e:  # noqa: BLE001  (any failure of a migration: named, the checks then skipped)
        collect(Check("upgrade of the copy", False, f"{copy.revision} could not be upgraded to {head_revision()}: "
                                                    f"{_first_line(e)}"))
    else:
        if was:
            collect(Check("upgrade of the copy", True, f"from {was} to {head_revision()}"))
    check_restored(engine, manifest, collect, copy=copy, anchors=anchors)


def _verify_sqlite(dump: Path, manifest: dict, collect: Say, anchors: Path | None) -> None:
    with tempfile.TemporaryDirectory(prefix="trial-verify-") as tmp:
        copy = Path(tmp) / "verify.db"
        shutil.copyfile(dump, copy)
        collect(sqlite_integrity(copy))
        collect(Check("restore into a scratch database", True, "a temporary copy of the SQLite file"))
        engine = make_engine(f"sqlite:///{copy}")
        try:
            _prove_copy(engine, manifest, collect, anchors)
        finally:
            engine.dispose()


def scratch_name(now: dt.datetime | None = None) -> str:
    """``trial_verify_<UTC yyyymmddhhmmss>_<random>``: the time it was made is in its name (pg_database
    keeps none), so a later verify can tell a leftover of a killed one."""
    now = now or dt.datetime.now(dt.UTC)
    return f"{SCRATCH_PREFIX}{now:%Y%m%d%H%M%S}_{secrets.token_hex(6)}"


def drop_stale_scratch(admin: Engine, now: dt.datetime | None = None) -> Check | None:
    """Drop the scratch databases of verifies that were killed (older than 6 hours by their name:
    they hold a copy of the trial's data, unblinded). None: there were none."""
    now = now or dt.datetime.now(dt.UTC)
    with admin.connect() as c:
        names = list(c.execute(text("SELECT datname FROM pg_database WHERE datname LIKE 'trial\\_verify\\_%' "
                                    "ORDER BY 1")).scalars())
    stale = []
    for name in names:
        m = SCRATCH_NAME.fullmatch(name)
        if m is None:
            continue
        made = dt.datetime.strptime(m.group(1), "%Y%m%d%H%M%S").replace(tzinfo=dt.UTC)
        if now - made > SCRATCH_MAX_AGE:
            stale.append(name)
    if not stale:
        return None
    dropped, failed = [], []
    for name in stale:
        try:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            dropped.append(name)
        except sa_exc.DBAPIError as e:
            failed.append(f"{name} ({_first_line(e)})")
    if failed:
        return Check("leftover scratch databases", False, f"could not drop {', '.join(failed)}: drop them by hand"
                     + (f"; dropped {', '.join(dropped)}" if dropped else ""))
    return Check("leftover scratch databases", True, f"dropped {', '.join(dropped)} (older than 6 hours: left by a "
                                                     "verify that was killed)")


def _verify_pg(dump: Path, manifest: dict, server: URL, collect: Say, anchors: Path | None) -> None:
    """pg_restore into ``trial_verify_<time>_<random>`` on ``server`` (no CONNECT for PUBLIC), checked,
    then dropped whatever happened; leftovers of killed verifies, older than 6 hours, dropped first."""
    if server.get_backend_name() != "postgresql":
        raise BackupError("a PostgreSQL backup is verified on a PostgreSQL server: set TRIAL_DATABASE_URL to a "
                          "database on it (the scratch database is made beside it)")
    pg_restore = _pg_restore_for(manifest)
    name = scratch_name()
    admin = create_engine(server, poolclass=NullPool, isolation_level="AUTOCOMMIT", hide_parameters=True)
    try:
        try:
            stale = drop_stale_scratch(admin)
        except sa_exc.DBAPIError as e:
            raise BackupError(f"cannot connect to the server of TRIAL_DATABASE_URL: {_first_line(e)}") from e
        if stale is not None:
            collect(stale)
        try:
            with admin.connect() as c:
                c.execute(text(f'CREATE DATABASE "{name}"'))
        except sa_exc.DBAPIError as e:
            raise BackupError(f"cannot make the scratch database {name} on the server: {_first_line(e)} (the role "
                              "needs CREATEDB)") from e
        try:
            with admin.connect() as c:  # the copy is unblinded: nobody else connects to it
                c.execute(text(f'REVOKE CONNECT, TEMPORARY ON DATABASE "{name}" FROM PUBLIC'))
            scratch = server.set(database=name)
            _pg_restore(pg_restore, scratch, dump)
            collect(Check("restore into a scratch database", True, f"{name} on the server, closed to PUBLIC, "
                                                                   "dropped afterwards"))
            engine = make_engine(scratch.render_as_string(hide_password=False))
            try:
                _prove_copy(engine, manifest, collect, anchors)
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

def restore(path: Path, to: str, actor=None, say: Say = _quiet, anchors: Path | None = None) -> Restored:
    """Restore the backup at ``path`` into the empty database ``to`` (a URL). Right after the copy,
    before any check: the target upgraded to this software's schema when older, and randomization
    held there (audited; when the audit record cannot be written, held by a plain UPDATE that says
    so) until the allocation journal is reconciled (`trial randomization reconcile`): the
    allocations made after the backup are not in it. Then the checks of :func:`verify`, and a
    restore marker appended to the anchor file (``anchors``, default TRIAL_AUDIT_ANCHORS).

    A BackupError raised leaves the target as it was (nothing restored). Once the copy is in,
    nothing is raised: every failure, an interruption too, is a failed check of the result, whose
    ``held`` says whether randomization is held on the target."""
    path = Path(path)
    manifest = read_manifest(path)
    anchors = anchor_file(anchors)
    out = Restored()

    def collect(c: Check) -> None:
        out.checks.append(c)
        say(c)

    collect(check_manifest_mac(manifest))
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
        _after_copy(engine, actor or CliActor(), manifest, out, collect, anchors)
    finally:
        engine.dispose()
    return out


def _after_copy(engine: Engine, actor, manifest: dict, out: Restored, collect: Say, anchors: Path | None) -> None:
    """Upgrade and hold first (whatever fails or is interrupted, the hold is tried), then the checks."""
    copy: Copy | None = None
    try:
        copy = read_copy(engine)
        was = upgrade_copy(engine, copy)
        if was:
            out.upgraded_from = was
            collect(Check("upgrade", True, f"from {was} to {head_revision()}, before the hold and the checks"))
    except BaseException as e:  # noqa: BLE001  the hold is tried all the same; the checks are not run
        collect(Check("upgrade", False, f"the restored database could not be upgraded to {head_revision()}: "
                                        f"{_why(e)}"))
        out.interrupted = _why(e)
    collect(_hold(engine, actor, manifest, copy, out))
    if out.interrupted:
        return
    try:
        check_restored(engine, manifest, collect, copy=copy, anchors=anchors)
        if out.held and out.held_audited:
            with make_session_factory(engine)() as s:
                after = _guarded("audit chain after the hold", lambda: _chain_check(s))
            after.name = "audit chain after the hold"  # (the chain's check, named for this step)
            collect(after)
        if anchors is not None and out.held and copy is not None:
            collect(_mark_restore(engine, anchors, manifest, copy, out))
    except BaseException as e:  # noqa: BLE001  a failure or Ctrl-C during the checks: the target stays held
        out.interrupted = _why(e)
        collect(Check("checks", False, f"stopped before they ended: {_why(e)}"))


def _why(e: BaseException) -> str:
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    if isinstance(e, DomainError):
        return str(e.message)
    if isinstance(e, sa_exc.DBAPIError):
        return f"database error: {_first_line(e)}"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _hold(engine: Engine, actor, manifest: dict, copy: Copy | None, out: Restored) -> Check:
    """Randomization held on the restored database: audited (hold_randomization), else — a wrong audit
    key, any failure — by a plain UPDATE of trial_state whose reason says the record is missing
    (better held without a record than open). Never raises."""
    why = hold_reason(manifest, copy)
    try:
        with make_session_factory(engine)() as s:
            hold_randomization(s, actor, why)
            s.commit()
    except BaseException as e:  # noqa: BLE001  AuditKeyMismatch, a database error, Ctrl-C: held all the same
        problem = _why(e)
    else:
        out.held = out.held_audited = True
        return Check("randomization held", True, f"HELD: {why}")
    plain = f"restored — the audit record could not be written: {problem}"[:300]
    try:
        st = TrialState.__table__
        with engine.begin() as c:
            values = {"randomization_hold": plain, "randomization_hold_at": utcnow()}
            if c.execute(update(st).where(st.c.id == 1).values(**values)).rowcount == 0:
                c.execute(insert(st).values(id=1, **values))
    except BaseException as e:  # noqa: BLE001
        return Check("randomization held", False, f"NOT HELD: the hold's audited write failed ({problem}) and so did "
                                                  f"the plain UPDATE ({_why(e)}): keep the app off this database")
    out.held = True
    return Check("randomization held", False, f"HELD WITHOUT AN AUDIT RECORD (its write failed: {problem}); the hold "
                                              f"reads: {plain!r}")


def _mark_restore(engine: Engine, path: Path, manifest: dict, copy: Copy, out: Restored) -> Check:
    """The restore marker appended to the anchor file: anchors before it and beyond the restored head
    are superseded (trial.audit.anchors.check_anchors); the head after the hold ties it to this database."""
    with engine.connect() as conn:
        now = head_line(conn)
        conn.rollback()
    marker = {"restore": True, "backup_created_at": manifest["created_at"],
              "head": {k: copy.head[k] for k in HEAD_FIELDS}, "at": _now()}
    if out.held_audited:
        marker["after_hold"] = {k: now[k] for k in HEAD_FIELDS}
    try:
        append_line(path, marker)
    except OSError as e:
        return Check("restore marker", False, f"could not append it to {path}: {e.strerror}; `trial audit verify "
                                              "--anchors` will fail on the anchors written after the backup")
    out.marker = path
    return Check("restore marker", True, f"appended to {path}: anchors written before it beyond record "
                                         f"{copy.head['seq']} are superseded")


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
    engine = create_engine(target, poolclass=NullPool, hide_parameters=True)
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


def hold_reason(manifest: dict, copy: Copy | None = None) -> str:
    head = f" (audit head record {copy.head['seq']})" if copy is not None else ""
    return (f"restored from the backup of {manifest['created_at']}{head}: randomization is held until "
            "`trial randomization reconcile` has replayed the allocation journal")
