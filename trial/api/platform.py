"""Platform endpoints: who am I, sites, protocol, the OpenAPI document."""
from __future__ import annotations

from flask import jsonify

from trial.api import SPEC_PATHS, route
from trial.api.openapi import document
from trial.protocol import service as protocol_service
from trial.sites.service import list_sites
from trial.web import actor, db

S = {"type": "string"}


@route("/openapi.json", "GET", "This OpenAPI document", "public")
def openapi():
    return jsonify(document(SPEC_PATHS))


@route("/me", "GET", "The authenticated user", "anyone", responses={200: {"description": "user", "schema": {
    "type": "object", "properties": {"email": S, "name": S, "roles": {"type": "array", "items": S},
                                     "sites": {"type": "array", "items": S}}}}})
def me():
    u = actor()
    from trial.sites.models import Site
    codes = {s.id: s.code for s in db().query(Site).all()}
    return jsonify({"email": u.email, "name": u.name, "roles": sorted(u.role_names()),
                    "sites": sorted({codes[sid] for sid in u.site_ids()}),
                    "role_sites": [{"role": r.role, "site": codes.get(r.site_id)} for r in u.roles]})


@route("/sites", "GET", "All sites", "anyone", responses={200: {"description": "sites", "schema": {
    "type": "array", "items": {"type": "object", "properties": {"code": S, "name": S, "country": S, "target": {"type": "integer"}}}}}})
def sites():
    return jsonify([s.as_dict() for s in list_sites(db())])


@route("/protocol", "GET", "The current protocol version", "anyone")
def protocol():
    s = db()
    return jsonify(protocol_service.public_view(s, protocol_service.current(s)))
