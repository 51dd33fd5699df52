"""The OpenAPI 3 document, assembled from the routes' declarations."""
from __future__ import annotations

from trial.version import __version__

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                   "fields": {"type": "object", "additionalProperties": {"type": "string"}}}}}}


def document(paths: dict) -> dict:
    return {
        "openapi": "3.0.3",
        "info": {"title": "TIME-A trial system API", "version": __version__,
                 "description": "Multi-site trial management and concealed randomization. Dates are YYYY-MM-DD, "
                                "timestamps ISO 8601 UTC. Errors: {error: {code, message, fields}}."},
        "servers": [{"url": "/"}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": {"Error": ERROR}},
        "security": [{"bearer": []}],
        "paths": dict(sorted(paths.items())),
    }
