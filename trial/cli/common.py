"""What every command shares: a database session for the command, one-line errors."""
from __future__ import annotations

import sys
from contextlib import contextmanager

import click
from sqlalchemy.exc import OperationalError, ProgrammingError

import trial.models  # noqa: F401  every model registered before the first session
from trial.config import ConfigError
from trial.db import make_engine, make_session_factory
from trial.errors import DomainError


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


def fail(message: str, code: int = 1):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class Group(click.Group):
    """Turns domain and configuration errors into one line on stderr and a non-zero exit."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise  # `trial db` alone shows its help
        except click.ClickException as e:
            fail(e.format_message(), getattr(e, "exit_code", 1) or 1)
        except DomainError as e:
            fail(e.message)
        except ConfigError as e:
            fail(str(e))
        except (OperationalError, ProgrammingError) as e:
            fail(f"database error: {str(e.orig).strip().splitlines()[0]} (did you run `trial db upgrade`?)")
