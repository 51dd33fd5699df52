"""Therapists' credentials: recorded by an admin (audited), checked by every session writer.

A protocol with a ``credentials`` list requires one: a session is accepted only from a therapist
whose credential of a listed kind is valid (not revoked, ``valid_from`` <= day <= ``valid_to``) on
the session's day. A protocol without the list requires none (trials that do not deliver a
credentialed intervention)."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.auth.models import RoleAssignment, User
from trial.catalogue import N_, Joined, Label, Msg
from trial.credentials.models import Credential
from trial.db import utcnow
from trial.errors import Conflict, NotFound
from trial.protocol.service import current as current_protocol
from trial.scope import require_role, visible_site_ids
from trial.sites.models import Site
from trial.timeline import today
from trial.validation import parse_date, refuse, text

WARN_DAYS = 60  # the therapists page warns this many days before a credential expires
LABELS = {"kind": N_("Credential"), "number": N_("Number"), "issuer": N_("Issuing body"), "valid_from": N_("Valid from"),
          "valid_to": N_("Valid to"), "email": N_("Therapist"), "reason": N_("Reason")}


class NoCredential(Conflict):
    """409 ``credential``: the therapist holds no credential valid on the session's day."""
    code = "credential"


def kinds(db: Session) -> list[dict]:
    return current_protocol(db).content.get("credentials", [])


def required(db: Session) -> bool:
    return bool(kinds(db))


def record(db: Session, actor, user: User, data: dict) -> Credential:
    """Record a credential of a therapist (admin). Bad input names each field and changes nothing."""
    require_role(db, actor, "admin")
    allowed = {k["key"]: k for k in kinds(db)}
    errors: dict[str, str] = {}
    if not allowed:
        errors["kind"] = N_("cannot be recorded: the protocol lists no credentials")
    kind = data.get("kind")
    if not isinstance(kind, str):
        kind = None
    if allowed and kind not in allowed:
        errors["kind"] = Msg(N_("must be one of the protocol's credentials: %(kinds)s"),
                             kinds=Joined([Label("credential", k, c.get("label") or k) for k, c in allowed.items()], ", "))
    number = text(data.get("number"), "number", errors, 64, required=True)
    issuer = text(data.get("issuer"), "issuer", errors, 200)
    valid_to = parse_date(data.get("valid_to"), "valid_to", errors)
    valid_from = parse_date(data.get("valid_from"), "valid_from", errors, required=False) or today()
    if valid_to and valid_from and valid_to < valid_from:
        errors["valid_to"] = Msg(N_("is before Valid from (%(day)s)"), day=valid_from)
    if not any(r.role == "therapist" for r in user.roles):
        errors["email"] = N_("is not a therapist: credentials are recorded for therapists")
    refuse(N_("The credential was not recorded"), errors, LABELS)
    if issuer is None and kind in allowed:
        issuer = allowed[kind].get("issuer")
    c = Credential(user_id=user.id, kind=kind, number=number, issuer=issuer, valid_from=valid_from, valid_to=valid_to,
                   recorded_by_id=getattr(actor, "id", None), recorded_at=utcnow())
    db.add(c)
    db.flush()
    audit.created(db, actor, "credential", c.id, {"user": user.email, "kind": kind, "number": number, "issuer": issuer,
                                                  "valid_from": valid_from, "valid_to": valid_to})
    return c


def revoke(db: Session, actor, credential_id: int, reason: str | None) -> Credential:
    require_role(db, actor, "admin")
    c = db.get(Credential, credential_id)
    if c is None:
        raise NotFound(Msg(N_("No credential %(id)s."), id=credential_id))
    errors: dict[str, str] = {}
    why = text(reason, "reason", errors, 500, required=True)
    refuse(N_("The credential was not revoked"), errors, LABELS)
    if c.revoked_at is not None:
        raise Conflict(N_("This credential is already revoked."))
    c.revoked_at, c.revoked_reason = utcnow(), why
    audit.record(db, actor, "revoke", "credential", c.id, {"revoked_at": (None, c.revoked_at)}, reason=why)
    return c


