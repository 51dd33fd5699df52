"""Outcome entry from the protocol's instruments: validation, windows, who may enter what."""
from __future__ import annotations

import datetime as dt
import math
from typing import Any

from sqlalchemy import and_, case, func, literal, or_, select, true, union_all
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.catalogue import N_, Joined, Label, Msg
from trial.consent import service as consent_service
from trial.consent import withdrawal
from trial.dataquality.models import DataQuery
from trial.dataquality.service import Check, clear_verification, raise_check, raise_checks, resolve_check
from trial.errors import Conflict, Forbidden, NotFound, ValidationError
from trial.notify.service import notify, users_with_role
from trial.outcomes import notdone
from trial.outcomes.models import BlindingBreak, NotDone
from trial.paging import Page, ordered, paginate, sort_key
from trial.participants.models import GUESSES, Allocation, Assessment, Participant
from trial.participants.service import (
    allocation_of,
    allocations_for,
    ensure_accepts_data,
    events_of,
    get_participant,
    may_see,
    participant_query,
    randomization_day,
)
from trial.protocol.service import ALWAYS, form_rules
from trial.protocol.service import current as current_protocol
from trial.scope import is_cli, require_site_role, visible_site_ids
from trial.sites.models import Site
from trial.sites.service import get_by_code
from trial.timeline import local_date, today, visit_window
from trial.trialstate.service import active_lock_id, ensure_writable
from trial.validation import CONTROL_MESSAGE, clinical_date, has_control, refusal, refuse, text
from trial.visitplan.models import PlannedVisit
from trial.visitplan.service import ensure_current, replan


def validate_values(instrument: dict, values: Any) -> dict[str, Any]:
    """Check every field against the protocol; raise 400 naming each bad field."""
    errors: dict[str, str] = {}
    if not isinstance(values, dict):
        raise ValidationError(N_("values must be an object of field: value"), {"values": N_("must be an object")})
    fields = {f["key"]: f for f in instrument["fields"]}
    for k in sorted(set(values) - set(fields)):
        errors[f"values.{k}"] = Msg(N_("is not a field of %(form)s"), form=_form_label(instrument))
    out: dict[str, Any] = {}
    for key, f in fields.items():
        v = values.get(key)
        name = f"values.{key}"
        if v is None or v == "":
            if f["required"]:
                errors[name] = N_("is required")
            continue
        v, error = _field_value(f, v)
        if error is not None:
            errors[name] = error
            continue
        out[key] = v
    if errors:
        raise refusal(N_("The assessment was not saved"), errors,
                      {f"values.{f['key']}": _field_label(instrument, f) for f in instrument["fields"]})
    return out


def _field_value(f: dict, v: Any) -> tuple[Any, str | None]:
    """A given (not empty) value of a field: the value as stored (a whole float of an integer
    field as an int) and what is wrong with it, None when nothing: its type, then its range."""
    v, error = _typed_value(f, v)
    if error is None and f["type"] in ("integer", "number"):
        lo, hi = f.get("min"), f.get("max")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            error = Msg(N_("%(value)s is out of range %(lo)s–%(hi)s"), value=v, lo=lo, hi=hi)
    return v, error


TEXT_MAX = 2000  # a text field's longest answer (the protocol gives no maximum of its own)


def _typed_value(f: dict, v: Any) -> tuple[Any, str | None]:
    """The value checked against its field's type (a whole float of an integer field becomes an
    int), with what is wrong with it, or None."""
    t = f["type"]
    if t == "integer":
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                return int(v), None
            return v, N_("must be a whole number")
    elif t == "number":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return v, N_("must be a number")
        if not math.isfinite(v):  # NaN and infinity pass every range check: never a measurement
            return v, N_("must be a finite number")
    elif t == "boolean" and not isinstance(v, bool):
        return v, N_("must be true or false")
    elif t == "text" and (not isinstance(v, str) or has_control(v)):
        return v, N_("must be text") if not isinstance(v, str) else CONTROL_MESSAGE
    elif t == "text" and len(v) > TEXT_MAX:
        return v, Msg(N_("must be at most %(n)s characters"), n=TEXT_MAX)
    elif t == "choice" and v not in f["choices"]:
        return v, Msg(N_("must be one of: %(allowed)s"), allowed=", ".join(map(str, f["choices"])))
    return v, None


# the form's own fields, named as the entry form names them
FORM_LABELS = {"instrument": N_("Instrument"), "visit": N_("Visit"), "performed_on": N_("Performed on")}
# the allocation guess, named as the entry form names it
GUESS_LABELS = {"allocation_guess": N_("Allocation guess"), "guess_confidence": N_("Confidence in the guess")}
GUESS_CHOICES = {"music_therapy": N_("Music therapy"), "usual_care": N_("Usual care"), "unsure": N_("Unsure")}

CONFIDENCE_CHOICES = {1: "1 (pure guess)", 2: "2", 3: "3", 4: "4", 5: "5 (certain)"}


def takes_guess(content: dict, instrument: dict, visit_key: str) -> bool:
    """Does the assessor record a guess of the allocation with this instrument at this visit? Only
    with a blinded instrument, at the visits the protocol marks ``allocation_guess`` (a protocol
    stored before that key: every visit after baseline). Never at baseline."""
    if not instrument["blinded"] or visit_key == "baseline":
        return False
    visit = next((v for v in content["visits"] if v["key"] == visit_key), None)
    return visit is not None and bool(visit.get("allocation_guess", True))


def guess_visits(content: dict) -> list[str]:
    return [v["key"] for v in content["visits"] if v["key"] != "baseline" and v.get("allocation_guess", True)]


