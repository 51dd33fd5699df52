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
