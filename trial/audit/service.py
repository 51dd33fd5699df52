"""Audit trail: every service write calls :func:`record` inside its own transaction."""
from __future__ import annotations

import bisect
import datetime as dt
import functools
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from trial import settings
from trial.audit.models import AuditAnchor, AuditHead, AuditKeyEpoch, AuditRecord, AuditSeal
from trial.cache import prebuilt
from trial.catalogue import N_
from trial.config import audit_key, retired_audit_keys
from trial.db import is_sqlite, lock_for_update, utcnow
from trial.errors import DomainError
from trial.paging import Page, PageRequest, ordered, paginate, sort_key
from trial.scope import is_blinded

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


def _payload(rec) -> bytes:
    return json.dumps([
        rec.seq, rec.at.strftime("%Y-%m-%dT%H:%M:%S.%f"), rec.actor_id, rec.actor, rec.action,
        rec.entity, rec.entity_id, rec.field, rec.old, rec.new, rec.reason,
        bool(rec.reveals_allocation), rec.prev_hash,
    ], separators=(",", ":"), ensure_ascii=False).encode()


def compute_hash(rec, key: bytes | None = None) -> str:
    """HMAC-SHA256 under the audit key (``key``: the one of the record's epoch, when not the key in
    force) over the record's content and its predecessor's hash (an ORM object or a row). Without
    the key nobody can make a record that verifies."""
    return hmac.new(key or _key(), _payload(rec), hashlib.sha256).hexdigest()


def legacy_hash(rec) -> str:
    """The plain SHA-256 of records written before the chain was keyed (migration 0005)."""
    return hashlib.sha256(_payload(rec)).hexdigest()


def anchor_mac(rec, key: bytes | None = None) -> str:
    """The HMAC that re-anchors a legacy record: over its content and its SHA-256."""
    return hmac.new(key or _key(), b"anchor:" + _payload(rec) + rec.hash.encode(), hashlib.sha256).hexdigest()


def head_mac(seq: int, hash_: str, key: bytes | None = None) -> str:
    """The HMAC that seals the chain head (its number and last hash) under the audit key."""
    return hmac.new(key or _key(), f"head:{seq}:{hash_}".encode(), hashlib.sha256).hexdigest()


def seal_mac(seq: int, hash_: str, what: str, key: bytes | None = None) -> str:
    return hmac.new(key or _key(), json.dumps(["seal", seq, hash_, what], ensure_ascii=False).encode(),
                    hashlib.sha256).hexdigest()


KEY_CHECK_TEXT = b"trial audit chain key check"


def key_check(key: bytes | None = None) -> str:
    return hmac.new(key or _key(), KEY_CHECK_TEXT, hashlib.sha256).hexdigest()


def _key() -> bytes:
    return _cached_key(settings.raw("audit_key", "instance_path", "env"))


@functools.cache
def _cached_key(_setting: tuple[str | None, ...]) -> bytes:
    """Read once per process and setting (the argument: what the environment holds for it)."""
    return audit_key()


class AuditKeyMismatch(DomainError):
    """This process holds another audit key than the one the chain was written with: no write can
    be audited, so none is made (503: the server's configuration, not the request, is at fault;
    `/readyz` says so too, and a server started so refuses to start)."""
    status, code = 503, "audit_key_mismatch"
    retry_after = 60


def _actor(actor) -> tuple[int | None, str]:
    if actor is None:
        return None, SYSTEM
    if isinstance(actor, str):
        return None, actor
    return actor.id, actor.email


