"""`trial serve`: the development server."""
from __future__ import annotations

import click
from werkzeug.serving import WSGIRequestHandler

from trial import serving_app


class _NoPathLog(WSGIRequestHandler):
    """The development server without its own request lines: they print the raw path, which
    carries study ids (and its pages can tell an arm); the app logs each request by its URL rule
    (trial.ops.logs)."""

    def log_request(self, code="-", size="-"):
        pass


@click.command("serve", help="Serve the web application (development server). Refuses to start (exit 4, the "
                              "reason logged) when the schema is not at head (`trial db upgrade`), TRIAL_AUDIT_KEY is "
                              "not the audit chain's key or TRIAL_SEAL_KEY does not open the randomization seed; a "
                              "database that cannot be reached yet does not stop it (`/readyz` says why).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, type=int, show_default=True)
def serve(host, port):
    serving_app().run(host=host, port=port, debug=False, threaded=True, request_handler=_NoPathLog)
