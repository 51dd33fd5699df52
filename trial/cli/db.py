"""`trial db`: the schema."""
from __future__ import annotations

import click

from trial.cli.common import Group, session
from trial.db import make_engine
from trial.migrate import upgrade
from trial.protocol.service import ensure_default
from trial.scope import CliActor


@click.group(cls=Group, help="Database schema.")
def db():
    pass


@db.command("upgrade", help="Create or migrate the database to the newest schema; load the default protocol if none is loaded.")
def db_upgrade():
    engine = make_engine()
    upgrade(engine)
    engine.dispose()
    with session() as s:
        pv = ensure_default(s, CliActor())
    click.echo("database is at the newest schema" + (f"; loaded protocol version {pv.version} ({pv.trial_key})" if pv else ""))
