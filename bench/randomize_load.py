#!/usr/bin/env python
"""Load benchmark: concurrent randomizations through the JSON API (gunicorn, PostgreSQL), against
a floor that runs the same locking transaction straight through psycopg, then integrity checks.

    .venv/bin/python bench/randomize_load.py [--participants N] [--clients C] [--rounds R] [--workers W]

gunicorn runs with config/gunicorn.conf.py (sync workers, 3 per core) unless told otherwise. A
fresh database bench_randomize_<pid> is created (and dropped unless --keep). R x N ready
participants are prepared through the services for the app runs, R x N more by plain SQL for the
floor runs; R rounds of N randomizations each, app first, then floor, and the targets are judged
on the median round (one round on a shared machine can be off by a third). The floor
writes a placeholder arm (see ``floor_one``), so the arms are checked against the committed lists
after the app run, before the floor runs. CPU per randomization is split between this process (the
clients), the gunicorn workers, PostgreSQL and the rest of the machine ("other": anything else
running at the same time). Prints figures; exits 1 only if an integrity check fails.
"""
from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import random
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import requests
from cryptography.fernet import Fernet

import trial.models  # noqa: F401  every model registered before the first session

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SITES = ["AT01", "AU01", "BR01", "IL01", "IT01", "KR01", "NO01", "NO02", "UK01", "US01"]
EMAIL = "bench-coordinator@bench.trial"
TARGET_RATE, TARGET_P99_MS, TARGET_RATIO = 200.0, 150.0, 4.0


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--participants", type=int, default=2000, help="randomizations per run (app and floor)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients (HTTP and floor)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs of N each, app then floor; the targets are judged on the median round")
    ap.add_argument("--workers", type=int, help="gunicorn workers (default: config/gunicorn.conf.py, 3 per core)")
    ap.add_argument("--worker-class", choices=["sync", "gthread"], help="gunicorn worker class (default: the config's, sync)")
    ap.add_argument("--threads", type=int, help="threads per gthread worker")
    ap.add_argument("--port", type=int, default=0, help="gunicorn port (0: a free one)")
    ap.add_argument("--pg", default="127.0.0.1:5432", help="PostgreSQL host:port (trust auth)")
    ap.add_argument("--keep", action="store_true", help="keep the benchmark database")
    return ap.parse_args()


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


# --- preparation (service functions, in-process) -----------------------------------------------

def prepare(n_total: int) -> tuple[str, list[tuple[int, str, str]]]:
    """Sites, a coordinator with a token, open randomization and ``n_total`` ready participants.
    Returns the token and (participant id, study id, site code) for each participant."""
    from trial.auth.service import create_user, issue_token
    from trial.db import make_engine, make_session_factory
    from trial.enrollment.service import enroll, record_screening
    from trial.migrate import upgrade
    from trial.outcomes.service import record_assessment
    from trial.protocol.service import current, ensure_default
    from trial.randomize.service import open_randomization
    from trial.scope import CliActor
    from trial.sites.service import create_site

    cli = CliActor(email="cli:bench")
    engine = make_engine()
    upgrade(engine)
    db = make_session_factory(engine)()
    ensure_default(db, cli)
    for code in SITES:
        create_site(db, cli, {"code": code, "name": f"Bench {code}", "country": code[:2], "target": n_total})
    user = create_user(db, cli, EMAIL, "Bench Coordinator", "Quartz-harbour-4417-lantern", [("coordinator", c) for c in SITES])
    token = issue_token(db, cli, user)
    open_randomization(db, cli)
    db.commit()
    answers = {c["key"]: c["qualifying_answer"] for c in current(db).content["criteria"]}
    today = dt.date.today()
    rng = random.Random(7)
    out = []
    for i in range(n_total):
        code = SITES[i % len(SITES)]
        sc = record_screening(db, cli, {"site": code, "screened_on": (today - dt.timedelta(days=30)).isoformat(),
                                        "answers": answers})
        consent = today - dt.timedelta(days=28)
        p = enroll(db, cli, {"screening_id": sc.id, "consent_date": consent.isoformat(), "sex": rng.choice(["female", "male"]),
                             "date_of_birth": (consent - dt.timedelta(days=rng.randint(4 * 366, 6 * 365 + 300))).isoformat()})
        record_assessment(db, cli, p.study_id, {
            "visit": "baseline", "instrument": "ados2", "performed_on": (today - dt.timedelta(days=25)).isoformat(),
            "values": {"social_affect": rng.randint(6, 18), "rrb": rng.randint(1, 8), "css": rng.randint(4, 10)}})
        out.append((p.id, p.study_id, code))
        if i % 500 == 499:
            db.commit()
            db.expunge_all()
    db.commit()
    db.close()
    engine.dispose()
    return token, out


