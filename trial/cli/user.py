"""`trial user`: users and API tokens."""
from __future__ import annotations

import csv
import sys

import click

from trial import settings
from trial.auth import mfa
from trial.auth.models import ROLES, SITE_ROLES
from trial.auth.service import (
    RESET_HOURS,
    accounts,
    create_user,
    deactivate,
    get_user_by_email,
    issue_password_reset,
    issue_token,
    reactivate,
    reset_link,
    revoke_tokens,
)
from trial.catalogue import N_, Msg
from trial.cli.common import Group, session
from trial.credentials import service as credentials
from trial.errors import DomainError
from trial.exports.formats import spreadsheet_safe
from trial.scope import CliActor


@click.group(cls=Group, help="Users and API tokens.")
def user():
    pass


def _either(words) -> str:
    return ", ".join(words[:-1]) + " or " + words[-1]


@user.command("create", help=f"Add a user; the password is read from standard input. Site roles "
              f"({', '.join(SITE_ROLES)}) need --site; each --site applies to each site role.")
@click.option("--email", required=True)
@click.option("--name", required=True, help="printed name (used in e-signatures)")
@click.option("--role", "roles", required=True, multiple=True, help=f"{_either(ROLES)} (repeatable)")
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
        raise DomainError(Msg(N_("no user with e-mail %(email)s"), email=email))
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


# --- the operator's list of accounts; deactivation; password reset links ------------------------

COLUMNS = ("email", "name", "roles", "active", "2fa", "last_login")


def _row(a: dict) -> tuple[str, ...]:
    last = a["last_login_at"]
    return (a["email"], a["name"], a["roles"] or "-", "yes" if a["active"] else "no", "yes" if a["mfa_enrolled"] else "no",
            last.strftime("%Y-%m-%dT%H:%M:%SZ") if last else "never")


@user.command("list", help="Every account: e-mail, name, roles and sites (role@SITE), active, 2FA enrolled and the "
              "last login (UTC, or never).")
@click.option("--inactive-days", type=click.IntRange(0, 36500), default=None,
              help="only the accounts not logged in for N days (never logged in counts)")
@click.option("--format", "fmt", type=click.Choice(["table", "csv"]), default="table", show_default=True)
def user_list(inactive_days, fmt):
    with session() as s:
        rows = [_row(a) for a in accounts(s, CliActor(), inactive_days=inactive_days)]
    if fmt == "csv":
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(COLUMNS)
        w.writerows([spreadsheet_safe(v) for v in r] for r in rows)  # a name like "=HYPERLINK(..." is not run
        return
    widths = [max(len(r[i]) for r in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    for r in [COLUMNS, *rows]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


@user.command("deactivate", help="The user can no longer log in: every web session ends and every API token is "
              "revoked. The history stays. Audited.")
@click.option("--email", required=True)
def user_deactivate(email):
    with session() as s:
        done = deactivate(s, CliActor(), _user(s, email), reason="deactivated at the command line")
    click.echo(f"user {email} deactivated" if done else f"user {email} was already deactivated")


@user.command("reactivate", help="The user may log in again (API tokens revoked at deactivation stay revoked: issue "
              "a new one). Audited.")
@click.option("--email", required=True)
def user_reactivate(email):
    with session() as s:
        done = reactivate(s, CliActor(), _user(s, email), reason="reactivated at the command line")
    click.echo(f"user {email} reactivated" if done else f"user {email} was already active")


@user.command("mfa-reset", help="Turn the user's two-factor sign-in off (a lost phone): the secret and the recovery "
              "codes are deleted and every web session of the user ends; the user sets it up again at the next "
              "sign-in (a role in TRIAL_MFA_ROLES must). Audited.")
@click.option("--email", required=True)
def user_mfa_reset(email):
    with session() as s:
        done = mfa.reset(s, CliActor(), _user(s, email))
    click.echo(f"two-factor sign-in of {email} reset: every session ended; the user enrols again" if done
               else f"user {email} had not enrolled in two-factor sign-in: nothing changed")


@user.command("reset-password", help=f"Print a one-time link (valid {RESET_HOURS} h) for the user to set a new "
              "password; an earlier link of the user stops working. The link is absolute when TRIAL_BASE_URL is set. "
              "Audited.")
@click.option("--email", required=True)
def user_reset_password(email):
    with session() as s:
        token, _ = issue_password_reset(s, CliActor(), _user(s, email))
    click.echo(reset_link(token))
    if not settings.current().base_url:
        click.echo("note: TRIAL_BASE_URL is not set: put the app's address before the link", err=True)
