"""The schema comes only from the migrations, and the models agree with them."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from trial.migrate import alembic_config, current_revision
from trial.models import metadata


def test_database_is_at_head(engine):
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert current_revision(engine) == head


def test_models_and_migrations_agree(engine):
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, metadata)
    assert diff == [], f"models and migrations differ; write a migration: {diff}"


def test_every_model_table_exists(engine):
    tables = set(inspect(engine).get_table_names())
    assert set(metadata.tables) <= tables


def test_downgrade_and_upgrade_round_trip():
    from alembic import command

    from tests.conftest import FreshDatabase
    fresh = FreshDatabase("roundtrip")
    try:
        with fresh.engine.begin() as conn:
            command.downgrade(alembic_config(conn), "base")
        assert set(inspect(fresh.engine).get_table_names()) <= {"alembic_version"}
        with fresh.engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
        assert set(metadata.tables) <= set(inspect(fresh.engine).get_table_names())
    finally:
        fresh.drop()


def test_trial_models_alone_registers_every_table(engine):
    """The app and the CLI register the schema by importing trial.models: every table the
    migrations create must be there, or a command in a fresh process misses a foreign key."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", "import trial.models as m; print(' '.join(sorted(m.metadata.tables)))"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert set(inspect(engine).get_table_names()) - {"alembic_version"} == set(out)


def test_0011_fills_the_visit_plan_from_the_records_already_there(tmp_path):
    """Upgrading a database that holds randomized children builds their visit plan exactly as the
    services would (and records what it was derived under)."""
    import datetime as dt

    from alembic import command
    from sqlalchemy import func, select, text

    from tests.conftest import FreshDatabase
    from tests.helpers import World
    from trial import create_app
    from trial.db import make_session_factory
    from trial.visitplan.models import PlannedVisit, VisitPlanState
    from trial.visitplan.service import ensure_current, stale
    fresh = FreshDatabase("plan0011")
    try:
        s = make_session_factory(fresh.engine)()
        w = World(s, create_app({"ENGINE": fresh.engine, "SESSION_FACTORY": make_session_factory(fresh.engine),
                                 "TESTING": True, "SECRET_KEY": "t"})).setup()
        w.open(bytes(range(32)))
        kids = [w.ready() for _ in range(3)]
        for p in kids:
            w.randomize(p)
        s.execute(text("UPDATE allocation SET randomized_at = :t"), {"t": dt.datetime.utcnow() - dt.timedelta(days=61)})
        s.commit()
        w.api("POST", f"/participants/{kids[0].study_id}/assessments", "assessor",
              json={"visit": "month2", "instrument": "ados2", "performed_on": dt.date.today().isoformat(),
                    "values": {"social_affect": 10, "rrb": 3, "css": 5}, "allocation_guess": "unsure", "guess_confidence": 2})
        w.api("POST", f"/participants/{kids[1].study_id}/events", "coordinator",
              json={"type": "withdrawn", "on": dt.date.today().isoformat(), "reason": "Family decision"})
        s.close()
        with fresh.engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0010")
            command.upgrade(alembic_config(conn), "head")
        s = make_session_factory(fresh.engine)()
        assert s.execute(select(func.count()).select_from(PlannedVisit)).scalar() == 3 * 3
        assert stale(s) == []
        assert s.execute(select(func.sum(PlannedVisit.blinded_entered))).scalar() == 1
        assert s.execute(select(func.count()).where(PlannedVisit.ended)).scalar() == 3
        assert s.get(VisitPlanState, 1) is not None and ensure_current(s) is False  # nothing left to re-derive
        s.close()
    finally:
        fresh.drop()
