"""The `trial` command line, run as a real console script (subprocess) against its own databases.

The module shares one migrated database (``trial db upgrade`` has loaded the default protocol);
tests that need a particular state (a blank database, open randomization, an empty database for
the demo, a tampered audit trail) get a database of their own. Every failure must be exactly one
line on stderr starting with ``error:``, never a traceback, and must change nothing.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from tests.conftest import PG_URL, FreshDatabase, is_pg
from trial.protocol.service import DEFAULT_PROTOCOL

PASSWORD = "stdin-password-123"
TOML = DEFAULT_PROTOCOL.read_text()

_script = Path(sys.executable).parent / "trial"
TRIAL = [str(_script)] if _script.exists() else [sys.executable, "-m", "trial.cli"]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def trial(url: str, instance: Path, *args: str, stdin: str | None = None) -> Run:
    env = dict(os.environ, TRIAL_DATABASE_URL=url, TRIAL_SEAL_KEY=os.environ["TRIAL_SEAL_KEY"],
               TRIAL_INSTANCE_PATH=str(instance))
    p = subprocess.run(TRIAL + list(args), env=env, input=stdin, capture_output=True, text=True, timeout=300)
    return Run(p.returncode, p.stdout, p.stderr)


def ok(r: Run) -> Run:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert "Traceback" not in r.stderr
    return r


def one_line_error(r: Run, *fragments: str) -> str:
    """A failure: non-zero exit, exactly one line on stderr starting with `error:`, no traceback."""
    assert r.returncode != 0, f"expected a failure, got exit 0\nstdout: {r.stdout}"
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{r.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    for f in fragments:
        assert f in lines[0], f"{f!r} not in {lines[0]!r}"
    return lines[0]


class Db:
    """A database the CLI runs against, with a few direct read helpers for the assertions."""

    def __init__(self, fresh: FreshDatabase, instance: Path):
        self.fresh, self.url, self.engine, self.instance = fresh, fresh.url, fresh.engine, instance

    def run(self, *args: str, stdin: str | None = None) -> Run:
        return trial(self.url, self.instance, *args, stdin=stdin)

    def scalar(self, sql: str, **params):
        with self.engine.connect() as c:
            return c.execute(text(sql), params).scalar()

    def count(self, table: str, where: str = "1=1", **params) -> int:
        return self.scalar(f"SELECT count(*) FROM {table} WHERE {where}", **params)

    def snapshot(self) -> dict[str, int]:
        """Row counts of the tables a CLI command could write to."""
        return {t: self.count(t) for t in ("protocol_version", "site", "user_account", "role_assignment",
                                           "api_token", "audit_record", "randomization_design", "participant")}


def _new_db(label: str, tmp_path_factory, upgrade: bool = True) -> Db:
    d = Db(FreshDatabase(label), tmp_path_factory.mktemp(f"instance-{label}"))
    if upgrade:
        ok(d.run("db", "upgrade"))
    return d


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """The module's database: migrated, default protocol loaded by `trial db upgrade`."""
    d = _new_db("cli", tmp_path_factory)
    yield d
    d.fresh.drop()


@pytest.fixture()
def own_db(tmp_path_factory):
    """A database of the test's own (migrated; `db upgrade` run unless the test passes False)."""
    made = []

    def make(upgrade: bool = True) -> Db:
        d = _new_db("cliown", tmp_path_factory, upgrade)
        made.append(d)
        return d
    yield make
    for d in made:
        d.fresh.drop()


@pytest.fixture()
def blank_url(tmp_path):
    """A URL of a database with nothing in it (not even the migrations)."""
    if not is_pg():
        yield f"sqlite:///{tmp_path / 'blank.db'}"
        return
    name = f"trial_test_blank_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    yield f"{PG_URL.rsplit('/', 1)[0]}/{name}"
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- db upgrade ---------------------------------------------------------------------------------

