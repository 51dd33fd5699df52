"""The allocation journal's file (``TRIAL_ALLOCATION_JOURNAL``): what randomization writes there and
when. Every allocation that commits is appended as one JSON line (O_APPEND, flock'd, whole or not at
all, fsync'd, file mode 0600); the line names the child, the slot and a digest of the arm keyed with
the sealed seed, never the arm itself. `trial randomization reconcile` (trial.randomize.journal)
replays from it what a restored database lacks.

A transactional outbox: randomization (trial.randomize.service) asks :func:`check_writable` before
it takes a slot, and :func:`queue` writes the line into ``allocation_journal_pending`` in the
allocation's own transaction. The hook registered here, first of trial.db's ``after_commit_hooks``
(the mail hook after it may wait on a relay), appends it and deletes the row (a short transaction
of its own). A line that is not appended then — the COMMIT's outcome unknown (no hook runs), the
process killed after the COMMIT, a full disk — stays in the database, and is appended by whichever
process looks next: :func:`check_writable` (at most every ``FLUSH_EVERY`` seconds per process, rows
older than ``FLUSH_AGE`` so as not to race their owner), a retry with the allocation's
Idempotency-Key (:func:`append_pending`), the app's start and `trial checks run`
(:func:`flush_pending`). Appending a line twice is harmless: reconcile reads identical lines once.

The journal also shows a database that is behind it (a point-in-time recovery, a storage snapshot,
a promoted replica, a ``pg_restore`` by hand): its last line names an allocation the database has
neither made nor reserved. :func:`check_writable` (at most every ``BEHIND_EVERY`` seconds per
process) then holds randomization, audited, as `trial backup restore` does; ``/readyz`` says so.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import shutil
import stat
import threading
import time
from pathlib import Path

from sqlalchemy import delete, event, func, select
from sqlalchemy.orm import Session

from trial import db as database
from trial import settings
from trial.audit import service as audit
from trial.audit.anchors import append_line
from trial.catalogue import N_
from trial.db import is_sqlite, utcnow
from trial.errors import Conflict, Unavailable
from trial.participants.models import Allocation
from trial.randomize.models import AllocationJournalPending, AllocationReservation, RandomizationDesign, Stratum
from trial.scope import CliActor
from trial.trialstate.service import state

log = logging.getLogger("trial.randomize.journal")
VERSION = 2
PENDING = "trial.journal_lines"  # db.info: (allocation id, line) of this transaction's allocations
PAUSED = N_("The allocation journal cannot be written, so randomization is paused and nothing was allocated. "
            "Please tell the trial manager.")
BEHIND = N_("Randomization is closed: the database is behind the allocation journal (it was restored from an "
            "older copy), until the allocation journal is reconciled: the trial manager runs `trial randomization "
            "reconcile`.")
RETRY_AFTER = 60
FLUSH_AGE = 5.0  # seconds: a pending row younger than this is left to the process that wrote it
FLUSH_EVERY = 10.0  # seconds between two looks at the pending rows by check_writable, per process
BEHIND_EVERY = 60.0  # seconds between two comparisons of the journal's last line with the database
LATE = dt.timedelta(minutes=1)  # /readyz: a pending row older than this is a line not appended
MIN_FREE = 1 << 20  # bytes free in the journal's folder below which randomization is refused
TAIL = 65536  # bytes read from the journal's end to find its last line

_lock = threading.Lock()
_last_flush = float("-inf")
_last_behind = float("-inf")


def journal_path() -> Path | None:
    """The journal file (``TRIAL_ALLOCATION_JOURNAL``), or None when it is not set."""
    return settings.current().allocation_journal


def at_text(moment) -> str:
    """A UTC time as the journal writes it: ISO, to the second, with Z."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def key_hash(idempotency_key: str | None) -> str | None:
    """The SHA-256 (hex) of an Idempotency-Key, as the journal keeps it (None: none given)."""
    return hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest() if idempotency_key else None


