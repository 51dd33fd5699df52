"""Reading and holding the trial state. :func:`ensure_writable` is what every clinical writer
calls first: while a lock is in force it refuses with 423."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from trial.catalogue import N_, Msg
from trial.db import is_sqlite
from trial.errors import Locked
from trial.trialstate.models import TrialState


def state(db: Session, update: bool = False) -> TrialState:
    """The state row, held FOR SHARE (a writer) or FOR UPDATE (a lock change) on PostgreSQL;
    SQLite's BEGIN IMMEDIATE already serializes writers."""
    q = select(TrialState).where(TrialState.id == 1).execution_options(populate_existing=True)
    if not is_sqlite(db.get_bind()):
        q = q.with_for_update(read=not update)
    return db.execute(q).scalar_one()


def ensure_writable(db: Session) -> None:
    """Refuse a clinical write while a lock is in force (423). Holds the trial state FOR SHARE
    so a lock cannot be signed in the middle of this transaction."""
    st = state(db)
    if st.active_lock_id is not None:
        raise _locked(st.lock_notice)


def writable_query(dialect: str, *columns):
    """The statement for :func:`check_writable`: the lock in force, its notice and ``columns``
    (scalar subqueries read in the same round trip), with the state FOR SHARE on PostgreSQL."""
    t = TrialState.__table__
    q = select(t.c.active_lock_id, t.c.lock_notice, *columns).where(t.c.id == 1)
    return q if dialect == "sqlite" else q.with_for_update(read=True, of=t)


def check_writable(db: Session, stmt):
    """:func:`ensure_writable` for a hot path, with a statement from :func:`writable_query`.
    Returns the values of its extra columns."""
    row = db.execute(stmt).one()
    if row[0] is not None:
        raise _locked(row[1])
    return row[2:]


def lock_message(notice: str | None) -> Msg:
    """What a reader is told while a lock is in force: the 423 answer and the banner on every page."""
    return Msg(N_("The database is %(state)s: no data can be entered or changed."), state=notice or Msg(N_("locked")))


def lock_in_force(db: Session) -> str | None:
    """:func:`lock_message` of the lock in force, or None while the database is open for data
    entry. A plain read (no FOR SHARE): it only decides what a page shows."""
    row = db.execute(select(TrialState.active_lock_id, TrialState.lock_notice).where(TrialState.id == 1)).first()
    return lock_message(row[1]) if row is not None and row[0] is not None else None


def _locked(notice: str | None) -> Locked:
    return Locked(lock_message(notice))


def active_lock_id(db: Session) -> int | None:
    return db.execute(select(TrialState.active_lock_id).where(TrialState.id == 1)).scalar_one()


def trial_unblinded(db: Session) -> bool:
    """Read once per transaction (lists ask it for every row)."""
    if "unblinded" not in db.info:
        db.info["unblinded"] = db.execute(select(TrialState.unblinded_at).where(TrialState.id == 1)).scalar() is not None
    return db.info["unblinded"]


def randomization_opened(db: Session) -> dt.datetime | None:
    return db.execute(select(TrialState.randomization_opened_at).where(TrialState.id == 1)).scalar()
