from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, Boolean, Date, DateTime, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from trial.db import Base, utcnow

GUESSES = ("music_therapy", "usual_care", "unsure")


class Assessment(Base):
    __tablename__ = "assessment"
    __table_args__ = (UniqueConstraint("participant_id", "visit", "instrument"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participant.id"), index=True)
    visit: Mapped[str] = mapped_column(String(32))
    instrument: Mapped[str] = mapped_column(String(32))
    performed_on: Mapped[dt.date] = mapped_column(Date)
    values: Mapped[dict] = mapped_column(JSON)
    out_of_window: Mapped[bool] = mapped_column(Boolean, default=False)
    allocation_guess: Mapped[str | None] = mapped_column(String(20))
    guess_confidence: Mapped[int | None] = mapped_column(Integer)
    protocol_version: Mapped[int] = mapped_column(Integer)
    entered_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    entered_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class BlindingBreak(Base):
    """An assessor reports having learned (or possibly learned) a child's allocation."""

    __tablename__ = "blinding_break"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participant.id"), index=True)
    assessor_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"), index=True)
    reported_on: Mapped[dt.date] = mapped_column(Date)
    description: Mapped[str] = mapped_column(String(1000))
    recorded_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Notification(Base):
    """An in-app message to one user (no e-mail: nothing about an allocation ever leaves the
    system)."""

    __tablename__ = "notification"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"), index=True)
    message: Mapped[str] = mapped_column(String(1000))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    read_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
