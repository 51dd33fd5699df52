"""`trial config`: the settings (TRIAL_* environment variables) as declared in trial.settings."""
from __future__ import annotations

import re
import textwrap

import click

from trial import settings
from trial.cli.common import Group

WIDTH = 100


@click.group(cls=Group, help="The settings: the TRIAL_* environment variables the app, the command line and "
             "gunicorn read.")
def config():
    pass


@config.command("show", help="Print every setting: its variable, the value this environment gives it (secret keys "
                "only as 'set (hidden)', a URL's password as ***), its default and what it means. Exit 1, after "
                "the list, if a value cannot be used (the error names the variable). What production requires "
                "(the three keys) is checked when the app starts.")
@click.option("--markdown", is_flag=True,
              help="Print README's configuration table (variable, default, meaning) instead, made from the same "
                   "declaration; no values.")
def config_show(markdown):
    rows = settings.describe()
    if markdown:
        click.echo(markdown_table(rows))
        return
    name_width = max(len(r.variable) for r in rows)
    for i, r in enumerate(rows):
        if i:
            click.echo()
        click.echo(f"{r.variable:<{name_width}}  {r.value}")
        click.echo(_wrap(f"default: {_plain(r.default)}", "    ", "      "))
        click.echo(_wrap(_plain(r.meaning), "    ", "    "))
    settings.current()  # a value that cannot be used: one line naming it (ConfigError), exit 1


def markdown_table(rows) -> str:
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{r.variable}` | {r.default} | {r.meaning} |" for r in rows]
    return "\n".join(lines)


def _wrap(text: str, first: str, rest: str) -> str:
    return textwrap.fill(text, WIDTH, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False,
                         break_long_words=False)


def _plain(markdown: str) -> str:
    """A cell's text for a terminal: without the markdown's emphasis and code quotes."""
    return re.sub(r"\*\*|`", "", markdown)
