"""Queries, adverse events and source verification pages (thin over the services)."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _

from trial.catalogue import N_
from trial.errors import DomainError, NotFound
from trial.forms import datamanagement as forms
from trial.http import actor, db, form_errors, is_page_error, page_request, plabel, post_and_return, protocol_content, say
from trial.monitoring import service as monitoring
from trial.notify.service import dismiss
from trial.participants.models import Assessment
from trial.participants.service import get_participant
from trial.queries import service as queries
from trial.queries import targets
from trial.safety import service as safety
from trial.sites.service import visible_sites

bp = Blueprint("dm", __name__)


def _on_page(status: str | None):
    return None if status in (None, "", "all") else status


@bp.route("/queries", endpoint="queries")
def queries_page():
    s = db()
    queries.require_reader(s, actor())
    site, status = request.args.get("site") or None, _on_page(request.args.get("status", "open"))
    search = request.args.get("q") or None
    mine = request.args.get("mine") == "1"
    page = queries.page(s, actor(), page_request(), site, status, search, mine=mine)
    ages = {q.id: queries.age_days(q) for q in page.items}
    return render_template("queries/list.html", page=page.map(lambda rows: queries.views(s, rows)), ages=ages,
                           site=site, status=status or "all", search=search, sites=visible_sites(s, actor()), mine=mine)


def _numeric_fields(s, q) -> tuple[list[dict], dict | None]:
    """The numeric fields of the assessment a query is about (those a correction may change) and
    their values; none for a query on anything else."""
    if q.kind != "assessment" or not q.target_id:
        return [], None
    a = s.get(Assessment, q.target_id)
    ins = next(i for i in protocol_content()["instruments"] if i["key"] == a.instrument)
    return [f for f in ins["fields"] if f["type"] in ("integer", "number")], a.values


# a query's pages are addressed by its number at its site (/queries/AT01-Q17), or by its id (the
# links of notices written before queries were numbered): see queries.find
@bp.route("/queries/<query_id>", endpoint="query")
def query_page(query_id: str):
    s = db()
    q = queries.find(s, actor(), query_id)
    view = queries.views(s, [q])[0]
    fields, values = _numeric_fields(s, q)
    p = get_participant(s, actor(), view["study_id"])
    answers = any(r.role == q.answer_role and r.site_id == p.site_id for r in actor().roles)
    raises = actor().has_role("manager") or any(r.role == "monitor" and r.site_id == p.site_id for r in actor().roles)
    return render_template("queries/detail.html", q=view, answers=answers, raises=raises,
                           respond_form=forms.respond_form(fields or None, values), fields=fields,
                           close_form=forms.CloseQueryForm(), reopen_form=forms.ReopenQueryForm())


@bp.route("/queries/<query_id>/respond", methods=["POST"], endpoint="respond")
def respond(query_id: str):
    s = db()
    q = queries.find(s, actor(), query_id)
    fields, _values = _numeric_fields(s, q)
    form = forms.respond_form(fields)

    def answer(form):
        data = {"text": form.text.data}
        if form.correct.data:
            data["correction"] = {"values": {f["key"]: getattr(form, f"v_{f['key']}").data for f in fields
                                             if getattr(form, f"v_{f['key']}").data is not None}}
        queries.respond(s, actor(), q.id, data)
    done = (_("Answered. The correction is saved; the old values stay in the audit trail.") if form.correct.data
            else _("Answered."))
    return post_and_return(form, answer, done, url_for("dm.query", query_id=queries.ref_of(s, q)), _("Write the answer."))


def _state(query_id: str, fn, done: str, form_class):
    q = queries.find(db(), actor(), query_id)
    return post_and_return(form_class(), lambda f: fn(db(), actor(), q.id, {"text": f.text.data or None}),
                           done, url_for("dm.query", query_id=queries.ref_of(db(), q)), None)


@bp.route("/queries/<query_id>/close", methods=["POST"], endpoint="close")
def close(query_id: str):
    return _state(query_id, queries.close, _("Query closed."), forms.CloseQueryForm)


@bp.route("/queries/<query_id>/reopen", methods=["POST"], endpoint="reopen")
def reopen(query_id: str):
    return _state(query_id, queries.reopen, _("Query reopened; the site is told."), forms.ReopenQueryForm)


def _field_choices(s, target) -> list[tuple[str, str]]:
    """The fields a query may name, by their labels in the page's language: an assessment's are
    its instrument's and the date performed; a query on any other record is on the whole record."""
    whole = [("", _("— the whole record"))]
    if target.kind != "assessment" or not target.instrument:
        return whole
    ins = next(i for i in protocol_content()["instruments"] if i["key"] == target.instrument)
    return whole + [(f["key"], plabel("field", f"{ins['key']}.{f['key']}")) for f in ins["fields"]] + \
        [("performed_on", _("the date performed"))]


