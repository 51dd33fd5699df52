"""The API's blueprint and how a route is declared: :func:`route` registers it with its request
body's model and its answers' models (``trial.api.bodies``, ``trial.api.answers``), from which
the OpenAPI document is generated; :func:`body` reads the JSON body and validates it with the
route's declared model, so that the document and the check are one declaration."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, request
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from trial.api.answers import Error
from trial.catalogue import N_
from trial.errors import ValidationError
from trial.policy import QUERY_PARAMS
from trial.validation import MAX_ID, NO_CONTROL, check_json_depth, check_tree, pydantic_fields, refuse

PATH_EXAMPLES = {"study_id": "AT01-0001", "instrument": "ados2"}

bp = Blueprint("api", __name__, url_prefix="/api/v1")


@dataclass
class Operation:
    """A route as the OpenAPI document describes it."""
    path: str
    method: str
    name: str
    summary: str
    roles: str
    body: type[BaseModel] | None
    responses: dict[int, Any]
    params: list[dict] = field(default_factory=list)


OPERATIONS: list[Operation] = []
BODIES: dict[str, type[BaseModel] | None] = {}  # endpoint -> its declared body (None: it takes none)


def ok(description: str, model: Any) -> dict:
    """A JSON answer: ``model`` is an answer model, or ``list[Model]``."""
    return {"description": description, "model": model}


def err(description: str) -> dict:
    return {"description": description, "model": Error}


def media(description: str, content_type: str) -> dict:
    """An answer that is not JSON (a PDF, an SVG, a CSV, a zip)."""
    return {"description": description, "content_type": content_type, "schema": {"type": "string", "format": "binary"}}


def route(path: str, method: str, summary: str, roles: str, body: type[BaseModel] | None = None,
          responses: dict[int, Any] | None = None, params: list[dict] | None = None):
    """Register an API route with its body's model (None: it takes no body) and its answers.
    ``path`` uses Flask syntax."""
    def deco(fn):
        bp.add_url_rule(path, fn.__name__, fn, methods=[method])
        BODIES["api." + fn.__name__] = body
        QUERY_PARAMS["api." + fn.__name__] = frozenset(p["name"] for p in params or [] if p["in"] == "query")
        OPERATIONS.append(Operation(path, method, fn.__name__, summary, roles, body, dict(responses or {200: "OK"}),
                                    list(params or [])))
        return fn
    return deco


def _json() -> Any:
    raw = request.get_data(cache=True)
    check_json_depth(raw)  # as every API request's (trial.http), before any parser recurses
    try:
        return json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        return None


def body() -> dict:
    """The request's JSON object, validated with the route's declared body model: every string,
    integer and number of its declared fields checked (control characters, integers beyond 64 bits
    and non-finite numbers are a 400 naming the field), then the model's fields (each bad one
    named by its dotted path). Returns the declared fields as sent: the service reads them and
    checks what depends on the trial's state and the protocol."""
    model = BODIES.get(request.endpoint or "")
    if model is None:
        raise LookupError(f"{request.endpoint} declares no body model")
    sent = _json() if request.is_json else None
    if not isinstance(sent, dict):
        raise ValidationError(N_("The request body must be a JSON object."), {"body": N_("must be a JSON object")})
    # the declared fields only, as sent (a whole number written 3.0 as 3): what the model does not
    # declare is ignored, whatever it holds (a model that forbids other fields refuses them)
    try:
        data, errors = model.model_validate(sent).model_dump(exclude_unset=True), {}
    except PydanticValidationError as e:
        forbid = model.model_config.get("extra") == "forbid"
        data = sent if forbid else {k: v for k, v in sent.items() if k in model.model_fields}
        errors = pydantic_fields(e, model.WORDS)
    for name, why in check_tree(data).items():
        errors.setdefault(name, why)
    refuse(model.LEAD, errors, model.LABELS)
    return data


def path_parameters(path: str) -> list[dict]:
    out = []
    for conv, name in re.findall(r"<(?:([^:>]+):)?([^>]+)>", path):
        schema = ({"type": "integer", "minimum": 1, "maximum": MAX_ID} if conv == "int"
                  else {"type": "string", "pattern": NO_CONTROL})
        out.append({"name": name, "in": "path", "required": True, "schema": schema,
                    "example": PATH_EXAMPLES.get(name, 1 if conv == "int" else "x")})
    return out
