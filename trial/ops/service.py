"""Readiness and the figures of the metrics, as plain functions over the database engine.

Each readiness check answers ``"ok"`` or, in a short sentence for the operator, why not. They are
read by ``GET /readyz`` (trial.views.ops), which a load balancer polls: none of them changes
anything, and all of them together are bounded by a timeout, so a frozen database makes the answer
"not ready" within seconds instead of a hung request. Nothing here names an arm.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from sqlalchemy import func, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from trial.audit import service as audit
from trial.audit.models import AuditHead
from trial.db import is_sqlite
from trial.errors import DomainError
from trial.lock.models import DataLock, LockBuild
from trial.lock.service import PICKUP, STALE
from trial.migrate import head_revision, revision_of
from trial.notify.models import MailMessage
from trial.notify.service import SAE
from trial.participants.models import Allocation
from trial.randomize import journalfile
from trial.randomize.models import SealedSeed
from trial.randomize.service import unseal
from trial.settings import ConfigError

OK = "ok"
CHECKS = ("database", "migrations", "keys", "worker", "mail")
TIMEOUT = 3.0  # seconds for all the checks together
MAIL_LATE = dt.timedelta(hours=1)  # an unsent e-mail older than this means the outbox is stuck

# at most two readiness probes run at once; a third waits (and times out) rather than piling up
# threads on a database that does not answer
_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="trial-readyz")


def readiness(engine: Engine, inline_builds: bool, mail_configured: bool, timeout: float = TIMEOUT) -> dict:
    """``{"status": "ok"|"unavailable", "checks": {name: "ok" or why not}}`` (see API.md)."""
    future = _pool.submit(_run_checks, engine, inline_builds, mail_configured)
    try:
        checks = future.result(timeout=timeout)
    except FutureTimeout:
        why = f"no answer from the database within {timeout:g} s"
        checks = {"database": why, **{name: "not checked: the database did not answer" for name in CHECKS[1:]}}
    if journalfile.journal_path() is not None:  # only when TRIAL_ALLOCATION_JOURNAL is set
        # the file (no database asked), then what the database says: lines pending for over a
        # minute, a database behind the journal (asked with the other checks, within the timeout)
        from_db = checks.pop("journal", "not checked: the database did not answer")
        checks["journal"] = _guarded(lambda: journalfile.problem() or OK)
        if checks["journal"] == OK:
            checks["journal"] = from_db
    ready = all(v == OK for v in checks.values())
    return {"status": "ok" if ready else "unavailable", "checks": checks}


def _run_checks(engine: Engine, inline_builds: bool, mail_configured: bool) -> dict[str, str]:
    try:
        conn = engine.connect()
    except Exception as e:  # noqa: BLE001  (any failure to connect is the answer)
        why = f"unreachable ({type(e).__name__})"
        return {"database": why, **{name: "not checked: the database is unreachable" for name in CHECKS[1:]}}
    info = conn.connection.info  # (SQLite: a deferred transaction, never the write lock; see trial.db)
    info["trial_read_only"] = is_sqlite(engine)
    try:
        return _checks_on(conn, inline_builds, mail_configured)
    finally:
        info.pop("trial_read_only", None)
        conn.close()


def startup_problems(engine: Engine) -> list[str]:
    """What must stop a server from starting to serve: the schema not at head, TRIAL_AUDIT_KEY not
    the key of the audit chain, TRIAL_SEAL_KEY unable to open the randomization seed (each would
    make users meet errors: a bare 500 on a missing column, a refusal of every write or every
    randomization). A database that cannot be reached is not one: it may come up later, and
    /readyz says so meanwhile. Read-only, like the readiness checks it shares."""
    try:
        conn = engine.connect()
    except SQLAlchemyError:
        return []
    info = conn.connection.info
    info["trial_read_only"] = is_sqlite(engine)
    try:
        migrations = _migrations(conn)
        if migrations != OK:
            return [migrations]
        keys = _keys(conn)
        return [] if keys == OK else [keys]
    except SQLAlchemyError:  # (the database went away meanwhile: as unreachable)
        return []
    finally:
        info.pop("trial_read_only", None)
        conn.close()


def _checks_on(conn: Connection, inline_builds: bool, mail_configured: bool) -> dict[str, str]:
    checks = {"database": _guarded(lambda: _database(conn)), "migrations": _guarded(lambda: _migrations(conn))}
    later = "not checked: the schema is not at head"
    at_head = checks["migrations"] == OK
    checks["keys"] = _guarded(lambda: _keys(conn)) if at_head else later
    checks["worker"] = OK if inline_builds else _guarded(lambda: _worker(conn)) if at_head else later
    checks["mail"] = OK if not mail_configured else _guarded(lambda: _mail(conn)) if at_head else later
    if journalfile.journal_path() is not None:
        checks["journal"] = _guarded(lambda: journalfile.database_problem(conn) or OK) if at_head else later
    conn.rollback()
    return checks


def _guarded(check: Callable[[], str]) -> str:
    """A check's answer; a failure of the check itself is its reason (the class of error only:
    a database message may quote data)."""
    try:
        return check()
    except ConfigError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001
        return f"check failed ({type(e).__name__})"


def _database(conn: Connection) -> str:
    conn.execute(text("SELECT 1"))
    return OK


def _migrations(conn: Connection) -> str:
    current, head = revision_of(conn), head_revision()
    if current == head:
        return OK
    return f"schema at revision {current or 'none'}, the code needs {head}: run `trial db upgrade`"


def _keys(conn: Connection) -> str:
    check = conn.execute(select(AuditHead.key_check).where(AuditHead.id == 1)).scalar()
    if check is not None and check != audit.key_check():
        return "TRIAL_AUDIT_KEY is not the key the audit chain was written with"
    sealed = conn.execute(select(SealedSeed.ciphertext).order_by(SealedSeed.design_id.desc()).limit(1)).scalar()
    if sealed is not None:
        try:
            unseal(sealed)
        except DomainError:
            return "TRIAL_SEAL_KEY does not open the randomization seed"
    return OK


def _worker(conn: Connection) -> str:
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    dead = (LockBuild.heartbeat.is_not(None)) & (LockBuild.heartbeat < now - STALE)
    unclaimed = LockBuild.heartbeat.is_(None) & (DataLock.created_at < now - PICKUP)
    stuck = conn.execute(select(func.count()).select_from(LockBuild).join(DataLock, DataLock.id == LockBuild.lock_id)
                         .where(LockBuild.status == "building", dead | unclaimed)).scalar_one()
    if stuck:
        return (f"{stuck} bundle build(s) of a hard lock not progressing (no worker has reported for "
                f"{int(STALE.total_seconds())} s or none picked it up): run `trial worker --until-idle`")
    return OK


def _mail(conn: Connection) -> str:
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    unsent = MailMessage.sent_at.is_(None)
    dead = MailMessage.dead_at.is_not(None)
    letters = conn.execute(select(func.count()).where(unsent, dead)).scalar_one()
    if letters:
        sae = conn.execute(select(func.count()).where(unsent, dead, MailMessage.kind == SAE)).scalar_one()
        return (f"{letters} e-mail(s) given up after every attempt (dead letters"
                + (f", {sae} about serious adverse events" if sae else "")
                + "): see `trial mail status`, and `trial mail status --retry-dead` once the relay works")
    late = conn.execute(select(func.count()).where(unsent, MailMessage.created_at < now - MAIL_LATE)).scalar_one()
    if late:
        return f"{late} e-mail(s) unsent for over an hour: is the mail relay reachable?"
    return OK


def figures(engine: Engine) -> dict:
    """What the metrics read from the database at each scrape, pooled over the arms: allocations
    made, lock builds by state, e-mails waiting in the outbox."""
    with engine.connect() as conn:
        conn.connection.info["trial_read_only"] = is_sqlite(engine)
        allocations = conn.execute(select(func.count()).select_from(Allocation)).scalar_one()
        builds = dict(conn.execute(select(LockBuild.status, func.count()).group_by(LockBuild.status)).all())
        pending = conn.execute(select(func.count()).where(MailMessage.sent_at.is_(None),
                                                          MailMessage.dead_at.is_(None))).scalar_one()
        conn.rollback()
        conn.connection.info.pop("trial_read_only", None)
    return {"randomizations": allocations, "lock_builds": builds, "mail_pending": pending}