def prepare_floor(dsn: str, n: int) -> list[tuple[int, str, str]]:
    """Participants for the floor, inserted directly: the floor skips the readiness checks, so they
    need only exist (screening + participant rows), and this takes a second instead of ~12 ms each."""
    today = dt.date.today()
    with psycopg.connect(dsn) as c, c.cursor() as cur:
        site_ids = dict(cur.execute("SELECT code, id FROM site").fetchall())
        version = cur.execute("SELECT max(version) FROM protocol_version").fetchone()[0]
        codes = [SITES[i % len(SITES)] for i in range(n)]

        def insert_all(sql: str, rows: list) -> list[int]:
            cur.executemany(sql + " RETURNING id", rows, returning=True)
            ids = [cur.fetchone()[0]]
            while cur.nextset():
                ids.append(cur.fetchone()[0])
            return ids
        screenings = insert_all("INSERT INTO screening (site_id, screened_on, answers, declined, outcome, failed_criteria,"
                                " protocol_version, created_at) VALUES (%s, %s, '{}', false, 'eligible', '[]', %s, now())",
                                [(site_ids[c], today - dt.timedelta(days=30), version) for c in codes])
        study_ids = [f"{c}-F{i:05d}" for i, c in enumerate(codes)]
        pids = insert_all("INSERT INTO participant (study_id, site_id, screening_id, consent_date, date_of_birth, sex,"
                          " strata, enrolled_at) VALUES (%s, %s, %s, %s, %s, 'female', '{}', now())",
                          [(sid, site_ids[c], sc, today - dt.timedelta(days=28), today - dt.timedelta(days=5 * 365))
                           for sid, c, sc in zip(study_ids, codes, screenings)])
    return list(zip(pids, study_ids, codes))


