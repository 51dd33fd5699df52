"""gunicorn settings for serving the trial application: ``gunicorn -c config/gunicorn.conf.py``.

Sync workers, three per core. A request here is short and spends much of its time waiting on the
database; a sync worker takes one connection at a time and accepts the next only when it is free,
so concurrent requests spread evenly over the workers. With threaded (gthread) workers, kept-alive
connections stay with the worker that accepted them, and an unlucky worker queues several: on
this project's randomization benchmark (2 cores, 16 clients) that gave a p99 of ~170 ms against
~110 ms here (bench/README.md). Put a buffering reverse proxy (nginx) in front, as gunicorn
advises for sync workers (config/deploy/nginx-trial.conf; README "Deploying"). Every setting can be
overridden on the command line or through GUNICORN_CMD_ARGS; the address and the number of workers
also by TRIAL_BIND and TRIAL_WORKERS (declared with the other settings in trial/settings.py).
"""
import gc
import os
from pathlib import Path

from trial.settings import current

_settings = current()
# Prometheus metrics from every worker (prometheus_client's multiprocess mode, trial.ops.metrics):
# each worker writes its counts to files in this folder and a scrape of /metrics adds them up. The
# folder is emptied here, when the master starts, before any worker counts anything.
_metrics_dir = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(_settings.instance_path / "metrics")))
_metrics_dir.mkdir(parents=True, exist_ok=True)
for _old in _metrics_dir.glob("*.db"):
    _old.unlink()
bind = _settings.bind
worker_class = "sync"
workers = _settings.workers
# Requests are short: a hard lock's bundles are built after the lock commits by `trial worker`, a process of its
# own (TRIAL_LOCK_BUILDER=worker: started by the app; external: kept running by systemd,
# config/deploy/trial-worker.service), never inside the request. Only TRIAL_LOCK_BUILDER=inline (the tests)
# builds them in the signing request (about 20 s for 10,000 participants), which this timeout still allows.
timeout = 180
graceful_timeout = 30
# the app as served: it refuses to start (exit 4, the reason in the log) on a schema not at head or keys that are
# not the database's; a database not reachable yet does not stop it (trial.app.serving_app)
wsgi_app = "trial:serving_app()"
# The app writes its own access line (JSON, with the request id, route, status and duration) to
# standard error (trial.ops.logs); gunicorn's own lines are JSON there too.
accesslog = None
loglevel = "info"
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "trial.ops.logs.JsonFormatter"}},
    "handlers": {"error_console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
    "root": {"level": "INFO", "handlers": []},
    "loggers": {"gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False}},
}
# The app is imported once by the master and forked: a worker that dies (or is killed) is back in
# milliseconds instead of re-importing everything. No database connection is left open at the fork (the
# master's start-up checks close theirs); post_fork drops any pooled connection a worker would otherwise
# share with its siblings.
preload_app = True


def post_fork(server, worker):
    app = worker.app.wsgi()
    engine = app.extensions.get("trial.engine")
    if engine is not None:
        engine.dispose(close=False)


def pre_fork(server, worker):
    # Everything the master imported (the app, SQLAlchemy's metadata, Babel's catalogues) is moved
    # out of the garbage collector's reach before the fork: a worker's full collections then scan
    # only what its requests create (about 6 ms instead of about 60 ms, measured on the page
    # benchmark), and the shared pages are not dirtied by the collector (copy-on-write).
    gc.collect()
    gc.freeze()


def child_exit(server, worker):
    # a dead worker's live gauges are dropped; what it counted stays counted
    from trial.ops.metrics import mark_dead  # deferred: the master has it imported already (preload_app)
    mark_dead(worker.pid)
