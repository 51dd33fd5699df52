"""One engine and one session factory, shared by the web UI, the API and the CLI.

SQLite (the embedded default) runs every transaction as ``BEGIN IMMEDIATE`` through the
documented pysqlite event hooks, in WAL mode with foreign keys on and a busy timeout, so writers
queue instead of failing with "database is locked". PostgreSQL is selected by the URL.
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from sqlalchemy import MetaData, create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> dt.datetime:
    """Naive UTC timestamp; every timestamp column in the schema holds UTC."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


PROJECT_ROOT = Path(__file__).resolve().parent.parent


def default_url() -> str:
    url = os.environ.get("TRIAL_DATABASE_URL")
    if url:
        return url
    inst = Path(os.environ.get("TRIAL_INSTANCE_PATH", PROJECT_ROOT / "instance"))
    inst.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{inst / 'trial.db'}"


def is_sqlite(bind) -> bool:
    return bind.dialect.name == "sqlite"


def prebuilt(build):
    """A statement built once per dialect and executed with bind parameters, for hot paths:
    building a ``select()`` costs more Python than executing a cached one. ``build(dialect_name)``
    returns the statement; the decorated function takes the session and returns it."""
    built: dict[str, object] = {}

    def get(db):
        name = db.get_bind().dialect.name
        stmt = built.get(name)
        if stmt is None:
            stmt = built[name] = build(name)
        return stmt
    get.__doc__ = build.__doc__
    return get


def make_engine(url: str | None = None, **kw) -> Engine:
    url = url or default_url()
    if url.startswith("sqlite"):
        from sqlalchemy.engine import make_url
        path = make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kw)
        _sqlite_hooks(engine)
    else:
        kw.setdefault("pool_size", 10)
        kw.setdefault("max_overflow", 20)
        kw.setdefault("pool_recycle", 1800)
        engine = create_engine(url, **kw)
    return engine


def _sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # pragma: no cover - exercised by every test
        dbapi_conn.isolation_level = None  # let us emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        if engine.url.database not in (None, "", ":memory:"):
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # pragma: no cover
        conn.exec_driver_sql("BEGIN IMMEDIATE")


@event.listens_for(Session, "after_commit")
@event.listens_for(Session, "after_rollback")
def _forget_transaction_caches(session: Session, *args) -> None:
    """Per-transaction caches (the current protocol) end with the transaction."""
    session.info.pop("protocol", None)
    session.info.pop("unblinded", None)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def lock_for_update(stmt, bind):
    """``SELECT ... FOR UPDATE`` (waiting, never SKIP LOCKED). On SQLite the whole transaction
    already holds the write lock (BEGIN IMMEDIATE), so the clause is not needed."""
    stmt = stmt.execution_options(populate_existing=True)  # never reuse a stale row from the identity map
    return stmt if is_sqlite(bind) else stmt.with_for_update()
