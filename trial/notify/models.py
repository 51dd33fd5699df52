from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from trial.db import Base, utcnow


class Notification(Base):
    """An in-app message to one user; ``read_at`` is set when the user dismisses it."""

    __tablename__ = "notification"
    __table_args__ = (Index("uq_notification_ref", "ref", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"), index=True)
    message: Mapped[str] = mapped_column(String(1000))
    # the message as composed (trial.catalogue.Msg.words), shown in the reader's language
    words: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    read_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    link: Mapped[str | None] = mapped_column(String(200))
    # what a user sees of the notification's identity (in the dismiss link): random, never the
    # global sequence, which would show how much happens elsewhere
    ref: Mapped[str | None] = mapped_column(String(32))


class MailMessage(Base):
    """An e-mail, written in the same transaction as what it tells, sent after the commit (and
    retried by `trial mail send` if the relay was down)."""

    __tablename__ = "mail_outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    recipient: Mapped[str] = mapped_column(String(254))
    subject: Mapped[str] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(500))
    # what the message is about ("sae", "randomization", "anchor", ...; None: other): `trial mail send`
    # exits non-zero while an SAE message is undelivered
    kind: Mapped[str | None] = mapped_column(String(30))
    # the next try after a failure (backoff); a message that failed every try is a dead letter
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    dead_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    # the recipient's account and the site the message is about (a randomization confirmation names
    # an arm: it leaves only while that account is active and may know the site's arms)
    user_id: Mapped[int | None] = mapped_column(Integer)
    site_id: Mapped[int | None] = mapped_column(Integer)
