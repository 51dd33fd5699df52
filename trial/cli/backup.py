"""`trial backup`: create, verify and restore backups of the database (trial.backup.service)."""
from __future__ import annotations

from pathlib import Path

import click

from trial.backup import service as backups
from trial.backup.service import BackupError, Check
from trial.cli.common import Group, fail


@click.group(cls=Group, help="Backups of the database that prove themselves: create, verify, restore (README: "
             "Backups). A backup holds no key: keep TRIAL_SEAL_KEY and TRIAL_AUDIT_KEY backed up apart.")
def backup():
    pass


def _say(check: Check) -> None:
    click.echo(check.line())


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@backup.command("create", help="A consistent online backup of the app's database (TRIAL_DATABASE_URL) into DIR, "
                "a new or empty folder (mode 0700, files 0600), while the app runs: PostgreSQL with `pg_dump "
                "--format=custom` in one exported snapshot (pg_dump on PATH, not older than the server; the password "
                "passed in PGPASSWORD), SQLite with its online backup API. DIR/manifest.json holds the time, the "
                "database's dialect and name, the schema revision, the audit head, the row count of every table and "
                "the SHA-256 of the dump, read from the same snapshot. No key is written.")
@click.option("--to", "to", required=True, type=click.Path(file_okay=True, path_type=Path),
              help="the backup's folder: new or empty")
def backup_create(to: Path):
    try:
        made = backups.create(to)
    except BackupError as e:
        fail(str(e))
    m = made.manifest
    head = m["audit_head"]
    click.echo(f"backup written to {made.path}: {m['dump']['file']} ({_size(made.size)}) and {backups.MANIFEST}; "
               f"schema {m['schema_revision']}, audit head record {head['seq']}, {sum(m['row_counts'].values())} rows "
               f"in {len(m['row_counts'])} tables. Prove it with `trial backup verify {made.path}`.")


_ANCHORS_HELP = ("an anchor file of `trial audit anchor` (default: TRIAL_AUDIT_ANCHORS): the copy's chain is checked "
                 "against the anchors written before the backup was made")


@backup.command("verify", help="Prove the backup in DIR: the manifest's MAC (an HMAC of all its fields under a key "
                "derived from TRIAL_AUDIT_KEY: a manifest without one, signed under another key, or changed, is "
                "refused, naming which) and the files' SHA-256 first (a changed file is named and refused), then a "
                "restore into a scratch database (PostgreSQL: trial_verify_<UTC time>_<random> on the server of "
                "TRIAL_DATABASE_URL, closed to PUBLIC, dropped afterwards, and leftovers of killed verifies older "
                "than 6 hours dropped first; SQLite: a temporary file), upgraded to this software's schema when "
                "older, where the schema revision, the row counts and the audit head are compared with the manifest, "
                "the audit chain is verified, every randomization list is checked against the sealed seed, the data "
                "are compared with the audit trail (as `trial audit verify --data`) and, with an anchor file, the "
                "chain with the anchors written before the backup (TRIAL_AUDIT_KEY and TRIAL_SEAL_KEY needed, as "
                "the app has them). Prints each check; exit 0 only when all agree.")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--anchors", "anchors", type=click.Path(dir_okay=False, path_type=Path), help=_ANCHORS_HELP)
def backup_verify(directory: Path, anchors: Path | None):
    try:
        checks = backups.verify(directory, say=_say, anchors=anchors)
    except BackupError as e:
        fail(str(e))
    failed = [c.name for c in checks if not c.ok]
    if failed:
        fail(f"backup {directory} NOT verified: {', '.join(failed)} failed")
    click.echo(f"backup {directory} verified: every check agrees")


@backup.command("restore", help="Restore the backup in DIR into the EMPTY database at URL (refused when it holds "
                "any table, or when the manifest's MAC or a file's SHA-256 does not match; PostgreSQL: `pg_restore "
                "--no-owner` in one transaction, into a database made beforehand with createdb; SQLite: the file "
                "copied to the path). Right after the copy, before any check: the target is upgraded to this "
                "software's schema when older, and randomization is HELD there (audited; when the audit record "
                "cannot be written, e.g. a wrong TRIAL_AUDIT_KEY, held by a plain UPDATE that says so) until `trial "
                "randomization reconcile --journal FILE` has replayed the allocations the backup lacks. Then the "
                "checks of `verify` run on it, and a restore marker is appended to the anchor file (--anchors or "
                "TRIAL_AUDIT_ANCHORS), so that `trial audit verify --anchors` takes the restored chain. The last "
                "line always says whether the target is HELD. Keep a PostgreSQL password out of URL: PGPASSWORD or "
                "~/.pgpass. A backup of a newer schema is refused.")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--to", "to", required=True, metavar="URL", help="the target database, e.g. "
              "postgresql+psycopg://trial@db/trial_restored or sqlite:////srv/trial/restored.db")
@click.option("--anchors", "anchors", type=click.Path(dir_okay=False, path_type=Path),
              help=_ANCHORS_HELP + "; the restore's marker is appended to it")
def backup_restore(directory: Path, to: str, anchors: Path | None):
    try:
        res = backups.restore(directory, to, say=_say, anchors=anchors)
    except BackupError as e:
        fail(f"{e} (the target was not changed: nothing restored, nothing held)")
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001  before or during the copy, which is all or nothing
        why = "interrupted (Ctrl-C)" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
        fail(f"restore failed before its copy was complete ({why}); the target was not changed: nothing restored, "
             "nothing held")
    failed = [c.name for c in res.checks if not c.ok]
    if res.held and res.held_audited:
        held = ("the target is HELD: randomization is refused there until `trial randomization reconcile --journal "
                "FILE` (or `--none-lost`) has run against it")
    elif res.held:
        held = ("the target is HELD, WITHOUT the hold's audit record (see above): fix TRIAL_AUDIT_KEY, then `trial "
                "randomization reconcile --journal FILE` against it")
    else:
        held = "the target is NOT HELD: keep every app server off it; do not put it in service"
    if res.interrupted:
        fail(f"restore stopped after the copy ({res.interrupted}); {held}")
    if failed:
        fail(f"restored, but NOT verified: {', '.join(failed)} failed; do not put this database in service; {held}")
    click.echo(f"restored and verified; {held}")
