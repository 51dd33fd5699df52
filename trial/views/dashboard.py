"""The record status grid and the recruitment chart."""
from __future__ import annotations

from flask import Blueprint, Response, render_template, request

from trial.dashboard import service
from trial.http import actor, db, page_request
from trial.participants.service import statuses_for
from trial.sites.service import visible_sites

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")


@bp.route("/", endpoint="grid")
def grid():
    s = db()
    filters = {"site_code": request.args.get("site") or None, "search": request.args.get("q") or None,
               "status": request.args.get("status") or None}
    return render_template("dashboard/grid.html", grid=service.status_grid(s, actor(), page_request(), **filters),
                           filters=filters, sites=visible_sites(s, actor()), statuses=statuses_for(s, actor()))


@bp.route("/recruitment.svg")
def recruitment_svg():
    return Response(service.recruitment_svg(db(), actor()), mimetype="image/svg+xml")
