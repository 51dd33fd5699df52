"""`trial audit`: the audit trail."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from trial.audit import anchors, replay, rotation
from trial.audit import service as audit_service
from trial.cli.common import Group, fail, session
from trial.ops.anchoring import anchor_and_mail
from trial.scope import CliActor


@click.group(cls=Group, help="The audit trail.")
def audit():
    pass


@audit.command("verify", help="Check the audit hash chain; exit 0 if intact, else name the first broken record "
               "(or the records under a retired key that TRIAL_AUDIT_KEYS_RETIRED does not hold). --anchors FILE: "
               "also against the heads anchored there (`trial audit anchor`), naming the anchor line the chain "
               "falls short of (anchors written before a restore's marker line and beyond the restored head are "
               "superseded: listed, not failures); --data: also replay the trail of every audited table (the "
               "clinical data, queries, locks, signatures, sites, accounts, roles and grants; "
               "trial/audit/replay.py lists them) and name, by table and id, each field that differs from it, each row it never created (\"no creation "
               "record\") and each row it created that is gone (\"row missing\").")
@click.option("--anchors", "anchor_path", type=click.Path(dir_okay=False, path_type=Path),
              help="an anchor file written by `trial audit anchor`")
@click.option("--data", "data", is_flag=True, help="compare the audited tables with their audit trail")
def audit_verify(anchor_path: Path | None, data: bool):
    with session() as s:
        res = audit_service.verify(s)
        checked = anchors.check_anchors(s, anchor_path) if anchor_path else None
        differences = replay.compare(s) if data else []
    if not res.ok:
        fail(f"audit chain not verified: {res.problem}" if res.unverified
             else f"audit chain broken at record {res.broken_seq}: {res.problem}")
    if checked is not None and not checked.ok:
        fail("audit chain behind its anchors: " + "; ".join(checked.problems))
    if differences:
        shown = "; ".join(str(d) for d in differences[:50])
        more = f" (and {len(differences) - 50} more)" if len(differences) > 50 else ""
        fail(f"data differ from the audit trail in {len(differences)} places: {shown}{more}")
    click.echo(f"audit chain intact: {res.checked} records"
               + (f"; {checked.anchors - len(checked.superseded)} anchors hold" if checked is not None else "")
               + (f"; {len(checked.superseded)} superseded by a restore (`trial backup restore`): "
                  + ", ".join(checked.superseded[:10]) if checked is not None and checked.superseded else "")
               + ("; every clinical row matches its trail" if data else ""))


@audit.command("anchor", help="Append the audit chain's head (record number, hash, MAC, record and seal counts, "
               "time) as one JSON line to the anchor file: --to FILE, else TRIAL_AUDIT_ANCHORS. Keep it on another "
               "volume or machine; run it daily (hard locks anchor themselves when TRIAL_AUDIT_ANCHORS is set). With "
               "TRIAL_SMTP_URL set, the line is e-mailed to every manager too: their inboxes are a copy outside the "
               "database.")
@click.option("--to", "to", type=click.Path(dir_okay=False, path_type=Path), help="the anchor file")
def audit_anchor(to: Path | None):
    if anchors.anchor_file(to) is None:
        fail("no anchor file: give --to FILE or set TRIAL_AUDIT_ANCHORS")
    with session() as s:
        path, line, mailed = anchor_and_mail(s, to)
    click.echo(f"audit head anchored in {path}: record {line['seq']}, {line['records']} records, {line['seals']} seals"
               + (f"; its e-mail to {mailed} managers queued (sent at once unless the relay is down: `trial mail "
                  "status`)" if mailed else ""))


@audit.command("rotate-key", help="Read a new audit key (at least 32 characters) on standard input and continue the "
               "chain under it from its next record. Then set TRIAL_AUDIT_KEY to the new key and add the old one to "
               "TRIAL_AUDIT_KEYS_RETIRED, on every app server and wherever the command line runs (README: Rotating "
               "the keys). Audited.")
def audit_rotate_key():
    new_key = sys.stdin.readline().rstrip("\r\n")
    with session() as s:
        r = rotation.rotate_key(s, CliActor(), new_key)
    click.echo(f"audit key rotated: records 1 to {r.from_seq - 1} stay under the retired key (key check "
               f"{r.old_check[:12]}), from record {r.from_seq} on the new key (key check {r.new_check[:12]}).")
    click.echo("Now set TRIAL_AUDIT_KEY to the new key and add the old one to TRIAL_AUDIT_KEYS_RETIRED (comma-"
               "separated) on every app server and for the command line; until then they refuse to write.")
