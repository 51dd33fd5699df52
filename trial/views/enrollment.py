"""Participants, screening and randomization pages (thin over the services)."""
from __future__ import annotations

import secrets

from flask import Blueprint, Response, flash, g, redirect, render_template, request, url_for
from flask_babel import gettext as _

from trial.catalogue import N_
from trial.consent import service as consent
from trial.consent import withdrawal
from trial.course.service import participant_course
from trial.enrollment import service
from trial.errors import DomainError
from trial.forms import enrollment as forms
from trial.http import (
    actor,
    day,
    db,
    form_errors,
    is_page_error,
    locale_code,
    page_request,
    plabel,
    protocol_content,
    say,
    tlabel,
)
from trial.monitoring import service as monitoring
from trial.outcomes import notdone
from trial.outcomes import service as outcomes
from trial.participants import service as records
from trial.protocol.service import current as current_protocol
from trial.queries import service as queries
from trial.randomize import confirmation
from trial.randomize import service as randomization
from trial.safety import service as safety
from trial.scope import can_see_arm
from trial.sites.service import list_sites, visible_sites
from trial.status import service as status_service
from trial.surveys import service as survey_service
from trial.validation import refusal
from trial.views import signoffs as signoffs_view
from trial.views import surveys as surveys_view

bp = Blueprint("enrollment", __name__)


@bp.route("/participants")
def participants():
    s = db()
    filters = {"site_code": request.args.get("site") or None, "search": request.args.get("q") or None,
               "status": request.args.get("status") or None, "arm": request.args.get("arm") or None}
    page = records.page_participants(s, actor(), page_request(), **filters)
    arms = protocol_content()["arms"] if records.arm_site_ids(s, actor()) else []
    return render_template("enrollment/participants.html", page=page.map(lambda rows: records.participant_views(s, actor(), rows)),
                           filters=filters, sites=visible_sites(s, actor()), statuses=records.statuses_for(s, actor()), arms=arms)


@bp.route("/participants/<study_id>")
def participant(study_id: str):
    s = db()
    p = records.get_participant(s, actor(), study_id)
    view = records.participant_views(s, actor(), [p])[0]
    content = current_protocol(s).content
    reasons = randomization.not_ready_reasons(s, p) if not view["randomized_on"] else []
    can_randomize = actor().has_role("coordinator") and p.site_id in actor().site_ids("coordinator")
    form = forms.RandomizeForm(idempotency_key=secrets.token_hex(16))
    show_arm = can_see_arm(s, actor(), p.site_id)
    course = None
    if show_arm and view["randomized_on"]:
        course = participant_course(s, actor(), p.study_id)
    here = {r.role for r in actor().roles if r.site_id in (None, p.site_id)}
    reads_safety = bool(here & {"coordinator", "monitor", "investigator", "manager"})
    reads_consents = bool(here & set(consent.READERS))
    return render_template("enrollment/participant.html", p=view, reasons=reasons,
                           consents=consent.consent_views(s, consent.consents_of(s, actor(), p.study_id))
                           if reads_consents else [], reads_consents=reads_consents,
                           consents_due=consent.due_for(s, [p]) if reads_consents else [],
                           surveys_section=surveys_view.section(s, actor(), p, here),
                           from_surveys=survey_service.from_surveys(s, p.id),
                           withdrawals=_withdrawals(s, p.id, show_arm) if reads_consents else [],
                           can_randomize=can_randomize and not view["randomized_on"], form=form, show_arm=show_arm,
                           confirmation=confirmation.may_print(s, actor(), p.site_id, bool(view["randomized_on"])),
                           just_randomized=request.args.get("randomized") == "1",
                           visits=outcomes.schedule(s, actor(), [p])[p.id] if here & {"coordinator", "assessor", "monitor", "investigator", "manager"} else [],
                           assessments=outcomes.assessments_of(s, actor(), p), course=course, roles_here=here,
                           not_done={(n["visit"], n["instrument"]): n for n in notdone.not_done_views(s, p)},
                           warning=outcomes.blinding_warning(s, actor(), p.id),
                           deviations=status_service.deviations_of(s, actor(), p) if show_arm else [],
                           queries=queries.views(s, queries.listing(s, actor(), study_id=p.study_id)),
                           adverse_events=safety.views(s, safety.listing_of(s, actor(), p)) if reads_safety else [],
                           events=status_service.events_for_reader(s, actor(), p) if show_arm else [],
                           marks=monitoring.marks(s, [p.id]) if monitoring.may_read_marks(actor()) else {},
                           can_raise=bool(here & {"manager", "monitor"}), can_verify="monitor" in here,
                           signoffs=signoffs_view.section(s, actor(), p),
                           reads_safety=reads_safety, pid=p.id, screening_id=p.screening_id,
                           shows_marks=monitoring.may_read_marks(actor()), instruments=protocol_content()["instruments"],
                           blinded_instruments={i["key"]: i["blinded"] for i in content["instruments"]})


