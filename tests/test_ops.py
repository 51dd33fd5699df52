"""Issue 27, what the operators' tools see: liveness and readiness (each failing check named), the
Prometheus metrics behind their token (parsed with prometheus_client's parser, counts that move
with requests, no series labelled by arm), and the request id: echoed or made, in every log line of
its request (JSON on standard error) and in every 5xx body."""
from __future__ import annotations

import json
import re

import pytest
from alembic.script import ScriptDirectory
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FreshDatabase
from tests.test_lock_build import sign_hard_lock, trial_db  # noqa: F401  (a fixture)
from trial import create_app
from trial.migrate import alembic_config
from trial.policy import POLICY, PUBLIC

TOKEN = "a-metrics-token-for-the-tests"
CHECKS = {"database", "migrations", "keys", "worker", "mail"}


def _app(**config):
    return create_app({"TESTING": True, "WTF_CSRF_ENABLED": False, "SECRET_KEY": "test-secret", **config})


@pytest.fixture()
def metered(engine, session_factory):
    return _app(ENGINE=engine, SESSION_FACTORY=session_factory, METRICS_TOKEN=TOKEN)


# --- health and readiness ---------------------------------------------------------------------

def test_healthz_answers_without_a_database_and_readyz_says_the_database_is_unreachable():
    app = _app(DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:1/nowhere?connect_timeout=2")
    c = app.test_client()
    r = c.get("/healthz")
    assert r.status_code == 200 and r.get_json() == {"status": "ok"}
    r = c.get("/readyz")
    assert r.status_code == 503
    body = r.get_json()
    assert body["status"] != "ok" and set(body["checks"]) == CHECKS
    assert body["checks"]["database"].startswith("unreachable")


def test_readyz_is_ok_on_a_database_at_head_with_the_right_keys(client):
    r = client.get("/readyz")
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"status": "ok", "checks": dict.fromkeys(sorted(CHECKS), "ok")} or \
        r.get_json()["checks"] == dict.fromkeys(CHECKS, "ok")


def test_readyz_with_a_wrong_audit_key_is_not_ready(client, monkeypatch):
    monkeypatch.setenv("TRIAL_AUDIT_KEY", "another-key-of-at-least-32-characters!")
    r = client.get("/readyz")
    assert r.status_code == 503
    checks = r.get_json()["checks"]
    assert "TRIAL_AUDIT_KEY" in checks["keys"]
    assert {k: v for k, v in checks.items() if k != "keys"} == dict.fromkeys(CHECKS - {"keys"}, "ok")


def test_readyz_on_an_old_schema_names_the_revisions():
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_revision(script.get_current_head())
    older = head.down_revision if isinstance(head.down_revision, str) else head.down_revision[0]
    fresh = FreshDatabase("ops_old", revision=older)
    try:
        r = _app(ENGINE=fresh.engine).test_client().get("/readyz")
        assert r.status_code == 503
        checks = r.get_json()["checks"]
        assert checks["database"] == "ok"
        assert older in checks["migrations"] and head.revision in checks["migrations"]
        assert "trial db upgrade" in checks["migrations"]
    finally:
        fresh.drop()


def test_readyz_names_dead_letters_when_mail_is_configured(monkeypatch):
    import datetime as dt

    from trial.db import make_session_factory
    from trial.notify.models import MailMessage
    fresh = FreshDatabase("ops_mail")
    try:
        monkeypatch.setenv("TRIAL_SMTP_URL", "smtp://127.0.0.1:1")
        c = _app(ENGINE=fresh.engine).test_client()
        assert c.get("/readyz").status_code == 200
        with make_session_factory(fresh.engine)() as s:
            s.add(MailMessage(recipient="m@example.org", subject="SAE", body="-", attempts=20, last_error="refused",
                              kind="sae", dead_at=dt.datetime(2026, 1, 1)))
            s.commit()
        r = c.get("/readyz")
        assert r.status_code == 503 and "dead letters" in r.get_json()["checks"]["mail"]
    finally:
        fresh.drop()


