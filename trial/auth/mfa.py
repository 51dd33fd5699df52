"""Two-factor sign-in (TOTP, RFC 6238: 30-second steps, 6 digits, SHA-1 as every authenticator app
computes it) and single-use recovery codes. Every change is audited.

- The shared secret (160 random bits) is stored only encrypted: AES-256-GCM under a key derived
  by HKDF-SHA256 from the app's secret key (``TRIAL_SECRET_KEY``), bound to the account's id (a
  secret copied to another account's row does not decrypt). Whoever reads the database learns no
  secret; a new secret key means that every enrolled user enrols again.
- A code is accepted for the current step and the one before and after it (clock drift), and a
  step only once: the last step accepted is kept (``User.mfa_last_step``) and claimed with one
  conditional UPDATE, so two requests with the same code cannot both pass.
- Ten recovery codes are made at enrolment, shown once and stored hashed with argon2id, as
  passwords are; each works once, at sign-in (an e-signature needs a current code).
- Wrong codes at sign-in count against the login throttle (trial.auth.service) like wrong passwords.
- ``TRIAL_MFA_ROLES`` names the roles that must enrol (production: every role; development: none);
  whoever has enrolled gives a code at every sign-in and e-signature, whatever the role.
"""
from __future__ import annotations

import base64
import datetime as dt
import functools
import hmac
import secrets

import pyotp
import segno
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from trial import settings
from trial.audit import service as audit
from trial.auth import service as accounts
from trial.auth.models import ROLES, MfaRecoveryCode, User
from trial.catalogue import N_
from trial.config import ConfigError, secret_key
from trial.db import utcnow
from trial.errors import Conflict, Forbidden, ValidationError

STEP_SECONDS = 30
DIGITS = 6
DRIFT = 1  # steps accepted either side of the current one
RECOVERY_CODES = 10
RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i
RECOVERY_LENGTH = 10  # 49 bits each, shown as xxxxx-xxxxx
_SEALED = "v1."
_verifier = PasswordHasher()  # reads the parameters from each hash (made by accounts.hash_password)

WRONG = N_("The code is wrong.")
REPLAYED = N_("This code was used already: wait for the next one (a new code every 30 seconds).")
UNREADABLE = N_("Your two-factor secret cannot be read (the server's key changed): ask the trial's administrator to "
                "reset your two-factor sign-in.")


# --- who must use it ---------------------------------------------------------------------------

def required_roles() -> frozenset[str]:
    """The roles of ``TRIAL_MFA_ROLES``; unset: every role in production, none in development. An
    unknown role is a ConfigError (the app refuses to start)."""
    s = settings.current()
    if s.mfa_roles is None:
        return frozenset(ROLES) if s.env == "production" else frozenset()
    names = set(s.mfa_roles.split(","))
    if names == {"all"}:
        return frozenset(ROLES)
    if names == {"none"}:
        return frozenset()
    unknown = sorted(names - set(ROLES))
    if unknown:
        raise ConfigError(f"TRIAL_MFA_ROLES names no role {', '.join(unknown)}: roles are {', '.join(ROLES)} "
                          "(or `all`, or `none`).")
    return frozenset(names)


def is_enrolled(user) -> bool:
    return getattr(user, "mfa_enrolled_at", None) is not None


def must_enrol(user) -> bool:
    """A user of a role in TRIAL_MFA_ROLES who has not enrolled: reaches only the enrolment page."""
    return not is_enrolled(user) and bool(user.role_names() & required_roles())


# --- the secret, sealed ------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _aead(key: str) -> AESGCM:
    derived = HKDF(algorithm=SHA256(), length=32, salt=b"trial-system", info=b"trial.auth.mfa: TOTP secrets v1")
    return AESGCM(derived.derive(key.encode()))


def seal(user_id: int, secret: str) -> str:
    """The secret encrypted for one account (what the database and the enrolment page's session keep)."""
    nonce = secrets.token_bytes(12)
    sealed = _aead(secret_key()).encrypt(nonce, secret.encode(), f"user:{user_id}".encode())
    return _SEALED + base64.urlsafe_b64encode(nonce + sealed).decode()


def unseal(user_id: int, sealed: str | None) -> str | None:
    """The secret, or None when it is missing, damaged, another account's or under another key."""
    if not sealed or not sealed.startswith(_SEALED):
        return None
    try:
        raw = base64.urlsafe_b64decode(sealed[len(_SEALED):])
        return _aead(secret_key()).decrypt(raw[:12], raw[12:], f"user:{user_id}".encode()).decode()
    except (InvalidTag, ValueError):
        return None


