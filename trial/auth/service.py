"""Users, roles, passwords, login throttling and API tokens. Every change is audited."""
from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import bindparam, func, or_, select
from sqlalchemy.orm import Session, joinedload

from trial import settings
from trial.audit import service as audit
from trial.auth import passwords
from trial.auth.models import (
    COUNTERSIGNED_ROLES,
    ROLES,
    UNBLINDED_ROLES,
    SITE_ROLES,
    ApiToken,
    LoginAttempt,
    PasswordReset,
    RoleAssignment,
    RoleGrant,
    User,
)
from trial.cache import prebuilt
from trial.catalogue import LANGUAGES, N_, Joined, Msg, term, terms
from trial.db import utcnow
from trial.errors import Conflict, Forbidden, NotFound, ValidationError
from trial.paging import Page, PageRequest, ordered, paginate, sort_key
from trial.scope import is_cli, require_role
from trial.sites.models import Site
from trial.validation import as_msg, has_control, refuse, text

# argon2id, 19 MiB, 2 iterations: the OWASP minimum.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
_DUMMY_HASH = _hasher.hash("not a password of anyone")

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD = passwords.MIN_LENGTH
LOGIN_FAILED = N_("Unknown e-mail or wrong password.")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def _unknowable() -> str:
    """The hash of a password nobody knows (an account waiting for its one-time link): a real
    argon2 hash, so that a login to it takes as long as any other."""
    return hash_password(secrets.token_urlsafe(32))


def check_password(user: User | None, password: str) -> bool:
    try:
        return _hasher.verify(user.password_hash if user else _DUMMY_HASH, password) and user is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _check_new_password(password: str, email: str | None = None, name: str | None = None,
                         field: str = "password") -> None:
    """NIST SP 800-63B (trial.auth.passwords): long enough, not common or breached, not the user's
    own e-mail or name, not easy to guess; a 400 naming ``field`` otherwise."""
    why = passwords.refusal(password, email, name)
    if why is not None:
        raise ValidationError(why[0], {field: why[1]})


def get_user_by_email(db: Session, email: str) -> User | None:
    return db.execute(select(User).where(User.email == (email or "").strip().lower())).scalar_one_or_none()


def _resolve_roles(db: Session, roles: list[tuple[str, str | None]]) -> list[tuple[str, int | None, str | None]]:
    """Validate (role, site code) pairs; return (role, site id, site code)."""
    out = []
    errors = {}
    if not roles:
        errors["role"] = N_("at least one role is required")
    for role, code in roles:
        if role not in ROLES:
            errors["role"] = Msg(N_("unknown role %(role)s (one of: %(roles)s)"), role=repr(role), roles=terms("role", ROLES))
            continue
        if role in SITE_ROLES:
            if not code:
                errors["site"] = Msg(N_("the role %(role)s needs a site"), role=term("role", role))
                continue
            site = db.execute(select(Site).where(Site.code == code.upper())).scalar_one_or_none()
            if site is None:
                errors["site"] = Msg(N_("unknown site %(code)s"), code=repr(code))
                continue
            out.append((role, site.id, site.code))
        else:
            out.append((role, None, None))
    if errors:
        raise ValidationError(Msg(N_("Roles not valid: %(reasons)s"), reasons=Joined(as_msg(v) for v in errors.values())),
                              errors)
    check_role_conflicts(out)
    return sorted(set(out), key=lambda t: (t[0], t[2] or ""))


ADMIN_EXCLUDES = UNBLINDED_ROLES  # every role that sees allocations, now or after unblinding


def check_role_conflicts(pairs) -> None:
    """An assessor is never also a coordinator, therapist or monitor at the same site, nor a manager;
    an admin never holds a role that sees allocations (or will, once the trial is unblinded)."""
    assessor_sites = {s for r, s, *_ in pairs if r == "assessor"}
    unblinded_sites = {s for r, s, *_ in pairs if r in ("coordinator", "therapist", "monitor", "investigator")}
    if assessor_sites & unblinded_sites:
        raise ValidationError(N_("A blinded assessor cannot also be a coordinator, therapist or monitor at the same site."),
                              {"role": N_("assessor combined with an unblinded role at the same site")})
    if assessor_sites and any(r == "manager" for r, *_ in pairs):
        raise ValidationError(N_("A blinded assessor cannot also be a manager (managers see every allocation)."),
                              {"role": N_("assessor combined with manager")})
    if any(r == "dmc" for r, *_ in pairs) and any(r != "dmc" for r, *_ in pairs):
        raise ValidationError(N_("A member of the data monitoring committee holds no other role (the committee is "
                                 "independent of the trial team): give the other role to another account."),
                              {"role": N_("dmc combined with another role")})
    if any(r == "admin" for r, *_ in pairs) and any(r in ADMIN_EXCLUDES for r, *_ in pairs):
        raise ValidationError(N_("An administrator sees no clinical data and stays blinded: give the roles that see "
                                 "allocations (coordinator, therapist, monitor, manager, statistician) to another account."),
                              {"role": N_("admin combined with a role that sees allocations")})


