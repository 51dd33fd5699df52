"""What a writer does to the flags in its own transaction: raise an automatic query (at most one
open per finding), close it when the finding is gone, clear a verification mark when the record
changes. Every step audited."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.catalogue import Msg
from trial.dataquality.models import DataQuery, QueryMessage, Verification
from trial.db import utcnow
from trial.participants.models import Participant

SYSTEM = "system (data check)"


ARM_REVEALING_KINDS = ("session", "event", "adverse_event")  # records that exist because of the intervention


def verification_key(kind: str, target_id: int | None, participant_id: int) -> str:
    return f"{kind}:{target_id if target_id is not None else participant_id}"


def raise_check(db: Session, p: Participant, kind: str, target_id: int | None, key: str, text: str, answer_role: str,
                assessor_visible: bool, field: str | None = None, visit: str | None = None,
                instrument: str | None = None) -> DataQuery | None:
    """An automatic query (origin ``check``) for a finding named by ``key``; none if one is open
    already for it."""
    if db.execute(select(DataQuery.id).where(DataQuery.open_key == key)).first():
        return None
    now = utcnow()
    try:
        with db.begin_nested():  # two readers of a worklist at once: one query, and no error for the other
            words = text.words() if isinstance(text, Msg) else None
            q = DataQuery(participant_id=p.id, site_id=p.site_id, kind=kind, target_id=target_id, field=field,
                          visit=visit, instrument=instrument, text=str(text), words=words, status="open", origin="check",
                          check_key=key,
                          open_key=key, answer_role=answer_role, assessor_visible=assessor_visible, raised_by=SYSTEM,
                          raised_at=now, updated_at=now)
            db.add(q)
            db.flush()
            db.add(QueryMessage(query_id=q.id, action="raise", text=str(text), words=words, by=SYSTEM, at=now))
            audit.created(db, SYSTEM, "query", q.id, {"participant": p.study_id,
                                                     "on": target_text(kind, target_id, field),
                                                     "origin": "check", "check": key, "text": str(text)},
                          reveals_allocation=not assessor_visible)
    except IntegrityError:
        return None
    return q


def resolve_check(db: Session, key: str, why: str) -> DataQuery | None:
    """Close the open automatic query for ``key``: the finding went away (the form was entered)."""
    q = db.execute(select(DataQuery).where(DataQuery.open_key == key)).scalar_one_or_none()
    if q is None:
        return None
    now = utcnow()
    q.status, q.open_key, q.updated_at = "closed", None, now
    db.add(QueryMessage(query_id=q.id, action="close", text=str(why), words=why.words() if isinstance(why, Msg) else None,
                        by=SYSTEM, at=now))
    audit.record(db, SYSTEM, "close", "query", q.id, {"status": ("open", "closed")}, reason=str(why))
    return q


def clear_verification(db: Session, actor, kind: str, target_id: int | None, p: Participant, reason: str) -> bool:
    """A change of a verified record clears its mark (audited). True if there was one."""
    v = db.execute(select(Verification).where(
        Verification.current_key == verification_key(kind, target_id, p.id))).scalar_one_or_none()
    if v is None:
        return False
    v.cleared_at, v.cleared_reason, v.current_key = utcnow(), reason[:300], None
    audit.record(db, actor, "clear_verification", "source_verification", v.id,
                 {"verified": (True, False)}, reason=reason, reveals_allocation=kind in ARM_REVEALING_KINDS)
    return True


def target_text(kind: str, target_id: int | None, field: str | None) -> str:
    return kind + (f" {target_id}" if target_id is not None else "") + (f", field {field}" if field else "")


def shown_queries(db: Session, ids: list[int] | None, blinded: bool) -> list[int]:
    """Of the query ids a lock's signer accepted open, those a reader may be told of: for a blinded
    reader only the queries assessors may read (a query on a session, an event or an AE exists
    because of the intervention, so its id, and even the count, can tell of the arms)."""
    ids = list(ids or [])
    if blinded and ids:
        shown = set(db.execute(select(DataQuery.id).where(DataQuery.id.in_(ids), DataQuery.assessor_visible)).scalars())
        ids = [i for i in ids if i in shown]
    return ids