def record(db: Session, actor, action: str, entity: str, entity_id: Any,
           changes: dict[str, tuple[Any, Any]] | None = None, reason: str | None = None,
           reveals_allocation: bool = False, *, _seal_head: bool = True, key: bytes | None = None) -> list[dict]:
    """Append audit records: one per changed field (``changes`` maps field -> (old, new)), or a
    single event record when there are no field changes. Same transaction as the change.

    The chain head is advanced by an ``UPDATE ... RETURNING`` that locks its row until commit, so
    appends are serialized; it returns the new head number and (not yet changed) the previous
    hash. On PostgreSQL the records and the head's new hash are then written in one statement
    (a data-modifying CTE), on SQLite in two. ``key``: the audit key to write under, when not the
    one in force (the first record of a rotation, under the new key: trial.audit.rotation)."""
    return _append(db, actor, _items(action, entity, entity_id, changes, reason, reveals_allocation), _seal_head, key)


def record_many(db: Session, actor, entries: list[dict]) -> list[dict]:
    """Many :func:`record` calls of one actor in one append (a batch job's changes): each entry
    holds record()'s arguments (``action``, ``entity``, ``entity_id``; ``changes``, ``reason``,
    ``reveals_allocation`` optional). Every record is its own link of the chain with the content
    record() gives it, in the entries' order; the head is advanced once and the records inserted
    in pages, so the cost of a record does not grow with the batch (one row updated over and over
    in one transaction is read through all its earlier versions)."""
    items = [item for e in entries for item in _items(**e)]
    return _append(db, actor, items) if items else []


def _items(action: str, entity: str, entity_id: Any, changes: dict[str, tuple[Any, Any]] | None = None,
           reason: str | None = None, reveals_allocation: bool = False) -> list[dict]:
    """The records of one change, without their place in the chain: one per changed field, or
    one event record."""
    fields = [(f, o, n) for f, (o, n) in (changes or {}).items() if _text(o) != _text(n)] or [(None, None, None)]
    return [{"action": action, "entity": entity, "entity_id": str(entity_id), "field": f, "old": _text(o),
             "new": _text(n), "reason": reason, "reveals_allocation": reveals_allocation} for f, o, n in fields]


def _append(db: Session, actor, items: list[dict], seal_head: bool = True, key: bytes | None = None) -> list[dict]:
    """Chain ``items`` after the head (taken and locked for all of them at once) and write them."""
    actor_id, actor_name = _actor(actor)
    key = key or _key()
    db.flush()  # pending ORM changes first, so the audit follows them in the transaction
    head = db.execute(_advance_head_stmt(db), {"n": len(items)}).one()
    if head.key_check != _check_for(key):
        raise AuditKeyMismatch(N_("TRIAL_AUDIT_KEY is not the key this audit chain was written with: nothing was "
                                  "written. Give every app server and the command line the same key."))
    seq, prev = head.seq - len(items), head.hash
    at = utcnow()
    rows = []
    for item in items:
        seq += 1
        rec = {"seq": seq, "at": at, "actor_id": actor_id, "actor": actor_name, **item, "prev_hash": prev}
        rec["hash"] = prev = compute_hash(_Row(rec), key)
        rows.append(rec)
    head_params = {"head_hash": prev}
    if seal_head:  # (only migration 0005 writes before the head has its seal column)
        head_params["head_mac"] = head_mac(seq, prev, key)
    if is_sqlite(db.get_bind()) or len(rows) > ONE_STATEMENT:
        db.execute(insert(AuditRecord.__table__), rows)  # (many rows: executemany, in pages of multi-row VALUES)
        db.execute(_set_head_hash(seal_head), head_params)
    else:
        params = {f"{k}_{i}": v for i, r in enumerate(rows) for k, v in r.items()}
        params.update(head_params)
        db.execute(_append_stmt(len(rows), seal_head), params)
    for hook in tuple(_HOOKS):
        hook(db, actor, rows)
    return rows


# Callables run for the records each append writes, in the same transaction (``hook(db, actor,
# rows)``, rows as written): a layer above registers one (trial.oversight.signoff invalidates the
# casebook signatures a change covers); the audit layer imports nothing above it.
_HOOKS: list = []


def on_append(hook) -> None:
    """Register ``hook`` to run after every append (once, however often it is registered)."""
    if hook not in _HOOKS:
        _HOOKS.append(hook)


