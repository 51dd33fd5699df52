from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, Boolean, Date, DateTime, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from trial.db import Base, utcnow


class FidelityDraw(Base):
    """One random draw of a therapist's sessions to rate. ``population`` is every attended session
    the therapist led that no earlier draw held (ids, ascending); the sample is the ``size`` of them
    with the smallest HMAC-SHA256 under ``seed`` of their id, so anyone can derive it again from
    the seed and the population (``population_sha256`` guards the list). Audited when drawn."""

    __tablename__ = "fidelity_draw"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    therapist_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"), index=True)
    seed: Mapped[str] = mapped_column(String(64))
    share: Mapped[float] = mapped_column(Float)
    size: Mapped[int] = mapped_column(Integer)
    population: Mapped[list] = mapped_column(JSON)
    population_sha256: Mapped[str] = mapped_column(String(64))
    drawn_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    drawn_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class FidelitySample(Base):
    """A session drawn for rating (each session is in at most one draw)."""

    __tablename__ = "fidelity_sample"

    session_id: Mapped[int] = mapped_column(ForeignKey("therapy_session.id"), primary_key=True)
    draw_id: Mapped[int] = mapped_column(ForeignKey("fidelity_draw.id"), index=True)


class FidelityRating(Base):
    """A sampled session rated on the protocol's fidelity items by a credentialed therapist who did
    not lead it. ``adherent``: the mean item score reaches the protocol's threshold."""

    __tablename__ = "fidelity_rating"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("fidelity_sample.session_id"), unique=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    rated_on: Mapped[dt.date] = mapped_column(Date)
    scores: Mapped[dict] = mapped_column(JSON)
    mean: Mapped[float] = mapped_column(Float)
    adherent: Mapped[bool] = mapped_column(Boolean)
    note: Mapped[str | None] = mapped_column(Text)
    rated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