def new_secret(user: User) -> str:
    """A new secret for the enrolment page, sealed (kept in the page's session until enrolled)."""
    return seal(user.id, pyotp.random_base32(32))


def enrolment(user: User, sealed: str, issuer: str) -> dict:
    """What the enrolment page shows: the secret as text (in groups of four), the otpauth:// link
    and its QR code as inline SVG (drawn here: no outside service sees the secret)."""
    secret = unseal(user.id, sealed)
    uri = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(name=user.email, issuer_name=issuer)
    qr = segno.make(uri, error="m")
    svg = qr.svg_inline(scale=5, border=4, dark="#000", light="#fff", svgclass="qr-code", lineclass=None)
    return {"secret": " ".join(secret[i:i + 4] for i in range(0, len(secret), 4)), "uri": uri, "svg": svg}


# --- codes -------------------------------------------------------------------------------------

def _clean(code) -> str:
    return "".join(ch for ch in code.lower() if ch.isalnum()) if isinstance(code, str) else ""


def _step_of(secret: str, code: str, now: dt.datetime) -> int | None:
    """The time step (of those accepted now) whose code ``code`` is; None when none is."""
    if len(code) != DIGITS or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    t = int(now.replace(tzinfo=dt.UTC).timestamp()) // STEP_SECONDS
    found = None
    for step in range(t - DRIFT, t + DRIFT + 1):  # every candidate compared: the time says nothing
        if hmac.compare_digest(totp.generate_otp(step), code):
            found = step
    return found


def _claim(db: Session, user: User, step: int) -> bool:
    """Record ``step`` as used, only if no step as late was used: one UPDATE, so of two requests
    with the same code only one succeeds."""
    later = or_(User.mfa_last_step.is_(None), User.mfa_last_step < step)
    done = db.execute(update(User).where(User.id == user.id, later).values(mfa_last_step=step)
                      .execution_options(synchronize_session=False)).rowcount
    if done:
        set_committed_value(user, "mfa_last_step", step)
    return bool(done)


def _secret_of(user: User) -> str:
    secret = unseal(user.id, user.mfa_secret)
    if secret is None:
        raise Conflict(UNREADABLE)
    return secret


def _totp(db: Session, user: User, code: str, now: dt.datetime, purpose: str) -> bool:
    """True and audited when ``code`` is a current code of the user not used before; a code of a
    step already used is refused as such; False for any other code."""
    step = _step_of(_secret_of(user), code, now)
    if step is None:
        return False
    before = user.mfa_last_step
    if not _claim(db, user, step):
        raise ValidationError(REPLAYED, {"code": N_("was used already")})
    audit.record(db, user, "second_factor", "user", user.email, {"mfa_last_step": (before, step)}, reason=purpose)
    return True


def _matches(code_hash: str, code: str) -> bool:
    try:
        return _verifier.verify(code_hash, code)
    except (VerificationError, InvalidHashError):
        return False


def _recovery(db: Session, user: User, code: str, now: dt.datetime) -> bool:
    """True and audited when ``code`` is one of the user's unused recovery codes (then used up)."""
    if len(code) != RECOVERY_LENGTH:
        return False
    rows = db.execute(select(MfaRecoveryCode).where(MfaRecoveryCode.user_id == user.id,
                                                    MfaRecoveryCode.used_at.is_(None)).order_by(MfaRecoveryCode.id)).scalars().all()
    hit = next((r for r in rows if _matches(r.code_hash, code)), None)
    if hit is None:
        return False
    used = db.execute(update(MfaRecoveryCode).where(MfaRecoveryCode.id == hit.id, MfaRecoveryCode.used_at.is_(None))
                      .values(used_at=now).execution_options(synchronize_session=False)).rowcount
    if not used:  # another request used it this instant
        return False
    audit.record(db, user, "second_factor", "user", user.email,
                 {"mfa_recovery_codes_left": (len(rows), len(rows) - 1)}, reason="recovery code")
    return True


def _required(code) -> str:
    code = _clean(code)
    if not code:
        raise ValidationError(N_("Enter the code from your authenticator app."), {"code": N_("is required")})
    return code


