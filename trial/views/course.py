"""Session logging, counselling and adherence pages (unblinded roles only)."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _

from trial.consent.withdrawal import gave_option
from trial.course import service
from trial.errors import DomainError
from trial.forms import course as forms
from trial.http import actor, day, db, form_errors, page_request, plabel, protocol_content
from trial.protocol.service import current as current_protocol
from trial.sites.service import visible_sites

bp = Blueprint("course", __name__)


@bp.route("/participants/<study_id>/sessions/new", methods=["GET", "POST"])
def log_session(study_id: str):
    s = db()
    p, _sessions = service.sessions_of(s, actor(), study_id)  # 403/404 before showing the form
    form = forms.session_form(current_protocol(s).content["course"]["techniques"],
                              goals=sorted(service.active_goals(s, p.id)),
                              video=gave_option(s, p.id, "video_recording") is True)
    if form.validate_on_submit():
        try:
            service.log_session(s, actor(), study_id, forms.session_data(form))
            s.commit()
            flash(_("Session logged."))
            return redirect(url_for("enrollment.participant", study_id=study_id))
        except DomainError as e:
            form_errors(form, e)
    return render_template("enrollment/form.html", form=form, title=_("Log a session for %(study_id)s", study_id=study_id)), 400 if form.is_submitted() else 200


@bp.route("/sessions/<int:session_id>/correct", methods=["GET", "POST"])
def correct_session(session_id: int):
    """The site's therapist corrects a logged session, with a reason; the old values stay in the
    audit trail. Anyone else gets 403 or, for a session they may not know of, 404."""
    s = db()
    sess, p = service.session_for_correction(s, actor(), session_id)
    form = forms.session_form(current_protocol(s).content["course"]["techniques"], correction=True,
                              data=service.session_values(sess),
                              goals=sorted(service.active_goals(s, p.id) | set(sess.goals or [])))
    if form.validate_on_submit():
        try:
            service.correct_session(s, actor(), sess.id, {**forms.session_data(form), "reason": form.reason.data})
            s.commit()
            flash(_("Correction saved; the previous values stay in the audit trail."))
            return redirect(url_for("enrollment.participant", study_id=p.study_id) + f"#session-{session_id}")
        except DomainError as e:
            form_errors(form, e)
    return render_template("enrollment/form.html", form=form,
                           title=_("Correct the session of %(day)s for %(study_id)s", day=day(sess.held_on),
                                   study_id=p.study_id)), \
        400 if form.is_submitted() else 200


@bp.route("/participants/<study_id>/counselling/new", methods=["GET", "POST"])
def log_counselling(study_id: str):
    s = db()
    form = forms.CounsellingForm()
    if form.validate_on_submit():
        try:
            service.log_counselling(s, actor(), study_id, {"held_on": form.held_on.data, "attended": form.attended.data,
                                                          "note": form.note.data or None})
            s.commit()
            flash(_("Counselling session logged."))
            return redirect(url_for("enrollment.participant", study_id=study_id))
        except DomainError as e:
            form_errors(form, e)
    return render_template("enrollment/form.html", form=form, title=_("Parent counselling for %(study_id)s", study_id=study_id)), 400 if form.is_submitted() else 200


@bp.route("/adherence")
def adherence():
    s = db()
    filters = {"site_code": request.args.get("site") or None, "arm": request.args.get("arm") or None,
               "search": request.args.get("q") or None}
    content = protocol_content()
    return render_template("course/adherence.html", rows=service.adherence_by_arm(s, actor(), filters["site_code"]),
                           page=service.adherence_page(s, actor(), page_request(), **filters), filters=filters,
                           sites=visible_sites(s, actor()), arms=[a for a in content["arms"] if a["sessions_per_week"]])


@bp.route("/participants/<study_id>/goals/new", methods=["GET", "POST"])
def set_goals(study_id: str):
    """The therapist records the child's goals from the protocol's list after the first session."""
    s = db()
    keys = [g["key"] for g in current_protocol(s).content.get("goals", [])]
    course = service.participant_course(s, actor(), study_id)  # 403/404 before showing the form
    taken = {g["goal"] for g in course.get("goals", []) if g["active"]}
    offered = [k for k in keys if k not in taken]
    form = forms.goals_form([(k, plabel("goal", k)) for k in offered])
    if form.validate_on_submit():
        try:
            service.set_goals(s, actor(), study_id, forms.goals_data(form, offered))
            s.commit()
            flash(_("Goals saved."))
            return redirect(url_for("enrollment.participant", study_id=study_id) + "#goals")
        except DomainError as e:
            form_errors(form, e)
    return render_template("course/goals.html", form=form, offered=offered, study_id=study_id,
                           title=_("Individual goals for %(study_id)s", study_id=study_id)), 400 if form.is_submitted() else 200


@bp.route("/goals/<int:goal_id>/revise", methods=["GET", "POST"])
def revise_goal(goal_id: int):
    s = db()
    g, study_id = service.goal_for_revision(s, actor(), goal_id)
    form = forms.GoalRevisionForm(data={"description": g.description, "active": g.active})
    if form.validate_on_submit():
        try:
            service.revise_goal(s, actor(), goal_id, {"description": form.description.data or None,
                                                      "active": bool(form.active.data), "reason": form.reason.data})
            s.commit()
            flash(_("Goal revised; the previous wording stays in the audit trail."))
            return redirect(url_for("enrollment.participant", study_id=study_id) + "#goals")
        except DomainError as e:
            form_errors(form, e)
    return render_template("enrollment/form.html", form=form,
                           title=_("Revise the goal %(goal)s of %(study_id)s", goal=plabel("goal", g.goal), study_id=study_id)), \
        400 if form.is_submitted() else 200
