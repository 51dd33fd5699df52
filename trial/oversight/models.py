from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from trial.db import Base, utcnow


class CasebookSignoff(Base):
    """The investigator's e-signature of a child's casebook at a milestone of the protocol
    (``[[signoff_milestones]]``). ``covered_seq``: the audit trail's head when signed (what the
    signature covers); ``covered_digest``: a digest of the casebook's data then. A later change to
    covered data makes it ``invalidated`` (the change named in ``invalidated_change``, its audit
    record in ``invalidated_seq``) and the casebook returns to the investigator's worklist."""

    __tablename__ = "casebook_signoff"
    # one valid signature per child and milestone (two investigators signing at once: one wins)
    __table_args__ = (Index("uq_casebook_signoff_valid", "participant_id", "milestone", unique=True,
                            sqlite_where=text("status = 'valid'"), postgresql_where=text("status = 'valid'")),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participant.id"), index=True)
    milestone: Mapped[str] = mapped_column(String(50))
    signature_id: Mapped[int] = mapped_column(ForeignKey("signature.id"))
    signed_by_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    signed_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    covered_seq: Mapped[int] = mapped_column(Integer)
    covered_digest: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(12), default="valid", index=True)  # valid | invalidated
    invalidated_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    invalidated_seq: Mapped[int | None] = mapped_column(Integer)
    invalidated_change: Mapped[str | None] = mapped_column(String(300))
    # the change's words (trial.catalogue.Msg.words()), so that each reader reads it in their language
    invalidated_words: Mapped[dict | list | None] = mapped_column(JSON)


class ArchiveJob(Base):
    """A site's archive for its investigator file at close-out (one casebook PDF per child,
    ``index.csv``, the audit trail, ``manifest.json`` with digests), built in the background with
    its progress; ``path``: the finished archive (a zip) in the instance folder."""

    __tablename__ = "archive_job"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("site.id"))
    requested_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    language: Mapped[str] = mapped_column(String(10), default="en")
    status: Mapped[str] = mapped_column(String(10), default="queued", index=True)  # queued | building | ready | failed
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    path: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(100))
    heartbeat: Mapped[dt.datetime | None] = mapped_column(DateTime)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
