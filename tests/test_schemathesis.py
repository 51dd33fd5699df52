"""Schemathesis against the app's own OpenAPI document, with a token of each role: every
operation, a bounded number of generated requests each. A test fails on any 5xx, on a status the
document does not list for that operation, on a body that does not match its declared schema, on
an error body not of the documented shape ({error: {code, message, fields}}), on a 405 without
Allow, and on schema-invalid input that is accepted."""
from __future__ import annotations

import datetime as dt

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.helpers import CLI
from trial.outcomes.service import record_assessment

# A day in a clinical record is checked against the site's calendar (not in the future, at most ten
# years back: the document says so in each date's description); generated days are such days, so
# that a generated body reaches the service's rules instead of stopping at the date
schemathesis.openapi.format("date", st.dates(dt.date.today() - dt.timedelta(days=3 * 365),
                                             dt.date.today() - dt.timedelta(days=1)).map(dt.date.isoformat))

ROLES = ["coordinator", "therapist", "assessor", "statistician", "manager", "admin", None]
EXAMPLES = 25
STATS: dict[str, dict] = {}  # operation -> {"cases": n, "requests": n, "statuses": {...}}: printed at the end of the run


@pytest.fixture()
def api_schema(app, world, db):
    world.open()
    for _ in range(3):
        p = world.ready()
        record_assessment(db, CLI, p.study_id, {"visit": "baseline", "instrument": "srs2", "values": {"total_t": 60},
                                                "performed_on": (dt.date.today() - dt.timedelta(days=20)).isoformat()})
        db.commit()
        world.randomize(p, f"st-{p.study_id}")
    world.ready()
    STATE_CHECKED.update(_state_checked(app.test_client().get("/api/v1/openapi.json").get_json()))
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


def error_shape(ctx, response, case):
    """Every error answer has the documented shape, with fields an object."""
    if response.status_code >= 400:
        body = response.json()
        err = body.get("error") if isinstance(body, dict) else None
        assert isinstance(err, dict), f"error body without 'error': {body!r}"
        assert isinstance(err.get("code"), str) and isinstance(err.get("message"), str), body
        assert isinstance(err.get("fields"), dict), f"error body without 'fields': {body!r}"
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in err["fields"].items()), body


# operationId -> (the fields and parameters the service checks against the trial, every field and parameter)
STATE_CHECKED: dict[str, tuple[set[str], set[str]]] = {}


def _state_checked(document: dict) -> dict[str, set[str]]:
    """Each operation's body fields whose schema says ``x-checked-against`` (the protocol, the
    site's calendar, the record): a valid-looking value can still be refused there, with a 400
    naming the field, because the rule depends on the trial, not on the body."""
    schemas = document["components"]["schemas"]

    def marked(schema: dict) -> bool:
        if "x-checked-against" in schema:
            return True
        if "$ref" in schema:
            return marked(schemas[schema["$ref"].rsplit("/", 1)[1]])
        return any(marked(s) for s in schema.get("anyOf", []) + schema.get("allOf", []))

    out = {}
    for ops in document["paths"].values():
        for op in ops.values():
            ref = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
            props = schemas[ref.rsplit("/", 1)[1]].get("properties", {}) if ref else {}
            params = {p["name"]: p["schema"] for p in op.get("parameters", [])}
            out[op["operationId"]] = ({name for name, schema in {**props, **params}.items() if marked(schema)},
                                      set(props) | set(params))
    return out


def valid_bodies_are_accepted(ctx, response, case):
    """schemathesis's positive_data_acceptance: a request the document calls valid is not refused
    with a 400, unless every field refused is one whose rule depends on the trial (x-checked-against)
    or is no field of the request (a rule of the record in the path)."""
    if response.status_code == 400 and case.meta is not None and case.meta.generation.mode.is_positive:
        fields = response.json()["error"]["fields"]
        against, known = STATE_CHECKED.get(case.operation.definition.raw.get("operationId"), (set(), set()))
        names = {f.split(".")[0].split("[")[0] for f in fields}
        if fields and all(n in against or n not in known for n in names):
            return None
    return positive_data_acceptance(ctx, response, case)


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection, valid_bodies_are_accepted, error_shape]


def _call_as_every_role(case, world):
    """Each generated request is sent once with the token of each role, and once without one. A
    case that left the Authorization header out on purpose (a negative case) is sent without it."""
    base = dict(case.headers or {})
    stats = STATS.setdefault(case.operation.label, {"cases": 0, "requests": 0, "statuses": {}})
    stats["cases"] += 1
    for role in ROLES:
        case.headers = {k: v for k, v in base.items() if k != "Authorization"}
        if role and "Authorization" in base:
            case.headers["Authorization"] = f"Bearer {world.tokens[role]}"
        response = case.call_and_validate(checks=CHECKS)
        stats["requests"] += 1
        stats["statuses"][response.status_code] = stats["statuses"].get(response.status_code, 0) + 1


BOUNDED = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@schema.include(method="GET").parametrize()
@BOUNDED
def test_reads_conform_to_the_openapi_document(case, world):
    _call_as_every_role(case, world)


# the writes in two tests, so that the suite's two workers share them
@schema.exclude(method="GET").include(path_regex="^/api/v1/participants/").parametrize()
@BOUNDED
def test_writes_on_a_child_conform_to_the_openapi_document(case, world):
    _call_as_every_role(case, world)


@schema.exclude(method="GET").exclude(path_regex="^/api/v1/participants/").parametrize()
@BOUNDED
def test_other_writes_conform_to_the_openapi_document(case, world):
    _call_as_every_role(case, world)
