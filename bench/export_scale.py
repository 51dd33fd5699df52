#!/usr/bin/env python
"""Export benchmark: the hard lock with its locked dataset bundles, and the CONSORT PDF/SVG, on a
synthetic trial at scale (PostgreSQL), against a floor that COPYs the same tables out as CSV.

    .venv/bin/python bench/export_scale.py [--participants 10000] [--sites 10] [--sessions-per-child 40]
                                           [--assessments-per-child 4] [--keep] [--profile]

A fresh database bench_export_<pid> is created (and dropped unless --keep). Sites, a manager and
the randomization lists go through the services; screenings, participants, allocations (the arms
of the committed lists, in slot order), sessions, counselling, assessments, status events and
deviations are bulk-loaded with COPY in a child process (so that its memory does not count in the
lock's figures). The hard lock is then signed once through trial.lock.service.create_lock and
timed (it answers once signed and committed); its bundles are then built by `trial worker
--until-idle --processes 2` as the app starts it, timed until both are ready, with each worker
process's peak RSS. Both bundles are then built again serially in this process, with a per-phase
breakdown taken by wrapping the export functions (SQL time per phase from SQLAlchemy cursor
events), and must give the same bytes. Targets: the lock under 1 s, both bundles under 12 s,
under 500 MB a process. Prints figures; exits 1 only if a check fails.
"""
from __future__ import annotations

import argparse
import collections
import cProfile
import datetime as dt
import functools
import hashlib
import io
import json
import math
import os
import pstats
import random
import secrets
import shutil
import sys
import tempfile
import time
import re
import subprocess
import zipfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import psycopg
from cryptography.fernet import Fernet

import trial.models  # noqa: F401  every model registered before the first session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the spawned build process imports this file as a module
SITES = ["AT01", "AU01", "BR01", "IL01", "IT01", "KR01", "NO01", "NO02", "UK01", "US01"]
EMAIL, PASSWORD = "bench-manager@bench.trial", "Quartz-harbour-4417-lantern"
TABLES = ["participant", "screening", "allocation", "therapy_session", "counselling_session", "assessment",
          "status_event", "deviation"]
TARGET_LOCK_SECONDS, TARGET_SECONDS, TARGET_MB = 1.0, 12.0, 500.0  # the lock answers; both bundles ready; per process
MB = 1024 * 1024


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--participants", type=int, default=10000, help="randomized participants")
    ap.add_argument("--sites", type=int, default=10, help="sites (one stratum each)")
    ap.add_argument("--sessions-per-child", type=float, default=40,
                    help="therapy sessions per randomized child on average over all arms; the music-therapy arms "
                         "get them in proportion to their sessions per week (default protocol: low 40, high 120)")
    ap.add_argument("--assessments-per-child", type=int, default=4,
                    help="(visit, instrument) records per child: ADOS-2 at baseline and 5 months, the rest drawn "
                         "from the other visits and SRS-2 (fewer after withdrawal or loss to follow-up)")
    ap.add_argument("--excluded", type=float, default=0.3, help="screenings not enrolled, per participant")
    ap.add_argument("--seed", type=int, default=1, help="seed of the synthetic data and of the randomization lists")
    ap.add_argument("--pg", default="127.0.0.1:5432", help="PostgreSQL host:port (trust auth)")
    ap.add_argument("--profile", action="store_true",
                    help="also cProfile one more build of the unblinded bundle (top functions printed, stats in bench/out)")
    ap.add_argument("--keep", action="store_true", help="keep the benchmark database")
    args = ap.parse_args()
    if args.participants < 1 or args.sites < 1 or args.sessions_per_child < 0 or args.assessments_per_child < 1:
        ap.error("--participants, --sites and --assessments-per-child must be >= 1, --sessions-per-child >= 0")
    return args


# --- database and environment ------------------------------------------------------------------

def admin_conn(hostport: str) -> tuple[psycopg.Connection, str]:
    host, port = hostport.split(":")
    for user in ("postgres", "root"):
        try:
            return psycopg.connect(host=host, port=port, user=user, dbname="test", autocommit=True), user
        except psycopg.OperationalError as e:
            err = e
    sys.exit(f"cannot connect to PostgreSQL at {hostport} database test: {err}")


def set_env(user: str, hostport: str, db: str) -> dict:
    os.environ.update({
        "TRIAL_DATABASE_URL": f"postgresql+psycopg://{user}@{hostport}/{db}",
        "TRIAL_SEAL_KEY": Fernet.generate_key().decode(),
        "TRIAL_SECRET_KEY": secrets.token_hex(32),
        "TRIAL_INSTANCE_PATH": tempfile.mkdtemp(prefix="bench-trial-"),
        "TRIAL_AUDIT_KEY": secrets.token_hex(32),
    })
    return dict(os.environ)


def site_codes(n: int) -> list[str]:
    extra = [f"X{chr(ord('A') + i // 100 % 26)}{i % 100:02d}" for i in range(max(0, n - len(SITES)))]
    return (SITES + extra)[:n]


def vm(field: str) -> int:
    """A field of /proc/self/status in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_hwm() -> bool:
    """Reset the peak RSS (VmHWM) to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# --- set-up through the services -----------------------------------------------------------------