def guess_errors(content: dict, instrument: dict, visit: dict, guess: Any, confidence: Any) -> dict[str, str]:
    """What is wrong with an allocation guess and its confidence (``{}`` when nothing): a guess
    only where the protocol takes one; its confidence is optional (API.md makes the guess optional
    and asks nothing of a confidence), recorded when given, and only with a guess."""
    errors: dict[str, str] = {}
    if guess is not None:
        if not instrument["blinded"]:
            errors["allocation_guess"] = N_("is recorded only with a blinded assessment")
        elif guess not in GUESSES:
            errors["allocation_guess"] = Msg(N_("must be one of %(allowed)s"), allowed=", ".join(GUESSES))  # API.md's words
        elif visit["key"] == "baseline":
            errors["allocation_guess"] = N_("is not taken at baseline: there is no allocation to guess before randomization")
        elif not takes_guess(content, instrument, visit["key"]):
            labels = [_visit_label(v) for v in content["visits"] if v["key"] in guess_visits(content)]
            errors["allocation_guess"] = (Msg(N_("is not taken at %(visit)s; the protocol takes it at %(visits)s"),
                                              visit=_visit_label(visit), visits=Joined(labels, ", ")) if labels else
                                          Msg(N_("is not taken at %(visit)s; the protocol takes it at no visit"),
                                              visit=_visit_label(visit)))
    if confidence is None:
        pass
    elif guess is None:
        errors["guess_confidence"] = N_("is recorded only with an allocation guess")
    elif isinstance(confidence, bool) or not isinstance(confidence, int) or not 1 <= confidence <= 5:
        errors["guess_confidence"] = N_("must be a whole number from 1 (pure guess) to 5 (certain)")
    return errors


def record_assessment(db: Session, actor, study_id: str, data: dict) -> Assessment:
    """Record one form at one visit: check the form, the visit, the day, the values and the
    allocation guess, place the day in its visit window, then write and audit the assessment
    and keep its checks, all in one transaction."""
    p = get_participant(db, actor, study_id, for_update=True)  # concurrent duplicates queue here
    content = current_protocol(db).content
    ins, visit, performed = _form_visit_day(content, p, data)
    # who enters what: blinded instruments only by the site's assessors, others by its coordinators
    require_site_role(db, actor, p.site_id, "assessor" if ins["blinded"] else "coordinator")
    return enter_assessment(db, actor, p, ins, visit, performed, data)


def enter_assessment(db: Session, actor, p: Participant, ins: dict, visit: dict, performed: dt.date, data: dict,
                     reason: str | None = None, survey_id: int | None = None) -> Assessment:
    """Record a form the caller may enter (staff entry above; a parent's survey, trial.surveys,
    with ``actor`` its provenance and ``reason`` naming the survey): the values, the guess, the
    participant's state, consent and window, written and audited with their checks. ``p`` is locked."""
    content = current_protocol(db).content
    pv_version = current_protocol(db).version
    ensure_writable(db)
    values = validate_values(ins, data.get("values"))
    guess = data.get("allocation_guess")
    confidence = data.get("guess_confidence")
    alloc = allocation_of(db, p.id)
    errors = guess_errors(content, ins, visit, guess, confidence)
    if errors:
        raise refusal(N_("The assessment was not saved"), errors, GUESS_LABELS)
    ensure_accepts_data(db, p, "assessment", performed)
    consent_service.ensure_consented(db, p)
    out_of_window = _out_of_window(db, p, ins, visit, performed, alloc)
    if visit["key"] != "baseline":  # no visit opening after a withdrawal of consent to the follow-up
        withdrawal.ensure_visit_allowed(db, p, visit_window(visit, randomization_day(db, p, alloc))[0])
    if db.execute(select(Assessment.id).where(Assessment.participant_id == p.id, Assessment.visit == visit["key"],
                                              Assessment.instrument == ins["key"])).first():
        raise Conflict(Msg(N_("%(form)s at %(visit)s is already recorded for %(study_id)s."), form=_form_label(ins),
                           visit=_visit_label(visit), study_id=p.study_id))
    notdone.ensure_not_done_absent(db, p, ins, visit)  # a form recorded as not done stays so
    a = Assessment(participant_id=p.id, visit=visit["key"], instrument=ins["key"], performed_on=performed,
                   values=values, out_of_window=out_of_window, allocation_guess=guess, guess_confidence=confidence,
                   protocol_version=pv_version, entered_by_id=getattr(actor, "id", None))
    db.add(a)
    db.flush()
    audit.created(db, actor, "assessment", a.id, {"participant": p.study_id, "visit": a.visit, "instrument": a.instrument,
                                                  "performed_on": performed, "values": values,
                                                  "out_of_window": out_of_window, "allocation_guess": guess,
                                                  "guess_confidence": confidence}, reason=reason)
    # the form is entered: the parents' links of it stop (``survey_id``: the one being answered)
    withdrawal.revoke_surveys(db, actor, p, reason="form entered", visit=a.visit, instrument=a.instrument, keep=survey_id)
    if a.visit != "baseline":
        replan(db, [p.id])  # the visit plan knows the form is entered
    _entry_checks(db, p, a, ins, visit, alloc, out_of_window)
    return a


