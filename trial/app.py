"""The application factory: settings, the database engine and session factory, the request
plumbing (trial.http) and every face's blueprint (trial.views, trial.api)."""
from __future__ import annotations

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

import trial.models  # noqa: F401  every model registered before the first session (foreign keys across packages)
from trial import config as settings
from trial import http
from trial.api import bp as api_bp
from trial.db import make_engine, make_session_factory
from trial.ops import logs
from trial.views import BLUEPRINTS
from trial.views import ops as ops_views


def create_app(config: dict | None = None) -> Flask:
    """``config`` overrides settings read from the environment."""
    logs.configure()  # JSON lines on standard error, before Flask sets up its own handler
    cfg = settings.from_env(config)
    app = Flask("trial", instance_path=str(settings.instance_path()))
    app.config.update(cfg)
    engine = cfg.get("ENGINE") or make_engine(cfg["DATABASE_URL"])
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