def arm_digest(master: bytes, line: dict, arm: str) -> str:
    """HMAC-SHA256 (hex), keyed with the master seed, over every field of ``line`` but the digest
    itself, and the arm (canonical JSON): whoever holds the seal key finds the arm by trying each,
    and a line changed in any field matches no arm; without the key the line tells no arm."""
    fields = {k: v for k, v in line.items() if k != "arm_digest"}
    text = "journal2|" + json.dumps({**fields, "arm": arm}, sort_keys=True, separators=(",", ":"))
    return hmac.new(master, text.encode("utf-8"), hashlib.sha256).hexdigest()


def line(master: bytes, commitment: str, *, study_id: str, site: str, stratum: str, seq: int, arm: str, at,
         audit_seq: int, screening_log_number: str | None, idempotency_key: str | None = None,
         randomized_by: int | None = None) -> dict:
    """One allocation's journal line (``at``: the allocation's randomized_at, UTC, naive)."""
    entry = {"v": VERSION, "study_id": study_id, "site": site, "stratum": stratum, "seq": seq, "at": at_text(at),
             "audit_seq": audit_seq, "design": commitment, "screening_log_number": screening_log_number,
             "idempotency_key_sha256": key_hash(idempotency_key), "randomized_by": randomized_by}
    entry["arm_digest"] = arm_digest(master, entry, arm)
    return entry


def queue(db: Session, allocation_id: int, entry: dict) -> None:
    """Write ``entry`` into the outbox in the allocation's transaction (one INSERT), to be appended to
    the journal once it commits (when the journal is set)."""
    if journal_path() is None:
        return
    db.execute(AllocationJournalPending.__table__.insert().values(allocation_id=allocation_id, line=entry,
                                                                  created_at=utcnow()))
    db.info.setdefault(PENDING, []).append((allocation_id, entry))


def _why(e: OSError) -> str:
    return e.strerror or str(e)


def _file_problem(path: Path) -> str | None:
    """Why the journal cannot be appended to (None: it can); creates nothing."""
    if not path.parent.is_dir():
        return f"the allocation journal's folder {path.parent} does not exist"
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if not os.access(path.parent, os.W_OK | os.X_OK):
            return f"the allocation journal's folder {path.parent} is not writable"
        mode = None
    except OSError as e:
        return f"the allocation journal {path} cannot be read ({_why(e)})"
    if mode is not None:
        if not stat.S_ISREG(mode):
            return f"the allocation journal {path} is not a regular file (a device or a folder keeps nothing)"
        if not os.access(path, os.W_OK):
            return f"the allocation journal {path} is not writable"
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError as e:
        return f"the allocation journal's folder {path.parent} cannot be examined ({_why(e)})"
    if free < MIN_FREE:
        return f"the allocation journal's folder {path.parent} has {free} bytes free (under {MIN_FREE})"
    return None


def _open_for_append(path: Path) -> None:
    """Open (creating it, mode 0600) and close the journal: OSError when that cannot be done. Its
    folder is never made here: one missing means the journal's volume is not there."""
    why = _file_problem(path)
    if why:
        raise OSError(why)
    os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))


def check_writable(db: Session) -> None:
    """Before a slot is taken (nothing written in this transaction yet): refuse (503, nothing
    allocated) while the journal cannot be opened for appending (a missing folder, not a regular
    file, not writable, under ``MIN_FREE`` bytes free); every ``FLUSH_EVERY`` seconds append the
    other processes' lines left pending (refused when they cannot be); every ``BEHIND_EVERY``
    seconds compare the journal's last line with the database: a database behind it is held
    (audited, committed) and refused (409)."""
    path = journal_path()
    if path is None:
        return
    global _last_flush, _last_behind
    now = time.monotonic()
    try:
        _open_for_append(path)
        if now - _last_flush >= FLUSH_EVERY:
            flush_pending(db, FLUSH_AGE, commit=False)
            _last_flush = now
    except OSError as e:
        log.error("randomization refused: the allocation journal %s cannot be written (%s)", path, _why(e))
        raise Unavailable(PAUSED, retry_after=RETRY_AFTER, kind="journal") from e
    if now - _last_behind >= BEHIND_EVERY:
        missing = behind(db, path)
        _last_behind = now
        if missing is not None:
            _last_behind = float("-inf")  # look again next time: until reconciled, refused
            hold_randomization(db, database_actor(), f"the database is behind the allocation journal: {missing}")
            db.commit()
            log.error("randomization held: the database is behind the allocation journal %s (%s)", path, missing)
            raise Conflict(BEHIND)


