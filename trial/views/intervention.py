"""The intervention as delivered: the therapists and their credentials, treatment fidelity (the
manager's report and draw, the therapist's ratings)."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _

from trial.auth.models import User
from trial.catalogue import N_, Msg
from trial.credentials import service as credentials
from trial.errors import DomainError, NotFound
from trial.fidelity import service as fidelity
from trial.forms import course as forms
from trial.http import actor, db, form_errors, is_page_error, plabel, say

bp = Blueprint("intervention", __name__)


@bp.route("/therapists")
def therapists():
    s = db()
    return render_template("course/therapists.html", rows=credentials.therapists(s, actor()),
                           warn_days=credentials.WARN_DAYS, may_record=actor().has_role("admin"))


@bp.route("/therapists/<int:user_id>/credentials/new", methods=["GET", "POST"])
def new_credential(user_id: int):
    s = db()
    u = s.get(User, user_id)
    if u is None:
        raise NotFound(Msg(N_("No user %(id)s."), id=user_id))
    form = forms.CredentialForm()
    form.kind.choices = [(k["key"], f'{k["key"]} – {plabel("credential", k["key"])}') for k in credentials.kinds(s)]
    if form.validate_on_submit():
        try:
            credentials.record(s, actor(), u, {"kind": form.kind.data, "number": form.number.data,
                                               "issuer": form.issuer.data or None, "valid_from": form.valid_from.data,
                                               "valid_to": form.valid_to.data})
            s.commit()
            flash(_("Credential recorded."))
            return redirect(url_for("intervention.therapists"))
        except DomainError as e:
            form_errors(form, e)
    return render_template("enrollment/form.html", form=form,
                           title=_("A credential of %(name)s", name=u.name)), 400 if form.is_submitted() else 200


@bp.route("/fidelity")
def fidelity_page():
    s = db()
    a = actor()
    report = fidelity.report(s, a, request.args.get("site") or None) if a.has_role("manager") else None
    due = fidelity.due(s, a)
    return render_template("course/fidelity.html", report=report, due=due, scale=fidelity.scale(s),
                           draws=fidelity.draws(s, a) if report is not None else [],
                           delivered=fidelity.delivered_by_arm(s, a) if report is not None else None)


@bp.route("/fidelity/draw", methods=["POST"])
def draw():
    s = db()
    try:
        made = fidelity.draw(s, actor())
        s.commit()
        flash(_("%(n)s draw(s) made: %(k)s sessions to rate.", n=len(made), k=sum(d.size for d in made)) if made
              else _("No new sessions to draw from: every attended session is in a draw already."))
    except DomainError as e:
        if is_page_error(e):  # a lock (423), a forbidden role: the page's own answer
            raise
        s.rollback()
        flash(say(e.message), "error")
    return redirect(url_for("intervention.fidelity_page"))


@bp.route("/sessions/<int:session_id>/fidelity", methods=["GET", "POST"])
def rate(session_id: int):
    s = db()
    f = fidelity.scale(s)
    item = next((x for x in fidelity.due(s, actor()) if x["session"] == session_id), None)
    if item is None:
        raise NotFound(N_("No such session to rate."))
    form = forms.rating_form([(i["key"], plabel("fidelity_item", i["key"])) for i in f["items"]], f["min"], f["max"])
    if form.validate_on_submit():
        try:
            r = fidelity.rate(s, actor(), session_id, {"scores": {i["key"]: int(form[f"item_{i['key']}"].data)
                                                                  for i in f["items"]}, "note": form.note.data or None})
            s.commit()
            flash(_("Rating saved: mean %(mean)s, %(verdict)s.", mean=r.mean,
                    verdict=_("keeps to the improvisational principles") if r.adherent else _("below the threshold")))
            return redirect(url_for("intervention.fidelity_page"))
        except DomainError as e:
            form_errors(form, e)
    return render_template("course/rate.html", form=form, item=item, scale=f,
                           title=_("Fidelity rating of the session of %(study_id)s", study_id=item["study_id"])), \
        400 if form.is_submitted() else 200
