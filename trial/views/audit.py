"""The audit trail for managers."""
from __future__ import annotations

from flask import Blueprint, render_template, request

from trial.audit.service import visible_records
from trial.http import actor, db, int_arg

bp = Blueprint("audit", __name__, url_prefix="/audit")


@bp.route("/", endpoint="trail")
def trail():
    entity = request.args.get("entity") or None
    page = int_arg("page", 1, 1, 1_000_000)
    rows = visible_records(db(), actor(), entity=entity, limit=100, offset=(page - 1) * 100)
    return render_template("audit/trail.html", rows=rows, entity=entity, page=page)
