from __future__ import annotations

import datetime as dt

from sqlalchemy import Date, DateTime, ForeignKey, Integer, String
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
