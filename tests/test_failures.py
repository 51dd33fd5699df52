"""Failures that tell the truth, with real faults: a TCP proxy that cuts the connection right after
forwarding a COMMIT (the allocation commits, the client never hears back), PostgreSQL down,
restarted and read-only; SQLite full (max_page_count), read-only and unopenable. A failure at
commit is 503 outcome_unknown and a retry with the same Idempotency-Key gets the allocation; an
unavailable database is 503 unavailable with Retry-After and says what class of problem it is;
a 500 says nothing was changed only when nothing was committed."""
from __future__ import annotations

import pytest
from sqlalchemy import event, func, select, text

from tests.conftest import PG_URL, FreshDatabase, is_pg
from tests.faults import FaultProxy
from tests.helpers import PASSWORD, World
from trial import create_app
from trial.db import make_engine, make_session_factory
from trial.participants.models import Allocation, Screening

pg_only = pytest.mark.skipif(not is_pg(), reason="network faults need the PostgreSQL server")


def _app(url=None, engine=None, testing=True):
    cfg = {"TESTING": testing, "WTF_CSRF_ENABLED": False, "SECRET_KEY": "test-secret"}
    if engine is not None:
        cfg.update(ENGINE=engine, SESSION_FACTORY=make_session_factory(engine))
    else:
        cfg["DATABASE_URL"] = url
    return create_app(cfg)


def err(r, status, code):
    body = r.get_json()
    assert r.status_code == status, (r.status_code, body)
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["fields"], dict)
    return body["error"]


@pytest.fixture()
def faulty():
    """A trial on a database of its own; the app reaches it only through the fault proxy."""
    if not is_pg():
        pytest.skip("network faults need the PostgreSQL server")
    fresh = FreshDatabase("faults")
    proxy = FaultProxy()
    db = make_session_factory(fresh.engine)()
    app = _app(proxy.url(fresh.name))
    world = World(db, app).setup()
    world.open()
    p = world.ready()
    db.commit()
    yield {"db": db, "app": app, "world": world, "proxy": proxy, "p": p, "fresh": fresh}
    proxy.stop()
    app.extensions["trial.engine"].dispose()
    db.close()
    fresh.drop()


def _allocations(engine, participant_id) -> list:
    with engine.connect() as c:
        return c.execute(select(Allocation.arm).where(Allocation.participant_id == participant_id)).scalars().all()


@pg_only
def test_a_lost_commit_answers_outcome_unknown_and_the_retry_gets_the_allocation(faulty):
    w, proxy, p = faulty["world"], faulty["proxy"], faulty["p"]
    path = f"/participants/{p.study_id}/randomize"
    assert w.api("GET", "/me", "coordinator").status_code == 200  # warm the pool
    proxy.drop_after_commit = True
    r = w.api("POST", path, "coordinator", headers={"Idempotency-Key": "lost-commit-1"})
    e = err(r, 503, "outcome_unknown")
    assert proxy.commits_dropped == 1
    assert "not known whether" in e["message"] and "Idempotency-Key" in e["message"]
    assert "nothing was changed" not in e["message"].lower()
    assert r.headers.get("Retry-After")
    # the allocation did commit ...
    arms = _allocations(faulty["fresh"].engine, p.id)
    assert len(arms) == 1
    # ... and the retry with the same key answers it (the pool replaced the cut connection)
    again = w.api("POST", path, "coordinator", headers={"Idempotency-Key": "lost-commit-1"})
    assert again.status_code == 200, again.get_json()
    assert again.get_json()["arm"] == arms[0]
    assert _allocations(faulty["fresh"].engine, p.id) == arms