def _role_text(pairs) -> str:
    return ",".join(f"{r}@{c}" if c else r for r, _, c in pairs)


def _codes(db: Session) -> dict[int, str]:
    return dict(db.execute(select(Site.id, Site.code)).all())


def _sorted(pairs):
    return sorted(pairs, key=lambda t: (t[0], t[2] or ""))


def current_roles_text(user: User, db: Session, with_pending: bool = False) -> str:
    """The user's roles as ``role@SITE`` text; ``with_pending`` adds the grants waiting for a
    countersignature (what the admin's form shows, so that saving it again changes nothing)."""
    codes = _codes(db)
    pairs = {(r.role, r.site_id, codes.get(r.site_id)) for r in user.roles}
    if with_pending:
        pairs |= {(g.role, g.site_id, codes.get(g.site_id)) for g in pending_grants_of(db, user)}
    return _role_text(_sorted(pairs))


def pending_roles_text(user: User, db: Session) -> str:
    codes = _codes(db)
    return _role_text(_sorted({(g.role, g.site_id, codes.get(g.site_id)) for g in pending_grants_of(db, user)}))


def needs_countersign(actor, role: str) -> bool:
    """An admin's grant of a role that sees allocations waits for a manager's countersignature, and
    so does a grant of ``admin`` itself (an admin who made a second admin at will could have it
    change their own roles). The operator at the server's shell (the CLI) is trusted: the first
    manager comes from there."""
    return (role in COUNTERSIGNED_ROLES or role == "admin") and not is_cli(actor)


def pending_grants_of(db: Session, user: User) -> list[RoleGrant]:
    if user.id is None:
        return []
    return list(db.execute(select(RoleGrant).where(RoleGrant.user_id == user.id, RoleGrant.status == "pending")
                           .order_by(RoleGrant.id)).scalars())


def _request_grant(db: Session, actor, user: User, role: str, site_id: int | None, code: str | None,
                   reason: str | None) -> RoleGrant:
    g = RoleGrant(user_id=user.id, role=role, site_id=site_id, status="pending", reason=reason,
                  requested_by_id=getattr(actor, "id", None), requested_by=_actor_name(actor), requested_at=utcnow())
    db.add(g)
    db.flush()
    audit.record(db, actor, "request_grant", "user", user.email, {"pending_grant": (None, _role_text([(role, site_id, code)]))},
                 reason=reason)
    return g


def _actor_name(actor) -> str:
    return getattr(actor, "email", None) or str(actor)


def _apply_roles(db: Session, actor, user: User, wanted: list[tuple[str, int | None, str | None]],
                 reason: str | None) -> list[RoleGrant]:
    """Make ``wanted`` the user's roles: roles no longer wanted end at once; new roles that see
    allocations become pending grants (unless the CLI grants them); the others start at once.
    Returns the new pending grants."""
    codes = _codes(db)
    before = _role_text(_sorted({(r.role, r.site_id, codes.get(r.site_id)) for r in user.roles}))
    want = {(r, s) for r, s, _ in wanted}
    for ra in list(user.roles):
        if (ra.role, ra.site_id) not in want:
            user.roles.remove(ra)
    pending = {(g.role, g.site_id): g for g in pending_grants_of(db, user)}
    for key, g in pending.items():
        if key not in want:
            g.status, g.decided_at, g.decided_by_id = "withdrawn", utcnow(), getattr(actor, "id", None)
            g.decision_note = "no longer in the user's roles"
            audit.record(db, actor, "withdraw_grant", "user", user.email,
                         {"pending_grant": (_role_text([(g.role, g.site_id, codes.get(g.site_id))]), None)}, reason=reason)
    have = {(r.role, r.site_id) for r in user.roles}
    new_grants = []
    for role, site_id, code in wanted:
        if (role, site_id) in have or (role, site_id) in pending:
            continue
        if needs_countersign(actor, role):
            new_grants.append(_request_grant(db, actor, user, role, site_id, code, reason))
        else:
            user.roles.append(RoleAssignment(role=role, site_id=site_id))
    db.flush()
    after = _role_text(_sorted({(r.role, r.site_id, codes.get(r.site_id)) for r in user.roles}))
    if before != after:
        user.session_token = secrets.token_hex(16)  # new rights take effect at the next login
        audit.record(db, actor, "update", "user", user.email, {"roles": (before or None, after or None)}, reason=reason)
    return new_grants


