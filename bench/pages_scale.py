#!/usr/bin/env python
"""Page benchmark: every list page, its first and a middle page, as each role, over HTTP through
gunicorn, on synthetic trials of 500 and of 10,000 participants (PostgreSQL).

    .venv/bin/python bench/pages_scale.py [--sizes 500,10000] [--repeats 40] [--keep | --reuse]

For each size a fresh database bench_pages_<size>_<pid> is built with export_scale.py's loader
(sites, randomization lists and a manager through the services; screenings, participants,
allocations, sessions, counselling, assessments, events and deviations by COPY), then a user of
each role is created (coordinator, therapist, assessor and monitor of every site, manager,
statistician, admin), the visit plan and session tallies of the bulk-loaded children are derived,
the daily missing-form check runs (as `trial checks run` would have, day by day), the database is
vacuumed and analysed (as autovacuum would after such a load), gunicorn is started with the
deployment settings (config/gunicorn.conf.py), each role logs in, and every list page it may open
is fetched, first page and the middle page (default 50 rows a page), once to warm up and then
--repeats times, one request at a time. --keep names the databases bench_pages_<size> and keeps
them; --reuse measures on them again (migrated to the head first), building only a missing one.
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

import psycopg
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
    "manager": ["/dashboard/overview", "/participants", "/screenings", "/dashboard/", "/visits?kind=due", "/visits?kind=overdue",
                "/visits?kind=out_of_window", "/adherence", "/queries?status=all", "/adverse-events", "/audit/"],
    "admin": ["/admin/users"],
}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--sizes", default="500,10000", help="trial sizes (randomized participants), comma-separated")
    ap.add_argument("--repeats", type=int, default=40,
                    help="timed fetches of each page (the p95 of 40 is the third slowest; of 15 it would be the slowest)")
    ap.add_argument("--pg", default="127.0.0.1:5432", help="PostgreSQL host:port (trust auth)")
    ap.add_argument("--keep", action="store_true", help="keep the benchmark databases (named bench_pages_<size>)")
    ap.add_argument("--reuse", action="store_true",
                    help="measure on the databases a --keep run left (bench_pages_<size>), built again only if missing")
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


def migrate() -> None:
    from trial.db import make_engine
    from trial.migrate import upgrade

    engine = make_engine()
    upgrade(engine)
    engine.dispose()


def plan_visits() -> int:
    """The visit plan and the session tallies of the children loaded by COPY (the services keep
    them as they write; a bulk load bypasses them)."""
    from trial.course.service import recount_all
    from trial.db import make_engine, make_session_factory
    from trial.visitplan.service import replan_all

    engine = make_engine()
    with make_session_factory(engine)() as db:
        n = replan_all(db)
        recount_all(db)
        db.commit()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE planned_visit, course_tally")
    engine.dispose()
    return n


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


def bench_keys(dbname: str) -> dict:
    """Keys derived from the database's name (a benchmark's throwaway data, never a trial's), so
    that a kept database opens again with the keys it was built with."""
    import base64

    def derive(what: str) -> bytes:
        return hashlib.sha256(f"bench pages_scale {what} {dbname}".encode()).digest()
    return {"TRIAL_SEAL_KEY": base64.urlsafe_b64encode(derive("seal")).decode(),
            "TRIAL_SECRET_KEY": derive("secret").hex(), "TRIAL_AUDIT_KEY": derive("audit").hex()}


def start_and_measure(n: int, args, env) -> tuple[dict, bool]:
    port = randomize_load.free_port()
    out_dir = ROOT / "bench" / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    gargs = argparse.Namespace(workers=None, worker_class=None, threads=None)
    proc = randomize_load.start_gunicorn(gargs, port, env, out_dir / f"pages_gunicorn_{n}.log")
    try:
        return measure(f"http://127.0.0.1:{port}", args.repeats)
    finally:
        randomize_load.stop(proc)


def run_size(n: int, args, admin, user) -> tuple[dict, bool]:
    dbname = f"bench_pages_{n}" if args.keep or args.reuse else f"bench_pages_{n}_{os.getpid()}"
    exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone() is not None
    reuse = args.reuse and exists
    if not reuse:
        admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{dbname}"')
    env = export_scale.set_env(user, args.pg, dbname)
    if args.keep or args.reuse:  # a kept database is read again later: its keys must be the same then
        env.update(bench_keys(dbname))
        os.environ.update(env)
    dsn = f"postgresql://{user}@{args.pg}/{dbname}"
    try:
        if reuse:
            print(f"{n} participants: reusing the database {dbname} (migrated to the head first)")
            migrate()
            return start_and_measure(n, args, env)
        codes = export_scale.site_codes(10)
        master = hashlib.sha256(f"bench pages_scale list seed {n}".encode()).digest()
        t0 = time.perf_counter()
        manager_id = export_scale.setup(codes, master)
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            b = pool.submit(export_scale.build, dsn, master.hex(), manager_id, loader_args(n)).result()
        users(codes)
        t1 = time.perf_counter()
        print(f"  the visit plan and session tallies: {plan_visits()} visit rows in {time.perf_counter() - t1:.1f} s")
        t1 = time.perf_counter()
        raised = daily_checks()
        print(f"  the daily missing-form check (as `trial checks run`): {raised} queries in {time.perf_counter() - t1:.1f} s")
        with psycopg.connect(dsn, autocommit=True) as c:  # what autovacuum does after such a load
            c.execute("VACUUM ANALYZE")
        print(f"{n} participants: built in {time.perf_counter() - t0:.1f} s ("
              + ", ".join(f"{t} {c}" for t, c in b["counts"].items()) + ")")
        return start_and_measure(n, args, env)
    finally:
        if not (args.keep or args.reuse):
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
