from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from trial.db import Base, utcnow


class DataLock(Base):
    __tablename__ = "data_lock"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))
    version: Mapped[int | None] = mapped_column(Integer)  # hard locks: 1, 2, ...
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    signature_id: Mapped[int] = mapped_column(ForeignKey("signature.id"))
    protocol_version: Mapped[int] = mapped_column(Integer)
    lifted_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    lift_reason: Mapped[str | None] = mapped_column(Text)
    lift_signature_id: Mapped[int | None] = mapped_column(ForeignKey("signature.id"))
    # hard locks: the seed of the dummy allocation in the blinded bundle (32 random bytes, hex)
    dummy_seed: Mapped[str | None] = mapped_column(String(64))
    # hard locks signed while queries were open, with their acceptance: the ids of those queries
    accepted_open_queries: Mapped[list | None] = mapped_column(JSON)
    # hard locks signed while casebooks waited for their investigator's signature, with that
    # acceptance: the study ids of those casebooks
    accepted_unsigned: Mapped[list | None] = mapped_column(JSON)
    # an addendum lock (kind "addendum"): the id of the hard lock it corrects after unblinding (a
    # plain column: SQLite adds no foreign key to a table other tables' rows refer to)
    parent_lock_id: Mapped[int | None] = mapped_column(Integer)


class LockBundle(Base):
    """The locked dataset bundle of a hard lock, built once and never changed: ``blinded`` (arm
    codes, no session data) and ``unblinded``."""

    __tablename__ = "lock_bundle"
    __table_args__ = (UniqueConstraint("lock_id", "variant"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    lock_id: Mapped[int] = mapped_column(ForeignKey("data_lock.id"), index=True)
    variant: Mapped[str] = mapped_column(String(10))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class LockBuild(Base):
    """The building of one variant of a hard lock's bundle, by a worker process after the lock
    commits: its state (building, ready, failed), its progress, and who builds it with a heartbeat
    (a worker that stops beating for long is taken for dead: its build is reported failed and may
    be claimed again)."""

    __tablename__ = "lock_build"
    __table_args__ = (UniqueConstraint("lock_id", "variant"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    lock_id: Mapped[int] = mapped_column(ForeignKey("data_lock.id"), index=True)
    variant: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(10), default="building")  # building | ready | failed
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(100))
    heartbeat: Mapped[dt.datetime | None] = mapped_column(DateTime)
    # when the build was queued (the lock's commit): one nobody picked up within a minute is started again
    queued_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


AWAITING = "awaiting_countersignature"
UNBLINDING_STATES = (AWAITING, "countersigned", "withdrawn")


class UnblindingRequest(Base):
    """Unblinding takes two signatures: the manager's request (under a hard lock), then the
    countersignature of a user of the protocol's countersigner role (never the same person); only
    then is the trial unblinded. ``status``: awaiting_countersignature, countersigned, withdrawn."""
    __tablename__ = "unblinding_request"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    lock_id: Mapped[int] = mapped_column(ForeignKey("data_lock.id"))
    status: Mapped[str] = mapped_column(String(30), default="awaiting_countersignature")
    countersigner_role: Mapped[str] = mapped_column(String(20))
    requested_by_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    requested_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    signature_id: Mapped[int] = mapped_column(ForeignKey("signature.id"))
    countersigned_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    countersigned_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    countersignature_id: Mapped[int | None] = mapped_column(ForeignKey("signature.id"))
