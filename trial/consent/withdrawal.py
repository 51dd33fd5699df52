"""Withdrawals of consent with their scope (issue 28): what a family still allows from a day on.

- ``intervention``: no further therapy sessions on or after the day; the child is still followed
  up (visits, questionnaires, checks go on). Participation does not end: no status event.
- ``follow_up``: no further visits or surveys: an assessment of a visit whose window opens after
  the day is refused, and the forms of every visit whose window had not closed by then are never
  "missing" (the visit plan marks them ended, as for a withdrawn child; the missing-form checks
  skip them). Sessions may go on. Participation does not end: no status event.
- ``all``: neither, and it also records the ``withdrawn`` status event (as a withdrawal did
  before issue 28), which refuses any further data and ends participation.

``data_use`` (``keep``, ``delete_unanalysed``) is recorded and carried to the statistician (the
lock's bundle, table ``withdrawal``); nothing already collected is deleted here.

The visit plan (trial.visitplan, a layer above this one) is re-derived by the caller in the same
transaction: :func:`trial.status.service.record_withdrawal`.
"""
from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.catalogue import N_, Msg, term, terms
from trial.consent.models import Consent, ConsentWithdrawal, Survey
from trial.errors import Conflict
from trial.participants.models import FINAL_EVENTS, Participant, StatusEvent
from trial.participants.service import events_of, final_refusal, get_participant
from trial.scope import require_site_role
from trial.timeline import today, utc_now
from trial.trialstate.service import ensure_writable
from trial.validation import clinical_date, refuse, text

SCOPES = ("intervention", "follow_up", "all")
DATA_USES = ("keep", "delete_unanalysed")
STOPS_SESSIONS = ("intervention", "all")
STOPS_FOLLOW_UP = ("follow_up", "all")
TEXT_MAX = 2000


def withdraw_consent(db: Session, actor, study_id: str, data: dict) -> ConsentWithdrawal:
    """Record a family's withdrawal of consent (the site's coordinator, or a manager): 400 naming
    each bad field (``on`` in the future at the site or before the consent; ``scope``,
    ``data_use`` not from their lists; ``text`` too long); 409 for a child already withdrawn or
    deceased, or a second withdrawal of the same scope. Audited; scope ``all`` also records the
    ``withdrawn`` status event."""
    p = get_participant(db, actor, study_id, for_update=True)
    require_site_role(db, actor, p.site_id, "coordinator", "manager")
    ensure_writable(db)
    errors: dict[str, str] = {}
    on = clinical_date(data.get("on"), "on", errors, today(p.site.timezone), not_before=(p.consent_date, N_("consent")))
    scope, use = data.get("scope"), data.get("data_use")
    if scope not in SCOPES:
        errors["scope"] = Msg(N_("must be one of %(allowed)s"), allowed=terms("withdrawal_scope", SCOPES))
    if use not in DATA_USES:
        errors["data_use"] = Msg(N_("must be one of %(allowed)s"), allowed=terms("data_use", DATA_USES))
    words = text(data.get("text"), "text", errors, TEXT_MAX)
    refuse(N_("The withdrawal was not recorded"), errors)
    for e in events_of(db, [p.id]).get(p.id, []):
        if e.type in FINAL_EVENTS:
            raise final_refusal(p, e)
    for w in withdrawals_of(db, [p.id]).get(p.id, []):
        if w.scope == scope:
            raise Conflict(Msg(N_("%(study_id)s already has a withdrawal of consent “%(scope)s” (%(day)s)."),
                               study_id=p.study_id, scope=term("withdrawal_scope", scope), day=w.on))
    w = ConsentWithdrawal(participant_id=p.id, on=on, scope=scope, data_use=use, text=words,
                          recorded_by_id=getattr(actor, "id", None))
    db.add(w)
    db.flush()
    # free text could name an arm: the entry is then kept from blinded readers of the trail
    audit.created(db, actor, "consent_withdrawal", w.id, {"participant": p.study_id, "on": on, "scope": scope,
                                                          "data_use": use, "text": words},
                  reveals_allocation=words is not None)
    if scope in STOPS_FOLLOW_UP:
        revoke_surveys(db, actor, p)
    if scope == "all":
        ev = StatusEvent(participant_id=p.id, type="withdrawn", on=on, reason="consent withdrawn (all)",
                         recorded_by_id=getattr(actor, "id", None))
        db.add(ev)
        db.flush()
        audit.created(db, actor, "status_event", ev.id, {"participant": p.study_id, "type": "withdrawn", "on": on,
                                                         "reason": ev.reason})
    return w


