"""Session logging, counselling and adherence pages (unblinded roles only)."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, url_for

from trial.course import service
from trial.errors import DomainError
from trial.forms import course as forms
from trial.http import actor, db, form_errors
from trial.protocol.service import current as current_protocol

bp = Blueprint("course", __name__)


@bp.route("/participants/<study_id>/sessions/new", methods=["GET", "POST"])
def log_session(study_id: str):
    s = db()
    form = forms.session_form(current_protocol(s).content["course"]["techniques"])
    if form.validate_on_submit():
        data = {"held_on": form.held_on.data, "attendance": form.attendance.data, "minutes": form.minutes.data,
                "techniques": form.techniques.data, "note": form.note.data or None,
                "engagement": int(form.engagement.data) if form.engagement.data else None}
        try:
            service.log_session(s, actor(), study_id, data)
            s.commit()
            flash("Session logged.")
            return redirect(url_for("enrollment.participant", study_id=study_id))
        except DomainError as e:
            form_errors(form, e)
    else:
        service.sessions_of(s, actor(), study_id)  # 403/404 before showing the form
    return render_template("enrollment/form.html", form=form, title=f"Log a session for {study_id}"), 400 if form.is_submitted() else 200


@bp.route("/participants/<study_id>/counselling/new", methods=["GET", "POST"])
def log_counselling(study_id: str):
    s = db()
    form = forms.CounsellingForm()
    if form.validate_on_submit():
        try:
            service.log_counselling(s, actor(), study_id, {"held_on": form.held_on.data, "attended": form.attended.data,
                                                          "note": form.note.data or None})
            s.commit()
            flash("Counselling session logged.")
            return redirect(url_for("enrollment.participant", study_id=study_id))
        except DomainError as e:
            form_errors(form, e)
    return render_template("enrollment/form.html", form=form, title=f"Parent counselling for {study_id}"), 400 if form.is_submitted() else 200


@bp.route("/adherence")
def adherence():
    return render_template("course/adherence.html", rows=service.adherence_by_arm(db(), actor()))
