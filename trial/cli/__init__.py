"""The `trial` command line (contract: shared/API.md). Thin: every command calls a service.

Each command group lives in its own module (trial.cli.db, .user, ...), loaded only when that
group is run, so `trial --help` and a one-line command start fast."""
from __future__ import annotations

import importlib

import click

from trial.cli.group import Group

# name -> (module, attribute, short help): the help is here so that `trial --help` loads no group
COMMANDS = {
    "db": ("trial.cli.db", "db", "Database schema."),
    "protocol": ("trial.cli.protocol", "protocol", "Protocol versions."),
    "site": ("trial.cli.site", "site", "Trial sites."),
    "user": ("trial.cli.user", "user", "Users and API tokens."),
    "randomization": ("trial.cli.randomization", "randomization", "Randomization lists, verification and design simulation."),
    "audit": ("trial.cli.audit", "audit", "The audit trail."),
    "checks": ("trial.cli.checks", "checks", "Automatic data checks (missing forms)."),
    "fidelity": ("trial.cli.fidelity", "fidelity", "Treatment fidelity: draw the sessions to rate, verify the draws."),
    "mail": ("trial.cli.mail", "mail", "E-mail notifications (relay: TRIAL_SMTP_URL)."),
    "lock": ("trial.cli.lock", "lock", "Hard locks' bundles: their state, and building them again."),
    "worker": ("trial.cli.lock", "worker", "Build the bundles of hard locks in the background (started by the app, or kept running)."),
    "demo": ("trial.cli.demo", "demo_cmd", "Load demo sites, users and synthetic participants into an empty database; print the logins."),
    "serve": ("trial.cli.serve", "serve", "Serve the web application (development server)."),
    "config": ("trial.cli.config", "config", "The settings (TRIAL_* environment variables): values, defaults, meanings."),
    "backup": ("trial.cli.backup", "backup", "Backups that prove themselves: create, verify, restore."),
    "archive": ("trial.cli.archive", "archive", "Site archives for the investigator file at close-out."),
}


class Main(Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)  # the group's services load with it

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, _, help_) in COMMANDS.items()])


@click.group(cls=Main, help="TIME-A-style trial management and randomization. The database is "
             "TRIAL_DATABASE_URL (default: SQLite under instance/).")
def main():
    pass

