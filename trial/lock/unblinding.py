"""Unblinding by two people, and the addendum that corrects data after it.

A manager asks for the unblinding with an electronic signature, under the hard lock in force; the
trial is unblinded only when a user of the protocol's ``[unblinding] countersigner_role`` (TIME-A:
the statistician), never the same person, countersigns it. A manager may withdraw a request that
waits. Every step is signed or reasoned, and audited.

After the unblinding a hard lock is never lifted (trial.lock.service.lift_lock). A correction is an
addendum: the manager signs it with a reason, which ends the hard lock in force and reopens data
entry (each change audited as always); a new hard lock, signed as an addendum lock, closes it and
builds its own bundles, whose README names the hard lock the addendum corrects.
"""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.catalogue import N_, Msg, term
from trial.db import lock_for_update
from trial.errors import Conflict, Forbidden, NotFound
from trial.esign.models import Signature
from trial.esign.service import sign
from trial.lock.models import AWAITING, DataLock, UnblindingRequest
from trial.lock.service import open_addendum_of
from trial.notify.service import notify, users_with_role
from trial.protocol.service import current as current_protocol
from trial.randomize.models import RandomizationDesign
from trial.randomize.service import get_design, master_seed
from trial.scope import require_role
from trial.trialstate.service import state as trial_state
from trial.validation import refuse, text

DEFAULT_COUNTERSIGNER = "statistician"


def countersigner_role(db: Session) -> str:
    """The role whose user countersigns an unblinding (the protocol's ``[unblinding]``)."""
    return (current_protocol(db).content.get("unblinding") or {}).get("countersigner_role") or DEFAULT_COUNTERSIGNER


def _stamp(at) -> str:
    return at.isoformat(timespec="seconds") + "Z" if at else None


def _unblindable(db: Session, state) -> tuple[DataLock, RandomizationDesign]:
    """The hard lock in force and the design still sealed, or Conflict."""
    lock = db.get(DataLock, state.active_lock_id) if state.active_lock_id else None
    if lock is None or lock.kind != "hard":
        raise Conflict(N_("Unblinding needs a hard lock in force: lock the database first."))
    design = get_design(db)
    if design is None:
        raise Conflict(N_("Randomization was never opened: there is nothing to unblind."))
    if design.unblinded_at is not None:
        raise Conflict(Msg(N_("The trial was unblinded on %(at)s UTC."), at=f"{design.unblinded_at:%Y-%m-%d %H:%M}"))
    return lock, design


def waiting_request(db: Session) -> UnblindingRequest | None:
    return db.execute(select(UnblindingRequest).where(UnblindingRequest.status == AWAITING)
                      .order_by(UnblindingRequest.id.desc()).limit(1)).scalar()


def request_unblinding(db: Session, actor, meaning: str, password: str, code: str | None = None) -> UnblindingRequest:
    """The manager's signed request, tied to the hard lock in force: the trial is not unblinded
    yet. The users of the countersigner role are told it waits for one of them."""
    require_role(db, actor, "manager")
    state = trial_state(db, update=True)
    lock, _design = _unblindable(db, state)
    waiting = waiting_request(db)
    if waiting is not None:
        raise Conflict(Msg(N_("Unblinding request %(id)s already waits for its countersignature."), id=waiting.id))
    role = countersigner_role(db)
    sig = sign(db, actor, password, meaning, "unblinding", code)
    req = UnblindingRequest(lock_id=lock.id, status=AWAITING, countersigner_role=role, requested_by_id=actor.id,
                            requested_at=sig.signed_at, signature_id=sig.id)
    db.add(req)
    db.flush()
    audit.created(db, actor, "unblinding_request", req.id, {"lock_id": lock.id, "status": AWAITING,
                                                           "countersigner_role": role, "signature": sig.id},
                  reason=f"signed: {sig.meaning}")
    others = [uid for uid in users_with_role(db, role) if uid != actor.id]
    notify(db, others, Msg(N_("%(name)s asks to unblind the trial: the unblinding waits for your countersignature."),
                           name=sig.printed_name), link="/locks")
    return req


def _waiting(db: Session, request_id: int) -> UnblindingRequest:
    req = db.execute(lock_for_update(select(UnblindingRequest).where(UnblindingRequest.id == request_id),
                                     db.get_bind())).scalar_one_or_none()
    if req is None:
        raise NotFound(Msg(N_("No unblinding request %(id)s."), id=request_id))
    if req.status != AWAITING:
        raise Conflict(Msg(N_("Unblinding request %(id)s is %(status)s: it waits for nothing."), id=request_id,
                           status=term("unblinding_status", req.status)))
    return req


def countersign(db: Session, actor, request_id: int, meaning: str, password: str,
                code: str | None = None) -> UnblindingRequest:
    """The second signature: by a user of the request's countersigner role who did not ask for it;
    the seed is revealed and the trial unblinded now."""
    state = trial_state(db, update=True)
    req = _waiting(db, request_id)
    require_role(db, actor, req.countersigner_role)
    if req.requested_by_id == actor.id:
        raise Forbidden(N_("You asked for this unblinding: a second person countersigns it."))
    if state.active_lock_id != req.lock_id:  # (a lock is not lifted while a request waits: a backstop)
        raise Conflict(Msg(N_("Hard lock %(id)s, under which the unblinding was asked for, is no longer in force."),
                           id=req.lock_id))
    _lock, design = _unblindable(db, state)
    sig = sign(db, actor, password, meaning, "unblinding_countersignature", code)
    req.status, req.countersigned_by_id, req.countersigned_at, req.countersignature_id = \
        "countersigned", actor.id, sig.signed_at, sig.id
    audit.record(db, actor, "countersign_unblinding", "unblinding_request", req.id,
                 {"status": (AWAITING, req.status)}, reason=f"signed: {sig.meaning}")
    _reveal(db, actor, state, design, req, sig)
    return req