def _form_visit_day(content: dict, p, data: dict) -> tuple[dict, dict, dt.date]:
    """The instrument, the visit and the day an assessment names, or 400 naming each bad one (an
    instrument not collected at the visit, a day in the future at the participant's site)."""
    instruments = {i["key"]: i for i in content["instruments"]}
    visits = {v["key"]: v for v in content["visits"]}
    errors: dict[str, str] = {}
    ins = instruments.get(data.get("instrument")) if isinstance(data.get("instrument"), str) else None
    if ins is None:
        errors["instrument"] = Msg(N_("must be one of: %(allowed)s"), allowed=Joined(map(_form_label, instruments.values()), ", "))
    visit = visits.get(data.get("visit")) if isinstance(data.get("visit"), str) else None
    if visit is None:
        errors["visit"] = Msg(N_("must be one of: %(allowed)s"), allowed=Joined(map(_visit_label, visits.values()), ", "))
    elif ins is not None and visit["key"] not in ins["visits"]:
        errors["visit"] = Msg(N_("%(form)s is not collected at %(visit)s"), form=_form_label(ins), visit=_visit_label(visit))
    performed = clinical_date(data.get("performed_on"), "performed_on", errors, today(p.site.timezone))
    if errors:
        raise refusal(N_("The assessment was not saved"), errors, FORM_LABELS)
    return ins, visit, performed


def _out_of_window(db: Session, p, ins: dict, visit: dict, performed: dt.date, alloc) -> bool:
    """Was the assessment performed outside its visit's window? Refuses a baseline of a child
    already randomized or performed before consent, a later visit of a child not randomized, and a
    form an amendment added that does not apply to this child (randomized before it took effect)."""
    if visit["key"] == "baseline":
        if alloc is not None:
            raise Conflict(N_("The baseline is recorded before randomization; this participant is already randomized."))
        if performed < p.consent_date:
            raise ValidationError(N_("The assessment was not saved: performed_on is before consent"),
                                  {"performed_on": Msg(N_("is before consent (%(day)s)"), day=p.consent_date)})
        return False
    if alloc is None:
        raise Conflict(Msg(N_("The visit %(visit)s follows randomization; %(study_id)s is not randomized yet."),
                           visit=_visit_label(visit), study_id=p.study_id))
    start = randomization_day(db, p, alloc)
    lo, _, hi = visit_window(visit, start)
    rule = form_rules(db).get((visit["key"], ins["key"]), ALWAYS)
    if not rule.applies(start, hi):
        raise Conflict(Msg(N_("%(form)s at %(visit)s is not in the plan of %(study_id)s: the amendment that added it "
                              "applies to children randomized from %(day)s."), form=_form_label(ins),
                           visit=_visit_label(visit), study_id=p.study_id, day=rule.since))
    return not lo <= performed <= hi


def _entry_checks(db: Session, p, a: Assessment, ins: dict, visit: dict, alloc, out_of_window: bool) -> None:
    """The checks of an entered form, in the same transaction as the data: its missing-form query
    closes; a query when it was performed outside the window; the soft-range queries."""
    resolve_check(db, missing_key(p.id, a.visit, a.instrument), Msg(N_("the form was entered")))
    if out_of_window:
        lo, _, hi = visit_window(visit, randomization_day(db, p, alloc))
        raise_check(db, p, "assessment", a.id, f"window:assessment:{a.id}",
                    Msg(N_("%(form)s at %(visit)s was performed on %(day)s, outside the visit window %(start)s to "
                           "%(end)s. Confirm the date, or correct it."), form=_form_label(ins), visit=_visit_label(visit),
                        day=a.performed_on, start=lo, end=hi),
                    _enterer(ins), assessor_visible=ins["blinded"], visit=a.visit, instrument=a.instrument)
    _soft_range_checks(db, p, a, ins)


def window_of(db: Session, p, visit_key: str) -> tuple[dt.date, dt.date] | None:
    """The window of a post-randomization visit of ``p``, or None (baseline, not randomized)."""
    visit = next((v for v in current_protocol(db).content["visits"] if v["key"] == visit_key), None)
    alloc = allocation_of(db, p.id)
    if visit is None or visit_key == "baseline" or alloc is None:
        return None
    lo, _, hi = visit_window(visit, randomization_day(db, p, alloc))
    return lo, hi


def _form_label(ins: dict) -> Label:
    return Label("instrument", ins["key"], ins["label"])


def _visit_label(visit: dict) -> Label:
    return Label("visit", visit["key"], visit["label"])


def _field_label(ins: dict, f: dict) -> Label:
    return Label("field", f"{ins['key']}.{f['key']}", f["label"])


def _enterer(ins: dict) -> str:
    return "assessor" if ins["blinded"] else "coordinator"


def missing_key(participant_id: int, visit: str, instrument: str) -> str:
    return f"missing:{participant_id}:{visit}:{instrument}"


def outside_soft_range(ins: dict, values: dict) -> dict[str, Msg]:
    """Each value outside its field's soft range (saved, but queried: a person confirms it), by
    field key, with the words the query and the entry form's warning say."""
    out = {}
    for f in ins["fields"]:
        v = values.get(f["key"])
        lo, hi = f.get("soft_min"), f.get("soft_max")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and ((lo is not None and v < lo) or
                                                                          (hi is not None and v > hi)):
            bounds = (Msg(N_("%(lo)s to %(hi)s"), lo=lo, hi=hi) if lo is not None and hi is not None else
                      Msg(N_("at least %(lo)s"), lo=lo) if lo is not None else Msg(N_("at most %(hi)s"), hi=hi))
            out[f["key"]] = Msg(N_("%(field)s is %(value)s: the protocol expects %(bounds)s. Confirm the value, or "
                                   "correct it."), field=_field_label(ins, f), value=v, bounds=bounds)
    return out


