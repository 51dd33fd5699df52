"""The `trial` command line (contract: shared/API.md). Thin: every command calls a service."""
from __future__ import annotations

import sys
from contextlib import contextmanager

import click

from trial.scope import CliActor
from trial.errors import DomainError


@contextmanager
def session():
    from trial.db import make_engine, make_session_factory
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
        from trial.config import ConfigError
        from sqlalchemy.exc import OperationalError, ProgrammingError
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


@click.group(cls=Group, help="TIME-A-style trial management and randomization. The database is "
             "TRIAL_DATABASE_URL (default: SQLite under instance/).")
def main():
    pass


@main.group(cls=Group, help="Database schema.")
def db():
    pass


@db.command("upgrade", help="Create or migrate the database to the newest schema; load the default protocol if none is loaded.")
def db_upgrade():
    from trial.db import make_engine
    from trial.migrate import upgrade
    from trial.protocol.service import ensure_default
    engine = make_engine()
    upgrade(engine)
    engine.dispose()
    with session() as s:
        pv = ensure_default(s, CliActor())
    click.echo("database is at the newest schema" + (f"; loaded protocol version {pv.version} ({pv.trial_key})" if pv else ""))


@main.group(cls=Group, help="Protocol versions.")
def protocol():
    pass


@protocol.command("load", help="Validate a protocol file and make it the current protocol version.")
@click.argument("path", type=click.Path(dir_okay=False))
def protocol_load(path):
    from trial.protocol.service import load_file
    with session() as s:
        pv = load_file(s, CliActor(), path)
        click.echo(f"protocol version {pv.version} ({pv.trial_key}, sha256 {pv.sha256[:12]}) is current")


@main.group(cls=Group, help="Trial sites.")
def site():
    pass


@site.command("create", help="Add a site.")
@click.option("--code", required=True, help="two letters and two digits, e.g. AT01")
@click.option("--name", required=True)
@click.option("--country", help="ISO 3166 two-letter code")
@click.option("--target", type=int, default=0, show_default=True, help="target enrollment")
@click.option("--timezone", default="UTC", show_default=True)
def site_create(code, name, country, target, timezone):
    from trial.sites.service import create_site
    with session() as s:
        st = create_site(s, CliActor(), {"code": code, "name": name, "country": country, "target": target, "timezone": timezone})
        click.echo(f"site {st.code} created")


@main.group(cls=Group, help="Users and API tokens.")
def user():
    pass


@user.command("create", help="Add a user; the password is read from standard input. Site roles "
              "(coordinator, therapist, assessor) need --site; each --site applies to each site role.")
@click.option("--email", required=True)
@click.option("--name", required=True, help="printed name (used in e-signatures)")
@click.option("--role", "roles", required=True, multiple=True, help="coordinator, therapist, assessor, statistician, manager or admin")
@click.option("--site", "sites", multiple=True, help="site code, for site-scoped roles (repeatable)")
@click.option("--password-stdin", is_flag=True, required=True, help="read the password from standard input")
def user_create(email, name, roles, sites, password_stdin):
    from trial.auth.models import SITE_ROLES
    from trial.auth.service import create_user
    password = sys.stdin.readline().rstrip("\r\n")
    pairs = []
    for r in roles:
        if r in SITE_ROLES:
            pairs += [(r, c) for c in sites] or [(r, None)]
        else:
            pairs.append((r, None))
    with session() as s:
        u = create_user(s, CliActor(), email, name, password, pairs)
        click.echo(f"user {u.email} created")


@user.command("token", help="Print a new API token for the user, alone on one line. It expires after "
              "--days days (default 90) and ends with a password change or reset and with deactivation.")
@click.option("--email", required=True)
@click.option("--days", type=click.IntRange(1, 366), default=90, show_default=True, help="days until the token expires")
def user_token(email, days):
    from trial.auth.service import issue_token
    with session() as s:
        token = issue_token(s, CliActor(), _user(s, email), days=days)
    click.echo(token)


@user.command("revoke-tokens", help="Revoke every API token of the user; print how many were revoked.")
@click.option("--email", required=True)
def user_revoke_tokens(email):
    from trial.auth.service import revoke_tokens
    with session() as s:
        n = revoke_tokens(s, CliActor(), _user(s, email), "revoked at the command line")
    click.echo(f"{n} token(s) revoked")


