"""`trial worker` builds hard locks' bundles after they commit; `trial lock status|rebuild`."""
from __future__ import annotations

import multiprocessing
import os
import resource
import socket
import sys

import click

from trial import settings
from trial.cli.common import Group, fail, session
from trial.db import Listener, make_engine, make_session_factory
from trial.exports.bundle import can_fork, preload, sweep_folders
from trial.interim import cuts, sharing
from trial.lock import service as locks
from trial.lock.worker import watch
from trial.scope import CliActor


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:100]


def _loop(until_idle: bool, poll: float, lock_id: int | None) -> int:
    """Claim and build locks' bundles until none is waiting (or forever, polling). Returns how
    many variants were built."""
    engine = make_engine()
    factory = make_session_factory(engine)
    me, done = _worker_name(), 0
    listener = None if until_idle else Listener(engine, locks.BUILD_CHANNEL)  # listening before the first look
    if listener is not None:
        click.echo(f"{me}: waiting for hard locks", nl=True)
        sys.stdout.flush()
    try:
        while True:
            with factory() as db:
                build_ids = locks.claim_lock(db, me, lock_id)
            if not build_ids and lock_id is None and _other_builds(factory, me):
                done += 1
                continue
            if not build_ids:
                if until_idle:
                    return done
                listener.wait(poll)  # a new hard lock wakes it at once (PostgreSQL), else it looks again
                continue
            states = locks.run_build(factory, build_ids, me)
            why = ""
            if "failed" in states.values():
                with factory() as db:
                    why = f": {locks.build_error(db, build_ids[0])}"
            me_, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
            for variant, state in states.items():
                click.echo(f"{me}: {variant} {state}{why if state == 'failed' else ''} (peak RSS {me_.ru_maxrss / 1024:.0f} "
                           f"MB, CPU {me_.ru_utime + me_.ru_stime:.1f} s; helper peak RSS {kids.ru_maxrss / 1024:.0f} MB, "
                           f"CPU {kids.ru_utime + kids.ru_stime:.1f} s)")  # (Linux: ru_maxrss in KiB)
            done += len(states)
    finally:
        if listener is not None:
            listener.close()
        engine.dispose()


def _other_builds(factory, me: str) -> bool:
    """With no lock waiting: a data cut, else a sharing bundle, claimed and built (the stale ones
    failed first: trial.interim.cuts.fail_stale, sharing.watch). True when one was built."""
    with factory() as db:
        cut_id = cuts.claim(db, me)
    if cut_id is not None:
        click.echo(f"{me}: data cut {cut_id} {cuts.run(factory, cut_id, me)}")
        return True
    with factory() as db:
        bundle_id = sharing.claim(db, me)
    if bundle_id is not None:
        click.echo(f"{me}: sharing bundle {bundle_id} {sharing.run(factory, bundle_id, me)}")
        return True
    return False


def _child(until_idle: bool, poll: float, lock_id: int | None) -> None:
    _loop(until_idle, poll, lock_id)


@click.command(help="Build the bundles of hard locks that are waiting (both variants of a lock from one read, "
                    "with two helper processes; --processes locks at once; a build whose worker stopped reporting "
                    "for two minutes is taken over), then the data cuts and the sharing bundles waiting (a stale one "
                    "is failed, not taken over). "
                    "The app starts one with --until-idle after a hard lock (TRIAL_LOCK_BUILDER=worker); "
                    "with TRIAL_LOCK_BUILDER=external keep one running, e.g. under systemd.")
@click.option("--until-idle", is_flag=True, help="Stop when nothing is waiting (else wait for ever: woken at once by a "
                                                "new hard lock, data cut or sharing bundle on PostgreSQL, looking every --poll seconds on SQLite).")
@click.option("--processes", type=int, default=1, show_default=True,
              help="Locks built at once (each build already shares its work with two helper processes).")
@click.option("--poll", type=float, default=2.0, show_default=True,
              help="Seconds between looks when idle (on PostgreSQL a new lock also wakes it at once).")
def worker(until_idle, processes, poll):
    n = max(1, processes)
    for folder in sweep_folders():  # a build killed before it could tidy up left unblinded data there
        click.echo(f"removed the temporary folder of a build whose process is gone: {folder}")
    preload()  # the libraries a build needs, loaded once here and shared by the processes forked below
    if n <= 1:
        _loop(until_idle, poll, None)
        return
    # forked before any engine exists (each process makes its own): they share the loaded code
    # instead of each loading it again; where the platform cannot fork, fresh interpreters
    ctx = multiprocessing.get_context("fork" if can_fork() else "spawn")
    procs = [ctx.Process(target=_child, args=(until_idle, poll, None)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        fail("a build process ended with an error (see above)")


@click.group(cls=Group, help="Hard locks' bundles.")
def lock():
    pass


def watch_builds(s) -> None:
    """Builds nobody picked up within a minute: queued again and a worker started (unless
    TRIAL_LOCK_BUILDER=external: the running one is woken), once; then failed (trial.lock.worker)."""
    cfg = settings.current()
    url = s.get_bind().engine.url.render_as_string(hide_password=False)
    for lock_id in watch(s, cfg.lock_builder != "external", url, cfg.instance_path):
        click.echo(f"lock {lock_id}: its bundles were not picked up by a worker within a minute: queued again"
                   + ("" if cfg.lock_builder == "external" else " and a worker started"))


@lock.command("status", help="The state of a hard lock's bundles (building, ready, failed) and the share done. "
                             "Exits 0 when ready, 3 while building, 1 when failed (then `trial lock rebuild LOCK_ID` "
                             "builds it again). A build no worker picked up within a minute is queued again and a "
                             "worker started for it, once; a minute later still waiting, it is failed.")
@click.argument("lock_id", type=int)
def status(lock_id):
    with session() as s:
        watch_builds(s)
        st = locks.build_status(s, lock_id)
    if st["status"] is None:
        fail(f"lock {lock_id} has no bundles (a soft lock, or no such lock)")
    click.echo(f"lock {lock_id}: {st['status']}, {100 * st['progress']:.0f}% done" + (f" ({st['error']})" if st["error"] else ""))
    if st["status"] == "failed":
        fail(f"the bundles of lock {lock_id} failed: `trial lock rebuild {lock_id}` builds them again")
    if st["status"] == "building":
        raise SystemExit(3)


@lock.command("rebuild", help="Build a hard lock's bundles again while it holds: a failed or abandoned build is "
                              "built and stored; a stored bundle is built and compared (the same bytes), never replaced.")
@click.argument("lock_id", type=int)
def rebuild(lock_id):
    engine = make_engine()
    try:
        out = locks.rebuild(make_session_factory(engine), CliActor(), lock_id, _worker_name())
    finally:
        engine.dispose()
    for variant, outcome in out.items():
        click.echo(f"lock {lock_id} {variant}: {outcome}")
    if any(o == "failed" or o.startswith("DIFFERENT") for o in out.values()):
        fail("not every bundle was built as it should be")
