"""The demo is the same at every reset: two loads of `trial demo` into two fresh databases, in two
processes with different hash seeds, give the same clinical rows (children, numbers, dates
relative to the sites' today, allocations, queries, adverse events, fidelity draws), apart from
the moments the rows were written. The first load also shows what `trial demo` promises: it loads
into an empty database only, prints logins that work, and leaves an intact audit trail."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.orm import Session

from tests.conftest import FreshDatabase
from trial.demo import SITES
from trial.timeline import today

_script = Path(sys.executable).parent / "trial"
TRIAL = [str(_script)] if _script.exists() else [sys.executable, "-m", "trial.cli"]

# the clinical tables, and the columns that say when a row was written (the wall clock at the load)
# or are computed from that moment (an SAE's 24-hour reporting clock runs from its report)
WRITTEN_AT = {
    "screening": {"created_at"},
    "participant": set(),
    "allocation": set(),
    "assessment": {"entered_at"},
    "status_event": {"recorded_at"},
    "therapy_session": {"logged_at"},
    "counselling_session": {"logged_at"},
    "child_goal": {"changed_at"},
    "course_tally": set(),
    "planned_visit": set(),
    "data_query": {"raised_at", "updated_at"},
    "data_query_message": {"at"},
    "adverse_event": {"reported_at", "report_due"},
    "adverse_event_follow_up": {"recorded_at"},
    "source_verification": {"verified_at"},
    "fidelity_draw": {"drawn_at"},
    "fidelity_sample": set(),
    "fidelity_rating": {"rated_at"},
}


def _load(hash_seed: str, then=None) -> dict[str, list[dict]]:
    """`trial demo` into a fresh database in a process of its own; the clinical rows, in order.
    ``then(run, engine, stdout)`` checks more of the loaded database before it is dropped."""
    fresh = FreshDatabase("demo")
    try:
        env = dict(os.environ, TRIAL_DATABASE_URL=fresh.url, PYTHONHASHSEED=hash_seed)

        def run(*args):
            return subprocess.run([*TRIAL, *args], check=False, env=env, capture_output=True, text=True, timeout=300)
        p = run("demo")
        assert p.returncode == 0 and "Demo loaded" in p.stdout, p.stderr
        if then is not None:
            then(run, fresh.engine, p.stdout)
        rows = {}
        with fresh.engine.connect() as c:
            for table, skip in WRITTEN_AT.items():
                cols = [col["name"] for col in inspect(c).get_columns(table) if col["name"] not in skip]
                assert len(cols) > 1 and not skip - {col["name"] for col in inspect(c).get_columns(table)}, table
                pk = inspect(c).get_pk_constraint(table)["constrained_columns"] or cols
                listed = ", ".join(f'"{n}"' for n in cols)
                rows[table] = [dict(r._mapping) for r in c.execute(text(f'SELECT {listed} FROM "{table}" ORDER BY '
                                                                + ", ".join(f'"{n}"' for n in pk)))]
        return rows
    finally:
        fresh.drop()


def _loads_once_with_working_logins(run, engine, stdout: str) -> None:
    from trial.auth.service import authenticate
    logins = re.findall(r"^\s+(\w+)\s+(\S+@\S+)\s+(\S+)$", stdout, re.MULTILINE)
    assert {role for role, _, _ in logins} >= {"admin", "manager", "coordinator", "assessor"}
    with engine.connect() as c:
        count = {t: c.execute(text(f'SELECT count(*) FROM "{t}"')).scalar()
                 for t in ("site", "participant", "protocol_version", "randomization_design", "allocation",
                           "audit_record")}
    assert count["site"] >= 2 and count["participant"] > 0 and count["protocol_version"] == 1
    assert count["randomization_design"] == 1 and count["allocation"] > 0
    assert run("audit", "verify").returncode == 0
    _, email, password = logins[0]
    with Session(engine) as s:
        try:
            assert authenticate(s, email, password).email == email
        finally:
            s.rollback()
    again = run("demo")  # only into an empty database: one line, nothing written
    assert again.returncode != 0 and "empty database" in again.stderr and len(again.stderr.splitlines()) == 1
    with engine.connect() as c:
        assert c.execute(text('SELECT count(*) FROM "audit_record"')).scalar() == count["audit_record"]


def test_the_demo_is_the_same_at_every_reset():
    days = [today(tz) for *_, tz, _target in SITES]
    first, second = _load("1", then=_loads_once_with_working_logins), _load("2")
    if [today(tz) for *_, tz, _target in SITES] != days:
        pytest.skip("a site's day changed during the test: the demo's dates moved with it")
    for table in WRITTEN_AT:
        assert first[table], f"the demo loads no {table} rows"
        assert len(first[table]) == len(second[table]), table
        for a, b in zip(first[table], second[table]):
            assert a == b, f"{table}: {a} != {b}"
    # and it is a trial: children in every arm, open and answered queries, a serious adverse event
    assert len({r["arm"] for r in second["allocation"]}) == 3
    assert {"open", "answered", "closed"} <= {r["status"] for r in second["data_query"]}
    assert any(r["serious"] for r in second["adverse_event"])
