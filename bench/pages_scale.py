#!/usr/bin/env python
"""Page benchmark: every list page, its first and a middle page, as each role, over HTTP through
gunicorn, on synthetic trials of 500 and of 10,000 participants (PostgreSQL).

    .venv/bin/python bench/pages_scale.py [--sizes 500,10000] [--repeats 60] [--keep | --reuse]

For each size a fresh database bench_pages_<size>_<pid> is built with export_scale.py's loader
(sites, randomization lists and a manager through the services; screenings, participants,
allocations, sessions, counselling, assessments, events and deviations by COPY), then a user of
each role is created (coordinator, therapist, assessor and monitor of every site, manager,
statistician, admin), the visit plan and session tallies of the bulk-loaded children are derived,
the daily missing-form check runs (as `trial checks run` would have, day by day), the database is
vacuumed and analysed (as autovacuum would after such a load). Every size is then served at once,
each by gunicorn with the deployment settings (config/gunicorn.conf.py); each role logs in to each,
and every list page it may open is fetched, first page and middle page, once untimed and then
--repeats times, one request at a time, the sizes taking turns (so that the machine's drift touches
every size alike). Pages compared across sizes show as many rows: when the smallest trial has
fewer than a page (50) of a list, those pages are fetched with that per_page at every size, and
the 50-row pages at the largest size are measured too, for the absolute target. --keep names the
databases bench_pages_<size> and keeps them; --reuse measures on them again (migrated to the head and vacuumed
first), building only a missing one. Prints per page and role the p50 and p95 at each size and
their ratios, and whether the targets hold: p95 < 150 ms at 10,000 participants and no page over
1.5x its time at 500. Exits 1 if a page does not answer 200.
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

PASSWORD = "Quartz-harbour-4417-lantern"
TARGET_MS, TARGET_RATIO = 150.0, 1.5
PER_PAGE = 50  # the lists' default page
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
    ap.add_argument("--repeats", type=int, default=60,
                    help="timed fetches of each page at each size (the p95 of 60 is the third slowest)")
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


def total_of(html: str) -> int | None:
    """A list page's total ("51–100 of 9,734"); None on a page that is not a list."""
    m = re.search(r"\d+–\d+ of ([\d,.\u202f\u00a0]+)", html)
    return int(re.sub(r"\D", "", m.group(1))) if m else None


def with_args(url: str, **args) -> str:
    extra = "&".join(f"{k}={v}" for k, v in args.items() if v is not None)
    return f"{url}{'&' if '?' in url else '?'}{extra}" if extra else url


def timed(session: requests.Session, url: str) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    r = session.get(url, timeout=60)
    return (time.perf_counter() - t0) * 1000, r.status_code, len(r.content)


def measure(bases: dict[int, str], repeats: int) -> tuple[dict, bool]:
    """Every list page of every role at every size, one request at a time, the sizes taking turns
    (each repeat fetches the page at each size in a row), so that the machine's drift touches
    every size alike. For the ratio a page shows as many rows at every size: when the smallest
    trial has fewer than a page of them (50), the pages compared show that many (``per_page``),
    and the 50-row page at the largest size is measured as well for the absolute target. Returns
    {(role, url, which): {size: (p50, p95, KB)}} and whether every page answered 200."""
    out, ok = {}, True
    small, large = min(bases), max(bases)
    for role, urls in PAGES.items():
        sessions = {n: login(base, role) for n, base in bases.items()}
        for url in urls:
            firsts = {n: sessions[n].get(bases[n] + url, timeout=60) for n in bases}  # (the warm-up)
            if any(r.status_code != 200 for r in firsts.values()):
                print(f"  {role} {url}: " + ", ".join(f"{n}: {r.status_code}" for n, r in firsts.items()))
                ok = False
                continue
            totals = {n: total_of(r.text) for n, r in firsts.items()}
            rows = None if totals[small] is None else max(1, min(PER_PAGE, totals[small]))
            per_page = rows if rows is not None and rows < PER_PAGE else None
            plans = {"first": {n: with_args(url, per_page=per_page) for n in bases},
                     "middle": {n: with_args(url, per_page=per_page, page=middle(totals[n], rows or PER_PAGE))
                                for n in bases}}
            if per_page is not None:  # the page as users get it, at the largest size: the absolute target only
                plans[f"first, {PER_PAGE} rows"] = {large: url}
                plans[f"middle, {PER_PAGE} rows"] = {large: with_args(url, page=middle(totals[large], PER_PAGE))}
            if totals[large] is None:  # not a list: one page
                del plans["middle"]
            for which, targets in plans.items():
                for n, target in targets.items():  # each address once, untimed
                    sessions[n].get(bases[n] + target, timeout=60)
                times: dict[int, list[float]] = {n: [] for n in targets}
                size_kb: dict[int, int] = {}
                for _ in range(repeats):
                    for n, target in targets.items():
                        ms, status, size = timed(sessions[n], bases[n] + target)
                        ok &= status == 200
                        times[n].append(ms)
                        size_kb[n] = size // 1024
                label = which if per_page is None or which.endswith("rows") else f"{which}, {per_page} rows"
                out[(role, url, label)] = {n: (statistics.median(t), p95(t), size_kb[n]) for n, t in times.items()}
    return out, ok


