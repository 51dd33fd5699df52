#!/usr/bin/env python
"""The parent's survey page (issue 28): its time and its weight, as a phone on a mobile network
loads it.

    .venv/bin/python bench/survey_page.py [--requests 300] [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

A fresh database with the demo (trial.demo) and a child whose 2-month window is open today; the
SRS-2 is sent to its parents in German. The app is served over HTTP by werkzeug in a thread (the
whole request handling: the policy, the rate limit's count and its INSERT of the attempt, the
"opened" mark, the template), and ``GET /s/<token>`` is fetched --requests times, one at a time,
after 10 untimed. The link's rate limit (TRIAL_SURVEY_LINK_LIMIT, 30 an hour) is raised for the
run: every opening counts. Prints p50, p95 and max, and the page's bytes with every asset it loads
(HTML + CSS + JS), uncompressed and gzip-compressed (level 6, each file alone, as a server would),
against the targets: p95 under 150 ms, under 100 KB. Exits 1 if a target is missed. Without
--database-url an SQLite file in a temporary folder; with one, a database created on that server
(and dropped).
"""
from __future__ import annotations

import argparse
import datetime as dt
import gzip
import math
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRIAL_INSTANCE_PATH", tempfile.mkdtemp(prefix="bench-survey-"))
os.environ["TRIAL_ENV"] = "development"
os.environ["TRIAL_SURVEY_LINK_LIMIT"] = "1000000"  # every opening counts: the bench opens one link often
if "TRIAL_SEAL_KEY" not in os.environ:
    from cryptography.fernet import Fernet
    os.environ["TRIAL_SEAL_KEY"] = Fernet.generate_key().decode()
os.environ.setdefault("TRIAL_AUDIT_KEY", "bench-audit-key-" + os.urandom(16).hex())

import requests
from sqlalchemy import create_engine, text
from werkzeug.serving import WSGIRequestHandler, make_server

import trial.models  # noqa: F401  every model registered before the first session
from trial.app import create_app
from trial.db import make_engine, make_session_factory
from trial.demo import load_demo
from trial.enrollment.service import enroll, record_screening
from trial.migrate import upgrade
from trial.outcomes.service import record_assessment
from trial.protocol.service import current
from trial.randomize.service import randomize
from trial.scope import CliActor
from trial.surveys import service as surveys
from trial.timeline import today

TARGET_MS, TARGET_KB = 150.0, 100.0
ACTOR = CliActor(email="cli:bench")


class Quiet(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):
        pass


def database(url: str | None):
    """(engine URL, drop) of a fresh database."""
    if not url:
        return f"sqlite:///{Path(os.environ['TRIAL_INSTANCE_PATH']) / 'bench.db'}", lambda: None
    name = f"bench_survey_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))

    def drop():
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return url.rsplit("/", 1)[0] + "/" + name, drop


def setup(sessions) -> str:
    """The demo, a child in its 2-month window and the SRS-2 sent to its parents: the link's token."""
    with sessions() as db:
        load_demo(db)
        db.commit()
        ok = {c["key"]: c["qualifying_answer"] for c in current(db).content["criteria"]}
        randomized_on = today("Europe/Vienna") - dt.timedelta(days=61)
        screened = randomized_on - dt.timedelta(days=8)
        sc = record_screening(db, ACTOR, {"site": "AT01", "screened_on": screened.isoformat(), "answers": ok})
        p = enroll(db, ACTOR, {"screening_id": sc.id, "consent_date": (screened + dt.timedelta(days=3)).isoformat(),
                               "date_of_birth": (screened - dt.timedelta(days=5 * 365)).isoformat(), "sex": "male"},
                   at=dt.datetime.combine(screened + dt.timedelta(days=3), dt.time(9, 0)))
        record_assessment(db, ACTOR, p.study_id, {"visit": "baseline", "instrument": "ados2",
                                                  "performed_on": (screened + dt.timedelta(days=5)).isoformat(),
                                                  "values": {"social_affect": 12, "rrb": 4, "css": 6}})
        randomize(db, ACTOR, p.study_id, "bench-survey", at=dt.datetime.combine(randomized_on, dt.time(10, 0)))
        _, token = surveys.send_survey(db, ACTOR, p.study_id, {"visit": "month2", "instrument": "srs2",
                                                               "language": "de", "first_name": "Lena"})
        db.commit()
    return token


def weight(base: str, html: bytes) -> list[tuple[str, int, int]]:
    """(what, bytes, gzip bytes) of the page and of every asset it loads."""
    out = [("HTML", len(html), len(gzip.compress(html, 6)))]
    for path in re.findall(rb'(?:href|src)="(/static/[^"]+)"', html):
        body = requests.get(base + path.decode(), timeout=10).content
        out.append((path.decode(), len(body), len(gzip.compress(body, 6))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--database-url", default=None)
    args = ap.parse_args()
    url, drop = database(args.database_url)
    engine = make_engine(url)
    server = None
    try:
        upgrade(engine, "head")
        sessions = make_session_factory(engine)
        token = setup(sessions)
        app = create_app({"ENGINE": engine, "SESSION_FACTORY": sessions, "SECRET_KEY": "bench-" + os.urandom(8).hex()})
        server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=Quiet)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_port}"
        http = requests.Session()
        page = f"{base}/s/{token}"
        for _ in range(10):  # warm up: templates, statements, the catalogue
            assert http.get(page, timeout=10).status_code == 200
        times = []
        for _ in range(args.requests):
            t = time.perf_counter()
            r = http.get(page, timeout=10)
            times.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200, r.status_code
        html = r.content
        parts = weight(base, html)
    finally:
        if server is not None:
            server.shutdown()
        engine.dispose()
        drop()
    times.sort()
    p95 = times[max(0, math.ceil(0.95 * len(times)) - 1)]
    total, total_gz = sum(p[1] for p in parts), sum(p[2] for p in parts)
    print(f"survey page GET /s/<token> on {engine.dialect.name}, werkzeug, {len(times)} requests one at a time")
    print(f"  p50 {statistics.median(times):.1f} ms   p95 {p95:.1f} ms   max {times[-1]:.1f} ms   "
          f"(target p95 < {TARGET_MS:.0f} ms: {'met' if p95 < TARGET_MS else 'MISSED'})")
    print("  bytes with its assets:        raw      gzip")
    for what, n, gz in parts:
        print(f"    {what:<24} {n:>8,} {gz:>9,}")
    print(f"    {'total':<24} {total:>8,} {total_gz:>9,}   (target < {TARGET_KB:.0f} KB: "
          f"{'met' if total < TARGET_KB * 1024 else 'MISSED'})")
    sys.exit(0 if p95 < TARGET_MS and total < TARGET_KB * 1024 else 1)


if __name__ == "__main__":
    main()
