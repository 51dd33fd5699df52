"""The data cuts' pages: the list (manager, statistician, dmc; the data monitoring committee's home
page), taking a cut (manager), the open report (pooled), the closed report (dmc only) and the
committee's recommendation form (dmc)."""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, current_app, flash, redirect, render_template, url_for
from flask_babel import gettext as _

from trial.errors import DomainError
from trial.forms import interim as forms
from trial.forms.mfa import code_of
from trial.http import actor, db, form_errors, locale_code, post_and_return
from trial.interim import cuts
from trial.interim.worker import start_build

bp = Blueprint("interim", __name__)


@bp.route("/data-cuts", endpoint="cuts")
def cuts_page():
    listed = cuts.list_cuts(db(), actor())
    return render_template("interim/cuts.html", cuts=listed, cut_form=forms.DataCutForm(),
                           building=any(c["status"] == "building" for c in listed))


@bp.route("/data-cuts/new", methods=["POST"], endpoint="create")
def create():
    made = []
    out = post_and_return(forms.DataCutForm(), lambda f: made.append(cuts.request_cut(db(), actor(), f.label.data,
                                                                                  bool(f.formal.data)).id),
                          _("Data cut taken: it is being built."), url_for("interim.cuts"))
    if made:  # committed: built now, in the background
        start_build(db(), actor(), made[0], current_app.config.get("LOCK_BUILDER", "worker"),
                    current_app.extensions["trial.engine"].url.render_as_string(hide_password=False),
                    Path(current_app.instance_path))
    return out


@bp.route("/data-cuts/<int:cut_id>/open-report.pdf", endpoint="open_report")
def open_report(cut_id: int):
    pdf = cuts.open_report_pdf(db(), actor(), cut_id, locale_code())
    return Response(pdf, mimetype="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="cut-{cut_id}-open-report.pdf"'})


@bp.route("/data-cuts/<int:cut_id>/closed-report.pdf", endpoint="closed_report")
def closed_report(cut_id: int):
    pdf = cuts.closed_report(db(), actor(), cut_id, "pdf", locale_code())
    db().commit()  # (the opening's audit record)
    return Response(pdf, mimetype="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="cut-{cut_id}-closed-report.pdf"'})


@bp.route("/data-cuts/<int:cut_id>/recommendation", endpoint="recommendation")
def recommendation(cut_id: int):
    cut = cuts.recommendation_form(db(), actor(), cut_id)
    return render_template("interim/recommendation.html", cut=cut, form=forms.RecommendationForm())


@bp.route("/data-cuts/<int:cut_id>/recommendation", methods=["POST"], endpoint="recommend")
def recommend(cut_id: int):
    """Signed: back to the list. Refused (a wrong password or code, an empty field): the form again
    with the committee's words kept and the reason beside its field, so that nothing typed is lost."""
    form = forms.RecommendationForm()
    if form.validate_on_submit():
        try:
            cuts.recommend(db(), actor(), cut_id, form.decision.data, form.text.data, form.password.data, code_of(form))
            db().commit()
            flash(_("Recommendation signed and recorded."))
            return redirect(url_for("interim.cuts"))
        except DomainError as e:
            form_errors(form, e)
    if getattr(form, "code", None) is not None:
        form.code.data = ""  # (a code is for one signature: the next attempt takes the app's next one)
    cut = cuts.recommendation_form(db(), actor(), cut_id)
    return render_template("interim/recommendation.html", cut=cut, form=form), 400
