"""What a writer does to the flags in its own transaction: raise an automatic query (at most one
open per finding), close it when the finding is gone, clear a verification mark when the record
changes. Every step audited."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.catalogue import Msg
from trial.dataquality.models import DataQuery, QueryMessage, Verification
from trial.db import insert_new, utcnow
from trial.participants.models import Participant

SYSTEM = "system (data check)"


ARM_REVEALING_KINDS = ("session", "event", "adverse_event")  # records that exist because of the intervention


def verification_key(kind: str, target_id: int | None, participant_id: int) -> str:
    return f"{kind}:{target_id if target_id is not None else participant_id}"


def query_ref(site_code: str, number: int | None) -> str:
    """What a user is shown of a query's identity: its site and its number there (``AT01-Q17``),
    never the global id, whose gaps would tell how much happens at other sites and on the records
    a blinded reader may not know of."""
    return f"{site_code}-Q{number}"


def next_numbers(db: Session, site_ids) -> dict[int, int]:
    """The next query number of each site (its largest + 1). Taken under the audit chain head's
    lock, which every writer of a query holds from here until it commits (it audits the query,
    and each audit record takes that lock): two writers never take the same number (SQLite's
    transactions hold the write lock from their start anyway)."""
    audit.lock_head(db)
    ids = sorted(set(site_ids))
    top = dict(db.execute(select(DataQuery.site_id, func.max(DataQuery.number)).where(DataQuery.site_id.in_(ids))
                          .group_by(DataQuery.site_id)).all()) if ids else {}
    return {i: (top.get(i) or 0) + 1 for i in ids}


def raise_check(db: Session, p: Participant, kind: str, target_id: int | None, key: str, text: str, answer_role: str,
                assessor_visible: bool, field: str | None = None, visit: str | None = None,
                instrument: str | None = None) -> DataQuery | None:
    """An automatic query (origin ``check``) for a finding named by ``key``; none if one is open
    already for it."""
    if db.execute(select(DataQuery.id).where(DataQuery.open_key == key)).first():
        return None
    c = Check(p, kind, target_id, key, text, answer_role, assessor_visible, field, visit, instrument)
    now = utcnow()
    number = next_numbers(db, [p.site_id])[p.site_id]
    try:
        with db.begin_nested():  # two readers of a worklist at once: one query, and no error for the other
            q = DataQuery(**_query_row(c, now, number))
            db.add(q)
            db.flush()
            db.add(QueryMessage(**_message_row(c, q.id, now)))
            audit.record(db, SYSTEM, **_audit_entry(c, q.id))
    except IntegrityError:
        return None
    return q


@dataclass(frozen=True)
class Check:
    """A finding of an automatic check that wants a query: :func:`raise_check`'s arguments."""
    participant: Participant
    kind: str
    target_id: int | None
    key: str
    text: Msg | str
    answer_role: str
    assessor_visible: bool
    field: str | None = None
    visit: str | None = None
    instrument: str | None = None


KEYS_AT_ONCE = 5000  # keys in one IN list (SQLite takes at most 32,766 parameters a statement)


def raise_checks(db: Session, checks: list[Check]) -> list[int]:
    """:func:`raise_check` for many findings at once (a periodic run): the queries, their first
    messages and their audit records (each its own link of the chain, as raise_check writes them)
    each inserted in one batch, so that a query costs the same however many the run raises.
    Idempotent as raise_check: none for a key with an open query. The chain head is locked first,
    so a concurrent run waits and then finds this one's queries; the unique open key stays the
    backstop. Returns the new queries' ids."""
    if not checks:
        return []
    audit.lock_head(db)
    taken = _open_keys(db, [c.key for c in checks])
    todo = list({c.key: c for c in checks if c.key not in taken}.values())
    if not todo:
        return []
    now = utcnow()
    ids = dict(insert_new(db, DataQuery.__table__, _numbered_rows(db, todo, now), DataQuery.open_key, DataQuery.id))
    raised = [c for c in todo if c.key in ids]
    if raised:
        db.execute(insert(QueryMessage.__table__), [_message_row(c, ids[c.key], now) for c in raised])
        audit.record_many(db, SYSTEM, [_audit_entry(c, ids[c.key]) for c in raised])
    return [ids[c.key] for c in raised]


def _open_keys(db: Session, keys: list[str]) -> set[str]:
    out: set[str] = set()
    for i in range(0, len(keys), KEYS_AT_ONCE):
        out.update(db.execute(select(DataQuery.open_key).where(DataQuery.open_key.in_(keys[i:i + KEYS_AT_ONCE]))).scalars())
    return out


def _numbered_rows(db: Session, todo: list[Check], now) -> list[dict]:
    """The queries' rows, each with the next number of its site, in the order of the findings."""
    numbers = next_numbers(db, [c.participant.site_id for c in todo])
    rows = []
    for c in todo:
        rows.append(_query_row(c, now, numbers[c.participant.site_id]))
        numbers[c.participant.site_id] += 1
    return rows


def _query_row(c: Check, now, number: int) -> dict:
    p = c.participant
    return {"number": number, "participant_id": p.id, "site_id": p.site_id, "kind": c.kind, "target_id": c.target_id,
            "field": c.field, "visit": c.visit, "instrument": c.instrument, "text": str(c.text),
            "words": _words(c.text),
            "status": "open", "origin": "check", "check_key": c.key, "open_key": c.key, "answer_role": c.answer_role,
            "assessor_visible": c.assessor_visible, "raised_by_id": None, "raised_by": SYSTEM, "raised_at": now,
            "updated_at": now}


def _message_row(c: Check, query_id: int, now) -> dict:
    return {"query_id": query_id, "action": "raise", "text": str(c.text), "words": _words(c.text), "by": SYSTEM,
            "at": now}


def _words(text) -> dict | None:
    return text.words() if isinstance(text, Msg) else None


def _audit_entry(c: Check, query_id: int) -> dict:
    """The audit of a raised query: :func:`trial.audit.service.created`'s records."""
    values = {"participant": c.participant.study_id, "on": target_text(c.kind, c.target_id, c.field),
              "origin": "check", "check": c.key, "text": str(c.text)}
    return {"action": "create", "entity": "query", "entity_id": query_id,
            "changes": {k: (None, v) for k, v in values.items()}, "reveals_allocation": not c.assessor_visible}


def resolve_check(db: Session, key: str, why: str, actor=None) -> DataQuery | None:
    """Close the open automatic query for ``key``: the finding went away (the form was entered).
    ``actor``: the user whose act resolved it (who recorded the form as not done), credited with
    the closure; else the system's data check."""
    q = db.execute(select(DataQuery).where(DataQuery.open_key == key)).scalar_one_or_none()
    if q is None:
        return None
    now = utcnow()
    q.status, q.open_key, q.updated_at = "closed", None, now
    user = getattr(actor, "id", None) is not None
    db.add(QueryMessage(query_id=q.id, action="close", text=str(why), words=why.words() if isinstance(why, Msg) else None,
                        by=(getattr(actor, "email", None) or str(actor)) if user else SYSTEM,
                        by_id=actor.id if user else None, at=now))
    audit.record(db, actor if user else SYSTEM, "close", "query", q.id, {"status": ("open", "closed")}, reason=str(why))
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
