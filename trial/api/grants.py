"""Role grants over the API: managers countersign what an admin granted."""
from __future__ import annotations

from flask import jsonify, request

from trial.api import answers as a
from trial.api import bodies as b
from trial.api.params import enum_param
from trial.api.routing import body, err, ok, route
from trial.grants import service as grants
from trial.http import actor, db

@route("/grants", "GET", "Role grants (pending by default) that wait for a manager's countersignature", "manager, admin",
       params=[enum_param("status", (*a.GRANT_STATES, "all"))],
       responses={200: ok("grants", list[a.Grant]), 400: err("unknown status")})
def list_grants():
    status = request.args.get("status", "pending")
    return jsonify(grants.list_grants(db(), actor(), None if status == "all" else status))


@route("/grants/<int:grant_id>/approve", "POST", "Countersign a role grant (electronic signature)", "manager",
       body=b.SignatureBody,
       responses={200: ok("countersigned", a.Decided),
                  400: err("bad input, a role conflict, or a wrong password or two-factor code"),
                  403: err("your own grant or your own request"), 404: err("unknown grant"),
                  409: err("not pending, or the account is deactivated")})
def approve_grant(grant_id):
    data = body()
    g = grants.approve(db(), actor(), grant_id, data.get("password"), data.get("meaning"), data.get("code"))
    db().commit()
    return jsonify({"id": g.id, "status": g.status})


@route("/grants/<int:grant_id>/reject", "POST", "Reject a role grant", "manager",
       body=b.GrantRejectionBody,
       responses={200: ok("rejected", a.Decided), 400: err("bad input"),
                  403: err("your own grant or your own request"), 404: err("unknown grant"), 409: err("not pending")})
def reject_grant(grant_id):
    g = grants.reject(db(), actor(), grant_id, body().get("reason"))
    db().commit()
    return jsonify({"id": g.id, "status": g.status})