ONE_STATEMENT = 64  # PostgreSQL: up to this many records go in with the head's hash in one statement


_COLUMNS = ("seq", "at", "actor_id", "actor", "action", "entity", "entity_id", "field", "old", "new", "reason",
            "reveals_allocation", "prev_hash", "hash")


@prebuilt
def _advance_head_stmt(dialect: str):
    """Take ``n`` numbers from the chain head; the row stays locked until commit."""
    t = AuditHead.__table__
    return update(t).where(t.c.id == 1).values(seq=t.c.seq + bindparam("n")).returning(t.c.seq, t.c.hash, t.c.key_check)


@functools.cache
def _check_for(key: bytes) -> str:
    return key_check(key)


def _own_check() -> str:
    return _check_for(_key())


@functools.cache
def _set_head_hash(sealed: bool = True):
    t = AuditHead.__table__
    values = {"hash": bindparam("head_hash")}
    if sealed:
        values["mac"] = bindparam("head_mac")
    return update(t).where(t.c.id == 1).values(**values)


@functools.lru_cache(maxsize=64)
def _append_stmt(n: int, sealed: bool = True):
    """PostgreSQL: ``n`` records inserted and the head's new hash (and seal) set, in one statement."""
    t = AuditRecord.__table__
    rows = [{c: bindparam(f"{c}_{i}", type_=t.c[c].type) for c in _COLUMNS} for i in range(n)]
    # a single row as a dict: SQLAlchemy caches the compiled form of that, not of a multi-row VALUES
    return _set_head_hash(sealed).add_cte(insert(t).values(rows[0] if n == 1 else rows).cte("appended"))


def lock_head(db: Session) -> None:
    """Take the chain head's lock now, before a batch job's writes rather than at its first
    record (it is held until commit either way): two runs of one job then run one after the other,
    the second seeing what the first wrote, and neither holds a row the other waits for."""
    t = AuditHead.__table__
    db.execute(lock_for_update(select(t.c.seq).where(t.c.id == 1), db.get_bind()))


def head(db: Session) -> tuple[int, str]:
    """The chain head as this transaction sees it (after flushing its own records): the number and
    hash of the last record. A change to clinical data moves it; a rolled-back change that took
    the same number leaves a different hash."""
    db.flush()
    t = AuditHead.__table__
    row = db.execute(select(t.c.seq, t.c.hash).where(t.c.id == 1)).first()
    return (row.seq, row.hash) if row else (0, "")


def seal_of(db: Session, what: str) -> AuditSeal | None:
    return db.execute(select(AuditSeal).where(AuditSeal.what == what).order_by(AuditSeal.id)).scalars().first()


def seal(db: Session, what: str) -> tuple[int, str]:
    """Seal the chain head as it stands now in this transaction (after the caller's own audit
    records): its number and hash, kept with an HMAC. Returns (seq, hash)."""
    db.flush()
    t = AuditHead.__table__
    head = db.execute(select(t.c.seq, t.c.hash).where(t.c.id == 1)).one()
    db.add(AuditSeal(seq=head.seq, hash=head.hash, what=what[:200], at=utcnow(), mac=seal_mac(head.seq, head.hash, what[:200])))
    db.flush()
    return head.seq, head.hash


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
    # the parts of the chain (first, last record) written under a retired key this process was not
    # given: their links are checked, their HMACs cannot be
    unverified: list[tuple[int, int]] = field(default_factory=list)


# --- key epochs: the chain re-keyed by `trial audit rotate-key` (trial.audit.rotation) ------------

@dataclass(frozen=True)
class Epoch:
    """A part of the chain under one key: records ``first`` to ``last`` (None: to the head), the
    key's check and the key itself (None: a retired key this process was not given)."""
    first: int
    last: int | None
    check: str
    key: bytes | None