def verify(db: Session, user: User, code: str, now: dt.datetime | None = None) -> str:
    """Sign-in's second step: ``"totp"`` for a current code, ``"recovery"`` for an unused recovery
    code (used up); else ValidationError naming ``code``."""
    code, now = _required(code), now or utcnow()
    if not is_enrolled(user):
        raise Conflict(N_("Two-factor sign-in is not set up for this account."))
    if _totp(db, user, code, now, "sign-in"):
        return "totp"
    if _recovery(db, user, code, now):
        return "recovery"
    raise ValidationError(WRONG, {"code": N_("is wrong")})


def sign_in(db: Session, user: User, code: str, remote_addr: str | None = None, device: str | None = None) -> str:
    """The code step after the password, throttled like the password: refused (Forbidden) while the
    account waits; a wrong code counts as a failed login (recorded: the caller commits it)."""
    now = utcnow()
    accounts.throttle(db, user.email, remote_addr, device, now)
    try:
        how = verify(db, user, code, now)
    except ValidationError:
        accounts.record_attempt(db, user.email, remote_addr, False, device, now)
        raise
    accounts.record_attempt(db, user.email, remote_addr, True, device, now)  # the sign-in is complete only now
    return how


def check_for_signature(db: Session, user: User, code) -> None:
    """An e-signature by an enrolled user: a current code (not a recovery code) beside the
    password, else ValidationError naming ``code``. A user whose role must use two-factor sign-in
    and who has not enrolled cannot sign (Forbidden)."""
    if not is_enrolled(user):
        if must_enrol(user):
            raise Forbidden(N_("Set up two-factor sign-in (your account page) before you sign."))
        return
    code = _required(code)
    if not _totp(db, user, code, utcnow(), "e-signature"):
        raise ValidationError(N_("Not signed: the code is wrong."), {"code": N_("is wrong")})


# --- enrolment, reset --------------------------------------------------------------------------

def _recovery_code() -> str:
    raw = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_LENGTH))
    return f"{raw[:5]}-{raw[5:]}"


def enrol(db: Session, user: User, sealed: str, code: str, now: dt.datetime | None = None) -> list[str]:
    """Enrol with the secret the page showed (``sealed``) once the user gives a current code of it:
    the secret is kept (encrypted), every other session of the user ends (the session token is
    rotated: the caller signs the current one in again) and the ten recovery codes are returned,
    the only time they are seen. Audited."""
    code, now = _required(code), now or utcnow()
    if is_enrolled(user):
        raise Conflict(N_("Two-factor sign-in is set up already."))
    secret = unseal(user.id, sealed)
    if secret is None:
        raise Conflict(N_("The enrolment page expired: scan the new code it shows."))
    step = _step_of(secret, code, now)
    if step is None:
        raise ValidationError(WRONG, {"code": N_("is wrong")})
    user.mfa_secret, user.mfa_enrolled_at, user.mfa_last_step = seal(user.id, secret), now, step
    user.session_token = secrets.token_hex(16)
    codes = [_recovery_code() for _ in range(RECOVERY_CODES)]
    db.add_all(MfaRecoveryCode(user_id=user.id, code_hash=accounts.hash_password(_clean(c)), created_at=now)
               for c in codes)
    audit.record(db, user, "mfa_enrol", "user", user.email,
                 {"mfa_enrolled_at": (None, now), "mfa_recovery_codes_left": (None, RECOVERY_CODES)})
    return codes


def recovery_codes_left(db: Session, user: User) -> int:
    return db.execute(select(func.count()).select_from(MfaRecoveryCode).where(
        MfaRecoveryCode.user_id == user.id, MfaRecoveryCode.used_at.is_(None))).scalar_one()


def reset(db: Session, actor, user: User) -> bool:
    """`trial user mfa-reset`: the secret and the recovery codes are deleted, every session of the
    user ends, and the user enrols again at the next sign-in (if the role requires it) or may.
    False when the user had not enrolled (nothing changes). Audited as the actor's."""
    if not is_enrolled(user) and user.mfa_secret is None:
        return False
    left = recovery_codes_left(db, user)
    db.execute(delete(MfaRecoveryCode).where(MfaRecoveryCode.user_id == user.id))
    audit.record(db, actor, "mfa_reset", "user", user.email,
                 {"mfa_enrolled_at": (user.mfa_enrolled_at, None), "mfa_recovery_codes_left": (left, None)})
    user.mfa_secret = user.mfa_enrolled_at = user.mfa_last_step = None
    user.session_token = secrets.token_hex(16)
    return True
