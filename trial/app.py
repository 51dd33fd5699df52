"""The application factory: settings, the database engine and session factory, the request
plumbing (trial.http) and every face's blueprint (trial.views, trial.api)."""
from __future__ import annotations

import logging

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

import trial.models  # noqa: F401  every model registered before the first session (foreign keys across packages)
from trial import config as settings
from trial import http
from trial.api import bp as api_bp
from trial.db import make_engine, make_session_factory
from trial.ops import logs
from trial.ops.service import startup_problems
from trial.randomize import journalfile
from trial.settings import current as current_settings
from trial.views import BLUEPRINTS
from trial.views import ops as ops_views


def create_app(config: dict | None = None) -> Flask:
    """``config`` overrides settings read from the environment."""
    logs.configure()  # JSON lines on standard error, before Flask sets up its own handler
    cfg = settings.from_env(config)
    app = Flask("trial", instance_path=str(settings.instance_path()))
    app.config.update(cfg)
    s = current_settings()  # the web app's statements and lock waits are bounded (PostgreSQL)
    engine = cfg.get("ENGINE") or make_engine(cfg["DATABASE_URL"], statement_timeout=s.db_statement_timeout,
                                              lock_timeout=s.db_lock_timeout)
    app.extensions["trial.engine"] = engine
    app.extensions["trial.sessions"] = cfg.get("SESSION_FACTORY") or make_session_factory(engine)
    app.json.sort_keys = False  # keep the contract's field order
    if cfg.get("PROXIES"):
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=cfg["PROXIES"], x_proto=cfg["PROXIES"])
    http.init_app(app)
    ops_views.init_app(app)  # request ids, the access log line and the request metrics (around the policy)
    for bp in BLUEPRINTS:
        app.register_blueprint(bp)
    http.csrf.exempt(api_bp)
    app.register_blueprint(api_bp)
    return app


REFUSED = 4  # the exit status of a server that refuses to start (gunicorn's own for an app that cannot load)


def serving_app(config: dict | None = None) -> Flask:
    """The app as the servers serve it (gunicorn's factory in config/gunicorn.conf.py, `trial
    serve`): :func:`create_app`, which then refuses to start, with one log line per reason and
    exit status 4, when the schema is not at head, TRIAL_AUDIT_KEY is not the audit chain's key or
    TRIAL_SEAL_KEY does not open the randomization seed (trial.ops.service.startup_problems). A
    database that cannot be reached is no reason: the app starts and /readyz says why."""
    app = create_app(config)
    problems = startup_problems(app.extensions["trial.engine"])
    if not problems:  # lines a killed process left pending appended; a database behind the journal held
        journalfile.at_start(app.extensions["trial.engine"])
    app.extensions["trial.engine"].dispose()  # (gunicorn's master forks next: no connection is handed down)
    if problems:
        log = logging.getLogger("trial.app")
        for why in problems:
            log.critical("refusing to start: %s", why)
        raise SystemExit(REFUSED)
    return app