def known_keys() -> dict[str, bytes]:
    """The audit keys this process holds, by their check: the one in force and the retired ones
    (``TRIAL_AUDIT_KEYS_RETIRED``)."""
    return _known_keys(settings.raw("audit_key", "audit_keys_retired", "instance_path", "env"))


@functools.cache
def _known_keys(_setting: tuple[str | None, ...]) -> dict[str, bytes]:
    return {_check_for(k): k for k in (*retired_audit_keys(), _key())}


def epochs(db: Session) -> list[Epoch]:
    """The chain's parts by key, in order. A chain never re-keyed is one part under the key in
    force; the first rotation names the original key's part from record 1 on, each rotation the
    part from its own record on."""
    rows = db.execute(select(AuditKeyEpoch.from_seq, AuditKeyEpoch.key_check).order_by(AuditKeyEpoch.from_seq)).all()
    if not rows:
        return [Epoch(1, None, _own_check(), _key())]
    keys = known_keys()
    out = [Epoch(r.from_seq, rows[i + 1].from_seq - 1 if i + 1 < len(rows) else None, r.key_check, keys.get(r.key_check))
           for i, r in enumerate(rows)]
    if rows[0].from_seq > 1:  # records before every epoch: under a key no epoch names (never written so)
        out.insert(0, Epoch(1, rows[0].from_seq - 1, "", None))
    return out


def epoch_at(eps: list[Epoch], seq: int) -> Epoch:
    return eps[max(0, bisect.bisect_right([e.first for e in eps], seq) - 1)]


def _wrong_key(eps: list[Epoch]) -> str:
    """Why this process's key is not the chain's: a retired one, or another key altogether."""
    retired = [e for e in eps[:-1] if e.check == _own_check()]
    if retired:
        return (f"TRIAL_AUDIT_KEY is a retired key (in force for records {retired[-1].first} to {retired[-1].last}; "
                f"the chain was re-keyed at record {eps[-1].first}): set TRIAL_AUDIT_KEY to the key in force and keep "
                "this one in TRIAL_AUDIT_KEYS_RETIRED")
    return "TRIAL_AUDIT_KEY is not the key this chain was written with; verify with the deployment's key"


def verify(db: Session, batch: int = 5000) -> VerifyResult:
    """Walk the chain in order; report the first record whose link or HMAC does not match. A
    record rewritten by someone without the audit key (and every later hash recomputed, with
    SHA-256 or anything else) fails here: only the key makes a hash that verifies. Records from
    before the chain was keyed verify by their SHA-256 and the HMAC that re-anchored them. Each
    record is checked under the key of its epoch (:func:`epochs`); a part under a retired key this
    process was not given is named, unverified, and the chain does not pass."""
    h = AuditHead.__table__
    head = db.execute(select(h.c.seq, h.c.hash, h.c.key_check, h.c.mac)).first()
    eps = epochs(db)
    if head is not None and head.key_check is not None and head.key_check != _own_check():
        return VerifyResult(False, 0, 1, _wrong_key(eps))
    if head is not None and head.key_check is not None and head.key_check != eps[-1].check:
        return VerifyResult(False, 0, eps[-1].first, f"the key epochs were altered: the last one (from record "
                                                       f"{eps[-1].first}) is not under the key of the chain head")
    seals = db.execute(select(AuditSeal).order_by(AuditSeal.seq)).scalars().all()
    for sl in seals:
        key = epoch_at(eps, sl.seq).key
        if key is not None and not hmac.compare_digest(sl.mac, seal_mac(sl.seq, sl.hash, sl.what, key)):
            return VerifyResult(False, 0, sl.seq, f"the seal of record {sl.seq} ({sl.what}) was altered or forged")
    checked, prev, broken = _walk_chain(db, batch, eps)
    if broken is not None:
        return broken
    return (_end_problem(db, head, seals, checked, prev) or _unverified(eps, checked)
            or VerifyResult(True, checked))


