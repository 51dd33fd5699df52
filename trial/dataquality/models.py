from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from trial.db import Base, utcnow

QUERY_KINDS = ("participant", "screening", "assessment", "session", "event", "adverse_event")
QUERY_STATES = ("open", "answered", "closed")
ORIGINS = ("manual", "check")
# what a query is about decides who answers it: the site role that enters that data
ANSWERED_BY = {"participant": "coordinator", "screening": "coordinator", "event": "coordinator",
               "adverse_event": "coordinator", "session": "therapist"}  # assessment: by its instrument
VERIFIABLE = ("participant", "screening", "assessment", "session", "event", "adverse_event")


class DataQuery(Base):
    """A question about a record (or one field of it), answered by the site role that enters that
    data, closed or reopened by the raiser's role. ``open_key`` is set while the query is not
    closed: an automatic check raises at most one open query per finding."""

    __tablename__ = "data_query"
    __table_args__ = (Index("ix_data_query_raised", "raised_at", "id"),  # the list, newest first
                      # the assessors' list and its total: the queries on what assessors enter, per site
                      Index("ix_data_query_assessor", "site_id", postgresql_where=text("assessor_visible"),
                            sqlite_where=text("assessor_visible")),
                      # the number a user sees: per site (AT01-Q17), never the global sequence
                      Index("uq_data_query_site_number", "site_id", "number", unique=True))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[int | None] = mapped_column(Integer)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participant.id"), index=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("site.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    target_id: Mapped[int | None] = mapped_column(Integer)
    field: Mapped[str | None] = mapped_column(String(64))
    visit: Mapped[str | None] = mapped_column(String(32))
    instrument: Mapped[str | None] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(Text)
    # a system check's text as a composed message (trial.catalogue.Msg.words): each reader's page
    # shows it in the reader's language; ``text`` keeps the English
    words: Mapped[dict | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(10), default="open", index=True)
    origin: Mapped[str] = mapped_column(String(10), default="manual")
    check_key: Mapped[str | None] = mapped_column(String(200))
    open_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    answer_role: Mapped[str] = mapped_column(String(20))
    # may a blinded assessor see it (a query on what assessors enter)?
    assessor_visible: Mapped[bool] = mapped_column(Boolean, default=False)
    raised_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    raised_by: Mapped[str] = mapped_column(String(254))
    raised_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    messages: Mapped[list[QueryMessage]] = relationship(order_by="QueryMessage.id", lazy="selectin",
                                                        back_populates="query")


class QueryMessage(Base):
    """One step of a query's thread: raised, answered (with the correction made, if any), closed,
    reopened, or closed by the system when the finding went away."""

    __tablename__ = "data_query_message"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    query_id: Mapped[int] = mapped_column(ForeignKey("data_query.id"), index=True)
    action: Mapped[str] = mapped_column(String(10))
    text: Mapped[str | None] = mapped_column(Text)
    words: Mapped[dict | None] = mapped_column(JSON)  # as DataQuery.words, for the system's steps
    correction: Mapped[dict | None] = mapped_column(JSON)
    by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    by: Mapped[str] = mapped_column(String(254))
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    query: Mapped[DataQuery] = relationship(back_populates="messages")


class Verification(Base):
    """A monitor's mark that a record agrees with its source. A later change of the record clears
    it (``cleared_at``, with the reason); ``current_key`` is set while the mark stands."""

    __tablename__ = "source_verification"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participant.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    target_id: Mapped[int | None] = mapped_column(Integer)
    current_key: Mapped[str | None] = mapped_column(String(60), unique=True)
    verified_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    verified_by: Mapped[str] = mapped_column(String(254))
    verified_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    cleared_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    cleared_reason: Mapped[str | None] = mapped_column(String(300))