def test_db_upgrade_creates_the_schema_and_loads_the_default_protocol_once(blank_url, tmp_path):
    r = ok(trial(blank_url, tmp_path, "db", "upgrade"))
    assert "newest schema" in r.stdout
    assert "loaded protocol version 1 (time-a)" in r.stdout

    engine = create_engine(blank_url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert {"alembic_version", "protocol_version", "site", "user_account", "audit_record",
                "randomization_design", "participant"} <= tables
        with engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM protocol_version")).scalar() == 1
            assert c.execute(text("SELECT trial_key FROM protocol_version")).scalar() == "time-a"
            revision = c.execute(text("SELECT version_num FROM alembic_version")).scalar()

        # idempotent: a second upgrade neither migrates nor loads anything again
        r2 = ok(trial(blank_url, tmp_path, "db", "upgrade"))
        assert "newest schema" in r2.stdout and "loaded protocol" not in r2.stdout
        with engine.connect() as c:
            assert c.execute(text("SELECT count(*) FROM protocol_version")).scalar() == 1
            assert c.execute(text("SELECT version_num FROM alembic_version")).scalar() == revision
        ok(trial(blank_url, tmp_path, "audit", "verify"))
    finally:
        engine.dispose()


def test_a_command_on_a_database_without_schema_says_to_run_db_upgrade(blank_url, tmp_path):
    r = trial(blank_url, tmp_path, "site", "create", "--code", "AT01", "--name", "Vienna")
    one_line_error(r, "database error", "trial db upgrade")


def test_db_upgrade_on_the_migrated_module_database_is_a_no_op(cli):
    before = cli.snapshot()
    r = ok(cli.run("db", "upgrade"))
    assert "loaded protocol" not in r.stdout
    assert cli.snapshot() == before


# --- protocol load ------------------------------------------------------------------------------

def test_protocol_load_makes_a_new_version_once(cli, tmp_path):
    versions = cli.count("protocol_version")
    marker = unique("amended")
    amended = TOML.replace("Can a parent attend parent counselling", f"Can a parent ({marker}) attend parent counselling")
    assert amended != TOML
    path = tmp_path / "amended.toml"
    path.write_text(amended)

    r = ok(cli.run("protocol", "load", str(path)))
    assert f"protocol version {versions + 1} (time-a" in r.stdout
    assert cli.count("protocol_version") == versions + 1
    assert marker in cli.scalar("SELECT source FROM protocol_version WHERE version = :v", v=versions + 1)
    assert cli.count("audit_record", "entity = 'protocol_version' AND entity_id = :v", v=str(versions + 1)) >= 1

    # the same text again is not a new version
    before = cli.snapshot()
    r = ok(cli.run("protocol", "load", str(path)))
    assert f"protocol version {versions + 1} " in r.stdout
    assert cli.snapshot() == before


def test_protocol_load_dry_run_show_and_diff(cli, tmp_path):
    versions = cli.count("protocol_version")
    path = tmp_path / "amended.toml"
    path.write_text(TOML.replace('label = "2 months"', 'label = "Two months"', 1).replace('amendment = "1.0"', 'amendment = "1.1"'))
    before = cli.snapshot()
    r = ok(cli.run("protocol", "load", str(path), "--dry-run"))
    assert "amendment 1.0 -> 1.1" in r.stdout and "visit month2: label '2 months' -> 'Two months'" in r.stdout
    assert f"would be version {versions + 1}; children re-planned: 0; forms newly due: 0; queries that would open: 0" \
        in r.stdout and "dry run: nothing was changed" in r.stdout
    assert cli.snapshot() == before
    path.write_text(TOML.replace("window_before = 14", "window_before = -1", 1).replace("weight = 1", "weight = 0", 1))
    r = cli.run("protocol", "load", str(path), "--dry-run")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "arms[0].weight: must be 1 or more" in r.stdout and "visits[1].window_before: must be 0 or more" in r.stdout
    assert cli.snapshot() == before
    assert ok(cli.run("protocol", "show")).stdout == cli.scalar(
        "SELECT source FROM protocol_version WHERE version = :v", v=versions)
    one_line_error(cli.run("protocol", "show", "--version", "99"), "no protocol version 99")
    r = ok(cli.run("protocol", "diff", str(versions), str(versions)))
    assert r.stdout.strip() == f"versions {versions} and {versions} are the same protocol"


@pytest.mark.parametrize("mutate, key", [
    (lambda t: t.replace("weight = 1", "weight = 0", 1), "arms[0].weight"),
    (lambda t: t.replace("block_sizes = [4, 8]", "block_sizes = [4, 6]"), "randomization.block_sizes[1]"),
    (lambda t: t.replace('method = "permuted_blocks"', 'method = "coin_toss"'), "randomization.method"),
    (lambda t: t.replace("weight = 1", "weight = ", 1), "(file)"),
], ids=["weight-0", "block-size-6", "unknown-method", "invalid-toml"])
def test_protocol_load_rejects_a_malformed_file_naming_the_key(cli, tmp_path, mutate, key):
    bad = mutate(TOML)
    assert bad != TOML
    path = tmp_path / "bad.toml"
    path.write_text(bad)
    before = cli.snapshot()
    line = one_line_error(cli.run("protocol", "load", str(path)), "bad.toml", key)
    assert len(line) < 300
    assert cli.snapshot() == before


def test_protocol_load_of_a_missing_file_fails_cleanly(cli, tmp_path):
    before = cli.snapshot()
    one_line_error(cli.run("protocol", "load", str(tmp_path / "nope.toml")), "nope.toml")
    assert cli.snapshot() == before


# --- site create --------------------------------------------------------------------------------

def test_site_create(cli):
    r = ok(cli.run("site", "create", "--code", "de01", "--name", "Berlin", "--country", "DE", "--target", "25",
                   "--timezone", "Europe/Berlin"))
    assert "site DE01 created" in r.stdout
    with cli.engine.connect() as c:
        row = c.execute(text("SELECT name, country, target, timezone FROM site WHERE code = 'DE01'")).one()
    assert tuple(row) == ("Berlin", "DE", 25, "Europe/Berlin")
    assert cli.count("audit_record", "entity = 'site' AND entity_id = 'DE01' AND action = 'create'") >= 1


@pytest.mark.parametrize("args, fragment", [
    (["--code", "D1", "--name", "Nowhere"], "code must be two letters and two digits"),
    (["--code", "DE02", "--name", "Nowhere", "--country", "DEU"], "country"),
    (["--code", "DE02", "--name", "Nowhere", "--target", "-3"], "target"),
    (["--code", "DE02", "--name", "Nowhere", "--timezone", "Mars/Olympus"], "unknown time zone"),
    (["--code", "DE02", "--name", "  "], "name is required"),
], ids=["bad-code", "bad-country", "negative-target", "unknown-timezone", "blank-name"])
def test_site_create_rejects_bad_input(cli, args, fragment):
    before = cli.snapshot()
    one_line_error(cli.run("site", "create", *args), fragment)
    assert cli.snapshot() == before
    assert cli.count("site", "code = 'DE02'") == 0


def test_site_create_rejects_a_duplicate_code(cli):
    ok(cli.run("site", "create", "--code", "FR01", "--name", "Paris"))
    before = cli.snapshot()
    one_line_error(cli.run("site", "create", "--code", "fr01", "--name", "Paris again"), "FR01", "already exists")
    assert cli.snapshot() == before
    assert cli.scalar("SELECT name FROM site WHERE code = 'FR01'") == "Paris"


# --- user create / user token -------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_site(cli):
    ok(cli.run("site", "create", "--code", "UK01", "--name", "London", "--country", "GB"))
    return "UK01"


def test_user_create_reads_the_password_from_stdin(cli, cli_site):
    from trial.auth.service import authenticate
    from trial.errors import Forbidden

    email = unique("cora") + "@example.org"
    r = ok(cli.run("user", "create", "--email", email, "--name", "Cora Coordinator", "--role", "coordinator",
                   "--site", cli_site, "--password-stdin", stdin=PASSWORD + "\n"))
    assert f"user {email} created" in r.stdout
    assert PASSWORD not in r.stdout + r.stderr

    with Session(cli.engine) as s:
        try:
            user = authenticate(s, email, PASSWORD)
            assert user.email == email
            assert [(x.role, x.site_id) for x in user.roles] == [
                ("coordinator", s.execute(text("SELECT id FROM site WHERE code = :c"), {"c": cli_site}).scalar())]
            with pytest.raises(Forbidden):
                authenticate(s, email, PASSWORD + "x")
        finally:
            s.rollback()


@pytest.mark.parametrize("args, stdin, fragment", [
    (["--role", "wizard"], PASSWORD, "unknown role 'wizard'"),
    (["--role", "coordinator"], PASSWORD, "needs a site"),
    (["--role", "coordinator", "--site", "ZZ99"], PASSWORD, "unknown site 'ZZ99'"),
    (["--role", "coordinator", "--site", "UK01"], "short", "at least 12 characters"),
    (["--role", "coordinator", "--site", "UK01"], "", "at least 12 characters"),
    (["--role", "assessor", "--role", "coordinator", "--site", "UK01"], PASSWORD, "assessor"),
    (["--role", "assessor", "--role", "therapist", "--site", "UK01"], PASSWORD, "assessor"),
], ids=["bad-role", "missing-site", "unknown-site", "short-password", "empty-password",
        "assessor-and-coordinator", "assessor-and-therapist"])
def test_user_create_rejects_bad_input(cli, cli_site, args, stdin, fragment):
    email = unique("bad") + "@example.org"
    before = cli.snapshot()
    one_line_error(cli.run("user", "create", "--email", email, "--name", "Bad User", *args, "--password-stdin",
                           stdin=stdin + "\n"), fragment)
    assert cli.snapshot() == before
    assert cli.count("user_account", "email = :e", e=email) == 0


def test_user_create_rejects_a_duplicate_email(cli, cli_site):
    email = unique("dup") + "@example.org"
    ok(cli.run("user", "create", "--email", email, "--name", "First", "--role", "manager", "--password-stdin",
               stdin=PASSWORD + "\n"))
    before = cli.snapshot()
    one_line_error(cli.run("user", "create", "--email", email.upper(), "--name", "Second", "--role", "manager",
                           "--password-stdin", stdin=PASSWORD + "\n"), "already exists")
    assert cli.snapshot() == before
    assert cli.scalar("SELECT name FROM user_account WHERE email = :e", e=email) == "First"


def test_user_credential_records_a_therapists_credential_from_the_protocol_list(cli, cli_site):
    email = unique("mia") + "@example.org"
    ok(cli.run("user", "create", "--email", email, "--name", "Mia Therapist", "--role", "therapist",
               "--site", cli_site, "--password-stdin", stdin=PASSWORD + "\n"))
    r = ok(cli.run("user", "credential", "--email", email, "--kind", "HCPC", "--number", "AS12345",
                   "--valid-from", "2024-01-01", "--valid-to", "2029-12-31"))
    assert r.stdout.strip() == f"credential HCPC AS12345 of {email} recorded, valid 2024-01-01 to 2029-12-31"
    one_line_error(cli.run("user", "credential", "--email", email, "--kind", "NOPE", "--number", "1",
                           "--valid-to", "2029-12-31"), "Credential must be one of the protocol's credentials")
    one_line_error(cli.run("user", "credential", "--email", email, "--kind", "HCPC", "--number", "2",
                           "--valid-to", "2029-02-30"), "Valid to", "not a date of the calendar")
    with Session(create_engine(cli.url)) as s:
        rows = s.execute(text("SELECT kind, number, issuer FROM credential c JOIN user_account u ON u.id = c.user_id "
                              "WHERE u.email = :e"), {"e": email}).all()
    assert [tuple(r) for r in rows] == [("HCPC", "AS12345", "Health and Care Professions Council")]


def test_user_token_prints_one_working_bearer_token(cli, cli_site):
    from trial import create_app

    email = unique("tom") + "@example.org"
    ok(cli.run("user", "create", "--email", email, "--name", "Tom Therapist", "--role", "therapist",
               "--site", cli_site, "--password-stdin", stdin=PASSWORD + "\n"))
    r = ok(cli.run("user", "token", "--email", email))
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and lines[0] == lines[0].strip() and lines[0]
    token = lines[0]

    app = create_app({"DATABASE_URL": cli.url, "TESTING": True, "SECRET_KEY": "test"})
    try:
        client = app.test_client()
        me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200, me.get_json()
        assert me.get_json()["email"] == email
        assert me.get_json()["roles"] == ["therapist"]
        assert me.get_json()["sites"] == [cli_site]
        assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}x"}).status_code == 401
    finally:
        app.extensions["trial.engine"].dispose()

    # each call issues a new token
    assert ok(cli.run("user", "token", "--email", email)).stdout.strip() != token


