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


@backup.command("verify", help="Prove the backup in DIR: the files' SHA-256 against the manifest first (a changed "
                "file is named and refused), then a restore into a scratch database (PostgreSQL: trial_verify_<random> "
                "on the server of TRIAL_DATABASE_URL, dropped afterwards; SQLite: a temporary file), where the schema "
                "revision, the row counts and the audit head are compared with the manifest, the audit chain is "
                "verified and every randomization list is checked against the sealed seed (TRIAL_AUDIT_KEY and "
                "TRIAL_SEAL_KEY needed, as the app has them). Prints each check; exit 0 only when all agree.")
@click.argument("directory", type=click.Path(path_type=Path))
def backup_verify(directory: Path):
    try:
        checks = backups.verify(directory, say=_say)
    except BackupError as e:
        fail(str(e))
    failed = [c.name for c in checks if not c.ok]
    if failed:
        fail(f"backup {directory} NOT verified: {', '.join(failed)} failed")
    click.echo(f"backup {directory} verified: every check agrees")


@backup.command("restore", help="Restore the backup in DIR into the EMPTY database at URL (refused when it holds "
                "any table, or when a file of the backup does not match its SHA-256; PostgreSQL: `pg_restore "
                "--no-owner` in one transaction, into a database made beforehand with createdb; SQLite: the file "
                "copied to the path), run the checks of `verify` on it, then hold randomization there (audited) until "
                "`trial randomization reconcile --journal FILE` has replayed the allocations the backup lacks. Keep a "
                "PostgreSQL password out of URL: PGPASSWORD or ~/.pgpass. A backup of an older schema is restored "
                "as it is (then run `trial db upgrade`); one of a newer schema is refused.")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--to", "to", required=True, metavar="URL", help="the target database, e.g. "
              "postgresql+psycopg://trial@db/trial_restored or sqlite:////srv/trial/restored.db")
def backup_restore(directory: Path, to: str):
    try:
        res = backups.restore(directory, to, say=_say)
    except BackupError as e:
        fail(str(e))
    failed = [c.name for c in res.checks if not c.ok]
    if res.upgrade_needed:
        click.echo("the restored database is at an older schema than this software: run `trial db upgrade` on it "
                   "(TRIAL_DATABASE_URL set to it) before the app is started")
        if failed == ["randomization held"]:
            fail("restored and verified, but randomization could NOT be held on its old schema: run `trial db "
                 "upgrade` on it, then `trial randomization reconcile`, before the app is started")
    if failed:
        fail(f"restored, but NOT verified: {', '.join(failed)} failed; do not put this database in service")
    click.echo("restored and verified; randomization is held until `trial randomization reconcile --journal FILE` "
               "(or `--none-lost`) has run against the restored database")
