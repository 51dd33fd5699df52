"""`trial site`: sites."""
from __future__ import annotations

import click

from trial.catalogue import LANGUAGES
from trial.cli.common import Group, session
from trial.scope import CliActor
from trial.sites.service import create_site, list_sites, update_site

LANGUAGE_HELP = ("a language the site's families consent in (repeat the option, or separate by commas), the default "
                 f"first; one of {', '.join(LANGUAGES)}")


def _languages(given: tuple[str, ...]) -> list[str] | None:
    """``--language de --language en`` or ``--language de,en``: the list, or None when not given."""
    langs = [x.strip() for part in given for x in part.split(",") if x.strip()]
    return langs or None


@click.group(cls=Group, help="Trial sites.")
def site():
    pass


@site.command("create", help="Add a site.")
@click.option("--code", required=True, help="two letters and two digits, e.g. AT01")
@click.option("--name", required=True)
@click.option("--country", help="ISO 3166 two-letter code")
@click.option("--target", type=int, default=0, show_default=True, help="target enrollment")
@click.option("--timezone", default="UTC", show_default=True)
@click.option("--language", "languages", multiple=True, help=LANGUAGE_HELP)
def site_create(code, name, country, target, timezone, languages):
    with session() as s:
        st = create_site(s, CliActor(), {"code": code, "name": name, "country": country, "target": target, "timezone": timezone,
                                         "languages": _languages(languages)})
        click.echo(f"site {st.code} created")


COLUMNS = ("code", "name", "country", "target", "timezone", "languages", "open")


@site.command("list", help="Every site: code, name, country, target enrollment, time zone, languages and whether it "
              "is open.")
def site_list():
    with session() as s:
        rows = [(st.code, st.name, st.country or "-", str(st.target), st.timezone, ",".join(st.languages or []) or "-",
                 "yes" if st.is_open else "no")
                for st in list_sites(s)]
    widths = [max(len(r[i]) for r in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    for r in [COLUMNS, *rows]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


@site.command("update", help="Change a site's name, target enrollment, time zone (the visit windows follow a new "
              "time zone) or languages. Audited.")
@click.option("--code", required=True, help="the site's code, e.g. AT01")
@click.option("--name", default=None)
@click.option("--target", type=int, default=None, help="target enrollment")
@click.option("--timezone", default=None, help="an IANA time zone, e.g. Europe/Vienna")
@click.option("--language", "languages", multiple=True, help=LANGUAGE_HELP + " (replaces the site's languages)")
def site_update(code, name, target, timezone, languages):
    data = {k: v for k, v in (("name", name), ("target", target), ("timezone", timezone),
                              ("languages", _languages(languages))) if v is not None}
    with session() as s:
        st = update_site(s, CliActor(), code, data, reason="updated at the command line")
        click.echo(f"site {st.code} updated" if data else f"site {st.code}: nothing to change")
