#!/usr/bin/env python
"""The missing-form check at scale: the backlog of a trial of 500 and of 10,000 children raised in
one run (as the first `trial checks run` after a backlog would), then day by day, on PostgreSQL.

    .venv/bin/python bench/checks_scale.py [--sizes 500,10000] [--days 60] [--keep | --reuse] [--profile]

For each size, a trial is built with export_scale.py's loader (as pages_scale.py builds it: sites,
the manager and the lists through the services, the children bulk-loaded with COPY, a user of
each role, the visit plan and the session tallies derived, VACUUM ANALYZE), and no check is run on
it: every form missing to date is still to be raised. That database is the template: each
measurement runs on a copy of it (``CREATE DATABASE ... TEMPLATE``), dropped afterwards, so that
the template can be measured again. ``--keep`` names the templates ``bench_checks_<size>`` and
keeps them (with keys derived from the name, so that they open again); ``--reuse`` measures on
them again (migrated to the head first), building only a missing one.

On each copy, what `trial checks run` does for missing forms:
``check_missing_forms(db, missing_form_candidates(db, select(Participant), on), on)`` and the commit.

1. The backlog: one run as of today (each site's today), timed (the candidates, the check, the
   commit), with its SQL statements counted. Then a second run, which must raise nothing, and
   `trial audit verify`'s function on the chain, which must pass. ``--profile`` adds a cProfile
   of the backlog run (top functions printed, stats in ``bench/out/checks_scale-<size>.prof``).
2. Day by day (``--days D``, 0 to skip), on a second copy: the backlog as of D days ago in one
   run, then one run a day up to today, as the daily timer would: the queries each day, the
   seconds per run and per query.

Prints, per size, the queries raised, seconds, ms per query and statements per query; the ratio of
ms per query 10,000/500 and whether the targets hold: ratio <= 1.5, the 10,000 backlog under 60 s.
Exits 1 if a check fails (a second run raised queries, the chain does not verify).
"""
from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import hashlib
import os
import pstats
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import export_scale  # noqa: E402  the loader of the synthetic trial
import pages_scale  # noqa: E402  its users, visit plan and tallies

import trial.models  # noqa: E402,F401  every model registered before the first session

TARGET_RATIO, TARGET_SECONDS = 1.5, 60.0


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--sizes", default="500,10000", help="trial sizes (randomized participants), comma-separated")
    ap.add_argument("--days", type=int, default=60, help="the day-by-day runs after a backlog of that many days ago "
                                                          "(0: none)")
    ap.add_argument("--pg", default="127.0.0.1:5432", help="PostgreSQL host:port (trust auth)")
    ap.add_argument("--keep", action="store_true", help="keep the template databases (named bench_checks_<size>)")
    ap.add_argument("--reuse", action="store_true",
                    help="measure on the templates a --keep run left (bench_checks_<size>), built again only if missing")
    ap.add_argument("--profile", action="store_true", help="cProfile the backlog run (stats in bench/out)")
    return ap.parse_args()


def bench_keys(dbname: str) -> dict:
    """Keys derived from the template's name (a benchmark's throwaway data), so that the template
    and its copies open with the keys it was built with."""
    import base64

    def derive(what: str) -> bytes:
        return hashlib.sha256(f"bench checks_scale {what} {dbname}".encode()).digest()
    return {"TRIAL_SEAL_KEY": base64.urlsafe_b64encode(derive("seal")).decode(),
            "TRIAL_SECRET_KEY": derive("secret").hex(), "TRIAL_AUDIT_KEY": derive("audit").hex()}


def use(user: str, hostport: str, dbname: str, keys_of: str) -> None:
    export_scale.set_env(user, hostport, dbname)
    os.environ.update(bench_keys(keys_of))


