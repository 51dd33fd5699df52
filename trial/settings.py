"""Every setting the system reads from the environment, declared once: its variable (``TRIAL_`` and
the field's name in capitals), type, default and meaning. README's configuration table and `trial
config show` are made from this declaration (tests/test_settings.py holds the README to it).

Nothing else reads a ``TRIAL_*`` variable: the app (trial.config), the database (trial.db), e-mail
and gunicorn's configuration ask :func:`current`, which reads the environment again whenever one of
the variables has changed (the tests change them between apps); the audit trail, which needs its key
for every record, keys its cache on :func:`raw`. A variable
set to the empty string counts as not set. A value that cannot be used is a :class:`ConfigError`
that names its variable. What production requires of the keys, and what development makes up
instead, is trial.config's (a key may also come from the app's own overrides there).
"""
from __future__ import annotations

import base64
import binascii
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PREFIX = "TRIAL_"
MIN_AUDIT_KEY = 32


class ConfigError(RuntimeError):
    """A setting is missing or cannot be used; the message names its variable."""


def _three_per_core() -> int:
    return 3 * (os.cpu_count() or 1)


class Settings(BaseSettings):
    """The ``TRIAL_*`` environment variables. A field's ``description`` is its meaning in README's
    table (markdown); ``json_schema_extra["default"]`` says the default in words where it is not a
    plain value, ``["hide"] = "password"`` masks a URL's password when shown (SecretStr fields are
    never shown)."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True, frozen=True, extra="ignore")

    env: Literal["development", "production"] = Field(
        "development",
        description="`development` or `production`: production refuses to start without the three keys below "
                    "and sends cookies `Secure` only; development makes up the keys it lacks")
    database_url: str | None = Field(
        None, repr=False, json_schema_extra={"default": "SQLite: `trial.db` in the instance folder", "hide": "password"},
        description="database; PostgreSQL: `postgresql+psycopg://user@host/db`")
    db_connect_timeout: int = Field(
        5, ge=1,
        description="PostgreSQL: seconds to wait for a connection (and for a pooled connection's check before use) "
                    "before the request answers 503; every connection also sends TCP keepalives, so a server "
                    "that vanished is noticed within a minute")
    db_statement_timeout: int = Field(
        30, ge=0,
        description="PostgreSQL, the web app's connections: seconds a statement may run before the server cancels "
                    "it and the request answers 503 (a server that does not answer at all is given up 2 s later); "
                    "`0`: no limit. The command line and the bundle worker (batch jobs) have none")
    db_lock_timeout: int = Field(
        10, ge=0,
        description="PostgreSQL, the web app's connections: seconds a statement may wait for a row or table "
                    "another transaction holds before the request answers 503; `0`: no limit")
    secret_key: SecretStr | None = Field(
        None, json_schema_extra={"default": "development: a random one kept in the instance folder"},
        description="session signing key; **required** in production")
    idle_minutes: int = Field(
        30, ge=1,
        description="a web session idle this many minutes is ended (the next request goes to the login page, and "
                    "the audit trail records it); the page warns a minute before and offers to stay signed in")
    session_hours: int = Field(
        12, ge=1,
        description="a web session ends this many hours after its login however active it is (an absolute "
                    "lifetime that does not slide)")
    seal_key: SecretStr | None = Field(
        None, json_schema_extra={"default": "development: a random one kept in the instance folder"},
        description="Fernet key that seals the randomization seed; **required** in production and identical on "
                    "every app server and the CLI (`python -c \"from cryptography.fernet import Fernet; "
                    "print(Fernet.generate_key().decode())\"`). Every allocation opens the seed with it: losing it "
                    "stops randomization, and the seed can then be neither revealed at the unblinding nor checked "
                    "(README \"Keys\")")
    audit_key: SecretStr | None = Field(
        None, json_schema_extra={"default": "development: a random one kept in the instance folder"},
        description=f"key of the audit chain's HMAC (at least {MIN_AUDIT_KEY} characters); **required** in "
                    "production, identical everywhere; never in the database")
    audit_keys_retired: SecretStr | None = Field(
        None, json_schema_extra={"default": "not set: the chain was never re-keyed"},
        description="the audit keys retired by `trial audit rotate-key`, comma-separated: they verify the part of "
                    "the chain written under them (README \"Rotating the keys\"); needed where `trial audit verify` "
                    "runs")
    audit_anchors: Path | None = Field(
        None, json_schema_extra={"default": "not set: the head is anchored only by `trial audit anchor --to FILE`"},
        description="append-only file, best on another volume, where `trial audit anchor` and every hard lock's "
                    "signing append the audit chain's head (one JSON line); `trial audit verify --anchors FILE` "
                    "checks the chain against it")
    allocation_journal: Path | None = Field(
        None, json_schema_extra={"default": "not set: allocations are kept in the database only"},
        description="append-only file, on another volume, where every allocation is appended once committed (one "
                    "JSON line: study id, site, stratum, slot, a digest of the arm keyed with the sealed seed, time, "
                    "audit seq; never the arm itself; fsync'd; file mode 0600); its folder must exist (mode 0700). "
                    "While it cannot be written randomization is refused (503) and `/readyz` says why; after a "
                    "restore `trial randomization reconcile --journal FILE` replays from it what the backup lacks "
                    "(README \"The allocation journal\")")
    instance_path: Path = Field(
        PROJECT_ROOT / "instance", json_schema_extra={"default": "`instance/` in the project folder"},
        description="folder for the SQLite file, the development keys, the lock worker's log (`worker.log`) and "
                    "the builds' temporary files (`tmp/`, mode 0700); the service user must be able to write it")
    proxies: int = Field(
        0, ge=0,
        description="number of reverse proxies in front of the app whose `X-Forwarded-For` is trusted")
    mfa_roles: str | None = Field(
        None, json_schema_extra={"default": "production: every role; development: none"},
        description="the roles that must sign in with a second factor (TOTP), comma-separated (e.g. "
                    "`manager,statistician,monitor`), or `all` or `none`: after the password such a user who has not "
                    "enrolled reaches only `/account/mfa` until enrolled; whoever has enrolled is asked for a code at "
                    "every sign-in and e-signature, whatever the role (README \"Two-factor sign-in\")")
    lock_builder: Literal["worker", "external", "inline"] = Field(
        "worker",
        description="who builds a hard lock's bundles after it commits: `worker` (the app starts `trial worker "
                    "--until-idle`, a detached process that builds both variants with two helper processes; its "
                    "output goes to `instance/worker.log`), `external` (a `trial worker` you keep running, e.g. "
                    "under systemd: on PostgreSQL the lock's commit wakes it at once (`NOTIFY trial_lock_build`), "
                    "a second or so sooner than a worker the app starts, which must load first) or `inline` (in "
                    "the signing request; the tests only: refused with TRIAL_ENV=production). The data cuts and the sharing bundles follow it too "
                    "(`inline`: in the request; `worker`: a detached process the app starts for each; `external`: "
                    "the `trial worker` kept running claims them), and so do the site archives (`inline`: in the "
                    "request; else a detached `trial archive run-job` the app starts); the processes the app starts "
                    "write to `instance/worker.log`")
    smtp_url: str | None = Field(
        None, repr=False, json_schema_extra={"default": "not set: notifications are in-app only", "hide": "password"},
        description="mail relay, `smtp://user:pass@host:25` (add `?starttls=1`) or `smtps://host:465`; with TLS "
                    "(`smtps://`, `starttls`) the relay's certificate and name are verified against the system's "
                    "certificate authorities (a private CA: `update-ca-certificates`, or `SSL_CERT_FILE`), and a relay "
                    "that fails the check is sent nothing; e-mails that cannot be sent stay queued for `trial mail send`")
    mail_from: str = Field(
        "trial-system@localhost",
        description="sender address of the e-mails")
    mail_attempts: int = Field(
        20, ge=1,
        description="attempts to send an e-mail before it is given up as a dead letter (kept, shown on the managers' "
                    "and admins' home pages, in `/readyz` and `trial mail status`; `trial mail status --retry-dead` "
                    "queues it again); after a failed attempt the next waits 1, 2, 4 ... minutes, at most an hour")
    survey_address_limit: int = Field(
        20, ge=1,
        description="parents' surveys: a client address that tried this many unknown links in 15 minutes gets 429 "
                    "(Retry-After) for every survey link until the 15 minutes have passed")
    survey_link_limit: int = Field(
        30, ge=1,
        description="parents' surveys: a link opened or submitted this many times in an hour gets 429 (Retry-After) "
                    "until the hour has passed")
    base_url: str | None = Field(
        None, json_schema_extra={"default": "not set: links in e-mails are relative"},
        description="public address of the app, e.g. `https://trial.example.org`, so that links in e-mails are "
                    "absolute")
    oidc_issuer: str | None = Field(
        None, json_schema_extra={"default": "not set: no single sign-on (`/login/sso` answers 404)"},
        description="single sign-on: the issuer of the institution's OpenID Connect provider, e.g. "
                    "`https://login.hospital.example/realms/staff` (its `/.well-known/openid-configuration` is read); "
                    "`https://`, or `http://` on the loopback only; set together with the two below (README "
                    "\"Single sign-on\")")
    oidc_client_id: str | None = Field(
        None, description="single sign-on: the client id the provider registered for this system (redirect URI "
                          "`<TRIAL_BASE_URL>/login/sso/callback`)")
    oidc_client_secret: SecretStr | None = Field(
        None, description="single sign-on: the client's secret at the provider (the client authenticates with it "
                          "at the token endpoint; the code flow also uses PKCE)")
    bind: str = Field(
        "127.0.0.1:8000",
        description="where gunicorn listens (`config/gunicorn.conf.py`): `host:port` or `unix:/path/to/socket`")
    workers: int = Field(
        default_factory=_three_per_core, ge=1, json_schema_extra={"default": "3 per CPU core"},
        description="gunicorn's sync worker processes (`config/gunicorn.conf.py`)")
    metrics_token: SecretStr | None = Field(
        None, json_schema_extra={"default": "not set: `/metrics` answers 404"},
        description="the bearer token a Prometheus scraper sends to `GET /metrics` (`Authorization: Bearer "
                    "<token>`); any other request to `/metrics` answers 404 (README \"Operations\")")

    @field_validator("seal_key")
    @classmethod
    def _fernet_key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            try:  # what cryptography's Fernet accepts, without importing it
                ok = len(base64.urlsafe_b64decode(v.get_secret_value())) == 32
            except (binascii.Error, ValueError):
                ok = False
            if not ok:
                raise ValueError("TRIAL_SEAL_KEY must be a Fernet key: 32 bytes in URL-safe base64 (44 characters).")
        return v

    @field_validator("audit_key")
    @classmethod
    def _long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < MIN_AUDIT_KEY:
            raise ValueError(f"TRIAL_AUDIT_KEY must be at least {MIN_AUDIT_KEY} characters (a random secret).")
        return v

    @field_validator("audit_keys_retired")
    @classmethod
    def _retired_keys(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and any(len(k.strip()) < MIN_AUDIT_KEY for k in v.get_secret_value().split(",")):
            raise ValueError(f"TRIAL_AUDIT_KEYS_RETIRED must be audit keys of at least {MIN_AUDIT_KEY} characters "
                             "each, separated by commas.")
        return v

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, v: str | None) -> str | None:
        if v is not None and "://" not in v:
            raise ValueError("TRIAL_DATABASE_URL must be a database URL, e.g. sqlite:////srv/trial/trial.db or "
                             "postgresql+psycopg://user@host/db.")
        return v

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, v: str | None) -> str | None:
        if v is not None and urlsplit(v).scheme not in ("smtp", "smtps"):
            raise ValueError(f"TRIAL_SMTP_URL must start with smtp:// or smtps://, not {urlsplit(v).scheme}://.")
        return v

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str | None) -> str | None:
        if v is not None and urlsplit(v).scheme not in ("http", "https"):
            raise ValueError(f"TRIAL_BASE_URL must start with http:// or https://, not {v!r}.")
        return v

    @field_validator("mfa_roles")
    @classmethod
    def _mfa_roles(cls, v: str | None) -> str | None:
        """Only the form here (the names are the roles of trial.auth.models, checked by trial.auth.mfa
        when the app starts: the settings know no roles)."""
        if v is None:
            return v
        names = [n.strip().lower() for n in v.split(",")]
        if not all(n.isalpha() for n in names):
            raise ValueError(f"TRIAL_MFA_ROLES must be roles separated by commas, `all` or `none`, not {v!r}.")
        return ",".join(names)

    @field_validator("oidc_issuer")
    @classmethod
    def _oidc_issuer(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
        if not parts.hostname or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)) \
                or parts.query or parts.fragment:
            raise ValueError(f"TRIAL_OIDC_ISSUER must be the provider's https:// address without query or fragment "
                             f"(http:// only on the loopback), not {v!r}.")
        return v  # as the provider spells it: its discovery document must name the same issuer

    @model_validator(mode="after")
    def _oidc_together(self) -> Settings:
        given = [n for n in ("oidc_issuer", "oidc_client_id", "oidc_client_secret") if getattr(self, n) is not None]
        if given and len(given) < 3:
            raise ValueError("Single sign-on needs TRIAL_OIDC_ISSUER, TRIAL_OIDC_CLIENT_ID and TRIAL_OIDC_CLIENT_SECRET "
                             "together; set: " + ", ".join(variable(n) for n in given) + ".")
        return self


def current() -> Settings:
    """The settings in the environment now. Read again (and checked) whenever a ``TRIAL_*``
    variable has changed; otherwise the same, immutable object (reading and checking them costs
    half a millisecond; comparing, a microsecond a variable)."""
    return _load(tuple(os.environ.get(v) for v in VARIABLES))


def raw(*fields: str) -> tuple[str | None, ...]:
    """What the environment holds now for these settings, unchecked: the key of a cache of what is
    derived from them, where even :func:`current` costs too much (the audit trail's key, asked for
    on every record it writes or verifies)."""
    return tuple(os.environ.get(PREFIX + f.upper()) for f in fields)


@functools.lru_cache(maxsize=8)
def _load(_values: tuple[str | None, ...]) -> Settings:
    """The argument is what the variables hold: the cache's key."""
    try:
        return Settings()
    except ValidationError as e:
        raise ConfigError(" ".join(_problem(err) for err in e.errors(include_url=False))) from None