def _soft_range_checks(db: Session, p, a: Assessment, ins: dict) -> None:
    """A query for each value outside its field's soft range; a query whose value came back
    inside closes."""
    outside = outside_soft_range(ins, a.values)
    for f in ins["fields"]:
        key = f"soft:assessment:{a.id}:{f['key']}"
        v = a.values.get(f["key"])
        if f["key"] in outside:
            raise_check(db, p, "assessment", a.id, key, outside[f["key"]],
                        _enterer(ins), assessor_visible=ins["blinded"], field=f["key"], visit=a.visit,
                        instrument=a.instrument)
        else:
            resolve_check(db, key, Msg(N_("%(field)s is now %(value)s, within the expected range"),
                                       field=_field_label(ins, f), value=v))


def assessment_for(db: Session, actor, assessment_id: int) -> tuple[Assessment, Participant]:
    """The assessment and its child, if ``actor`` may see the child; else 404, as for an
    assessment that does not exist."""
    a = db.get(Assessment, assessment_id)
    p = db.get(Participant, a.participant_id) if a is not None else None
    if a is None or not may_see(db, actor, p):
        raise NotFound(NO_ASSESSMENT)
    return a, p


def correct_assessment(db: Session, actor, assessment_id: int, data: dict) -> Assessment:
    """Change recorded values; the old values stay in the audit trail with the required reason."""
    a, p = assessment_for(db, actor, assessment_id)
    ins = next(i for i in current_protocol(db).content["instruments"] if i["key"] == a.instrument)
    require_site_role(db, actor, p.site_id, "assessor" if ins["blinded"] else "coordinator")
    ensure_writable(db)
    errors: dict[str, str] = {}
    reason = text(data.get("reason"), "reason", errors, 500)
    if reason is None and "reason" not in errors:
        errors["reason"] = N_("is required for a correction")
    refuse(N_("The correction was not saved"), errors)
    merged = dict(a.values)
    if not isinstance(data.get("values"), dict):
        raise ValidationError(N_("The correction was not saved: values must be an object"),
                                  {"values": N_("must be an object")})
    merged.update(data["values"])
    values = validate_values(ins, merged)
    changes = {f"values.{k}": (a.values.get(k), v) for k, v in values.items() if a.values.get(k) != v}
    if not changes:
        raise ValidationError(N_("The correction changes nothing."), {"values": N_("same as recorded")})
    a.values = values
    audit.record(db, actor, "correct", "assessment", a.id, changes, reason=reason)
    clear_verification(db, actor, "assessment", a.id, p, f"corrected: {reason}")
    _soft_range_checks(db, p, a, ins)
    return a


def report_blinding_break(db: Session, actor, study_id: str, data: dict) -> BlindingBreak:
    """An assessor reports that they learned (or may have learned) the allocation."""
    p = get_participant(db, actor, study_id)
    require_site_role(db, actor, p.site_id, "assessor")
    ensure_writable(db)
    errors: dict[str, str] = {}
    reported = data["reported_on"] if data.get("reported_on") is not None else today(p.site.timezone)
    on = clinical_date(reported, "reported_on", errors, today(p.site.timezone),
                       not_before=(p.consent_date, N_("consent")))
    raw = data.get("description")
    desc = text(raw if isinstance(raw, str) else None, "description", errors, 1000)
    if desc is None and "description" not in errors:
        errors["description"] = N_("is required: how was the blinding broken?")
    refuse(N_("The report was not saved"), errors)
    b = BlindingBreak(participant_id=p.id, assessor_id=actor.id, reported_on=on, description=desc)
    db.add(b)
    db.flush()
    audit.created(db, actor, "blinding_break", b.id, {"participant": p.study_id, "assessor": actor.email,
                                                      "reported_on": on, "description": b.description})
    notify(db, users_with_role(db, "coordinator", p.site_id),
           Msg(N_("Blinding broken: assessor %(name)s reported on %(day)s that the allocation of %(study_id)s may be "
                  "known to them. Assign another assessor for this child's next visits."),
               name=actor.name, day=on, study_id=p.study_id),
           subject=Msg(N_("Blinding broken for %(study_id)s"), study_id=p.study_id), link=f"/participants/{p.study_id}")
    return b


def blinding_warning(db: Session, actor, participant_id: int) -> str | None:
    """A warning for an assessor who reported a broken blinding for this child before."""
    if actor is None or getattr(actor, "id", None) is None:
        return None
    b = db.execute(select(BlindingBreak).where(BlindingBreak.participant_id == participant_id,
                                               BlindingBreak.assessor_id == actor.id)
                   .order_by(BlindingBreak.reported_on).limit(1)).scalar_one_or_none()
    if b is None:
        return None
    return Msg(N_("You reported on %(day)s that your blinding for this child was broken; another assessor "
                  "should assess this child."), day=b.reported_on)


# --- visit schedule (arm-independent) ---------------------------------------------------------

def _role_instruments(content: dict, actor, site_id: int) -> list[dict]:
    """Instruments the actor's role at this site enters: blinded ones for assessors, others for
    coordinators; managers see all."""
    if is_cli(actor) or actor.has_role("manager"):
        return content["instruments"]
    if site_id in actor.site_ids("monitor", "investigator"):  # they read every form of their sites
        return content["instruments"]
    roles = {r.role for r in actor.roles if r.site_id in (None, site_id)}
    return [i for i in content["instruments"] if (i["blinded"] and "assessor" in roles)
            or (not i["blinded"] and "coordinator" in roles)]


