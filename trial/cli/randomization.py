"""`trial randomization`: open, verify, rotate-seal-key, simulate, reconcile."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from trial.cli.common import Group, fail, session
from trial.protocol.schema import ProtocolError, parse
from trial.protocol.service import current
from trial.randomize import journal, sealkey
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


@randomization.command("reconcile", help="After `trial backup restore`: replay from the allocation journals "
                       "(TRIAL_ALLOCATION_JOURNAL of every app server, one --journal each) the allocations the restored "
                       "database lacks, in the same slots with the same arms (a child the database lacks gets its slot "
                       "and arm reserved under its study id: the report lists them, with their screening log numbers, "
                       "for the sites to enter again), then open randomization again. Or --none-lost: record the "
                       "operator's signed statement that no allocation was made after the backup (--operator NAME, "
                       "the statement with --statement TEXT or on standard input). Audited. A line that conflicts with "
                       "the database (another slot or arm, a slot held by another child, another randomization) "
                       "changes nothing: every conflict is listed and the exit is 1. --dry-run reports and changes "
                       "nothing (exit 0 when it would reconcile). Exit 0 only when reconciled.")
@click.option("--journal", "journals", multiple=True, type=click.Path(dir_okay=False),
              help="an allocation journal (repeat for each app server's)")
@click.option("--none-lost", is_flag=True, help="sign that no allocation was lost instead (not with --journal)")
@click.option("--operator", help="with --none-lost: the name of the operator who signs")
@click.option("--statement", help="with --none-lost: the statement (else read from standard input)")
@click.option("--dry-run", is_flag=True, help="report what would be done; change nothing")
def randomization_reconcile(journals, none_lost, operator, statement, dry_run):
    if none_lost and not journals and statement is None:
        statement = sys.stdin.read()
    with session() as s:
        report = journal.reconcile(s, CliActor(), list(journals), none_lost=none_lost, dry_run=dry_run,
                                   operator_statement=statement, operator=operator)
        if not report.ok or dry_run:
            s.rollback()
    prefix = "dry run, nothing changed: " if dry_run else ""
    if report.none_lost:
        click.echo(f"{prefix}the statement that no allocation was lost is recorded" if not dry_run else
                   f"{prefix}the statement would be recorded and randomization opened again")
        if not dry_run:
            click.echo("randomization is open again")
        return
    click.echo(f"{prefix}{report.lines} journal line(s) from {len(report.journals)} journal(s)"
               + (f" ({report.duplicates} identical line(s) read twice)" if report.duplicates else ""))
    click.echo(f"present in the database: {len(report.present)}")
    click.echo(f"replayed (allocation missing, child present): {len(report.replayed)}"
               + (": " + ", ".join(report.replayed) if report.replayed else ""))
    click.echo(f"reserved (child missing: the site enters it again): {len(report.reserved)}")
    for r in report.reserved:
        number = (f"screening log number {r.screening_log_number}" if r.screening_log_number
                  else "no screening log number: tell the trial manager")
        click.echo(f"  {r.study_id}  site {r.site}  {number}")
    for w in report.warnings:
        click.echo(f"warning: {w}", err=True)
    for c in report.conflicts:
        click.echo(f"CONFLICT: {c}", err=True)
    if not report.ok:
        fail(f"not reconciled: {len(report.conflicts)} conflict(s); nothing was changed and randomization stays "
             f"{'held' if report.hold else 'as it was'}")
    if dry_run:
        click.echo("the journals agree with the database: reconciling would open randomization again")
    elif report.hold_cleared:
        click.echo("reconciled: randomization is open again")
    else:
        click.echo("reconciled (randomization was not held)")
