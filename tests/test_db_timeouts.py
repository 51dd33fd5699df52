"""Issue 27, a stuck PostgreSQL gives a 503 in seconds, not a hung request: the web app's
connections carry a lock timeout and a statement timeout (TRIAL_DB_LOCK_TIMEOUT,
TRIAL_DB_STATEMENT_TIMEOUT), and a backend that does not answer at all — frozen with SIGSTOP, which
no server-side timeout can end — is given up a moment after the statement timeout. A frozen backend
idle in the pool costs a new connection, not the request. Real backends, real signals."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import make_url, text

from tests.conftest import FreshDatabase, is_pg
from tests.helpers import World
from trial import create_app
from trial.db import ANSWER_MARGIN, make_engine, make_session_factory

pytestmark = pytest.mark.skipif(not is_pg(), reason="PostgreSQL's timeouts")
MARGIN = 3.0  # seconds for the request's own work and the test's polling, on a busy machine


@pytest.fixture()
def served(monkeypatch):
    """A fresh database with the world's users, and an app that makes its own engine from the
    settings (as gunicorn's does): statement timeout 3 s, lock timeout 30 s, connect timeout 2 s."""
    monkeypatch.setenv("TRIAL_DB_STATEMENT_TIMEOUT", "3")
    monkeypatch.setenv("TRIAL_DB_LOCK_TIMEOUT", "30")
    monkeypatch.setenv("TRIAL_DB_CONNECT_TIMEOUT", "2")
    fresh = FreshDatabase("timeouts")
    db = make_session_factory(fresh.engine)()
    app = create_app({"DATABASE_URL": fresh.url, "TESTING": True, "WTF_CSRF_ENABLED": False,
                      "SECRET_KEY": "test-secret"})
    world = World(db, app)
    world.setup()
    db.commit()
    yield {"fresh": fresh, "world": world, "app": app, "engine": app.extensions["trial.engine"]}
    db.close()
    app.extensions["trial.engine"].dispose()
    fresh.drop()


def admin_connection(url: str) -> psycopg.Connection:
    u = make_url(url)
    return psycopg.connect(host=u.host, port=u.port, user=u.username, password=u.password, dbname=u.database)


def may_signal(pid: int) -> bool:
    """The backend runs on this machine and this user may stop it."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return "postgres" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")


def request_in_thread(world, *args):
    """The request in a thread of its own: (its answer, seconds it took), filled when done."""
    out: dict = {}

    def go():
        t0 = time.monotonic()
        out["r"] = world.api(*args)
        out["took"] = time.monotonic() - t0
    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, out


def waiting_backend(url: str, blocker: psycopg.Connection, timeout: float = 10) -> int | None:
    """The backend that waits for a lock the blocker holds (the app's, serving the request)."""
    deadline = time.monotonic() + timeout
    with admin_connection(url) as watch:
        watch.autocommit = True
        while time.monotonic() < deadline:
            pid = watch.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                "AND wait_event_type = 'Lock' AND pid <> %s", (blocker.info.backend_pid,)).fetchone()
            if pid:
                return pid[0]
            time.sleep(0.02)
    return None


def test_the_app_sets_its_timeouts_on_every_connection_and_the_command_line_none(served):
    with served["engine"].connect() as c:
        assert c.execute(text("SHOW statement_timeout")).scalar() == "3s"
        assert c.execute(text("SHOW lock_timeout")).scalar() == "30s"
    cli = make_engine(served["fresh"].url)
    try:
        with cli.connect() as c:
            assert c.execute(text("SHOW statement_timeout")).scalar() == "0"
            assert c.execute(text("SHOW lock_timeout")).scalar() == "0"
            tcp = c.connection.dbapi_connection.info.get_parameters()
            assert tcp.get("connect_timeout") == "2" and tcp.get("keepalives") == "1"
    finally:
        cli.dispose()


def test_a_statement_the_server_cancels_answers_503_within_the_statement_timeout(served):
    """A read that waits on a table another transaction holds: the server cancels it at the
    statement timeout (3 s; the lock timeout is longer), the request answers 503 saying so."""
    world = served["world"]
    with admin_connection(served["fresh"].url) as blocker:
        blocker.execute("LOCK TABLE api_token IN ACCESS EXCLUSIVE MODE")
        thread, out = request_in_thread(world, "GET", "/locks", "manager")
        thread.join(3 + MARGIN + 5)
        blocker.rollback()
    assert not thread.is_alive(), "the request hung"
    r = out["r"]
    assert r.status_code == 503 and r.headers["Retry-After"], r.get_data(as_text=True)
    assert "took too long" in r.get_json()["error"]["message"]
    assert 3 <= out["took"] < 3 + MARGIN, out["took"]


def test_a_frozen_backend_answers_503_a_moment_after_the_statement_timeout(served):
    """The request's backend frozen (SIGSTOP) while it serves the request: no server-side timeout
    can fire, and TCP sees nothing wrong; the app gives the backend up 2 s after the statement
    timeout and answers 503, then serves the next request on a new connection."""
    world = served["world"]
    with admin_connection(served["fresh"].url) as blocker:
        blocker.execute("LOCK TABLE api_token IN ACCESS EXCLUSIVE MODE")
        thread, out = request_in_thread(world, "GET", "/locks", "manager")
        pid = waiting_backend(served["fresh"].url, blocker)
        assert pid is not None, "the request's backend waits for the lock"
        if not may_signal(pid):
            blocker.rollback()
            thread.join(30)
            pytest.skip("the PostgreSQL server runs elsewhere or as a user this one may not signal")
        os.kill(pid, signal.SIGSTOP)
        try:
            blocker.rollback()  # (the backend would go on now, were it not stopped)
            thread.join(3 + ANSWER_MARGIN + MARGIN + 5)
        finally:
            os.kill(pid, signal.SIGCONT)
    assert not thread.is_alive(), "the request hung on the frozen backend"
    r = out["r"]
    assert r.status_code == 503, r.get_data(as_text=True)
    body = r.get_json()
    assert body["error"]["code"] == "unavailable" and "did not answer in time" in body["error"]["message"]
    assert body["request_id"] and r.headers["Retry-After"]
    assert out["took"] < 3 + ANSWER_MARGIN + MARGIN, out["took"]
    assert world.api("GET", "/locks", "manager").status_code == 200, "the next request, on a new connection"


def test_a_frozen_backend_idle_in_the_pool_costs_a_new_connection_not_the_request(served):
    """The pooled connection's backend frozen between requests: the check before use gives it up
    within the connect timeout (2 s), and the request is served on a new connection."""
    world, engine = served["world"], served["engine"]
    assert world.api("GET", "/locks", "manager").status_code == 200
    engine.dispose()  # one pooled connection, whose backend is known
    with engine.connect() as c:
        pid = c.execute(text("SELECT pg_backend_pid()")).scalar()
    if not may_signal(pid):
        pytest.skip("the PostgreSQL server runs elsewhere or as a user this one may not signal")
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        r = world.api("GET", "/locks", "manager")
        took = time.monotonic() - t0
    finally:
        os.kill(pid, signal.SIGCONT)
    assert r.status_code == 200, r.get_data(as_text=True)
    assert 2 <= took < 2 + MARGIN, took


def test_a_lock_wait_answers_503_within_the_lock_timeout(served, monkeypatch):
    monkeypatch.setenv("TRIAL_DB_LOCK_TIMEOUT", "1")
    app = create_app({"DATABASE_URL": served["fresh"].url, "TESTING": True, "WTF_CSRF_ENABLED": False,
                      "SECRET_KEY": "test-secret"})
    world = served["world"]
    world.app = app
    try:
        with admin_connection(served["fresh"].url) as blocker:
            blocker.execute("LOCK TABLE api_token IN ACCESS EXCLUSIVE MODE")
            t0 = time.monotonic()
            r = world.api("GET", "/locks", "manager")
            took = time.monotonic() - t0
            blocker.rollback()
        assert r.status_code == 503 and "locked by another user" in r.get_json()["error"]["message"]
        assert 1 <= took < 1 + MARGIN, took
    finally:
        app.extensions["trial.engine"].dispose()