def _reveal(db: Session, actor, state, design: RandomizationDesign, req: UnblindingRequest, sig: Signature) -> None:
    asked = db.get(Signature, req.signature_id)
    design.revealed_seed = master_seed(db, design).hex()
    design.unblinded_at = state.unblinded_at = sig.signed_at
    db.info.pop("unblinded", None)
    audit.record(db, actor, "unblind", "randomization", design.id, {"unblinded_at": (None, design.unblinded_at),
                                                                   "revealed_seed": (None, design.revealed_seed)},
                 reason=f"signed: {asked.printed_name}: {asked.meaning}; countersigned: {sig.printed_name}: "
                        f"{sig.meaning} (hard lock {req.lock_id}, request {req.id})")


def withdraw(db: Session, actor, request_id: int, reason: str) -> UnblindingRequest:
    """A manager withdraws a request that waits (with a reason, audited): nothing is revealed."""
    require_role(db, actor, "manager")
    trial_state(db, update=True)
    req = _waiting(db, request_id)
    errors: dict[str, str] = {}
    reason = text(reason, "reason", errors, 500, required=True)
    refuse(N_("The request was not withdrawn"), errors)
    req.status = "withdrawn"
    audit.record(db, actor, "withdraw_unblinding", "unblinding_request", req.id, {"status": (AWAITING, "withdrawn")},
                 reason=reason)
    return req


def as_dict(db: Session, req: UnblindingRequest) -> dict:
    asked = db.get(Signature, req.signature_id)
    counter = db.get(Signature, req.countersignature_id) if req.countersignature_id else None
    return {"id": req.id, "status": req.status, "countersigner_role": req.countersigner_role, "lock_id": req.lock_id,
            "requested_by": asked.printed_name, "requested_at": _stamp(req.requested_at), "meaning": asked.meaning,
            "countersigned_by": counter.printed_name if counter else None,
            "countersigned_at": _stamp(req.countersigned_at), "countersignature_meaning": counter.meaning if counter else None}


def list_requests(db: Session, actor) -> list[dict]:
    """Every unblinding request, newest first (managers and the countersigner role)."""
    require_role(db, actor, "manager", countersigner_role(db))
    rows = db.execute(select(UnblindingRequest).order_by(UnblindingRequest.id.desc())).scalars()
    return [as_dict(db, r) for r in rows]


def may_countersign(actor, req: UnblindingRequest | None) -> bool:
    return req is not None and actor.has_role(req.countersigner_role) and req.requested_by_id != actor.id


# --- the addendum after the unblinding ------------------------------------------------------------

def open_addendum(db: Session, actor, lock_id: int, reason: str, password: str, code: str | None = None) -> DataLock:
    """Reopen data entry after the unblinding to correct what hard lock ``lock_id`` froze: signed
    with a reason (kind "addendum", its parent the hard lock); the hard lock ends, every change from
    now is audited as always, and the next hard lock closes the addendum with its own bundles."""
    require_role(db, actor, "manager")
    state = trial_state(db, update=True)
    lock = db.get(DataLock, lock_id)
    if lock is None or lock.kind != "hard":
        raise NotFound(Msg(N_("No hard lock %(id)s."), id=lock_id))
    if state.active_lock_id != lock.id:
        raise Conflict(Msg(N_("Lock %(id)s is not in force."), id=lock_id))
    if state.unblinded_at is None:
        raise Conflict(N_("The trial is not unblinded: an addendum corrects data after the unblinding. Before it, lift "
                          "the hard lock with a reason."))
    if open_addendum_of(db) is not None:  # (never while a hard lock holds; a backstop)
        raise Conflict(N_("An addendum is open already: sign a hard lock to close it first."))
    errors: dict[str, str] = {}
    reason = text(reason, "reason", errors, 500, required=True)
    refuse(N_("The addendum was not opened"), errors)
    sig = sign(db, actor, password, f"Addendum to hard lock {lock.id}: {reason}", "addendum", code)
    addendum = DataLock(kind="addendum", signature_id=sig.id, protocol_version=current_protocol(db).version,
                        created_at=sig.signed_at, parent_lock_id=lock.id)
    db.add(addendum)
    db.flush()
    lock.lifted_at, lock.lift_reason, lock.lift_signature_id = sig.signed_at, f"addendum {addendum.id}: {reason}", sig.id
    state.active_lock_id, state.lock_notice = None, None
    audit.created(db, actor, "data_lock", addendum.id, {"kind": "addendum", "parent_lock_id": lock.id,
                                                        "signature": sig.id}, reason=reason)
    audit.record(db, actor, "lift", "data_lock", lock.id, {"lifted_at": (None, lock.lifted_at)}, reason=lock.lift_reason)
    return addendum
