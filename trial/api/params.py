"""Query parameters that several API routes take, as the OpenAPI document states them."""
from __future__ import annotations

from trial.validation import AGAINST, NO_CONTROL

TEXT = {"type": "string", "pattern": NO_CONTROL}
SITE_QUERY = [{"name": "site", "in": "query", "required": False, "schema": {**TEXT, AGAINST: "the trial's sites"},
               "description": "a site code, e.g. AT01"}]


def text_param(name: str, description: str | None = None, against: str | None = None) -> dict:
    """An optional query parameter of text (no control characters); ``against``: what else it is
    checked against (the caller's role, the trial's records)."""
    out = {"name": name, "in": "query", "required": False, "schema": dict(TEXT)}
    if against:
        out["schema"][AGAINST] = against
    if description:
        out["description"] = description
    return out


def enum_param(name: str, values, description: str | None = None) -> dict:
    """An optional query parameter that takes one of ``values``."""
    out = {"name": name, "in": "query", "required": False, "schema": {"type": "string", "enum": list(values)}}
    if description:
        out["description"] = description
    return out
