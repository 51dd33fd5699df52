"""The API skeleton: /me, /sites, /protocol, /openapi.json and the error format."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

from openapi_spec_validator import validate
from pydantic import BaseModel

from trial.api import answers, bodies
from trial.api.routing import BODIES, OPERATIONS


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
    validate(doc)  # a valid OpenAPI 3.1 document (openapi-spec-validator)


def test_every_body_is_declared_once_and_the_document_is_generated_from_the_declarations(app):
    """No route parses a body by hand: every route that reads one declares its model, the route
    validates with it (trial.api.routing.body) and the document's request schema is the model's."""
    doc = app.test_client().get("/api/v1/openapi.json").get_json()
    src = "".join(p.read_text() for p in Path(bodies.__file__).parent.glob("*.py"))
    assert "get_json" not in src and "request.json" not in src and "request_schema" not in src
    for op in OPERATIONS:
        fn = app.view_functions["api." + op.name]
        reads = bool(re.search(r"(?<![.\w])(_optional_)?body\(\)", inspect.getsource(fn)))
        assert reads == (op.body is not None), f"{op.method} {op.path}: reads a body without declaring it, or the reverse"
        if op.method in ("POST", "PUT", "PATCH") and op.body is None:
            # the writes that take nothing but their path: a randomization (its Idempotency-Key header), a
            # notification dismissed, a survey's link revoked, and a sharing bundle asked for (what it holds is
            # fixed by the lock in force: nothing to choose, no signature)
            assert op.name in {"randomize", "dismiss_notification", "revoke_survey", "request_sharing"}, op.name
        oa = "/api/v1" + re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", op.path)
        entry = doc["paths"][oa][op.method.lower()]
        if op.body is not None:
            assert BODIES["api." + op.name] is op.body and issubclass(op.body, bodies.Body)
            ref = entry["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref == f"#/components/schemas/{op.body.__name__}"
            declared = doc["components"]["schemas"][op.body.__name__]
            assert set(declared["properties"]) == set(op.body.model_fields)
            assert set(declared.get("required", [])) == {k for k, f in op.body.model_fields.items() if f.is_required()}
        for status, spec in op.responses.items():
            if isinstance(spec, dict) and "model" in spec:
                assert "content" in entry["responses"][str(status)], (op.name, status)
    named = {n for n, v in vars(answers).items() if isinstance(v, type) and issubclass(v, BaseModel)}
    assert named - {"Answer", "BaseModel"} <= set(doc["components"]["schemas"]), named - set(doc["components"]["schemas"])


def test_a_deeply_nested_body_is_a_400_naming_body(world):
    c = world.app.test_client()
    for raw in ("[" * 100_000 + "]" * 100_000, '{"a":' * 5000 + "1" + "}" * 5000):
        r = c.post("/api/v1/screenings", data=raw, headers=world.headers("coordinator", **{"Content-Type": "application/json"}))
        assert r.status_code == 400, r.status_code
        assert set(r.get_json()["error"]["fields"]) == {"body"}


DEEP_BODIES = ("[" * 100_000, "[" * 100_000 + "]" * 100_000, '{"a":' * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000,
               '{"text": ' + "[" * 5000 + "]" * 5000 + "}", '{"text": "\\"' + "[" * 1000 + '"}')


def test_a_deeply_nested_body_is_a_400_naming_body_on_every_api_operation_that_takes_one(world, db):
    """Every API operation that writes (POST, PUT, PATCH, DELETE), called by a user its policy
    admits, answers a body nested 100,000 deep with 400 naming ``body`` (never a 500 of Python's
    recursion limit), whether it reads a body or not, and writes nothing; a body that only looks
    deep (brackets inside a string) is not refused for its depth."""
    from sqlalchemy import func, select

    from tests.helpers import CLI, PASSWORD, ROLES
    from trial.audit.models import AuditRecord
    from trial.auth import service as users
    from trial.policy import ANY, POLICY, PUBLIC
    inv = users.create_user(db, CLI, "investigator@example.org", "Ivo", PASSWORD, [("investigator", "AT01")])
    world.tokens["investigator"] = users.issue_token(db, CLI, inv)  # (the world has no investigator: they hold the lock)
    db.commit()
    dmc = users.create_user(db, CLI, "dmc@example.org", "Dmc", PASSWORD, [("dmc", None)])  # the data monitoring committee
    world.tokens["dmc"] = users.issue_token(db, CLI, dmc)
    db.commit()
    roles_of = {**ROLES, "investigator": [("investigator", "AT01")], "dmc": [("dmc", None)]}

    def admitted(endpoint: str) -> str:
        policy = POLICY[endpoint]
        return next(who for who, roles in roles_of.items() if policy in (ANY, PUBLIC) or {r for r, _ in roles} & set(policy))

    before = db.execute(select(func.count()).select_from(AuditRecord)).scalar()
    c = world.app.test_client()
    ops = [op for op in OPERATIONS if op.method in ("POST", "PUT", "PATCH", "DELETE")]
    assert len(ops) > 30
    for op in ops:
        path = "/api/v1" + re.sub(r"<(?:int:)?([^>]+)>", lambda m: "AT01-0001" if m[1] == "study_id" else "1", op.path)
        for raw in DEEP_BODIES[:4]:
            r = c.open(path, method=op.method, data=raw, headers=world.headers(admitted("api." + op.name),
                                                                               **{"Content-Type": "application/json"}))
            assert r.status_code == 400, (op.method, path, raw[:10], r.status_code, r.get_data(as_text=True)[:300])
            assert set(r.get_json()["error"]["fields"]) == {"body"}, (op.method, path)
    db.expire_all()
    assert db.execute(select(func.count()).select_from(AuditRecord)).scalar() == before
    for raw in DEEP_BODIES[4:]:  # deep enough to refuse (but not for Python), and brackets in a string
        r = c.post("/api/v1/screenings", data=raw, headers=world.headers("coordinator", **{"Content-Type": "application/json"}))
        fields = r.get_json()["error"]["fields"]
        assert r.status_code == 400 and ("body" in fields) == (raw is DEEP_BODIES[4]), (raw[:20], fields)


def test_bad_json_body_gets_400_in_contract_format(world):
    c = world.app.test_client()
    r = c.post("/api/v1/screenings", data="not json", headers=world.headers("coordinator", **{"Content-Type": "application/json"}))
    assert r.status_code == 400
    err = r.get_json()["error"]
    assert err["code"] == "invalid" and "JSON object" in err["message"] and err["fields"] == {"body": "must be a JSON object"}


def test_method_not_allowed_is_json(world):
    r = world.api("DELETE", "/sites", "manager")
    assert r.status_code == 405 and r.get_json()["error"]["code"] == "method_not_allowed"