def setup(codes: list[str], master: bytes) -> int:
    """Migrations, protocol, sites, the manager, open randomization (lists from ``master``)."""
    from trial.auth.service import create_user
    from trial.db import make_engine, make_session_factory
    from trial.migrate import upgrade
    from trial.protocol.service import ensure_default
    from trial.randomize.service import open_randomization
    from trial.scope import CliActor
    from trial.sites.service import create_site

    cli = CliActor(email="cli:bench")
    engine = make_engine()
    upgrade(engine)
    with make_session_factory(engine)() as db:
        ensure_default(db, cli)
        for code in codes:
            create_site(db, cli, {"code": code, "name": f"Bench {code}", "country": code[:2], "target": 0})
        user = create_user(db, cli, EMAIL, "Bench Manager", PASSWORD, [("manager", None)])
        open_randomization(db, cli, seed=master)
        db.commit()
        uid = user.id
    engine.dispose()
    return uid


# --- the bulk build (runs in a spawned child process) ---------------------------------------------

class Child:
    __slots__ = ("pid", "scr_id", "site", "site_id", "study_id", "sex", "dob", "screened", "consent", "baseline",
                 "enrolled_at", "rand_at", "rand_day", "stratum_id", "seq", "arm", "interv", "exit", "rng")


def _stop(c: Child, what: str) -> dt.date | None:
    """The first day without data of this kind: sessions stop at not_received / discontinued and at
    any exit; assessments and counselling stop at an exit (withdrawn, died, lost to follow-up)."""
    days = [e[1] for e in ([c.exit] if c.exit else []) + ([c.interv] if c.interv and what == "session" else [])]
    return min(days) if days else None


NOTES = ["Child initiated turn-taking on the drum for the first time.", "Short session: the child was tired.",
         'Parent joined; "call and response" game, good eye contact.', "Used the piano, then songs; calmer at the end.",
         "Stimmung gut, Kind spielte Glockenspiel – sehr aufmerksam.", "Line one of the note;\nline two, after a break.",
         "Long note. " + "The child moved between the drum, the lyre and the piano, imitating rhythms and "
         "initiating a song of his own; joint attention was sustained for several minutes, which is new. " * 2]
REASONS = {"withdrawn": ["family withdrew consent", "family moved abroad", "burden of the visits too high"],
           "lost_to_follow_up": ["no contact after three attempts", "moved, new address unknown"],
           "died": ["accident unrelated to the trial"],
           "discontinued_intervention": ["family stopped attending", "therapist left, no replacement",
                                         "child distressed by the sessions"],
           "not_received": ["family could not attend any session", "started private therapy outside the trial"]}
DEVIATIONS = [("visit_out_of_window", "Visit done outside the window: parent ill, rescheduled"),
              ("consent", 'Consent form version 1.1 used instead of 1.2; re-consented'),
              ("assessment", "ADOS module changed mid-assessment, \"module 2\" completed"),
              ("intervention", "Two sessions in one day to catch up after holidays"),
              ("blinding", "Parent mentioned the sessions to the assessor (Müller) at the 2-month visit"),
              ("eligibility", "Age at consent re-checked: within range by 3 days"),
              ("other", "Data entry delayed by a network outage at the site; entered from the paper forms, "
                        "checked against them by a second coordinator, no discrepancies found; the paper "
                        "forms are filed in the site binder, section 4, with the monitor's initials.")]