def test_user_token_for_an_unknown_email_fails(cli):
    before = cli.snapshot()
    r = cli.run("user", "token", "--email", "nobody@example.org")
    one_line_error(r, "nobody@example.org")
    assert r.stdout == ""
    assert cli.snapshot() == before


# --- user list / deactivate / reactivate / reset-password (issue 25) -----------------------------

def _web(url: str):
    from trial import create_app
    return create_app({"DATABASE_URL": url, "TESTING": True, "SECRET_KEY": "test", "WTF_CSRF_ENABLED": False})


def _new_user(cli, site: str, prefix: str, role: str = "therapist") -> str:
    email = unique(prefix) + "@example.org"
    ok(cli.run("user", "create", "--email", email, "--name", f"{prefix.title()} Person", "--role", role,
               "--site", site, "--password-stdin", stdin=PASSWORD + "\n"))
    return email


def _listed(cli, *args: str) -> dict[str, dict]:
    import csv
    r = ok(cli.run("user", "list", "--format", "csv", *args))
    rows = list(csv.DictReader(r.stdout.splitlines()))
    assert list(rows[0]) == ["email", "name", "roles", "active", "2fa", "last_login"] if rows else True
    return {row["email"]: row for row in rows}


def test_user_list_shows_every_account_and_filters_the_inactive(cli, cli_site):
    never = _new_user(cli, cli_site, "never", "assessor")
    recent = _new_user(cli, cli_site, "recent")
    old = _new_user(cli, cli_site, "old")
    app = _web(cli.url)
    try:
        assert app.test_client().post("/login", data={"email": recent, "password": PASSWORD}).status_code == 302
    finally:
        app.extensions["trial.engine"].dispose()
    with cli.engine.begin() as c:
        c.execute(text("UPDATE user_account SET last_login_at = '2020-03-04 05:06:07' WHERE email = :e"), {"e": old})
    rows = _listed(cli)
    assert {never, recent, old} <= set(rows)
    assert rows[never] == {"email": never, "name": "Never Person", "roles": f"assessor@{cli_site}", "active": "yes",
                           "2fa": "no", "last_login": "never"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rows[recent]["last_login"])
    assert rows[old]["last_login"] == "2020-03-04T05:06:07Z"
    assert {r["2fa"] for r in rows.values()} == {"no"}  # no second factor yet: the column stays
    inactive = _listed(cli, "--inactive-days", "30")
    assert never in inactive and old in inactive and recent not in inactive
    assert recent in _listed(cli, "--inactive-days", "0")
    table = ok(cli.run("user", "list")).stdout.splitlines()
    assert table[0].split() == ["email", "name", "roles", "active", "2fa", "last_login"]
    assert any(line.startswith(never) and line.endswith("never") for line in table)
    one_line_error(cli.run("user", "list", "--inactive-days", "-1"), "inactive-days")
    one_line_error(cli.run("user", "list", "--format", "xml"), "format")


