"""`trial checks`: the periodic data checks."""
from __future__ import annotations

import click
from sqlalchemy import func, select

from trial.cli.common import Group, session
from trial.notify.service import send_pending
from trial.outcomes.service import check_missing_forms, missing_form_candidates
from trial.participants.models import Allocation, Participant
from trial.trialstate.service import active_lock_id


@click.group(cls=Group, help="Automatic data checks (also run on every read of the visit worklists).")
def checks():
    pass


@checks.command("run", help="Raise a query for every form still missing once its visit window has closed "
                "(at most one open query per form: running it again raises nothing new), then send the queued "
                "e-mail. Meant for a daily timer. Does nothing while a lock is in force.")
@click.option("--on", "on", default=None, type=click.DateTime(formats=["%Y-%m-%d"]),
              help="Check as of this date (YYYY-MM-DD; default: each site's today).")
def checks_run(on):
    day = on.date() if on else None
    with session() as s:
        if active_lock_id(s) is not None:
            click.echo("a lock is in force: no checks run (the data are frozen)")
            return
        people = s.execute(select(func.count()).select_from(Allocation)).scalar_one()
        raised = check_missing_forms(s, missing_form_candidates(s, select(Participant), day), day)
        s.commit()
        sent, failed = send_pending(s)
    click.echo(f"{people} randomized participants checked; {raised} new queries for missing forms"
               + (f"; {sent} e-mails sent" if sent else "") + (f"; {failed} e-mails could not be sent" if failed else ""))
