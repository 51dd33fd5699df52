from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, Boolean, Date, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from trial.db import Base, utcnow

SCREENING_OUTCOMES = ("eligible", "not_eligible", "declined", "other")


class Screening(Base):
    __tablename__ = "screening"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("site.id"), index=True)
    screened_on: Mapped[dt.date] = mapped_column(Date)
    answers: Mapped[dict] = mapped_column(JSON)
    declined: Mapped[bool] = mapped_column(Boolean, default=False)
    other_reason: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(20))
    failed_criteria: Mapped[list] = mapped_column(JSON, default=list)
    protocol_version: Mapped[int] = mapped_column(Integer)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Participant(Base):
    __tablename__ = "participant"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[str] = mapped_column(String(20), unique=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("site.id"), index=True)
    screening_id: Mapped[int] = mapped_column(ForeignKey("screening.id"), unique=True)
    consent_date: Mapped[dt.date] = mapped_column(Date)
    date_of_birth: Mapped[dt.date] = mapped_column(Date)
    sex: Mapped[str] = mapped_column(String(10))
    strata: Mapped[dict] = mapped_column(JSON, default=dict)
    enrolled_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))

    screening: Mapped[Screening] = relationship()
    site = relationship("Site")


class SiteSequence(Base):
    """Next participant number per site; its row is locked while a study ID is issued."""

    __tablename__ = "site_sequence"

    site_id: Mapped[int] = mapped_column(ForeignKey("site.id"), primary_key=True)
    last_number: Mapped[int] = mapped_column(Integer, default=0)