def test_user_deactivate_refuses_login_and_tokens_and_reactivate_restores_login(cli, cli_site):
    email = _new_user(cli, cli_site, "leaver")
    token = ok(cli.run("user", "token", "--email", email)).stdout.strip()
    app = _web(cli.url)
    try:
        web = app.test_client()
        assert web.post("/login", data={"email": email, "password": PASSWORD}).status_code == 302
        assert web.get("/").status_code == 200
        audits = cli.count("audit_record")
        assert ok(cli.run("user", "deactivate", "--email", email)).stdout.strip() == f"user {email} deactivated"
        assert cli.count("audit_record", "entity_id = :e AND action = 'update' AND field = 'active' AND new = 'false'",
                         e=email) == 1
        assert cli.count("audit_record") > audits
        assert _listed(cli)[email]["active"] == "no"
        assert web.get("/").status_code == 302  # its web session has ended
        assert app.test_client().post("/login", data={"email": email, "password": PASSWORD}).status_code == 401
        assert app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
        # again: nothing changes
        audits = cli.count("audit_record")
        assert "already deactivated" in ok(cli.run("user", "deactivate", "--email", email)).stdout
        assert cli.count("audit_record") == audits
        assert ok(cli.run("user", "reactivate", "--email", email)).stdout.strip() == f"user {email} reactivated"
        assert cli.count("audit_record", "entity_id = :e AND action = 'update' AND field = 'active' AND new = 'true'", e=email) == 1
        assert app.test_client().post("/login", data={"email": email, "password": PASSWORD}).status_code == 302
        assert app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    finally:
        app.extensions["trial.engine"].dispose()
    before = cli.snapshot()
    one_line_error(cli.run("user", "deactivate", "--email", "nobody@example.org"), "nobody@example.org")
    one_line_error(cli.run("user", "reactivate", "--email", "nobody@example.org"), "nobody@example.org")
    assert cli.snapshot() == before