def database_actor():
    """Who holds randomization when the database is found behind the journal: the system itself."""
    return CliActor(email="system:allocation-journal")


def hold_randomization(db: Session, actor, why: str) -> None:
    """Close randomization until the journal is reconciled (after a restore, or a database found
    behind the journal): the trial state's hold (why, and since when), audited (action ``restore``)
    in the caller's transaction."""
    st = state(db, update=True)
    old, old_at = st.randomization_hold, st.randomization_hold_at
    st.randomization_hold, st.randomization_hold_at = (why or "restored from a backup")[:300], utcnow()
    db.flush()
    audit.record(db, actor, "restore", "trial_state", st.id,
                 {"randomization_hold": (old, st.randomization_hold),
                  "randomization_hold_at": (old_at, st.randomization_hold_at)}, reason=st.randomization_hold)


# --- the pending lines -------------------------------------------------------------------------

def flush_pending(db: Session, older_than: float = FLUSH_AGE, commit: bool = True) -> int:
    """Append the pending lines older than ``older_than`` seconds (oldest allocation first; rows
    another process is flushing are skipped on PostgreSQL) and delete their rows; how many. OSError
    when the journal cannot be written (the rows stay). ``commit``: in a transaction of its own (the
    app's start, `trial checks run`); else in the caller's."""
    path = journal_path()
    if path is None:
        return 0
    t = AllocationJournalPending.__table__
    cutoff = utcnow() - dt.timedelta(seconds=older_than)
    q = select(t.c.allocation_id, t.c.line).where(t.c.created_at <= cutoff).order_by(t.c.allocation_id).limit(1000)
    if not is_sqlite(db.get_bind()):
        q = q.with_for_update(skip_locked=True)
    rows = db.execute(q).all()
    for _, entry in rows:
        append_line(path, entry, make_folder=False)
    if rows:
        db.execute(delete(t).where(t.c.allocation_id.in_([r.allocation_id for r in rows])))
        log.warning("%d allocation journal line(s) left pending were appended to %s", len(rows), path)
    if commit:
        db.commit()
    return len(rows)


def at_start(engine) -> None:
    """A server starting (trial.app.serving_app): the pending lines appended, and a database behind
    the journal held (audited). Nothing when the journal is not set; a failure is logged, never
    raised (the database may come up later; check_writable looks again)."""
    path = journal_path()
    if path is None:
        return
    db = database.make_session_factory(engine)()
    try:
        flush_pending(db)
        missing = behind(db, path)
        if missing is not None and state(db).randomization_hold is None:
            hold_randomization(db, database_actor(), f"the database is behind the allocation journal: {missing}")
            db.commit()
            log.error("randomization held: the database is behind the allocation journal %s (%s)", path, missing)
        db.rollback()
    except Exception as e:  # noqa: BLE001
        db.rollback()
        log.error("at start, the allocation journal's pending lines could not be appended (%s: %s)",
                  type(e).__name__, e)
    finally:
        db.close()


def append_pending(db: Session, allocation_id: int) -> None:
    """A retry of an allocation: its line appended now if it is still pending (its COMMIT's outcome
    was unknown, or the append failed), the row deleted in the caller's transaction. A journal that
    cannot be written leaves the row for later (logged): the retry still gets its answer."""
    path = journal_path()
    if path is None:
        return
    t = AllocationJournalPending.__table__
    entry = db.execute(select(t.c.line).where(t.c.allocation_id == allocation_id)).scalar()
    if entry is None:
        return
    try:
        append_line(path, entry, make_folder=False)
    except OSError as e:
        log.error("the journal line of %s is still pending: %s cannot be written (%s)", entry.get("study_id"), path,
                  _why(e))
        return
    db.execute(delete(t).where(t.c.allocation_id == allocation_id))