ADMIN_SETS_NO_PASSWORD = N_("An administrator never sets or learns another user's password: the user sets it "
                            "through a one-time link sent to their e-mail.")


def create_user(db: Session, actor, email: str, name: str, password: str | None,
                roles: list[tuple[str, str | None]], must_change_password: bool = False) -> User:
    """A new account. Only the operator at the server's console gives it a password; an admin's new
    account has none that anyone knows (``password`` None) until the user sets one through a
    one-time link e-mailed to them (trial.notify.accounts.invite). Roles that see allocations or
    enter clinical data wait for a manager's countersignature when an admin grants them (the
    console's grants take effect at once)."""
    require_role(db, actor, "admin")
    if password is not None and not is_cli(actor):
        raise Forbidden(ADMIN_SETS_NO_PASSWORD)
    email = (email or "").strip().lower()
    errors: dict[str, str] = {}
    if not EMAIL_RE.match(email) or has_control(email) or len(email) > 254:
        errors["email"] = N_("is not a valid e-mail address")
    name = text(name, "name", errors, 200, required=True)
    refuse(N_("The user was not created"), errors)
    if password is not None:
        _check_new_password(password, email, name)
    resolved = _resolve_roles(db, roles)
    if get_user_by_email(db, email):
        raise Conflict(Msg(N_("A user with e-mail %(email)s already exists."), email=email), {"email": N_("already exists")})
    user = User(email=email, name=name, password_hash=hash_password(password) if password is not None else _unknowable(),
                active=True, session_token=secrets.token_hex(16),
                must_change_password=must_change_password and password is not None)
    immediate = [t for t in resolved if not needs_countersign(actor, t[0])]
    user.roles = [RoleAssignment(role=r, site_id=s) for r, s, _ in immediate]
    db.add(user)
    db.flush()
    audit.created(db, actor, "user", email, {"name": user.name, "active": True, "roles": _role_text(immediate) or None,
                                            "must_change_password": must_change_password})
    for role, site_id, code in resolved:
        if needs_countersign(actor, role):
            _request_grant(db, actor, user, role, site_id, code, "new account created by an administrator")
    return user


def set_roles(db: Session, actor, user: User, roles: list[tuple[str, str | None]], reason: str | None = None) -> User:
    require_role(db, actor, "admin")
    if getattr(actor, "id", None) == user.id:
        raise Forbidden(N_("Another administrator must change your roles (an admin stays blinded)."))
    resolved = _resolve_roles(db, roles)
    if not any(r == "manager" for r, *_ in resolved):
        keep_a_manager(db, user, N_("%(email)s is the trial's last active manager: give another account the manager "
                                    "role before taking it from this one."))
    _apply_roles(db, actor, user, resolved, reason)
    return user


def update_user(db: Session, actor, user: User, name: str | None = None, active: bool | None = None,
                reason: str | None = None) -> User:
    # an admin administers accounts; a manager may only deactivate one (the access review)
    require_role(db, actor, "admin", *(("manager",) if active is False and name is None else ()))
    changes = {}
    errors: dict[str, str] = {}
    name = text(name, "name", errors, 200)
    refuse(N_("The user was not saved"), errors)
    if name and name != user.name:
        changes["name"] = (user.name, name)
        user.name = name
    if active is not None and active != user.active:
        if not active and getattr(actor, "id", None) == user.id:
            raise Conflict(N_("You cannot deactivate your own account."))
        if not active:
            keep_a_manager(db, user, N_("%(email)s is the trial's last active manager: give another account the "
                                        "manager role before deactivating this one."))
        changes["active"] = (user.active, active)
        user.active = active
        user.session_token = secrets.token_hex(16)
    if changes:
        audit.record(db, actor, "update", "user", user.email, changes, reason=reason)
    if active is False:
        _revoke_all(db, actor, user, "account deactivated")
    return user


def reset_password(db: Session, actor, user: User, new_password: str) -> None:
    """A password set by the operator at the server's console (trusted: it holds the database and
    the keys), never by an admin (who resets by link: :func:`disable_password`). The user must
    change it before signing anything; every session and API token ends."""
    require_role(db, actor, "admin")
    if not is_cli(actor):
        raise Forbidden(ADMIN_SETS_NO_PASSWORD)
    _check_new_password(new_password, user.email, user.name)
    user.password_hash = hash_password(new_password)
    user.must_change_password = True
    user.session_token = secrets.token_hex(16)
    user.password_changed_at = utcnow()
    audit.record(db, actor, "reset_password", "user", user.email, {"must_change_password": (False, True)})
    _revoke_all(db, actor, user, "password reset")