@bp.route("/participants/<study_id>/queries/new", methods=["GET", "POST"], endpoint="raise_query")
def raise_query(study_id: str):
    s = db()
    p = get_participant(s, actor(), study_id)
    form = forms.RaiseQueryForm(kind=request.args.get("kind", "participant"), target_id=request.args.get("id", ""),
                                field=request.args.get("field") or "")
    kind = form.kind.data or "participant"
    target_id = int(form.target_id.data) if (form.target_id.data or "").isdigit() else None
    try:
        target = targets.resolve(s, actor(), p, {"kind": kind, "id": target_id}, allow_field=False)
    except DomainError as e:
        if is_page_error(e):
            raise
        raise NotFound(N_("No such record to query.")) from e
    form.field.choices = _field_choices(s, target)
    if form.validate_on_submit():
        try:
            q = queries.raise_query(s, actor(), {"study_id": p.study_id, "text": form.text.data,
                                                 "on": {"kind": kind, "id": target_id, "field": form.field.data or None}})
            s.commit()
            flash(_("Query %(id)s raised; the site is told.", id=queries.ref_of(s, q)))
            return redirect(url_for("enrollment.participant", study_id=p.study_id))
        except DomainError as e:
            form_errors(form, e)
    return render_template("queries/new.html", form=form, p=p, target=target, warning=say(queries.ASSESSOR_WARNING)
                           if target.assessor_visible else None), 400 if form.is_submitted() else 200


@bp.route("/adverse-events", endpoint="adverse_events")
def adverse_events():
    s = db()
    site, search = request.args.get("site") or None, request.args.get("q") or None
    serious = {"yes": True, "no": False}.get(request.args.get("serious", ""))
    page = safety.page(s, actor(), page_request(), site, serious, search)
    return render_template("safety/list.html", page=page.map(lambda rows: safety.views(s, rows)), site=site, search=search,
                           sites=visible_sites(s, actor()), serious=request.args.get("serious", ""))


@bp.route("/participants/<study_id>/adverse-events/new", methods=["GET", "POST"], endpoint="new_adverse_event")
def new_adverse_event(study_id: str):
    s = db()
    p = get_participant(s, actor(), study_id)
    form = forms.AdverseEventForm()
    if form.validate_on_submit():
        data = {"term": form.term.data, "onset": form.onset.data, "severity": form.severity.data,
                "serious": form.serious.data, "seriousness": form.seriousness.data, "relatedness": form.relatedness.data,
                "expectedness": form.expectedness.data or None, "outcome": form.outcome.data,
                "resolved_on": form.resolved_on.data, "description": form.description.data or None}
        try:
            ae = safety.record(s, actor(), p.study_id, data)
            s.commit()
            flash(_("Adverse event %(id)s recorded. Every manager is told at once; it is to be reported "
                    "within 24 hours.", id=ae.id) if ae.serious else _("Adverse event %(id)s recorded.", id=ae.id))
            return redirect(url_for("dm.adverse_event", ae_id=ae.id))
        except DomainError as e:
            form_errors(form, e)
    return render_template("enrollment/form.html", form=form, title=_("Adverse event of %(study_id)s", study_id=p.study_id)), \
        400 if form.is_submitted() else 200