def _after_commit(db: Session) -> None:
    """Append the committed allocations' lines and delete their pending rows (a transaction of its
    own). A line that cannot be appended (a full disk) leaves the allocation standing and its row
    pending: logged (the line names no arm); the next look appends it."""
    pending = db.info.pop(PENDING, None)
    path = journal_path()
    if not pending or path is None:
        return
    done = []
    with _lock:
        for allocation_id, entry in pending:
            try:
                append_line(path, entry, make_folder=False)
                done.append(allocation_id)
            except OSError as e:
                log.error("the allocation of %s is committed but its journal line could not be appended to %s (%s); "
                          "it stays pending in the database and is appended as soon as the journal can be written. "
                          "The line: %s", entry["study_id"], path, _why(e), json.dumps(entry, sort_keys=True))
    if not done:
        return
    t = AllocationJournalPending.__table__
    try:
        db.execute(delete(t).where(t.c.allocation_id.in_(done)))
        Session.commit(db)  # (not TrialSession.commit: the hooks have run)
    except Exception:  # noqa: BLE001  the line is appended; a row left behind is appended again, harmlessly
        db.rollback()
        log.warning("the pending rows of %d appended journal line(s) could not be deleted; they will be appended "
                    "again (harmless)", len(done))


# --- the database against the journal -----------------------------------------------------------

def last_line(path: Path) -> dict | None:
    """The journal's last whole line (read from the end; a cut last line is skipped), or None."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - TAIL))
            tail = f.read()
    except OSError:
        return None
    for raw in reversed(tail.split(b"\n")):
        try:
            data = json.loads(raw)
        except ValueError:
            continue
        if isinstance(data, dict) and {"study_id", "stratum", "seq", "design"} <= data.keys():
            return data
    return None


def behind(db, path: Path | None = None) -> str | None:
    """The study id (and slot) of the journal's last allocation when the database has neither that
    allocation in that slot nor a reservation of it (None: not behind, no journal, no line, or a
    line of another randomization). ``db``: a session or a connection."""
    path = path or journal_path()
    entry = last_line(path) if path is not None else None
    if entry is None:
        return None
    commitment = db.execute(select(RandomizationDesign.commitment).limit(1)).scalar()
    if commitment != entry["design"]:
        return None
    s, a, r = Stratum.__table__, Allocation.__table__, AllocationReservation.__table__
    slot = select(s.c.id).where(s.c.key == entry["stratum"]).scalar_subquery()
    found = db.execute(select(
        select(func.count()).select_from(a).where(a.c.study_id == entry["study_id"], a.c.stratum_id == slot,
                                                  a.c.seq == entry["seq"]).scalar_subquery(),
        select(func.count()).select_from(r).where(r.c.study_id == entry["study_id"], r.c.stratum_id == slot,
                                                  r.c.seq == entry["seq"]).scalar_subquery())).one()
    if any(found):
        return None
    return f"its last allocation, {entry['study_id']} (stratum {entry['stratum']} slot {entry['seq']}), is missing"


def problem() -> str | None:
    """Why the journal file cannot be written (None: it can, or it is not set), for ``/readyz``."""
    path = journal_path()
    return None if path is None else _file_problem(path)


def database_problem(conn) -> str | None:
    """What the database says about the journal, for ``/readyz``: pending lines older than a minute
    (committed allocations not in the journal), or a database behind the journal (None: neither)."""
    t = AllocationJournalPending.__table__
    late = conn.execute(select(func.count()).select_from(t).where(t.c.created_at < utcnow() - LATE)).scalar()
    if late:
        return (f"{late} committed allocation(s) are not in the allocation journal yet (pending in the database "
                "for over a minute): the journal cannot be written")
    missing = behind(conn)
    if missing:
        return (f"the database is behind the allocation journal ({missing}): restored from an older copy? "
                "randomization is held until `trial randomization reconcile`")
    return None



@event.listens_for(Session, "after_soft_rollback")
def _forget_lines(session: Session, previous_transaction) -> None:
    """A transaction that rolls back allocated nothing: its lines (and their rows) are gone."""
    if previous_transaction.parent is None:
        session.info.pop(PENDING, None)


database.after_commit_hooks.insert(0, _after_commit)
