"""Locks, electronic signatures and unblinding.

A soft lock freezes data entry; a hard lock also builds the locked dataset bundles. While a lock
is in force every clinical write refuses with 423 (trial.trialstate.service.ensure_writable,
called by every write service). Unblinding is a signed event after a hard lock: it reveals the
seed.
"""
from __future__ import annotations

import secrets

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.catalogue import N_, Msg
from trial.dataquality.models import DataQuery
from trial.dataquality.service import shown_queries
from trial.errors import Conflict, NotFound, ValidationError
from trial.esign.models import Signature
from trial.esign.service import sign
from trial.exports.bundle import build_bundles, seal_name
from trial.lock.models import DataLock, LockBundle
from trial.protocol.service import current as current_protocol
from trial.randomize.service import get_design, master_seed
from trial.scope import is_blinded, require_role
from trial.trialstate.service import active_lock_id, lock_message
from trial.trialstate.service import state as trial_state
from trial.validation import refuse, text

KINDS = ("soft", "hard")


def new_dummy_seed() -> str:
    """The seed of a hard lock's dummy allocation: 32 bytes from the operating system's CSPRNG."""
    return secrets.token_hex(32)


def active_lock(db: Session) -> DataLock | None:
    lock_id = active_lock_id(db)
    return db.get(DataLock, lock_id) if lock_id else None


def _notice(lock: DataLock, sig: Signature) -> Msg:
    return Msg(N_("%(state)s (lock %(id)s, signed by %(name)s on %(when)s UTC)"),
               state=Msg(N_("soft-locked") if lock.kind == "soft" else N_("hard-locked")), id=lock.id,
               name=sig.printed_name, when=f"{lock.created_at:%Y-%m-%d %H:%M}")


def banner(db: Session) -> Msg | None:
    """What every page says while a lock is in force, in words each reader's language can give
    (the 423 answers keep the English text stored with the trial state); None while open."""
    lock = active_lock(db)
    if lock is None:
        return None
    return lock_message(_notice(lock, db.get(Signature, lock.signature_id)))


class OpenQueries(Conflict):
    code = "open_queries"


def create_lock(db: Session, actor, kind: str, meaning: str, password: str, accept_open_queries: bool = False) -> DataLock:
    """Sign a lock. A hard lock while queries are not closed is refused (409 open_queries, their
    ids in the fields) unless the signer accepts them, which is recorded with the signature."""
    require_role(db, actor, "manager")
    if kind not in KINDS:
        raise ValidationError("kind must be soft or hard", {"kind": "must be soft or hard"})
    if not isinstance(accept_open_queries, bool):
        raise ValidationError("accept_open_queries must be true or false", {"accept_open_queries": "must be true or false"})
    state = trial_state(db, update=True)
    current = db.get(DataLock, state.active_lock_id) if state.active_lock_id else None
    if current is not None and (current.kind == "hard" or kind == "soft"):
        raise Conflict(f"A {current.kind} lock (lock {current.id}) is already in force.")
    open_queries = []
    if kind == "hard":
        open_queries = db.execute(select(DataQuery.id, DataQuery.status).where(DataQuery.status != "closed")
                                  .order_by(DataQuery.id)).all()
        if open_queries and not accept_open_queries:
            raise OpenQueries(f"{len(open_queries)} queries are not closed. Close them first, or sign the hard lock "
                              "accepting them (accept_open_queries), which is recorded with the signature.",
                              {str(q.id): q.status for q in open_queries})
        if open_queries:  # no count, no ids: blinded readers see the signature (the ids are with the lock)
            meaning = f"{(meaning or '').strip()[:440]} [accepting the queries not closed, listed with the lock]"
    sig = sign(db, actor, password, meaning, f"{kind}_lock")
    version = None
    if kind == "hard":
        version = (db.execute(select(func.count()).select_from(DataLock).where(DataLock.kind == "hard")).scalar() or 0) + 1
    lock = DataLock(kind=kind, version=version, signature_id=sig.id, protocol_version=current_protocol(db).version,
                    created_at=sig.signed_at, dummy_seed=new_dummy_seed() if kind == "hard" else None,
                    accepted_open_queries=[q.id for q in open_queries] or None)
    db.add(lock)
    db.flush()
    if current is not None:  # a soft lock is superseded by the hard lock
        current.lifted_at, current.lift_reason, current.lift_signature_id = sig.signed_at, f"superseded by hard lock {lock.id}", sig.id
        audit.record(db, actor, "lift", "data_lock", current.id, {"lifted_at": (None, current.lifted_at)},
                     reason=current.lift_reason)
    state.active_lock_id, state.lock_notice = lock.id, _notice(lock, sig)
    audit.created(db, actor, "data_lock", lock.id, {"kind": kind, "version": version, "signature": sig.id})
    if lock.accepted_open_queries:  # which queries were open can tell of sessions and AEs: unblinded readers only
        audit.record(db, actor, "accept_open_queries", "data_lock", lock.id,
                     {"accepted_open_queries": (None, lock.accepted_open_queries)}, reveals_allocation=True)
    if kind == "hard":  # the chain as it stands at signing, sealed: cutting it back below here is detected
        audit.seal(db, seal_name(lock))
        for variant, (content, sha, manifest_sha) in build_bundles(db, lock, sig).items():
            db.add(LockBundle(lock_id=lock.id, variant=variant, content=content, sha256=sha, manifest_sha256=manifest_sha))
            audit.created(db, actor, "lock_bundle", f"{lock.id}/{variant}", {"sha256": sha, "manifest_sha256": manifest_sha})
        db.flush()
    return lock


