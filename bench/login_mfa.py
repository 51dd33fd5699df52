#!/usr/bin/env python
"""Login time with and without two-factor sign-in, through the app (Flask's test client: the whole
request handling, no network), on a fresh database.

    .venv/bin/python bench/login_mfa.py [--logins 50] [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

Two users of the same role: one with the password alone, one enrolled in two-factor sign-in. Each
login is timed from the password's POST to the answer that signs the user in: for the first one
request (``POST /login``), for the second two (``POST /login`` then ``POST /login/code`` with the code
an authenticator app would show, computed with pyotp). A code is accepted once per 30-second step,
so the server's clock for codes is moved on one step per login (trial.auth.mfa.utcnow); what a code
costs the server (decrypting the secret, three HMACs, the conditional UPDATE, the audit record) is
unchanged. The two kinds take turns; prints the median, p90 and the difference. Without
--database-url an SQLite file in a temporary folder; with one, a database created on that server
(and dropped).
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRIAL_INSTANCE_PATH", tempfile.mkdtemp(prefix="bench-login-"))
os.environ["TRIAL_ENV"] = "development"

import pyotp
from sqlalchemy import create_engine, text

import trial.models  # noqa: F401  every model registered before the first session
from trial.app import create_app
from trial.auth import mfa
from trial.auth.service import create_user
from trial.db import make_engine, make_session_factory, utcnow
from trial.migrate import upgrade
from trial.protocol.service import ensure_default
from trial.scope import CliActor

PASSWORD = "bench-login-password-2026"


class Clock:
    """The server's clock for codes, one 30-second step further at each login."""

    def __init__(self):
        self.at = utcnow()

    def now(self) -> dt.datetime:
        return self.at

    def code(self, secret: str) -> str:
        return pyotp.TOTP(secret).at(int(self.at.replace(tzinfo=dt.UTC).timestamp()))


def database(url: str | None):
    """(engine URL, drop) of a fresh database."""
    if not url:
        return f"sqlite:///{Path(os.environ['TRIAL_INSTANCE_PATH']) / 'bench.db'}", lambda: None
    name = f"bench_login_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))

    def drop():
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return url.rsplit("/", 1)[0] + "/" + name, drop


def setup(engine, clock: Clock) -> str:
    """The two users; the enrolled one's secret."""
    with make_session_factory(engine)() as s:
        cli = CliActor(email="cli:bench")
        ensure_default(s, cli)
        create_user(s, cli, "plain@bench.trial", "Plain", PASSWORD, [("statistician", None)])
        two = create_user(s, cli, "twofactor@bench.trial", "Two Factor", PASSWORD, [("statistician", None)])
        s.flush()
        sealed = mfa.new_secret(two)
        secret = mfa.unseal(two.id, sealed)
        mfa.enrol(s, two, sealed, clock.code(secret))
        s.commit()
    return secret


def login(app, email: str, secret: str | None, clock: Clock) -> float:
    c = app.test_client()
    t = time.perf_counter()
    r = c.post("/login", data={"email": email, "password": PASSWORD})
    if secret is not None:
        assert r.headers["Location"].endswith("/login/code"), r.status_code
        clock.at += dt.timedelta(seconds=mfa.STEP_SECONDS)
        r = c.post("/login/code", data={"code": clock.code(secret)})
    elapsed = time.perf_counter() - t
    assert r.status_code == 302 and r.headers["Location"].endswith("/"), (email, r.status_code)
    return elapsed * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--logins", type=int, default=50)
    ap.add_argument("--database-url", default=None)
    args = ap.parse_args()
    url, drop = database(args.database_url)
    engine = make_engine(url)
    try:
        upgrade(engine, "head")
        clock = Clock()
        mfa.utcnow = clock.now
        secret = setup(engine, clock)
        app = create_app({"ENGINE": engine, "SESSION_FACTORY": make_session_factory(engine), "WTF_CSRF_ENABLED": False,
                          "SECRET_KEY": "bench"})
        for _ in range(3):  # warm up: templates, statements, the hasher
            login(app, "plain@bench.trial", None, clock), login(app, "twofactor@bench.trial", secret, clock)
        plain, two = [], []
        for _ in range(args.logins):
            plain.append(login(app, "plain@bench.trial", None, clock))
            two.append(login(app, "twofactor@bench.trial", secret, clock))
        report(engine.dialect.name, args.logins, plain, two)
    finally:
        engine.dispose()
        drop()


def report(dialect: str, n: int, plain: list[float], two: list[float]) -> None:
    def p90(xs):
        return statistics.quantiles(xs, n=10)[-1]
    mp, mt = statistics.median(plain), statistics.median(two)
    print(f"login through the app ({dialect}, {n} logins each, Flask test client)")
    print(f"  password only          median {mp:7.1f} ms   p90 {p90(plain):7.1f} ms")
    print(f"  password + TOTP code   median {mt:7.1f} ms   p90 {p90(two):7.1f} ms")
    print(f"  two-factor adds        median {mt - mp:+7.1f} ms ({(mt / mp - 1) * 100:+.0f} %)")


if __name__ == "__main__":
    main()
