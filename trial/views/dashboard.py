"""The record status grid and the recruitment chart."""
from __future__ import annotations

from flask import Blueprint, Response, render_template, request
from flask_babel import format_date, gettext

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


@bp.route("/overview", endpoint="overview")
def overview():
    return render_template("dashboard/overview.html", o=service.overview(db(), actor()))


@bp.route("/recruitment-over-time.svg", endpoint="recruitment_over_time_svg")
def recruitment_over_time_svg():
    words = {"title": gettext("Randomized by month against each site's target"), "randomized": gettext("randomized"),
             "target": gettext("target"), "total": gettext("All sites"), "of": gettext("%(n)s of %(target)s")}
    svg = service.recruitment_over_time_svg(db(), actor(), words, lambda d: format_date(d, "MMM yyyy"))
    return Response(svg, mimetype="image/svg+xml")
