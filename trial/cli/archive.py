"""`trial archive`: a site's archive for the investigator file at close-out (one casebook PDF per
child, index.csv, the site's audit trail, manifest.json with digests); `run-job` builds an archive
the manager asked for on the site's page (started by the app)."""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import click

from trial.catalogue import LANGUAGES
from trial.cli.common import Group, session
from trial.config import instance_path
from trial.db import make_engine, make_session_factory
from trial.oversight import archive as archives
from trial.scope import CliActor


@click.group(cls=Group, help="Site archives for the investigator file at close-out.")
def archive():
    pass


@archive.command("site", help="Write a site's archive into DIR: one casebook PDF per child (the full, unblinded "
                 "casebook), index.csv, the site's audit trail (CSV and PDF) and manifest.json with the SHA-256 of "
                 "every file and of the whole; audited. Progress on stderr.")
@click.option("--site", "site_code", required=True, help="the site's code")
@click.option("--to", "to", required=True, type=click.Path(file_okay=False), help="a new or empty folder")
@click.option("--language", default="en", type=click.Choice(list(LANGUAGES)), show_default=True,
              help="the language of the casebooks and the audit trail")
def archive_site(site_code, to, language):
    def progress(done: int, total: int) -> None:
        if total and (done == total or done % max(1, total // 100) == 0):
            click.echo(f"\r{done}/{total} casebooks", nl=done == total, err=True)
            sys.stderr.flush()

    with session() as s:
        archives.check_signatures(s, site_code)
        manifest = archives.build_site(s, site_code, Path(to), language, progress)
        s.rollback()  # (the archive's read-only snapshot ends; the audit record is its own transaction)
        archives.record_made(s, CliActor(), manifest["site"], manifest, os.path.abspath(to))
        s.commit()
    click.echo(f"{manifest['participants']} casebooks of site {manifest['site']} in {to} "
               f"(manifest sha256 {manifest['sha256']})")


@archive.command("run-job", help="Build the archive the manager asked for (job ID) into the instance folder "
                 "(started by the app).")
@click.argument("job_id", type=int)
def run_job(job_id):
    engine = make_engine()
    try:
        state = archives.run_job(make_session_factory(engine), job_id, instance_path(),
                                 f"{socket.gethostname()}:{os.getpid()}")
    finally:
        engine.dispose()
    click.echo(f"archive job {job_id}: {state}")
    if state != "ready":
        sys.exit(1)