def middle(total: int | None, per_page: int) -> int | None:
    """The middle page of a list of ``total`` rows (None for a page that is not a list)."""
    if total is None:
        return None
    return max(1, math.ceil(max(total, 1) / per_page) // 2 or 1)


def p95(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def bench_keys(dbname: str) -> dict:
    """Keys derived from the database's name (a benchmark's throwaway data, never a trial's), so
    that a kept database opens again with the keys it was built with."""
    import base64

    def derive(what: str) -> bytes:
        return hashlib.sha256(f"bench pages_scale {what} {dbname}".encode()).digest()
    return {"TRIAL_SEAL_KEY": base64.urlsafe_b64encode(derive("seal")).decode(),
            "TRIAL_SECRET_KEY": derive("secret").hex(), "TRIAL_AUDIT_KEY": derive("audit").hex()}


def prepare(n: int, args, admin, user) -> tuple[dict, str]:
    """The trial of ``n`` children, built (or reused), with its environment; returns (env, dbname)."""
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
    if reuse:
        print(f"{n} participants: reusing the database {dbname} (migrated to the head first)")
        migrate()
        with psycopg.connect(dsn, autocommit=True) as c:  # what autovacuum does after a migration's rewrite
            c.execute("VACUUM ANALYZE")
        return dict(env), dbname
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
    return dict(env), dbname


def main() -> int:
    args = parse_args()
    sizes = sorted(int(x) for x in args.sizes.split(","))
    admin, user = export_scale.admin_conn(args.pg)
    prepared = {n: prepare(n, args, admin, user) for n in sizes}
    out_dir = ROOT / "bench" / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = {}
    try:
        gargs = argparse.Namespace(workers=None, worker_class=None, threads=None)
        for n, (env, _) in prepared.items():  # every size served at once, by gunicorn with the deployment's settings
            port = randomize_load.free_port()
            procs[n] = (randomize_load.start_gunicorn(gargs, port, env, out_dir / f"pages_gunicorn_{n}.log"), port)
        results, ok = measure({n: f"http://127.0.0.1:{port}" for n, (_, port) in procs.items()}, args.repeats)
    finally:
        for proc, _ in procs.values():
            randomize_load.stop(proc)
        if not (args.keep or args.reuse):
            for _, dbname in prepared.values():
                admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    small, large = sizes[0], sizes[-1]
    print(f"\n{'role':<12} {'page':<28} {'which':<20} " + " ".join(f"{f'p50@{n}':>9} {f'p95@{n}':>9}" for n in sizes)
          + f" {'p50 x':>6} {'p95 x':>6} {'KB':>5}")
    worst, worst50, worst95 = 0.0, 0.0, 0.0
    for (role, url, which), by_size in results.items():
        cells = " ".join(f"{by_size[n][0]:9.1f} {by_size[n][1]:9.1f}" if n in by_size else f"{'':9} {'':9}" for n in sizes)
        r50 = r95 = float("nan")
        if small in by_size and large in by_size:
            r50, r95 = by_size[large][0] / by_size[small][0], by_size[large][1] / by_size[small][1]
            worst50, worst95 = max(worst50, r50), max(worst95, r95)
        if large in by_size:
            worst = max(worst, by_size[large][1])
        print(f"{role:<12} {url:<28} {which:<20} {cells} {r50:6.2f} {r95:6.2f} {by_size.get(large, (0, 0, 0))[2]:5d}")
    print(f"\nworst p95 at {large}: {worst:.1f} ms (target < {TARGET_MS:.0f} ms: {'met' if worst < TARGET_MS else 'NOT met'})")
    print(f"worst ratio {large}/{small}, the same rows on a page, the sizes taking turns: p95 {worst95:.2f}, p50 "
          f"{worst50:.2f} (target <= {TARGET_RATIO}: {'met' if worst95 <= TARGET_RATIO else 'NOT met'} on p95, "
          f"{'met' if worst50 <= TARGET_RATIO else 'NOT met'} on p50)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
