"""Visit worklists, corrections, blinding reports, forms recorded as not done and the manager's
page of randomization errors."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _

from trial.catalogue import label
from trial.errors import DomainError
from trial.forms import outcomes as forms
from trial.http import actor, db, form_errors, page_request, plabel, protocol_content
from trial.outcomes import notdone, service
from trial.participants.service import get_participant
from trial.protocol.service import current as current_protocol
from trial.randomize import errors as randomization_errors
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


@bp.route("/participants/<study_id>/not-done", methods=["GET", "POST"])
def not_done(study_id: str):
    """Record a form as not done with the protocol's reason (from the form's place on the
    participant page and in the worklists: ``?visit=&instrument=`` preselect it)."""
    s = db()
    p = get_participant(s, actor(), study_id)
    content = protocol_content()
    form = forms.NotDoneForm()
    form.visit.choices = [(v["key"], v["label"]) for v in content["visits"]]
    form.instrument.choices = [(i["key"], i["label"]) for i in content["instruments"]]
    form.reason.choices = [("", _("Choose a reason"))] + [(r["key"], plabel("missing_reason", r["key"]))
                                                          for r in notdone.missing_reasons(content)]
    if not form.is_submitted():
        form.visit.data = request.args.get("visit") or None
        form.instrument.data = request.args.get("instrument") or None
    back = request.args.get("next") if request.args.get("next") in ("visits",) else None
    if form.validate_on_submit():
        try:
            notdone.record_not_done(s, actor(), p.study_id, {"visit": form.visit.data, "instrument": form.instrument.data,
                                                             "reason": form.reason.data, "text": form.text.data})
            s.commit()
            flash(_("Recorded as not done; its missing-form query is closed with the reason."))
            if back:
                return redirect(url_for("outcomes.visits", kind=request.args.get("kind", "overdue")))
            return redirect(url_for("enrollment.participant", study_id=p.study_id))
        except DomainError as e:
            form_errors(form, e)
    return render_template("enrollment/form.html", form=form,
                           title=_("Record a form as not done for %(study_id)s", study_id=p.study_id)), \
        400 if form.is_submitted() else 200


@bp.route("/randomization-errors", methods=["GET", "POST"])
def randomization_errors_page():
    """The manager's list of randomization errors, and the form to record one."""
    s = db()
    content = protocol_content()
    levels = randomization_errors.factors(s)
    form = forms.RandomizationErrorForm()
    form.kind.choices = [(k, _(label("randomization_error", k))) for k in randomization_errors.KINDS]
    form.field.choices = [("", "—")] + [(k, plabel("factor", k)) for k in levels]
    form.correct_value.choices = [("", "—")] + sorted({(lv, lv) for lvs in levels.values() for lv in lvs})
    if form.validate_on_submit():
        try:
            randomization_errors.record_error(s, actor(), form.study_id.data.strip(), {
                "kind": form.kind.data, "field": form.field.data or None, "correct_value": form.correct_value.data or None,
                "text": form.text.data})
            s.commit()
            flash(_("The randomization error is recorded. The allocation is kept (intention to treat); the analysis "
                    "uses the corrected stratum."))
            return redirect(url_for("outcomes.randomization_errors_page"))
        except DomainError as e:
            form_errors(form, e)
    rows = randomization_errors.listing(s, actor())
    return render_template("outcomes/randomization_errors.html", rows=rows, form=form, content=content), \
        400 if form.is_submitted() else 200
