"""The access review: a manager reads every account with its roles and sites, two-factor enrolment
and last login, sees the active ones unused for INACTIVE_DAYS flagged, deactivates what should go
and signs the review (an electronic signature). The accounts as reviewed are kept with the
signature (:class:`AccessReview`), their SHA-256 in the audit trail; the bundle of a hard lock
names the last review before it."""
from __future__ import annotations

import datetime as dt
import hashlib
import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.auth.models import AccessReview, User
from trial.auth.service import deactivate
from trial.catalogue import N_
from trial.db import utcnow
from trial.errors import NotFound
from trial.esign.models import Signature
from trial.esign.service import sign
from trial.scope import require_role
from trial.sites.models import Site

INACTIVE_DAYS = 90
PURPOSE = "access_review"


def _stamp(t: dt.datetime | None) -> str | None:
    return t.isoformat(timespec="seconds") + "Z" if t else None


def _roles(u: User, codes: dict[int, str]) -> list[str]:
    return sorted(f"{r.role}@{codes[r.site_id]}" if r.site_id is not None else r.role for r in u.roles)


def is_stale(u: User, since: dt.datetime) -> bool:
    """An active account unused since ``since``: its last login before it, or never logged in and
    made before it."""
    return u.active and (u.last_login_at < since if u.last_login_at else u.created_at < since)


def accounts(db: Session, actor, now: dt.datetime | None = None) -> list[dict]:
    """Every account by e-mail, as the review shows and keeps it: name, roles in force (``role`` or
    ``role@SITE``), active, two-factor enrolment, creation and last login (UTC ISO; None: never),
    and ``inactive``: active but unused for INACTIVE_DAYS (or never used, made longer ago)."""
    require_role(db, actor, "manager")
    since = (now or utcnow()) - dt.timedelta(days=INACTIVE_DAYS)
    codes = dict(db.execute(select(Site.id, Site.code)).all())
    return [{"id": u.id, "email": u.email, "name": u.name, "roles": _roles(u, codes), "active": u.active,
             "mfa_enrolled": u.mfa_enrolled_at is not None, "created_at": _stamp(u.created_at),
             "last_login_at": _stamp(u.last_login_at), "inactive": is_stale(u, since)}
            for u in db.execute(select(User).order_by(User.email)).scalars()]


def digest(snapshot: list[dict]) -> str:
    return hashlib.sha256(json.dumps(snapshot, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sign_review(db: Session, actor, password: str, meaning: str, code: str | None = None) -> AccessReview:
    """The manager's signed review of the accounts as they stand now: the signature (password, and
    the current code when the manager enrolled in two-factor sign-in), the accounts kept as
    reviewed, audited with their SHA-256. A refused signature stores nothing."""
    require_role(db, actor, "manager")
    snapshot = accounts(db, actor)
    sig = sign(db, actor, password, meaning, PURPOSE, code=code)
    review = AccessReview(signature_id=sig.id, signed_at=sig.signed_at, inactive_days=INACTIVE_DAYS, accounts=snapshot)
    db.add(review)
    db.flush()
    audit.created(db, actor, "access_review", review.id, {
        "signature_id": sig.id, "accounts": len(snapshot), "inactive": sum(a["inactive"] for a in snapshot),
        "accounts_sha256": digest(snapshot)})
    return review


def last_review(db: Session, before: dt.datetime | None = None) -> dict | None:
    """The last signed review (at or before ``before``): when, by whom, how many accounts and how
    many flagged inactive; None when there was none."""
    q = select(AccessReview, Signature).join(Signature, Signature.id == AccessReview.signature_id)
    if before is not None:
        q = q.where(AccessReview.signed_at <= before)
    row = db.execute(q.order_by(AccessReview.signed_at.desc(), AccessReview.id.desc()).limit(1)).first()
    if row is None:
        return None
    review, sig = row
    return {"id": review.id, "signed_at": review.signed_at, "printed_name": sig.printed_name, "email": sig.email,
            "meaning": sig.meaning, "accounts": len(review.accounts),
            "inactive": sum(bool(a.get("inactive")) for a in review.accounts)}


def deactivate_account(db: Session, actor, user_id: int) -> bool:
    """Deactivate an account from the review (trial.auth.service.deactivate: sessions and tokens
    end, audited); False when it was deactivated already."""
    require_role(db, actor, "manager")
    user = db.get(User, user_id)
    if user is None:
        raise NotFound(N_("No such user."))
    return deactivate(db, actor, user, reason="deactivated at the access review")