# --- gunicorn ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gunicorn(args, port: int, env: dict, log: Path) -> subprocess.Popen:
    cmd = [str(BIN / "gunicorn"), "-c", str(ROOT / "config" / "gunicorn.conf.py"), "-b", f"127.0.0.1:{port}"]
    for flag, value in (("-w", args.workers), ("-k", args.worker_class), ("--threads", args.threads)):
        if value is not None:
            cmd += [flag, str(value)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {proc.returncode}; see {log}")
            try:
                if requests.get(f"http://127.0.0.1:{port}/login", timeout=5).status_code == 200:
                    return proc
            except requests.RequestException:  # not listening yet, or still booting
                pass
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn did not answer /login within 60 s; see {log}")
    except BaseException:
        stop(proc)
        raise


def gunicorn_settings(proc: subprocess.Popen) -> str:
    """The command as run, and how many workers it has (its child processes)."""
    workers = sum(1 for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == proc.pid)
    return f"gunicorn {' '.join(proc.args[1:])} ({workers} workers)"


def _ppid(p: Path) -> int | None:
    try:
        return int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()  # SIGTERM: gunicorn's graceful shutdown
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- the two runs ------------------------------------------------------------------------------

def cpu_snapshot(gunicorn_pid: int | None, dbname: str) -> dict[tuple[str, int], float]:
    """CPU seconds used so far (Linux /proc), by (kind, pid): the whole machine (busy), this process
    (the clients), the gunicorn workers, and PostgreSQL (backends of ``dbname`` and auxiliaries)."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for p in Path("/proc").iterdir():
        try:
            stat, cmd = ((p / "stat").read_text(), (p / "cmdline").read_text()) if p.name.isdigit() else ("", "")
        except OSError:
            continue
        if stat:
            f = stat.rsplit(")", 1)[1].split()  # f[1] ppid, f[11] utime, f[12] stime
            comm = stat[stat.find("(") + 1:stat.rfind(")")]
            if int(f[1]) == gunicorn_pid:
                out["app", int(p.name)] = (int(f[11]) + int(f[12])) / tick
            elif comm == "postgres" and (f" {dbname} " in cmd or "(" not in cmd):
                out["postgres", int(p.name)] = (int(f[11]) + int(f[12])) / tick
    total = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    out["machine", 0] = (sum(total) - total[3] - total[4]) / tick
    out["clients", 0] = sum(os.times()[:2])
    return out


def run_pool(clients: int, items: list, make_state, task, snapshot) -> tuple[float, list, dict]:
    """Run ``task(state, item)`` over ``items`` with ``clients`` threads, each with its own state
    (a keep-alive HTTP session or a database connection). Returns wall time, (latency, result)
    per item and the CPU seconds used meanwhile by kind (``snapshot``: see ``cpu_snapshot``)."""
    local, states, lock = threading.local(), [], threading.Lock()

    def one(item):
        if not hasattr(local, "state"):
            local.state = make_state()
            with lock:
                states.append(local.state)
        t0 = time.perf_counter()
        res = task(local.state, item)
        return time.perf_counter() - t0, res

    cpu0, t0 = snapshot(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(one, items))
    wall, cpu1 = time.perf_counter() - t0, snapshot()
    for s in states:
        s.close()
    cpu = Counter()
    for (kind, pid), seconds in cpu1.items():
        cpu[kind] += seconds - cpu0.get((kind, pid), 0.0)
    return wall, results, cpu


class Client:
    """One keep-alive HTTP/1.1 connection per client thread, on ``http.client``: it costs a
    fraction of the CPU that ``requests`` does, so the machine's two cores go to the server under
    test. A request that finds its kept-alive connection closed by the server is sent again on a
    new one (a randomization is idempotent under its Idempotency-Key; a replay would count as 200)."""

    def __init__(self, port: int) -> None:
        self.port, self.conn = port, None

    def request(self, method: str, path: str, headers: dict) -> int:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                self.conn.request(method, path, body=b"" if method == "POST" else None, headers=headers)
                response = self.conn.getresponse()
                response.read()
                return response.status
            except (http.client.HTTPException, ConnectionError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def warm_up(args, port: int, token: str) -> None:
    """Every worker opens its database connection and loads its caches before the timed runs."""
    headers = {"Authorization": f"Bearer {token}"}
    run_pool(args.clients, range(64), lambda: Client(port), lambda c, _: c.request("GET", "/api/v1/me", headers), dict)


def http_run(args, port: int, token: str, people: list, snapshot) -> tuple[float, list, dict]:
    headers = {"Authorization": f"Bearer {token}"}

    def post(c, person):
        return c.request("POST", f"/api/v1/participants/{person[1]}/randomize",
                         {**headers, "Idempotency-Key": f"bench-{uuid.uuid4()}"})
    return run_pool(args.clients, people, lambda: Client(port), post, snapshot)


def floor_one(conn: psycopg.Connection, person, user_id: int) -> str:
    """The app's locking transaction in its own statements, without the reads around them:
    participant lock, the stratum's slot taken by UPDATE ... RETURNING, the allocation, the audit
    head advanced by UPDATE ... RETURNING, and one chained audit record (field "allocation", as
    the app writes it) inserted with the head's new hash and seal in one statement. The arm is a
    placeholder: slot mod 4 over (low, high, usual, usual), not read from the list (no seed, no HMAC)."""
    from trial.audit.service import compute_hash, head_mac
    pid, study_id, code = person
    key = f"site={code}"
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT id FROM participant WHERE id = %s FOR UPDATE", (pid,))
        stratum_id, seq = cur.execute("UPDATE stratum SET last_seq = last_seq + 1 WHERE key = %s RETURNING id, last_seq",
                                      (key,)).fetchone()
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        arm = ("low", "high", "usual", "usual")[seq % 4]
        cur.execute("INSERT INTO allocation (participant_id, study_id, site_id, stratum_id, seq, arm, idempotency_key,"
                    " randomized_at, randomized_by_id) SELECT id, study_id, site_id, %s, %s, %s, %s, %s, %s"
                    " FROM participant WHERE id = %s RETURNING id",
                    (stratum_id, seq, arm, f"floor-{pid}", now, user_id, pid))
        head_seq, prev = cur.execute("UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash").fetchone()
        rec = {"seq": head_seq, "at": now, "actor_id": user_id, "actor": EMAIL, "action": "randomize",
               "entity": "allocation", "entity_id": study_id, "field": "allocation", "old": None,
               "new": json.dumps({"arm": arm, "seq": seq, "stratum": key}, sort_keys=True, separators=(",", ":")),
               "reason": None, "reveals_allocation": True, "prev_hash": prev}
        rec["hash"] = compute_hash(types.SimpleNamespace(**rec))
        # the head sealed under the audit key with its new number and hash, as the app's append does
        cur.execute(f"WITH appended AS (INSERT INTO audit_record ({', '.join(rec)}) VALUES"
                    f" ({', '.join(f'%({k})s' for k in rec)})) UPDATE audit_head SET hash = %(hash)s, mac = %(mac)s"
                    " WHERE id = 1", {**rec, "mac": head_mac(head_seq, rec["hash"])})
    return "ok"


def floor_run(args, dsn: str, people: list, snapshot) -> tuple[float, list, dict]:
    with psycopg.connect(dsn) as c:
        user_id = c.execute("SELECT id FROM user_account WHERE email = %s", (EMAIL,)).fetchone()[0]
    return run_pool(args.clients, people, lambda: psycopg.connect(dsn), lambda conn, p: floor_one(conn, p, user_id), snapshot)


# --- figures and checks ------------------------------------------------------------------------

def summarize(label: str, wall: float, results: list, cpu: dict) -> dict:
    lat = sorted(r[0] * 1000 for r in results)
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
    s = {"rate": len(lat) / wall, "p50": pct(0.50), "p99": pct(0.99), "max": lat[-1]}
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(Counter(r[1] for r in results).items()))
    print(f"{label:<8} {len(lat)} in {wall:.2f} s = {s['rate']:.0f} randomizations/s; latency ms p50 {s['p50']:.1f}"
          f"  p99 {s['p99']:.1f}  max {s['max']:.1f}; results {counts}")
    n, cores = len(lat), os.cpu_count()
    other = cpu["machine"] - cpu["clients"] - cpu["app"] - cpu["postgres"]
    print(f"       CPU ms per randomization: clients {1000 * cpu['clients'] / n:.1f}, app {1000 * cpu['app'] / n:.1f},"
          f" postgres {1000 * cpu['postgres'] / n:.1f}, other {1000 * other / n:.1f};"
          f" machine busy {100 * cpu['machine'] / (wall * cores):.0f}% of {cores} cores")
    own = (cpu["clients"] + cpu["app"] + cpu["postgres"]) / n
    print(f"       CPU-bound ceiling on {cores} cores with no other load: {cores / own:.0f} randomizations/s")
    return s


def check(ok: bool, what: str) -> bool:
    print(f"  {'OK  ' if ok else 'FAIL'} {what}")
    return ok


def integrity(dsn: str, ids: list[int], env: dict, lists: bool) -> bool:
    with psycopg.connect(dsn) as c:
        bad = c.execute("""SELECT s.key, count(a.id), min(a.seq), max(a.seq), count(DISTINCT a.seq), s.last_seq
                           FROM stratum s LEFT JOIN allocation a ON a.stratum_id = s.id GROUP BY s.id
                           HAVING count(a.id) > 0 AND (min(a.seq) <> 1 OR max(a.seq) <> count(a.id)
                               OR count(DISTINCT a.seq) <> count(a.id) OR s.last_seq <> max(a.seq))""").fetchall()
        per = dict(c.execute("SELECT participant_id, count(*) FROM allocation WHERE participant_id = ANY(%s)"
                             " GROUP BY participant_id", (ids,)).fetchall())
    ok = check(not bad, "per stratum, seq is exactly 1..k, no gap or duplicate, last_seq = k"
               + "".join(f"\n       {row}" for row in bad))
    ok &= check(len(per) == len(ids) and set(per.values()) == {1}, f"each of the {len(ids)} participants allocated once"
                f" ({len(per)} allocated, {sum(v > 1 for v in per.values())} more than once)")
    if lists:  # the app's arms against the lists, with the sealed seed in hand (as after unblinding)
        from trial.db import make_engine, make_session_factory
        from trial.randomize.service import unseal_for_verification, verify
        from trial.scope import CliActor
        engine = make_engine()
        with make_session_factory(engine)() as db:
            v = verify(db, CliActor(), unseal_for_verification(db, CliActor()))
        engine.dispose()
        ok &= check(v.ok, f"{v.checked} allocations follow the committed lists" + "".join(f"\n       {p}" for p in v.problems[:5]))
    r = subprocess.run([str(BIN / "trial"), "audit", "verify"], env=env, capture_output=True, text=True)
    return ok & check(r.returncode == 0, f"trial audit verify: {(r.stdout or r.stderr).strip()}")


def target(ok: bool, text: str) -> None:
    print(f"  {'MET   ' if ok else 'MISSED'} {text}")


def main() -> int:
    args = parse_args()
    admin, user = admin_conn(args.pg)
    dbname = f"bench_randomize_{os.getpid()}"
    admin.execute(f'CREATE DATABASE "{dbname}"')
    env = set_env(user, args.pg, dbname)
    dsn = f"postgresql://{user}@{args.pg}/{dbname}"
    proc, ok = None, True
    try:
        n, rounds = args.participants, args.rounds
        t0 = time.perf_counter()
        token, http_people = prepare(n * rounds)
        prep, t0 = time.perf_counter() - t0, time.perf_counter()
        floor_people = prepare_floor(dsn, n * rounds)
        print(f"database {dbname}; {n * rounds} ready participants at {len(SITES)} sites prepared through the "
              f"services in {prep:.1f} s ({1000 * prep / (n * rounds):.1f} ms each: screening + enrollment + "
              f"baseline); {n * rounds} more for the floor by SQL in {time.perf_counter() - t0:.2f} s")
        people = http_people + floor_people
        random.Random(1).shuffle(http_people)
        random.Random(2).shuffle(floor_people)

        port = args.port or free_port()
        log = ROOT / "bench" / "out" / f"gunicorn-{os.getpid()}.log"
        log.parent.mkdir(exist_ok=True)
        proc = start_gunicorn(args, port, env, log)
        print(f"{gunicorn_settings(proc)}; {args.clients} clients; {rounds} rounds of {n}\n")
        warm_up(args, port, token)
        apps = [summarize(f"app {r + 1}", *http_run(args, port, token, http_people[r * n:(r + 1) * n],
                                                    lambda: cpu_snapshot(proc.pid, dbname))) for r in range(rounds)]
        stop(proc)
        proc = None
        print("integrity after the app runs:")
        ok &= integrity(dsn, [p[0] for p in http_people], env, lists=True)

        print()
        floors = [summarize(f"floor {r + 1}", *floor_run(args, dsn, floor_people[r * n:(r + 1) * n],
                                                        lambda: cpu_snapshot(None, dbname))) for r in range(rounds)]
        print("integrity after the floor runs:")
        ok &= integrity(dsn, [p[0] for p in people], env, lists=False)

        med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
        app = {k: med(apps, k) for k in ("rate", "p50", "p99")}
        floor = {k: med(floors, k) for k in ("rate", "p50", "p99")}
        ratio = floor["rate"] / app["rate"]
        print(f"\nmedian of {rounds} rounds: app {app['rate']:.0f}/s p50 {app['p50']:.1f} ms p99 {app['p99']:.1f} ms;"
              f" floor {floor['rate']:.0f}/s p50 {floor['p50']:.1f} ms p99 {floor['p99']:.1f} ms")
        print(f"floor/app throughput {ratio:.2f}x; p50 app/floor {app['p50'] / floor['p50']:.1f}x")
        print(f"targets ({args.clients} clients, medians):")
        target(app["rate"] >= TARGET_RATE, f">= {TARGET_RATE:.0f} randomizations/s (app {app['rate']:.0f})")
        target(app["p99"] < TARGET_P99_MS, f"p99 < {TARGET_P99_MS:.0f} ms (app {app['p99']:.1f})")
        target(ratio <= TARGET_RATIO, f"app within {TARGET_RATIO:.0f}x of the floor ({ratio:.2f}x)")
    finally:
        if proc is not None:
            stop(proc)
        if args.keep:
            print(f"\nkept database {dbname}: TRIAL_DATABASE_URL={env['TRIAL_DATABASE_URL']} TRIAL_SEAL_KEY={env['TRIAL_SEAL_KEY']}")
        else:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        admin.close()
        shutil.rmtree(env["TRIAL_INSTANCE_PATH"], ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
