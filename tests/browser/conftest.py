"""Browser tests: Chromium (Debian's /usr/bin/chromium, never a downloaded browser) driven by
pytest-playwright against a live server.

Each test process (pytest-xdist worker) starts one server in a thread on a free port, over its own
fresh, migrated database with the demo data (``trial.demo``) and a few children the flows need:
one whose 2-month visit is due today, one in a music-therapy course and an open query for the
coordinator. The users are the demo's (``<role>@demo.trial`` / ``trial.demo.DEMO_PASSWORDS[role]``); every
login goes through the login page once and its cookie is reused.

A failing test leaves full-page screenshots of its pages in ``tests/artifacts/``.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import select
from werkzeug.serving import WSGIRequestHandler, make_server

from tests.conftest import FreshDatabase
from trial.app import create_app
from trial.auth.models import User
from trial.db import make_session_factory
from trial.demo import load_demo
from trial.enrollment.service import enroll, record_screening
from trial.outcomes.service import record_assessment
from trial.participants.service import allocation_of
from trial.protocol.service import current
from trial.queries import service as queries
from trial.randomize.service import randomize
from trial.scope import CliActor
from trial.timeline import today

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("TRIAL_CHROMIUM", "/usr/bin/chromium"))
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = ROOT / "tests" / "artifacts"
ROLES = ("coordinator", "therapist", "assessor", "monitor", "manager", "statistician", "admin", "investigator", "dmc")
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1366, "height": 900}
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    """Without Chromium the browser tests are skipped, saying why (CI installs it: .ci/run)."""
    if CHROMIUM.exists():
        return
    skip = pytest.mark.skip(reason=f"browser tests need Chromium at {CHROMIUM} (apt-get install chromium "
                                   "chromium-driver, as .ci/run does); it is not installed here")
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test, so its fixtures know whether it failed."""
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """The system's Chromium; Playwright never downloads one here."""
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM)}


# --- the live server ---------------------------------------------------------------------------

@dataclass
class Live:
    url: str
    sessions: object                       # session factory on the server's database
    logins: dict[str, tuple[str, str]]     # role -> (e-mail, password)
    ids: dict[str, object] = field(default_factory=dict)
    states: dict[str, dict] = field(default_factory=dict)  # role -> storage state after logging in
    app: object = None                     # the server's Flask app (a test may change its config, and restore it)


def _flow_children(db) -> dict:
    """What the role flows act on, made as the command line would (the demo's way): a child at
    AT01 whose 2-month visit is due today, a child of a music-therapy arm at AT01 two weeks into
    its course without a session, and an open query on a record the coordinator answers."""
    actor = CliActor(email="browser-tests")
    ok = {c["key"]: c["qualifying_answer"] for c in current(db).content["criteria"]}
    day = today("Europe/Vienna")

    def child(randomized_on: dt.date, n: int):
        screened = randomized_on - dt.timedelta(days=8)
        sc = record_screening(db, actor, {"site": "AT01", "screened_on": screened.isoformat(), "answers": ok})
        p = enroll(db, actor, {"screening_id": sc.id, "consent_date": (screened + dt.timedelta(days=3)).isoformat(),
                               "date_of_birth": (screened - dt.timedelta(days=5 * 365)).isoformat(), "sex": "female"},
                   at=dt.datetime.combine(screened + dt.timedelta(days=3), dt.time(9, 0)))
        record_assessment(db, actor, p.study_id, {"visit": "baseline", "instrument": "ados2",
                                                  "performed_on": (screened + dt.timedelta(days=5)).isoformat(),
                                                  "values": {"social_affect": 12, "rrb": 4, "css": 6}})
        randomize(db, actor, p.study_id, f"browser-{n}", at=dt.datetime.combine(randomized_on, dt.time(10, 0)))
        return p

    due = child(day - dt.timedelta(days=61), 0)
    in_course = None
    for n in range(1, 20):
        p = child(day - dt.timedelta(days=14), n)
        if allocation_of(db, p.id).arm != "usual":
            in_course = p
            break
    assert in_course is not None, "no music-therapy allocation in 19 randomizations"
    manager = db.execute(select(User).where(User.email == "manager@demo.trial")).scalar_one()
    q = queries.raise_query(db, manager, {"study_id": due.study_id, "on": {"kind": "participant"},
                                      "text": "Please confirm the consent date against the signed form."})
    return {"due_month2": due.study_id, "in_course": in_course.study_id, "query": q.id,
            "query_ref": queries.ref_of(db, q),  # what the pages show: its number at its site
            "session_day": day - dt.timedelta(days=3)}


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):  # the test output shows failures, not every request
        pass