def test_user_reset_password_prints_a_one_time_link(cli, cli_site, monkeypatch):
    email = _new_user(cli, cli_site, "forgot")
    monkeypatch.setenv("TRIAL_BASE_URL", "https://trial.example.org")
    r = ok(cli.run("user", "reset-password", "--email", email))
    link = r.stdout.strip()
    assert re.fullmatch(r"https://trial\.example\.org/reset-password/[A-Za-z0-9_-]{40,}", link), r.stdout
    token = link.rsplit("/", 1)[1]
    assert cli.count("password_reset", "token_hash = :t", t=token) == 0  # only its hash is kept
    assert cli.count("audit_record", "entity_id = :e AND action = 'issue_password_reset' AND actor LIKE 'cli:%'",
                     e=email) == 1
    path = "/reset-password/" + token
    app = _web(cli.url)
    try:
        assert app.test_client().get(path).status_code == 200
        assert app.test_client().post(path, data={"new_password": "the-user-s-own-1"}).status_code == 302
        assert app.test_client().post(path, data={"new_password": "a-second-try-12"}).status_code == 410
        assert app.test_client().post("/login", data={"email": email, "password": "the-user-s-own-1"}).status_code == 302
    finally:
        app.extensions["trial.engine"].dispose()
    monkeypatch.delenv("TRIAL_BASE_URL")
    r = ok(cli.run("user", "reset-password", "--email", email))
    assert r.stdout.strip().startswith("/reset-password/") and "TRIAL_BASE_URL" in r.stderr
    before = cli.snapshot()
    one_line_error(cli.run("user", "reset-password", "--email", "nobody@example.org"), "nobody@example.org")
    assert cli.snapshot() == before