def disable_password(db: Session, actor, user: User) -> None:
    """An admin's reset: the current password stops working and every session and API token of
    the user ends; the user sets a new password through a one-time link e-mailed to them
    (trial.notify.accounts.reset_password). The admin never sets or learns it, so the roles stay.
    Refused for the last active manager: the trial would have no manager until the link is used."""
    require_role(db, actor, "admin")
    if getattr(actor, "id", None) == user.id:
        raise Forbidden(N_("Change your own password on the password page."))
    if not user.active:
        raise Conflict(Msg(N_("The account %(email)s is deactivated: reactivate it first."), email=user.email))
    keep_a_manager(db, user, N_("%(email)s is the trial's last active manager: a reset would leave the trial without "
                                "one until the link is used. Give another account the manager role first, or ask the "
                                "operator to run `trial user reset-password` at the server's console."))
    now = utcnow()
    user.password_hash, user.must_change_password = _unknowable(), False
    user.session_token = secrets.token_hex(16)
    audit.record(db, actor, "reset_password", "user", user.email, {"password_changed_at": (user.password_changed_at, now)},
                 reason="by an administrator: the password no longer works; the user sets a new one through a "
                        "one-time link sent to their e-mail")
    user.password_changed_at = now
    _revoke_all(db, actor, user, "password reset")


class LastManager(Conflict):
    code = "last_manager"


def keep_a_manager(db: Session, user: User, refusal: str) -> None:
    """Refuse (409 last_manager) what would leave the trial without an active manager: ``user`` is
    one and no other active account holds the role."""
    if not user.active or not any(r.role == "manager" for r in user.roles):
        return
    others = db.execute(select(func.count(RoleAssignment.id)).join(User, User.id == RoleAssignment.user_id).where(
        RoleAssignment.role == "manager", User.active.is_(True), User.id != user.id)).scalar()
    if not others:
        raise LastManager(Msg(refusal, email=user.email))


def change_password(db: Session, user: User, current: str, new: str) -> None:
    if not check_password(user, current):
        raise ValidationError(N_("The current password is wrong."), {"current_password": N_("is wrong")})
    _check_new_password(new, user.email, user.name, "new_password")
    if current == new:
        raise ValidationError(N_("The new password must differ from the current one."),
                              {"new_password": N_("same as current")})
    user.password_hash = hash_password(new)
    user.must_change_password = False
    user.password_changed_at = utcnow()
    user.session_token = secrets.token_hex(16)  # ends every session of this user
    audit.record(db, user, "change_password", "user", user.email, {"password_changed_at": (None, user.password_changed_at)})
    _revoke_all(db, user, user, "password changed")


def set_language(db: Session, user: User, language: str | None) -> None:
    """The user's own choice of the language of the web pages (None: the browser's), audited like
    every change of an account. Only the user sets it."""
    language = language or None
    if language is not None and language not in LANGUAGES:
        raise ValidationError(Msg(N_("Unknown language %(language)s; one of %(languages)s."), language=repr(language),
                                  languages=", ".join(LANGUAGES)),
                              {"language": N_("is not a language of the web pages")})
    if language == user.language:
        return
    audit.record(db, user, "update", "user", user.email, {"language": (user.language, language)})
    user.language = language


def set_weekly_digest(db: Session, user: User, wanted: bool) -> bool:
    """The user's own choice to get the weekly digest e-mail (trial.digest) or not, audited like
    every change of an account. Only the user sets it. True if it changed."""
    wanted = bool(wanted)
    if wanted == user.weekly_digest:
        return False
    audit.record(db, user, "update", "user", user.email, {"weekly_digest": (user.weekly_digest, wanted)})
    user.weekly_digest = wanted
    return True


def end_sessions(db: Session, user: User) -> None:
    """Logout: rotate the session token so every cookie of this user stops working."""
    user.session_token = secrets.token_hex(16)
    audit.record(db, user, "logout", "user", user.email)


def session_expired(db: Session, user: User, reason: str) -> None:
    """A web session that ended without a logout (idle too long, or past its absolute lifetime),
    recorded at its next request: audited as the user's, with why."""
    audit.record(db, user, "session_expired", "user", user.email, reason=reason)


