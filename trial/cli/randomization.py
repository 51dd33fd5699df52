"""`trial randomization`: open, verify, rotate-seal-key, simulate."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from trial.cli.common import Group, fail, session
from trial.protocol.schema import ProtocolError, parse
from trial.protocol.service import current
from trial.randomize import sealkey
from trial.randomize import service as randomize_service
from trial.randomize.simulate import format_report, simulate
from trial.scope import CliActor
from trial.sites.service import list_sites


@click.group(cls=Group, help="Randomization lists, verification and design simulation.")
def randomization():
    pass


@randomization.command("open", help="Generate the allocation lists from a fresh CSPRNG seed, seal the seed, "
                       "record and print the commitment (the hash is alone on the last line).")
def randomization_open():
    with session() as s:
        row = randomize_service.open_randomization(s, CliActor())
        strata = len(row.design.get("initial_strata") or {}) or 1
        click.echo(f"randomization open: method {row.method}, {strata} strata; the seed is sealed until unblinding")
        click.echo("commitment (SHA-256 over the design and the seed):")
        click.echo(row.commitment)


@randomization.command("verify", help="After unblinding: regenerate every list from the revealed seed, check the "
                       "commitment and every allocation. Exit 0 only if all match.")
def randomization_verify():
    with session() as s:
        res = randomize_service.verify(s, CliActor())
    for p in res.problems:
        click.echo(f"MISMATCH: {p}", err=True)
    if not res.ok:
        fail(f"verification failed: {len(res.problems)} problem(s) in {res.checked} allocations")
    click.echo(f"verified: the commitment matches and all {res.checked} allocations follow the lists")


@randomization.command("rotate-seal-key", help="Read a new seal key (a Fernet key) on standard input and re-seal "
                       "every sealed seed under it (the key in force, TRIAL_SEAL_KEY, opens them). Then set "
                       "TRIAL_SEAL_KEY to the new key on every app server and for the command line (README: Rotating "
                       "the keys). Audited.")
def randomization_rotate_seal_key():
    new_key = sys.stdin.readline().rstrip("\r\n")
    with session() as s:
        n = sealkey.rotate_seal_key(s, CliActor(), new_key)
    click.echo(f"seal key rotated: {n} sealed seed(s) re-sealed under the new key. Now set TRIAL_SEAL_KEY to the new "
               "key on every app server and for the command line; the old key no longer opens the seed.")


@randomization.command("simulate", help="Simulate the protocol's randomization design: imbalance between arms overall "
                       "and per site, and how often a coordinator guessing the arm furthest behind is right.")
@click.option("--participants", type=click.IntRange(1, 1_000_000), default=364, show_default=True)
@click.option("--runs", type=click.IntRange(1, 100_000), default=200, show_default=True)
@click.option("--sites", "n_sites", type=click.IntRange(1, 1000), help="number of sites (default: the trial's sites, else 10)")
@click.option("--protocol", "protocol_path", type=click.Path(dir_okay=False), help="a protocol file instead of the current protocol")
def randomization_simulate(participants, runs, n_sites, protocol_path):

    if protocol_path:
        try:
            content = parse(Path(protocol_path).read_text())
        except (OSError, ProtocolError) as e:
            fail(str(e))
        codes = [f"S{i:02d}" for i in range(1, (n_sites or 10) + 1)]
    else:
        with session() as s:
            content = current(s).content
            codes = [x.code for x in list_sites(s)]
        if n_sites or not codes:
            codes = [f"S{i:02d}" for i in range(1, (n_sites or 10) + 1)]
    r = content["randomization"]
    res = simulate([(a["key"], a["weight"]) for a in content["arms"]], r["block_sizes"], r["method"], codes,
                   participants, runs, r["minimization"]["probability"], r["minimization"]["imbalance"])
    click.echo(format_report(res))
