"""Missing data with reasons: a form recorded as "not done" (it will never be filled) with the
protocol's reason (``[[missing_reasons]]``). It is recorded by the role that enters the form (the
site's assessor for a blinded instrument, its coordinator otherwise), closes the form's
missing-form query with the reason's label, and the missing-form check never raises it again;
the worklists stop listing it; the bundle's tables and ADSL carry the reason.

A form recorded as not done is final while it stands: an assessment entered for it later is
refused (409, "it is recorded as not done"), and so is a parents' survey sent for it. Recording it
revokes the family's open survey links of that form (as a withdrawal of consent does, audited).
A record made by mistake is retracted with a reason (:func:`retract_not_done`, by the role that
records it): the row goes, its audit record keeps what it said and why it went, the casebook
signatures that covered it are invalidated (the audit hook of trial.oversight.signoff), and the
missing-form check raises the form again where its window has closed."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.catalogue import N_, Joined, Label, Msg
from trial.consent.models import Survey
from trial.dataquality.service import resolve_check
from trial.errors import Conflict
from trial.outcomes.models import NotDone
from trial.participants.models import Assessment, Participant
from trial.participants.service import allocation_of, get_participant, randomization_day
from trial.protocol.service import ALWAYS, DEFAULT_MISSING_REASONS, form_rules
from trial.protocol.service import current as current_protocol
from trial.scope import require_site_role
from trial.timeline import today, utc_now, visit_window
from trial.trialstate.service import ensure_writable
from trial.validation import refusal, text
from trial.visitplan.service import replan

MAX_TEXT = 1000
MAX_RETRACT_REASON = 500
LEAD = N_("The form was not recorded as not done")
RETRACT_LEAD = N_("The record of a form not done was not retracted")
NO_RECORD = N_("No such record of a form not done for this participant.")
LABELS = {"visit": N_("Visit"), "instrument": N_("Instrument"), "reason": N_("Reason"), "text": N_("Text")}


def missing_reasons(content: dict) -> list[dict]:
    """The protocol's reasons a form is not done (default: one, "other", with a text)."""
    return content.get("missing_reasons") or DEFAULT_MISSING_REASONS


def reason_label(content: dict, key: str) -> Label:
    r = next((x for x in missing_reasons(content) if x["key"] == key), {"key": key, "label": key})
    return Label("missing_reason", r["key"], r["label"])


def form_label(ins: dict) -> Label:
    return Label("instrument", ins["key"], ins["label"])


def visit_label(visit: dict) -> Label:
    return Label("visit", visit["key"], visit["label"])


def enterer(ins: dict) -> str:
    """Who enters the form (and so records it as not done)."""
    return "assessor" if ins["blinded"] else "coordinator"


def _parse(content: dict, data: dict) -> tuple[dict, dict, dict, str | None]:
    """The instrument, visit, reason and text a body names, or 400 naming every bad one."""
    instruments = {i["key"]: i for i in content["instruments"]}
    visits = {v["key"]: v for v in content["visits"]}
    reasons = {r["key"]: r for r in missing_reasons(content)}
    errors: dict[str, str] = {}
    ins = instruments.get(data.get("instrument")) if isinstance(data.get("instrument"), str) else None
    if ins is None:
        errors["instrument"] = Msg(N_("must be one of: %(allowed)s"),
                                   allowed=Joined(map(form_label, instruments.values()), ", "))
    visit = visits.get(data.get("visit")) if isinstance(data.get("visit"), str) else None
    if visit is None:
        errors["visit"] = Msg(N_("must be one of: %(allowed)s"), allowed=Joined(map(visit_label, visits.values()), ", "))
    elif ins is not None and visit["key"] not in ins["visits"]:
        errors["visit"] = Msg(N_("%(form)s is not collected at %(visit)s"), form=form_label(ins), visit=visit_label(visit))
    reason = reasons.get(data.get("reason")) if isinstance(data.get("reason"), str) else None
    if reason is None:
        errors["reason"] = Msg(N_("must be one of: %(allowed)s"), allowed=Joined(
            (Label("missing_reason", r["key"], r["label"]) for r in reasons.values()), ", "))
    words = text(data.get("text"), "text", errors, MAX_TEXT, required=bool(reason and reason.get("needs_text")))
    if errors:
        raise refusal(LEAD, errors, LABELS)
    return ins, visit, reason, words


def record_not_done(db: Session, actor, study_id: str, data: dict) -> NotDone:
    """Record a form as not done, with its reason: checked, written, audited, its missing-form
    query closed with the reason's label and the visit plan updated, in one transaction."""
    p = get_participant(db, actor, study_id, for_update=True)  # a concurrent entry of the form queues here
    content = current_protocol(db).content
    ins, visit, reason, words = _parse(content, data if isinstance(data, dict) else {})
    require_site_role(db, actor, p.site_id, enterer(ins))
    ensure_writable(db)
    _ensure_due(db, p, ins, visit)
    if db.execute(select(Assessment.id).where(Assessment.participant_id == p.id, Assessment.visit == visit["key"],
                                              Assessment.instrument == ins["key"])).first():
        raise Conflict(Msg(N_("%(form)s at %(visit)s is already entered for %(study_id)s: it cannot be recorded as "
                              "not done."), form=form_label(ins), visit=visit_label(visit), study_id=p.study_id))
    if not_done_of(db, p.id, visit["key"], ins["key"]) is not None:
        raise Conflict(Msg(N_("%(form)s at %(visit)s is already recorded as not done for %(study_id)s."),
                           form=form_label(ins), visit=visit_label(visit), study_id=p.study_id))
    nd = NotDone(participant_id=p.id, visit=visit["key"], instrument=ins["key"], reason=reason["key"], text=words,
                 recorded_by_id=getattr(actor, "id", None))
    db.add(nd)
    db.flush()
    audit.created(db, actor, "not_done", nd.id, {"participant": p.study_id, "visit": nd.visit,
                                                 "instrument": nd.instrument, "reason": nd.reason, "text": words})
    label = reason_label(content, reason["key"])
    revoke_open_surveys(db, actor, p, visit["key"], ins["key"])
    resolve_check(db, missing_key(p.id, visit["key"], ins["key"]),
                  Msg(N_("recorded as not done: %(reason)s"), reason=label) if not words else
                  Msg(N_("recorded as not done: %(reason)s (%(text)s)"), reason=label, text=words), actor)
    if visit["key"] != "baseline":
        replan(db, [p.id])  # the worklists stop listing the form
    return nd


