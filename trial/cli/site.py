"""`trial site`: sites."""
from __future__ import annotations

import click

from trial.cli.common import Group, session
from trial.scope import CliActor
from trial.sites.service import create_site


@click.group(cls=Group, help="Trial sites.")
def site():
    pass


@site.command("create", help="Add a site.")
@click.option("--code", required=True, help="two letters and two digits, e.g. AT01")
@click.option("--name", required=True)
@click.option("--country", help="ISO 3166 two-letter code")
@click.option("--target", type=int, default=0, show_default=True, help="target enrollment")
@click.option("--timezone", default="UTC", show_default=True)
def site_create(code, name, country, target, timezone):
    with session() as s:
        st = create_site(s, CliActor(), {"code": code, "name": name, "country": country, "target": target, "timezone": timezone})
        click.echo(f"site {st.code} created")
