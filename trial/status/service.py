"""Status events and protocol deviations, recorded by the site's coordinator."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.catalogue import N_, Msg, term, terms
from trial.consent.models import ConsentWithdrawal
from trial.consent.withdrawal import STOPS_FOLLOW_UP, revoke_surveys, withdraw_consent
from trial.errors import Conflict
from trial.participants.models import EVENT_TYPES, FINAL_EVENTS, Participant, StatusEvent
from trial.participants.service import allocation_of, events_of, final_refusal, get_participant
from trial.scope import can_see_arm, require_site_role
from trial.status.models import Deviation
from trial.timeline import today
from trial.trialstate.service import ensure_writable
from trial.validation import clinical_date, refuse, text
from trial.visitplan.service import replan

DEVIATION_CATEGORIES = ("eligibility", "consent", "visit_out_of_window", "intervention", "assessment", "blinding", "other")


def record_event(db: Session, actor, study_id: str, data: dict) -> StatusEvent:
    p = get_participant(db, actor, study_id, for_update=True)
    require_site_role(db, actor, p.site_id, "coordinator")
    ensure_writable(db)
    errors: dict[str, str] = {}
    kind = data.get("type")
    if kind not in EVENT_TYPES:
        errors["type"] = Msg(N_("must be one of %(allowed)s"), allowed=terms("event", EVENT_TYPES))
    on = clinical_date(data.get("on"), "on", errors, today(p.site.timezone), not_before=(p.consent_date, N_("consent")))
    reason = text(data.get("reason"), "reason", errors, 500, required=True)
    refuse(N_("The event was not recorded"), errors)
    if kind in ("not_received", "discontinued_intervention", "lost_to_follow_up") and allocation_of(db, p.id) is None:
        raise Conflict(Msg(N_("%(study_id)s is not randomized: the event “%(event)s” follows randomization."),
                           study_id=p.study_id, event=term("event", kind)))
    existing = events_of(db, [p.id]).get(p.id, [])
    for e in existing:
        if e.type in FINAL_EVENTS:
            raise final_refusal(p, e)
        if e.type == kind:
            raise Conflict(Msg(N_("%(study_id)s already has the event “%(event)s” (%(day)s)."),
                               study_id=p.study_id, event=term("event", kind), day=e.on))
    ev = StatusEvent(participant_id=p.id, type=kind, on=on, reason=reason, recorded_by_id=getattr(actor, "id", None))
    db.add(ev)
    db.flush()
    # not_received / discontinued_intervention imply the arm had an intervention to receive;
    # they are shown only to unblinded readers of the audit trail.
    audit.created(db, actor, "status_event", ev.id, {"participant": p.study_id, "type": kind, "on": on, "reason": ev.reason},
                  reveals_allocation=kind in ("not_received", "discontinued_intervention"))
    if kind in FINAL_EVENTS:
        replan(db, [p.id])  # the visits after it are no longer expected
        revoke_surveys(db, actor, p, reason=f"status event: {kind}")  # no parent's link outlives it
    return ev


def record_withdrawal(db: Session, actor, study_id: str, data: dict) -> ConsentWithdrawal:
    """A withdrawal of consent (:func:`trial.consent.withdrawal.withdraw_consent`: scope ``all``
    also records the ``withdrawn`` status event), and the visit plan re-derived in the same
    transaction when it ends the follow-up (the visits after it are no longer expected)."""
    w = withdraw_consent(db, actor, study_id, data)
    if w.scope in STOPS_FOLLOW_UP:
        replan(db, [w.participant_id])
    return w


def record_deviation(db: Session, actor, study_id: str, data: dict) -> Deviation:
    p = get_participant(db, actor, study_id)
    require_site_role(db, actor, p.site_id, "coordinator")
    ensure_writable(db)
    errors: dict[str, str] = {}
    on = clinical_date(data.get("on"), "on", errors, today(p.site.timezone))
    cat = data.get("category")
    if cat not in DEVIATION_CATEGORIES:
        errors["category"] = Msg(N_("must be one of %(allowed)s"), allowed=terms("deviation", DEVIATION_CATEGORIES))
    desc = text(data.get("description"), "description", errors, 2000, required=True)
    refuse(N_("The deviation was not recorded"), errors)
    d = Deviation(participant_id=p.id, on=on, category=cat, description=desc, recorded_by_id=getattr(actor, "id", None))
    db.add(d)
    db.flush()
    audit.created(db, actor, "deviation", d.id, {"participant": p.study_id, "on": on, "category": cat,
                                                 "description": d.description}, reveals_allocation=cat == "intervention")
    return d


def events_for_reader(db: Session, actor, p: Participant) -> list[StatusEvent]:
    """The participant's status events with their ids, for unblinded readers (the intervention
    events imply an intervention)."""
    if not can_see_arm(db, actor, p.site_id):
        return []
    return events_of(db, [p.id]).get(p.id, [])


def deviations_of(db: Session, actor, p: Participant) -> list[Deviation]:
    """Deviations of one participant, for unblinded readers (an intervention deviation implies an
    intervention)."""
    if not can_see_arm(db, actor, p.site_id):
        return []
    return list(db.execute(select(Deviation).where(Deviation.participant_id == p.id).order_by(Deviation.on)).scalars())
