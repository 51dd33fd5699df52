"""Starting a bundle worker for a hard lock's builds, and seeing that no build waits for ever: the
app (after a hard lock commits, and wherever a lock's state is read), `trial lock status` and
`trial checks run` share this. No Flask here."""
from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy.orm import Session

from trial.detached import spawn_detached
from trial.lock import service as locks

log = logging.getLogger("trial.lock")


def start_worker(url: str, instance: Path) -> None:
    """Start `trial worker --until-idle` as a detached process (it outlives the request or the
    command that starts it), its output appended to ``instance``/worker.log. Raises OSError when
    it cannot be started (the instance folder not writable, no memory to fork)."""
    spawn_detached(["-m", "trial.cli", "worker", "--until-idle"], url, instance)


def start_or_fail(db: Session, lock_id: int, url: str, instance: Path) -> bool:
    """Start a worker for a lock's builds; when that fails, the builds are failed with the reason
    (committed) and the log says why. True when a worker was started."""
    try:
        start_worker(url, instance)
        return True
    except OSError as e:
        why = f"{type(e).__name__}: {e}"
        log.error("the bundle worker for lock %s could not be started (%s): its builds are failed", lock_id, why)
        db.rollback()
        locks.build_not_started(db, lock_id, why)
        db.commit()
        return False


def watch(db: Session, start: bool, url: str, instance: Path) -> list[int]:
    """:func:`trial.lock.service.watch_builds`, committed, and a worker started for each lock
    queued again when ``start`` (else a running `trial worker` is woken on PostgreSQL, or looks
    again within its poll). Returns the locks queued again."""
    again = locks.watch_builds(db)
    db.commit()
    if start:
        for lock_id in again:
            start_or_fail(db, lock_id, url, instance)
    return again
