"""Issue 27, start-up checks: the app as served (gunicorn's factory, `trial serve`) refuses to start,
with a log line that says why and exit status 4, on a schema not at head, an audit key that is not
the chain's or a seal key that does not open the seed; a database not reachable yet does not stop
it (/readyz says why). When the state goes bad under a running app, /readyz says why and a write
answers 503 naming the problem, never a bare 500."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from cryptography.fernet import Fernet

from tests.conftest import FreshDatabase
from tests.helpers import World
from tests.test_ops import _free_port, _wait_up
from trial import create_app, serving_app
from trial.db import make_session_factory
from trial.migrate import alembic_config

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = str(Path(sys.executable).parent / "gunicorn")


COLUMN_A_SCREENING_READS_IS_MISSING = "0023"


def older_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_revision(script.get_current_head())
    return head.down_revision if isinstance(head.down_revision, str) else head.down_revision[0]


@pytest.fixture()
def opened():
    """A fresh database, committed, with the world's users and randomization opened (a sealed
    seed, an audit chain under the suite's key)."""
    fresh = FreshDatabase("startup")
    db = make_session_factory(fresh.engine)()
    world = World(db, None)
    world.setup()
    db.commit()
    world.open(b"\x04" * 32)
    yield {"fresh": fresh, "db": db, "world": world}
    db.close()
    fresh.drop()


