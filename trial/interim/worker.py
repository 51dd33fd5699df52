"""Building a data cut in the background, as a hard lock's bundles are built (trial.lock.worker):
after the cut's request commits, TRIAL_LOCK_BUILDER ``inline`` builds it in the request (tests, a
single process); otherwise a detached process of its own (``python -m trial.interim.worker ID``)
claims and builds it, its output appended to the instance folder's worker.log. No Flask here.

    python -m trial.interim.worker CUT_ID     build that cut (when it waits, or its builder went silent)
"""
from __future__ import annotations

import importlib
import logging
import os
import resource
import socket
import sys
from pathlib import Path

from sqlalchemy.orm import Session

from trial.db import make_engine, make_session_factory
from trial.detached import spawn_detached
from trial.exports.bundle import preload
from trial.interim import cuts

log = logging.getLogger("trial.interim")


def start_build(db: Session, actor, cut_id: int, mode: str, url: str, instance: Path) -> None:
    """After the cut committed: build it inline (``mode`` "inline": in this session, committed
    here) or start its builder process. A failure is the cut's state, with its reason."""
    if mode == "inline":
        try:
            cuts.build_inline(db, actor, cut_id)
            db.commit()
        except Exception as e:
            log.exception("the inline build of data cut %s failed", cut_id)
            db.rollback()
            cuts.failed(db, cut_id, f"the build failed: {type(e).__name__}: {e}")
            db.commit()
        return
    if mode == "external":  # the `trial worker` kept running claims it (trial.cli.lock)
        return
    try:
        spawn_detached(["-m", "trial.interim.worker", str(cut_id)], url, instance)
    except OSError as e:
        log.error("the builder of data cut %s could not be started: %s", cut_id, e)
        db.rollback()
        cuts.failed(db, cut_id, f"the builder could not be started: {type(e).__name__}: {e}")
        db.commit()


def main(argv: list[str]) -> int:
    importlib.import_module("trial.models")  # every model mapped (the process starts with nothing loaded)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cut_id = int(argv[0])
    preload()
    engine = make_engine()
    factory = make_session_factory(engine)
    me = f"{socket.gethostname()}:{os.getpid()}"[:100]
    try:
        with factory() as db:
            if cuts.claim(db, me, cut_id) is None:
                log.info("data cut %s: nothing to build", cut_id)
                return 0
        state = cuts.run(factory, cut_id, me)
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        log.info("data cut %s: %s (peak RSS %.0f MB, CPU %.1f s; helpers' peak RSS %.0f MB, CPU %.1f s)", cut_id, state,
                 own.ru_maxrss / 1024, own.ru_utime + own.ru_stime, kids.ru_maxrss / 1024, kids.ru_utime + kids.ru_stime)
        return 0 if state == "ready" else 1
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