def _unverified(eps: list[Epoch], top: int) -> VerifyResult | None:
    """The parts of the chain (up to record ``top``) under a retired key this process lacks."""
    parts = [(e.first, min(e.last or top, top), e.check) for e in eps if e.key is None and e.first <= top]
    if not parts:
        return None
    named = "; ".join(f"records {a} to {b}" + (f" (key check {c[:12]})" if c else "") for a, b, c in parts)
    return VerifyResult(False, top, parts[0][0], f"{named} were written under a retired audit key that "
                        "TRIAL_AUDIT_KEYS_RETIRED does not hold: they are not verified", [(a, b) for a, b, _ in parts])


def _walk_chain(db: Session, batch: int, eps: list[Epoch]) -> tuple[int, str, VerifyResult | None]:
    """Walk the records in order from the genesis, ``batch`` at a time: how many chain correctly,
    the last one's hash, and the first broken link (None when every record verifies). A record
    under a key this process lacks is checked for its place and link only."""
    anchors = dict(db.execute(select(AuditAnchor.seq, AuditAnchor.mac)).all())
    starts = [e.first for e in eps]
    prev = GENESIS
    expected_seq = 1
    checked = 0
    t = AuditRecord.__table__
    while True:
        rows = db.execute(select(t).where(t.c.seq >= expected_seq).order_by(t.c.seq).limit(batch)).all()
        if not rows:
            break
        for rec in rows:
            if rec.seq != expected_seq:
                return checked, prev, VerifyResult(False, checked, expected_seq, f"record {expected_seq} is missing")
            if rec.prev_hash != prev:
                return checked, prev, VerifyResult(False, checked, rec.seq,
                                                   f"record {rec.seq} does not link to record {rec.seq - 1}")
            key = eps[max(0, bisect.bisect_right(starts, rec.seq) - 1)].key
            if key is not None and not hmac.compare_digest(compute_hash(rec, key), rec.hash):
                legacy = anchors.get(rec.seq)
                if legacy is None or legacy_hash(rec) != rec.hash or not hmac.compare_digest(anchor_mac(rec, key), legacy):
                    return checked, prev, VerifyResult(False, checked, rec.seq,
                                                       f"record {rec.seq} (id {rec.id}) was altered or forged: its hash "
                                                       "does not match its content under the audit key")
            prev = rec.hash
            expected_seq += 1
            checked += 1
    return checked, prev, None


def _end_problem(db: Session, head, seals: list[AuditSeal], checked: int, prev: str) -> VerifyResult | None:
    """What is wrong at the chain's end (None when nothing): a head set without the audit key, a
    head that does not match the records that chain, a sealed record gone or changed (the chain
    cut back or rewritten after it)."""
    t = AuditRecord.__table__
    if head is not None and head.key_check is not None and (
            head.mac is None or not hmac.compare_digest(head.mac, head_mac(head.seq, head.hash))):
        return VerifyResult(False, checked, head.seq, f"the chain head (record {head.seq}) was set by someone without "
                                                      "the audit key: records were cut off the end or the head moved")
    if head is not None and (head.seq != checked or head.hash != prev):
        return VerifyResult(False, checked, checked + 1 if head.seq > checked else checked,
                            f"chain head says {head.seq} records but {checked} chain correctly (records after {checked} missing or altered)")
    for sl in seals:
        got = db.execute(select(t.c.hash).where(t.c.seq == sl.seq)).scalar()
        if got != sl.hash:
            return VerifyResult(False, checked, sl.seq, f"record {sl.seq}, sealed at {sl.what}, is gone or changed: "
                                                        "the chain was cut back or rewritten after it")
    return None