def revoke_surveys(db: Session, actor, p: Participant, reason: str = "consent withdrawn", visit: str | None = None,
                   instrument: str | None = None, keep: int | None = None) -> int:
    """A withdrawal of consent to the follow-up revokes the family's outstanding surveys in its
    transaction: no link keeps working, no reminder goes out; so does a final status event (died,
    withdrawn), and a form the staff enter revokes the links of that form (``visit``,
    ``instrument``; ``keep``: the survey being answered). ``p`` is locked first (then the surveys).
    Audited. Returns how many."""
    n = 0
    q = select(Survey).where(Survey.participant_id == p.id, Survey.status.in_(("sent", "opened")))
    if visit is not None:
        q = q.where(Survey.visit == visit)
    if instrument is not None:
        q = q.where(Survey.instrument == instrument)
    if keep is not None:
        q = q.where(Survey.id != keep)
    for s in db.execute(q.order_by(Survey.id)).scalars():
        old = s.status
        s.status, s.revoked_at = "revoked", utc_now()
        audit.record(db, actor, "update", "survey", s.id, {"status": (old, "revoked")}, reason=reason)
        n += 1
    return n


def withdrawals_of(db: Session, participant_ids: list[int]) -> dict[int, list[ConsentWithdrawal]]:
    """Each participant's withdrawals of consent, in date order."""
    out: dict[int, list[ConsentWithdrawal]] = {}
    for i in range(0, len(participant_ids), 900):
        for w in db.execute(select(ConsentWithdrawal).where(ConsentWithdrawal.participant_id.in_(participant_ids[i:i + 900]))
                            .order_by(ConsentWithdrawal.on, ConsentWithdrawal.id)).scalars():
            out.setdefault(w.participant_id, []).append(w)
    return out


def follow_up_ended(db: Session, participant_ids: list[int]) -> dict[int, dt.date]:
    """The day each participant's follow-up ended by a withdrawal of consent (scope follow_up or
    all; the earliest), for those that have one."""
    out: dict[int, dt.date] = {}
    for pid, ws in withdrawals_of(db, participant_ids).items():
        days = [w.on for w in ws if w.scope in STOPS_FOLLOW_UP]
        if days:
            out[pid] = min(days)
    return out


def _first(db: Session, p: Participant, scopes: tuple[str, ...]) -> ConsentWithdrawal | None:
    return next((w for w in withdrawals_of(db, [p.id]).get(p.id, []) if w.scope in scopes), None)


def ensure_session_allowed(db: Session, p: Participant, held: dt.date) -> None:
    """409 for a session on or after the day the family withdrew consent to the intervention."""
    w = _first(db, p, STOPS_SESSIONS)
    if w is not None and held >= w.on:
        raise Conflict(Msg(N_("%(study_id)s: the family withdrew consent (“%(scope)s”) on %(day)s; no sessions on or "
                              "after that day."), study_id=p.study_id, scope=term("withdrawal_scope", w.scope), day=w.on),
                       {"held_on": Msg(N_("is on or after %(day)s"), day=w.on)})


def ensure_visit_allowed(db: Session, p: Participant, opens: dt.date) -> None:
    """409 for an assessment of a visit whose window opens after the day the family withdrew
    consent to the follow-up."""
    w = _first(db, p, STOPS_FOLLOW_UP)
    if w is not None and opens > w.on:
        raise Conflict(Msg(N_("%(study_id)s: the family withdrew consent (“%(scope)s”) on %(day)s; no assessments of "
                              "visits after that day."), study_id=p.study_id, scope=term("withdrawal_scope", w.scope),
                           day=w.on), {"visit": Msg(N_("opens after %(day)s"), day=w.on)})


def gave_option(db: Session, participant_id: int, option: str) -> bool | None:
    """Whether the child's family gave a consent option (e.g. ``video_recording``): True/False
    from the latest parental consent's options, None when it was not recorded (no consent with
    options, as for consents migrated from the single consent date, or an option not asked)."""
    c = db.execute(select(Consent).where(Consent.participant_id == participant_id, Consent.signer != "child")
                   .order_by(Consent.signed_on.desc(), Consent.id.desc()).limit(1)).scalar_one_or_none()
    if c is None or not isinstance(c.options, dict) or option not in c.options:
        return None
    return bool(c.options[option])
