from __future__ import annotations

import datetime as dt

from sqlalchemy import Date, DateTime, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from trial.db import Base, utcnow


class Credential(Base):
    """A therapist's professional credential (a board certification or a national registration):
    kind from the protocol's ``credentials`` list, its number, the issuing body and the days it is
    valid (both inclusive). Recorded by an admin, audited; a session is accepted only from a
    therapist holding one valid on the session's day. Revoked credentials stay, marked."""

    __tablename__ = "credential"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    number: Mapped[str] = mapped_column(String(64))
    issuer: Mapped[str | None] = mapped_column(String(200))
    valid_from: Mapped[dt.date] = mapped_column(Date)
    valid_to: Mapped[dt.date] = mapped_column(Date)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    revoked_reason: Mapped[str | None] = mapped_column(String(500))
    recorded_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    recorded_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
