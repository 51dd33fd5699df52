"""Role grants over the API: managers countersign what an admin granted."""
from __future__ import annotations

from flask import jsonify, request

from trial.api import body, route
from trial.grants import service as grants
from trial.web import actor, db

S, I = {"type": "string"}, {"type": "integer"}
NS = {"type": "string", "nullable": True}
ERR = {"$ref": "#/components/schemas/Error"}
GRANT = {"type": "object", "required": ["id", "user", "role", "status", "requested_by", "requested_at"], "properties": {
    "id": I, "user": S, "role": S, "site": NS, "status": {"type": "string", "enum": ["pending", "approved", "rejected", "withdrawn"]},
    "reason": NS, "requested_by": S, "requested_at": {"type": "string", "format": "date-time"},
    "decided_by": NS, "decided_at": {"type": "string", "format": "date-time", "nullable": True}, "decision_note": NS}}
DECIDED = {"type": "object", "required": ["id", "status"], "properties": {"id": I, "status": S}}


def _err(d):
    return {"description": d, "schema": ERR}


@route("/grants", "GET", "Role grants (pending by default) that wait for a manager's countersignature", "manager, admin",
       params=[{"name": "status", "in": "query", "required": False,
                "schema": {"type": "string", "enum": ["pending", "approved", "rejected", "withdrawn", "all"]}}],
       responses={200: {"description": "grants", "schema": {"type": "array", "items": GRANT}}, 400: _err("unknown status")})
def list_grants():
    status = request.args.get("status", "pending")
    return jsonify(grants.list_grants(db(), actor(), None if status == "all" else status))


@route("/grants/<int:grant_id>/approve", "POST", "Countersign a role grant (electronic signature)", "manager",
       request_schema={"type": "object", "required": ["password", "meaning"], "properties": {
           "password": {"type": "string", "minLength": 1}, "meaning": {"type": "string", "minLength": 1, "maxLength": 500}}},
       responses={200: {"description": "countersigned", "schema": DECIDED}, 400: _err("bad input or wrong password"),
                  403: _err("your own grant or your own request"), 404: _err("unknown grant"),
                  409: _err("not pending, or the role conflicts with the user's others")})
def approve_grant(grant_id):
    data = body()
    g = grants.approve(db(), actor(), grant_id, data.get("password"), data.get("meaning"))
    db().commit()
    return jsonify({"id": g.id, "status": g.status})


@route("/grants/<int:grant_id>/reject", "POST", "Reject a role grant", "manager",
       request_schema={"type": "object", "required": ["reason"], "properties": {
           "reason": {"type": "string", "minLength": 1, "maxLength": 500}}},
       responses={200: {"description": "rejected", "schema": DECIDED}, 400: _err("bad input"),
                  403: _err("your own grant or your own request"), 404: _err("unknown grant"), 409: _err("not pending")})
def reject_grant(grant_id):
    g = grants.reject(db(), actor(), grant_id, body().get("reason"))
    db().commit()
    return jsonify({"id": g.id, "status": g.status})
