"""One engine and one session factory, shared by the web UI, the API and the CLI.

SQLite (the embedded default) runs every transaction as ``BEGIN IMMEDIATE`` through the
documented pysqlite event hooks, in WAL mode with foreign keys on and a busy timeout, so writers
queue instead of failing with "database is locked". PostgreSQL is selected by the URL.
"""
from __future__ import annotations

from contextlib import contextmanager

import datetime as dt
import json
import sqlite3
import time
from pathlib import Path

import orjson
import psycopg
from sqlalchemy import MetaData, create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from trial import settings
from trial.catalogue import N_, Msg
from trial.errors import OutcomeUnknown, Unavailable

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


PROJECT_ROOT = settings.PROJECT_ROOT


def default_url() -> str:
    """TRIAL_DATABASE_URL, or an SQLite file in the instance folder."""
    s = settings.current()
    if s.database_url:
        return s.database_url
    inst = s.instance_path
    inst.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{inst / 'trial.db'}"


def is_sqlite(bind) -> bool:
    return bind.dialect.name == "sqlite"


def read_json(text: str | bytes):
    """JSON columns as stored: parsed by orjson (several times faster than the standard library on
    the hundreds of thousands of values a lock's bundle reads), which refuses what strict JSON
    does not allow; the standard library, which reads NaN and Infinity, takes any such text."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def make_engine(url: str | None = None, *, statement_timeout: float | None = None, lock_timeout: float | None = None,
                **kw) -> Engine:
    """The engine of ``url`` (default: TRIAL_DATABASE_URL). On PostgreSQL every connection is
    made within TRIAL_DB_CONNECT_TIMEOUT seconds and sends TCP keepalives; ``statement_timeout``
    and ``lock_timeout`` (seconds; None or 0: none) are set on each connection's session, and
    with a statement timeout a server that does not answer at all (a frozen backend, which cannot
    enforce its own timeouts) is given up ANSWER_MARGIN seconds later, the connection closed
    (:class:`NoAnswer`). The web app asks for both (trial.app, TRIAL_DB_STATEMENT_TIMEOUT,
    TRIAL_DB_LOCK_TIMEOUT); the command line and the bundle worker, batch jobs, for neither."""
    url = url or default_url()
    kw.setdefault("json_deserializer", read_json)
    # a statement's values (an arm, a study id, a clinical value) never join the text of its error,
    # which the log and the tracebacks carry: "[SQL parameters hidden ...]" instead
    kw.setdefault("hide_parameters", True)
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:" and not path.startswith("file:"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kw)
        _sqlite_hooks(engine)
    else:
        kw.setdefault("pool_size", 10)
        kw.setdefault("max_overflow", 20)
        kw.setdefault("pool_recycle", 1800)
        # after a database restart every pooled connection is dead: test each before use, so
        # the first request of every worker does not fail
        kw.setdefault("pool_pre_ping", True)
        engine = create_engine(url, **kw)
        _pg_timeouts(engine, settings.current().db_connect_timeout, statement_timeout or None, lock_timeout or None)
    return engine


# --- PostgreSQL: connect, statement and lock timeouts; a server that does not answer -------------

ANSWER_MARGIN = 2.0  # seconds after the statement timeout before a server that sends nothing is given up
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


class NoAnswer(psycopg.OperationalError):
    """The server sent nothing within the connection's deadline (a frozen backend or host): the
    connection was closed, its state being unknown."""


class _DeadlineConnection(psycopg.Connection):
    """A psycopg connection that waits for the server at most ``answer_within`` seconds at each
    exchange (a statement and the fetching of its rows, a commit, a rollback, a ping). The server
    enforces its own statement and lock timeouts; this is for when it cannot (its process is
    stopped, its host frozen): the kernel still acknowledges what is sent, so neither TCP nor a
    cancel request would end the wait."""

    answer_within: float | None = None

    def wait(self, gen, interval=None, timeout=None):
        if timeout is None and self.answer_within:
            timeout = self.answer_within
        try:
            if interval is None:
                return super().wait(gen, timeout=timeout)
            return super().wait(gen, interval=interval, timeout=timeout)
        except psycopg.OperationalError as e:
            if type(e).__name__ != "_WaitTimeout":  # (psycopg's internal timeout error)
                raise
            self.pgconn.finish()  # mid-exchange: the connection cannot be used again
            raise NoAnswer(f"the database server did not answer within {timeout:g} s") from None


def _pg_timeouts(engine: Engine, connect_timeout: int, statement_timeout: float | None,
                 lock_timeout: float | None) -> None:
    """Every connection of ``engine``: made within ``connect_timeout`` s with TCP keepalives
    (the URL's own values win), with the session's timeouts and, with a statement timeout, a
    deadline for every answer: the statement timeout and ANSWER_MARGIN while checked out, the
    connect timeout for the check of a pooled connection before use (a frozen backend there
    costs a new connection, not the request)."""
    answer = statement_timeout + ANSWER_MARGIN if statement_timeout else None
    options = " ".join(f"-c {name}={int(seconds * 1000)}" for name, seconds in
                       (("statement_timeout", statement_timeout), ("lock_timeout", lock_timeout)) if seconds)

    @event.listens_for(engine, "do_connect")
    def _connect(dialect, conn_rec, cargs, cparams):
        cparams.setdefault("connect_timeout", connect_timeout)
        for k, v in KEEPALIVE.items():
            cparams.setdefault(k, v)
        if options:
            cparams["options"] = f"{cparams.get('options') or ''} {options}".strip()
        if answer is None:
            return None  # psycopg's own connection
        conn = _DeadlineConnection.connect(*cargs, **cparams)
        conn.answer_within = answer
        return conn

    if answer is None:
        return

    @event.listens_for(engine, "checkin")
    def _checked_in(dbapi_conn, _rec):
        if isinstance(dbapi_conn, _DeadlineConnection):
            dbapi_conn.answer_within = connect_timeout  # the next use begins with the pool's ping

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn, _rec, _proxy):
        if isinstance(dbapi_conn, _DeadlineConnection):
            dbapi_conn.answer_within = answer


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
        dbapi = conn.connection.dbapi_connection
        if getattr(dbapi, "trial_read_only", False) or conn.connection.info.get("trial_read_only"):
            conn.exec_driver_sql("BEGIN")
            return
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except sa_exc.OperationalError as e:
            # read-only storage (or mode=ro): reads still work in a deferred transaction; any
            # write then fails with "attempt to write a readonly database" (503 read-only)
            if "readonly" not in str(e.orig).lower().replace("-", "").replace(" ", ""):
                raise
            dbapi.trial_read_only = True
            conn.exec_driver_sql("BEGIN")


@contextmanager
def read_only_session(session_factory):
    """A session for a long read (a lock's bundle): on SQLite its transaction is a deferred one,
    which in WAL mode keeps a snapshot without taking the write lock (every other transaction
    begins IMMEDIATE), so writers and other readers go on meanwhile; on PostgreSQL an ordinary
    session. It must not write."""
    bind = session_factory.kw["bind"]
    conn = bind.connect()
    info = conn.connection.info  # kept with the pooled connection: set for this session only
    info["trial_read_only"] = is_sqlite(bind)
    s = session_factory(bind=conn)
    try:
        yield s
    finally:
        s.close()
        info.pop("trial_read_only", None)
        conn.close()


@event.listens_for(Session, "after_commit")
@event.listens_for(Session, "after_rollback")
def _forget_transaction_caches(session: Session, *args) -> None:
    """Per-transaction caches (the current protocol) end with the transaction."""
    session.info.pop("protocol", None)
    session.info.pop("unblinded", None)


# Called with the session after each successful commit (filled at import by the packages that
# need it: trial.notify sends the e-mails a transaction queued).
after_commit_hooks: list = []


class TrialSession(Session):
    """A session whose commit tells the truth: errors while flushing mean nothing was written
    (the transaction is rolled back); an error from the COMMIT itself (a lost connection, say)
    leaves it unknown whether the change took effect, and raises :class:`OutcomeUnknown`."""

    def commit(self) -> None:
        self.flush()
        try:
            super().commit()
            self.info["committed"] = True
        except sa_exc.DBAPIError as e:
            if _definitely_rolled_back(e):
                raise
            raise OutcomeUnknown(N_(
                "The database connection failed while the change was being committed: it is not known whether it "
                "was saved. Check the record before entering it again; an API request can be retried with the "
                "same Idempotency-Key.")) from e
        for hook in after_commit_hooks:
            hook(self)


def _definitely_rolled_back(e: sa_exc.DBAPIError) -> bool:
    """The server answered the COMMIT with an error of its own (a constraint, a serialization
    failure): the transaction was rolled back. A lost connection gives no answer."""
    state = getattr(e.orig, "sqlstate", None)
    return bool(state) and state[:2] in ("23", "40", "25")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, class_=TrialSession, expire_on_commit=False)


# --- database failures as the user should read them -------------------------------------------

_PG_CLASSES = {
    "53100": ("full", N_("The database server's disk is full")),
    "53200": ("full", N_("The database server is out of memory")),
    "53300": ("busy", N_("The database server has too many connections")),
    "25006": ("read_only", N_("The database is read-only (maintenance or a replica)")),
    "57P01": ("unreachable", N_("The database server is shutting down")),
    "57P02": ("unreachable", N_("The database server restarted after a crash")),
    "57P03": ("unreachable", N_("The database server is starting up")),
    "40001": ("busy", N_("The database could not serialize this change with another one")),
    "40P01": ("busy", N_("This change deadlocked with another one")),
    "55P03": ("busy", N_("A record this change needs is locked by another user")),
    "57014": ("busy", N_("The database took too long to answer")),
}
_SQLITE_MESSAGES = (
    ("database or disk is full", "full", N_("The database file's disk is full")),
    ("readonly database", "read_only", N_("The database file is on read-only storage")),
    ("unable to open database", "unreachable", N_("The database file cannot be opened")),
    ("disk i/o error", "unreachable", N_("The database file's storage reported an I/O error")),
    ("database is locked", "busy", N_("The database is busy with another change")),
    ("no such table", "not_migrated", N_("The database has no schema yet (run `trial db upgrade`)")),
)
_RETRY = {"busy": 5, "unreachable": 30, "full": 120, "read_only": 120, "not_migrated": 120}


def _after(what: str) -> Msg:
    """What failed, then that nothing was changed: in the reader's language."""
    return Msg(N_("%(what)s. Nothing was changed; try again later."), what=Msg(what))


def unavailable(e: BaseException) -> Unavailable | None:
    """The :class:`Unavailable` error a database failure means for the user, or ``None`` if it is
    not a failure of the database's availability (a programming error stays a 500)."""
    if isinstance(e, sa_exc.TimeoutError):  # the connection pool is exhausted
        return Unavailable(_after(N_("Every database connection of this server is busy")), 5, "busy")
    if not isinstance(e, sa_exc.DBAPIError):
        return None
    orig = e.orig
    if isinstance(orig, NoAnswer):  # (a frozen server: trial.db._DeadlineConnection gave up waiting)
        return Unavailable(_after(N_("The database server did not answer in time")), 30, "unreachable")
    state = getattr(orig, "sqlstate", None)
    if state:
        kind, text = _PG_CLASSES.get(state) or (("unreachable", N_("The connection to the database failed"))
                                                 if state.startswith("08") else (None, None))
        if kind:
            return Unavailable(_after(text), _RETRY[kind], kind)
        return None
    if isinstance(orig, sqlite3.Error):
        msg = str(orig).lower()
        for needle, kind, text in _SQLITE_MESSAGES:
            if needle in msg:
                return Unavailable(_after(text), _RETRY[kind], kind)
        return None
    if e.connection_invalidated or isinstance(e, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        # psycopg without an SQLSTATE: refused, reset or closed connections
        return Unavailable(_after(N_("The database server cannot be reached")), 30, "unreachable")
    return None


def insert_ignore(db: Session, table, values: dict) -> None:
    """INSERT that does nothing if the row already exists (two first-comers at once)."""
    dialect = db.get_bind().dialect.name
    ins = pg_insert if dialect == "postgresql" else sqlite_insert
    db.execute(ins(table).values(**values).on_conflict_do_nothing())


def insert_new(db: Session, table, rows: list[dict], *returning) -> list:
    """INSERT of many rows (executemany, in pages of multi-row VALUES) that skips a row whose
    unique key is taken, by a concurrent transaction too (PostgreSQL waits for it to end); the
    ``returning`` columns of the rows inserted."""
    dialect = db.get_bind().dialect.name
    ins = pg_insert if dialect == "postgresql" else sqlite_insert
    return db.execute(ins(table).on_conflict_do_nothing().returning(*returning), rows).all()


def lock_for_update(stmt, bind):
    """``SELECT ... FOR UPDATE`` (waiting, never SKIP LOCKED). On SQLite the whole transaction
    already holds the write lock (BEGIN IMMEDIATE), so the clause is not needed."""
    stmt = stmt.execution_options(populate_existing=True)  # never reuse a stale row from the identity map
    return stmt if is_sqlite(bind) else stmt.with_for_update()



def notify(db: Session, channel: str) -> None:
    """Wake the processes waiting on ``channel`` (PostgreSQL's NOTIFY: sent when the transaction
    commits, not before; nothing on SQLite, whose waiters poll)."""
    if db.get_bind().dialect.name == "postgresql":
        db.execute(text(f"NOTIFY {channel}"))


class Listener:
    """Waits for a NOTIFY on a channel (PostgreSQL, on a connection of its own), or for the
    timeout to pass (SQLite, and whenever nothing is sent)."""

    def __init__(self, engine: Engine, channel: str):
        self.channel, self.conn, self.url = channel, None, None
        if engine.dialect.name == "postgresql":
            self.url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._connect()

    def _connect(self) -> None:
        try:
            self.conn = psycopg.connect(self.url, autocommit=True, connect_timeout=settings.current().db_connect_timeout,
                                        **KEEPALIVE)  # (a server gone away is noticed, its connection made again)
            self.conn.execute(f"LISTEN {self.channel}")
        except psycopg.OperationalError:
            self.conn = None  # the server is away: looked at again after the next wait

    def wait(self, timeout: float) -> bool:
        """True when woken by a notification, False when the timeout passed. A lost connection (a
        server restart) is made again; meanwhile the timeout is waited out."""
        if self.url is not None and (self.conn is None or self.conn.closed):
            self._connect()
        if self.conn is None:
            time.sleep(timeout)
            return False
        try:
            return any(True for _ in self.conn.notifies(timeout=timeout, stop_after=1))
        except psycopg.OperationalError:
            self.conn = None
            return False

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