def test_user_create_help_lists_every_role(cli):
    from click.testing import CliRunner

    from trial.auth.models import ROLES, SITE_ROLES
    from trial.cli import main
    out = " ".join(CliRunner().invoke(main, ["user", "create", "--help"]).output.split())
    for role in ROLES:
        assert role in out, f"{role} missing from `trial user create --help`"
    assert "(" + ", ".join(SITE_ROLES) + ") need --site" in out


# --- site list / update (issue 25) --------------------------------------------------------------

def test_site_list_and_update(cli):
    ok(cli.run("site", "create", "--code", "SE01", "--name", "Stockholm", "--country", "SE", "--target", "20",
               "--timezone", "Europe/Stockholm"))
    lines = ok(cli.run("site", "list")).stdout.splitlines()
    assert lines[0].split() == ["code", "name", "country", "target", "timezone", "languages", "open"]
    assert ["SE01", "Stockholm", "SE", "20", "Europe/Stockholm", "-", "yes"] in [line.split() for line in lines]
    r = ok(cli.run("site", "update", "--code", "se01", "--name", "Stockholm South", "--target", "35",
                   "--timezone", "Europe/Oslo"))
    assert r.stdout.strip() == "site SE01 updated"
    with cli.engine.connect() as c:
        row = c.execute(text("SELECT name, target, timezone, country FROM site WHERE code = 'SE01'")).one()
    assert tuple(row) == ("Stockholm South", 35, "Europe/Oslo", "SE")
    with cli.engine.connect() as c:
        changed = {f for (f,) in c.execute(text(
            "SELECT field FROM audit_record WHERE entity = 'site' AND entity_id = 'SE01' AND action = 'update'"))}
    assert changed == {"name", "target", "timezone"}


@pytest.mark.parametrize("args, fragment", [
    (["--code", "SE02", "--name", "Nowhere"], "No site with code 'SE02'"),
    (["--code", "SE01", "--timezone", "Mars/Olympus"], "unknown time zone"),
    (["--code", "SE01", "--target", "-3"], "target"),
    (["--code", "SE01", "--target", "many"], "many"),
    (["--code", "SE01", "--name", " "], "name is required"),
    (["--name", "No code"], "--code"),
], ids=["unknown-code", "bad-timezone", "negative-target", "bad-int", "blank-name", "no-code"])
def test_site_update_refusals_change_nothing(cli, args, fragment):
    if not cli.count("site", "code = 'SE01'"):
        ok(cli.run("site", "create", "--code", "SE01", "--name", "Stockholm", "--timezone", "Europe/Stockholm"))
    before = cli.snapshot()
    with cli.engine.connect() as c:
        row = c.execute(text("SELECT name, target, timezone FROM site WHERE code = 'SE01'")).one()
    one_line_error(cli.run("site", "update", *args), fragment)
    assert cli.snapshot() == before
    with cli.engine.connect() as c:
        assert c.execute(text("SELECT name, target, timezone FROM site WHERE code = 'SE01'")).one() == row