def test_readyz_names_a_stuck_bundle_build_and_the_metrics_count_from_the_database(trial_db):  # noqa: F811
    """A hard lock whose builds nobody picked up for a minute, or whose worker went silent, is "not
    ready" (when builds run apart); the database's figures are in the metrics."""
    import datetime as dt

    from sqlalchemy import update

    from trial.lock.models import DataLock, LockBuild
    lock_id = sign_hard_lock(trial_db["db"])
    c = _app(ENGINE=trial_db["engine"], LOCK_BUILDER="external", METRICS_TOKEN=TOKEN).test_client()
    assert c.get("/readyz").status_code == 200  # just signed: a worker has a minute to pick it up
    families = _scrape(c)
    assert families["trial_randomizations"].samples[0].value == 4
    builds = {s.labels["status"]: s.value for s in families["trial_lock_builds"].samples if s.name.endswith("_total")}
    assert builds == {"building": 2, "ready": 0, "failed": 0}
    db, old = trial_db["db"], dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=5)
    db.execute(update(DataLock).where(DataLock.id == lock_id).values(created_at=old))
    db.commit()
    r = c.get("/readyz")
    assert r.status_code == 503 and "trial worker" in r.get_json()["checks"]["worker"]
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    db.execute(update(LockBuild).where(LockBuild.lock_id == lock_id).values(worker="w1", heartbeat=now))
    db.commit()
    assert c.get("/readyz").get_json()["checks"]["worker"] == "ok"  # claimed, beating
    db.execute(update(LockBuild).where(LockBuild.lock_id == lock_id).values(heartbeat=old))
    db.commit()
    assert c.get("/readyz").status_code == 503  # its worker went silent
    inline = _app(ENGINE=trial_db["engine"]).test_client()
    assert inline.get("/readyz").status_code == 200  # inline builds: no worker to wait for


def test_readyz_with_a_seal_key_that_cannot_open_the_seed_is_not_ready(trial_db, monkeypatch):  # noqa: F811
    from cryptography.fernet import Fernet
    c = _app(ENGINE=trial_db["engine"]).test_client()
    assert c.get("/readyz").status_code == 200
    monkeypatch.setenv("TRIAL_SEAL_KEY", Fernet.generate_key().decode())
    r = c.get("/readyz")
    assert r.status_code == 503 and "TRIAL_SEAL_KEY" in r.get_json()["checks"]["keys"]


# --- metrics ------------------------------------------------------------------------------------

def _scrape(client) -> dict:
    r = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.mimetype == "text/plain"
    return {f.name: f for f in text_string_to_metric_families(r.get_data(as_text=True))}


def _requests(families, route: str) -> float:
    return sum(s.value for s in families["trial_http_requests"].samples
               if s.name == "trial_http_requests_total" and s.labels["route"] == route and s.labels["status"] == "200")


def test_metrics_are_404_without_the_token_with_a_wrong_one_and_when_none_is_set(metered, client):
    c = metered.test_client()
    assert c.get("/metrics").status_code == 404
    assert c.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 404
    assert c.get("/metrics", headers={"Authorization": TOKEN}).status_code == 404
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 404  # no token configured


def test_metrics_text_parses_and_counts_move_with_requests(metered, world):
    c = metered.test_client()
    before = _scrape(c)
    for name in ("trial_http_requests", "trial_http_request_duration_seconds", "trial_randomizations",
                 "trial_lock_builds", "trial_mail_outbox_pending"):
        assert name in before, name
    for _ in range(3):
        assert c.get("/healthz").status_code == 200
    after = _scrape(c)
    assert _requests(after, "/healthz") == _requests(before, "/healthz") + 3
    durations = [s for s in after["trial_http_request_duration_seconds"].samples
                 if s.name.endswith("_count") and s.labels["route"] == "/healthz"]
    assert durations and durations[0].value >= 3


