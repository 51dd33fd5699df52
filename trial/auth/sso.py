"""Single sign-on with the institution's OpenID Connect provider: what a verified ID token may do here.

The protocol itself (discovery, the authorization code flow with PKCE S256, state, nonce, and the ID
token's signature against the provider's keys, ``iss``, ``aud`` and ``exp``) is Authlib's, driven by
the thin view trial.views.sso. This module decides, over claims already verified:

- who signs in: an existing, active account whose e-mail the provider says it has verified
  (``email_verified`` true); nothing else. An account is never created, and roles never come from
  the provider (DESIGN 6c: it proves who signs in, it never grants a role);
- whether the provider's sign-in counts as two factors (:func:`second_factor`), which spares an
  enrolled user the code step;
- what is recorded: a refusal is a failed login (a login attempt that does not count towards the
  password throttle, and an audit record naming the reason), a success is a login like a password's
  (last login, a login attempt, an audit record naming the provider and its ``amr``).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.auth.models import LoginAttempt, User
from trial.auth.service import get_user_by_email
from trial.catalogue import N_, Msg
from trial.db import utcnow
from trial.errors import Forbidden

# RFC 8176's authentication method references by the kind of factor they prove. ``mfa`` says
# "more than one factor" by itself (Entra ID, Okta); otherwise methods of two different kinds are
# needed (a password and a one-time code, a hardware key and its PIN or a fingerprint). Two methods of
# one kind (a hardware and a software key) are one factor; ``user`` (presence), ``rba`` (risk-based),
# ``geo``, ``wia`` (Windows login) and ``mca`` (several channels) name no factor of their own.
KNOWLEDGE = frozenset({"pwd", "pin", "kba"})
POSSESSION = frozenset({"otp", "hwk", "swk", "sms", "tel", "sc", "pop"})
INHERENCE = frozenset({"fpt", "face", "iris", "retina", "vbm"})
FACTOR_KINDS = (KNOWLEDGE, POSSESSION, INHERENCE)

SSO_ACTOR = "single sign-on"
NO_EMAIL = N_("Your organisation's sign-in did not give an e-mail address, so no account of this system can be "
              "found for it. Sign in with your e-mail and password.")
UNVERIFIED = N_("Your organisation has not verified the e-mail address %(email)s, so it cannot sign you in to this "
                "system. Sign in with your e-mail and password, or ask your organisation's IT to verify the address.")
NO_ACCOUNT = N_("No active account of this system has the e-mail address %(email)s. Single sign-on signs in existing "
                "accounts only: ask the trial's administrator for an account, or sign in with your e-mail and "
                "password.")


@dataclass(frozen=True)
class SsoLogin:
    user: User
    second_factor: bool  # the provider's amr says it used more than one factor


def second_factor(amr) -> bool:
    """Whether the provider's ``amr`` claim (a list of RFC 8176 method names) says it used a second
    factor: ``mfa``, or methods of at least two kinds (knowledge, possession, inherence). Anything
    that is not a list of strings says nothing."""
    if not isinstance(amr, list) or not all(isinstance(m, str) for m in amr):
        return False
    methods = set(amr)
    return "mfa" in methods or sum(bool(methods & kind) for kind in FACTOR_KINDS) >= 2


def discovery_url(issuer: str) -> str:
    """Where the provider describes itself (OpenID Connect Discovery 1.0, section 4)."""
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def provider_problem(metadata: Mapping, issuer: str) -> str | None:
    """What makes the provider's discovery document unusable here, for the operator's log; None
    when it will do. Its issuer must be TRIAL_OIDC_ISSUER exactly (Discovery 1.0, section 4.3): the
    ID tokens are checked against it."""
    if metadata.get("issuer") != issuer:
        return (f"the provider's discovery document names the issuer {metadata.get('issuer')!r}, "
                f"not TRIAL_OIDC_ISSUER {issuer!r}")
    missing = [k for k in ("authorization_endpoint", "token_endpoint", "jwks_uri") if not metadata.get(k)]
    if missing:
        return "the provider's discovery document lacks " + ", ".join(missing)
    methods = metadata.get("code_challenge_methods_supported")
    if methods is not None and "S256" not in methods:
        return "the provider does not offer PKCE with S256"
    return None


def with_userinfo(id_token: Mapping, userinfo: Mapping) -> dict:
    """The ID token's verified claims, completed with the e-mail the provider's UserInfo endpoint
    gives (where a provider puts what the scope asked for when it also issues an access token, as
    oidc-provider does): only for the same subject (Core 1.0, section 5.3.2), only the e-mail and
    whether it is verified, and never against what the ID token said itself (its ``amr`` above all)."""
    claims = dict(id_token)
    if not isinstance(userinfo, Mapping) or userinfo.get("sub") is None or userinfo.get("sub") != claims.get("sub"):
        return claims
    if "email" not in claims:
        claims.update({k: userinfo[k] for k in ("email", "email_verified") if k in userinfo})
    elif "email_verified" not in claims and userinfo.get("email") == claims["email"] and "email_verified" in userinfo:
        claims["email_verified"] = userinfo["email_verified"]
    return claims


def sign_in(db: Session, claims: Mapping, issuer: str, remote_addr: str | None = None) -> SsoLogin:
    """The account the provider's verified claims sign in, recorded as a login; or Forbidden with a
    message for the person, recorded as a failed login. The caller commits either way."""
    email = claims.get("email")
    email = email.strip().lower()[:254] if isinstance(email, str) else ""
    remote_addr = (remote_addr or None) and remote_addr[:64]
    if not email:
        _refused(db, "", remote_addr, issuer, claims, "the provider gave no e-mail address", Msg(NO_EMAIL))
    if claims.get("email_verified") is not True:
        _refused(db, email, remote_addr, issuer, claims, "the provider has not verified the e-mail address",
                Msg(UNVERIFIED, email=email))
    user = get_user_by_email(db, email)
    if user is None or not user.active:
        why = "no account has this e-mail address" if user is None else "the account is deactivated"
        _refused(db, email, remote_addr, issuer, claims, why, Msg(NO_ACCOUNT, email=email))
    now = utcnow()
    db.add(LoginAttempt(email=email, success=True, counted=True, remote_addr=remote_addr, at=now))
    user.last_login_at = now
    two = second_factor(claims.get("amr"))
    audit.record(db, user, "login", "user", user.email, reason=_how(issuer, claims, two))
    return SsoLogin(user, two)


def _how(issuer: str, claims: Mapping, two: bool) -> str:
    amr = claims.get("amr")
    methods = ",".join(amr) if isinstance(amr, list) and all(isinstance(m, str) for m in amr) else "not given"
    return (f"single sign-on by {issuer} (subject {str(claims.get('sub', ''))[:255]}; amr {methods}: "
            f"{'two factors' if two else 'one factor'})")


def _refused(db: Session, email: str, remote_addr: str | None, issuer: str, claims: Mapping, why: str,
            message: Msg) -> None:
    """Record a refused single sign-on as a failed login and raise Forbidden. The attempt does not
    count towards the password throttle: the provider, not a guessed password, made it, and counting
    it would let anyone with an account at the provider slow down the owner of an address here."""
    db.add(LoginAttempt(email=email, success=False, counted=False, remote_addr=remote_addr, at=utcnow()))
    audit.record(db, SSO_ACTOR, "login_refused", "user", email or "(no e-mail)",
                 reason=f"single sign-on by {issuer} refused: {why} (subject {str(claims.get('sub', ''))[:255]})")
    raise Forbidden(message)
