"""`trial demo`: demo data."""
from __future__ import annotations

import click

from trial.cli.common import session
from trial.demo import load_demo


@click.command("demo", help="Load demo sites, users and synthetic participants into an empty database; print the logins.")
def demo_cmd():
    with session() as s:
        logins = load_demo(s)
    click.echo("Demo loaded. Logins (e-mail / password):")
    for role, email, password in logins:
        click.echo(f"  {role:<13} {email:<32} {password}")
