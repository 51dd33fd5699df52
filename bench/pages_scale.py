#!/usr/bin/env python
"""Page benchmark: every list page, its first and a middle page, as each role, over HTTP through
gunicorn, on synthetic trials of 500 and of 10,000 participants (PostgreSQL).

    .venv/bin/python bench/pages_scale.py [--sizes 500,10000] [--repeats 15] [--keep]

For each size a fresh database bench_pages_<size>_<pid> is built with export_scale.py's loader
(sites, randomization lists and a manager through the services; screenings, participants,
allocations, sessions, counselling, assessments, events and deviations by COPY), then a user of
each role is created (coordinator, therapist, assessor and monitor of every site, manager,
statistician, admin), gunicorn is started with the deployment settings (config/gunicorn.conf.py),
the daily missing-form check runs (as `trial checks run` would have, day by day), each role logs
in, and every list page it may open is fetched, first page and the middle page
(default 50 rows a page), once to warm up and then --repeats times, one request at a time.
Prints per page and role the p50 and p95 at each size, the ratio of the p95s, and whether the
targets hold: p95 < 150 ms at 10,000 participants and no page over 1.5x its time at 500. Exits 1
if a page does not answer 200.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import re
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import export_scale  # noqa: E402  the loader of the synthetic trial
import randomize_load  # noqa: E402  gunicorn start and stop

import trial.models  # noqa: E402,F401  every model registered before the first session

PASSWORD = "bench-password-1234"
TARGET_MS, TARGET_RATIO = 150.0, 1.5
PAGES = {
    "coordinator": ["/participants", "/screenings", "/dashboard/", "/visits?kind=due", "/visits?kind=overdue",
                    "/visits?kind=out_of_window", "/adherence", "/queries?status=all", "/adverse-events"],
    "therapist": ["/participants", "/adherence"],
    "assessor": ["/participants", "/dashboard/", "/visits?kind=due", "/visits?kind=overdue", "/queries?status=all"],
    "monitor": ["/participants", "/screenings", "/dashboard/", "/visits?kind=overdue", "/queries?status=all",
                "/adverse-events"],
    "manager": ["/participants", "/screenings", "/dashboard/", "/visits?kind=due", "/visits?kind=overdue",
                "/visits?kind=out_of_window", "/adherence", "/queries?status=all", "/adverse-events", "/audit/"],
    "admin": ["/admin/users"],
}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--sizes", default="500,10000", help="trial sizes (randomized participants), comma-separated")
    ap.add_argument("--repeats", type=int, default=15, help="timed fetches of each page")
    ap.add_argument("--pg", default="127.0.0.1:5432", help="PostgreSQL host:port (trust auth)")
    ap.add_argument("--keep", action="store_true", help="keep the benchmark databases")
    return ap.parse_args()


def loader_args(n: int) -> argparse.Namespace:
    return argparse.Namespace(participants=n, sites=10, sessions_per_child=40, assessments_per_child=4, excluded=0.3,
                              seed=1, pg=None, profile=False, no_rebuild=True, keep=True)


def users(codes: list[str]) -> None:
    """One user of each role (site roles at every site), created from the CLI (trusted: no
    countersignature)."""
    from trial.auth.service import create_user
    from trial.db import make_engine, make_session_factory
    from trial.scope import CliActor

    cli = CliActor(email="cli:bench")
    engine = make_engine()
    with make_session_factory(engine)() as db:
        for role in ("coordinator", "therapist", "assessor", "monitor"):
            create_user(db, cli, f"bench-{role}@bench.trial", f"Bench {role.title()}", PASSWORD,
                        [(role, c) for c in codes])
        for role in ("statistician", "admin"):
            create_user(db, cli, f"bench-{role}@bench.trial", f"Bench {role.title()}", PASSWORD, [(role, None)])
        db.commit()
    engine.dispose()


def daily_checks() -> int:
    """What the daily `trial checks run` does: a query for every form missing after its window."""
    from sqlalchemy import select

    from trial.db import make_engine, make_session_factory
    from trial.outcomes.service import check_missing_forms, missing_form_candidates
    from trial.participants.models import Participant

    engine = make_engine()
    with make_session_factory(engine)() as db:
        raised = check_missing_forms(db, missing_form_candidates(db, select(Participant)))
        db.commit()
    engine.dispose()
    return raised


def login(base: str, role: str) -> requests.Session:
    s = requests.Session()
    email = export_scale.EMAIL if role == "manager" else f"bench-{role}@bench.trial"
    page = s.get(f"{base}/login", timeout=30).text
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1)
    r = s.post(f"{base}/login", data={"email": email, "password": PASSWORD, "csrf_token": token},
               allow_redirects=False, timeout=30)
    if r.status_code != 302:
        sys.exit(f"login of {role} failed: {r.status_code}")
    return s


def middle(html: str, per_page: int = 50) -> int:
    m = re.search(r"\d+–\d+ of (\d+)", html)
    total = int(m.group(1)) if m else 0
    return max(1, math.ceil(max(total, 1) / per_page) // 2 or 1)


def measure(base: str, repeats: int) -> tuple[dict, bool]:
    out, ok = {}, True
    for role, urls in PAGES.items():
        s = login(base, role)
        for url in urls:
            first = s.get(base + url, timeout=60)
            if first.status_code != 200:
                print(f"  {role} {url}: {first.status_code}")
                ok = False
                continue
            sep = "&" if "?" in url else "?"
            for which, target in (("first", url), ("middle", f"{url}{sep}page={middle(first.text)}")):
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    r = s.get(base + target, timeout=60)
                    times.append((time.perf_counter() - t0) * 1000)
                    ok &= r.status_code == 200
                times.sort()
                p95 = times[min(len(times) - 1, math.ceil(0.95 * len(times)) - 1)]
                out[(role, url, which)] = (statistics.median(times), p95, len(r.content))
    return out, ok


def run_size(n: int, args, admin, user) -> tuple[dict, bool]:
    dbname = f"bench_pages_{n}_{os.getpid()}"
    admin.execute(f'CREATE DATABASE "{dbname}"')
    env = export_scale.set_env(user, args.pg, dbname)
    dsn = f"postgresql://{user}@{args.pg}/{dbname}"
    proc = None
    try:
        codes = export_scale.site_codes(10)
        master = hashlib.sha256(f"bench pages_scale list seed {n}".encode()).digest()
        t0 = time.perf_counter()
        manager_id = export_scale.setup(codes, master)
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            b = pool.submit(export_scale.build, dsn, master.hex(), manager_id, loader_args(n)).result()
        users(codes)
        t1 = time.perf_counter()
        raised = daily_checks()
        print(f"  the daily missing-form check (as `trial checks run`): {raised} queries in {time.perf_counter() - t1:.1f} s")
        print(f"{n} participants: built in {time.perf_counter() - t0:.1f} s ("
              + ", ".join(f"{t} {c}" for t, c in b["counts"].items()) + ")")
        port = randomize_load.free_port()
        out_dir = ROOT / "bench" / "out"
        out_dir.mkdir(parents=True, exist_ok=True)
        gargs = argparse.Namespace(workers=None, worker_class=None, threads=None)
        proc = randomize_load.start_gunicorn(gargs, port, env, out_dir / f"pages_gunicorn_{n}.log")
        return measure(f"http://127.0.0.1:{port}", args.repeats)
    finally:
        if proc is not None:
            randomize_load.stop(proc)
        if not args.keep:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def main() -> int:
    args = parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    admin, user = export_scale.admin_conn(args.pg)
    results, ok = {}, True
    for n in sizes:
        results[n], good = run_size(n, args, admin, user)
        ok &= good
    small, large = min(sizes), max(sizes)
    print(f"\n{'role':<12} {'page':<28} {'which':<7} " + " ".join(f"{f'p50@{n}':>10} {f'p95@{n}':>10}" for n in sizes)
          + f" {'ratio':>6} {'KB':>6}")
    worst, worst_ratio = 0.0, 0.0
    for key in results[large]:
        role, url, which = key
        cols = []
        for n in sizes:
            p50, p95, _ = results[n].get(key, (float("nan"),) * 3)
            cols.append(f"{p50:10.1f} {p95:10.1f}")
        ratio = results[large][key][1] / results[small][key][1] if key in results[small] else float("nan")
        worst, worst_ratio = max(worst, results[large][key][1]), max(worst_ratio, ratio)
        print(f"{role:<12} {url:<28} {which:<7} " + " ".join(cols) + f" {ratio:6.2f} {results[large][key][2] / 1024:6.0f}")
    print(f"\nworst p95 at {large}: {worst:.1f} ms (target < {TARGET_MS:.0f} ms: {'met' if worst < TARGET_MS else 'NOT met'}); "
          f"worst p95 ratio {large}/{small}: {worst_ratio:.2f} (target <= {TARGET_RATIO}: "
          f"{'met' if worst_ratio <= TARGET_RATIO else 'NOT met'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
