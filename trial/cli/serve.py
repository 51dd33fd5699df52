"""`trial serve`: the development server."""
from __future__ import annotations

import click

from trial import create_app


@click.command("serve", help="Serve the web application (development server).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, type=int, show_default=True)
def serve(host, port):
    create_app().run(host=host, port=port, debug=False, threaded=True)
