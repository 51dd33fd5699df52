"""`trial audit`: the audit trail."""
from __future__ import annotations

import click

from trial.audit import service as audit_service
from trial.cli.common import Group, fail, session


@click.group(cls=Group, help="The audit trail.")
def audit():
    pass


@audit.command("verify", help="Check the audit hash chain; exit 0 if intact, else name the first broken record.")
def audit_verify():
    with session() as s:
        res = audit_service.verify(s)
    if not res.ok:
        fail(f"audit chain broken at record {res.broken_seq}: {res.problem}")
    click.echo(f"audit chain intact: {res.checked} records")
