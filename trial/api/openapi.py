"""The OpenAPI 3.1 document, generated from the routes' declarations (``trial.api.routing``):
each request body and answer's schema from its model (``trial.api.bodies``, ``trial.api.answers``),
every model once under ``components/schemas``."""
from __future__ import annotations

import re
from typing import Any

from pydantic import TypeAdapter

from trial.api.answers import Error
from trial.api.routing import Operation, path_parameters
from trial.version import __version__

REF = "#/components/schemas/{model}"
ERROR_REF = {"$ref": "#/components/schemas/Error"}


def _tidy(schema: Any) -> Any:
    """A field left out when not given (an optional body field, an answer's field some callers do
    not get) has no default to state: pydantic's ``default: null`` goes."""
    if isinstance(schema, dict):
        schema.pop("x-absent", None)
        if "default" in schema and schema["default"] is None:
            del schema["default"]
        return {k: _tidy(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_tidy(v) for v in schema]
    return schema


def _schemas(ops: list[Operation]) -> tuple[dict, dict]:
    """Every model's schema, generated together: (key -> schema, components)."""
    inputs = [(("error", "serialization"), "serialization", TypeAdapter(Error))]
    for op in ops:
        if op.body is not None:
            inputs.append(((op.name, "body"), "validation", TypeAdapter(op.body)))
        for status, spec in op.responses.items():
            if isinstance(spec, dict) and "model" in spec:
                inputs.append(((op.name, status), "serialization", TypeAdapter(spec["model"])))
    keymap, defs = TypeAdapter.json_schemas([(key, mode, ta) for key, mode, ta in inputs], ref_template=REF)
    return {key: _tidy(schema) for (key, _), schema in keymap.items()}, _tidy(defs.get("$defs", {}))


def _operation(op: Operation, schemas: dict) -> dict:
    out: dict[str, Any] = {"operationId": op.name, "summary": op.summary, "description": f"Allowed roles: {op.roles}.",
                           "responses": {}}
    if op.roles == "public":
        out["security"] = []  # no token needed
    params = list(op.params) + path_parameters(op.path)
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": schemas[(op.name, "body")]}}}
    for status, spec in op.responses.items():
        if not isinstance(spec, dict):
            out["responses"][str(status)] = {"description": spec}
            continue
        schema = schemas[(op.name, status)] if "model" in spec else spec["schema"]
        entry = {"description": spec.get("description", ""),
                 "content": {spec.get("content_type", "application/json"): {"schema": schema}}}
        if spec.get("headers"):
            entry["headers"] = spec["headers"]
        out["responses"][str(status)] = entry
    _default_answers(op, out, bool(params))
    return out


def _default_answers(op: Operation, out: dict, has_params: bool) -> None:
    """What any operation may answer: bad input (named in error.fields), unknown ids in the path,
    the database unavailable; and, when a token is needed, no token or a forbidden role."""
    defaults = [(400, "Bad input: a parameter or field is refused (named in error.fields)"),
                (503, "The database is unavailable, or a commit's outcome is unknown (Retry-After)")]
    if has_params:
        defaults.append((404, "Unknown id or site code in the path or the query, or a record the caller may not see "
                              "(answered as an unknown one, byte for byte)"))
    if op.method != "GET":
        defaults.append((423, "The database is locked: no data can be entered or changed"))
    if op.roles != "public":
        defaults += [(401, "No or bad token"), (403, "Role or site not allowed")]
    for status, desc in defaults:
        out["responses"].setdefault(str(status), {"description": desc, "content": {"application/json": {"schema": ERROR_REF}}})


def document(ops: list[Operation]) -> dict:
    schemas, components = _schemas(ops)
    paths: dict[str, dict] = {}
    for op in ops:
        oa_path = "/api/v1" + re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", op.path)
        paths.setdefault(oa_path, {})[op.method.lower()] = _operation(op, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "TIME-A trial system API", "version": __version__,
                 "description": "Multi-site trial management and concealed randomization. Dates are YYYY-MM-DD, "
                                "timestamps ISO 8601 UTC. Errors: {error: {code, message, fields}}."},
        "servers": [{"url": "/"}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}, "schemas": components},
        "security": [{"bearer": []}],
        "paths": dict(sorted(paths.items())),
    }
