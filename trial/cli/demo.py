"""`trial demo`: demo data."""
from __future__ import annotations

import click

from trial.cli.common import session
from trial.demo import load_demo


@click.command("demo", help="Load demo sites, users and synthetic participants into an empty database; print the logins.")
def demo_cmd():
    with session() as s:
        logins = load_demo(s)
    click.echo("Demo loaded. Logins (e-mail / password):")
    for role, email, password in logins:
        click.echo(f"  {role:<13} {email:<32} {password}")
    click.echo(MFA_HOWTO)


MFA_HOWTO = """Two-factor sign-in: nobody is enrolled (in development TRIAL_MFA_ROLES requires it of no role).
To try it, log in, open "Password" in the header, then "Set up two-factor sign-in" (/account/mfa):
scan the QR code with an authenticator app (FreeOTP, Aegis, Google or Microsoft Authenticator), or type
the key shown, enter the app's code and keep the ten recovery codes. From then on that user gives a code
after the password and with every e-signature. `TRIAL_MFA_ROLES=manager make serve` makes it required
for managers; `trial user mfa-reset --email E` turns it off for a user again."""