def template(n: int, args, admin, user) -> str:
    """The trial of ``n`` children with its backlog (no check run yet), built or reused: its name."""
    name = f"bench_checks_{n}" if args.keep or args.reuse else f"bench_checks_{n}_{os.getpid()}"
    exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None
    use(user, args.pg, name, name)
    if args.reuse and exists:
        print(f"{n} participants: reusing the template {name} (migrated to the head first)")
        pages_scale.migrate()
        with psycopg.connect(f"postgresql://{user}@{args.pg}/{name}", autocommit=True) as c:
            c.execute("VACUUM ANALYZE")
        return name
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.execute(f'CREATE DATABASE "{name}"')
    t0 = time.perf_counter()
    codes = export_scale.site_codes(10)
    master = hashlib.sha256(f"bench checks_scale list seed {n}".encode()).digest()
    manager_id = export_scale.setup(codes, master)
    dsn = f"postgresql://{user}@{args.pg}/{name}"
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        b = pool.submit(export_scale.build, dsn, master.hex(), manager_id, pages_scale.loader_args(n)).result()
    pages_scale.users(codes)
    pages_scale.plan_visits()
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("VACUUM ANALYZE")
    print(f"{n} participants: template {name} built in {time.perf_counter() - t0:.1f} s ("
          + ", ".join(f"{t} {c}" for t, c in b["counts"].items()) + ")")
    return name


class Copy:
    """A copy of the template to measure on (the template's keys), dropped on exit."""

    def __init__(self, admin, user: str, hostport: str, name: str, suffix: str):
        self.admin, self.name = admin, f"{name}_{suffix}"
        admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{self.name}" TEMPLATE "{name}"')
        use(user, hostport, self.name, name)

    def __enter__(self):
        from trial.db import make_engine, make_session_factory
        self.engine = make_engine()
        self.factory = make_session_factory(self.engine)
        return self

    def __exit__(self, *exc):
        self.engine.dispose()
        self.admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def run_check(factory, engine, on: dt.date | None, profile: Path | None = None) -> dict:
    """One run of the missing-form check as `trial checks run` does it, committed: the queries it
    raised, the seconds of its parts and the SQL statements it sent."""
    from sqlalchemy import event, select

    from trial.outcomes.service import check_missing_forms, missing_form_candidates
    from trial.participants.models import Participant

    statements = [0]

    def count(*_a, **_k):
        statements[0] += 1
    event.listen(engine, "before_cursor_execute", count)
    prof = cProfile.Profile() if profile else None
    try:
        with factory() as db:
            t0 = time.perf_counter()
            if prof:
                prof.enable()
            people = missing_form_candidates(db, select(Participant), on)
            t1 = time.perf_counter()
            raised = check_missing_forms(db, people, on)
            t2 = time.perf_counter()
            db.commit()
            t3 = time.perf_counter()
            if prof:
                prof.disable()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    if prof:
        prof.dump_stats(profile)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    return {"raised": raised, "children": len(people), "candidates_s": t1 - t0, "check_s": t2 - t1,
            "commit_s": t3 - t2, "seconds": t3 - t0, "statements": statements[0]}


def verify(factory) -> tuple[bool, int, float]:
    from trial.audit import service as audit
    t0 = time.perf_counter()
    with factory() as db:
        res = audit.verify(db)
    return res.ok, res.checked, time.perf_counter() - t0


def backlog(n: int, name: str, args, admin, user) -> dict:
    """The backlog to date in one run, a second run (nothing new) and the chain verified."""
    out_dir = ROOT / "bench" / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    with Copy(admin, user, args.pg, name, "backlog") as cp:
        first = run_check(cp.factory, cp.engine, None, out_dir / f"checks_scale-{n}.prof" if args.profile else None)
        second = run_check(cp.factory, cp.engine, None)
        ok, checked, verify_s = verify(cp.factory)
    first.update(second=second["raised"], second_s=second["seconds"], verified=ok, records=checked, verify_s=verify_s)
    print(f"{n} participants, the backlog in one run: {first['raised']} queries for {first['children']} children in "
          f"{first['seconds']:.2f} s (candidates {first['candidates_s']:.2f} s, check {first['check_s']:.2f} s, commit "
          f"{first['commit_s']:.2f} s), {ms_per(first):.2f} ms a query, {first['statements']} SQL statements; "
          f"second run: {second['raised']} queries in {second['seconds']:.2f} s; audit chain of {checked} records "
          f"{'verifies' if ok else 'DOES NOT VERIFY'} ({verify_s:.1f} s)")
    return first