# --- login throttling --------------------------------------------------------------------------
#
# Never a lock of the account from everywhere. Each attempt falls in one bucket, and each bucket
# backs off exponentially: after its free failures it waits 1, 2, 4, 8 ... minutes (at most its
# cap) after each further failure. Attempts during a wait are refused without checking the password
# and are not counted, so they do not extend it. All of it is in the database (app servers share it).
#
# - (account, address): ACCOUNT_FREE failures of this account from this client address (since the
#   last success from there, within ACCOUNT_MEMORY), then 1 to 15 minutes. Failures elsewhere never
#   make this address wait: an attacker at one address does not lock the owner out of another, and
#   one user's typos at a shared (NAT) address do not lock the others there out.
# - address: ADDRESS_FREE failures from one address over every account within ADDRESS_MEMORY, then
#   1 to 60 minutes (password spraying).
# - (account, known device): a browser that signed in to the account before carries a signed device
#   cookie naming it (trial.auth.devices). Its attempts skip both buckets above and count against
#   the device alone, with the (account, address) back-off: an attack on the account from anywhere,
#   even from the same address, never keeps it out, and a stolen cookie buys no extra guesses.
#   Such an attempt is stored with ``remote_addr`` = ``address#device`` (see LoginAttempt).
# An unknown e-mail is throttled exactly like an account: throttling reveals nothing.

ACCOUNT_FREE = 5
ACCOUNT_BASE = dt.timedelta(minutes=1)
ACCOUNT_MAX = dt.timedelta(minutes=15)
ACCOUNT_MEMORY = dt.timedelta(hours=24)
ADDRESS_FREE = 30
ADDRESS_BASE = dt.timedelta(minutes=1)
ADDRESS_MAX = dt.timedelta(minutes=60)
ADDRESS_MEMORY = dt.timedelta(hours=1)
THROTTLE_FAILURES = ACCOUNT_FREE
DEVICE_SEP = "#"
# the shared beginning of the two refusals (each says how long to wait and how to get in at once)
LOGIN_THROTTLED = "Too many failed logins"
THROTTLED_ACCOUNT = N_("Too many failed logins for this account from here. Try again in %(n)s minute(s), or sign "
                       "in from a device you have signed in with before.")
THROTTLED_ADDRESS = N_("Too many failed logins from this address. Try again in %(n)s minute(s), or sign in from a "
                       "device you have signed in with before.")


def attempt_source(addr: str | None, device: str | None = None) -> str | None:
    """What an attempt stores as ``remote_addr``: the client address, or ``address#device`` for an
    attempt with a known-device cookie (its own bucket). At most 64 characters."""
    addr = (addr or None) and addr[:64]
    if not device:
        return addr
    device = device[:16]
    return f"{(addr or '')[:63 - len(device)]}{DEVICE_SEP}{device}"


def _bucket(email: str, addr: str | None, device: str | None) -> list:
    """The conditions that select the attempts of one (account, address) or (account, device) bucket."""
    if device:
        return [LoginAttempt.email == email, LoginAttempt.remote_addr.endswith(DEVICE_SEP + device[:16], autoescape=True)]
    if addr is None:
        return [LoginAttempt.email == email, LoginAttempt.remote_addr.is_(None)]
    return [LoginAttempt.email == email, LoginAttempt.remote_addr == addr]


def _backoff(times: list[dt.datetime], free: int, base: dt.timedelta, cap: dt.timedelta,
             now: dt.datetime) -> dt.timedelta | None:
    """How long is left to wait after the latest of ``times`` (the bucket's failures, newest first)."""
    if len(times) < free:
        return None
    left = times[0] + min(base * 2 ** (len(times) - free), cap) - now
    return left if left > dt.timedelta(0) else None


def _failures(db: Session, where: list, since: dt.datetime, limit: int) -> list[dt.datetime]:
    return db.execute(select(LoginAttempt.at).where(
        *where, LoginAttempt.success.is_(False), LoginAttempt.counted.is_(True), LoginAttempt.at > since)
        .order_by(LoginAttempt.at.desc()).limit(limit)).scalars().all()


def account_wait(db: Session, email: str, addr: str | None, now: dt.datetime,
                 device: str | None = None) -> dt.timedelta | None:
    """How long logins of this account from ``addr`` (or from the known ``device``) must wait."""
    addr = (addr or None) and addr[:64]
    where = _bucket(email, addr, device)
    last_ok = db.execute(select(func.max(LoginAttempt.at)).where(*where, LoginAttempt.success.is_(True))).scalar()
    since = max(last_ok or dt.datetime.min, now - ACCOUNT_MEMORY)
    return _backoff(_failures(db, where, since, ACCOUNT_FREE + 8), ACCOUNT_FREE, ACCOUNT_BASE, ACCOUNT_MAX, now)