def reanchor(db: Session, actor="migration 0005", seal_head: bool = True) -> int:
    """Key a chain written with plain SHA-256: every existing record gets its anchor HMAC (the
    records are not touched), the head gets the key check, and the re-anchoring is recorded as
    the chain's next record, itself under the key. Returns how many records were anchored."""
    t = AuditRecord.__table__
    done = set(db.execute(select(AuditAnchor.seq)).scalars())
    n = 0
    last = 0
    while True:
        rows = db.execute(select(t).where(t.c.seq > last).order_by(t.c.seq).limit(5000)).all()
        if not rows:
            break
        new = [{"seq": r.seq, "mac": anchor_mac(r)} for r in rows if r.seq not in done and legacy_hash(r) == r.hash]
        if new:
            db.execute(insert(AuditAnchor.__table__), new)
            n += len(new)
        last = rows[-1].seq
    db.execute(update(AuditHead.__table__).where(AuditHead.__table__.c.id == 1).values(key_check=_own_check()))
    if last:
        record(db, actor, "reanchor", "audit_chain", "1", {"scheme": ("sha256", "hmac-sha256")},
               reason=f"{n} records written with plain SHA-256 anchored under the audit key (TRIAL_AUDIT_KEY)",
               _seal_head=seal_head)
    elif seal_head:
        reseal_head(db)
    return n


def reseal_head(db: Session) -> None:
    """Seal the head as it stands (migration 0009, and a chain re-anchored with no records)."""
    t = AuditHead.__table__
    head = db.execute(select(t.c.seq, t.c.hash).where(t.c.id == 1)).first()
    if head is not None:
        db.execute(update(t).where(t.c.id == 1).values(mac=head_mac(head.seq, head.hash)))


def _visible(db: Session, user, entity: str | None = None, actor_name: str | None = None, action: str | None = None):
    q = select(AuditRecord)
    if entity:
        q = q.where(AuditRecord.entity == entity)
    if actor_name:
        q = q.where(AuditRecord.actor.contains(actor_name.strip(), autoescape=True))
    if action:
        q = q.where(AuditRecord.action == action)
    if is_blinded(db, user):
        q = q.where(AuditRecord.reveals_allocation.is_(False))
    return q


def visible_query(db: Session, user):
    """A select of the audit records ``user`` may read (the trail's own filter: records that reveal
    an allocation withheld from anyone the trial still blinds), for the caller to narrow (the audit
    trail of a child or a site: trial.oversight.auditexport)."""
    return _visible(db, user)


def visible_records(db: Session, user, entity: str | None = None, limit: int = 200, offset: int = 0):
    """Audit records the user may read. Only unblinded roles read the trail, and records that
    reveal an allocation are withheld from anyone the trial still blinds."""
    q = _visible(db, user, entity).order_by(AuditRecord.seq.desc())
    return db.execute(q.limit(limit).offset(offset)).scalars().all()


AUDIT_SORTS = {"seq": AuditRecord.seq, "actor": AuditRecord.actor, "entity": AuditRecord.entity,
               "action": AuditRecord.action}


def page_records(db: Session, user, req: PageRequest, entity: str | None = None, actor_name: str | None = None,
                 action: str | None = None) -> Page:
    """A page of the trail the user may read (newest first unless sorted otherwise), filtered by
    entity, actor and action, counted in the database."""
    sort = sort_key(req.sort, AUDIT_SORTS, "-seq")
    if not (entity or actor_name or action) and sort in ("seq", "-seq") and not is_blinded(db, user):
        # the whole trail in chain order: the chain holds records 1..top without a gap (verify_chain
        # checks it), so the total and the page's place need no count and no offset over the trail
        top = db.execute(select(func.max(AuditRecord.seq))).scalar() or 0
        q = select(AuditRecord).limit(req.per_page)
        q = (q.where(AuditRecord.seq <= top - req.offset).order_by(AuditRecord.seq.desc()) if sort == "-seq"
             else q.where(AuditRecord.seq > req.offset).order_by(AuditRecord.seq))
        return Page(list(db.execute(q).scalars()), top, req, sort)
    return paginate(db, ordered(_visible(db, user, entity, actor_name, action), sort, AUDIT_SORTS, AuditRecord.seq),
                    req, sort=sort)
