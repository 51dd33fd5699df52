#!/usr/bin/env python
"""The backup drill at scale: `trial backup create`, `verify` and `restore` of a 10,000-child trial
on PostgreSQL, timed as an operator runs them (the command line, in a process of its own).

    .venv/bin/python bench/backup_drill.py [--participants 10000] [--keep | --reuse] [--pg 127.0.0.1:5432]

The trial is built as pages_scale.py builds it, with export_scale.py's loader: the sites, a manager
and the randomization lists through the services, the children (screenings, allocations in the
lists' slots, therapy and counselling sessions, assessments, status events, deviations) bulk-loaded
with COPY in a spawned process; then, as replay_scale.py does (its ``write_trail``, imported), the
audit trail the services would have written for those rows (every row's creation records, the
allocations' ``randomize`` records, chained and keyed), since verify and restore compare the data
against the trail; then their visit plan and session tallies derived, and VACUUM ANALYZE.
``--keep`` names the database ``bench_backup_<n>`` and keeps it (its keys derived from the name, so
that it opens again); ``--reuse`` measures on it again (migrated to the head first, its trail
written first if it was kept without one), building it only when missing.

Then, each timed from the start of the command to its exit:

1. the floor: plain ``pg_dump --format=custom`` of the database to a file (what `create` wraps);
2. ``trial backup create --to DIR``: the snapshot exported, the row counts and audit head read in it,
   pg_dump with ``--snapshot``, the digest, the manifest and its MAC. The size of the dump is printed;
3. ``trial backup verify DIR``: the manifest's MAC, the digest, pg_restore into a scratch database,
   the row counts, the audit head and chain, every allocation against the lists of the sealed seed,
   the data against the audit trail (trial.audit.replay), the scratch dropped;
4. ``trial backup restore DIR --to URL`` into an empty database made for it (dropped afterwards):
   the same checks, and randomization held.

SQLite is not measured: the loader bulk-loads with PostgreSQL's COPY. Exits 1 if a command fails.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import export_scale
import pages_scale
import replay_scale

import trial.models  # noqa: F401  every model registered before the first session

MB = 1024 * 1024
TRIAL = [str(Path(sys.executable).parent / "trial")]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--participants", type=int, default=10000, help="randomized participants")
    ap.add_argument("--pg", default="127.0.0.1:5432", help="PostgreSQL host:port (trust auth)")
    ap.add_argument("--keep", action="store_true", help="keep the trial's database (named bench_backup_<n>)")
    ap.add_argument("--reuse", action="store_true",
                    help="measure on the database a --keep run left (bench_backup_<n>), built again only if missing")
    args = ap.parse_args()
    if args.participants < 1:
        ap.error("--participants must be >= 1")
    return args


def bench_keys(dbname: str) -> dict:
    """Keys derived from the database's name (a benchmark's throwaway data), so that a kept
    database opens again with the keys it was built with."""
    def derive(what: str) -> bytes:
        return hashlib.sha256(f"bench backup_drill {what} {dbname}".encode()).digest()
    return {"TRIAL_SEAL_KEY": base64.urlsafe_b64encode(derive("seal")).decode(),
            "TRIAL_SECRET_KEY": derive("secret").hex(), "TRIAL_AUDIT_KEY": derive("audit").hex()}


def use(user: str, hostport: str, dbname: str) -> None:
    export_scale.set_env(user, hostport, dbname)
    os.environ.update(bench_keys(dbname))


def write_trail() -> int:
    """The creation records of the bulk-loaded rows (replay_scale.write_trail). Returns how many."""
    from trial.db import make_engine, make_session_factory

    engine = make_engine()
    try:
        return replay_scale.write_trail(make_session_factory(engine))
    finally:
        engine.dispose()


def has_trail(dsn: str) -> bool:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT 1 FROM audit_record WHERE entity = 'screening' AND action = 'create' "
                         "LIMIT 1").fetchone() is not None


def trial_db(n: int, args, admin, user) -> str:
    """The trial of ``n`` children, built or reused: its database's name."""
    name = f"bench_backup_{n}" if args.keep or args.reuse else f"bench_backup_{n}_{os.getpid()}"
    exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None
    use(user, args.pg, name)
    dsn = f"postgresql://{user}@{args.pg}/{name}"
    if args.reuse and exists:
        print(f"{n} participants: reusing {name} (migrated to the head first)", flush=True)
        pages_scale.migrate()
        if not has_trail(dsn):
            t0 = time.perf_counter()
            records = write_trail()
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute("VACUUM ANALYZE audit_record")
            print(f"  kept without a trail: {records} creation records written in {time.perf_counter() - t0:.1f} s",
                  flush=True)
        return name
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.execute(f'CREATE DATABASE "{name}"')
    t0 = time.perf_counter()
    codes = export_scale.site_codes(10)
    master = hashlib.sha256(f"bench backup_drill list seed {n}".encode()).digest()
    manager_id = export_scale.setup(codes, master)
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        b = pool.submit(export_scale.build, dsn, master.hex(), manager_id, pages_scale.loader_args(n)).result()
    loaded = time.perf_counter() - t0
    records = write_trail()
    trail_s = time.perf_counter() - t0 - loaded
    pages_scale.plan_visits()
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("VACUUM ANALYZE")
    print(f"{n} participants: {name} built in {time.perf_counter() - t0:.1f} s (loaded in {loaded:.1f} s: "
          + ", ".join(f"{t} {c}" for t, c in b["counts"].items())
          + f"; the trail's {records} creation records written in {trail_s:.1f} s)", flush=True)
    return name