def address_wait(db: Session, addr: str | None, now: dt.datetime) -> dt.timedelta | None:
    """How long this client address must wait: too many failures over all accounts (spraying)."""
    if not addr:
        return None
    times = _failures(db, [LoginAttempt.remote_addr == addr[:64]], now - ADDRESS_MEMORY, ADDRESS_FREE + 8)
    return _backoff(times, ADDRESS_FREE, ADDRESS_BASE, ADDRESS_MAX, now)


def throttle(db: Session, email: str, addr: str | None, device: str | None = None,
             now: dt.datetime | None = None) -> None:
    """Refuse (Forbidden, with how many minutes to wait) a login step of ``email`` from ``addr``
    (with the known ``device``) while its bucket or the address waits; the refused attempt is
    recorded, not counted. The password step calls it, and so may a second step (wrong codes)."""
    now = now or utcnow()
    wait = account_wait(db, email, addr, now, device)
    addr_wait = None if device else address_wait(db, addr, now)
    if wait or addr_wait:
        db.add(LoginAttempt(email=email, success=False, counted=False, remote_addr=attempt_source(addr, device), at=now))
        e = Forbidden(Msg(THROTTLED_ACCOUNT if wait else THROTTLED_ADDRESS, n=_minutes(wait or addr_wait)))
        e.retry_after = int((wait or addr_wait).total_seconds()) + 1
        raise e


def record_attempt(db: Session, email: str, addr: str | None, success: bool, device: str | None = None,
                   now: dt.datetime | None = None) -> None:
    """Count a login step's outcome in its bucket (a failure here makes the bucket wait later)."""
    db.add(LoginAttempt(email=email, success=success, counted=True, remote_addr=attempt_source(addr, device),
                        at=now or utcnow()))


def _minutes(td: dt.timedelta) -> int:
    return max(1, -(-int(td.total_seconds()) // 60))


def authenticate(db: Session, email: str, password: str, remote_addr: str | None = None,
                 device: str | None = None) -> User:
    """Return the user or raise Forbidden with a message that never tells an unknown user from a
    wrong password. ``device`` is the id of a known-device cookie that names this account (the web
    layer checks its signature). Attempts are recorded (and committed by the caller) for throttling."""
    email = (email or "").strip().lower()[:254]
    now = utcnow()
    throttle(db, email, remote_addr, device, now)
    user = get_user_by_email(db, email)
    ok = check_password(user, password) and user is not None and user.active
    if not (ok and user.mfa_enrolled_at is not None):
        # an enrolled user's right password is not yet a success: the code step records it, so
        # that a stolen password cannot clear the count of wrong codes between guesses
        record_attempt(db, email, remote_addr, ok, device, now)
    if not ok:
        raise Forbidden(LOGIN_FAILED)
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    user.last_login_at = now
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


TOKEN_DAYS = 90
TOKEN_MAX_DAYS = 366


def issue_token(db: Session, actor, user: User, days: int = TOKEN_DAYS) -> str:
    """A new API token that expires after ``days``; only its SHA-256 is stored. Issued at the
    server's shell (the CLI) or by the user for themselves, never by an admin for someone else."""
    if not is_cli(actor) and getattr(actor, "id", None) != user.id:
        raise Forbidden(N_("API tokens are issued at the server's command line or by the user themselves."))
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= TOKEN_MAX_DAYS:
        raise ValidationError(Msg(N_("days must be a whole number from 1 to %(n)s."), n=TOKEN_MAX_DAYS),
                              {"days": Msg(N_("1 to %(n)s"), n=TOKEN_MAX_DAYS)})
    if not user.active:
        raise Conflict(N_("The user is deactivated."))
    token = "trl_" + secrets.token_urlsafe(32)
    now = utcnow()
    row = ApiToken(user_id=user.id, token_hash=_token_hash(token), prefix=token[:12], created_at=now,
                   expires_at=now + dt.timedelta(days=days))
    db.add(row)
    user.last_login_at = now  # the account is in use: not "inactive" for `trial user list --inactive-days`
    db.flush()
    audit.record(db, actor, "issue_token", "user", user.email, {"token_prefix": (None, row.prefix),
                                                               "token_expires_at": (None, row.expires_at)})
    return token


def tokens_of(db: Session, actor, user: User) -> list[ApiToken]:
    """A user's tokens (prefix and dates, never the secret), newest first: for the admin's page."""
    require_role(db, actor, "admin")
    return list(db.execute(select(ApiToken).where(ApiToken.user_id == user.id)
                           .order_by(ApiToken.created_at.desc(), ApiToken.id.desc())).scalars())


def _revoke_all(db: Session, actor, user: User, reason: str) -> int:
    now = utcnow()
    rows = db.execute(select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None),
                                             ApiToken.expires_at > now)).scalars().all()
    for t in rows:
        t.revoked_at, t.revoked_reason = now, reason
    if rows:
        audit.record(db, actor, "revoke_tokens", "user", user.email,
                     {"tokens_revoked": (None, ",".join(t.prefix for t in rows))}, reason=reason)
    return len(rows)


