from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, Boolean, Date, DateTime, ForeignKey, Integer, String, UniqueConstraint, true
from sqlalchemy.orm import Mapped, mapped_column, relationship

from trial.db import Base, utcnow

ROLES = ("coordinator", "therapist", "assessor", "monitor", "investigator", "statistician", "manager", "admin", "dmc")
SITE_ROLES = ("coordinator", "therapist", "assessor", "monitor", "investigator")  # scoped to the sites they are given
GLOBAL_ROLES = ("statistician", "manager", "admin", "dmc")
# The data monitoring committee (dmc): reads the closed (by-arm) reports of data cuts and nothing else
# (trial.policy.DMC_REACHES); never combined with another role (trial.auth.service.check_role_conflicts).
# Roles that see allocations (a statistician from the unblinding on): an admin never holds one.
# The investigator: the site's principal investigator, who reads its children's data and arms and signs their
# casebooks (trial.oversight.signoff).
UNBLINDED_ROLES = ("coordinator", "therapist", "monitor", "investigator", "manager", "statistician", "dmc")
# Roles that enter or change clinical data (and sign for it).
DATA_ENTRY_ROLES = ("coordinator", "therapist", "assessor", "monitor")
# An admin's grant of any of these takes effect only when a manager countersigns it: an admin who
# could grant them at will could become someone who reads the arms or writes clinical data.
COUNTERSIGNED_ROLES = tuple(dict.fromkeys(UNBLINDED_ROLES + DATA_ENTRY_ROLES))
GRANT_STATES = ("pending", "approved", "rejected", "withdrawn")


class User(Base):
    __tablename__ = "user_account"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Rotated on logout and password change: every session cookie carries it, so old cookies die.
    session_token: Mapped[str] = mapped_column(String(64))
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    password_changed_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # the language of the web pages the user chose (a key of trial.catalogue.LANGUAGES); None: the
    # browser's (Accept-Language), else English
    language: Mapped[str | None] = mapped_column(String(8))
    # the last successful web login (or API token issued to the user); None: never
    last_login_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    # the weekly digest e-mail of visits coming due and queries waiting (the user may opt out), and
    # the first day of the last week it was sent for (one digest a week, however often checks run)
    weekly_digest: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    digest_week: Mapped[dt.date | None] = mapped_column(Date)
    # two-factor sign-in (TOTP, RFC 6238): the shared secret, encrypted under the server's key (never
    # stored in the clear), when the user enrolled, and the last time step a code was accepted for
    # (a code is never accepted twice)
    mfa_secret: Mapped[str | None] = mapped_column(String(255))
    mfa_enrolled_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    mfa_last_step: Mapped[int | None] = mapped_column(Integer)

    roles: Mapped[list[RoleAssignment]] = relationship(back_populates="user", cascade="all, delete-orphan",
                                                         lazy="selectin")

    # Flask-Login protocol -------------------------------------------------------------
    is_authenticated = True
    is_anonymous = False

    @property
    def is_active(self) -> bool:
        return self.active

    def get_id(self) -> str:
        return f"{self.id}:{self.session_token}"

    # convenience -----------------------------------------------------------------------
    def role_names(self) -> set[str]:
        return {r.role for r in self.roles}

    def has_role(self, *roles: str) -> bool:
        return bool(self.role_names() & set(roles))

    def site_ids(self, *roles: str) -> set[int]:
        return {r.site_id for r in self.roles if r.site_id is not None and (not roles or r.role in roles)}


class RoleAssignment(Base):
    __tablename__ = "role_assignment"
    __table_args__ = (UniqueConstraint("user_id", "role", "site_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(20))
    site_id: Mapped[int | None] = mapped_column(ForeignKey("site.id"))

    user: Mapped[User] = relationship(back_populates="roles")


class ApiToken(Base):
    """An API token; only its SHA-256 is stored. It stops working when it expires, when it is
    revoked, and when its user's password changes or the account is deactivated."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    revoked_reason: Mapped[str | None] = mapped_column(String(200))


class PasswordReset(Base):
    """A one-time link for the user to set a new password (issued at the command line): only the
    SHA-256 of its token is stored, with its expiry. It ends when used, when it expires, and when a
    newer link is issued for the same user."""

    __tablename__ = "password_reset"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(254))
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)
    used_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime)  # replaced by a newer link


class LoginAttempt(Base):
    """Failed and successful logins, kept in the database so several app servers share the
    throttle (trial.auth.service). An attempt refused because the throttle was waiting is kept with
    ``counted`` false: it does not extend the wait. ``remote_addr`` is the client's address, or
    ``address#device`` for an attempt made with a known-device cookie (counted in that device's
    bucket, not the address's)."""

    __tablename__ = "login_attempt"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), index=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    success: Mapped[bool] = mapped_column(Boolean)
    counted: Mapped[bool] = mapped_column(Boolean, default=True)
    remote_addr: Mapped[str | None] = mapped_column(String(64), index=True)


class RoleGrant(Base):
    """A role an admin granted that sees allocations: pending until a manager countersigns it
    (neither the grantee nor the one who asked for it), then the role assignment is made."""

    __tablename__ = "role_grant"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(20))
    site_id: Mapped[int | None] = mapped_column(ForeignKey("site.id"))
    status: Mapped[str] = mapped_column(String(10), default="pending", index=True)
    reason: Mapped[str | None] = mapped_column(String(500))
    requested_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    requested_by: Mapped[str] = mapped_column(String(254))
    requested_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    decided_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    decided_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    decision_note: Mapped[str | None] = mapped_column(String(500))
    signature_id: Mapped[int | None] = mapped_column(ForeignKey("signature.id"))

    user: Mapped[User] = relationship(foreign_keys=[user_id])


class MfaRecoveryCode(Base):
    """One of a user's single-use recovery codes (only its hash), shown once at enrolment."""
    __tablename__ = "mfa_recovery_code"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    used_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class AccessReview(Base):
    """A manager's signed review of who has access to what: the accounts as reviewed (e-mail,
    roles and sites, two-factor, last login, active) and the signature."""
    __tablename__ = "access_review"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    signature_id: Mapped[int] = mapped_column(ForeignKey("signature.id"))
    signed_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    inactive_days: Mapped[int] = mapped_column(Integer, default=90)
    accounts: Mapped[list] = mapped_column(JSON, default=list)