def timed(cmd: list[str], what: str, env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, env=env or dict(os.environ), check=False)
    seconds = time.perf_counter() - t0
    if run.returncode != 0:
        print(f"{what} FAILED (exit {run.returncode}) after {seconds:.1f} s")
        print(f"stdout: {run.stdout}\nstderr: {run.stderr}")
    return seconds, run


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def main() -> int:
    args = parse_args()
    admin, user = export_scale.admin_conn(args.pg)
    n = args.participants
    name = trial_db(n, args, admin, user)
    host, port = args.pg.split(":")
    work = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    target = f"bench_backup_restored_{os.getpid()}"
    ok = True
    try:
        with psycopg.connect(f"postgresql://{user}@{args.pg}/{name}") as c:
            db_bytes = c.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            rows = {t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                    for t in ("participant", "allocation", "therapy_session", "assessment", "planned_visit",
                              "audit_record")}
        print(f"database {name}: {db_bytes / MB:.1f} MB on the server; "
              + ", ".join(f"{t} {v}" for t, v in rows.items()))

        floor_file = work / "floor.dump"
        floor_s, run = timed(["pg_dump", "--format=custom", f"--host={host}", f"--port={port}", f"--username={user}",
                              "--no-password", f"--file={floor_file}", f"--dbname={name}"], "pg_dump (floor)")
        ok &= run.returncode == 0
        floor_size = floor_file.stat().st_size if floor_file.exists() else 0
        floor_file.unlink(missing_ok=True)

        out = work / "backup"
        create_s, run = timed(TRIAL + ["backup", "create", "--to", str(out)], "trial backup create")
        ok &= run.returncode == 0
        size = size_of(out) if out.exists() else 0
        verify_s, run = timed(TRIAL + ["backup", "verify", str(out)], "trial backup verify")
        ok &= run.returncode == 0
        verify_lines = run.stdout.strip().splitlines()

        admin.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{target}"')
        restore_s, run = timed(TRIAL + ["backup", "restore", str(out), "--to",
                                        f"postgresql+psycopg://{user}@{args.pg}/{target}"], "trial backup restore")
        ok &= run.returncode == 0
        restore_lines = run.stdout.strip().splitlines()

        print()
        print(f"backup drill at {n} children (PostgreSQL; each command timed from its start to its exit):")
        print(f"  pg_dump --format=custom alone (floor): {floor_s:6.1f} s, {floor_size / MB:.1f} MB")
        print(f"  trial backup create:                   {create_s:6.1f} s, backup {size / MB:.1f} MB "
              f"(dump and manifest)")
        print(f"  trial backup verify:                   {verify_s:6.1f} s")
        print(f"  trial backup restore (empty database): {restore_s:6.1f} s")
        print("  verify said:")
        for line in verify_lines:
            print(f"    {line}")
        print("  restore said (last lines):")
        for line in restore_lines[-3:]:
            print(f"    {line}")
        print("  SQLite: not measured (the loader bulk-loads with PostgreSQL's COPY)")
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')
        shutil.rmtree(work, ignore_errors=True)
        if not args.keep and not args.reuse:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            print(f"kept {name}: TRIAL_DATABASE_URL={os.environ['TRIAL_DATABASE_URL']} (keys derived from its name)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