def reveal(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None


def variable(field: str) -> str:
    return PREFIX + field.upper()


VARIABLES = tuple(variable(name) for name in Settings.model_fields)


def _problem(err) -> str:
    """One sentence naming the variable; a secret's value is never repeated."""
    name = err["loc"][0] if err["loc"] else None
    if err["type"] == "value_error" or name not in Settings.model_fields:
        return str(err.get("ctx", {}).get("error") or err["msg"])
    var, info = variable(name), Settings.model_fields[name]
    given = "" if _is_secret(info) else f", not {err['input']!r}"
    choices = [c for c in get_args(info.annotation) if isinstance(c, str)]
    if err["type"] == "literal_error" and choices:
        return f"{var} must be {', '.join(choices[:-1])} or {choices[-1]}{given}."
    if info.annotation is int:
        least = next((m.ge for m in info.metadata if hasattr(m, "ge")), None)
        return f"{var} must be a whole number" + (f" of at least {least}" if least is not None else "") + f"{given}."
    return f"{var}: {err['msg'][:1].lower()}{err['msg'][1:]}{given}."


# --- the declaration, described (README's table, `trial config show`) ---------------------------

@dataclass(frozen=True)
class Described:
    variable: str
    value: str  # what the environment holds now, secrets masked; "not set"
    default: str  # markdown
    meaning: str  # markdown
    secret: bool


def _is_secret(info: FieldInfo) -> bool:
    return SecretStr in get_args(info.annotation) or info.annotation is SecretStr


def _extra(info: FieldInfo) -> dict:
    return info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}


def default_text(info: FieldInfo) -> str:
    if "default" in _extra(info):
        return _extra(info)["default"]
    return "not set" if info.default is None else f"`{info.default}`"


def _masked_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def shown_value(info: FieldInfo, raw: str | None) -> str:
    if not raw:
        return "not set"
    if _is_secret(info):
        return "set (hidden)"
    if _extra(info).get("hide") == "password":
        return _masked_url(raw)
    return raw


def describe() -> list[Described]:
    """Every setting in declaration order, with the value the environment holds now (not checked:
    :func:`current` does that), secrets masked."""
    return [Described(variable(name), shown_value(info, os.environ.get(variable(name))), default_text(info),
                      info.description or "", _is_secret(info))
            for name, info in Settings.model_fields.items()]
