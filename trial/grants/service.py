"""Countersigning role grants. The grants are made pending by trial.auth.service (create_user,
set_roles, reset_password); here a manager approves one with an electronic signature, or rejects
it with a reason. Every step is audited."""
from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.auth.models import GRANT_STATES, RoleAssignment, RoleGrant, User
from trial.auth.service import check_role_conflicts, current_roles_text
from trial.catalogue import N_, Msg, term, terms
from trial.db import lock_for_update, utcnow
from trial.errors import Conflict, Forbidden, NotFound, ValidationError
from trial.esign.service import sign
from trial.scope import require_role
from trial.sites.models import Site
from trial.validation import refuse, text


def as_dict(g: RoleGrant, codes: dict[int, str], emails: dict[int, str]) -> dict:
    return {"id": g.id, "user": emails.get(g.user_id), "role": g.role, "site": codes.get(g.site_id),
            "status": g.status, "reason": g.reason, "requested_by": g.requested_by,
            "requested_at": g.requested_at.isoformat(timespec="seconds") + "Z",
            "decided_by": emails.get(g.decided_by_id) if g.decided_by_id else None,
            "decided_at": g.decided_at.isoformat(timespec="seconds") + "Z" if g.decided_at else None,
            "decision_note": g.decision_note}


def list_grants(db: Session, actor, status: str | None = "pending") -> list[dict]:
    """Grants for managers (who countersign them) and admins (who request them)."""
    require_role(db, actor, "manager", "admin")
    if status is not None and status not in GRANT_STATES:
        raise ValidationError(Msg(N_("status must be one of: %(states)s."), states=terms("grant_status", GRANT_STATES)),
                              {"status": N_("unknown status")})
    q = select(RoleGrant).order_by(RoleGrant.id.desc())
    if status:
        q = q.where(RoleGrant.status == status)
    rows = db.execute(q.limit(500)).scalars().all()
    codes = dict(db.execute(select(Site.id, Site.code)).all())
    ids = {g.user_id for g in rows} | {g.decided_by_id for g in rows if g.decided_by_id}
    emails = dict(db.execute(select(User.id, User.email).where(User.id.in_(ids))).all()) if ids else {}
    holders = {u.id: u for u in db.execute(select(User).where(User.id.in_({g.user_id for g in rows}))).scalars()} if rows else {}
    site_names = dict(db.execute(select(Site.id, Site.name)).all())
    out = []
    for g in rows:
        d = as_dict(g, codes, emails)
        # who exactly gets which role where, and what the account holds already (so the countersigner
        # sees e.g. an admin asking for more)
        holder = holders.get(g.user_id)
        d["name"], d["site_name"] = holder.name if holder else None, site_names.get(g.site_id)
        d["holds"] = current_roles_text(holder, db) if holder else ""
        out.append(d)
    return out


def count_pending(db: Session, actor) -> int:
    """Grants this manager could countersign (not their own, not requested by them)."""
    if actor is None or not actor.has_role("manager"):
        return 0
    uid = getattr(actor, "id", None)
    return len(db.execute(select(RoleGrant.id).where(
        RoleGrant.status == "pending", RoleGrant.user_id != uid,
        (RoleGrant.requested_by_id.is_(None)) | (RoleGrant.requested_by_id != uid))).all())


def _pending(db: Session, actor, grant_id: int) -> tuple[RoleGrant, User]:
    require_role(db, actor, "manager")
    g = db.execute(lock_for_update(select(RoleGrant).where(RoleGrant.id == grant_id), db.get_bind())).scalar_one_or_none()
    if g is None:
        raise NotFound(Msg(N_("No role grant %(id)s."), id=grant_id))
    if g.status != "pending":
        raise Conflict(Msg(N_("Role grant %(id)s is %(status)s, not pending."), id=grant_id,
                           status=term("grant_status", g.status)))
    uid = getattr(actor, "id", None)
    if g.user_id == uid:
        raise Forbidden(N_("Nobody countersigns a grant of their own role: another manager must."))
    if g.requested_by_id is not None and g.requested_by_id == uid:
        raise Forbidden(N_("You asked for this grant: another manager must countersign it."))
    return g, db.get(User, g.user_id)


def _label(db: Session, role: str, site_id: int | None) -> str:
    return f"{role}@{db.get(Site, site_id).code}" if site_id else role


def _roles_text(db: Session, user: User) -> str | None:
    return ",".join(sorted(_label(db, r.role, r.site_id) for r in user.roles)) or None


def approve(db: Session, actor, grant_id: int, password: str, meaning: str, code: str | None = None) -> RoleGrant:
    """Countersign: the role assignment is made now, the user's sessions end (the new rights apply
    at the next login)."""
    g, user = _pending(db, actor, grant_id)
    if not user.active:
        raise Conflict(Msg(N_("%(email)s is deactivated: reactivate the account before granting it a role."),
                           email=user.email))
    check_role_conflicts([(r.role, r.site_id) for r in user.roles] + [(g.role, g.site_id)])
    sig = sign(db, actor, password, meaning, "countersign_grant", code)
    before = _roles_text(db, user)
    if (g.role, g.site_id) not in {(r.role, r.site_id) for r in user.roles}:
        user.roles.append(RoleAssignment(role=g.role, site_id=g.site_id))
    g.status, g.decided_by_id, g.decided_at, g.signature_id = "approved", actor.id, sig.signed_at, sig.id
    g.decision_note = sig.meaning
    user.session_token = secrets.token_hex(16)
    db.flush()
    audit.record(db, actor, "countersign_grant", "user", user.email,
                 {"pending_grant": (_label(db, g.role, g.site_id), None), "roles": (before, _roles_text(db, user))},
                 reason=f"signed: {sig.meaning}")
    return g


def reject(db: Session, actor, grant_id: int, reason: str) -> RoleGrant:
    g, user = _pending(db, actor, grant_id)
    errors: dict[str, str] = {}
    reason = text(reason, "reason", errors, 500, required=True)
    refuse(N_("The grant was not rejected"), errors)
    g.status, g.decided_by_id, g.decided_at, g.decision_note = "rejected", actor.id, utcnow(), reason
    audit.record(db, actor, "reject_grant", "user", user.email, {"pending_grant": (_label(db, g.role, g.site_id), None)}, reason=reason)
    return g