def build(dsn: str, master_hex: str, manager_id: int, args: argparse.Namespace) -> dict:
    """Plan the synthetic trial and COPY it in. Returns row counts and timings."""
    from trial.randomize.service import stratum_list
    from trial.status.service import DEVIATION_CATEGORIES
    from trial.timeline import add_months, visit_window

    t_start = time.perf_counter()
    rng = random.Random(args.seed)
    master = bytes.fromhex(master_hex)
    conn = psycopg.connect(dsn)
    cur = conn.cursor()
    pv_version, content = cur.execute("SELECT version, content FROM protocol_version ORDER BY version DESC LIMIT 1").fetchone()
    design = cur.execute("SELECT design FROM randomization_design").fetchone()[0]
    sites = cur.execute("SELECT id, code FROM site ORDER BY code").fetchall()
    strata = dict(cur.execute("SELECT key, id FROM stratum").fetchall())
    assert all(f"site={code}" in strata for _, code in sites), "one stratum per site expected (site-only design)"
    arms = {a["key"]: a for a in content["arms"]}
    music = [k for k, a in arms.items() if a["sessions_per_week"] > 0]
    criteria = content["criteria"]
    visits = {v["key"]: v for v in content["visits"]}
    instruments = {i["key"]: i for i in content["instruments"]}
    techniques = content["course"]["techniques"]
    months = content["course"]["months"]
    prim = content["primary_outcome"]
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    today = now.date()

    # the span of the session dates sets how far back the trial ran: everything lies in the past
    wsum = sum(a["weight"] for a in arms.values())
    per_week_mean = sum(a["weight"] * a["sessions_per_week"] for a in arms.values()) / wsum
    weeks_est = args.sessions_per_child / per_week_mean if per_week_mean else 0
    last_rand = today - dt.timedelta(days=max(400, math.ceil(7 * weeks_est * 1.3) + 30))
    span = 3 * 365

    children: list[Child] = []
    for i in range(args.participants):
        c = Child()
        c.rng = random.Random(args.seed * 1_000_003 + i)
        c.site = i % len(sites)
        c.site_id = sites[c.site][0]
        c.rand_at = dt.datetime.combine(last_rand - dt.timedelta(days=rng.randrange(span)), dt.time(8)) + \
            dt.timedelta(seconds=rng.randrange(10 * 3600))
        c.rand_day = c.rand_at.date()
        c.consent = c.rand_day - dt.timedelta(days=rng.randint(7, 35))
        c.screened = c.consent - dt.timedelta(days=rng.randint(0, 14))
        c.baseline = c.consent + dt.timedelta(days=rng.randint(0, (c.rand_day - c.consent).days))
        c.dob = c.consent - dt.timedelta(days=rng.randint(4 * 366, 6 * 365 + 300))
        c.sex = "male" if rng.random() < 0.8 else "female"
        c.enrolled_at = dt.datetime.combine(c.consent, dt.time(9)) + dt.timedelta(seconds=rng.randrange(8 * 3600))
        children.append(c)

    # allocations: per stratum in randomization order, the arm of the committed list at each slot
    stratum_rows = []
    for site_id, code in sites:
        key = f"site={code}"
        sl = stratum_list(design, master, key)
        members = sorted((c for c in children if c.site_id == site_id), key=lambda c: c.rand_at)
        for seq, c in enumerate(members, 1):
            c.stratum_id, c.seq, c.arm = strata[key], seq, sl.arm_at(seq)
        blocks = design["initial_blocks"]
        while sl.length_of_blocks(blocks) < len(members):  # as randomize() extends an exhausted list
            blocks += design["extension_blocks"]
        stratum_rows.append((len(members), blocks, sl.length_of_blocks(blocks), strata[key]))
        for n, c in enumerate(sorted(members, key=lambda c: c.enrolled_at), 1):
            c.study_id = f"{code}-{n:04d}"
    for pid, c in enumerate(sorted(children, key=lambda c: (c.enrolled_at, c.study_id)), 1):
        c.pid = pid

    # status events: one exit at most, and for the arms' intervention not_received / discontinued
    for c in children:
        r = c.rng
        x = r.random()
        kind = "withdrawn" if x < 0.01 else "lost_to_follow_up" if x < 0.04 else "died" if x < 0.0405 else None
        c.exit = (kind, c.rand_day + dt.timedelta(days=r.randint(20, 330)), r.choice(REASONS[kind])) if kind else None
        y, c.interv = r.random(), None
        if c.arm in music:
            if y < 0.02:
                c.interv = ("not_received", c.rand_day + dt.timedelta(days=r.randint(7, 28)), r.choice(REASONS["not_received"]))
            elif y < 0.06:
                c.interv = ("discontinued_intervention", c.rand_day + dt.timedelta(days=r.randint(30, 140)),
                            r.choice(REASONS["discontinued_intervention"]))
        elif y < 0.01:
            c.interv = ("not_received", c.rand_day + dt.timedelta(days=r.randint(7, 28)), "family declined usual care")
        if c.interv and c.exit and c.interv[1] >= c.exit[1]:
            c.interv = None

    # screenings: one eligible per participant plus the ones not enrolled
    answers_ok = {k["key"]: k["qualifying_answer"] for k in criteria}
    screenings = [(c.screened, c.site_id, answers_ok, False, None, "eligible", [], c) for c in children]
    for _ in range(round(args.participants * args.excluded)):
        on = last_rand - dt.timedelta(days=rng.randrange(span) + 10)
        site_id = sites[rng.randrange(len(sites))][0]
        x = rng.random()
        if x < 0.6:
            failed = rng.sample([k["key"] for k in criteria], rng.choice([1, 1, 1, 2]))
            answers = {k: (not v if k in failed else v) for k, v in answers_ok.items()}
            failed = [k["key"] for k in criteria if k["key"] in failed]
            screenings.append((on, site_id, answers, False, None, "not_eligible", failed, None))
        elif x < 0.9:
            screenings.append((on, site_id, answers_ok, True, None, "declined", [], None))
        else:
            screenings.append((on, site_id, answers_ok, False, rng.choice(["family moved before consent",
                                                                           "no therapist available in the area"]),
                               "other", [], None))
    screenings.sort(key=lambda s: (s[0], s[1], s[7].pid if s[7] else 0))
    next_scr = cur.execute("SELECT coalesce(max(id), 0) FROM screening").fetchone()[0] + 1
    next_pid = cur.execute("SELECT coalesce(max(id), 0) FROM participant").fetchone()[0]
    for c in children:
        c.pid += next_pid
    plan_s = time.perf_counter() - t_start

    counts, copy_s = {}, {}

    def copy(table: str, cols: list[str], rows) -> None:
        t0, n = time.perf_counter(), 0
        with cur.copy(f'COPY {table} ({", ".join(chr(34) + c + chr(34) for c in cols)}) FROM STDIN') as cp:
            for row in rows:
                cp.write_row(row)
                n += 1
        counts[table], copy_s[table] = n, time.perf_counter() - t0

    def screening_rows():
        for n, (on, site_id, answers, declined, other, outcome, failed, c) in enumerate(screenings, next_scr):
            if c is not None:
                c.scr_id = n
            yield (n, site_id, on, json.dumps(answers), declined, other, outcome, json.dumps(failed), pv_version,
                   manager_id, dt.datetime.combine(on, dt.time(12)))
    copy("screening", ["id", "site_id", "screened_on", "answers", "declined", "other_reason", "outcome",
                       "failed_criteria", "protocol_version", "created_by_id", "created_at"], screening_rows())
    by_pid = sorted(children, key=lambda c: c.pid)
    copy("participant", ["id", "study_id", "site_id", "screening_id", "consent_date", "date_of_birth", "sex", "strata",
                         "enrolled_at", "created_by_id"],
         ((c.pid, c.study_id, c.site_id, c.scr_id, c.consent, c.dob, c.sex, "{}", c.enrolled_at, manager_id) for c in by_pid))
    copy("allocation", ["participant_id", "study_id", "site_id", "stratum_id", "seq", "arm", "details", "idempotency_key",
                        "randomized_at", "randomized_by_id"],
         ((c.pid, c.study_id, c.site_id, c.stratum_id, c.seq, c.arm, None, f"bench-{c.pid}", c.rand_at, manager_id)
          for c in sorted(children, key=lambda c: c.rand_at)))

    # therapy sessions: the music arms share the total in proportion to their sessions per week
    music_weekly = sum(arms[c.arm]["sessions_per_week"] for c in children if c.arm in music)
    weeks = round(args.sessions_per_child * len(children) / music_weekly) if music_weekly else 0

    def session_rows():
        rows = []
        for c in children:
            if c.arm not in music or (c.interv and c.interv[0] == "not_received"):
                continue
            r, spw = c.rng, arms[c.arm]["sessions_per_week"]
            offsets = sorted({round(k * 7 / spw) for k in range(spw)})
            start = c.rand_day + dt.timedelta(days=r.randint(1, 7))
            end = add_months(c.rand_day, months) - dt.timedelta(days=1)
            stop = _stop(c, "session")
            for w in range(weeks):
                for off in offsets:
                    d = start + dt.timedelta(days=7 * w + off)
                    if stop and d >= stop:
                        break
                    x = r.random()
                    att = "attended" if x < 0.86 else "cancelled" if x < 0.95 else "no_show"
                    note = r.choice(NOTES) if r.random() < 0.03 else None
                    if att == "attended":
                        tech = json.dumps(sorted(r.sample(techniques, r.randint(1, 3))))
                        rows.append((c.pid, d, att, r.choice((30, 30, 30, 25, 35, 40)), tech, r.randint(1, 5), note, d > end))
                    else:
                        rows.append((c.pid, d, att, None, "[]", None, note, d > end))
        rows.sort(key=lambda s: (s[1], s[0]))  # logged day by day, as in the real system
        for s in rows:
            yield s + (manager_id, dt.datetime.combine(s[1], dt.time(18)))
    copy("therapy_session", ["participant_id", "held_on", "attendance", "minutes", "techniques", "engagement", "note",
                             "outside_course", "logged_by_id", "logged_at"], session_rows())

    def counselling_rows():
        rows = []
        planned = content["course"]["parent_counselling_sessions"]
        for c in children:
            stop = _stop(c, "data")
            for n in range(planned):
                d = c.rand_day + dt.timedelta(days=10 + n * 50 + c.rng.randint(-5, 5))
                if stop and d >= stop:
                    break
                rows.append((c.pid, n + 1, d, c.rng.random() < 0.9, None, manager_id, dt.datetime.combine(d, dt.time(17))))
        rows.sort(key=lambda s: (s[2], s[0]))
        return rows
    copy("counselling_session", ["participant_id", "number", "held_on", "attended", "note", "logged_by_id", "logged_at"],
         counselling_rows())

    def values(ins: str, r: random.Random, c: Child, visit: str) -> dict:
        effect = 0 if visit == "baseline" or c.arm not in music else arms[c.arm]["sessions_per_week"] * 0.3
        if ins == "ados2":
            sa = min(20, max(0, round(r.gauss(12 - effect, 3))))
            return {"social_affect": sa, "rrb": r.randint(1, 8), "css": min(10, max(1, round(r.gauss(7, 1.5))))}
        if ins == "srs2":
            return {"total_t": min(90, max(30, round(r.gauss(72, 9))))}
        return {f["key"]: r.randint(f.get("min") or 0, f.get("max") or 10) for f in instruments[ins]["fields"]}

    def assessment_rows():
        rows = []
        required = [("baseline", prim["instrument"]), (prim["visit"], prim["instrument"])]
        others = [(v, i) for i in instruments for v in instruments[i]["visits"] if (v, i) not in required]
        for c in children:
            r = c.rng
            chosen = required[:args.assessments_per_child] + r.sample(others, min(len(others), max(0, args.assessments_per_child - 2)))
            stop = _stop(c, "data")
            for visit, ins in chosen:
                if visit == "baseline":
                    d, oow = c.baseline, False
                else:
                    lo, target, hi = visit_window(visits[visit], c.rand_day)
                    oow = r.random() < 0.03
                    d = (hi + dt.timedelta(days=r.randint(1, 10))) if oow else lo + dt.timedelta(days=r.randint(0, (hi - lo).days))
                    if (stop and d >= stop) or d >= today:
                        continue
                guess = conf = None
                if instruments[ins]["blinded"] and visit != "baseline" and r.random() < 0.85:
                    right = "music_therapy" if c.arm in music else "usual_care"
                    wrong = "usual_care" if c.arm in music else "music_therapy"
                    x = r.random()
                    guess = right if x < 0.42 else wrong if x < 0.7 else "unsure"
                    conf = r.randint(1, 5)
                rows.append((c.pid, visit, ins, d, json.dumps(values(ins, r, c, visit)), oow, guess, conf, pv_version,
                             manager_id, dt.datetime.combine(d, dt.time(16))))
        rows.sort(key=lambda a: (a[3], a[0]))
        return rows
    copy("assessment", ["participant_id", "visit", "instrument", "performed_on", "values", "out_of_window",
                        "allocation_guess", "guess_confidence", "protocol_version", "entered_by_id", "entered_at"],
         assessment_rows())

    events = sorted([(c.pid,) + e for c in children for e in (c.interv, c.exit) if e], key=lambda e: (e[2], e[0]))
    copy("status_event", ["participant_id", "type", "on", "reason", "recorded_by_id", "recorded_at"],
         ((pid, kind, on, reason, manager_id, dt.datetime.combine(on, dt.time(15))) for pid, kind, on, reason in events))

    def deviation_rows():
        rows = []
        for c in children:
            if c.rng.random() < 0.03:
                cat, text = c.rng.choice(DEVIATIONS)
                assert cat in DEVIATION_CATEGORIES
                if cat == "intervention" and c.arm not in music:
                    cat, text = DEVIATIONS[0]
                d = min(c.rand_day + dt.timedelta(days=c.rng.randint(-5, 200)), today - dt.timedelta(days=1))
                rows.append((c.pid, max(d, c.consent), cat, text, manager_id, dt.datetime.combine(max(d, c.consent), dt.time(14))))
        return sorted(rows, key=lambda r: (r[1], r[0]))
    copy("deviation", ["participant_id", "on", "category", "description", "recorded_by_id", "recorded_at"], deviation_rows())

    t0 = time.perf_counter()
    cur.executemany("UPDATE stratum SET last_seq = %s, blocks = %s, length = %s WHERE id = %s", stratum_rows)
    per_site = collections.Counter(c.site_id for c in children)
    cur.executemany("INSERT INTO site_sequence (site_id, last_number) VALUES (%s, %s) ON CONFLICT (site_id) "
                    "DO UPDATE SET last_number = EXCLUDED.last_number", sorted(per_site.items()))
    for t in ("screening", "participant"):
        cur.execute(f"SELECT setval(pg_get_serial_sequence('{t}', 'id'), (SELECT max(id) FROM {t}))")
    conn.commit()
    conn.autocommit = True
    cur.execute("VACUUM ANALYZE " + ", ".join(TABLES + ["stratum"]))
    conn.close()
    copy_s["strata, sequences, VACUUM ANALYZE"] = time.perf_counter() - t0
    return {"counts": counts, "copy_s": copy_s, "plan_s": plan_s, "weeks": weeks,
            "arms": dict(collections.Counter(c.arm for c in children)), "rss_mb": vm("VmHWM") / MB}