def test_metrics_label_routes_by_rule_and_nothing_by_arm(metered, world):
    p = world.enroll()
    world.baseline(p)
    world.open()
    world.randomize(p)
    c = metered.test_client()
    assert c.get(f"/api/v1/participants/{p.study_id}", headers=world.headers("coordinator")).status_code == 200
    families = _scrape(c)
    arms = {"low", "high", "usual"}
    labels = [s.labels for f in families.values() for s in f.samples]
    assert not any("arm" in k for lab in labels for k in lab)
    assert not any(v in arms or p.study_id in v for lab in labels for v in lab.values())
    routes = {lab.get("route") for lab in labels}
    assert "/api/v1/participants/<study_id>" in routes


# --- request ids and the log --------------------------------------------------------------------

def _lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]


def test_request_id_echoed_when_sane_and_made_otherwise(client):
    assert client.get("/healthz", headers={"X-Request-ID": "lb-2026.12_07-abc"}).headers["X-Request-ID"] == \
        "lb-2026.12_07-abc"
    for bad in ("x" * 65, "has space", "semi;colon", ""):
        rid = client.get("/healthz", headers={"X-Request-ID": bad}).headers["X-Request-ID"]
        assert re.fullmatch(r"[0-9a-f]{32}", rid), bad
    assert re.fullmatch(r"[0-9a-f]{32}", client.get("/login").headers["X-Request-ID"])


def test_every_log_line_is_json_with_the_request_id_and_the_user(world, client, capsys):
    capsys.readouterr()
    r = world.api("GET", "/me", "coordinator", headers={"X-Request-ID": "req-me-1"})
    assert r.status_code == 200 and r.headers["X-Request-ID"] == "req-me-1"
    lines = [x for x in _lines(capsys) if x.get("request_id") == "req-me-1"]
    access = [x for x in lines if x["logger"] == "trial.access"]
    assert len(access) == 1
    a = access[0]
    assert a["route"] == "/api/v1/me" and a["status"] == 200 and a["method"] == "GET"
    assert a["user_id"] == world.users["coordinator"].id and isinstance(a["duration"], float)
    assert {"time", "level", "logger", "message"} <= set(a)
    assert world.tokens["coordinator"] not in json.dumps(lines)


def test_a_5xx_carries_the_request_id_in_its_body_and_its_log_lines(app, capsys, monkeypatch):
    def boom():
        raise RuntimeError("injected failure")
    app.config["PROPAGATE_EXCEPTIONS"] = False
    app.add_url_rule("/ops-test/boom", "ops_test_boom", boom)
    app.add_url_rule("/api/v1/ops-test/boom", "ops_test_api_boom", boom)
    monkeypatch.setitem(POLICY, "ops_test_boom", PUBLIC)
    monkeypatch.setitem(POLICY, "ops_test_api_boom", PUBLIC)
    c = app.test_client()
    capsys.readouterr()
    r = c.get("/api/v1/ops-test/boom", headers={"X-Request-ID": "boom-api"})
    assert r.status_code == 500 and r.get_json()["request_id"] == "boom-api"
    assert r.get_json()["error"]["code"] == "server_error"
    r = c.get("/ops-test/boom")
    rid = r.headers["X-Request-ID"]
    assert r.status_code == 500 and rid in r.get_data(as_text=True)
    lines = _lines(capsys)
    for want in ("boom-api", rid):
        mine = [x for x in lines if x.get("request_id") == want]
        assert any(x["logger"] == "trial.access" and x["status"] == 500 for x in mine)
        assert any("injected failure" in x.get("exception", "") for x in mine)


# --- two gunicorn workers -----------------------------------------------------------------------

