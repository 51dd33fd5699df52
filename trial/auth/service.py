"""Users, roles, passwords, login throttling and API tokens. Every change is audited."""
from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session, joinedload

from trial.audit import service as audit
from trial.auth.models import ROLES, SITE_ROLES, ApiToken, LoginAttempt, RoleAssignment, User
from trial.auth.scope import require_role
from trial.db import prebuilt, utcnow
from trial.errors import Conflict, Forbidden, NotFound, ValidationError
from trial.sites.models import Site

# argon2id, 19 MiB, 2 iterations: the OWASP minimum.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
_DUMMY_HASH = _hasher.hash("not a password of anyone")

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD = 10
THROTTLE_FAILURES = 5
THROTTLE_WINDOW = dt.timedelta(minutes=15)
LOGIN_FAILED = "Unknown e-mail or wrong password."
LOGIN_THROTTLED = "Too many failed logins for this account. Try again in 15 minutes."


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password(user: User | None, password: str) -> bool:
    try:
        return _hasher.verify(user.password_hash if user else _DUMMY_HASH, password) and user is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _check_new_password(password: str) -> None:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise ValidationError(f"The password must be at least {MIN_PASSWORD} characters.",
                              {"password": f"at least {MIN_PASSWORD} characters"})


def get_user_by_email(db: Session, email: str) -> User | None:
    return db.execute(select(User).where(User.email == (email or "").strip().lower())).scalar_one_or_none()


def _resolve_roles(db: Session, roles: list[tuple[str, str | None]]) -> list[tuple[str, int | None, str | None]]:
    """Validate (role, site code) pairs; return (role, site id, site code)."""
    out = []
    errors = {}
    if not roles:
        errors["role"] = "at least one role is required"
    for role, code in roles:
        if role not in ROLES:
            errors["role"] = f"unknown role {role!r} (one of {', '.join(ROLES)})"
            continue
        if role in SITE_ROLES:
            if not code:
                errors["site"] = f"the {role} role needs a site"
                continue
            site = db.execute(select(Site).where(Site.code == code.upper())).scalar_one_or_none()
            if site is None:
                errors["site"] = f"unknown site {code!r}"
                continue
            out.append((role, site.id, site.code))
        else:
            out.append((role, None, None))
    if errors:
        raise ValidationError("Roles not valid: " + "; ".join(errors.values()), errors)
    assessor_sites = {s for r, s, _ in out if r == "assessor"}
    unblinded_sites = {s for r, s, _ in out if r in ("coordinator", "therapist")}
    if assessor_sites & unblinded_sites:
        raise ValidationError("A blinded assessor cannot also be a coordinator or therapist at the same site.",
                              {"role": "assessor combined with an unblinded role at the same site"})
    if assessor_sites and any(r == "manager" for r, _, _ in out):
        raise ValidationError("A blinded assessor cannot also be a manager (managers see every allocation).",
                              {"role": "assessor combined with manager"})
    return sorted(set(out), key=lambda t: (t[0], t[2] or ""))


def _role_text(pairs) -> str:
    return ",".join(f"{r}@{c}" if c else r for r, _, c in pairs)


def current_roles_text(user: User, db: Session) -> str:
    codes = dict(db.execute(select(Site.id, Site.code)).all())
    return _role_text(sorted(((r.role, r.site_id, codes.get(r.site_id)) for r in user.roles), key=lambda t: (t[0], t[2] or "")))


def create_user(db: Session, actor, email: str, name: str, password: str,
                roles: list[tuple[str, str | None]], must_change_password: bool = False) -> User:
    require_role(db, actor, "admin")
    email = (email or "").strip().lower()
    errors = {}
    if not EMAIL_RE.match(email):
        errors["email"] = "is not a valid e-mail address"
    if not (name or "").strip():
        errors["name"] = "is required"
    if errors:
        raise ValidationError("The user was not created: " + "; ".join(f"{k} {v}" for k, v in errors.items()), errors)
    _check_new_password(password)
    resolved = _resolve_roles(db, roles)
    if get_user_by_email(db, email):
        raise Conflict(f"A user with e-mail {email} already exists.", {"email": "already exists"})
    user = User(email=email, name=name.strip(), password_hash=hash_password(password), active=True,
                session_token=secrets.token_hex(16), must_change_password=must_change_password)
    user.roles = [RoleAssignment(role=r, site_id=s) for r, s, _ in resolved]
    db.add(user)
    db.flush()
    audit.created(db, actor, "user", email, {"name": user.name, "active": True, "roles": _role_text(resolved),
                                            "must_change_password": must_change_password})
    return user


def set_roles(db: Session, actor, user: User, roles: list[tuple[str, str | None]], reason: str | None = None) -> User:
    require_role(db, actor, "admin")
    if getattr(actor, "id", None) == user.id:
        raise Forbidden("Another administrator must change your roles (an admin stays blinded).")
    resolved = _resolve_roles(db, roles)
    old = current_roles_text(user, db)
    user.roles = [RoleAssignment(role=r, site_id=s) for r, s, _ in resolved]
    new = _role_text(resolved)
    if old != new:
        user.session_token = secrets.token_hex(16)  # new rights take effect at the next login
        audit.record(db, actor, "update", "user", user.email, {"roles": (old, new)}, reason=reason)
    db.flush()
    return user


