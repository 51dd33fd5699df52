from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, Date, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from trial.db import Base, utcnow


class Consent(Base):
    """One signed consent (or assent) of a child's family: the protocol's document and its version,
    the language it was read in, who signed (a parent, a guardian, or the child for an assent), the
    options chosen (``{key: bool}``; None for consents migrated from the single consent date, when
    no option was recorded), and how it came (``entered``, ``enrollment``, ``migrated``)."""

    __tablename__ = "consent"
    __table_args__ = (UniqueConstraint("participant_id", "document", "version", "signer"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participant.id"), index=True)
    document: Mapped[str] = mapped_column(String(50))
    version: Mapped[str] = mapped_column(String(20))
    language: Mapped[str] = mapped_column(String(10))
    signed_on: Mapped[dt.date] = mapped_column(Date)
    signer: Mapped[str] = mapped_column(String(10))
    options: Mapped[dict | None] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(20), default="entered")
    obtained_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ConsentWithdrawal(Base):
    """A family's withdrawal of consent from a day on: its scope (``intervention``: no further
    sessions; ``follow_up``: no further visits or surveys; ``all``: neither) and what may be done
    with the data already collected (``keep``, ``delete_unanalysed``)."""

    __tablename__ = "consent_withdrawal"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participant.id"), index=True)
    on: Mapped[dt.date] = mapped_column(Date)
    scope: Mapped[str] = mapped_column(String(20))
    data_use: Mapped[str] = mapped_column(String(30))
    text: Mapped[str | None] = mapped_column(Text)
    recorded_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Survey(Base):
    """A parent-answered instrument sent for one visit: the link's token is kept only as its
    SHA-256; single use, expiring when the visit's window closes."""

    __tablename__ = "survey"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participant.id"), index=True)
    visit: Mapped[str] = mapped_column(String(50))
    instrument: Mapped[str] = mapped_column(String(50))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # the link's token is HMAC(secret key, nonce): a reminder repeats it; the database holds neither it nor the key
    token_nonce: Mapped[str | None] = mapped_column(String(64))
    language: Mapped[str] = mapped_column(String(10))
    email: Mapped[str | None] = mapped_column(String(254))
    first_name: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(10), default="sent", index=True)  # sent | opened | completed | revoked
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime)  # the link last sent (a resend issues a new one)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)
    opened_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    reminders_sent: Mapped[int] = mapped_column(Integer, default=0)
    last_reminder_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    assessment_id: Mapped[int | None] = mapped_column(ForeignKey("assessment.id"))


class SurveyAttempt(Base):
    """An attempt to open or answer a survey, kept in the database so that several app servers
    share the rate limit (trial.surveys.service): per link (``survey_id``) and per client address.
    ``outcome``: ``unknown`` (no such link), ``opened``, ``invalid`` (values refused), ``submitted``,
    ``gone`` (expired, revoked or already answered), ``limited`` (refused by the rate limit)."""

    __tablename__ = "survey_attempt"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    survey_id: Mapped[int | None] = mapped_column(Integer, index=True)
    remote_addr: Mapped[str | None] = mapped_column(String(64), index=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    outcome: Mapped[str] = mapped_column(String(20))
