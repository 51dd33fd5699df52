"""`trial user`: users and API tokens."""
from __future__ import annotations

import sys

import click

from trial.auth.models import SITE_ROLES
from trial.auth.service import create_user, get_user_by_email, issue_token, revoke_tokens
from trial.cli.common import Group, session
from trial.credentials import service as credentials
from trial.errors import DomainError
from trial.scope import CliActor


@click.group(cls=Group, help="Users and API tokens.")
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
    with session() as s:
        token = issue_token(s, CliActor(), _user(s, email), days=days)
    click.echo(token)


@user.command("revoke-tokens", help="Revoke every API token of the user; print how many were revoked.")
@click.option("--email", required=True)
def user_revoke_tokens(email):
    with session() as s:
        n = revoke_tokens(s, CliActor(), _user(s, email), "revoked at the command line")
    click.echo(f"{n} token(s) revoked")


def _user(s, email):
    u = get_user_by_email(s, email)
    if u is None:
        raise DomainError(f"no user with e-mail {email}")
    return u


@user.command("credential", help="Record a therapist's credential: KIND from the protocol's credentials list (e.g. "
              "MT-BC, HCPC), its number and the days it is valid (inclusive). A session is accepted only from a "
              "therapist holding a credential valid on the session's day.")
@click.option("--email", required=True, help="the therapist's e-mail")
@click.option("--kind", required=True, help="a key of the protocol's credentials list, e.g. MT-BC")
@click.option("--number", required=True, help="the registration or certificate number")
@click.option("--valid-to", "valid_to", required=True, help="last day it is valid (YYYY-MM-DD)")
@click.option("--valid-from", "valid_from", default=None, help="first day it is valid (YYYY-MM-DD; default today)")
@click.option("--issuer", default=None, help="the issuing body (default: the protocol's for that kind)")
def user_credential(email, kind, number, valid_to, valid_from, issuer):
    with session() as s:
        c = credentials.record(s, CliActor(), _user(s, email), {"kind": kind, "number": number, "valid_to": valid_to,
                                                                "valid_from": valid_from, "issuer": issuer})
        click.echo(f"credential {c.kind} {c.number} of {email} recorded, valid {c.valid_from.isoformat()} "
                   f"to {c.valid_to.isoformat()}")
