from __future__ import annotations

import datetime as dt

from sqlalchemy import DateTime, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from trial.db import Base


class TrialState(Base):
    """A single row. Writers hold it FOR SHARE, lock changes FOR UPDATE, so a lock never lands in
    the middle of a write. ``lock_notice`` says, for the 423 message, which lock is in force."""

    __tablename__ = "trial_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    active_lock_id: Mapped[int | None] = mapped_column(ForeignKey("data_lock.id"))
    lock_notice: Mapped[str | None] = mapped_column(String(300))
    randomization_opened_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    unblinded_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    # set by `trial backup restore`: randomization stays closed (why, and since when) until
    # `trial randomization reconcile` replays the allocation journal or the operator signs none were lost
    randomization_hold: Mapped[str | None] = mapped_column(String(300))
    randomization_hold_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
