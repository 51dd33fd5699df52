"""Status events and deviations (coordinators)."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, url_for
from flask_babel import gettext as _

from trial.errors import DomainError
from trial.forms import status as forms
from trial.http import actor, db, form_errors
from trial.status import service

bp = Blueprint("status", __name__)


def _handle(form, fn, study_id: str, title: str, done: str):
    if form.validate_on_submit():
        try:
            fn(db(), actor(), study_id, {k: v for k, v in form.data.items() if k not in ("csrf_token", "submit")})
            db().commit()
            flash(done)
            return redirect(url_for("enrollment.participant", study_id=study_id))
        except DomainError as e:
            form_errors(form, e)
    return render_template("enrollment/form.html", form=form, title=title), 400 if form.is_submitted() else 200


@bp.route("/participants/<study_id>/events/new", methods=["GET", "POST"])
def event(study_id: str):
    return _handle(forms.EventForm(), service.record_event, study_id, _("Status event for %(study_id)s", study_id=study_id),
                   _("Event recorded."))


@bp.route("/participants/<study_id>/consent-withdrawals/new", methods=["GET", "POST"])
def withdraw(study_id: str):
    return _handle(forms.WithdrawalForm(), service.record_withdrawal, study_id,
                   _("Withdraw consent for %(study_id)s", study_id=study_id), _("Withdrawal of consent recorded."))


@bp.route("/participants/<study_id>/deviations/new", methods=["GET", "POST"])
def deviation(study_id: str):
    return _handle(forms.DeviationForm(), service.record_deviation, study_id,
                   _("Protocol deviation for %(study_id)s", study_id=study_id), _("Deviation recorded."))
