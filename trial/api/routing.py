"""The API's blueprint and how a route is declared: :func:`route` registers it and records it in
the OpenAPI document; :func:`body` reads and checks a JSON body."""
from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, request

from trial.errors import ValidationError
from trial.policy import QUERY_PARAMS
from trial.validation import MAX_ID, check_tree, refuse

PATH_EXAMPLES = {"study_id": "AT01-0001", "instrument": "ados2"}

bp = Blueprint("api", __name__, url_prefix="/api/v1")

SPEC_PATHS: dict[str, dict[str, Any]] = {}


def route(path: str, method: str, summary: str, roles: str, request_schema: dict | None = None,
          responses: dict[int, str | dict] | None = None, params: list[dict] | None = None):
    """Register an API route and describe it for OpenAPI. ``path`` uses Flask syntax."""
    def deco(fn):
        bp.add_url_rule(path, fn.__name__, fn, methods=[method])
        oa_path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", path)
        op: dict[str, Any] = {"operationId": fn.__name__, "summary": summary,
                              "description": f"Allowed roles: {roles}.", "responses": {}}
        if roles == "public":
            op["security"] = []  # no token needed
        if params:
            op["parameters"] = params
        QUERY_PARAMS["api." + fn.__name__] = frozenset(p["name"] for p in params or [] if p["in"] == "query")
        for conv, name in re.findall(r"<(?:([^:>]+):)?([^>]+)>", path):
            schema = ({"type": "integer", "minimum": 1, "maximum": MAX_ID} if conv == "int" else {"type": "string"})
            op.setdefault("parameters", []).append({"name": name, "in": "path", "required": True, "schema": schema,
                                                    "example": PATH_EXAMPLES.get(name, 1 if conv == "int" else "x")})
        if request_schema:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": request_schema}}}
        for status, desc in (responses or {200: "OK"}).items():
            if isinstance(desc, dict):
                entry = {"description": desc.get("description", ""),
                         "content": {desc.get("content_type", "application/json"): {"schema": desc["schema"]}}}
                if desc.get("headers"):
                    entry["headers"] = desc["headers"]
                op["responses"][str(status)] = entry
            else:
                op["responses"][str(status)] = {"description": desc}
        # what any operation may answer: bad input (named in error.fields), unknown ids in the path,
        # the database unavailable; and, when a token is needed, no token or a forbidden role
        defaults = [(400, "Bad input: a parameter or field is refused (named in error.fields)"),
                    (503, "The database is unavailable, or a commit's outcome is unknown (Retry-After)")]
        if op.get("parameters"):
            defaults.append((404, "Unknown id or site code in the path or the query"))
        if method != "GET":
            defaults.append((423, "The database is locked: no data can be entered or changed"))
        if roles != "public":
            defaults += [(401, "No or bad token"), (403, "Role or site not allowed")]
        for status, desc in defaults:
            op["responses"].setdefault(str(status), {"description": desc,
                                                     "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
        SPEC_PATHS.setdefault("/api/v1" + oa_path, {})[method.lower()] = op
        return fn
    return deco


def body() -> dict:
    """The request's JSON object, with every string, integer and number in it checked (control
    characters, integers beyond 64 bits and non-finite numbers are a 400 naming the field)."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ValidationError("The request body must be a JSON object.", {"body": "must be a JSON object"})
    refuse("The request was not accepted", check_tree(data))
    return data

