"""The API skeleton: /me, /sites, /protocol, /openapi.json and the error format."""
from __future__ import annotations

import re

from trial.api.routing import SPEC_PATHS


def test_me(world):
    r = world.api("GET", "/me", "assessor")
    assert r.status_code == 200
    body = r.get_json()
    assert {k: body[k] for k in ("email", "name", "roles", "sites")} == {
        "email": "assessor@example.org", "name": "Assessor", "roles": ["assessor"], "sites": ["AT01"]}


def test_sites_for_every_role(world):
    for who in world.tokens:
        r = world.api("GET", "/sites", who)
        assert r.status_code == 200
        codes = [s["code"] for s in r.get_json()]
        assert codes == ["AT01", "NO01"]
        assert set(r.get_json()[0]) >= {"code", "name", "country", "target"}


def test_openapi_document_describes_every_api_route(world, app):
    r = app.test_client().get("/api/v1/openapi.json")
    assert r.status_code == 200
    doc = r.get_json()
    assert doc["openapi"].startswith("3.")
    documented = {(p, m) for p, ops in doc["paths"].items() for m in ops}
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for m in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, m.lower()) in documented, f"{m} {path} missing from the OpenAPI document"
    for path, ops in doc["paths"].items():
        for m, op in ops.items():
            assert op["responses"], f"{m} {path} documents no response"
            for name in re.findall(r"{([^}]+)}", path):
                assert any(p["name"] == name and p["in"] == "path" for p in op.get("parameters", []))
    assert SPEC_PATHS


def test_bad_json_body_gets_400_in_contract_format(world):
    c = world.app.test_client()
    r = c.post("/api/v1/screenings", data="not json", headers=world.headers("coordinator", **{"Content-Type": "application/json"}))
    assert r.status_code == 400
    err = r.get_json()["error"]
    assert err["code"] == "invalid" and "JSON object" in err["message"] and err["fields"] == {"body": "must be a JSON object"}


def test_method_not_allowed_is_json(world):
    r = world.api("DELETE", "/sites", "manager")
    assert r.status_code == 405 and r.get_json()["error"]["code"] == "method_not_allowed"
