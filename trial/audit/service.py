"""Audit trail: every service write calls :func:`record` inside its own transaction."""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from trial.audit.models import AuditHead, AuditRecord
from trial.db import is_sqlite, prebuilt, utcnow

GENESIS = "0" * 64
SYSTEM = "system"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def compute_hash(rec) -> str:
    """SHA-256 over the record's content and its predecessor's hash (an ORM object or a row)."""
    payload = [
        rec.seq, rec.at.strftime("%Y-%m-%dT%H:%M:%S.%f"), rec.actor_id, rec.actor, rec.action,
        rec.entity, rec.entity_id, rec.field, rec.old, rec.new, rec.reason,
        bool(rec.reveals_allocation), rec.prev_hash,
    ]
    blob = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()


def _actor(actor) -> tuple[int | None, str]:
    if actor is None:
        return None, SYSTEM
    if isinstance(actor, str):
        return None, actor
    return actor.id, actor.email


def record(db: Session, actor, action: str, entity: str, entity_id: Any,
           changes: dict[str, tuple[Any, Any]] | None = None, reason: str | None = None,
           reveals_allocation: bool = False) -> list[dict]:
    """Append audit records: one per changed field (``changes`` maps field -> (old, new)), or a
    single event record when there are no field changes. Same transaction as the change.

    The chain head is advanced by an ``UPDATE ... RETURNING`` that locks its row until commit, so
    appends are serialized; it returns the new head number and (not yet changed) the previous
    hash. On PostgreSQL the records and the head's new hash are then written in one statement
    (a data-modifying CTE), on SQLite in two."""
    actor_id, actor_name = _actor(actor)
    items = [(f, o, n) for f, (o, n) in (changes or {}).items() if _text(o) != _text(n)] or [(None, None, None)]
    db.flush()  # pending ORM changes first, so the audit follows them in the transaction
    head = db.execute(_advance_head_stmt(db), {"n": len(items)}).one()
    seq, prev = head.seq - len(items), head.hash
    at = utcnow()
    rows = []
    for field, old, new in items:
        seq += 1
        rec = {"seq": seq, "at": at, "actor_id": actor_id, "actor": actor_name, "action": action, "entity": entity,
               "entity_id": str(entity_id), "field": field, "old": _text(old), "new": _text(new), "reason": reason,
               "reveals_allocation": reveals_allocation, "prev_hash": prev}
        rec["hash"] = prev = compute_hash(_Row(rec))
        rows.append(rec)
    if is_sqlite(db.get_bind()):
        db.execute(insert(AuditRecord.__table__), rows)
        db.execute(_set_head_hash(), {"head_hash": prev})
    else:
        params = {f"{k}_{i}": v for i, r in enumerate(rows) for k, v in r.items()}
        params["head_hash"] = prev
        db.execute(_append_stmt(len(rows)), params)
    return rows


_COLUMNS = ("seq", "at", "actor_id", "actor", "action", "entity", "entity_id", "field", "old", "new", "reason",
            "reveals_allocation", "prev_hash", "hash")


@prebuilt
def _advance_head_stmt(dialect: str):
    """Take ``n`` numbers from the chain head; the row stays locked until commit."""
    t = AuditHead.__table__
    return update(t).where(t.c.id == 1).values(seq=t.c.seq + bindparam("n")).returning(t.c.seq, t.c.hash)


@functools.cache
def _set_head_hash():
    t = AuditHead.__table__
    return update(t).where(t.c.id == 1).values(hash=bindparam("head_hash"))


@functools.lru_cache(maxsize=64)
def _append_stmt(n: int):
    """PostgreSQL: ``n`` records inserted and the head's new hash set, in one statement."""
    t = AuditRecord.__table__
    rows = [{c: bindparam(f"{c}_{i}", type_=t.c[c].type) for c in _COLUMNS} for i in range(n)]
    # a single row as a dict: SQLAlchemy caches the compiled form of that, not of a multi-row VALUES
    return _set_head_hash().add_cte(insert(t).values(rows[0] if n == 1 else rows).cte("appended"))


class _Row:
    """Attribute access over a dict, for compute_hash."""

    def __init__(self, d: dict):
        self.__dict__.update(d)


def created(db, actor, entity: str, entity_id, values: dict[str, Any], **kw) -> list[dict]:
    return record(db, actor, "create", entity, entity_id, {k: (None, v) for k, v in values.items()}, **kw)


@dataclass
class VerifyResult:
    ok: bool
    checked: int
    broken_seq: int | None = None
    problem: str | None = None


def verify(db: Session, batch: int = 5000) -> VerifyResult:
    """Walk the chain in order; report the first record whose link or hash does not match."""
    prev = GENESIS
    expected_seq = 1
    checked = 0
    while True:
        t = AuditRecord.__table__
        rows = db.execute(select(t).where(t.c.seq >= expected_seq).order_by(t.c.seq).limit(batch)).all()
        if not rows:
            break
        for rec in rows:
            if rec.seq != expected_seq:
                return VerifyResult(False, checked, expected_seq, f"record {expected_seq} is missing")
            if rec.prev_hash != prev:
                return VerifyResult(False, checked, rec.seq, f"record {rec.seq} does not link to record {rec.seq - 1}")
            if compute_hash(rec) != rec.hash:
                return VerifyResult(False, checked, rec.seq, f"record {rec.seq} (id {rec.id}) was altered: its hash does not match its content")
            prev = rec.hash
            expected_seq += 1
            checked += 1
    head = db.execute(select(AuditHead.__table__.c.seq, AuditHead.__table__.c.hash)).first()
    if head is not None and (head.seq != checked or head.hash != prev):
        return VerifyResult(False, checked, checked + 1 if head.seq > checked else checked,
                            f"chain head says {head.seq} records but {checked} chain correctly (records after {checked} missing or altered)")
    return VerifyResult(True, checked)


def visible_records(db: Session, user, entity: str | None = None, limit: int = 200, offset: int = 0):
    """Audit records the user may read. Only unblinded roles read the trail, and records that
    reveal an allocation are withheld from anyone the trial still blinds."""
    from trial.auth.scope import is_blinded
    q = select(AuditRecord).order_by(AuditRecord.seq.desc())
    if entity:
        q = q.where(AuditRecord.entity == entity)
    if is_blinded(db, user):
        q = q.where(AuditRecord.reveals_allocation.is_(False))
    return db.execute(q.limit(limit).offset(offset)).scalars().all()