@bp.route("/adverse-events/<int:ae_id>", endpoint="adverse_event")
def adverse_event(ae_id: int):
    return _event_page(ae_id)


def _event_page(ae_id: int, acknowledge_form=None, report_form=None):
    """The adverse event's page; the reporting forms take the date and time at the site, in its time zone."""
    s = db()
    ae = safety.get(s, actor(), ae_id)
    view = safety.views(s, [ae])[0]
    view["first_report"] = safety.first_report(ae)  # in time or late, against the 24-hour limit
    p = get_participant(s, actor(), view["study_id"])
    coordinator = any(r.role == "coordinator" and r.site_id == p.site_id for r in actor().roles)
    tz = p.site.timezone or "UTC"
    forms_ = {"acknowledge_form": acknowledge_form or forms.AcknowledgeForm(formdata=None),
              "report_form": report_form or forms.SaeReportForm(formdata=None)}
    for form in forms_.values():
        form.reported_at.description = _("The date and time at the site, in its time zone (%(zone)s).", zone=tz)
    return render_template("safety/detail.html", ae=view, coordinator=coordinator, follow_up_form=forms.FollowUpForm(),
                           site_tz=tz, **forms_)


def _report_posted(ae_id: int, form, record, done: str, form_name: str):
    """A report posted from the event's page: saved and back to the page, or the page again with
    each refusal beside its field (400)."""
    if form.validate_on_submit():
        try:
            record(db(), actor(), ae_id, {"reported_to": form.reported_to.data, "reported_at": form.reported_at.data,
                                          "reference": form.reference.data})
            db().commit()
            flash(done)
            return redirect(url_for("dm.adverse_event", ae_id=ae_id))
        except DomainError as e:
            form_errors(form, e)
    return _event_page(ae_id, **{form_name: form}), 400


@bp.route("/adverse-events/<int:ae_id>/follow-up", methods=["POST"], endpoint="follow_up")
def follow_up(ae_id: int):
    return post_and_return(
        forms.FollowUpForm(),
        lambda f: safety.follow_up(db(), actor(), ae_id, {"on": f.on.data, "outcome": f.outcome.data,
                                                          "resolved_on": f.resolved_on.data, "text": f.text.data}),
        _("Follow-up recorded."), url_for("dm.adverse_event", ae_id=ae_id),
        _("Fill in the date, the outcome and the follow-up."))


@bp.route("/adverse-events/<int:ae_id>/acknowledge", methods=["POST"], endpoint="acknowledge")
def acknowledge(ae_id: int):
    return _report_posted(ae_id, forms.AcknowledgeForm(), safety.acknowledge,
                          _("Acknowledged with its report: the 24-hour clock is stopped."), "acknowledge_form")


@bp.route("/adverse-events/<int:ae_id>/reports", methods=["POST"], endpoint="sae_report")
def sae_report(ae_id: int):
    return _report_posted(ae_id, forms.SaeReportForm(), safety.report, _("Report recorded."), "report_form")


@bp.route("/participants/<study_id>/verify", methods=["POST"], endpoint="verify")
def verify(study_id: str):
    def mark(form):
        target_id = int(form.target_id.data) if (form.target_id.data or "").isdigit() else None
        monitoring.verify(db(), actor(), study_id, {"on": {"kind": form.kind.data, "id": target_id}})
    return post_and_return(forms.VerifyForm(), mark, _("Marked source-verified."),
                           url_for("enrollment.participant", study_id=study_id), None)


@bp.route("/notifications/<ref>/dismiss", methods=["POST"], endpoint="dismiss")
def dismiss_notification(ref: str):
    if forms.DismissForm().validate_on_submit():
        dismiss(db(), actor(), ref)
        db().commit()
    return redirect(url_for("main.home"))
