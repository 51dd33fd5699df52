"""The audit trail for managers."""
from __future__ import annotations

from flask import Blueprint, render_template, request

from trial.audit.service import page_records
from trial.http import actor, db, page_request

bp = Blueprint("audit", __name__, url_prefix="/audit")


@bp.route("/", endpoint="trail")
def trail():
    filters = {"entity": request.args.get("entity") or None, "actor_name": request.args.get("actor") or None,
               "action": request.args.get("action") or None}
    page = page_records(db(), actor(), page_request(), **filters)
    return render_template("audit/trail.html", page=page, filters=filters)