def test_site_languages_at_the_command_line(cli):
    """--language, repeated or a comma list, the default first; validated against the system's
    languages (a refusal names the unknown code and changes nothing); audited."""
    ok(cli.run("site", "create", "--code", "SE03", "--name", "Lund", "--language", "nb", "--language", "en"))
    lines = [line.split() for line in ok(cli.run("site", "list")).stdout.splitlines()]
    assert [r for r in lines if r[0] == "SE03"] == [["SE03", "Lund", "-", "0", "UTC", "nb,en", "yes"]]
    ok(cli.run("site", "update", "--code", "SE03", "--language", "pt-BR,he, en"))
    with cli.engine.connect() as c:
        stored = c.execute(text("SELECT languages FROM site WHERE code = 'SE03'")).scalar_one()
        assert (stored if isinstance(stored, list) else json.loads(stored)) == ["pt_BR", "he", "en"]
        [(old, new)] = c.execute(text("SELECT old, new FROM audit_record WHERE entity = 'site' AND entity_id = 'SE03' "
                                      "AND action = 'update' AND field = 'languages'")).all()
    assert json.loads(old) == ["nb", "en"] and json.loads(new) == ["pt_BR", "he", "en"]
    before = cli.snapshot()
    one_line_error(cli.run("site", "update", "--code", "SE03", "--language", "sv"), "'sv'",
                   "not a language of the system", "pt_BR")
    one_line_error(cli.run("site", "update", "--code", "SE03", "--language", "de,de"), "more than once")
    one_line_error(cli.run("site", "create", "--code", "SE04", "--name", "Malmö", "--language", "klingon"), "'klingon'")
    assert cli.snapshot() == before
    assert "--language" in ok(cli.run("site", "update", "--help")).stdout