def revoke_tokens(db: Session, actor, user: User, reason: str = "revoked by an administrator") -> int:
    """Revoke every live API token of ``user``; returns how many."""
    require_role(db, actor, "admin")
    return _revoke_all(db, actor, user, reason)


def revoke_token(db: Session, actor, user: User, token_id: int, reason: str = "revoked by an administrator") -> ApiToken:
    require_role(db, actor, "admin")
    t = db.get(ApiToken, token_id)
    if t is None or t.user_id != user.id:
        raise NotFound(N_("No such token of this user."))
    if t.revoked_at is not None:
        raise Conflict(Msg(N_("Token %(prefix)s… was already revoked."), prefix=t.prefix))
    t.revoked_at, t.revoked_reason = utcnow(), reason
    audit.record(db, actor, "revoke_tokens", "user", user.email, {"tokens_revoked": (None, t.prefix)}, reason=reason)
    return t


def user_for_token(db: Session, token: str) -> User | None:
    if not token or len(token) > 200:
        return None
    return db.execute(_user_for_token_stmt(db), {"token_hash": _token_hash(token), "now": utcnow()}).unique().scalar_one_or_none()


@prebuilt
def _user_for_token_stmt(dialect: str):
    """Every API request runs this: built once, with the user's roles loaded in the same query."""
    return (select(User).join(ApiToken, ApiToken.user_id == User.id)
            .where(ApiToken.token_hash == bindparam("token_hash"), ApiToken.revoked_at.is_(None),
                   ApiToken.expires_at > bindparam("now"), User.active.is_(True))
            .options(joinedload(User.roles)))


def list_users(db: Session, actor) -> list[User]:
    require_role(db, actor, "admin")
    return list(db.execute(select(User).order_by(User.email)).scalars())


USER_SORTS = {"email": User.email, "name": User.name, "active": User.active}


def page_users(db: Session, actor, req: PageRequest, search: str | None = None, role: str | None = None) -> Page:
    """A page of the user accounts (for admins), searched by e-mail or name, filtered by role."""
    require_role(db, actor, "admin")
    q = select(User)
    if search:
        term = search.strip()
        q = q.where(or_(User.email.contains(term, autoescape=True), User.name.contains(term, autoescape=True)))
    if role:
        if role not in ROLES:
            raise ValidationError(Msg(N_("role must be one of: %(roles)s."), roles=terms("role", ROLES)),
                                  {"role": N_("an unknown role")})
        q = q.where(User.id.in_(select(RoleAssignment.user_id).where(RoleAssignment.role == role)))
    sort = sort_key(req.sort, USER_SORTS, "email")
    return paginate(db, ordered(q, sort, USER_SORTS, User.id), req, sort=sort, key=User.id)


def get_user(db: Session, actor, user_id: int) -> User:
    require_role(db, actor, "admin")
    user = db.get(User, user_id)
    if user is None:
        raise NotFound(N_("No such user."))
    return user


# --- deactivation, the operator's list of accounts ----------------------------------------------

def deactivate(db: Session, actor, user: User, reason: str | None = None) -> bool:
    """The user can no longer log in, every web session ends (the session token is rotated) and
    every API token is revoked; the history stays. False when the account was already deactivated."""
    if not user.active:
        return False
    update_user(db, actor, user, active=False, reason=reason)
    return True


def reactivate(db: Session, actor, user: User, reason: str | None = None) -> bool:
    """The user may log in again (tokens revoked at deactivation stay revoked: issue a new one).
    False when the account was already active."""
    if user.active:
        return False
    update_user(db, actor, user, active=True, reason=reason)
    return True


