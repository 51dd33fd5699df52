"""The child's record: what enrollment, randomization, the course, outcome assessment and status
events all need of a participant. The services of those domains write these rows; this package
holds them, with their lookup and visibility, so the domains above depend on it and not on one
another."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, Boolean, Date, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from trial.db import Base, utcnow
from trial.sites.models import Site

SCREENING_OUTCOMES = ("eligible", "not_eligible", "declined", "other")
SEXES = ("female", "male")
GUESSES = ("music_therapy", "usual_care", "unsure")
EVENT_TYPES = ("withdrawn", "lost_to_follow_up", "discontinued_intervention", "not_received", "died")
# after these no further data is accepted
FINAL_EVENTS = ("withdrawn", "died")
# events about the intervention: they tell a blinded reader that the child had one to receive
ARM_REVEALING_EVENTS = ("not_received", "discontinued_intervention")


class Screening(Base):
    __tablename__ = "screening"
    # the site's own screening-log number: optional, each used once at a site
    __table_args__ = (Index("uq_screening_site_log_number", "site_id", "log_number", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("site.id"), index=True)
    log_number: Mapped[str | None] = mapped_column(String(40))
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
    site: Mapped[Site] = relationship()


class SiteSequence(Base):
    """Next participant number per site; its row is locked while a study ID is issued."""

    __tablename__ = "site_sequence"

    site_id: Mapped[int] = mapped_column(ForeignKey("site.id"), primary_key=True)
    last_number: Mapped[int] = mapped_column(Integer, default=0)


class Allocation(Base):
    """A child's allocation. It carries the child's study id and site, copied from the participant
    when the child is randomized (neither ever changes), so that the lists of children by arm (the
    adherence pages) take a page, and count, from one index of this table in study-id order instead
    of joining and sorting every participant (migration 0018)."""

    __tablename__ = "allocation"
    __table_args__ = (UniqueConstraint("stratum_id", "seq"),
                      Index("ix_allocation_study_id", "study_id", "participant_id",
                            postgresql_include=["arm", "site_id"]))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participant.id"), unique=True)
    study_id: Mapped[str] = mapped_column(String(20))
    site_id: Mapped[int] = mapped_column(ForeignKey("site.id"))
    stratum_id: Mapped[int] = mapped_column(ForeignKey("stratum.id"))
    seq: Mapped[int] = mapped_column(Integer)
    arm: Mapped[str] = mapped_column(String(32))
    details: Mapped[dict | None] = mapped_column(JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    randomized_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    randomized_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))


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


class StatusEvent(Base):
    __tablename__ = "status_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participant.id"), index=True)
    type: Mapped[str] = mapped_column(String(32))
    on: Mapped[dt.date] = mapped_column(Date)
    reason: Mapped[str] = mapped_column(Text)
    recorded_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    recorded_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
