"""`trial protocol`: protocol versions."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from trial.cli.common import Group, session
from trial.outcomes.amendments import preview
from trial.protocol.diff import describe
from trial.protocol.schema import json_schema, parse
from trial.protocol.service import load_file, load_warnings, version
from trial.scope import CliActor
from trial.visitplan.service import replan_all


@click.group(cls=Group, help="Protocol versions.")
def protocol():
    pass


@protocol.command("load", help="Validate a protocol file and make it the current protocol version. With "
                               "--dry-run: validate it, print how it differs from the version in force and what "
                               "would follow (children re-planned, forms newly due, queries that would open), and "
                               "change nothing; exit 0 when it would load, 1 naming every fault when not. A visit or "
                               "instrument an amendment adds is due for children randomized on or after its "
                               "effective_from (default: the day it is loaded); applies_to = \"all\" adds it where "
                               "a child's window is still open.")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="validate and report the consequences; change nothing")
def protocol_load(path, dry_run):
    if dry_run:
        return _dry_run(path)
    with session() as s:
        pv = load_file(s, CliActor(), path)
        replan_all(s)  # the visit windows of every randomized child under the version now in force
        click.echo(f"protocol version {pv.version} ({pv.trial_key}, sha256 {pv.sha256[:12]}) is current")
        _warn(pv.content)


def _warn(content: dict) -> None:
    """What the file should be told though it loads (trial.protocol.service.load_warnings), on stderr."""
    for line in load_warnings(content):
        click.echo(f"warning: {line}", err=True)


def _dry_run(path: str) -> None:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise click.ClickException(f"cannot read {path}: {e.strerror}") from e
    with session() as s:
        p = preview(s, CliActor(), text, Path(path).name)
        s.rollback()
    if p.problems or p.message:
        for key, why in p.problems.items():
            click.echo(f"{key}: {why}")
        click.echo(f"would not load: {p.message}", err=True)
        sys.exit(1)
    for line in p.changes or ["the same as the version in force: loading it changes nothing"]:
        click.echo(line)
    click.echo(f"would be version {p.version}; children re-planned: {p.replanned}; forms newly due: {p.newly_due}; "
               f"queries that would open: {p.queries}")
    click.echo("dry run: nothing was changed")
    _warn(parse(text))  # (it parsed: the preview loaded it)


@protocol.command("show", help="Print the version in force (or --version N) as the TOML file it was loaded from.")
@click.option("--version", "number", type=click.IntRange(1), default=None, help="a version number (default: in force)")
def protocol_show(number):
    with session() as s:
        click.echo(version(s, number).source, nl=False)


@protocol.command("diff", help="Print how version B differs from version A: added, removed and changed visits, "
                               "instruments, fields and labels.")
@click.argument("a", type=click.IntRange(1))
@click.argument("b", type=click.IntRange(1))
def protocol_diff(a, b):
    with session() as s:
        lines = describe(version(s, a).content, version(s, b).content)
    for line in lines or [f"versions {a} and {b} are the same protocol"]:
        click.echo(line)


@protocol.command("schema", help="Print the JSON Schema of a protocol file (generated from the protocol's declared "
                                 "models), for an editor to check and complete protocol files: e.g. `trial protocol "
                                 "schema > protocol.schema.json`, then point the editor's TOML schema setting at it. "
                                 "References between sections are checked by `trial protocol load`.")
@click.option("--indent", type=click.IntRange(0, 8), default=2, show_default=True, help="spaces per level")
def protocol_schema(indent):
    click.echo(json.dumps(json_schema(), indent=indent or None, ensure_ascii=False))