def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(base: str, proc) -> None:
    import time

    import requests
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "gunicorn exited"
        try:
            if requests.get(base + "/healthz", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            time.sleep(0.2)
    raise AssertionError("gunicorn did not come up")


def test_two_gunicorn_workers_add_up_their_counts_also_after_one_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    import requests
    root = Path(__file__).resolve().parent.parent
    fresh = FreshDatabase("ops_gunicorn")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TRIAL_DATABASE_URL": fresh.url, "TRIAL_METRICS_TOKEN": TOKEN, "TRIAL_WORKERS": "2",
           "TRIAL_BIND": f"127.0.0.1:{port}", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "-c", "config/gunicorn.conf.py"],
                            cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _wait_up(base, proc)
        sent = 0
        deadline = time.monotonic() + 30
        while True:  # until both workers have served (the second may still be booting at first)
            with ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(lambda _: requests.get(base + "/healthz", timeout=10).status_code, range(40)))
            assert codes == [200] * 40
            sent += 40
            if len(list((tmp_path / "metrics").glob("counter_*.db"))) >= 2 or time.monotonic() > deadline:
                break
        auth = {"Authorization": f"Bearer {TOKEN}"}

        def healthz_count() -> float:
            fam = {f.name: f for f in text_string_to_metric_families(requests.get(base + "/metrics", headers=auth,
                                                                                  timeout=10).text)}
            return _requests(fam, "/healthz")
        assert healthz_count() >= sent  # (the probes of _wait_up count too)
        pids = {p.stem.split("_")[-1] for p in (tmp_path / "metrics").glob("counter_*.db")}
        assert len(pids) == 2, pids  # both workers counted
        before = healthz_count()
        os.kill(int(min(pids)), signal.SIGKILL)
        time.sleep(1.5)
        assert healthz_count() >= before  # a dead worker's counts stay counted
        r = requests.get(base + "/readyz", timeout=10)
        assert r.status_code == 200, r.text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        fresh.drop()
    lines = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    assert lines and all(x.get("request_id") for x in lines if x["logger"] == "trial.access")
    assert any(x["logger"] == "gunicorn.error" for x in lines)


# --- a database error's log lines carry neither its values nor its text (hostile review) ---------

ARM_WORDS = re.compile(r"\b(low|high|usual)\b")


def _refuse_allocations(db, code: str) -> None:
    """A trigger that fails every allocation the way the database would (a unique violation, an
    internal error, a lock not granted in time), its message quoting the study id and the arm as
    PostgreSQL's own "Key (...)=(...) already exists" does; SQLite's RAISE takes a fixed text and
    its internal error is an integer overflow (the statement's values are what they would leak)."""
    from sqlalchemy import text
    if db.get_bind().dialect.name == "postgresql":
        db.execute(text(f"""
            CREATE FUNCTION test_refuse_allocation() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION USING ERRCODE = '{code}',
                    MESSAGE = format('refused allocation of %s to arm=%s', NEW.study_id, NEW.arm),
                    DETAIL = format('Key (study_id, arm)=(%s, %s) already exists.', NEW.study_id, NEW.arm);
            END $$"""))
        db.execute(text("CREATE TRIGGER test_refuse_allocation BEFORE INSERT ON allocation "
                        "FOR EACH ROW EXECUTE FUNCTION test_refuse_allocation()"))
    else:
        fail = {"XX000": "SELECT abs(-9223372036854775808)",
                "23505": "SELECT RAISE(ABORT, 'UNIQUE constraint failed: allocation.participant_id')"}[code]
        db.execute(text(f"CREATE TRIGGER test_refuse_allocation BEFORE INSERT ON allocation BEGIN {fail}; END"))
    db.commit()