@pg_only
def test_a_lost_commit_on_the_web_form_says_the_outcome_is_unknown(faulty):
    app, proxy, p = faulty["app"], faulty["proxy"], faulty["p"]
    c = app.test_client()
    assert c.post("/login", data={"email": "coordinator@example.org", "password": PASSWORD}).status_code == 302
    proxy.drop_after_commit = True
    r = c.post(f"/participants/{p.study_id}/randomize", data={"confirm": "y", "idempotency_key": "web-lost-1"})
    page = r.get_data(as_text=True)
    assert r.status_code == 503, page
    assert "not known whether" in page and "nothing was changed" not in page.lower()
    assert len(_allocations(faulty["fresh"].engine, p.id)) == 1
    # the same form again (same key) shows the allocation instead of a second one
    r = c.post(f"/participants/{p.study_id}/randomize", data={"confirm": "y", "idempotency_key": "web-lost-1"})
    assert r.status_code == 302
    assert len(_allocations(faulty["fresh"].engine, p.id)) == 1


@pg_only
def test_database_down_is_503_unavailable_with_retry_after_then_recovers(faulty):
    w, proxy = faulty["world"], faulty["proxy"]
    assert w.api("GET", "/me", "manager").status_code == 200
    proxy.refusing = True
    proxy.cut_all()
    r = w.api("GET", "/me", "manager")
    e = err(r, 503, "unavailable")
    assert int(r.headers["Retry-After"]) > 0 and "cannot be reached" in e["message"]
    c = faulty["app"].test_client()
    page = c.get("/login")
    assert page.status_code in (200, 503)  # the login form needs no database
    r = c.post("/login", data={"email": "manager@example.org", "password": PASSWORD})
    assert r.status_code == 503 and r.headers.get("Retry-After") and "cannot be reached" in r.get_data(as_text=True)
    proxy.refusing = False
    assert w.api("GET", "/me", "manager").status_code == 200


@pg_only
def test_after_a_restart_the_first_request_succeeds(faulty):
    """pool_pre_ping: every pooled connection died with the restart; none is handed out dead."""
    w, proxy = faulty["world"], faulty["proxy"]
    for _ in range(3):
        assert w.api("GET", "/me", "manager").status_code == 200
    proxy.cut_all()
    r = w.api("GET", "/me", "manager")
    assert r.status_code == 200, r.get_json()


@pg_only
def test_read_only_postgresql_reads_and_refuses_writes_with_503(faulty):
    w, proxy, fresh = faulty["world"], faulty["proxy"], faulty["fresh"]
    with fresh.admin.connect() as c:
        c.execute(text(f'ALTER DATABASE "{fresh.name}" SET default_transaction_read_only = on'))
    try:
        proxy.cut_all()  # new connections take the setting
        faulty["app"].extensions["trial.engine"].dispose()
        assert w.api("GET", "/sites", "coordinator").status_code == 200
        before = _count(fresh.engine, Screening)
        r = w.api("POST", "/screenings", "coordinator", json={"site": "AT01", "screened_on": "2026-11-20",
                                                              "answers": w.answers()})
        e = err(r, 503, "unavailable")
        assert "read-only" in e["message"] and r.headers.get("Retry-After")
        assert _count(fresh.engine, Screening) == before
    finally:
        with fresh.admin.connect() as c:
            c.execute(text(f'ALTER DATABASE "{fresh.name}" SET default_transaction_read_only = off'))


def _count(engine, model) -> int:
    with engine.connect() as c:
        return c.execute(select(func.count()).select_from(model)).scalar()


# --- SQLite ---------------------------------------------------------------------------------------

@pytest.fixture()
def sqlite_trial(tmp_path):
    if is_pg():
        pytest.skip("SQLite storage faults")
    fresh = FreshDatabase("sqlite-faults")
    db = make_session_factory(fresh.engine)()
    world = World(db, _app(engine=fresh.engine)).setup()
    world.answers_now = world.answers()
    db.close()  # and no transaction (no SQLite write lock) held by the test from here on
    yield fresh, world
    fresh.drop()


