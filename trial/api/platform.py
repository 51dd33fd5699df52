"""Platform endpoints: who am I, sites, protocol, the OpenAPI document."""
from __future__ import annotations

from flask import jsonify

from trial.api import answers as a
from trial.api.openapi import document
from trial.api.routing import OPERATIONS, ok, route
from trial.http import actor, db
from trial.protocol import service as protocol_service
from trial.sites.models import Site
from trial.sites.service import list_sites

@route("/openapi.json", "GET", "This OpenAPI document", "public", responses={200: ok("the document", a.Object)})
def openapi():
    return jsonify(document(OPERATIONS))


@route("/me", "GET", "The authenticated user", "anyone", responses={200: ok("user", a.Me)})
def me():
    u = actor()
    codes = {s.id: s.code for s in db().query(Site).all()}
    return jsonify({"email": u.email, "name": u.name, "roles": sorted(u.role_names()),
                    "sites": sorted({codes[sid] for sid in u.site_ids()}),
                    "role_sites": [{"role": r.role, "site": codes.get(r.site_id)} for r in u.roles]})


@route("/sites", "GET", "All sites", "anyone", responses={200: ok("sites", list[a.Site])})
def sites():
    return jsonify([s.as_dict() for s in list_sites(db())])


@route("/protocol", "GET", "The current protocol version", "anyone", responses={200: ok("the protocol", a.Protocol)})
def protocol():
    s = db()
    return jsonify(public_view(s, protocol_service.current(s)))


def public_view(db, pv) -> dict:
    """The protocol as API.md shows it."""
    c = pv.content
    site_levels = [s.code for s in list_sites(db)]
    return {
        "version": pv.version,
        "trial": c["trial"],
        "arms": [{k: a[k] for k in ("key", "label", "weight", "sessions_per_week")} for a in c["arms"]],
        # block sizes are left out: with the ratio they would help predict the end of a block
        "randomization": {"method": c["randomization"]["method"],
                          "factors": [{"key": f["key"], "levels": site_levels if f["key"] == "site" else f["levels"]}
                                      for f in c["randomization"]["factors"]]},
        "criteria": c["criteria"],
        "eligibility": c["eligibility"],
        "course": c["course"],
        "visits": [{k: v[k] for k in ("key", "label", "day", "window_before", "window_after", "primary")} for v in c["visits"]],
        "instruments": [{"key": i["key"], "label": i["label"], "blinded": i["blinded"], "visits": i["visits"],
                         "fields": [{k: f.get(k) for k in ("key", "label", "type", "min", "max", "soft_min", "soft_max",
                                                          "required", "units", "choices")}
                                    for f in i["fields"]]} for i in c["instruments"]],
        "primary_outcome": c["primary_outcome"],
    }

