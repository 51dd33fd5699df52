"""Test harness: the schema is built by running the migrations (SQLite file by default, a fresh
PostgreSQL database when TRIAL_TEST_DATABASE_URL is set); each test runs inside a transaction
that is rolled back at the end (sessions join it through savepoints)."""
from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

_tmp = tempfile.mkdtemp(prefix="trial-tests-")
os.environ["TRIAL_INSTANCE_PATH"] = _tmp
os.environ.setdefault("TRIAL_SEAL_KEY", Fernet.generate_key().decode())
os.environ.setdefault("TRIAL_AUDIT_KEY", "test-audit-key-" + os.urandom(16).hex())
os.environ.pop("TRIAL_DATABASE_URL", None)
os.environ["TRIAL_ENV"] = "development"

from sqlalchemy import create_engine, text
from sqlalchemy.orm import sessionmaker

import trial.models  # noqa: F401  every model registered, as the app and the CLI do
from trial.db import TrialSession, make_engine
from trial.migrate import upgrade

PG_URL = os.environ.get("TRIAL_TEST_DATABASE_URL")
TRANSLATIONS = Path(__file__).resolve().parents[1] / "trial" / "translations"


def _compile_catalogues() -> None:
    """The pages' compiled catalogues (.mo), which `make install` builds from the .po files (they are
    not kept in git), built here too when missing or older, so that a plain pytest run of a fresh
    clone sees every language. Written to a temporary file and renamed: test workers may race."""
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po
    for po in TRANSLATIONS.glob("*/LC_MESSAGES/messages.po"):
        mo = po.with_suffix(".mo")
        if mo.exists() and mo.stat().st_mtime >= po.stat().st_mtime:
            continue
        with po.open("rb") as f:
            catalog = read_po(f, locale=po.parent.parent.name)
        tmp = mo.with_name(f"messages.mo.{os.getpid()}.{uuid.uuid4().hex[:6]}")
        with tmp.open("wb") as f:
            write_mo(f, catalog)
        os.replace(tmp, mo)


_compile_catalogues()


def is_pg() -> bool:
    return bool(PG_URL)


class FreshDatabase:
    """A new, migrated database: a PostgreSQL database created for the run or an SQLite file."""

    def __init__(self, label: str = "main", revision: str = "head"):
        self.name = f"trial_test_{label}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        if PG_URL:
            base = PG_URL.rsplit("/", 1)[0]
            self.admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
            with self.admin.connect() as c:
                c.execute(text(f'CREATE DATABASE "{self.name}"'))
            self.url = f"{base}/{self.name}"
        else:
            self.admin = None
            self.url = f"sqlite:///{Path(_tmp) / (self.name + '.db')}"
        self.engine = make_engine(self.url)
        upgrade(self.engine, revision)

    def drop(self) -> None:
        self.engine.dispose()
        if self.admin is not None:
            with self.admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
            self.admin.dispose()


@pytest.fixture(scope="session")
def database():
    db = FreshDatabase()
    yield db
    db.drop()


@pytest.fixture(scope="session")
def engine(database):
    return database.engine


@pytest.fixture()
def connection(engine):
    from trial import cache
    cache.summaries.clear()  # each test's data is rolled back: its chain heads may come again
    conn = engine.connect()
    trans = conn.begin()
    yield conn
    trans.rollback()
    conn.close()


@pytest.fixture()
def session_factory(connection):
    return sessionmaker(bind=connection, class_=TrialSession, join_transaction_mode="create_savepoint",
                        expire_on_commit=False)


@pytest.fixture()
def db(session_factory):
    s = session_factory()
    yield s
    s.close()


@pytest.fixture()
def app(engine, session_factory):
    from trial import create_app
    app = create_app({"ENGINE": engine, "SESSION_FACTORY": session_factory, "TESTING": True,
                      "WTF_CSRF_ENABLED": False, "SECRET_KEY": "test-secret"})
    return app


@pytest.fixture()
def client(app):
    return app.test_client()


# --- data helpers ----------------------------------------------------------------------------

from tests.helpers import World


@pytest.fixture()
def world(db, app):
    """Protocol, two sites (AT01, NO01) and a user of every role; see tests/helpers.py."""
    w = World(db, app)
    w.setup()
    return w


def _schemathesis_stats() -> dict:
    import sys
    return getattr(sys.modules.get("tests.test_schemathesis"), "STATS", None) or {}


_WORKER_STATS: dict = {}


def pytest_sessionfinish(session):
    """A pytest-xdist worker hands its schemathesis figures to the controller."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["schemathesis"] = _schemathesis_stats()


def pytest_testnodedown(node, error):
    _WORKER_STATS.update(getattr(node, "workeroutput", {}).get("schemathesis", {}))


def pytest_terminal_summary(terminalreporter):
    """What schemathesis ran, when it ran: operations, generated cases, requests (one per role per
    case) and the statuses seen."""
    stats = _schemathesis_stats() or _WORKER_STATS
    if not stats:
        return
    statuses: dict = {}
    for s in stats.values():
        for k, v in s["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    terminalreporter.write_line(
        f"schemathesis: {len(stats)} operations, {sum(s['cases'] for s in stats.values())} generated cases, "
        f"{sum(s['requests'] for s in stats.values())} requests; statuses "
        + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())))
