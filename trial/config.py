"""The app's configuration and keys, from the settings declared in trial.settings (README
"Configuration"): what production requires, what development makes up and keeps in the instance
folder."""
from __future__ import annotations

import secrets
from pathlib import Path

from cryptography.fernet import Fernet

from trial import settings
from trial.db import default_url
from trial.settings import MIN_AUDIT_KEY, ConfigError, reveal

__all__ = ["MIN_AUDIT_KEY", "ConfigError", "audit_key", "from_env", "instance_path", "retired_audit_keys", "seal_key",
           "secret_key"]


def instance_path() -> Path:
    p = settings.current().instance_path
    p.mkdir(parents=True, exist_ok=True)
    return p


def _persisted_secret(name: str) -> str:
    """Development only: a random secret kept in the instance folder, so restarts keep sessions."""
    f = instance_path() / name
    if not f.exists():
        f.write_text(secrets.token_hex(32))
        f.chmod(0o600)
    return f.read_text().strip()


def from_env(overrides: dict | None = None) -> dict:
    s = settings.current()
    env = s.env
    cfg = {
        "ENV_NAME": env,
        "DATABASE_URL": default_url(),
        "SECRET_KEY": reveal(s.secret_key),
        "SEAL_KEY": reveal(s.seal_key),
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": env == "production",
        "SESSION_COOKIE_NAME": "trial_session",
        "REMEMBER_COOKIE_DURATION": 0,
        # a signed cookie older than the absolute lifetime is refused outright; trial.websession ends a
        # session idle IDLE_MINUTES, or SESSION_HOURS after its login however active it was
        "PERMANENT_SESSION_LIFETIME": s.session_hours * 3600,
        "WTF_CSRF_TIME_LIMIT": s.session_hours * 3600,
        "IDLE_MINUTES": s.idle_minutes,
        "SESSION_HOURS": s.session_hours,
        "MAX_CONTENT_LENGTH": 2 * 1024 * 1024,
        "JSON_SORT_KEYS": False,
        # reverse proxies in front of the app whose X-Forwarded-For is trusted: login throttling
        # counts per client address, which behind a proxy only this header knows
        "PROXIES": s.proxies,
        # who builds a hard lock's bundles once it commits: "worker" (the app starts `trial worker
        # --until-idle`, a process of its own), "external" (a `trial worker` kept running, e.g. by
        # systemd, picks them up) or "inline" (in the signing request: tests, a single process)
        "LOCK_BUILDER": s.lock_builder,
        # single sign-on with the institution's OpenID Connect provider (trial.views.sso): off unless
        # all three are set
        "OIDC_ISSUER": s.oidc_issuer,
        "OIDC_CLIENT_ID": s.oidc_client_id,
        "OIDC_CLIENT_SECRET": reveal(s.oidc_client_secret),
        # the bearer token of `GET /metrics` (trial.views.ops); not set: that route answers 404
        "METRICS_TOKEN": reveal(s.metrics_token),
    }
    cfg.update(overrides or {})
    if cfg.get("TESTING") and "LOCK_BUILDER" not in (overrides or {}):
        cfg["LOCK_BUILDER"] = "inline"
    if cfg["LOCK_BUILDER"] not in ("worker", "external", "inline"):  # an override (the environment's is checked)
        raise ConfigError("TRIAL_LOCK_BUILDER must be worker, external or inline.")
    if cfg["LOCK_BUILDER"] == "inline" and cfg["ENV_NAME"] == "production":
        # inline builds a lock's bundles, a data cut or a sharing bundle in the request's own session: on SQLite
        # its transaction holds the write lock for the whole build, and every writer waits (the tests' mode)
        raise ConfigError("TRIAL_LOCK_BUILDER=inline is for the tests: it builds in the request and holds up the "
                          "writers meanwhile; in production use worker or external.")
    if not cfg["SECRET_KEY"]:
        if cfg["ENV_NAME"] == "production":
            raise ConfigError("TRIAL_SECRET_KEY must be set in production (TRIAL_ENV=production); refusing to start.")
        cfg["SECRET_KEY"] = _persisted_secret("secret_key")
    if not cfg["SEAL_KEY"]:
        cfg["SEAL_KEY"] = seal_key(cfg["ENV_NAME"])
    audit_key(cfg["ENV_NAME"])  # refuse to start in production without it
    return cfg


def secret_key(env: str | None = None) -> str:
    """The app's secret key (``TRIAL_SECRET_KEY``; in development the one kept in the instance
    folder), as every app server and the CLI hold it. Besides signing session cookies, it is what
    the key of the two-factor secrets is derived from (trial.auth.mfa): a new secret key means
    that every enrolled user enrols again (`trial user mfa-reset`)."""
    s = settings.current()
    if s.secret_key:
        return s.secret_key.get_secret_value()
    if (env or s.env) == "production":
        raise ConfigError("TRIAL_SECRET_KEY must be set in production (TRIAL_ENV=production); refusing to start.")
    return _persisted_secret("secret_key")


def seal_key(env: str | None = None) -> str:
    """The key that seals the randomization seed (Fernet). ``TRIAL_SEAL_KEY`` in production;
    in development a key kept in the instance folder. Every app server and the CLI must share it."""
    s = settings.current()
    if s.seal_key:
        return s.seal_key.get_secret_value()
    if (env or s.env) == "production":
        raise ConfigError("TRIAL_SEAL_KEY must be set in production (it seals the randomization seed).")
    f = instance_path() / "seal_key"
    if not f.exists():
        f.write_text(Fernet.generate_key().decode())
        f.chmod(0o600)
    return f.read_text().strip()


def audit_key(env: str | None = None) -> bytes:
    """The key of the audit chain's HMAC (``TRIAL_AUDIT_KEY``). It is never stored in the
    database, so someone who can write the database but does not hold the key cannot rewrite the
    trail and recompute the chain. In development a key kept in the instance folder. Every app
    server and the CLI must share it. Its length (at least MIN_AUDIT_KEY) is checked with the
    other settings."""
    s = settings.current()
    if s.audit_key:
        return s.audit_key.get_secret_value().encode()
    if (env or s.env) == "production":
        raise ConfigError("TRIAL_AUDIT_KEY must be set in production (it keys the audit trail's hash chain).")
    return _persisted_secret("audit_key").encode()


def retired_audit_keys() -> list[bytes]:
    """The audit keys retired by `trial audit rotate-key` (``TRIAL_AUDIT_KEYS_RETIRED``,
    comma-separated), which verify the part of the chain written under them."""
    s = settings.current()
    if not s.audit_keys_retired:
        return []
    return [k.strip().encode() for k in s.audit_keys_retired.get_secret_value().split(",") if k.strip()]
