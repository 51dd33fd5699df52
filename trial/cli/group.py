"""The command groups' error handling, kept light: `trial --help` loads this and click alone.

A refusal of the services (DomainError), a bad setting (ConfigError) or a database that is not
there turns into one line on stderr and a non-zero exit. The settings and SQLAlchemy are not
imported here: an error of a module that was never loaded cannot have been raised, so the classes
are looked up among the modules already loaded."""
from __future__ import annotations

import sys

import click

from trial.errors import DomainError


def fail(message: str, code: int = 1):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _loaded(module: str, *names: str) -> tuple[type, ...]:
    """The classes ``names`` of ``module`` if it was imported, else none."""
    m = sys.modules.get(module)
    return tuple(getattr(m, n) for n in names) if m is not None else ()


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
        except Exception as e:
            if isinstance(e, _loaded("trial.settings", "ConfigError")):
                fail(str(e))
            if isinstance(e, _loaded("sqlalchemy.exc", "OperationalError", "ProgrammingError")):
                fail(f"database error: {str(e.orig).strip().splitlines()[0]} (did you run `trial db upgrade`?)")
            raise
