#!/usr/bin/env python
"""`trial audit verify --data` at scale (PostgreSQL): the data against a big trail.

    .venv/bin/python bench/replay_scale.py [--participants 2000] [--sessions-per-child 40] [--keep]

A fresh database bench_replay_<pid> gets the synthetic trial of bench/export_scale.py (sites, a
manager and the randomization lists through the services; screenings, participants, allocations,
sessions, counselling, assessments, status events and deviations by COPY), then the audit trail
the services would have written for those rows: each row's creation records (one per field, as
``trial.audit.service.created`` writes them, the allocations' as ``randomize`` writes theirs),
chained and keyed, by ``record_many``. Then it times ``trial.audit.replay.compare`` in this process
(with its peak RSS) and the whole command `trial audit verify --data` against `trial audit verify`
alone, checks that nothing is reported, changes one session's minutes by SQL and checks that the
replay names it. Drops the database unless --keep.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import export_scale

import trial.models  # noqa: F401  every model registered before the first session

# the fields each table's creation record holds (the services' audit.created calls); "participant"
# is the child's study id, "site" the site's code
CREATED = {
    "screening": ("site", "log_number", "screened_on", "answers", "declined", "other_reason", "outcome"),
    "participant": ("site", "screening_id", "consent_date", "date_of_birth", "sex", "strata"),
    "therapy_session": ("participant", "held_on", "attendance", "minutes", "techniques", "engagement", "note",
                        "outside_course", "present", "goals"),
    "counselling_session": ("participant", "number", "held_on", "attended", "note"),
    "assessment": ("participant", "visit", "instrument", "performed_on", "values", "out_of_window",
                   "allocation_guess", "guess_confidence"),
    "status_event": ("participant", "type", "on", "reason"),
    "deviation": ("participant", "on", "category", "description"),
}
PAGE = 20000  # rows whose records are appended in one record_many


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--participants", type=int, default=2000, help="randomized participants")
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--sessions-per-child", type=float, default=40)
    ap.add_argument("--assessments-per-child", type=int, default=4)
    ap.add_argument("--excluded", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pg", default="127.0.0.1:5432")
    ap.add_argument("--keep", action="store_true")
    return ap.parse_args()


def write_trail(factory) -> int:
    """The creation records of every bulk-loaded row, as the services write them. Returns how many."""
    from sqlalchemy import select

    from trial.audit import service as audit
    from trial.db import Base
    from trial.scope import CliActor

    actor = CliActor(email="cli:bench")
    n = 0
    with factory() as db:
        sites = dict(db.execute(select(Base.metadata.tables["site"].c.id, Base.metadata.tables["site"].c.code)).all())
        p = Base.metadata.tables["participant"]
        children = dict(db.execute(select(p.c.id, p.c.study_id)).all())
        strata = dict(db.execute(select(Base.metadata.tables["stratum"].c.id, Base.metadata.tables["stratum"].c.key)).all())
        for table, fields in CREATED.items():
            t = Base.metadata.tables[table]
            entries = []
            for row in db.execute(select(t).order_by(t.c.id)).all():
                vals = {"site": sites.get(getattr(row, "site_id", None)),
                        "participant": children.get(getattr(row, "participant_id", None))}
                values = {f: vals[f] if f in vals else getattr(row, f) for f in fields}
                entries.append({"action": "create", "entity": table,
                                "entity_id": row.study_id if table == "participant" else row.id,
                                "changes": {k: (None, v) for k, v in values.items()}})
                if len(entries) == PAGE:
                    n += len(audit.record_many(db, actor, entries))
                    entries = []
            if entries:
                n += len(audit.record_many(db, actor, entries))
            db.commit()
        a = Base.metadata.tables["allocation"]
        entries = [{"action": "randomize", "entity": "allocation", "entity_id": r.study_id, "reveals_allocation": True,
                    "changes": {"allocation": (None, {"arm": r.arm, "stratum": strata[r.stratum_id], "seq": r.seq})}}
                   for r in db.execute(select(a).order_by(a.c.id)).all()]
        n += len(audit.record_many(db, actor, entries))
        db.commit()
    return n


def run(*args: str) -> tuple[float, subprocess.CompletedProcess, int]:
    """The command's wall time, its result and its peak RSS in MB (GNU time's %M)."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "maxrss %M", sys.executable, "-m", "trial.cli", *args],
                       capture_output=True, text=True, env=dict(os.environ))
    *err, last = p.stderr.splitlines() or [""]
    p.stderr = "\n".join(err)
    return time.perf_counter() - t0, p, int(last.split()[-1]) // 1024 if last.startswith("maxrss") else -1


