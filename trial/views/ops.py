"""What the operators' tools call, at the site root: liveness (``/healthz``), readiness
(``/readyz``) and the Prometheus metrics (``/metrics``, only with the metrics token); and the
request plumbing behind the log and the metrics: every request gets a request id (the caller's
``X-Request-ID`` when sane, else a new one), echoed in the answer, carried by every log line of
the request, and counted by its URL rule when answered (trial.ops)."""
from __future__ import annotations

import hmac
import logging
import time

from flask import Blueprint, Flask, Response, abort, current_app, g, jsonify, request

from trial.notify.service import smtp_url
from trial.ops import logs, metrics
from trial.ops import service as ops

bp = Blueprint("ops", __name__)
access_log = logging.getLogger("trial.access")
METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


@bp.route("/healthz")
def healthz():
    """The process serves; nothing else is asked (a load balancer's liveness probe)."""
    return jsonify({"status": "ok"})


@bp.route("/readyz")
def readyz():
    answer = ops.readiness(current_app.extensions["trial.engine"], current_app.config.get("LOCK_BUILDER") == "inline",
                           bool(smtp_url()))
    if answer["status"] != "ok":
        current_app.logger.warning("not ready", extra={"checks": answer["checks"]})
    return jsonify(answer), 200 if answer["status"] == "ok" else 503


@bp.route("/metrics")
def metrics_text():
    """404 unless the right bearer token comes with it (and 404 when no token is configured):
    the endpoint does not tell a stranger that it exists."""
    token = current_app.config.get("METRICS_TOKEN")
    header = request.headers.get("Authorization", "")
    given = header[7:].strip() if header.lower().startswith("bearer ") else ""
    if not token or not hmac.compare_digest(given.encode(), token.encode()):
        abort(404)
    engine = current_app.extensions["trial.engine"]
    return Response(metrics.exposition(lambda: ops.figures(engine)), content_type=metrics.CONTENT_TYPE)


def _start():
    g.request_id = logs.request_id(request.headers.get("X-Request-ID"))
    g.request_started = time.perf_counter()
    g.log_token = logs.context.set({"request_id": g.request_id})


def _known_user():
    """After the access policy: the signed-in user's id joins the request's log lines."""
    user = g.get("actor")
    if user is not None and getattr(user, "id", None) is not None:
        logs.context.set({**(logs.context.get() or {}), "user_id": user.id})


def _finish(resp):
    resp.headers["X-Request-ID"] = g.get("request_id") or logs.request_id(None)
    started = g.get("request_started")
    if started is None:
        return resp
    seconds = time.perf_counter() - started
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    method = request.method if request.method in METHODS else "other"
    metrics.observe(route, method, resp.status_code, seconds)
    _known_user()
    access_log.info("%s %s %s", method, route, resp.status_code,
                    extra={"route": route, "method": method, "status": resp.status_code,
                           "duration": round(seconds, 4)})
    return resp


def _end(exc):
    token = g.pop("log_token", None)
    if token is not None:
        try:
            logs.context.reset(token)
        except ValueError:  # set in another context (a streamed answer): nothing to reset here
            pass


def init_app(app: Flask) -> None:
    """The request id first of all (before the access policy, so a refused request has one too),
    the user after the policy, the access line and the count last."""
    logs.configure()
    app.before_request_funcs.setdefault(None, []).insert(0, _start)
    app.before_request(_known_user)
    app.after_request_funcs.setdefault(None, []).insert(0, _finish)  # (run in reverse: this one last)
    app.teardown_appcontext_funcs.insert(0, _end)  # (run in reverse: after the session is closed)
