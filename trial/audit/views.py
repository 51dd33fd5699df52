"""The audit trail for managers."""
from __future__ import annotations

from flask import Blueprint, render_template, request

from trial.audit.service import visible_records
from trial.web import actor, db

bp = Blueprint("audit", __name__, url_prefix="/audit")


@bp.route("/", endpoint="trail")
def trail():
    entity = request.args.get("entity") or None
    page = max(1, request.args.get("page", 1, type=int))
    rows = visible_records(db(), actor(), entity=entity, limit=100, offset=(page - 1) * 100)
    return render_template("audit/trail.html", rows=rows, entity=entity, page=page)