def main() -> int:
    args = parse_args()
    admin, user = export_scale.admin_conn(args.pg)
    dbname = f"bench_replay_{os.getpid()}"
    admin.execute(f'CREATE DATABASE "{dbname}"')
    export_scale.set_env(user, args.pg, dbname)
    dsn = f"postgresql://{user}@{args.pg}/{dbname}"
    ok = True
    try:
        master = hashlib.sha256(f"bench export_scale list seed {args.seed}".encode()).digest()
        t0 = time.perf_counter()
        manager_id = export_scale.setup(export_scale.site_codes(args.sites), master)
        b = export_scale.build(dsn, master.hex(), manager_id, args)
        print(f"synthetic trial in {time.perf_counter() - t0:.1f} s: "
              + ", ".join(f"{t} {n}" for t, n in b["counts"].items()))

        from sqlalchemy import text

        from trial.audit import replay
        from trial.db import make_engine, make_session_factory
        engine = make_engine()
        factory = make_session_factory(engine)
        t0 = time.perf_counter()
        n = write_trail(factory)
        with engine.connect() as c:
            records = c.execute(text("SELECT count(*) FROM audit_record")).scalar()
        print(f"trail: {n} creation records written ({records} in all) in {time.perf_counter() - t0:.1f} s")
        with psycopg_autocommit(dsn) as c:
            c.execute("VACUUM ANALYZE")

        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        times = []
        for _ in range(3):
            with factory() as db:
                t0 = time.perf_counter()
                found = replay.compare(db)
                times.append(time.perf_counter() - t0)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"replay.compare: {min(times):.2f} s best of 3 ({', '.join(f'{x:.2f}' for x in times)}); "
              f"peak RSS {rss:.0f} MB (before: {rss0:.0f} MB); {len(found)} differences")
        ok &= not found
        with factory() as db:
            per = []
            lk = replay.Lookups(db)
            for spec in replay.TABLES:
                t0 = time.perf_counter()
                spec.compare(db, lk)
                per.append((time.perf_counter() - t0, spec.table))
        print("  slowest tables: " + ", ".join(f"{tb} {s:.2f} s" for s, tb in sorted(per, reverse=True)[:5]))

        data_s, p, mb = run("audit", "verify", "--data")
        print(f"`trial audit verify --data`: {data_s:.2f} s, peak RSS {mb} MB, exit {p.returncode}: "
              f"{(p.stdout or p.stderr).strip()[:200]}")
        ok &= p.returncode == 0
        chain_s, p, mb = run("audit", "verify")
        print(f"`trial audit verify` (the chain alone): {chain_s:.2f} s, peak RSS {mb} MB, exit {p.returncode}")

        with engine.begin() as c:
            sid = c.execute(text("SELECT id FROM therapy_session WHERE minutes IS NOT NULL ORDER BY id LIMIT 1")).scalar()
            c.execute(text("UPDATE therapy_session SET minutes = minutes + 5 WHERE id = :i"), {"i": sid})
        data_s, p, mb = run("audit", "verify", "--data")
        named = f"therapy_session {sid} minutes" in p.stderr
        print(f"after one session's minutes changed by SQL: {data_s:.2f} s, exit {p.returncode}, named: {named}")
        ok &= p.returncode == 1 and named
        engine.dispose()
    finally:
        if args.keep:
            print(f"kept: {os.environ['TRIAL_DATABASE_URL']}")
        else:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


def psycopg_autocommit(dsn: str):
    import psycopg
    return psycopg.connect(dsn, autocommit=True)


if __name__ == "__main__":
    sys.exit(main())
