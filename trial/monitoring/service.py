"""Marking records source-verified, and reading the marks (monitors and managers)."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.catalogue import N_, Msg
from trial.dataquality.models import Verification
from trial.dataquality.service import verification_key
from trial.db import utcnow
from trial.errors import Conflict
from trial.participants.service import get_participant
from trial.queries import targets
from trial.scope import require_site_role
from trial.trialstate.service import ensure_writable


def verify(db: Session, actor, study_id: str, data: dict) -> Verification:
    p = get_participant(db, actor, study_id, for_update=True)
    require_site_role(db, actor, p.site_id, "monitor")
    ensure_writable(db)
    t = targets.resolve(db, actor, p, data.get("on"), allow_field=False)
    key = verification_key(t.kind, t.id, p.id)
    if db.execute(select(Verification.id).where(Verification.current_key == key)).first():
        raise Conflict(Msg(N_("%(record)s of %(study_id)s is already marked verified."), record=t.label,
                           study_id=p.study_id))
    v = Verification(participant_id=p.id, kind=t.kind, target_id=t.id, current_key=key,
                     verified_by_id=getattr(actor, "id", None), verified_by=getattr(actor, "email", str(actor)),
                     verified_at=utcnow())
    db.add(v)
    db.flush()
    audit.created(db, actor, "source_verification", v.id, {"participant": p.study_id, "kind": t.kind, "id": t.id},
                  reveals_allocation=t.kind in targets.ARM_REVEALING_KINDS)
    return v


def marks(db: Session, participant_ids: list[int]) -> dict[tuple[int, str, int | None], Verification]:
    """The standing marks: (participant id, kind, target id) -> mark."""
    if not participant_ids:
        return {}
    rows = db.execute(select(Verification).where(Verification.participant_id.in_(participant_ids),
                                                 Verification.current_key.is_not(None))).scalars()
    return {(v.participant_id, v.kind, v.target_id): v for v in rows}


def may_read_marks(actor) -> bool:
    return actor is not None and actor.has_role("monitor", "manager")
