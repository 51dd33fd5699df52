#!/usr/bin/env python
"""Data cut benchmark: a data cut (issue 30) of a synthetic trial at scale (PostgreSQL), built by its
own background process as the app starts it, and the closed report read from it.

    .venv/bin/python bench/data_cut.py [--participants 10000] [--sites 10] [--sessions-per-child 40]
                                       [--assessments-per-child 4] [--seed 1] [--keep]

The synthetic trial is made as bench/export_scale.py makes it (its functions: sites, a manager and
the randomization lists through the services, the rest bulk-loaded with COPY in a spawned child
process); the sites' targets then add up to the participants (the closed report's information
fraction). A cut is asked for through trial.interim.cuts.request_cut and built by
`python -m trial.interim.worker ID` (TRIAL_LOCK_BUILDER=worker), timed from the request's commit
until the cut is ready, with the peak RSS of the largest process of the build (the builder and its
helpers). Then the closed report (PDF and JSON) is read as a dmc user, timed. Targets: ready under
15 s and 500 MB a process; the closed report under 5 s. A second cut of the same data is then built the way the deployment
samples run it (TRIAL_LOCK_BUILDER=external: a `trial worker` kept running, woken by the request's
commit), timed from the request until it is ready. Prints figures; exits 1 only if a check fails.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import export_scale as es

import trial.models  # noqa: F401  every model registered before the first session

TARGET_READY_S, TARGET_MB, TARGET_REPORT_S = 15.0, 500.0, 5.0


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--participants", type=int, default=10000, help="randomized participants")
    ap.add_argument("--sites", type=int, default=10, help="sites (one stratum each)")
    ap.add_argument("--sessions-per-child", type=float, default=40, help="therapy sessions per child (music arms)")
    ap.add_argument("--assessments-per-child", type=int, default=4, help="assessments per child")
    ap.add_argument("--excluded", type=float, default=0.3, help="screenings not enrolled, per participant")
    ap.add_argument("--seed", type=int, default=1, help="seed of the synthetic data and of the randomization lists")
    ap.add_argument("--pg", default="127.0.0.1:5432", help="PostgreSQL host:port (trust auth)")
    ap.add_argument("--keep", action="store_true", help="keep the benchmark database")
    ap.add_argument("--verbose", action="store_true", help="print the builder's log")
    return ap.parse_args()


def check(ok: bool, what: str) -> bool:
    print(f"  [{'ok' if ok else 'FAILED'}] {what}")
    return ok


def main() -> int:
    args = parse_args()
    admin, user = es.admin_conn(args.pg)
    dbname = f"bench_cut_{os.getpid()}"
    admin.execute(f'CREATE DATABASE "{dbname}"')
    es.set_env(user, args.pg, dbname)
    os.environ.setdefault("TRIAL_LOCK_BUILDER", "worker")
    dsn = f"postgresql://{user}@{args.pg}/{dbname}"
    ok = True
    try:
        codes = es.site_codes(args.sites)
        master = hashlib.sha256(f"bench data_cut list seed {args.seed}".encode()).digest()
        t0 = time.perf_counter()
        manager_id = es.setup(codes, master)
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            b = pool.submit(es.build, dsn, master.hex(), manager_id, args).result()
        print(f"database {dbname}; synthetic trial built in {time.perf_counter() - t0:.1f} s "
              f"({', '.join(f'{t} {n}' for t, n in b['counts'].items())})")
        ok &= run_cut(args, manager_id)
    finally:
        if args.keep:
            print(f"kept: {os.environ['TRIAL_DATABASE_URL']}")
        else:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        admin.close()
    return 0 if ok else 1


def run_cut(args, manager_id: int) -> bool:
    from sqlalchemy import func, select, text

    from trial.auth.models import User
    from trial.auth.service import create_user
    from trial.db import make_engine, make_session_factory
    from trial.interim import cuts
    from trial.interim.models import DataCut
    from trial.participants.models import Allocation
    from trial.scope import CliActor
    engine = make_engine()
    factory = make_session_factory(engine)
    ok = True
    with factory() as db:
        per_site = -(-args.participants // args.sites)
        db.execute(text("UPDATE site SET target = :n"), {"n": per_site})
        dmc = create_user(db, CliActor(email="cli:bench"), "bench-dmc@bench.trial", "Bench Committee", es.PASSWORD,
                          [("dmc", None)])
        db.commit()
        manager = db.get(User, manager_id)
        randomized = db.execute(select(func.count()).select_from(Allocation)).scalar()
        t0 = time.perf_counter()
        cut = cuts.request_cut(db, manager, "bench interim look")
        db.commit()
        cut_id = cut.id
        ask_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "trial.interim.worker", str(cut_id)], env=dict(os.environ),
                              capture_output=True, text=True, check=False)
        ready_s = time.perf_counter() - t0
        build_s = time.perf_counter() - t1
        said = re.search(r"peak RSS (\d+) MB, CPU ([\d.]+) s; helpers' peak RSS (\d+) MB, CPU ([\d.]+) s", proc.stderr)
        peak_mb = max(float(said.group(1)), float(said.group(3))) if said else float("nan")
        if said:
            print(f"builder: peak RSS {said.group(1)} MB, CPU {said.group(2)} s; its helpers: peak RSS {said.group(3)} MB, "
                  f"CPU {said.group(4)} s")
        db.expire_all()
        c = db.get(DataCut, cut_id)
        print(f"\ndata cut {cut_id}: asked (request + commit) in {ask_s:.2f} s; built by its own process in "
              f"{build_s:.2f} s; ready {ready_s:.2f} s after the request; peak RSS of the largest process "
              f"{peak_mb:.0f} MB; {len(db.execute(select(DataCut.content).where(DataCut.id == cut_id)).scalar() or b'') / 1048576:.1f} MB stored")
        for line in proc.stderr.splitlines():
            if "the unblinded tables in" in line:
                print("phases:" + line.split("data cut", 1)[1].split(":", 1)[1])
        if proc.returncode or args.verbose:
            print(proc.stdout[-4000:], proc.stderr[-4000:])
        ok &= check(c.status == "ready", f"the cut is ready ({c.status}{': ' + c.error if c.error else ''})")
        ok &= check(ready_s < TARGET_READY_S, f"ready under {TARGET_READY_S:.0f} s ({ready_s:.2f} s)")
        ok &= check(peak_mb < TARGET_MB, f"under {TARGET_MB:.0f} MB a process ({peak_mb:.0f} MB)")
        if c.status != "ready":
            return False
        dmc = db.get(User, dmc.id)
        t0 = time.perf_counter()
        data = cuts.closed_report(db, dmc, cut_id, "json")
        json_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pdf = cuts.closed_report(db, dmc, cut_id, "pdf", "en")
        pdf_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        open_pdf = cuts.open_report_pdf(db, dmc, cut_id, "en")
        open_s = time.perf_counter() - t0
        db.commit()
        print(f"closed report: JSON {json_s:.2f} s, PDF {pdf_s:.2f} s ({len(pdf) / 1024:.0f} KB); open report PDF "
              f"{open_s:.2f} s ({len(open_pdf) / 1024:.0f} KB)")
        print("interim analysis: " + json.dumps({k: data[k] for k in ("information_fraction", "z", "boundary_z",
                                                                      "crossed", "observed_primary")}))
        ok &= check(sum(data["n_by_arm"].values()) == randomized,
                    f"the cut's ADSL holds every randomized child ({randomized})")
        ok &= check(max(json_s, pdf_s) < TARGET_REPORT_S, f"the closed report under {TARGET_REPORT_S:.0f} s "
                    f"({max(json_s, pdf_s):.2f} s)")
        ok &= external_cut(db, manager_id)
    engine.dispose()
    return ok


def external_cut(db, manager_id: int) -> bool:
    """A second cut of the same data as the deployment samples build it (TRIAL_LOCK_BUILDER=external,
    config/deploy/trial-worker.service): a `trial worker` kept running, its libraries loaded, woken
    by the request's commit (NOTIFY); timed from the request until the cut is ready."""
    from trial.auth.models import User
    from trial.interim import cuts
    from trial.interim.models import DataCut
    env = {**os.environ, "TRIAL_LOCK_BUILDER": "external"}
    worker = subprocess.Popen([str(Path(sys.executable).with_name("trial")), "worker"], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        first = worker.stdout.readline()  # "...: waiting for hard locks": loaded and listening
        if "waiting" not in first:
            print(first, worker.stdout.read()[-2000:])
            return check(False, "the kept-running worker started")
        t0 = time.perf_counter()
        cut = cuts.request_cut(db, db.get(User, manager_id), "bench interim look, kept-running worker")
        db.commit()
        cut_id, state = cut.id, "building"
        while state == "building" and time.perf_counter() - t0 < 300:
            time.sleep(0.05)
            db.expire_all()
            state = db.execute(select_status(DataCut, cut_id)).scalar()
        ready_s = time.perf_counter() - t0
    finally:
        worker.terminate()
        out = worker.communicate(timeout=60)[0]
    print(f"\ndata cut {cut_id} (TRIAL_LOCK_BUILDER=external, as config/deploy runs it): {state} "
          f"{ready_s:.2f} s after the request")
    for line in out.splitlines():
        if "data cut" in line and ("built from" in line or "unblinded tables" in line):
            print("  " + line.split(" INFO ", 1)[-1])
    ok = check(state == "ready", f"the cut is ready ({state})")
    return ok & check(ready_s < TARGET_READY_S, f"ready under {TARGET_READY_S:.0f} s ({ready_s:.2f} s)")


def select_status(model, cut_id: int):
    from sqlalchemy import select
    return select(model.status).where(model.id == cut_id)


if __name__ == "__main__":
    sys.exit(main())