def valid_on(db: Session, user_id: int | None, day: dt.date) -> Credential | None:
    """A credential of a listed kind the user holds, valid on ``day`` (the one valid longest)."""
    if user_id is None:
        return None
    listed = [k["key"] for k in kinds(db)]
    return db.execute(select(Credential).where(
        Credential.user_id == user_id, Credential.kind.in_(listed), Credential.revoked_at.is_(None),
        Credential.valid_from <= day, Credential.valid_to >= day).order_by(Credential.valid_to.desc())).scalars().first()


def ensure_valid(db: Session, actor, day: dt.date, what: str = N_("The session was not saved")) -> None:
    """Refuse (409 ``credential``) unless the acting therapist holds a credential valid on ``day``.
    The command line (bulk loads by the data manager) is not a therapist and is not checked."""
    if not required(db) or getattr(actor, "id", None) is None:
        return
    if valid_on(db, actor.id, day) is None:
        raise NoCredential(Msg(N_("%(what)s: you hold no therapist's credential valid on %(day)s. The trial accepts "
                                  "sessions only from a credentialed music therapist; ask the trial's administrator "
                                  "to record yours."), what=Msg(what), day=day),
                           {"held_on": Msg(N_("no credential of yours is valid on %(day)s"), day=day)})


def of_user(db: Session, user_id: int) -> list[Credential]:
    return list(db.execute(select(Credential).where(Credential.user_id == user_id)
                           .order_by(Credential.valid_to.desc(), Credential.id)).scalars())


def view(c: Credential, on: dt.date) -> dict:
    state = ("revoked" if c.revoked_at else "not_yet_valid" if on < c.valid_from else "expired" if on > c.valid_to
             else "expiring" if (c.valid_to - on).days <= WARN_DAYS else "valid")
    return {"id": c.id, "kind": c.kind, "number": c.number, "issuer": c.issuer, "valid_from": c.valid_from.isoformat(),
            "valid_to": c.valid_to.isoformat(), "state": state, "days_left": (c.valid_to - on).days}


def therapists(db: Session, actor, on: dt.date | None = None) -> list[dict]:
    """Every therapist with their credentials (admin, manager; a coordinator sees their sites'):
    whether one is valid today, and a warning from 60 days before the last valid one expires."""
    require_role(db, actor, "admin", "manager", "coordinator")
    on = on or today()
    sites = None if actor.has_role("admin", "manager") else visible_site_ids(db, actor, "coordinator")
    q = select(User).join(RoleAssignment, RoleAssignment.user_id == User.id).where(RoleAssignment.role == "therapist")
    if sites is not None:
        q = q.where(RoleAssignment.site_id.in_(sites))
    users = list(db.execute(q.distinct().order_by(User.name, User.id)).scalars())  # (one order for namesakes)
    creds: dict[int, list[Credential]] = {}
    if users:
        for c in db.execute(select(Credential).where(Credential.user_id.in_([u.id for u in users]))
                            .order_by(Credential.valid_to.desc(), Credential.id)).scalars():
            creds.setdefault(c.user_id, []).append(c)
    codes = dict(db.execute(select(Site.id, Site.code)).all())
    out = []
    for u in users:
        views = [view(c, on) for c in creds.get(u.id, [])]
        current = [v for v in views if v["state"] in ("valid", "expiring")]
        best = max(current, key=lambda v: v["valid_to"]) if current else None
        out.append({"id": u.id, "email": u.email, "name": u.name,
                    "sites": sorted({codes[r.site_id] for r in u.roles if r.role == "therapist" and r.site_id in codes}),
                    "credentials": views, "credentialed": best is not None,
                    "expires_on": best["valid_to"] if best else None,
                    "warning": best is not None and best["state"] == "expiring"})
    return out