@pytest.fixture(scope="session")
def live():
    database = FreshDatabase("browser")
    sessions = make_session_factory(database.engine)
    with sessions() as db:
        logins = {role: (email, password) for role, email, password in load_demo(db)}
        ids = _flow_children(db)
        db.commit()
    # a role's session is logged in once and reused by every later test: it must not end when idle
    # (tests/browser/test_session.py shortens the limit for its own fresh login)
    app = create_app({"ENGINE": database.engine, "SESSION_FACTORY": sessions, "DATABASE_URL": database.url,
                      "SECRET_KEY": "browser-tests-" + os.urandom(8).hex(), "IDLE_MINUTES": 24 * 60})
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    try:
        yield Live(url=f"http://127.0.0.1:{server.server_port}", sessions=sessions, logins=logins, ids=ids, app=app)
    finally:
        server.shutdown()
        thread.join(10)
        database.drop()


def login(page, live: Live, role: str) -> None:
    """Log in through the login page, as a person would."""
    email, password = live.logins[role]
    page.goto(live.url + "/login")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: url.startswith(live.url + "/") and "/login" not in url)  # the dmc's start is /data-cuts


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:120] or "page"


@pytest.fixture()
def open_as(browser, live, request):
    """``open_as(role, viewport=DESKTOP, axe=False)``: a page of a new browser context logged in as
    ``role`` (None: not logged in), with axe-core loaded into every document when ``axe``."""
    made = []

    def _open(role: str | None, viewport: dict = DESKTOP, axe: bool = False):
        if role is not None and role not in live.states:
            ctx = browser.new_context(viewport=viewport)
            login(ctx.new_page(), live, role)
            live.states[role] = ctx.storage_state()
            ctx.close()
        ctx = browser.new_context(viewport=viewport, storage_state=live.states.get(role) if role else None)
        ctx.set_default_timeout(15_000)
        if axe:
            ctx.add_init_script(path=str(AXE))
        page = ctx.new_page()
        made.append((role, ctx, page))
        return page

    yield _open
    failed = any(getattr(getattr(request.node, f"rep_{when}", None), "failed", False) for when in ("setup", "call"))
    for i, (role, ctx, page) in enumerate(made):
        if failed and not page.is_closed():
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(Exception):  # a screenshot that fails must not hide the failure itself
                page.screenshot(path=str(ARTIFACTS / f"{slug(request.node.name)}-{i}-{role}.png"), full_page=True)
        ctx.close()


# --- what a role can reach ----------------------------------------------------------------------

NOT_PAGES = re.compile(r"\.(zip|pdf|csv|svg|json|png)$|^/api/|^/static/")


def pattern(path: str) -> str:
    """Pages of one kind: ids (study IDs, numbers) and query values replaced."""
    return re.sub(r"\d+", "N", re.sub(r"[A-Z]{2}\d\d-\d{4}", "ID", path.split("?")[0]))


def reachable(page, base: str, visit=None, per_kind: int = 2, limit: int = 80) -> list[str]:
    """Every kind of page a logged-in user reaches by following links from the start page (at most
    ``per_kind`` of each kind, ``limit`` in all; links are GET requests and change nothing).
    ``visit(path)`` is called on each page once it is loaded."""
    seen, kinds, queue, out = set(), {}, ["/"], []
    while queue and len(out) < limit:
        path = queue.pop(0)
        if path in seen:
            continue
        seen.add(path)
        kind = pattern(path)
        if kinds.get(kind, 0) >= per_kind:
            continue
        resp = page.goto(base + path)
        if resp is None or "text/html" not in resp.headers.get("content-type", ""):
            continue
        kinds[kind] = kinds.get(kind, 0) + 1
        out.append(path)
        if visit is not None:
            visit(path)
        hrefs = page.eval_on_selector_all("a[href]", "els => els.map(a => a.getAttribute('href'))")
        for href in hrefs:
            if not href or href.startswith(("#", "mailto:", "http://", "https://", "//")):
                continue
            href = href.split("#")[0]
            if not href.startswith("/") or NOT_PAGES.search(href.split("?")[0]) or href in seen:
                continue
            queue.append(href)
    return out