def revoke_open_surveys(db: Session, actor, p: Participant, visit: str, instrument: str) -> int:
    """The family's open links (sent or opened) to this form's survey are revoked, audited, in the
    transaction that records the form as not done (as a withdrawal of consent revokes them,
    trial.consent.withdrawal). Returns how many."""
    n = 0
    for s in db.execute(select(Survey).where(Survey.participant_id == p.id, Survey.visit == visit,
                                             Survey.instrument == instrument, Survey.status.in_(("sent", "opened")))
                        .order_by(Survey.id)).scalars():
        old = s.status
        s.status, s.revoked_at = "revoked", utc_now()
        audit.record(db, actor, "update", "survey", s.id, {"status": (old, "revoked")},
                     reason="the form is recorded as not done")
        n += 1
    return n


def missing_key(participant_id: int, visit: str, instrument: str) -> str:
    """The missing-form check's key (as trial.outcomes.service.missing_key)."""
    return f"missing:{participant_id}:{visit}:{instrument}"


def _ensure_due(db: Session, p: Participant, ins: dict, visit: dict) -> None:
    """409 unless the form is expected of this child by now: a baseline form other than the one
    randomization needs (the primary outcome's instrument: randomization's rules stay as they are);
    a later visit of a randomized child whose window has opened, where the form applies to the
    child (an amendment's rule)."""
    content = current_protocol(db).content
    alloc = allocation_of(db, p.id)
    if visit["key"] == "baseline":
        if ins["key"] == content["primary_outcome"]["instrument"]:
            raise Conflict(Msg(N_("%(form)s at %(visit)s is needed for randomization: it cannot be recorded as not done."),
                               form=form_label(ins), visit=visit_label(visit)))
        return
    if alloc is None:
        raise Conflict(Msg(N_("The visit %(visit)s follows randomization; %(study_id)s is not randomized yet."),
                           visit=visit_label(visit), study_id=p.study_id))
    start = randomization_day(db, p, alloc)
    lo, _, hi = visit_window(visit, start)
    if not form_rules(db).get((visit["key"], ins["key"]), ALWAYS).applies(start, hi):
        raise Conflict(Msg(N_("%(form)s at %(visit)s is not in the plan of %(study_id)s."), form=form_label(ins),
                           visit=visit_label(visit), study_id=p.study_id))
    if today(p.site.timezone) < lo:
        raise Conflict(Msg(N_("%(visit)s of %(study_id)s is not due yet: its window opens on %(day)s."),
                           visit=visit_label(visit), study_id=p.study_id, day=lo))


def not_done_of(db: Session, participant_id: int, visit: str, instrument: str) -> NotDone | None:
    return db.execute(select(NotDone).where(NotDone.participant_id == participant_id, NotDone.visit == visit,
                                            NotDone.instrument == instrument)).scalar_one_or_none()


def ensure_not_done_absent(db: Session, p: Participant, ins: dict, visit: dict) -> None:
    """An assessment of a form recorded as not done is refused (409): the record is final."""
    nd = not_done_of(db, p.id, visit["key"], ins["key"])
    if nd is not None:
        raise Conflict(Msg(N_("%(form)s at %(visit)s is recorded as not done for %(study_id)s (%(reason)s): it "
                              "cannot be entered."), form=form_label(ins), visit=visit_label(visit),
                           study_id=p.study_id, reason=reason_label(current_protocol(db).content, nd.reason)))


def not_done_keys(db: Session, ids: list[int]) -> set[tuple[int, str, str]]:
    """(participant id, visit, instrument) of every form of these children recorded as not done."""
    if not ids:
        return set()
    return set(db.execute(select(NotDone.participant_id, NotDone.visit, NotDone.instrument)
                          .where(NotDone.participant_id.in_(ids))).all())


def not_done_views(db: Session, p: Participant) -> list[dict]:
    """A child's forms recorded as not done, for its page and the API (the site's readers)."""
    content = current_protocol(db).content
    return [{"id": nd.id, "visit": nd.visit, "instrument": nd.instrument, "reason": nd.reason,
             "reason_label": str(reason_label(content, nd.reason)), "text": nd.text,
             "recorded_at": nd.recorded_at}
            for nd in db.execute(select(NotDone).where(NotDone.participant_id == p.id)
                                 .order_by(NotDone.recorded_at, NotDone.id)).scalars()]


def as_dict(nd: NotDone, study_id: str) -> dict:
    return {"id": nd.id, "study_id": study_id, "visit": nd.visit, "instrument": nd.instrument, "reason": nd.reason,
            "text": nd.text, "recorded_at": nd.recorded_at.replace(tzinfo=dt.UTC).isoformat()}
