from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, DateTime, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from trial.db import Base, utcnow


class AuditRecord(Base):
    """One changed field (or one event) of one entity. Never updated or deleted; on PostgreSQL a
    trigger refuses UPDATE, DELETE and TRUNCATE."""

    __tablename__ = "audit_record"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, unique=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    actor_id: Mapped[int | None] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(40))
    entity: Mapped[str] = mapped_column(String(60), index=True)
    entity_id: Mapped[str] = mapped_column(String(80), index=True)
    field: Mapped[str | None] = mapped_column(String(80))
    old: Mapped[str | None] = mapped_column(Text)
    new: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    # True when the record reveals an allocation (arm, session, ...): never shown to blinded users.
    reveals_allocation: Mapped[bool] = mapped_column(Boolean, default=False)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The chain head: a single row locked by every append, so concurrent writers cannot fork
    the chain. ``key_check`` is an HMAC of a fixed text under the audit key: an app server with a
    different key refuses to append instead of writing records nobody can verify."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    hash: Mapped[str] = mapped_column(String(64))
    key_check: Mapped[str | None] = mapped_column(String(64))
    # HMAC of (seq, hash) under the audit key: cutting records off the end of the chain and
    # pointing the head at the new last one fails verification without the key.
    mac: Mapped[str | None] = mapped_column(String(64))


class AuditAnchor(Base):
    """Records written before the chain was keyed (plain SHA-256) each get an HMAC under the audit
    key here, once, when the chain is re-anchored; the records themselves are never touched."""

    __tablename__ = "audit_anchor"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    mac: Mapped[str] = mapped_column(String(64))


class AuditSeal(Base):
    """The chain head as it stood at a moment that matters (a hard lock signed), with an HMAC under
    the audit key. Verification checks that each sealed record is still there with the same hash:
    a chain cut back below a seal (and its head re-keyed with a stolen old head) is detected."""

    __tablename__ = "audit_seal"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))
    what: Mapped[str] = mapped_column(String(200))
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    mac: Mapped[str] = mapped_column(String(64))


class AuditKeyEpoch(Base):
    """The audit key in force from a record on: a rotation starts a new epoch at the next record
    (``key_check``: an HMAC of a fixed text under that key, which tells a retired key by its
    check); verification uses each epoch's key for its part of the chain."""
    __tablename__ = "audit_key_epoch"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    from_seq: Mapped[int] = mapped_column(Integer, unique=True)
    key_check: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
