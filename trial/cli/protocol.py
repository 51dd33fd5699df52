"""`trial protocol`: protocol versions."""
from __future__ import annotations

import json

import click

from trial.cli.common import Group, session
from trial.protocol.schema import json_schema
from trial.protocol.service import load_file
from trial.scope import CliActor
from trial.visitplan.service import replan_all


@click.group(cls=Group, help="Protocol versions.")
def protocol():
    pass


@protocol.command("load", help="Validate a protocol file and make it the current protocol version.")
@click.argument("path", type=click.Path(dir_okay=False))
def protocol_load(path):
    with session() as s:
        pv = load_file(s, CliActor(), path)
        replan_all(s)  # the visit windows of every randomized child under the version now in force
        click.echo(f"protocol version {pv.version} ({pv.trial_key}, sha256 {pv.sha256[:12]}) is current")


@protocol.command("schema", help="Print the JSON Schema of a protocol file (generated from the protocol's declared "
                                 "models), for an editor to check and complete protocol files: e.g. `trial protocol "
                                 "schema > protocol.schema.json`, then point the editor's TOML schema setting at it. "
                                 "References between sections are checked by `trial protocol load`.")
@click.option("--indent", type=click.IntRange(0, 8), default=2, show_default=True, help="spaces per level")
def protocol_schema(indent):
    click.echo(json.dumps(json_schema(), indent=indent or None, ensure_ascii=False))