def schedule(db: Session, actor, participants: list, on: dt.date | None = None) -> dict[int, list[dict]]:
    """For each randomized participant: every post-randomization visit with its window and a
    status (done, done_out_of_window, due, overdue, upcoming, not_expected), computed only from the
    randomization day, the visit timeline and the assessments: identical for every arm."""
    content = current_protocol(db).content
    ids = [p.id for p in participants]
    allocs = allocations_for(db, ids)
    done: dict[tuple[int, str], list[Assessment]] = {}
    if ids:
        for a in db.execute(select(Assessment).where(Assessment.participant_id.in_(ids))).scalars():
            done.setdefault((a.participant_id, a.visit), []).append(a)
    events = events_of(db, ids)
    stopped = withdrawal.follow_up_ended(db, ids)  # a withdrawal of consent to the follow-up
    not_done: dict[tuple[int, str], list[str]] = {}
    for pid_, vk, ik in notdone.not_done_keys(db, ids):
        not_done.setdefault((pid_, vk), []).append(ik)
    out: dict[int, list[dict]] = {}
    tzs = dict(db.execute(select(Site.id, Site.timezone)).all())
    rules = form_rules(db)
    for p in participants:
        day = on or today(tzs[p.site_id])
        alloc = allocs.get(p.id)
        start = local_date(alloc.randomized_at, tzs[p.site_id]) if alloc else None  # randomization_day, without a query per child
        ended_on = min([e.on for e in events.get(p.id, []) if e.type in ("withdrawn", "died")]
                       + ([stopped[p.id]] if p.id in stopped else []), default=None)
        wanted = [i["key"] for i in _role_instruments(content, actor, p.site_id)]
        out[p.id] = [_schedule_entry(content, v, wanted, done.get((p.id, v["key"]), []), alloc, start, ended_on, day,
                                     rules, not_done.get((p.id, v["key"]), [])) for v in content["visits"]]
    return out


def _schedule_entry(content: dict, v: dict, wanted: list[str], entered: list[Assessment], alloc,
                    start: dt.date | None, ended_on: dt.date | None, day: dt.date, rules: dict,
                    not_done: list[str] = ()) -> dict:
    """One visit of a participant's schedule: the forms the reader enters there, those entered,
    those recorded as not done (``instruments_not_done``: they count as settled, the visit is done
    once every form is entered or not done; not_done when none was entered), and (after
    randomization) the window and the visit's status on ``day``. A form an amendment added is
    expected only where it applies to the child (not_expected when none does)."""
    entry = {"visit": v["key"], "label": v["label"], "primary": v["primary"]}
    instruments = [k for k in wanted if any(i["key"] == k and v["key"] in i["visits"] for i in content["instruments"])]
    if start is not None and v["key"] != "baseline":
        closes = visit_window(v, start)[2]
        applying = [k for k in instruments if rules.get((v["key"], k), ALWAYS).applies(start, closes)]
        if instruments and not applying:
            entry.update(instruments_done=[], instruments_expected=[], instruments_not_done=[], status="not_expected")
            return entry
        instruments = applying
    recorded = [a for a in entered if a.instrument in instruments]
    skipped = sorted(k for k in not_done if k in instruments)
    entry["instruments_done"] = sorted(a.instrument for a in recorded)
    entry["instruments_expected"] = instruments
    entry["instruments_not_done"] = skipped
    settled = len({a.instrument for a in recorded} | set(skipped))
    if v["key"] == "baseline":
        entry["status"] = ("not_done" if not recorded else "done") if instruments and settled == len(instruments) else \
            ("missing" if alloc else "due")
        return entry
    if start is None:
        entry["status"] = "not_yet_randomized"
        return entry
    lo, target, hi = visit_window(v, start)
    entry.update(window_start=lo.isoformat(), target=target.isoformat(), window_end=hi.isoformat())
    complete = instruments and settled == len(instruments)
    if complete and not recorded:
        entry["status"] = "not_done"
    elif complete:
        entry["status"] = "done_out_of_window" if any(a.out_of_window for a in recorded) else "done"
    elif ended_on is not None and ended_on <= hi:  # withdrawn, died, or withdrew from the follow-up
        entry["status"] = "not_expected"
    elif day > hi:
        entry["status"] = "overdue"
    elif day >= lo:
        entry["status"] = "due"
    else:
        entry["status"] = "upcoming"
    return entry


def _today_span(db: Session, on: dt.date | None) -> tuple[dt.date, dt.date]:
    """The earliest and the latest "today" over the sites' time zones (or ``on``)."""
    if on is not None:
        return on, on
    days = {today(tz) for tz in db.execute(select(Site.timezone)).scalars()} or {dt.date.today()}
    return min(days), max(days)


def _utc(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.min)