def test_sqlite_full_disk_is_503_and_nothing_is_saved(sqlite_trial):
    fresh, world = sqlite_trial
    engine = make_engine(fresh.url)

    @event.listens_for(engine, "connect")
    def _full(dbapi_conn, _):
        cur = dbapi_conn.cursor()
        pages = cur.execute("PRAGMA page_count").fetchone()[0]
        cur.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow: as a full disk
        cur.close()
    app = _app(engine=engine)
    world.app = app
    before = _count(fresh.engine, Screening)
    body = {"site": "AT01", "screened_on": "2026-11-20", "answers": world.answers_now, "other_reason": "x" * 400}
    for _ in range(30):  # until a page is needed
        r = world.api("POST", "/screenings", "coordinator", json=body)
        if r.status_code != 201:
            break
    e = err(r, 503, "unavailable")
    assert "full" in e["message"] and r.headers.get("Retry-After")
    saved = _count(fresh.engine, Screening) - before
    assert world.api("GET", "/sites", "coordinator").status_code == 200  # reads still work
    assert _count(fresh.engine, Screening) - before == saved  # the refused one left nothing
    engine.dispose()


def test_sqlite_on_read_only_storage_reads_and_refuses_writes(sqlite_trial):
    fresh, world = sqlite_trial
    path = fresh.url.split("///", 1)[1]
    engine = make_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    world.app = _app(engine=engine)
    assert world.api("GET", "/sites", "coordinator").status_code == 200
    assert world.api("GET", "/protocol", "assessor").status_code == 200
    before = _count(fresh.engine, Screening)
    r = world.api("POST", "/screenings", "coordinator", json={"site": "AT01", "screened_on": "2026-11-20",
                                                              "answers": world.answers_now})
    e = err(r, 503, "unavailable")
    assert "read-only" in e["message"]
    assert _count(fresh.engine, Screening) == before
    engine.dispose()


def test_sqlite_file_that_cannot_be_opened_is_503(tmp_path):
    bad = tmp_path / "trial.db"
    bad.mkdir()  # a folder where the database file should be
    app = _app(f"sqlite:///{bad}")
    r = app.test_client().get("/api/v1/me", headers={"Authorization": "Bearer trl_whatever"})
    e = err(r, 503, "unavailable")
    assert "cannot be opened" in e["message"] and r.headers.get("Retry-After")


# --- what a 500 says --------------------------------------------------------------------------------

def test_a_500_says_nothing_was_changed_only_when_nothing_was_committed(app, world, db, monkeypatch):
    from trial import http, policy
    app.config["PROPAGATE_EXCEPTIONS"] = False

    def before_commit():
        raise RuntimeError("a bug before any commit")

    def after_commit():
        s = http.db()
        s.execute(text("SELECT count(*) FROM site"))
        s.commit()
        raise RuntimeError("a bug after a commit")
    for name, fn in (("bug_before", before_commit), ("bug_after", after_commit)):
        app.add_url_rule(f"/api/v1/test/{name}", f"api.{name}", fn)
        monkeypatch.setitem(policy.POLICY, f"api.{name}", policy.ANY)
    r = world.api("GET", "/test/bug_before", "manager")
    assert r.status_code == 500 and "nothing was changed" in r.get_json()["error"]["message"]
    r = world.api("GET", "/test/bug_after", "manager")
    msg = r.get_json()["error"]["message"]
    assert r.status_code == 500 and "nothing was changed" not in msg and "may have been saved" in msg
    assert r.get_json()["error"]["fields"] == {}


def test_405_names_the_allowed_methods(world):
    r = world.api("PUT", "/me", "manager")
    assert r.status_code == 405 and r.headers["Allow"] and "GET" in r.headers["Allow"]
    assert r.get_json()["error"] == {"code": "method_not_allowed", "message": "Method not allowed.", "fields": {}}


def test_gunicorn_preloads_the_app_and_resets_the_pool_after_fork():
    import runpy
    from pathlib import Path
    conf = runpy.run_path(str(Path(__file__).resolve().parent.parent / "config" / "gunicorn.conf.py"))
    assert conf["preload_app"] is True and callable(conf["post_fork"])


def test_every_postgresql_engine_pings_before_use():
    if not PG_URL:
        pytest.skip("PostgreSQL")
    e = make_engine(PG_URL)
    try:
        assert e.pool._pre_ping
    finally:
        e.dispose()