# --- instrumentation: wall time and SQL time per export phase ------------------------------------

class Phases:
    """Wraps module attributes with timers. A phase's time includes the phases called inside it;
    SQL time (cursor execute, including the transfer of the rows) goes to the innermost phase."""

    def __init__(self, engine):
        self.stack: list[str] = []
        self.variant = ""
        self.wall = collections.defaultdict(float)
        self.sql = collections.defaultdict(float)
        self.calls = collections.Counter()
        self.patched = []
        self.engine = engine
        from sqlalchemy import event
        self._event = event
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn, cursor, statement, parameters, context, executemany):
        conn.info.setdefault("bench_t0", []).append(time.perf_counter())

    def _after(self, conn, cursor, statement, parameters, context, executemany):
        dt_ = time.perf_counter() - conn.info["bench_t0"].pop()
        self.sql[self._key(self.stack[-1] if self.stack else "outside")] += dt_

    def _key(self, name: str) -> tuple[str, str]:
        return (self.variant, name)

    def wrap(self, owner, attr: str, name: str, variant_arg: bool = False, thread: bool = False) -> None:
        """``thread``: a function the zip's own thread runs (timed apart: it runs beside the build)."""
        fn = getattr(owner, attr)

        @functools.wraps(fn)
        def in_thread(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.wall[(self.variant, name)] += time.perf_counter() - t0
                self.calls[(self.variant, name)] += 1

        @functools.wraps(fn)
        def timed(*a, **kw):
            outer = self.variant
            if variant_arg:
                self.variant = "blinded" if kw.get("blinded", a[3] if len(a) > 3 else False) else "unblinded"
            key = self._key(name)
            self.stack.append(name)
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.wall[key] += time.perf_counter() - t0
                self.calls[key] += 1
                self.stack.pop()
                self.variant = outer
        setattr(owner, attr, in_thread if thread else timed)
        self.patched.append((owner, attr, fn))

    def reset(self) -> None:
        self.wall.clear(), self.sql.clear(), self.calls.clear()

    def close(self) -> None:
        for owner, attr, fn in reversed(self.patched):
            setattr(owner, attr, fn)
        self._event.remove(self.engine, "before_cursor_execute", self._before)
        self._event.remove(self.engine, "after_cursor_execute", self._after)


BUNDLE_PHASES = [("build_tables", "dataset.build_tables (queries + rows)"), ("to_csv", "formats.to_csv"),
                 ("columns", "formats.columns (typed columns)"), ("to_xpt", "formats.to_xpt (statfiles)"),
                 ("to_dta", "formats.to_dta (statfiles)"), ("dictionary_csv", "formats.dictionary_csv"),
                 ("reports", "reports (CONSORT, Table 1, ...)"),
                 ("zip_wait", "waiting for the zip's thread at the end")]
THREAD_PHASES = [("stream", "zip threads: the ODM snapshots (made, compressed, hashed)"),
                 ("analysis", "zip threads: the primary analyses (trial.analysis.lmm)")]


def instrument(engine) -> Phases:
    from trial.exports import bundle, drawing, formats, service
    from trial.lock import service as lock_service
    ph = Phases(engine)
    ph.wrap(bundle, "build_tables", "build_tables")
    for name in ("to_csv", "columns", "to_xpt", "to_dta", "dictionary_csv"):
        ph.wrap(formats, name, name)
    ph.wrap(bundle, "_analysis_files", "analysis", thread=True)
    ph.wrap(bundle, "_report_files", "reports")
    ph.wrap(bundle._Zip, "close", "zip_wait")
    ph.wrap(bundle._Zip, "_stream", "stream", thread=True)
    ph.wrap(service, "consort", "consort")   # exports.service bound it at import
    ph.wrap(drawing, "pdf", "drawing.pdf")
    ph.wrap(drawing, "svg", "drawing.svg")
    for name in ("baseline_table",):
        from trial.exports import reports
        ph.wrap(reports, name, name)
    ph.wrap(lock_service, "sign", "sign")
    return ph


def print_breakdown(ph: Phases, total_s: float) -> None:
    """The serial build of both variants (one read of the database, the tables they share made
    once), phase by phase: wall time in the build's own thread, and apart the zip threads' time."""
    print("\nper-phase breakdown of the serial build of both variants (wall s in the build's thread; SQL = cursor "
          "execute,\n with psycopg that includes receiving the rows; the zip threads run beside it):")
    named = 0.0  # the named phases do not nest inside one another
    for key, label in BUNDLE_PHASES:
        w, sql = ph.wall.get(("", key), 0.0), ph.sql.get(("", key), 0.0)
        named += w
        print(f"  {label:<48} {w:8.2f} ({sql:5.2f} sql)" if ("", key) in ph.calls else f"  {label:<48} {'-':>8}")
    print(f"  {'the rest (README, syntax, queueing)':<48} {total_s - named:8.2f}")
    for key, label in THREAD_PHASES:
        print(f"  {label:<48} {ph.wall.get(('', key), 0.0):8.2f}")
    print(f"  {'total':<48} {total_s:8.2f}")


# --- the floor ------------------------------------------------------------------------------------

def floor(dsn: str) -> tuple[float, int, dict]:
    sizes = {}
    with psycopg.connect(dsn) as c, c.cursor() as cur:
        t0 = time.perf_counter()
        for t in TABLES:
            n = 0
            with cur.copy(f"COPY (SELECT * FROM {t}) TO STDOUT WITH CSV HEADER") as cp:
                for block in cp:
                    n += len(block)
            sizes[t] = n
        return time.perf_counter() - t0, sum(sizes.values()), sizes


# --- figures --------------------------------------------------------------------------------------

def target(ok: bool, text: str) -> None:
    print(f"  {'MET   ' if ok else 'MISSED'} {text}")


def check(ok: bool, text: str) -> bool:
    print(f"  {'OK  ' if ok else 'FAIL'} {text}")
    return ok


def bundle_contents(content: bytes) -> tuple[dict[str, int], list[tuple[str, int]]]:
    """Uncompressed bytes per folder of a bundle, and its largest files."""
    out, files = collections.Counter(), []
    with zipfile.ZipFile(io.BytesIO(content)) as z:
        for info in z.infolist():
            parts = info.filename.split("/")
            out[parts[1] if len(parts) > 2 else "top"] += info.file_size
            files.append(("/".join(parts[1:]), info.file_size))
    return dict(out), sorted(files, key=lambda f: -f[1])[:4]


def main() -> int:
    args = parse_args()
    admin, user = admin_conn(args.pg)
    dbname = f"bench_export_{os.getpid()}"
    admin.execute(f'CREATE DATABASE "{dbname}"')
    env = set_env(user, args.pg, dbname)
    dsn = f"postgresql://{user}@{args.pg}/{dbname}"
    out_dir = ROOT / "bench" / "out"
    ok = True
    try:
        codes = site_codes(args.sites)
        master = hashlib.sha256(f"bench export_scale list seed {args.seed}".encode()).digest()  # same lists each run
        t0 = time.perf_counter()
        manager_id = setup(codes, master)
        setup_s = time.perf_counter() - t0
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            b = pool.submit(build, dsn, master.hex(), manager_id, args).result()
        build_s = time.perf_counter() - t0
        print(f"database {dbname}; synthetic trial built in {build_s:.1f} s (services: migrations, protocol, "
              f"{len(codes)} sites, manager, open randomization {setup_s:.1f} s; plan {b['plan_s']:.1f} s; "
              f"build process peak RSS {b['rss_mb']:.0f} MB)")
        for t, n in b["counts"].items():
            print(f"  {t:<20} {n:>8} rows  COPY {b['copy_s'][t]:5.2f} s")
        print(f"  strata, site sequences, VACUUM ANALYZE {b['copy_s']['strata, sequences, VACUUM ANALYZE']:.1f} s;"
              f" arms {b['arms']}; {b['weeks']} weeks of sessions per music-therapy child")

        from sqlalchemy import func, select

        from trial.auth.models import User
        from trial.db import make_engine, make_session_factory
        from trial.esign.models import Signature
        from trial.lock.models import LockBundle
        from trial.lock.service import build_status, create_lock, lift_lock
        from trial.randomize.service import verify
        from trial.scope import CliActor
        engine = make_engine()
        factory = make_session_factory(engine)
        with factory() as db:
            v = verify(db, CliActor(), master)
        ok &= check(v.ok, f"{v.checked} allocations follow the committed lists, slots 1..k per stratum"
                    + "".join(f"\n       {p}" for p in v.problems[:5]))

        # the floor, twice (the first run also warms the caches the lock will read); the best counts
        floor_s, floor_bytes, sizes = min(floor(dsn) for _ in range(2))
        print(f"\nfloor: COPY (SELECT * FROM t) TO STDOUT WITH CSV HEADER of {len(TABLES)} tables: {floor_s:.2f} s, "
              f"{floor_bytes / MB:.1f} MB (" + ", ".join(f"{t} {n / MB:.1f}" for t, n in sizes.items()) + ")")

        # the hard lock, timed: it answers once signed and committed; the bundles are built after it by
        # a worker. First a worker kept running (`trial worker`, the deployment's: woken by the lock's
        # NOTIFY), then, after the lock is lifted, a second hard lock whose worker the app starts
        # (`trial worker --until-idle`, TRIAL_LOCK_BUILDER=worker)
        t0 = time.perf_counter()
        import trial.exports.bundle  # noqa: F401,E401  imports are not part of the lock
        print(f"\n(imports of the export stack before timing: {time.perf_counter() - t0:.1f} s)")
        db = factory()
        manager = db.execute(select(User).where(User.email == EMAIL)).scalar_one()
        _ = list(manager.roles)
        resident = subprocess.Popen([sys.executable, "-m", "trial.cli", "worker", "--poll", "60"], env=dict(os.environ),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        waiting = resident.stdout.readline()
        ok &= check("waiting for hard locks" in waiting, f"a worker waits for hard locks ({waiting.strip()})")
        t0 = time.perf_counter()
        lock = create_lock(db, manager, "hard", "bench lock", PASSWORD)
        db.commit()
        lock_s = time.perf_counter() - t0
        print(f"hard lock (create_lock + commit: signature, CONSORT check, seal): {lock_s:.2f} s")
        out = [resident.stdout.readline() for _ in range(2)]
        resident_s = time.perf_counter() - t0 - lock_s
        resident.terminate()
        resident.wait(30)
        print(f"both bundles built by a waiting worker (`trial worker`, woken by the commit), from the commit: {resident_s:.2f} s")
        print("".join(f"  {line}" for line in out), end="")
        db.rollback()
        st = build_status(db, lock.id)
        ok &= check(st["status"] == "ready", f"the lock's bundles are ready ({st})")
        first = lock
        lift_lock(db, manager, first.id, "bench: the second lock", PASSWORD)
        db.commit()
        lock = create_lock(db, manager, "hard", "bench lock, again", PASSWORD)
        db.commit()
        t0 = time.perf_counter()
        worker = subprocess.run([sys.executable, "-m", "trial.cli", "worker", "--until-idle"], env=dict(os.environ),
                                capture_output=True, text=True)
        bundles_s = time.perf_counter() - t0
        print(f"both bundles of a second hard lock built by `trial worker --until-idle`, started as the app starts it "
              f"(its start included): {bundles_s:.2f} s")
        print("".join(f"  {line}\n" for line in worker.stdout.splitlines()), end="")
        ok &= check(worker.returncode == 0, "the worker ended without an error" + (f": {worker.stderr[-800:]}" if worker.returncode else ""))
        lines = "".join(out) + worker.stdout
        peaks = [float(m) for m in re.findall(r"\(peak RSS (\d+) MB", lines)]
        peaks += [float(m) for m in re.findall(r"helper peak RSS (\d+) MB", lines)]
        peak_mb = max(peaks) if peaks else float("nan")
        db.rollback()
        st = build_status(db, lock.id)
        built = st["status"] == "ready"
        ok &= check(built, f"the second lock's bundles are ready ({st})")
        db.rollback()
        first_shas = dict(db.execute(select(LockBundle.variant, LockBundle.manifest_sha256).where(LockBundle.lock_id == first.id)).all())
        ok &= check(set(first_shas) == {"unblinded", "blinded"}, "the first lock's bundles were stored by the waiting worker")
        ph = instrument(engine)

        rows = db.execute(select(LockBundle.variant, func.octet_length(LockBundle.content), LockBundle.sha256,
                                 LockBundle.manifest_sha256).where(LockBundle.lock_id == lock.id).order_by(LockBundle.variant)).all()
        print("\nbundles:")
        for variant, size, sha, msha in rows:
            content = db.execute(select(LockBundle.content).where(LockBundle.lock_id == lock.id,
                                                                 LockBundle.variant == variant)).scalar_one()
            inner, largest = bundle_contents(content)
            print(f"  {variant:<10} {size / MB:7.1f} MB zip, {sum(inner.values()) / MB:7.1f} MB unzipped ("
                  + ", ".join(f"{k} {n / MB:.1f}" for k, n in sorted(inner.items())) + f"); sha256 {sha[:16]}...")
            print(f"  {'':<10} largest: " + ", ".join(f"{name} {n / MB:.1f} MB" for name, n in largest))
            del content
        stored = {variant: sha for variant, _, sha, _ in rows}
        ok &= check(set(stored) == {"unblinded", "blinded"}, "one bundle per variant (unblinded, blinded)")
        db.rollback()

        # the same bundles built serially in this process, instrumented: the same bytes, and where the time goes
        from trial.exports.bundle import build_bundles
        with factory() as rdb:
            lk = rdb.get(type(lock), lock.id)
            sig = rdb.get(Signature, lk.signature_id)
            ph.reset()
            rss0 = vm("VmRSS")
            hwm_reset = reset_hwm()
            t0 = time.perf_counter()
            again = build_bundles(rdb, lk, sig)
            serial_s = time.perf_counter() - t0
            serial_peak = vm("VmHWM") / MB if hwm_reset else float("nan")
            rdb.rollback()
        print(f"\nserial build of both bundles in one process (as before the worker): {serial_s:.2f} s, "
              f"peak RSS {serial_peak:.0f} MB (from {rss0 / MB:.0f} MB)")
        print_breakdown(ph, serial_s)
        ok &= check(all(again[v][1] == stored[v] for v in stored), "the worker's bundles are the bytes of a serial build")
        del again

        # CONSORT, as the manager asks for it
        from trial.exports.service import consort_pdf, consort_svg
        ph.reset()
        with factory() as rdb:
            mgr = rdb.get(User, manager.id)
            t0 = time.perf_counter()
            pdf = consort_pdf(rdb, mgr)
            pdf_s = time.perf_counter() - t0
            parts = {k: ph.wall[("", k)] for k in ("consort", "baseline_table", "drawing.pdf")}
            sql = sum(ph.sql.values())
            ph.reset()
            t0 = time.perf_counter()
            svg = consort_svg(rdb, mgr)
            svg_s = time.perf_counter() - t0
        print(f"\nCONSORT PDF {pdf_s:.2f} s ({len(pdf) / 1024:.0f} KB; counts {parts['consort']:.2f} s, baseline table "
              f"{parts['baseline_table']:.2f} s, drawing {parts['drawing.pdf']:.2f} s; SQL {sql:.2f} s); "
              f"SVG {svg_s:.2f} s ({len(svg) / 1024:.0f} KB; counts {ph.wall[('', 'consort')]:.2f} s)")
        ph.close()
        db.close()

        if args.profile:
            from trial.exports.bundle import build_bundle
            out_dir.mkdir(exist_ok=True)
            prof = out_dir / f"export_scale-{os.getpid()}.prof"
            with factory() as rdb:
                lk = rdb.get(type(lock), lock.id)
                sig = rdb.get(Signature, lk.signature_id)
                pr = cProfile.Profile()
                pr.runcall(build_bundle, rdb, lk, sig, blinded=False)
                rdb.rollback()
            pr.dump_stats(prof)
            print(f"\ncProfile of one unblinded build_bundle (stats in {prof.relative_to(ROOT)}), top by own time:")
            buf = io.StringIO()
            pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(22)
            print("\n".join("  " + line for line in buf.getvalue().splitlines()[5:] if line.strip()))
            buf = io.StringIO()
            pstats.Stats(pr, stream=buf).sort_stats("cumulative").print_stats(r"trial/exports", 16)
            print("  by cumulative time, trial/exports only:")
            print("\n".join("  " + line for line in buf.getvalue().splitlines()[5:] if line.strip()))
        engine.dispose()

        ratio = bundles_s / floor_s
        print(f"\nsummary ({args.participants} participants, {len(codes)} sites, "
              f"{b['counts']['therapy_session']} sessions, {b['counts']['assessment']} assessments):")
        print(f"  build {build_s:.1f} s; hard lock {lock_s:.2f} s; both bundles by a waiting worker {resident_s:.2f} s, "
              f"by the worker the app starts {bundles_s:.2f} s "
              f"(serial in one process {serial_s:.2f} s); floor {floor_s:.2f} s ({floor_bytes / MB:.1f} MB); ratio {ratio:.1f}x")
        print(f"  peak RSS of a worker process {peak_mb:.0f} MB ({', '.join(f'{x:.0f}' for x in peaks)} MB)")
        print(f"  CONSORT PDF {pdf_s:.2f} s, SVG {svg_s:.2f} s")
        print("targets:")
        target(lock_s < TARGET_LOCK_SECONDS, f"the lock answers in under {TARGET_LOCK_SECONDS:.0f} s ({lock_s:.2f} s)")
        target(built and resident_s < TARGET_SECONDS, f"both bundles ready in under {TARGET_SECONDS:.0f} s by a waiting worker "
               f"({resident_s:.1f} s from the commit)" + ("" if built else ", but the builds FAILED"))
        target(built and bundles_s < TARGET_SECONDS, f"both bundles ready in under {TARGET_SECONDS:.0f} s by the worker the app "
               f"starts ({bundles_s:.1f} s with its start)" + ("" if built else ", but the builds FAILED"))
        target(peak_mb < TARGET_MB, f"peak memory per process under {TARGET_MB:.0f} MB ({peak_mb:.0f} MB RSS)")
    finally:
        if args.keep:
            print(f"\nkept database {dbname}: TRIAL_DATABASE_URL={env['TRIAL_DATABASE_URL']} TRIAL_SEAL_KEY={env['TRIAL_SEAL_KEY']} "
                  f"TRIAL_AUDIT_KEY={env['TRIAL_AUDIT_KEY']}")
        else:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        admin.close()
        shutil.rmtree(env["TRIAL_INSTANCE_PATH"], ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