def missing_form_candidates(db: Session, stmt, on: dt.date | None = None, limit: int | None = None) -> list[Participant]:
    """Of a select of participants, those with a form missing at a visit whose window has closed
    and no automatic query raised for it yet, found in the database (at most ``limit``): what
    the daily `trial checks run` raises. A union over the (visit, form) pairs, each hashing the
    forms entered and the forms queried of its pair once (NOT IN of non-null ids: a hash however
    stale the statistics, where NOT EXISTS became a loop over every query per child when the
    table had grown since it was last analysed; under an OR, a plan whose estimate alone made
    PostgreSQL spend a second compiling it)."""
    content = current_protocol(db).content
    _, last = _today_span(db, on)
    branches = []
    rules = form_rules(db)
    for v in content["visits"]:
        if v["key"] == "baseline":
            continue
        closed_before = _utc(last - dt.timedelta(days=v["day"] + v["window_after"]) + dt.timedelta(days=1))
        for ins in content["instruments"]:
            if v["key"] not in ins["visits"]:
                continue
            branches.append(select(Allocation.participant_id).where(
                Allocation.randomized_at < closed_before,
                _applies_from(rules.get((v["key"], ins["key"]), ALWAYS), v, Allocation.randomized_at),
                Allocation.participant_id.not_in(select(Assessment.participant_id).where(
                    Assessment.visit == v["key"], Assessment.instrument == ins["key"])),
                Allocation.participant_id.not_in(select(NotDone.participant_id).where(
                    NotDone.visit == v["key"], NotDone.instrument == ins["key"])),
                Allocation.participant_id.not_in(select(DataQuery.participant_id).where(
                    DataQuery.origin == "check", DataQuery.kind == "assessment", DataQuery.target_id.is_(None),
                    DataQuery.visit == v["key"], DataQuery.instrument == ins["key"]))))
    if not branches:
        return []
    q = stmt.where(Participant.id.in_(union_all(*branches))).order_by(Participant.id)
    return list(db.execute(q if limit is None else q.limit(limit)).scalars())


def _applies_from(rule, v: dict, randomized_at):
    """A condition no weaker than the form's rule (a day's slack for the site's time zone): the
    children it may apply to; :func:`check_missing_forms` checks each exactly."""
    if rule.since is None:
        return true()
    back = v["day"] + v["window_after"] if rule.everyone else 0
    return randomized_at >= _utc(rule.since - dt.timedelta(days=back + 1))


def check_missing_forms(db: Session, participants: list, on: dt.date | None = None) -> int:
    """An automatic query for each form still missing once its visit window has closed (not for a
    child withdrawn, deceased or withdrawn from the follow-up by then); idempotent: at most one open query per missing form.
    A run's queries are raised in one batch (their rows, first messages and audit records), so a
    query costs the same however many the run raises. Returns how many were raised."""
    return len(raise_checks(db, _missing_form_checks(db, participants, on)))


def _missing_form_checks(db: Session, participants: list, on: dt.date | None) -> list[Check]:
    """The forms of these children missing after their windows closed that have no automatic
    query yet (open or closed: a missing form is queried once), found in a few set queries."""
    content = current_protocol(db).content
    ids = [p.id for p in participants]
    if not ids:
        return []
    allocs = allocations_for(db, ids)
    done = set(db.execute(select(Assessment.participant_id, Assessment.visit, Assessment.instrument)
                          .where(Assessment.participant_id.in_(ids))).all())
    events = events_of(db, ids)
    stopped = withdrawal.follow_up_ended(db, ids)  # a withdrawal of consent to the follow-up ends it too
    tzs = dict(db.execute(select(Site.id, Site.timezone)).all())
    asked = set(db.execute(select(DataQuery.participant_id, DataQuery.visit, DataQuery.instrument).where(
        DataQuery.participant_id.in_(ids), DataQuery.origin == "check", DataQuery.kind == "assessment",
        DataQuery.target_id.is_(None))).all())  # a missing form is queried once; a closed query is not raised again
    # a form recorded as not done (trial.outcomes.notdone) is never queried as missing
    known, rules, out = done | asked | notdone.not_done_keys(db, ids), form_rules(db), []
    for p in participants:
        alloc = allocs.get(p.id)
        if alloc is None:
            continue
        start = local_date(alloc.randomized_at, tzs[p.site_id])  # randomization_day, without a query per child
        ends = [e.on for e in events.get(p.id, []) if e.type in ("withdrawn", "died")] + \
            ([stopped[p.id]] if p.id in stopped else [])
        out += _missing_of(content, rules, known, p, start, on or today(tzs[p.site_id]), min(ends, default=None))
    return out


def _missing_of(content: dict, rules: dict, known: set, p: Participant, start: dt.date, day: dt.date,
                ended_on: dt.date | None) -> list[Check]:
    """One child's forms missing on ``day`` after their windows closed, not yet known (entered or
    queried); none of a visit whose window had not closed by ``ended_on`` (the child withdrew, died
    or withdrew consent to the follow-up)."""
    out = []
    for v in content["visits"]:
        if v["key"] == "baseline":
            continue
        _, _, hi = visit_window(v, start)
        if day <= hi or (ended_on is not None and ended_on <= hi):
            continue
        for ins in content["instruments"]:
            if v["key"] in ins["visits"] and (p.id, v["key"], ins["key"]) not in known \
                    and rules.get((v["key"], ins["key"]), ALWAYS).applies(start, hi):
                out.append(Check(p, "assessment", None, missing_key(p.id, v["key"], ins["key"]),
                                 Msg(N_("%(form)s at %(visit)s is missing: its window closed on %(day)s. Enter it, "
                                        "or answer why it cannot be."), form=_form_label(ins), visit=_visit_label(v),
                                     day=hi),
                                 _enterer(ins), ins["blinded"], visit=v["key"], instrument=ins["key"]))
    return out


NO_ASSESSMENT = N_("No such assessment.")  # an unknown one and one the caller may not see: the same answer
WORKLISTS = ("due", "overdue", "out_of_window", "week")
WEEK = 7  # "due this week": windows open now or opening within the next seven days
WORKLIST_SORTS = ("visit", "study_id", "randomized")