def _user(s, email):
    from trial.auth.service import get_user_by_email
    u = get_user_by_email(s, email)
    if u is None:
        raise DomainError(f"no user with e-mail {email}")
    return u


@main.group(cls=Group, help="Randomization lists, verification and design simulation.")
def randomization():
    pass


@randomization.command("open", help="Generate the allocation lists from a fresh CSPRNG seed, seal the seed, "
                       "record and print the commitment (the hash is alone on the last line).")
def randomization_open():
    from trial.randomize.service import open_randomization
    with session() as s:
        row = open_randomization(s, CliActor())
        strata = len(row.design.get("initial_strata") or {}) or 1
        click.echo(f"randomization open: method {row.method}, {strata} strata; the seed is sealed until unblinding")
        click.echo("commitment (SHA-256 over the design and the seed):")
        click.echo(row.commitment)


@randomization.command("verify", help="After unblinding: regenerate every list from the revealed seed, check the "
                       "commitment and every allocation. Exit 0 only if all match.")
def randomization_verify():
    from trial.randomize.service import verify
    with session() as s:
        res = verify(s, CliActor())
    for p in res.problems:
        click.echo(f"MISMATCH: {p}", err=True)
    if not res.ok:
        fail(f"verification failed: {len(res.problems)} problem(s) in {res.checked} allocations")
    click.echo(f"verified: the commitment matches and all {res.checked} allocations follow the lists")


@randomization.command("simulate", help="Simulate the protocol's randomization design: imbalance between arms overall "
                       "and per site, and how often a coordinator guessing the arm furthest behind is right.")
@click.option("--participants", type=click.IntRange(1, 1_000_000), default=364, show_default=True)
@click.option("--runs", type=click.IntRange(1, 100_000), default=200, show_default=True)
@click.option("--sites", "n_sites", type=click.IntRange(1, 1000), help="number of sites (default: the trial's sites, else 10)")
@click.option("--protocol", "protocol_path", type=click.Path(dir_okay=False), help="a protocol file instead of the current protocol")
def randomization_simulate(participants, runs, n_sites, protocol_path):
    from pathlib import Path

    from trial.protocol.schema import ProtocolError, parse
    from trial.randomize.simulate import format_report, simulate
    if protocol_path:
        try:
            content = parse(Path(protocol_path).read_text())
        except (OSError, ProtocolError) as e:
            fail(str(e))
        codes = [f"S{i:02d}" for i in range(1, (n_sites or 10) + 1)]
    else:
        from trial.protocol.service import current
        from trial.sites.service import list_sites
        with session() as s:
            content = current(s).content
            codes = [x.code for x in list_sites(s)]
        if n_sites or not codes:
            codes = [f"S{i:02d}" for i in range(1, (n_sites or 10) + 1)]
    r = content["randomization"]
    res = simulate([(a["key"], a["weight"]) for a in content["arms"]], r["block_sizes"], r["method"], codes,
                   participants, runs, r["minimization"]["probability"], r["minimization"]["imbalance"])
    click.echo(format_report(res))


@main.group(cls=Group, help="The audit trail.")
def audit():
    pass


@audit.command("verify", help="Check the audit hash chain; exit 0 if intact, else name the first broken record.")
def audit_verify():
    from trial.audit.service import verify
    with session() as s:
        res = verify(s)
    if not res.ok:
        fail(f"audit chain broken at record {res.broken_seq}: {res.problem}")
    click.echo(f"audit chain intact: {res.checked} records")


@main.command("demo", help="Load demo sites, users and synthetic participants into an empty database; print the logins.")
def demo_cmd():
    from trial.demo import load_demo
    with session() as s:
        logins = load_demo(s)
    click.echo("Demo loaded. Logins (e-mail / password):")
    for role, email, password in logins:
        click.echo(f"  {role:<13} {email:<32} {password}")


@main.command("serve", help="Serve the web application (development server).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, type=int, show_default=True)
def serve(host, port):
    from trial import create_app
    create_app().run(host=host, port=port, debug=False, threaded=True)


if __name__ == "__main__":  # pragma: no cover
    main()
