"""The Prometheus metrics (prometheus_client). Requests are counted in the process that served
them; under gunicorn, with ``PROMETHEUS_MULTIPROC_DIR`` set (config/gunicorn.conf.py does), every
worker writes its counts to files there and a scrape adds them up (prometheus_client's
multiprocess mode). What the database knows (allocations, lock builds, the outbox) is read from it
at each scrape, so every app server and the worker report the same figures.

No label carries an arm, a participant or anything else a blinded reader may not know: requests
are labelled by the URL rule (``/participants/<study_id>``), never by the path.
"""
from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter("trial_http_requests", "HTTP requests answered, by URL rule, method and status",
                   ("route", "method", "status"))
DURATION = Histogram("trial_http_request_duration_seconds", "time to answer an HTTP request, by URL rule",
                     ("route",), buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))


def observe(route: str, method: str, status: int, seconds: float) -> None:
    REQUESTS.labels(route, method, str(status)).inc()
    DURATION.labels(route).observe(seconds)


class _DatabaseFigures:
    """The series read from the database at scrape time (trial.ops.service.figures)."""

    def __init__(self, read: Callable[[], dict]):
        self.read = read

    def collect(self):
        f = self.read()
        yield CounterMetricFamily("trial_randomizations", "children randomized (all arms together)",
                                  value=f["randomizations"])
        builds = CounterMetricFamily("trial_lock_builds", "bundle builds of hard locks by state", labels=["status"])
        for status in ("building", "ready", "failed"):
            builds.add_metric([status], f["lock_builds"].get(status, 0))
        yield builds
        yield GaugeMetricFamily("trial_mail_outbox_pending", "e-mails waiting to be sent", value=f["mail_pending"])


def exposition(read_figures: Callable[[], dict]) -> bytes:
    """The text a scrape gets: this process's (or, in multiprocess mode, every worker's) request
    series and the database's figures."""
    if _multiprocess():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(_DatabaseFigures(read_figures))
    else:
        registry = CollectorRegistry()
        registry.register(_RequestSeries())
        registry.register(_DatabaseFigures(read_figures))
    return generate_latest(registry)


class _RequestSeries:
    """This process's request series (single-process mode)."""

    def collect(self):
        yield from REQUESTS.collect()
        yield from DURATION.collect()


def _multiprocess() -> bool:
    """Whether this process counts in files (``PROMETHEUS_MULTIPROC_DIR`` was set when
    prometheus_client was first imported, as gunicorn's configuration does), not in memory."""
    return bool(os.environ.get(MULTIPROC_DIR)) and getattr(values.ValueClass, "_multiprocess", False)


def mark_dead(pid: int) -> None:
    """gunicorn's ``child_exit``: a dead worker's live gauges are dropped (its counters stay counted)."""
    if _multiprocess():
        multiprocess.mark_process_dead(pid)
