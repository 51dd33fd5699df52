"""JSON API under /api/v1 (contract: shared/API.md). Every route is declared with :func:`route`,
which also records it in the OpenAPI document."""
from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, request

from trial.errors import ValidationError
from trial.validation import check_tree, refuse

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
        if params:
            op["parameters"] = params
        for conv, name in re.findall(r"<(?:([^:>]+):)?([^>]+)>", path):
            op.setdefault("parameters", []).append({"name": name, "in": "path", "required": True,
                                                    "schema": {"type": "integer" if conv == "int" else "string"}})
        if request_schema:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": request_schema}}}
        for status, desc in (responses or {200: "OK"}).items():
            if isinstance(desc, dict):
                op["responses"][str(status)] = {"description": desc.get("description", ""),
                                                "content": {"application/json": {"schema": desc["schema"]}}}
            else:
                op["responses"][str(status)] = {"description": desc}
        for status, desc in ((401, "No or bad token"), (403, "Role or site not allowed")):
            if roles != "public":
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


from trial.api import clinical, course, grants, lock, platform  # noqa: E402,F401  (register routes)