@bp.route("/participants/<study_id>/randomize", methods=["POST"])
def randomize(study_id: str):
    form = forms.RandomizeForm()
    if not form.validate_on_submit():
        flash(_("Tick the confirmation box to randomize."), "error")
        return redirect(url_for("enrollment.participant", study_id=study_id))
    s = db()
    try:
        randomization.randomize(s, actor(), study_id, form.idempotency_key.data or None)
        s.commit()
        flash(_("%(study_id)s is randomized.", study_id=study_id))
        # the page then offers the confirmation for the child's file first
        return redirect(url_for("enrollment.participant", study_id=study_id, randomized="1"))
    except DomainError as e:
        s.rollback()
        if is_page_error(e):
            raise
        flash(say(e.message), "error")
    return redirect(url_for("enrollment.participant", study_id=study_id))


@bp.route("/participants/<study_id>/randomization.pdf")
def randomization_pdf(study_id: str):
    """The randomization confirmation in the page's language (the same PDF as the API's); the 404
    of an unknown study id for anyone who may not have it."""
    pdf = confirmation.confirmation_pdf(db(), actor(), study_id, locale_code())
    return Response(pdf, mimetype="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="randomization-{study_id.upper()}.pdf"'})


@bp.route("/screenings")
def screenings():
    s = db()
    filters = {"site_code": request.args.get("site") or None, "search": request.args.get("q") or None,
               "outcome": request.args.get("outcome") or None}
    return render_template("enrollment/screenings.html", page=service.page_screenings(s, actor(), page_request(), **filters),
                           filters=filters, sites=visible_sites(s, actor()), outcomes=service.SCREENING_OUTCOMES,
                           criteria={c["key"]: c["question"] for c in protocol_content()["criteria"]})


@bp.route("/screenings/new", methods=["GET", "POST"])
def screen():
    s = db()
    mine = actor().site_ids("coordinator")
    criteria = protocol_content()["criteria"]
    form = forms.screening_form(criteria, [(x.code, f"{x.code} {x.name}") for x in list_sites(s) if x.id in mine])
    if form.validate_on_submit():
        data = {"site": form.site.data, "log_number": form.log_number.data, "screened_on": form.screened_on.data,
                "declined": form.declined.data,
                "other_reason": form.other_reason.data,
                "answers": {c["key"]: getattr(form, f"c_{c['key']}").data == "yes" for c in criteria}}
        try:
            sc = service.record_screening(s, actor(), data)
            s.commit()
            flash(_("Screening %(id)s recorded: %(outcome)s.", id=sc.id, outcome=tlabel("screening_outcome", sc.outcome)))
            return redirect(url_for("enrollment.enroll", screening_id=sc.id) if sc.outcome == "eligible"
                            else url_for("enrollment.screenings"))
        except DomainError as e:
            form_errors(form, e)
    return render_template("enrollment/form.html", form=form, title=_("Screen a child")), 400 if form.is_submitted() else 200


@bp.route("/screenings/<int:screening_id>/enroll", methods=["GET", "POST"])
def enroll(screening_id: int):
    s = db()
    service.screening_for(s, actor(), screening_id)  # 404 for another site's, as for an unknown one
    factors = protocol_content()["randomization"]["factors"]
    form = forms.enroll_form(factors)
    if form.validate_on_submit():
        data = {"screening_id": screening_id, "consent_date": form.consent_date.data,
                "date_of_birth": form.date_of_birth.data, "sex": form.sex.data,
                "strata": {f["key"]: getattr(form, f"s_{f['key']}").data for f in factors if f["key"] != "site"}}
        try:
            p = service.enroll(s, actor(), data)
            s.commit()
            flash(_("Enrolled as %(study_id)s. Record the baseline assessments before randomization.", study_id=p.study_id))
            return redirect(url_for("enrollment.participant", study_id=p.study_id))
        except DomainError as e:
            form_errors(form, e)
    return render_template("enrollment/form.html", form=form, title=_("Enrol from screening %(id)s", id=screening_id)), 400 if form.is_submitted() else 200


@bp.route("/participants/<study_id>/assess/<instrument>", methods=["GET", "POST"])
def assess(study_id: str, instrument: str):
    """The entry form of one instrument for a participant: the visits that can be entered now,
    the allocation guess where the protocol takes one, and a date outside the visit's window
    saved only once the user confirms it."""
    s = db()
    p = records.get_participant(s, actor(), study_id)
    content = current_protocol(s).content
    ins = next((i for i in content["instruments"] if i["key"] == instrument), None)
    if ins is None:
        flash(_("Unknown instrument %(instrument)s.", instrument=instrument), "error")
        return redirect(url_for("enrollment.participant", study_id=p.study_id))
    shown = next(i for i in protocol_content()["instruments"] if i["key"] == instrument)  # its words in the page's language
    visits, with_guess = _entry_visits(s, content, ins, p)
    if not visits:
        flash(_("No visit of %(instrument)s can be entered for %(study_id)s now.", instrument=shown["label"],
                study_id=p.study_id), "error")
        return redirect(url_for("enrollment.participant", study_id=p.study_id))
    if with_guess is None:  # some of these visits take the allocation guess and some do not: which one?
        return render_template("outcomes/choose_visit.html", p=p, ins=shown, visits=visits)
    form = forms.assessment_form(shown, visits, with_guess=with_guess)
    if not form.is_submitted():
        chosen = request.args.get("visit")
        form.visit.data = chosen if chosen in dict(visits) else _due_visit(s, p, ins, visits)
    ready, warning, guess, confidence = _check_entry(s, p, content, ins, form, with_guess)
    if ready and not warning:
        saved = _save_assessment(s, p, ins, shown, form, guess, confidence)
        if saved is not None:
            return saved
    if "window" not in warning and not form.confirm_window.data:
        del form.confirm_window  # asked only once the date is known to be outside the window
    if "values" not in warning and not form.confirm_values.data:
        del form.confirm_values  # asked only once a value is known to be outside its usual range
    warning = " ".join(warning.values()) or None
    return render_template("enrollment/form.html", form=form, title=_("%(instrument)s for %(study_id)s", instrument=shown["label"], study_id=p.study_id),
                           warning=warning), \
        400 if form.is_submitted() else 200


def _check_entry(s, p, content: dict, ins: dict, form, with_guess: bool):
    """The posted entry form checked: (ready to save, the warnings to confirm first by what they are
    about ("window", "values"), the allocation guess, its confidence). A guess the protocol refuses
    is refused before the window question, so that a confirmed date is not asked for twice; a date
    outside the window and a value outside its field's usual (soft) range warn together, each until
    confirmed."""
    warning: dict[str, str] = {}
    guess = confidence = None
    ready = form.validate_on_submit()
    if ready:
        guess, confidence = _guess(form)
        visit = next(v for v in content["visits"] if v["key"] == form.visit.data)
        errors = outcomes.guess_errors(content, ins, visit, guess, confidence) if with_guess else {}
        if errors:  # refused before the window question, so that a confirmed date is not asked for twice
            ready = False
            form_errors(form, refusal(N_("The assessment was not saved"), errors, outcomes.GUESS_LABELS))
        elif not form.confirm_window.data:
            window = outcomes.window_of(s, p, form.visit.data)
            if window and not window[0] <= form.performed_on.data <= window[1]:
                # warn before saving: the user confirms, or corrects the date
                warning["window"] = (_("%(day)s is outside the window of this visit (%(start)s to %(end)s). Correct "
                                       "the date, or tick the box below to save it as it is.",
                                       day=day(form.performed_on.data), start=day(window[0]), end=day(window[1])))
        if not errors and not form.confirm_values.data:
            outside = outcomes.outside_soft_range(ins, {f["key"]: getattr(form, f"v_{f['key']}").data
                                                        for f in ins["fields"]})
            if outside:
                warning["values"] = " ".join(say(m) for m in outside.values())
    return ready, warning, guess, confidence


def _save_assessment(s, p, ins: dict, shown: dict, form, guess, confidence):
    """Save the checked form: the redirect to the participant's page, or None when the service
    refused it (its errors are then on the form)."""
    data = {"visit": form.visit.data, "instrument": ins["key"], "performed_on": form.performed_on.data,
            "values": {f["key"]: getattr(form, f"v_{f['key']}").data for f in ins["fields"]}}
    if guess is not None:
        data["allocation_guess"] = guess
    if confidence is not None:
        data["guess_confidence"] = confidence
    try:
        outcomes.record_assessment(s, actor(), p.study_id, data)
        s.commit()
        flash(_("%(instrument)s saved for %(study_id)s.", instrument=shown["label"], study_id=p.study_id))
        return redirect(url_for("enrollment.participant", study_id=p.study_id))
    except DomainError as e:
        form_errors(form, e)
    return None


def _entry_visits(s, content: dict, ins: dict, p) -> tuple[list[tuple[str, str]], bool | None]:
    """The visits of ``ins`` that can be entered for ``p`` now (the baseline before randomization,
    the follow-up visits after it) and whether the form asks for the allocation guess: only where
    the protocol takes one, so that the form never shows a field that would be refused. None when
    the chosen visits differ in that and no visit is chosen yet (``?visit=`` or the posted one)."""
    randomized = records.allocation_of(s, p.id) is not None
    open_ = _open_forms(s, p, ins) if randomized else None
    visits = [(v["key"], plabel("visit", v["key"])) for v in content["visits"]
              if v["key"] in ins["visits"] and (v["key"] != "baseline") == randomized
              and (open_ is None or v["key"] in open_)]
    takes = {k: outcomes.takes_guess(content, ins, k) for k, _label in visits}
    if len(set(takes.values())) <= 1:
        return visits, bool(takes) and next(iter(takes.values()))
    chosen = request.form.get("visit") if request.method == "POST" else request.args.get("visit")
    if chosen not in takes:
        return visits, None
    return [(k, label) for k, label in visits if takes[k] == takes[chosen]], takes[chosen]


def _open_entries(s, p, ins: dict) -> list[dict]:
    """The child's schedule entries at which ``ins`` is in the plan and not yet entered (an
    amendment's form that does not apply to the child is not among them, nor one already entered);
    worked out once per request."""
    key = (p.id, ins["key"])
    cache = g.setdefault("open_entries", {})
    if key not in cache:
        cache[key] = [e for e in outcomes.schedule(s, actor(), [p]).get(p.id, [])
                      if ins["key"] in e.get("instruments_expected", []) and ins["key"] not in e.get("instruments_done", [])]
    return cache[key]


def _open_forms(s, p, ins: dict) -> set[str]:
    """The follow-up visits at which ``ins`` can still be entered for the child."""
    return {e["visit"] for e in _open_entries(s, p, ins)}


def _due_visit(s, p, ins: dict, visits: list[tuple[str, str]]) -> str:
    """The visit the form opens on: the one of this instrument due now for the child (else the
    overdue one, else the next to come), not the first of the protocol."""
    offered = dict(visits)
    open_ = [e for e in _open_entries(s, p, ins) if e["visit"] in offered]
    for status in ("due", "overdue", "upcoming"):
        hit = next((e["visit"] for e in open_ if e["status"] == status), None)
        if hit:
            return hit
    return visits[0][0]


def _guess(form) -> tuple[str | None, int | None]:
    """The allocation guess and its confidence as typed (None, None on a form without them)."""
    guess = getattr(form, "allocation_guess", None)
    confidence = getattr(form, "guess_confidence", None)
    return ((guess.data or None) if guess is not None else None,
            int(confidence.data) if confidence is not None and confidence.data else None)


def _withdrawals(s, participant_id: int, show_arm: bool) -> list:
    """The child's withdrawals of consent as the reader may see them: one from the intervention
    alone tells a therapy arm (as a discontinued intervention does), so only readers of the arm see it."""
    return [w for w in withdrawal.withdrawals_of(s, [participant_id]).get(participant_id, [])
            if show_arm or w.scope != "intervention"]
