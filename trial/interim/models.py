from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from trial.db import Base, utcnow


class DataCut(Base):
    """A consistent snapshot of the live data (one read transaction; nothing locked), built in the
    background into the same tables as a lock's bundle: ``content`` (a zip), its ``sha256``, the
    audit trail's head (``audit_seq``) and the protocol version it was read under."""

    __tablename__ = "data_cut"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(10), default="building", index=True)  # building | ready | failed
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    requested_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    snapshot_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    audit_seq: Mapped[int | None] = mapped_column(Integer)
    protocol_version: Mapped[int | None] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(String(100))
    heartbeat: Mapped[dt.datetime | None] = mapped_column(DateTime)
    error: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    content: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)


class DmcRecommendation(Base):
    """The data monitoring committee's recommendation on a cut, e-signed with a second factor."""

    __tablename__ = "dmc_recommendation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    data_cut_id: Mapped[int] = mapped_column(ForeignKey("data_cut.id"), index=True)
    decision: Mapped[str] = mapped_column(String(20))  # continue | modify | stop_benefit | stop_harm | stop_futility
    text: Mapped[str] = mapped_column(Text)
    signature_id: Mapped[int] = mapped_column(ForeignKey("signature.id"))
    signed_by_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    signed_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class SharingBundle(Base):
    """The de-identified bundle of a locked, unblinded trial for data sharing: built in the
    background; ``disclosure``: the k report of the quasi-identifiers' combinations."""

    __tablename__ = "sharing_bundle"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    lock_id: Mapped[int] = mapped_column(ForeignKey("data_lock.id"), index=True)
    status: Mapped[str] = mapped_column(String(10), default="building")  # building | ready | failed
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    requested_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    error: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    content: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    disclosure: Mapped[dict | None] = mapped_column(JSON)
