"""TIME-A-style multi-site trial management and randomization system."""
from __future__ import annotations

from trial.version import __version__  # noqa: F401


def create_app(config: dict | None = None):
    """Flask application factory. ``config`` overrides settings read from the environment."""
    from flask import Flask

    from trial import config as settings
    from trial import web
    from trial.db import make_engine, make_session_factory

    cfg = settings.from_env(config)
    app = Flask(__name__, instance_path=str(settings.instance_path()))
    app.config.update(cfg)
    engine = cfg.get("ENGINE") or make_engine(cfg["DATABASE_URL"])
    app.extensions["trial.engine"] = engine
    app.extensions["trial.sessions"] = cfg.get("SESSION_FACTORY") or make_session_factory(engine)
    app.json.sort_keys = False  # keep the contract's field order
    if cfg.get("PROXIES"):
        from werkzeug.middleware.proxy_fix import ProxyFix
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=cfg["PROXIES"], x_proto=cfg["PROXIES"])
    web.init_app(app)
    return app
