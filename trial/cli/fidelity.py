"""`trial fidelity`: the treatment-fidelity sample."""
from __future__ import annotations

import sys

import click

from trial.cli.common import Group, session
from trial.fidelity import service as fidelity
from trial.scope import CliActor


@click.group(cls=Group, help="Treatment fidelity: draw the sessions to rate, verify the draws.")
def fidelity_group():
    pass


fidelity = fidelity_group  # the name trial.cli loads


@fidelity_group.command("draw", help="Draw the protocol's share of each therapist's attended sessions not yet in a "
                        "draw, from a fresh seed (recorded and audited); print each draw.")
@click.option("--email", default=None, help="only this therapist's sessions")
def fidelity_draw(email):
    with session() as s:
        who = fidelity.therapist_by_email(s, email) if email else None
        made = fidelity.draw(s, CliActor(), who)
        for d in made:
            click.echo(f"draw {d.id}: {d.size} of {len(d.population)} sessions (seed {d.seed})")
        if not made:
            click.echo("no sessions to draw from: every attended session is in a draw already")


@fidelity_group.command("verify", help="Derive every draw again from its seed and population; exit 0 if each sample "
                        "on record is what its seed draws, else print the problems and exit 1.")
def fidelity_verify():
    with session() as s:
        problems = fidelity.verify(s)
        n = len(fidelity.draws(s, CliActor()))
    for p in problems:
        click.echo(p)
    if problems:
        sys.exit(1)
    click.echo(f"{n} draw(s) derived again from their seeds: every sample is as recorded")