def gunicorn(url: str, tmp_path: Path, port: int | None = None, **env) -> subprocess.Popen:
    environ = {**os.environ, "TRIAL_DATABASE_URL": url, "TRIAL_WORKERS": "1",
               "TRIAL_BIND": f"127.0.0.1:{port or _free_port()}", "TRIAL_INSTANCE_PATH": str(tmp_path),
               "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), **env}
    return subprocess.Popen([GUNICORN, "-c", "config/gunicorn.conf.py"], cwd=ROOT, env=environ,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def refused(proc: subprocess.Popen) -> list[str]:
    """gunicorn's exit status and its log's reasons for refusing."""
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 4, err
    lines = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    return [x["message"] for x in lines if x["logger"] == "trial.app" and x["level"] == "CRITICAL"]


def test_gunicorn_starts_on_a_database_at_head_with_its_keys(opened, tmp_path):
    port = _free_port()
    proc = gunicorn(opened["fresh"].url, tmp_path, port)
    try:
        _wait_up(f"http://127.0.0.1:{port}", proc)
        import requests
        r = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert r.status_code == 200, r.text
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


def test_gunicorn_refuses_to_start_with_an_audit_key_that_is_not_the_chains(opened, tmp_path):
    proc = gunicorn(opened["fresh"].url, tmp_path, TRIAL_AUDIT_KEY="another-audit-key-of-forty-characters-xx")
    assert refused(proc) == ["refusing to start: TRIAL_AUDIT_KEY is not the key the audit chain was written with"]


def test_gunicorn_refuses_to_start_with_a_seal_key_that_does_not_open_the_seed(opened, tmp_path):
    proc = gunicorn(opened["fresh"].url, tmp_path, TRIAL_SEAL_KEY=Fernet.generate_key().decode())
    assert refused(proc) == ["refusing to start: TRIAL_SEAL_KEY does not open the randomization seed"]


def test_gunicorn_refuses_to_start_on_an_old_schema(tmp_path):
    older = older_revision()
    fresh = FreshDatabase("startup_old", revision=older)
    try:
        reasons = refused(gunicorn(fresh.url, tmp_path))
    finally:
        fresh.drop()
    assert len(reasons) == 1 and reasons[0].startswith(f"refusing to start: schema at revision {older}")
    assert "run `trial db upgrade`" in reasons[0]


def test_trial_serve_refuses_to_start_with_a_wrong_key(opened, tmp_path):
    env = {**os.environ, "TRIAL_DATABASE_URL": opened["fresh"].url, "TRIAL_INSTANCE_PATH": str(tmp_path),
           "TRIAL_AUDIT_KEY": "another-audit-key-of-forty-characters-xx"}
    r = subprocess.run([sys.executable, "-m", "trial.cli", "serve", "--port", str(_free_port())], env=env,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 4
    assert "refusing to start: TRIAL_AUDIT_KEY is not the key the audit chain was written with" in r.stderr


def test_a_database_not_reachable_at_start_is_no_refusal():
    app = serving_app({"DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/nowhere", "TESTING": True,
                       "SECRET_KEY": "test-secret"})
    r = app.test_client().get("/readyz")
    assert r.status_code == 503 and r.get_json()["checks"]["database"].startswith("unreachable")


def test_a_key_changed_under_a_running_app_answers_writes_503_naming_it(world, client, monkeypatch, caplog):
    """The audit key replaced under a running app: a write answers 503 (not 500) naming the key,
    nothing is written, /readyz says why, the log says it too."""
    from trial.audit import service as audit
    body = {"site": "AT01", "screened_on": "2026-01-05", "answers": world.answers()}
    before = audit.head(world.db)
    monkeypatch.setenv("TRIAL_AUDIT_KEY", "another-audit-key-of-forty-characters-xx")
    with caplog.at_level("ERROR", logger="trial"):
        r = world.api("POST", "/screenings", "coordinator", json=body)
    assert r.status_code == 503, r.get_data(as_text=True)
    err = r.get_json()["error"]
    assert err["code"] == "audit_key_mismatch" and "TRIAL_AUDIT_KEY" in err["message"] and r.headers["Retry-After"]
    assert audit.head(world.db) == before
    assert "audit_key_mismatch: TRIAL_AUDIT_KEY is not the key" in caplog.text
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "TRIAL_AUDIT_KEY" in ready.get_json()["checks"]["keys"]


def test_a_schema_migrated_down_under_a_running_app_answers_503_naming_the_upgrade(opened, caplog):
    """An app started at head whose database is migrated down (or restored from an older backup):
    a request that meets a missing column answers 503 naming `trial db upgrade`, not a bare 500."""
    world, fresh = opened["world"], opened["fresh"]
    world.app = create_app({"ENGINE": fresh.engine, "TESTING": True, "WTF_CSRF_ENABLED": False,
                            "SECRET_KEY": "test-secret"})
    body = {"site": "AT01", "screened_on": "2026-01-05", "answers": world.answers()}
    opened["db"].close()
    with fresh.engine.begin() as conn:
        # back past 0024, which added site.languages (read by every screening): the newest
        # revisions only add tables a screening never touches, so "one back" proves nothing
        command.downgrade(alembic_config(conn), COLUMN_A_SCREENING_READS_IS_MISSING)
    with caplog.at_level("ERROR", logger="trial"):
        r = world.api("POST", "/screenings", "coordinator", json=body)
    assert r.status_code == 503, r.get_data(as_text=True)
    assert r.get_json()["error"]["code"] == "unavailable"
    assert "trial db upgrade" in r.get_json()["error"]["message"]
    assert "run `trial db upgrade`" in caplog.text
    assert world.app.test_client().get("/readyz").get_json()["checks"]["migrations"] != "ok"


def test_trial_serve_logs_requests_by_their_rule_never_by_their_path(opened, tmp_path):
    """The development server's own request lines (werkzeug's) would print the raw path, with the
    child's study id: only the app's access line, naming the URL rule, is written."""
    import requests
    p = opened["world"].ready()
    port = _free_port()
    env = {**os.environ, "TRIAL_DATABASE_URL": opened["fresh"].url, "TRIAL_INSTANCE_PATH": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "trial.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_up(f"http://127.0.0.1:{port}", proc)
        for path in (f"/participants/{p.study_id}/sessions/new", f"/api/v1/participants/{p.study_id}?x={p.study_id}"):
            requests.get(f"http://127.0.0.1:{port}{path}", allow_redirects=False, timeout=10)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    access = [json.loads(x) for x in err.splitlines() if x.startswith("{") and '"trial.access"' in x]
    assert {"/participants/<study_id>/sessions/new", "/api/v1/participants/<study_id>"} <= {x["route"] for x in access}
    assert p.study_id not in out + err