def day_by_day(n: int, name: str, args, admin, user) -> dict:
    """The backlog as of ``--days`` days ago, then a run a day up to today."""
    today = dt.date.today()
    with Copy(admin, user, args.pg, name, "daily") as cp:
        start = run_check(cp.factory, cp.engine, today - dt.timedelta(days=args.days))
        runs = [run_check(cp.factory, cp.engine, today - dt.timedelta(days=d)) for d in range(args.days - 1, -1, -1)]
    raised, seconds = sum(r["raised"] for r in runs), sum(r["seconds"] for r in runs)
    out = {"raised": raised, "seconds": seconds, "runs": len(runs), "statements": sum(r["statements"] for r in runs)}
    print(f"{n} participants, day by day: the backlog of {args.days} days ago {start['raised']} queries in "
          f"{start['seconds']:.2f} s; then {len(runs)} daily runs: {raised} queries in {seconds:.2f} s "
          f"({seconds / len(runs) * 1000:.0f} ms a run, the slowest {max(r['seconds'] for r in runs) * 1000:.0f} ms; "
          f"{ms_per(out):.2f} ms a query; at most {max(r['raised'] for r in runs)} queries a day)")
    return out


def ms_per(r: dict) -> float:
    return r["seconds"] * 1000 / r["raised"] if r["raised"] else float("nan")


def main() -> int:
    args = parse_args()
    sizes = sorted(int(x) for x in args.sizes.split(","))
    admin, user = export_scale.admin_conn(args.pg)
    names = {n: template(n, args, admin, user) for n in sizes}
    results, daily = {}, {}
    try:
        for n in sizes:
            results[n] = backlog(n, names[n], args, admin, user)
            if args.days > 0:
                daily[n] = day_by_day(n, names[n], args, admin, user)
    finally:
        if not (args.keep or args.reuse):
            for name in names.values():
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return summary(sizes, results, daily)


def summary(sizes: list[int], results: dict, daily: dict) -> int:
    print(f"\n{'children':>9} {'queries':>8} {'seconds':>8} {'ms/query':>9} {'statements':>10} {'2nd run':>8} "
          f"{'verify':>7} {'daily q':>8} {'ms/run':>7}")
    for n in sizes:
        r, d = results[n], daily.get(n)
        print(f"{n:>9} {r['raised']:>8} {r['seconds']:>8.2f} {ms_per(r):>9.2f} "
              f"{r['statements']:>10} {r['second']:>8} {'ok' if r['verified'] else 'BROKEN':>7} "
              + (f"{d['raised']:>8} {d['seconds'] * 1000 / d['runs']:>7.0f}" if d else ""))
    ok = all(r["second"] == 0 and r["verified"] for r in results.values())
    small, large = sizes[0], sizes[-1]
    if small != large:
        ratio = ms_per(results[large]) / ms_per(results[small])
        print(f"\nms per query {large}/{small}: {ratio:.2f} (target <= {TARGET_RATIO}: "
              f"{'met' if ratio <= TARGET_RATIO else 'NOT met'})")
        if large in daily and small in daily:
            print(f"day by day, ms per run {large}/{small}: "
                  f"{daily[large]['seconds'] / daily[small]['seconds']:.2f} (a run reads the whole trial for the "
                  "children with a form missing: it grows with the trial, a raised query does not)")
    secs = results[large]["seconds"]
    print(f"the backlog at {large}: {secs:.1f} s (target < {TARGET_SECONDS:.0f} s at 10,000: "
          f"{'met' if secs < TARGET_SECONDS else 'NOT met'}{'' if large == 10000 else f'; measured at {large}'})")
    print("integrity: the second runs raised nothing and every chain verifies" if ok else
          "integrity: FAILED (a second run raised queries or a chain does not verify)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
