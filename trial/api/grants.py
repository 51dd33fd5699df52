"""Role grants over the API: managers countersign what an admin granted."""
from __future__ import annotations

from flask import jsonify, request

from trial.api.routing import body, route
from trial.api.schemas import DT, ID, NDT, NS, S, array, enum, err, obj, ok, text
from trial.grants import service as grants
from trial.http import actor, db

STATES = ("pending", "approved", "rejected", "withdrawn")
GRANT = obj(["id", "user", "role", "site", "status", "reason", "requested_by", "requested_at", "decided_by", "decided_at",
             "decision_note", "holds"], id=ID, user=S, role=S, site=NS, status=enum(*STATES), reason=NS, requested_by=S,
            requested_at=DT, decided_by=NS, decided_at=NDT, decision_note=NS, holds=S)
DECIDED = obj(["id", "status"], id=ID, status=enum(*STATES))


@route("/grants", "GET", "Role grants (pending by default) that wait for a manager's countersignature", "manager, admin",
       params=[{"name": "status", "in": "query", "required": False, "schema": enum(*STATES, "all")}],
       responses={200: ok("grants", array(GRANT)), 400: err("unknown status")})
def list_grants():
    status = request.args.get("status", "pending")
    return jsonify(grants.list_grants(db(), actor(), None if status == "all" else status))


@route("/grants/<int:grant_id>/approve", "POST", "Countersign a role grant (electronic signature)", "manager",
       request_schema=obj(["password", "meaning"], password={"type": "string", "minLength": 1}, meaning=text(500)),
       responses={200: ok("countersigned", DECIDED), 400: err("bad input, a role conflict, or a wrong password"),
                  403: err("your own grant or your own request"), 404: err("unknown grant"),
                  409: err("not pending, or the account is deactivated")})
def approve_grant(grant_id):
    data = body()
    g = grants.approve(db(), actor(), grant_id, data.get("password"), data.get("meaning"))
    db().commit()
    return jsonify({"id": g.id, "status": g.status})


@route("/grants/<int:grant_id>/reject", "POST", "Reject a role grant", "manager",
       request_schema=obj(["reason"], reason=text(500)),
       responses={200: ok("rejected", DECIDED), 400: err("bad input"),
                  403: err("your own grant or your own request"), 404: err("unknown grant"), 409: err("not pending")})
def reject_grant(grant_id):
    g = grants.reject(db(), actor(), grant_id, body().get("reason"))
    db().commit()
    return jsonify({"id": g.id, "status": g.status})