@pytest.mark.parametrize("code, status, handled", [("XX000", 500, True), ("55P03", 503, True), ("23505", 500, False)])
def test_a_database_error_while_randomizing_logs_its_class_and_sqlstate_never_the_arm_or_the_study_id(
        world, db, app, capsys, code, status, handled):
    from sqlalchemy import func, select

    from trial.participants.models import Allocation
    if code == "55P03" and db.get_bind().dialect.name != "postgresql":
        pytest.skip("SQLite: a trigger raises only constraint errors, and the test's one connection cannot be kept "
                    "waiting for a lock; the 503 branch is the same code as on PostgreSQL")
    app.config["PROPAGATE_EXCEPTIONS"] = False  # (a 500 answered as served, not raised into the test)
    world.open(bytes(range(32)))
    p = world.ready()
    _refuse_allocations(db, code)
    capsys.readouterr()
    r = world.api("POST", f"/participants/{p.study_id}/randomize", "coordinator",
                  headers={"Idempotency-Key": "k-log", "X-Request-ID": "rand-fails-1"})
    assert r.status_code == status, r.get_json()
    assert r.get_json()["request_id"] == "rand-fails-1"
    assert db.execute(select(func.count()).select_from(Allocation)).scalar() == 0
    err = capsys.readouterr().err
    lines = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    mine = [x for x in lines if x.get("request_id") == "rand-fails-1"]
    # an internal error is a 500, a lock not granted a 503 (trial.http._database_error: one line naming
    # the class and SQLSTATE); a unique violation is retried by the route and then its own 500
    failure = [x for x in mine if "sqlstate" in x]
    if handled:
        assert len(failure) == 1, mine
        f = failure[0]
        assert f["level"] == ("ERROR" if status == 500 else "WARNING")
        assert f["error"] in ("OperationalError", "InternalError", "IntegrityError")
        if db.get_bind().dialect.name == "postgresql":
            assert f["sqlstate"] == code and f"SQLSTATE {code}" in f["message"]
            assert f["driver_error"].startswith("psycopg.errors.")
        assert "trial/randomize/service.py" in f["stack"] and "exception" not in f
    else:
        assert failure == [] and any("randomization kept conflicting" in x.get("exception", "") for x in mine)
    assert any(x["logger"] == "trial.access" and x["status"] == status for x in mine)
    # nothing of the row: not the study id, not the arm, not the database's text, not the statement's values
    for leak in (p.study_id, "[parameters", "parameters hidden", "already exists", "arm=", "Key (",
                 "refused allocation", "UNIQUE constraint failed", "database is locked"):
        assert leak not in err, leak
    assert not ARM_WORDS.search(err), ARM_WORDS.search(err)


def test_every_engine_hides_a_statements_values_from_its_errors(engine):
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from trial.db import make_engine
    assert engine.hide_parameters
    other = make_engine(engine.url.render_as_string(hide_password=False), statement_timeout=5, lock_timeout=2)
    try:
        assert other.hide_parameters
        with other.connect() as c, pytest.raises(DBAPIError) as caught:
            c.execute(text("SELECT no_such_column FROM participant WHERE study_id = :s"), {"s": "SECRET-STUDY-ID"})
        assert "SECRET-STUDY-ID" not in str(caught.value) and "SQL parameters hidden" in str(caught.value)
    finally:
        other.dispose()


def test_access_lines_name_the_url_rule_never_the_path_and_gunicorn_writes_none(opened_world, capsys):
    """A child's path carries the study id, and its pages (the sessions pages exist only for the
    therapy arms) tell arms apart: the app's access line names the URL rule; gunicorn's own access
    log (which would print the raw path) is off."""
    from pathlib import Path
    world, p = opened_world
    capsys.readouterr()
    for path in (f"/participants/{p.study_id}", f"/participants/{p.study_id}?q={p.study_id}"):
        assert world.api("GET", path, "coordinator", headers={"X-Request-ID": "path-check"}).status_code in (200, 400)
    lines = [x for x in _lines(capsys) if x.get("request_id") == "path-check"]
    access = [x for x in lines if x["logger"] == "trial.access"]
    assert [x["route"] for x in access] == ["/api/v1/participants/<study_id>"] * 2
    assert p.study_id not in json.dumps(lines)
    conf = (Path(__file__).parent.parent / "config" / "gunicorn.conf.py").read_text()
    assert re.search(r"^accesslog = None$", conf, re.MULTILINE) and "access_log_format" not in conf


@pytest.fixture()
def opened_world(world):
    world.open(bytes(range(32)))
    return world, world.ready()
