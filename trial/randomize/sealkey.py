"""Rotating the seal key (`trial randomization rotate-seal-key`): every sealed seed is opened with
the key in force (TRIAL_SEAL_KEY) and sealed again under the new one, in one audited transaction.
The seed itself, and so the commitment and every list, never changes; afterwards only the new key
opens it (an app server still holding the old one cannot allocate until it is given the new key)."""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from sqlalchemy import select
from sqlalchemy.orm import Session

from trial import cache
from trial.audit import service as audit
from trial.catalogue import N_, Msg
from trial.config import seal_key
from trial.db import lock_for_update
from trial.errors import Conflict, Forbidden, ValidationError
from trial.randomize.models import SealedSeed
from trial.randomize.service import seal, unseal
from trial.scope import is_cli

FERNET_KEY_LENGTH = 44  # 32 bytes in URL-safe base64


def _refusal(why: str) -> ValidationError:
    return ValidationError(Msg(N_("The seal key was not rotated: %(why)s"), why=why), {"key": why})


def check_new_key(new_key: str | None) -> str:
    """The new key, or a refusal naming what is wrong with it: empty, not a Fernet key (too short,
    not URL-safe base64 of 32 bytes) or the key in force."""
    key = new_key or ""
    if not key:
        raise _refusal(N_("the new key is empty (give it on standard input)"))
    try:
        fernet = len(key) == FERNET_KEY_LENGTH and len(base64.urlsafe_b64decode(key.encode())) == 32
    except (binascii.Error, ValueError):
        fernet = False
    if not fernet:
        raise _refusal(Msg(N_("the new key must be a Fernet key: 32 bytes in URL-safe base64 (%(n)s characters)"),
                           n=FERNET_KEY_LENGTH))
    if hmac.compare_digest(key.encode(), seal_key().encode()):
        raise _refusal(N_("the new key is the key in force: make a new one"))
    return key


def _digest(ciphertext: bytes) -> str:
    return hashlib.sha256(bytes(ciphertext)).hexdigest()


def rotate_seal_key(db: Session, actor, new_key: str | None) -> int:
    """Re-seal every sealed seed under ``new_key`` (the server's command line only); returns how
    many were re-sealed. A seed the key in force cannot open is a refusal, and nothing changes."""
    if not is_cli(actor):
        raise Forbidden(N_("The seal key is rotated at the server's command line."))
    new = check_new_key(new_key)
    rows = db.execute(lock_for_update(select(SealedSeed).order_by(SealedSeed.design_id), db.get_bind())).scalars().all()
    for row in rows:
        seed = unseal(row.ciphertext)
        fresh = seal(seed, new)
        if unseal(fresh, new) != seed:  # (never: Fernet round-trips; checked before the old one is gone)
            raise Conflict(N_("The seal key was not rotated: the seed did not open again under the new key."))
        audit.record(db, actor, "rotate_seal_key", "sealed_seed", row.design_id,
                     {"ciphertext_sha256": (_digest(row.ciphertext), _digest(fresh))},
                     reason="the randomization seed re-sealed under a new TRIAL_SEAL_KEY")
        row.ciphertext = fresh
    if not rows:
        audit.record(db, actor, "rotate_seal_key", "sealed_seed", "-",
                     reason="no seed is sealed yet (randomization not opened): the new TRIAL_SEAL_KEY will seal it")
    db.flush()
    cache.sealed_seeds.clear()
    return len(rows)
