"""`trial audit`: the audit trail."""
from __future__ import annotations

import sys

import click

from trial.audit import rotation
from trial.audit import service as audit_service
from trial.cli.common import Group, fail, session
from trial.scope import CliActor


@click.group(cls=Group, help="The audit trail.")
def audit():
    pass


@audit.command("verify", help="Check the audit hash chain; exit 0 if intact, else name the first broken record "
               "(or the records under a retired key that TRIAL_AUDIT_KEYS_RETIRED does not hold).")
def audit_verify():
    with session() as s:
        res = audit_service.verify(s)
    if not res.ok:
        fail(f"audit chain not verified: {res.problem}" if res.unverified
             else f"audit chain broken at record {res.broken_seq}: {res.problem}")
    click.echo(f"audit chain intact: {res.checked} records")


@audit.command("rotate-key", help="Read a new audit key (at least 32 characters) on standard input and continue the "
               "chain under it from its next record. Then set TRIAL_AUDIT_KEY to the new key and add the old one to "
               "TRIAL_AUDIT_KEYS_RETIRED, on every app server and wherever the command line runs (README: Rotating "
               "the keys). Audited.")
def audit_rotate_key():
    new_key = sys.stdin.readline().rstrip("\r\n")
    with session() as s:
        r = rotation.rotate_key(s, CliActor(), new_key)
    click.echo(f"audit key rotated: records 1 to {r.from_seq - 1} stay under the retired key (key check "
               f"{r.old_check[:12]}), from record {r.from_seq} on the new key (key check {r.new_check[:12]}).")
    click.echo("Now set TRIAL_AUDIT_KEY to the new key and add the old one to TRIAL_AUDIT_KEYS_RETIRED (comma-"
               "separated) on every app server and for the command line; until then they refuse to write.")
