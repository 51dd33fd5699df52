from __future__ import annotations

import datetime as dt

from sqlalchemy import Date, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from trial.db import Base, utcnow


class BlindingBreak(Base):
    """An assessor reports having learned (or possibly learned) a child's allocation."""

    __tablename__ = "blinding_break"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participant.id"), index=True)
    assessor_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"), index=True)
    reported_on: Mapped[dt.date] = mapped_column(Date)
    description: Mapped[str] = mapped_column(String(1000))
    recorded_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class NotDone(Base):
    """A form that will never be filled, with the protocol's reason (``[[missing_reasons]]``) and
    the text an "other" reason needs: its missing-form query is closed with that reason, and the
    bundle's tables carry it."""

    __tablename__ = "not_done"
    __table_args__ = (UniqueConstraint("participant_id", "visit", "instrument"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participant.id"), index=True)
    visit: Mapped[str] = mapped_column(String(50))
    instrument: Mapped[str] = mapped_column(String(50))
    reason: Mapped[str] = mapped_column(String(40))
    text: Mapped[str | None] = mapped_column(Text)
    recorded_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    recorded_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
