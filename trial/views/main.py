"""The home page: what the logged-in user can do next."""
from __future__ import annotations

from flask import Blueprint, render_template

from trial.consent import service as consent
from trial.dashboard.service import home_summary
from trial.grants.service import count_pending
from trial.http import actor, db
from trial.notify.service import dead_letters, notifications_for
from trial.outcomes.service import due_this_week
from trial.oversight import signoff
from trial.paging import PageRequest
from trial.queries.service import waiting_counts
from trial.safety import service as safety
from trial.views.dashboard import progress

bp = Blueprint("main", __name__)


@bp.route("/")
def home():
    s = db()
    due = due_this_week(s, actor())
    notes = notifications_for(s, actor())  # (the references given to those written before they had one)
    # the investigator's casebooks to sign (a signature the digest check finds out of date is invalidated)
    to_sign = signoff.worklist_page(s, actor(), PageRequest(1, 5)) if actor().has_role(signoff.ROLE) else None
    s.commit()  # a visit plan re-derived for a new protocol version or site zone is kept (as the worklists do)
    return render_template("main/home.html", summary=home_summary(s, actor()),
                           notifications=notes, grants_waiting=count_pending(s, actor()),
                           queries=waiting_counts(s, actor()), due_this_week=due,
                           saes=safety.views(s, safety.waiting_for_acknowledgement(s, actor())),
                           progress=progress() if actor().has_role("manager") else None,
                           consents_due=consent.consents_due(s, actor()) if actor().has_role(*consent.READERS) else [],
                           undelivered=dead_letters(s) if actor().has_role("manager", "admin") else None,
                           signoffs_waiting=to_sign)