def test_trial_help_loads_no_model_and_no_database_library():
    """`trial --help` answers at once: the command groups (and SQLAlchemy, the models, pandas …)
    load only when one is run."""
    code = ("import sys; sys.argv = ['trial', '--help']\nfrom trial.cli import main\ntry:\n    main()\n"
            "except SystemExit:\n    pass\nprint(sorted(m for m in ('sqlalchemy', 'trial.models', 'pandas', 'flask', "
            "'trial.settings') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "[]", r.stdout + r.stderr


# --- audit verify -------------------------------------------------------------------------------

def test_audit_verify_on_an_intact_chain(cli):
    r = ok(cli.run("audit", "verify"))
    assert f"audit chain intact: {cli.count('audit_record')} records" in r.stdout


def test_audit_verify_names_the_tampered_record(own_db):
    d = own_db()
    ok(d.run("site", "create", "--code", "IT01", "--name", "Rome"))
    ok(d.run("audit", "verify"))
    assert d.count("audit_record") >= 3
    target = 2
    original = d.scalar("SELECT new FROM audit_record WHERE seq = :s", s=target)

    if is_pg():  # audit rows are append-only: the trigger refuses the update
        with pytest.raises(DBAPIError, match="(?i)audit"), d.engine.begin() as c:
            c.execute(text("UPDATE audit_record SET new = 'tampered' WHERE seq = :s"), {"s": target})
    with d.engine.begin() as c:
        if is_pg():
            c.execute(text("ALTER TABLE audit_record DISABLE TRIGGER USER"))
        c.execute(text("UPDATE audit_record SET new = 'tampered' WHERE seq = :s"), {"s": target})
        if is_pg():
            c.execute(text("ALTER TABLE audit_record ENABLE TRIGGER USER"))
    assert d.scalar("SELECT new FROM audit_record WHERE seq = :s", s=target) == "tampered" != original

    line = one_line_error(d.run("audit", "verify"))
    assert re.search(rf"\brecord {target}\b", line), line
    assert not re.search(r"\brecord 1\b", line)


# --- randomization ------------------------------------------------------------------------------

def test_randomization_open_prints_the_commitment_and_opens_once(own_db, tmp_path):
    d = own_db()
    ok(d.run("site", "create", "--code", "AT01", "--name", "Vienna"))
    ok(d.run("site", "create", "--code", "NO01", "--name", "Bergen"))
    one_line_error(d.run("randomization", "verify"), "never opened")

    r = ok(d.run("randomization", "open"))
    last = r.stdout.splitlines()[-1]
    assert re.fullmatch(r"[0-9a-f]{64}", last), r.stdout
    assert d.scalar("SELECT commitment FROM randomization_design") == last
    assert d.count("randomization_design") == 1
    assert d.count("stratum") == 2
    assert d.scalar("SELECT count(*) FROM audit_record WHERE entity = 'randomization'") >= 1

    before = d.snapshot()
    one_line_error(d.run("randomization", "open"), "already open")
    assert d.snapshot() == before
    assert d.scalar("SELECT commitment FROM randomization_design") == last

    # before unblinding the seed is sealed: verification is refused
    one_line_error(d.run("randomization", "verify"), "not unblinded")

    # once open, an amendment may not change the arms
    path = tmp_path / "arms.toml"
    path.write_text(TOML.replace('label = "Enhanced usual care"', 'label = "Usual care"'))
    one_line_error(d.run("protocol", "load", str(path)), "arms")
    assert d.snapshot() == before


def test_randomization_simulate_reports_imbalance_and_guessing(cli):
    r = ok(cli.run("randomization", "simulate", "--participants", "100", "--runs", "20"))
    out = r.stdout
    assert "Imbalance" in out and "Predictability" in out
    assert re.search(r"participants\s+100 per run", out)
    assert re.search(r"runs\s+20\b", out)
    assert "low:1" in out and "high:1" in out and "usual:2" in out
    overall = re.search(r"overall \(participants\)\s+([\d.]+)\s+([\d.]+)", out)
    assert overall, out
    correct = float(re.search(r"correct guesses\s+([\d.]+)%", out).group(1))
    chance = float(re.search(r"chance \(most likely arm\)\s+([\d.]+)%", out).group(1))
    assert 0 <= correct <= 100
    assert chance == pytest.approx(50.0)  # the 'usual' arm has weight 2 of 4


def test_randomization_simulate_with_a_bad_protocol_file_fails_cleanly(cli, tmp_path):
    path = tmp_path / "sim.toml"
    path.write_text(TOML.replace("block_sizes = [4, 8]", "block_sizes = [6]"))
    one_line_error(cli.run("randomization", "simulate", "--runs", "2", "--protocol", str(path)),
                   "randomization.block_sizes[0]")


# --- demo ---------------------------------------------------------------------------------------

# `trial demo` (an empty database only, working logins, an intact trail, the same at every reset):
# tests/test_demo.py


# --- help and usage -----------------------------------------------------------------------------

@pytest.mark.parametrize("group, commands", [
    ([], ["db", "protocol", "site", "user", "randomization", "audit", "demo", "serve"]),
    (["db"], ["upgrade"]),
    (["protocol"], ["load"]),
    (["site"], ["create", "list", "update"]),
    (["user"], ["create", "token", "list", "deactivate", "reactivate", "reset-password"]),
    (["randomization"], ["open", "verify", "simulate"]),
    (["audit"], ["verify"]),
], ids=["trial", "db", "protocol", "site", "user", "randomization", "audit"])
def test_help_for_every_command_group(cli, group, commands):
    """The group's help through the console script; each command's own help in the same process
    (click's runner: a process each cost a second of start-up apiece and tested nothing more)."""
    from click.testing import CliRunner

    from trial.cli import main
    r = ok(cli.run(*group, "--help"))
    assert r.stdout.startswith("Usage: ")
    for c in commands:
        assert re.search(rf"^\s+{c}\b", r.stdout, re.MULTILINE), f"{c} missing from help of {group}:\n{r.stdout}"
        sub = CliRunner().invoke(main, [*group, c, "--help"])
        assert sub.exit_code == 0 and sub.output.startswith("Usage: "), sub.output


@pytest.mark.parametrize("args", [
    ["site", "create", "--code", "XX01"],
    ["site", "create", "--code", "XX01", "--name", "X", "--target", "many"],
    ["randomization", "simulate", "--participants", "0"],
    ["no-such-command"],
], ids=["missing-option", "bad-int", "out-of-range", "unknown-command"])
def test_usage_errors_are_one_line(cli, args):
    before = cli.snapshot()
    one_line_error(cli.run(*args))
    assert cli.snapshot() == before
