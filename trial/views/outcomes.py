"""Visit worklists, corrections and blinding reports."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for

from trial.errors import DomainError, NotFound
from trial.forms import outcomes as forms
from trial.http import actor, db, form_errors, page_request
from trial.outcomes import service
from trial.paging import Page, sort_key
from trial.participants.models import Assessment, Participant
from trial.participants.service import get_participant
from trial.protocol.service import current as current_protocol
from trial.sites.service import visible_sites

bp = Blueprint("outcomes", __name__)


@bp.route("/visits")
def visits():
    s = db()
    kind = request.args.get("kind", "due")
    filters = {"site_code": request.args.get("site") or None, "search": request.args.get("q") or None,
               "visit": request.args.get("visit") or None}
    req = page_request()
    rows = service.worklist(s, actor(), kind, **filters)
    s.commit()  # the missing-form checks the worklist ran
    sorts = {"target": lambda r: (r.get("target") or "", r["study_id"]), "study_id": lambda r: (r["study_id"], r["visit"]),
             "visit": lambda r: (r["visit_index"], r["study_id"]), "window_end": lambda r: (r.get("window_end") or "", r["study_id"])}
    sort = sort_key(req.sort, sorts, "target")
    order = [v["key"] for v in current_protocol(s).content["visits"]]
    for r in rows:
        r["visit_index"] = order.index(r["visit"])
    rows.sort(key=sorts[sort.lstrip("-")], reverse=sort.startswith("-"))
    page = Page(rows[req.offset:req.offset + req.per_page], len(rows), req, sort)
    return render_template("outcomes/visits.html", kind=kind, page=page, filters=filters,
                           sites=visible_sites(s, actor()), visits=current_protocol(s).content["visits"])


@bp.route("/assessments/<int:assessment_id>/correct", methods=["GET", "POST"])
def correct(assessment_id: int):
    s = db()
    a = s.get(Assessment, assessment_id)
    if a is None:
        raise NotFound("No such assessment.")
    p = get_participant(s, actor(), s.get(Participant, a.participant_id).study_id)
    ins = next(i for i in current_protocol(s).content["instruments"] if i["key"] == a.instrument)
    form = forms.correction_form(ins, a.values)
    if form.validate_on_submit():
        try:
            service.correct_assessment(s, actor(), a.id, {"reason": form.reason.data,
                                                          "values": {f["key"]: getattr(form, f"v_{f['key']}").data for f in ins["fields"]}})
            s.commit()
            flash("Correction saved; the previous values stay in the audit trail.")
            return redirect(url_for("enrollment.participant", study_id=p.study_id))
        except DomainError as e:
            form_errors(form, e)
    return render_template("enrollment/form.html", form=form, title=f"Correct {ins['label']} at {a.visit} for {p.study_id}"), 400 if form.is_submitted() else 200


@bp.route("/participants/<study_id>/blinding-break", methods=["GET", "POST"])
def blinding_break(study_id: str):
    form = forms.BlindingBreakForm()
    if form.validate_on_submit():
        try:
            service.report_blinding_break(db(), actor(), study_id, {"reported_on": form.reported_on.data,
                                                                    "description": form.description.data})
            db().commit()
            flash("Reported. The site's coordinator is told; another assessor should see this child.")
            return redirect(url_for("enrollment.participant", study_id=study_id))
        except DomainError as e:
            form_errors(form, e)
    return render_template("enrollment/form.html", form=form, title=f"Report broken blinding for {study_id}"), 400 if form.is_submitted() else 200
