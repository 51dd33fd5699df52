"""`trial checks`: the periodic data checks."""
from __future__ import annotations

import click
from sqlalchemy import func, select

from trial.cli.common import Group, session
from trial.cli.lock import watch_builds
from trial.course.service import recount, tally_stale
from trial.digest.service import queue_digests
from trial.exports.bundle import sweep_folders
from trial.notify.service import send_pending
from trial.outcomes.service import check_missing_forms, missing_form_candidates
from trial.oversight.signoff import check_all as check_signoff_digests
from trial.participants.models import Allocation, Participant
from trial.randomize import journalfile
from trial.surveys.service import purge_attempts, send_reminders
from trial.trialstate.service import active_lock_id
from trial.visitplan.service import ensure_current, replan, stale


@click.group(cls=Group, help="Automatic data checks (the missing-form check also runs on every read of the overdue "
             "list, for the children it shows).")
def checks():
    pass


def _housekeeping(s) -> None:
    """What runs even under a lock (no clinical data): the allocation journal's pending lines (a
    process killed after the COMMIT, a full disk), the builds' watch, old attempts at survey links."""
    try:
        flushed = journalfile.flush_pending(s)
    except OSError as e:
        s.rollback()
        click.echo(f"error: allocation journal lines are pending and cannot be appended: {e}", err=True)
    else:
        if flushed:
            click.echo(f"appended {flushed} pending allocation journal line(s) to {journalfile.journal_path()}")
    watch_builds(s)
    if purged := purge_attempts(s):
        s.commit()
        click.echo(f"deleted {purged} attempts at survey links older than the rate limits' window")


@checks.command("run", help="Raise a query for every form still missing once its visit window has closed "
                "(at most one open query per form: running it again raises nothing new), check the visit plan "
                "(the worklists' index) and the session tallies (adherence's) against the records and re-derive "
                "any row that differs, queue this week's digest e-mail for each coordinator and assessor who has none yet "
                "(the visits coming due in the next seven days and the queries waiting for them, per site; never an "
                "arm; one a week however often this runs, none when there is nothing to tell, none without "
                "TRIAL_SMTP_URL, none for a user who opted out), queue the reminders due for the parents' surveys (the "
                "protocol's [surveys] reminder_days after the link was sent, in the family's language, until answered, "
                "revoked or expired; none after a withdrawal from the follow-up; none without TRIAL_SMTP_URL), then "
                "send the queued e-mail. Meant for a daily "
                "timer. Does nothing while a lock is in force, except the builds' housekeeping it always does: "
                "a hard lock's build no worker picked up is started again (once; then failed, naming `trial lock "
                "rebuild`), and the temporary folders of builds whose process was killed are removed; and, with "
                "TRIAL_ALLOCATION_JOURNAL set, the journal lines left pending in the database (a process killed "
                "after an allocation's COMMIT, a full disk) are appended; and the attempts at the parents' survey links "
                "older than the rate limits' longest window (an hour) are deleted (they count for no limit).")
@click.option("--on", "on", default=None, type=click.DateTime(formats=["%Y-%m-%d"]),
              help="Check as of this date (YYYY-MM-DD; default: each site's today).")
def checks_run(on):
    day = on.date() if on else None
    for folder in sweep_folders():  # a build killed before it could tidy up left unblinded data there
        click.echo(f"removed the temporary folder of a build whose process is gone: {folder}")
    with session() as s:
        _housekeeping(s)
        if active_lock_id(s) is not None:
            click.echo("a lock is in force: no checks run (the data are frozen)")
            return
        people = s.execute(select(func.count()).select_from(Allocation)).scalar_one()
        replanned = ensure_current(s)
        wrong = stale(s)
        if wrong:
            replan(s, [pid for pid, _ in wrong])
        miscounted = tally_stale(s)
        recount(s, miscounted)
        raised = check_missing_forms(s, missing_form_candidates(s, select(Participant), day), day)
        digests = queue_digests(s, day)
        signatures = check_signoff_digests(s)  # casebook signatures whose data changed around the audit trail
        reminders = send_reminders(s)
        s.commit()
        sent, failed = send_pending(s)
    if replanned:
        click.echo("visit plan re-derived for every randomized child (under the protocol version and site time zones "
                   "in force)")
    if signatures:
        click.echo(f"casebook sign-offs: {signatures} invalidated (their data no longer match what was signed)")
    if miscounted:
        click.echo(f"session tallies: {len(miscounted)} participants counted again (they differed from the sessions)")
    if wrong:
        click.echo(f"visit plan: {len(wrong)} rows of {len({pid for pid, _ in wrong})} participants re-derived "
                   "(they differed from the records)")
    click.echo(f"{people} randomized participants checked; {raised} new queries for missing forms"
               + f"; {digests} weekly digests queued; {reminders} survey reminders queued" + (f"; {sent} e-mails sent" if sent else "")
               + (f"; {failed} e-mails could not be sent" if failed else ""))