def worklist_query(db: Session, actor, kind: str, site_code: str | None = None, search: str | None = None,
                   visit: str | None = None, on: dt.date | None = None):
    """The worklist as one SQL statement: a row (participant id, study id, visit, visit's place,
    randomization time) for each visit of the kind, read from the visit plan (a row per
    randomized child and visit, with its window in the site's calendar and the forms entered of
    each kind, kept by the writers): a visit is due or overdue when a form of the kind the reader
    enters at that site (blinded for assessors, the others for coordinators, both for monitors
    and managers) is not entered and the child has not withdrawn or died before the window
    closed; out of window when all of them are entered and one was entered outside the window.
    The baseline (due before randomization) comes from the children not yet randomized. Nothing
    of the whole trial is loaded: the list is filtered, counted and paged in the database."""
    content = _worklist_protocol(db, actor, kind, visit)
    ensure_current(db, writable=active_lock_id(db) is None)
    base = participant_query(db, actor, site_code, search)  # (refuses a site the reader does not work at)
    visible = visible_site_ids(db, actor)
    only = get_by_code(db, site_code).id if site_code else None
    sites = [(sid, tz) for sid, tz in db.execute(select(Site.id, Site.timezone).order_by(Site.id)).all()
             if (visible is None or sid in visible) and only in (None, sid)]
    wanted = [v for v in content["visits"] if visit is None or v["key"] == visit]
    branches = []
    later = _later_visits_branch(content, actor, kind, sites, wanted, base, search, on)
    if later is not None:
        branches.append(later)
    baseline = next((v for v in wanted if v["key"] == "baseline"), None)
    if kind == "due" and baseline is not None:
        before = _baseline_branch(content, actor, sites, base, baseline)
        if before is not None:
            branches.append(before)
    if not branches:
        return None
    return (branches[0] if len(branches) == 1 else union_all(*branches)).subquery("worklist")


def _worklist_protocol(db: Session, actor, kind: str, visit: str | None) -> dict:
    """The protocol's content, once the worklist asked for is one there is (a known kind, a visit
    of the protocol) and the actor is one who works from visit lists."""
    if kind not in WORKLISTS:
        raise ValidationError(N_("kind must be due, overdue, out_of_window or week"),
                              {"kind": N_("due, overdue, out_of_window or week")})
    if not actor.has_role("coordinator", "assessor", "monitor", "manager"):
        raise Forbidden(N_("Visit lists are for coordinators, assessors and managers."))
    content = current_protocol(db).content
    if visit is not None and visit not in {v["key"] for v in content["visits"]}:
        raise ValidationError(N_("visit is not a visit of the protocol."), {"visit": N_("not a visit of the protocol")})
    return content


# a visit plan row's forms of each kind (blinded or not): expected, entered, one entered late
_PLAN_FORMS = {True: (PlannedVisit.blinded_forms, PlannedVisit.blinded_entered, PlannedVisit.blinded_late),
               False: (PlannedVisit.other_forms, PlannedVisit.other_entered, PlannedVisit.other_late)}


def _later_visits_branch(content: dict, actor, kind: str, sites: list, wanted: list[dict], base, search: str | None,
                         on: dt.date | None):
    """The worklist's visits after randomization, from the visit plan alone (None when the reader
    enters none of their forms at these sites)."""
    pv = PlannedVisit
    later = [v["key"] for v in wanted if v["key"] != "baseline"]
    per_site = []  # at each site: the condition on a visit row for this reader's forms there
    for site_id, tz in sites:
        mine = {i["blinded"] for i in _role_instruments(content, actor, site_id) if any(v in i["visits"] for v in later)}
        if not mine:
            continue
        per_site.append(and_(pv.site_id == site_id, _plan_condition(kind, mine, on or today(tz))))
    if not (later and per_site):
        return None
    # the plan alone (the reader's sites are in per_site): the participant table only for a search
    q = (select(pv.participant_id.label("pid"), pv.visit.label("visit"), pv.visit_idx.label("visit_idx"),
                pv.randomized_at.label("randomized_at"))
         .where(or_(*per_site)))
    if len(later) < len([v for v in content["visits"] if v["key"] != "baseline"]):
        q = q.where(pv.visit.in_(later))
    if search:
        q = q.where(pv.participant_id.in_(base.with_only_columns(Participant.id)))
    return q


def _plan_condition(kind: str, mine: set[bool], day: dt.date):
    """The condition on a visit plan row for a worklist of the kind on ``day``, over the reader's
    kinds of forms (``mine``: blinded, not blinded or both)."""
    pv = PlannedVisit
    missing = or_(*[_PLAN_FORMS[b][1] < _PLAN_FORMS[b][0] for b in mine])
    if kind == "out_of_window":
        return and_(*[_PLAN_FORMS[b][1] == _PLAN_FORMS[b][0] for b in mine], or_(*[_PLAN_FORMS[b][0] > 0 for b in mine]),
                    or_(*[_PLAN_FORMS[b][2] for b in mine]))
    if kind == "overdue":
        return and_(pv.ended.is_(False), pv.closes < day, missing)
    if kind == "week":
        return and_(pv.ended.is_(False), pv.opens <= day + dt.timedelta(days=WEEK), pv.closes >= day, missing)
    return and_(pv.ended.is_(False), pv.opens <= day, pv.closes >= day, missing)


