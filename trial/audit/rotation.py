"""Re-keying the audit chain (`trial audit rotate-key`): the chain goes on under a new key from its
next record, and the records before it keep verifying under the retired key.

The rotation, in one transaction that holds the chain head's lock: the chain must verify first (a
head re-sealed under the new key would otherwise vouch for a chain cut or rewritten before it);
the first rotation names the original key's epoch from record 1 on; a new epoch starts at the next
record with the new key's check; the head takes the new key's check, and the rotation's own audit
record, the first under the new key, seals the head under it. From then on an app server still
holding the old key refuses to append (the head's check is not its key's), and verification checks
each record under its epoch's key (``TRIAL_AUDIT_KEYS_RETIRED`` holds the old ones)."""
from __future__ import annotations

import hmac
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.audit.models import AuditHead, AuditKeyEpoch, AuditRecord
from trial.catalogue import N_, Msg
from trial.config import MIN_AUDIT_KEY, audit_key, retired_audit_keys
from trial.db import utcnow
from trial.errors import Conflict, Forbidden, ValidationError
from trial.scope import is_cli


@dataclass(frozen=True)
class Rotation:
    from_seq: int  # the first record under the new key (the rotation's own)
    old_check: str
    new_check: str


def _refusal(why: str) -> ValidationError:
    return ValidationError(Msg(N_("The audit key was not rotated: %(why)s"), why=why), {"key": why})


def check_new_key(new_key: str | None) -> bytes:
    """The new key as bytes, or a refusal naming what is wrong with it: empty, shorter than
    MIN_AUDIT_KEY, a comma or surrounding space (it must fit in TRIAL_AUDIT_KEYS_RETIRED later),
    the key in force, or a key retired before."""
    key = new_key or ""
    if not key:
        raise _refusal(N_("the new key is empty (give it on standard input)"))
    if len(key) < MIN_AUDIT_KEY:
        raise _refusal(Msg(N_("the new key must be at least %(n)s characters (a random secret)"), n=MIN_AUDIT_KEY))
    if "," in key or key != key.strip():
        raise _refusal(N_("the new key may not hold a comma or begin or end with a space (retired keys are listed "
                          "comma-separated in TRIAL_AUDIT_KEYS_RETIRED)"))
    raw = key.encode()
    if hmac.compare_digest(raw, audit_key()):
        raise _refusal(N_("the new key is the key in force: choose a new random key"))
    if any(hmac.compare_digest(raw, k) for k in retired_audit_keys()):
        raise _refusal(N_("the new key was retired before: choose a new random key"))
    return raw


def rotate_key(db: Session, actor, new_key: str | None) -> Rotation:
    """Continue the chain under ``new_key`` from its next record (the server's command line only)."""
    if not is_cli(actor):
        raise Forbidden(N_("The audit key is rotated at the server's command line."))
    new = check_new_key(new_key)
    audit.lock_head(db)
    checked = audit.verify(db)
    if not checked.ok:
        raise Conflict(Msg(N_("The audit key was not rotated: the chain does not verify (%(problem)s)."),
                           problem=checked.problem))
    old_check, new_check = audit.key_check(), audit.key_check(new)
    if new_check in {e.check for e in audit.epochs(db)}:
        raise _refusal(N_("the new key was retired before: choose a new random key"))
    seq, _ = audit.head(db)
    if seq and db.execute(select(AuditKeyEpoch.id).limit(1)).first() is None:
        first_at = db.execute(select(AuditRecord.at).where(AuditRecord.seq == 1)).scalar()
        db.add(AuditKeyEpoch(from_seq=1, key_check=old_check, started_at=first_at or utcnow()))
    db.add(AuditKeyEpoch(from_seq=seq + 1, key_check=new_check, started_at=utcnow()))
    db.flush()
    t = AuditHead.__table__
    db.execute(update(t).where(t.c.id == 1).values(key_check=new_check))
    audit.record(db, actor, "rotate_key", "audit_chain", "1", {"key_check": (old_check, new_check)},
                 reason=f"records 1 to {seq} stay under the retired key; from record {seq + 1} on, the new key",
                 key=new)
    return Rotation(seq + 1, old_check, new_check)