def lift_lock(db: Session, actor, lock_id: int, reason: str, password: str) -> DataLock:
    require_role(db, actor, "manager")
    state = trial_state(db, update=True)
    lock = db.get(DataLock, lock_id)
    if lock is None:
        raise NotFound(f"No lock {lock_id}.")
    if state.active_lock_id != lock.id:
        raise Conflict(f"Lock {lock_id} is not in force.")
    errors: dict[str, str] = {}
    reason = text(reason, "reason", errors, 500, required=True)
    refuse("The lock was not lifted", errors)
    sig = sign(db, actor, password, f"Lift {lock.kind} lock {lock.id}: {reason}", f"lift_{lock.kind}_lock")
    lock.lifted_at, lock.lift_reason, lock.lift_signature_id = sig.signed_at, reason, sig.id
    state.active_lock_id, state.lock_notice = None, None
    audit.record(db, actor, "lift", "data_lock", lock.id, {"lifted_at": (None, lock.lifted_at)}, reason=lock.lift_reason)
    return lock


def unblind(db: Session, actor, meaning: str, password: str):
    require_role(db, actor, "manager")
    state = trial_state(db, update=True)
    lock = db.get(DataLock, state.active_lock_id) if state.active_lock_id else None
    if lock is None or lock.kind != "hard":
        raise Conflict("Unblinding needs a hard lock in force: lock the database first.")
    design = get_design(db)
    if design is None:
        raise Conflict("Randomization was never opened: there is nothing to unblind.")
    if design.unblinded_at is not None:
        raise Conflict(f"The trial was unblinded on {design.unblinded_at:%Y-%m-%d %H:%M} UTC.")
    sig = sign(db, actor, password, meaning, "unblinding")
    design.revealed_seed = master_seed(db, design).hex()
    design.unblinded_at = state.unblinded_at = sig.signed_at
    db.info.pop("unblinded", None)
    audit.record(db, actor, "unblind", "randomization", design.id, {"unblinded_at": (None, design.unblinded_at),
                                                                   "revealed_seed": (None, design.revealed_seed)},
                 reason=f"signed: {sig.meaning} (hard lock {lock.id})")
    return design


def list_locks(db: Session, actor) -> list[dict]:
    require_role(db, actor, "manager", "statistician")
    variant = "blinded" if is_blinded(db, actor) else "unblinded"
    bundles = {b.lock_id: b.manifest_sha256 for b in db.execute(
        select(LockBundle).where(LockBundle.variant == variant)).scalars()}
    out = []
    for lock, sig in db.execute(select(DataLock, Signature).join(Signature, Signature.id == DataLock.signature_id)
                                .order_by(DataLock.id)).all():
        out.append({"id": lock.id, "kind": lock.kind, "version": lock.version,
                    "created_at": lock.created_at.isoformat(timespec="seconds") + "Z",
                    "signed_by": sig.printed_name, "meaning": sig.meaning,
                    "lifted_at": lock.lifted_at.isoformat(timespec="seconds") + "Z" if lock.lifted_at else None,
                    "lift_reason": lock.lift_reason, "manifest_sha256": bundles.get(lock.id),
                    "accepted_open_queries": shown_queries(db, lock.accepted_open_queries, variant == "blinded")})
    return out


def get_bundle(db: Session, actor, lock_id: int) -> LockBundle:
    require_role(db, actor, "manager", "statistician")
    lock = db.get(DataLock, lock_id)
    if lock is None or lock.kind != "hard":
        raise NotFound(f"No hard lock {lock_id}: bundles exist for hard locks only.")
    variant = "blinded" if is_blinded(db, actor) else "unblinded"
    return db.execute(select(LockBundle).where(LockBundle.lock_id == lock_id, LockBundle.variant == variant)).scalar_one()