def _baseline_branch(content: dict, actor, sites: list, base, baseline: dict):
    """The baselines due: the children not randomized yet lacking one of the reader's baseline
    forms at their site (None when the reader enters no baseline form at these sites)."""
    need = {}  # site -> the reader's baseline forms there
    for site_id, _ in sites:
        forms = [i["key"] for i in _role_instruments(content, actor, site_id) if "baseline" in i["visits"]]
        if forms:
            need[site_id] = forms
    if not need:
        return None
    # the children not randomized yet (few) lacking one of the reader's baseline forms: one
    # grouped join, never a NOT EXISTS per site under an OR (which scans the forms per site)
    idx = content["visits"].index(baseline)
    mine = or_(*[and_(Participant.site_id == sid, Assessment.instrument.in_(forms)) for sid, forms in need.items()])
    have = func.sum(case((mine, 1), else_=0))
    wants = case(*[(Participant.site_id == sid, len(forms)) for sid, forms in need.items()], else_=0)
    return (base.with_only_columns(
        Participant.id.label("pid"), literal("baseline").label("visit"),
        literal(idx).label("visit_idx"), func.min(Allocation.randomized_at).label("randomized_at"))
        .outerjoin(Allocation, Allocation.participant_id == Participant.id)
        .outerjoin(Assessment, and_(Assessment.participant_id == Participant.id, Assessment.visit == "baseline"))
        .where(Allocation.id.is_(None), Participant.site_id.in_(list(need)))
        .group_by(Participant.id, Participant.site_id)
        .having(have < wants))


def _worklist_items(db: Session, actor, rows, on: dt.date | None, kind: str) -> list[dict]:
    """The visits of these (participant, visit) rows with their windows and forms, computed
    exactly for these rows only."""
    want = {"due": ("due",), "overdue": ("overdue",), "out_of_window": ("done_out_of_window",),
            "week": ("due", "upcoming")}[kind]
    people = {p.id: p for p in db.execute(select(Participant).where(Participant.id.in_({r.pid for r in rows}))).scalars()} if rows else {}
    sched = schedule(db, actor, list(people.values()), on)
    broken = set(db.execute(select(BlindingBreak.participant_id).where(
        BlindingBreak.assessor_id == getattr(actor, "id", None))).scalars())
    out = []
    for r in rows:
        v = next(x for x in sched[r.pid] if x["visit"] == r.visit)
        if v["status"] not in want:  # the SQL's day of a withdrawal is the UTC day: a rare edge the exact check drops
            continue
        item = {"study_id": people[r.pid].study_id, **v}
        if r.pid in broken:
            item["warning"] = blinding_warning(db, actor, r.pid)
        out.append(item)
    return out


def _run_checks(db: Session, participant_ids, on, kind: str = "overdue") -> None:
    """The missing-form checks for the participants an overdue list shows (each of its rows is a
    form missing after its window; the daily `trial checks run` covers everyone): idempotent, and
    bounded by the page, never a scan of the trial. A due or out-of-window list raises nothing."""
    if kind == "overdue" and active_lock_id(db) is None and participant_ids:  # the checks write; under a lock the worklist only reads
        people = list(db.execute(select(Participant).where(Participant.id.in_(sorted(set(participant_ids))))
                                 .order_by(Participant.id)).scalars())
        check_missing_forms(db, people, on)


def worklist(db: Session, actor, kind: str, site_code: str | None = None, on: dt.date | None = None,
             search: str | None = None, visit: str | None = None) -> list[dict]:
    """Due, overdue or out-of-window visits of the participants the actor may see, soonest
    target first (the whole list: the API's answer)."""
    wl = worklist_query(db, actor, kind, site_code, search, visit, on)
    if wl is None:
        return []
    rows = db.execute(select(wl).join(Participant, Participant.id == wl.c.pid)
                      .order_by(Participant.study_id, wl.c.visit_idx)).all()
    _run_checks(db, [r.pid for r in rows], on, kind)
    return sorted(_worklist_items(db, actor, rows, on, kind), key=lambda x: (x.get("target") or "", x["study_id"]))


def due_this_week(db: Session, actor, on: dt.date | None = None) -> int:
    """How many visits of the reader's forms are due now or open within the week, at the reader's
    sites (the home page's reminder; visits only, nothing of the arms: the same for every arm)."""
    if not actor.has_role("coordinator", "assessor"):
        return 0
    wl = worklist_query(db, actor, "week", on=on)
    return 0 if wl is None else db.execute(select(func.count()).select_from(wl)).scalar()


def worklist_page(db: Session, actor, kind: str, req, site_code: str | None = None, search: str | None = None,
                  visit: str | None = None, on: dt.date | None = None) -> Page:
    """A page of a worklist, counted and paged in the database (default: by visit, then the
    earliest randomized, that is the earliest target, first)."""
    wl = worklist_query(db, actor, kind, site_code, search, visit, on)
    sort = sort_key(req.sort, dict.fromkeys(WORKLIST_SORTS), "visit")
    if wl is None:
        return Page([], 0, req, sort)
    if sort.lstrip("-") == "study_id":  # the participant table joined only to sort by it
        stmt = select(wl).join(Participant, Participant.id == wl.c.pid)
        allowed = {"study_id": Participant.study_id}
    else:
        stmt, allowed = select(wl), {"visit": (wl.c.visit_idx, wl.c.randomized_at), "randomized": wl.c.randomized_at}
    page = paginate(db, ordered(stmt, sort, allowed, wl.c.pid), req, scalars=False, sort=sort)
    _run_checks(db, [r.pid for r in page.items], on, kind)
    return page.map(lambda rows: _worklist_items(db, actor, rows, on, kind))


def assessments_of(db: Session, actor, p) -> list[Assessment]:
    """Recorded assessments of a participant the actor may see (site scoping is the caller's
    get_participant). Assessments carry no allocation; the allocation guess is shown only to
    assessors and managers."""
    return list(db.execute(select(Assessment).where(Assessment.participant_id == p.id)
                           .order_by(Assessment.performed_on, Assessment.instrument)).scalars())
