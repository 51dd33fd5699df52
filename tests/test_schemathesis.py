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
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.helpers import CLI
from trial.outcomes.service import record_assessment

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


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection, error_shape]


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


# two tests, reads and writes, so that the suite's workers share the load
@schema.include(method="GET").parametrize()
@BOUNDED
def test_reads_conform_to_the_openapi_document(case, world):
    _call_as_every_role(case, world)


@schema.exclude(method="GET").parametrize()
@BOUNDED
def test_writes_conform_to_the_openapi_document(case, world):
    _call_as_every_role(case, world)
