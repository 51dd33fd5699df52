"""What every command shares: a database session for the command, one-line errors (the groups'
error handling is in trial.cli.group, which `trial --help` loads without the models)."""
from __future__ import annotations

from contextlib import contextmanager

import trial.models  # noqa: F401  every model registered before the first session
from trial.cli.group import Group, fail
from trial.db import make_engine, make_session_factory

__all__ = ["Group", "fail", "session"]


@contextmanager
def session():
    engine = make_engine()
    s = make_session_factory(engine)()
    try:
        yield s
        s.commit()
    except Exception:
        s.rollback()
        raise
    finally:
        s.close()
        engine.dispose()
