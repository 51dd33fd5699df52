"""`trial mail`: the e-mail outbox."""
from __future__ import annotations

import click

import trial.surveys.service  # noqa: F401  (fills in the survey e-mails' links when they are sent)
from trial.cli.common import Group, fail, session
from trial.notify.service import dead_letters, outbox_status, retry_dead, send_pending, smtp_url, undelivered_sae


@click.group(cls=Group, help="E-mail notifications (relay: TRIAL_SMTP_URL).")
def mail():
    pass


@mail.command("send", help="Send the queued e-mails that are due through TRIAL_SMTP_URL (a failed one waits 1, 2, "
              "4 ... minutes, at most an hour, before its next attempt; after TRIAL_MAIL_ATTEMPTS it is a dead "
              "letter). Exit status: 2 while an e-mail about a serious adverse event is undelivered (waiting or "
              "dead), else 1 while dead letters exist (see `trial mail status`), else 0 (e-mails still waiting "
              "for their next attempt are not a failure).")
def mail_send():
    if not smtp_url():
        fail("TRIAL_SMTP_URL is not set: notifications are in-app only, nothing is queued")
    with session() as s:
        sent, failed = send_pending(s, limit=10_000)
        st = outbox_status(s)
        sae, dead = undelivered_sae(s), dead_letters(s)
    click.echo(f"{sent} sent, {failed} failed, {st['pending']} still queued, {dead['total']} dead letters")
    if sae:
        fail(f"{sae} e-mail(s) about serious adverse events undelivered: see `trial mail status`", 2)
    if dead["total"]:
        fail(f"{dead['total']} dead letter(s): see `trial mail status`; `trial mail status --retry-dead` queues "
             "them again once the relay works")


@mail.command("status", help="The outbox: e-mails waiting (and how many are due now), dead letters by kind (sae, "
              "randomization, anchor, account, digest, other), the oldest unsent, and each dead letter's recipient, "
              "subject, attempts and last error (never its body). --retry-dead queues every dead letter again, due "
              "at once with its attempts counted afresh (after the relay was fixed; logged), for `trial mail send`.")
@click.option("--retry-dead", "retry", is_flag=True, help="queue the dead letters again")
def mail_status(retry: bool):
    with session() as s:
        queued = retry_dead(s) if retry else 0
        st = outbox_status(s)
    if retry:
        click.echo(f"{queued} dead letter(s) queued again" + ("; `trial mail send` sends them" if queued else ""))
    click.echo(f"waiting: {st['pending']} ({st['due']} due now)")
    dead = st["dead"]
    click.echo("dead letters: " + (", ".join(f"{n} {kind}" for kind, n in sorted(dead.items())) if dead else "none"))
    oldest = st["oldest"]
    if oldest is not None:
        age = st["now"] - oldest.created_at
        click.echo(f"oldest unsent: {oldest.created_at:%Y-%m-%d %H:%M} UTC ({_age(age.total_seconds())} ago, "
                   f"{oldest.kind or 'other'}, {oldest.attempts} attempts)")
    for m in st["dead_letters"]:
        click.echo(f"dead {m.id} [{m.kind or 'other'}] to {m.recipient}: {m.subject!r}, {m.attempts} attempts, given up "
                   f"{m.dead_at:%Y-%m-%d %H:%M} UTC; last error: {m.last_error or '-'}")


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
