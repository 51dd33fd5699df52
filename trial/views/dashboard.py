from __future__ import annotations

from flask import Blueprint, Response, render_template, request

from trial.dashboard import service
from trial.http import actor, db

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")


@bp.route("/", endpoint="grid")
def grid():
    return render_template("dashboard/grid.html", grid=service.status_grid(db(), actor(), request.args.get("site") or None))


@bp.route("/recruitment.svg")
def recruitment_svg():
    return Response(service.recruitment_svg(db(), actor()), mimetype="image/svg+xml")