def accounts(db: Session, actor, inactive_days: int | None = None, now: dt.datetime | None = None) -> list[dict]:
    """Every account for the operator, by e-mail: name, roles in force (``role@SITE``), active,
    two-factor enrolment (trial.auth.mfa) and the last login (None: never). With
    ``inactive_days``, only the accounts not logged in for that many days (never counts)."""
    require_role(db, actor, "admin")
    if inactive_days is not None and (isinstance(inactive_days, bool) or not isinstance(inactive_days, int)
                                      or inactive_days < 0):
        raise ValidationError(Msg(N_("%(field)s must be a whole number, 0 or more."), field="inactive-days"),
                              {"inactive_days": N_("must be a whole number, 0 or more")})
    q = select(User).order_by(User.email)
    if inactive_days is not None:
        since = (now or utcnow()) - dt.timedelta(days=inactive_days)
        q = q.where(or_(User.last_login_at.is_(None), User.last_login_at < since))
    codes = _codes(db)
    return [{"email": u.email, "name": u.name,
             "roles": _role_text(_sorted({(r.role, r.site_id, codes.get(r.site_id)) for r in u.roles})),
             "active": u.active, "mfa_enrolled": u.mfa_enrolled_at is not None, "last_login_at": u.last_login_at}
            for u in db.execute(q).scalars()]


# --- one-time links to set a new password --------------------------------------------------------
#
# The operator prints a link for the user and never sets or learns the password. The link's token
# is random (256 bits); only its SHA-256 is stored, with its expiry. It works once, for RESET_HOURS,
# and a newer link for the same user ends it.

RESET_HOURS = 24
RESET_PATH = "/reset-password/"
RESET_INVALID = N_("This link to set a password is not valid: it was already used, it has expired or a newer "
                   "link replaced it. Ask the trial's administrator for a new one.")


def reset_link(token: str) -> str:
    """The link of a reset token: absolute when TRIAL_BASE_URL says where the app is served."""
    return (settings.current().base_url or "").rstrip("/") + RESET_PATH + token


def issue_password_reset(db: Session, actor, user: User, hours: int = RESET_HOURS,
                         deliver=None) -> tuple[str | None, PasswordReset]:
    """A one-time link's token for ``user`` (stored hashed), valid ``hours``; earlier open links of
    the user end. At the server's console (trusted with every account) the token is returned, for
    the operator. An admin's link goes only to ``deliver(user, link, expires_at)`` (an e-mail to the
    user: trial.notify.accounts), never back to the admin, who could otherwise take the account
    over: (None, the link's row) is returned."""
    if deliver is None and not is_cli(actor):
        raise Forbidden(N_("Links to set a password are issued at the server's command line."))
    require_role(db, actor, "admin")
    if not user.active:
        raise Conflict(Msg(N_("The account %(email)s is deactivated: reactivate it first."), email=user.email))
    now = utcnow()
    for old in db.execute(select(PasswordReset).where(PasswordReset.user_id == user.id, PasswordReset.used_at.is_(None),
                                                      PasswordReset.ended_at.is_(None))).scalars():
        old.ended_at = now
    token = secrets.token_urlsafe(32)
    row = PasswordReset(user_id=user.id, token_hash=_token_hash(token), created_at=now,
                        created_by=_actor_name(actor), expires_at=now + dt.timedelta(hours=hours))
    db.add(row)
    db.flush()
    audit.record(db, actor, "issue_password_reset", "user", user.email, {"password_reset_expires_at": (None, row.expires_at)},
                 reason="sent to the user's e-mail" if deliver else "printed at the server's console")
    if deliver is not None:
        deliver(user, reset_link(token), row.expires_at)
        return None, row
    return token, row


def password_reset_for(db: Session, token: str, now: dt.datetime | None = None) -> PasswordReset:
    """The open link of ``token``: NotFound for an unknown token, Conflict when it was used, has
    expired, was replaced or its account is deactivated."""
    row = None
    if token and len(token) <= 200:
        row = db.execute(select(PasswordReset).where(PasswordReset.token_hash == _token_hash(token))).scalar_one_or_none()
    if row is None:
        raise NotFound(RESET_INVALID)
    user = db.get(User, row.user_id)
    if row.used_at is not None or row.ended_at is not None or row.expires_at <= (now or utcnow()) or not user.active:
        raise Conflict(RESET_INVALID)
    return row


def complete_password_reset(db: Session, token: str, new_password: str) -> User:
    """The user sets a new password through the link: it is used up, every session and API token
    of the user ends, and the change is audited as the user's."""
    now = utcnow()
    row = password_reset_for(db, token, now)
    user = db.get(User, row.user_id)
    _check_new_password(new_password, user.email, user.name, "new_password")
    row.used_at = now
    user.password_hash = hash_password(new_password)
    user.must_change_password = False
    user.password_changed_at = now
    user.session_token = secrets.token_hex(16)
    audit.record(db, user, "reset_password", "user", user.email, {"password_changed_at": (None, now)},
                 reason="one-time link")
    _revoke_all(db, user, user, "password reset")
    return user