def update_user(db: Session, actor, user: User, name: str | None = None, active: bool | None = None,
                reason: str | None = None) -> User:
    require_role(db, actor, "admin")
    changes = {}
    if name is not None and name.strip() and name.strip() != user.name:
        changes["name"] = (user.name, name.strip())
        user.name = name.strip()
    if active is not None and active != user.active:
        if not active and getattr(actor, "id", None) == user.id:
            raise Conflict("You cannot deactivate your own account.")
        changes["active"] = (user.active, active)
        user.active = active
        user.session_token = secrets.token_hex(16)
    if changes:
        audit.record(db, actor, "update", "user", user.email, changes, reason=reason)
    return user


def reset_password(db: Session, actor, user: User, new_password: str) -> None:
    """Admin reset: the user must change it before signing anything."""
    require_role(db, actor, "admin")
    _check_new_password(new_password)
    user.password_hash = hash_password(new_password)
    user.must_change_password = True
    user.session_token = secrets.token_hex(16)
    user.password_changed_at = utcnow()
    audit.record(db, actor, "reset_password", "user", user.email, {"must_change_password": (False, True)})


def change_password(db: Session, user: User, current: str, new: str) -> None:
    if not check_password(user, current):
        raise ValidationError("The current password is wrong.", {"current_password": "is wrong"})
    _check_new_password(new)
    if current == new:
        raise ValidationError("The new password must differ from the current one.", {"new_password": "same as current"})
    user.password_hash = hash_password(new)
    user.must_change_password = False
    user.password_changed_at = utcnow()
    user.session_token = secrets.token_hex(16)  # ends every session of this user
    audit.record(db, user, "change_password", "user", user.email, {"password_changed_at": (None, user.password_changed_at)})


def end_sessions(db: Session, user: User) -> None:
    """Logout: rotate the session token so every cookie of this user stops working."""
    user.session_token = secrets.token_hex(16)
    audit.record(db, user, "logout", "user", user.email)


def recent_failures(db: Session, email: str) -> int:
    since = utcnow() - THROTTLE_WINDOW
    last_ok = db.execute(select(func.max(LoginAttempt.at)).where(LoginAttempt.email == email,
                                                               LoginAttempt.success.is_(True))).scalar()
    if last_ok and last_ok > since:
        since = last_ok
    return db.execute(select(func.count()).select_from(LoginAttempt).where(
        LoginAttempt.email == email, LoginAttempt.success.is_(False), LoginAttempt.at > since)).scalar_one()


def authenticate(db: Session, email: str, password: str, remote_addr: str | None = None) -> User:
    """Return the user or raise Forbidden with a message that never tells an unknown user from a
    wrong password. Failures are recorded (and committed by the caller) for throttling."""
    email = (email or "").strip().lower()[:254]
    if recent_failures(db, email) >= THROTTLE_FAILURES:
        db.add(LoginAttempt(email=email, success=False, remote_addr=remote_addr))
        raise Forbidden(LOGIN_THROTTLED)
    user = get_user_by_email(db, email)
    ok = check_password(user, password) and user is not None and user.active
    db.add(LoginAttempt(email=email, success=ok, remote_addr=remote_addr))
    if not ok:
        raise Forbidden(LOGIN_FAILED)
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    audit.record(db, user, "login", "user", user.email)
    return user


def load_session_user(db: Session, user_id: str) -> User | None:
    """Flask-Login loader: the cookie holds ``id:session_token``; a rotated token ends it."""
    try:
        uid, token = user_id.split(":", 1)
        user = db.get(User, int(uid))
    except (ValueError, TypeError):
        return None
    if user is None or not user.active or not secrets.compare_digest(user.session_token, token):
        return None
    return user


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(db: Session, actor, user: User) -> str:
    """A new API token; only its SHA-256 is stored."""
    require_role(db, actor, "admin")
    if not user.active:
        raise Conflict("The user is deactivated.")
    token = "trl_" + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, token_hash=_token_hash(token), prefix=token[:12])
    db.add(row)
    db.flush()
    audit.record(db, actor, "issue_token", "user", user.email, {"token_prefix": (None, row.prefix)})
    return token


def user_for_token(db: Session, token: str) -> User | None:
    if not token:
        return None
    return db.execute(_user_for_token_stmt(db), {"token_hash": _token_hash(token)}).unique().scalar_one_or_none()


@prebuilt
def _user_for_token_stmt(dialect: str):
    """Every API request runs this: built once, with the user's roles loaded in the same query."""
    return (select(User).join(ApiToken, ApiToken.user_id == User.id)
            .where(ApiToken.token_hash == bindparam("token_hash"), ApiToken.revoked_at.is_(None), User.active.is_(True))
            .options(joinedload(User.roles)))


def list_users(db: Session, actor) -> list[User]:
    require_role(db, actor, "admin")
    return list(db.execute(select(User).order_by(User.email)).scalars())


def get_user(db: Session, actor, user_id: int) -> User:
    require_role(db, actor, "admin")
    user = db.get(User, user_id)
    if user is None:
        raise NotFound("No such user.")
    return user

