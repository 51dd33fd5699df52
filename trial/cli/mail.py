"""`trial mail`: the e-mail outbox."""
from __future__ import annotations

import click
from sqlalchemy import func, select

from trial.cli.common import Group, fail, session
from trial.notify.models import MailMessage
from trial.notify.service import send_pending, smtp_url


@click.group(cls=Group, help="E-mail notifications (relay: TRIAL_SMTP_URL).")
def mail():
    pass


@mail.command("send", help="Send the queued e-mails through TRIAL_SMTP_URL (those a relay that was down left "
              "queued); exit 1 if some could not be sent.")
def mail_send():
    if not smtp_url():
        fail("TRIAL_SMTP_URL is not set: notifications are in-app only, nothing is queued")
    with session() as s:
        sent, failed = send_pending(s, limit=10_000)
        waiting = s.execute(select(func.count()).select_from(MailMessage).where(MailMessage.sent_at.is_(None))).scalar()
    click.echo(f"{sent} sent, {failed} failed, {waiting} still queued")
    if failed:
        raise SystemExit(1)
