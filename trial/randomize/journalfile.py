"""The allocation journal's file (``TRIAL_ALLOCATION_JOURNAL``): what randomization writes there and
when. Every allocation that commits is appended as one JSON line (O_APPEND, fsync'd, file mode 0600)
right after its COMMIT and before its caller gets the answer; the line names the child, the slot and
a digest of the arm keyed with the sealed seed, never the arm itself. `trial randomization
reconcile` (trial.randomize.journal) replays from it what a restored database lacks.

Randomization (trial.randomize.service) asks :func:`check_writable` before it takes a slot and puts
its line in the session with :func:`queue`; the hook registered here, first of trial.db's
``after_commit_hooks`` (the mail hook after it may wait on a relay), appends it. A line that cannot
be appended after the commit (a full disk) leaves the allocation standing: it is logged (the line
has no arm), kept in this process, and every randomization here is refused until it can be written;
``/readyz`` says so (:func:`problem`).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.orm import Session

from trial import db as database
from trial import settings
from trial.audit.anchors import append_line
from trial.catalogue import N_
from trial.errors import Unavailable

log = logging.getLogger("trial.randomize.journal")
VERSION = 1
PENDING = "trial.journal_lines"  # db.info: the lines of this transaction's allocations
PAUSED = N_("The allocation journal cannot be written, so randomization is paused and nothing was allocated. "
            "Please tell the trial manager.")
RETRY_AFTER = 60

_lock = threading.Lock()
_unwritten: list[dict] = []  # lines of committed allocations this process could not append
_last_error: str | None = None


def journal_path() -> Path | None:
    """The journal file (``TRIAL_ALLOCATION_JOURNAL``), or None when it is not set."""
    return settings.current().allocation_journal


def at_text(moment) -> str:
    """A UTC time as the journal writes it: ISO, to the second, with Z."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def arm_digest(master: bytes, commitment: str, study_id: str, stratum: str, seq: int, arm: str) -> str:
    """HMAC-SHA256 (hex), keyed with the master seed, over ``journal|commitment|study id|stratum|slot|arm``:
    whoever holds the seal key finds the arm by trying each; without it the line tells no arm."""
    text = f"journal|{commitment}|{study_id}|{stratum}|{seq}|{arm}"
    return hmac.new(master, text.encode("utf-8"), hashlib.sha256).hexdigest()


def line(master: bytes, commitment: str, *, study_id: str, site: str, stratum: str, seq: int, arm: str, at,
         audit_seq: int, screening_log_number: str | None) -> dict:
    """One allocation's journal line (``at``: the allocation's UTC time, naive)."""
    return {"v": VERSION, "study_id": study_id, "site": site, "stratum": stratum, "seq": seq,
            "arm_digest": arm_digest(master, commitment, study_id, stratum, seq, arm), "at": at_text(at),
            "audit_seq": audit_seq, "design": commitment, "screening_log_number": screening_log_number}


def queue(db: Session, entry: dict) -> None:
    """Append ``entry`` to the journal once this session's transaction commits (when the journal is set)."""
    if journal_path() is not None:
        db.info.setdefault(PENDING, []).append(entry)


def _open_for_append(path: Path) -> None:
    """Open (creating it, mode 0600) and close the journal: OSError when that cannot be done. Its
    folder is never made here: one missing means the journal's volume is not there."""
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder {path.parent} does not exist")
    os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))


def _write_unwritten(path: Path) -> None:
    """Append the lines this process could not write before, oldest first (under ``_lock``)."""
    global _last_error
    while _unwritten:
        append_line(path, _unwritten[0], make_folder=False)
        _unwritten.pop(0)
    if _last_error is not None:
        log.warning("the allocation journal %s can be written again: the lines kept in this process are appended", path)
    _last_error = None


def check_writable() -> None:
    """Before a slot is taken: refuse (503, nothing allocated) while the journal cannot be opened for
    appending, or while lines this process could not write before still cannot be."""
    path = journal_path()
    if path is None:
        return
    global _last_error
    with _lock:
        try:
            _write_unwritten(path)
            _open_for_append(path)
        except OSError as e:
            _last_error = _why(e)
            log.error("randomization refused: the allocation journal %s cannot be written (%s)", path, _last_error)
            raise Unavailable(PAUSED, retry_after=RETRY_AFTER, kind="journal") from e


def problem() -> str | None:
    """Why the journal cannot be written (None: it can, or it is not set), for ``/readyz``; creates nothing."""
    path = journal_path()
    if path is None:
        return None
    with _lock:
        if _unwritten:
            return (f"{len(_unwritten)} committed allocation(s) could not be appended to {path} ({_last_error}); "
                    "randomization is refused until the journal can be written")
    if not path.parent.is_dir():
        return f"the allocation journal's folder {path.parent} does not exist"
    if path.exists():
        if not path.is_file() and not path.is_char_device():
            return f"the allocation journal {path} is not a file"
        if not os.access(path, os.W_OK):
            return f"the allocation journal {path} is not writable"
    elif not os.access(path.parent, os.W_OK | os.X_OK):
        return f"the allocation journal's folder {path.parent} is not writable"
    return None


def _why(e: OSError) -> str:
    return e.strerror or str(e)


def _after_commit(db: Session) -> None:
    """Append the committed allocations' lines. A failure leaves the allocation standing: logged with
    the line (which names no arm) and kept in this process, which refuses randomization until the
    journal can be written again (then the kept lines are appended first)."""
    global _last_error
    lines = db.info.pop(PENDING, None)
    path = journal_path()
    if not lines or path is None:
        return
    with _lock:
        for entry in lines:
            try:
                if _unwritten:
                    raise OSError(_last_error or "earlier lines are not written yet")
                append_line(path, entry, make_folder=False)
            except OSError as e:
                _last_error = _why(e)
                _unwritten.append(entry)
                log.error("the allocation of %s is committed but its journal line could not be appended to %s (%s); "
                          "randomization is refused until the journal can be written. The line: %s",
                          entry["study_id"], path, _last_error, json.dumps(entry, sort_keys=True))


@event.listens_for(Session, "after_soft_rollback")
def _forget_lines(session: Session, previous_transaction) -> None:
    """A transaction that rolls back allocated nothing: its lines are dropped."""
    if previous_transaction.parent is None:
        session.info.pop(PENDING, None)


database.after_commit_hooks.insert(0, _after_commit)
