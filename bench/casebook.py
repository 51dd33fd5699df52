#!/usr/bin/env python
"""Casebook and site-archive benchmark (issue 29), on PostgreSQL.

    .venv/bin/python bench/casebook.py [--participants 1000] [--sessions-per-child 40]
                                       [--assessments-per-child 8] [--changes-per-child 20] [--keep]

A fresh database bench_casebook_<pid> holds one site (AT01) of --participants randomized children,
built with export_scale.py's loader (sites, randomization lists and a manager through the services;
screenings, participants, allocations, sessions, counselling, assessments, status events and
deviations by COPY). Each child then gets --changes-per-child audit records (its creation, its
forms' creation and corrections with old and new values and a reason), COPYed into the audit trail
after its head: the trail's hash chain is not what is measured here (its records carry placeholder
hashes, so `trial audit verify` fails on this database; it is dropped afterwards unless --keep).

Measured:
- the full casebook PDF of the child with the most data (every form, session, change), built
  through trial.oversight.casebook as the command line reads it: the best and the median of 7
  (target: under 1 s);
- the casebook signatures' digest check (trial.oversight.signoff): a valid month-5 signature is
  written for every child (its digest computed as at signing), then `check_all` (what `trial
  checks run`, the hard lock and a site archive run) over all of them, and the read-only check of
  one child as a page computes it (per signature: target under 50 ms);
- `trial archive site --site AT01 --to DIR` in a process of its own, as an operator runs it, with
  its progress on stderr, its wall time and its peak RSS (targets: under 3 minutes and 500 MB);
  the manifest's digests are checked against the files.
Prints figures; exits 1 only if a check fails.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import statistics
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

import export_scale  # noqa: E402  the loader of the synthetic trial

import trial.models  # noqa: E402,F401

TARGET_CASEBOOK_S, TARGET_ARCHIVE_S, TARGET_MB = 1.0, 180.0, 500.0


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--participants", type=int, default=1000)
    ap.add_argument("--sessions-per-child", type=float, default=40)
    ap.add_argument("--assessments-per-child", type=int, default=8)
    ap.add_argument("--changes-per-child", type=int, default=20, help="audit records per child")
    ap.add_argument("--pg", default="127.0.0.1:5432")
    ap.add_argument("--keep", action="store_true")
    return ap.parse_args()


def add_audit(dsn: str, per_child: int, seed: int = 1) -> int:
    """Audit records for every child (see the module's doc): COPY after the chain's head."""
    rng = random.Random(seed)
    with psycopg.connect(dsn) as conn:
        cur = conn.cursor()
        head = cur.execute("SELECT coalesce(max(seq), 0) FROM audit_record").fetchone()[0]
        kids = cur.execute("SELECT id, study_id FROM participant ORDER BY id").fetchall()
        forms: dict[int, list] = {}
        for aid, pid, ins, values in cur.execute("SELECT id, participant_id, instrument, values FROM assessment"):
            forms.setdefault(pid, []).append((aid, ins, values))
        seq, n = head, 0
        with cur.copy("COPY audit_record (seq, at, actor_id, actor, action, entity, entity_id, field, old, new, reason, "
                      "reveals_allocation, prev_hash, hash) FROM STDIN") as copy:
            for pid, study_id in kids:
                rows = [("create", "participant", study_id, "sex", None, "female", None)]
                for aid, ins, values in forms.get(pid, []):
                    rows.append(("create", "assessment", str(aid), "values", None, json.dumps(values), None))
                    if len(rows) >= per_child:
                        break
                while len(rows) < per_child and forms.get(pid):
                    aid, ins, values = rng.choice(forms[pid])
                    key = rng.choice(list(values))
                    rows.append(("correct", "assessment", str(aid), f"values.{key}", str(values[key]),
                                 str(values[key] + 1), f"corrected after source data verification ({rng.randint(1, 999)})"))
                for action, entity, eid, field, old, new, reason in rows:
                    seq += 1
                    copy.write_row((seq, "2026-06-01 10:00:00", None, "bench@bench.trial", action, entity, eid, field,
                                    old, new, reason, False, "0" * 64, "0" * 64))
                    n += 1
        cur.execute("UPDATE audit_head SET seq = %s WHERE id = 1", (seq,))
        conn.commit()
    return n


TARGET_DIGEST_MS = 50.0


def digest_check(make_engine) -> bool:
    """A valid month-5 signature for every child, then the digest check over all of them (the
    periodic job's) and one child's read-only check (a page's). Returns whether it found none stale."""
    from sqlalchemy import select

    from trial.auth.models import User
    from trial.db import make_session_factory, utcnow
    from trial.esign.models import Signature
    from trial.oversight import signoff
    from trial.oversight.models import CasebookSignoff
    from trial.participants.models import Participant
    from trial.timeline import local_date
    engine = make_engine()
    with make_session_factory(engine)() as db:
        m = next(m for m in signoff.milestones(db) if m["key"] == "month5")
        user = db.execute(select(User).limit(1)).scalar_one()
        kids = list(db.execute(select(Participant).order_by(Participant.id)).scalars())
        t = time.perf_counter()
        for p in kids:
            now = utcnow()
            day = local_date(now, p.site.timezone)
            sig = Signature(user_id=user.id, printed_name=user.name, email=user.email, meaning="bench",
                            purpose="casebook_signoff:month5", signed_at=now)
            db.add(sig)
            db.flush()
            db.add(CasebookSignoff(participant_id=p.id, milestone="month5", signature_id=sig.id, signed_by_id=user.id,
                                   signed_at=now, covered_seq=0, covered_digest=signoff.digest(db, p, m, day),
                                   status="valid"))
        db.commit()
        written = time.perf_counter() - t
        t = time.perf_counter()
        stale = signoff.check_all(db)
        whole = time.perf_counter() - t
        db.rollback()
        times = []
        for p in kids[:20]:
            t = time.perf_counter()
            signoff.out_of_date(db, [p])
            times.append(time.perf_counter() - t)
    engine.dispose()
    per = whole / max(1, len(kids)) * 1000
    page = statistics.median(times) * 1000
    print(f"\ndigest check: {len(kids)} valid signatures written in {written:.1f} s; `check_all` over them "
          f"{whole:.1f} s ({per:.1f} ms per signature, target < {TARGET_DIGEST_MS:.0f} ms: "
          f"{'OK' if per < TARGET_DIGEST_MS else 'MISSED'}), {stale} found stale; one child's read-only check "
          f"(a page) median {page:.1f} ms")
    return stale == 0


def main() -> int:
    args = parse_args()
    admin, user = export_scale.admin_conn(args.pg)
    dbname = f"bench_casebook_{os.getpid()}"
    admin.execute(f'CREATE DATABASE "{dbname}"')
    export_scale.set_env(user, args.pg, dbname)
    dsn = f"postgresql://{user}@{args.pg}/{dbname}"
    out = Path(tempfile.mkdtemp(prefix="bench-archive-"))
    ok = True
    try:
        t0 = time.perf_counter()
        master = hashlib.sha256(b"bench casebook list seed").digest()
        manager_id = export_scale.setup(["AT01"], master)
        load = argparse.Namespace(participants=args.participants, sites=1, sessions_per_child=args.sessions_per_child,
                                  assessments_per_child=args.assessments_per_child, excluded=0.0, seed=1)
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            b = pool.submit(export_scale.build, dsn, master.hex(), manager_id, load).result()
        changes = add_audit(dsn, args.changes_per_child)
        print(f"database {dbname}: {args.participants} children at AT01 built in {time.perf_counter() - t0:.1f} s; "
              + ", ".join(f"{t} {n}" for t, n in b["counts"].items()) + f", audit records {changes}")

        from sqlalchemy import func, select

        from trial.course.models import TherapySession
        from trial.db import make_engine, make_session_factory
        from trial.oversight import casebook
        from trial.oversight.document import render
        from trial.participants.models import Assessment, Participant
        from trial.scope import CliActor
        engine = make_engine()
        with make_session_factory(engine)() as db:
            sid = db.execute(select(Participant.study_id).join(TherapySession, TherapySession.participant_id == Participant.id)
                             .group_by(Participant.study_id).order_by(func.count().desc()).limit(1)).scalar()
            n_sessions = db.execute(select(func.count()).select_from(TherapySession).join(
                Participant, Participant.id == TherapySession.participant_id).where(Participant.study_id == sid)).scalar()
            n_forms = db.execute(select(func.count()).select_from(Assessment).join(
                Participant, Participant.id == Assessment.participant_id).where(Participant.study_id == sid)).scalar()
            times, pages = [], 0
            for _ in range(7):
                db.rollback()
                t = time.perf_counter()
                cb = casebook.casebook(db, CliActor(), sid, "en")
                pdf, pages = render(cb.document)
                times.append(time.perf_counter() - t)
        engine.dispose()
        best, med = min(times), statistics.median(times)
        print(f"\nfull casebook of {sid} ({n_forms} forms, {n_sessions} sessions, {args.changes_per_child} changes): "
              f"{pages} pages, {len(pdf) / 1024:.0f} KiB; best {best * 1000:.0f} ms, median {med * 1000:.0f} ms "
              f"(target < {TARGET_CASEBOOK_S * 1000:.0f} ms): {'OK' if med < TARGET_CASEBOOK_S else 'MISSED'}")

        ok &= digest_check(make_engine)

        target = out / "AT01"
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "trial.cli", "archive", "site", "--site", "AT01", "--to", str(target)],
                           env=dict(os.environ), stdout=subprocess.PIPE, stderr=None, text=True, check=False)
        wall = time.perf_counter() - t
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
        if p.returncode:
            print(f"trial archive site failed: {p.stdout}")
            return 1
        manifest = json.loads((target / "manifest.json").read_text())
        size = sum(f["size"] for f in manifest["files"])
        print(f"\nsite archive (`trial archive site`, its own process): {manifest['participants']} casebooks, "
              f"{len(manifest['files'])} files, {size / 1024 / 1024:.0f} MiB in {wall:.1f} s "
              f"(target < {TARGET_ARCHIVE_S:.0f} s: {'OK' if wall < TARGET_ARCHIVE_S else 'MISSED'}); peak RSS "
              f"{rss:.0f} MB (target < {TARGET_MB:.0f} MB: {'OK' if rss < TARGET_MB else 'MISSED'})")
        bad = [f["path"] for f in manifest["files"]
               if hashlib.sha256((target / f["path"]).read_bytes()).hexdigest() != f["sha256"]]
        ok &= not bad and manifest["participants"] == args.participants
        print(f"check: every file's digest matches the manifest ({len(manifest['files'])} files): {'ok' if not bad else bad[:5]}")
    finally:
        shutil.rmtree(out, ignore_errors=True)
        if not args.keep:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
