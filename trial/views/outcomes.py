"""Visit worklists, corrections and blinding reports."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _

from trial.errors import DomainError
from trial.forms import outcomes as forms
from trial.http import actor, db, form_errors, page_request, plabel, protocol_content
from trial.outcomes import service
from trial.protocol.service import current as current_protocol
from trial.sites.service import visible_sites

bp = Blueprint("outcomes", __name__)


@bp.route("/visits")
def visits():
    s = db()
    kind = request.args.get("kind", "due")
    filters = {"site_code": request.args.get("site") or None, "search": request.args.get("q") or None,
               "visit": request.args.get("visit") or None}
    page = service.worklist_page(s, actor(), kind, page_request(), **filters)
    s.commit()  # the missing-form checks the worklist ran
    return render_template("outcomes/visits.html", kind=kind, page=page, filters=filters,
                           sites=visible_sites(s, actor()), visits=protocol_content()["visits"])


@bp.route("/assessments/<int:assessment_id>/correct", methods=["GET", "POST"])
def correct(assessment_id: int):
    s = db()
    a, p = service.assessment_for(s, actor(), assessment_id)
    ins = next(i for i in current_protocol(s).content["instruments"] if i["key"] == a.instrument)
    form = forms.correction_form(next(i for i in protocol_content()["instruments"] if i["key"] == a.instrument), a.values)
    if form.validate_on_submit():
        try:
            service.correct_assessment(s, actor(), a.id, {"reason": form.reason.data,
                                                          "values": {f["key"]: getattr(form, f"v_{f['key']}").data for f in ins["fields"]}})
            s.commit()
            flash(_("Correction saved; the previous values stay in the audit trail."))
            return redirect(url_for("enrollment.participant", study_id=p.study_id))
        except DomainError as e:
            form_errors(form, e)
    return render_template("enrollment/form.html", form=form, title=_("Correct %(instrument)s at %(visit)s for %(study_id)s", instrument=plabel("instrument", ins["key"]),
                                                visit=plabel("visit", a.visit), study_id=p.study_id)), 400 if form.is_submitted() else 200


@bp.route("/participants/<study_id>/blinding-break", methods=["GET", "POST"])
def blinding_break(study_id: str):
    form = forms.BlindingBreakForm()
    if form.validate_on_submit():
        try:
            service.report_blinding_break(db(), actor(), study_id, {"reported_on": form.reported_on.data,
                                                                    "description": form.description.data})
            db().commit()
            flash(_("Reported. The site's coordinator is told; another assessor should see this child."))
            return redirect(url_for("enrollment.participant", study_id=study_id))
        except DomainError as e:
            form_errors(form, e)
    return render_template("enrollment/form.html", form=form, title=_("Report broken blinding for %(study_id)s", study_id=study_id)), 400 if form.is_submitted() else 200
