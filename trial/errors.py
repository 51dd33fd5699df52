"""Domain errors. Services raise them; the web, the API and the CLI turn them into a status
code, a clear message and (for bad input) the fields at fault. Raising one means nothing was
changed: callers roll back."""
from __future__ import annotations


class DomainError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, fields: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}


class ValidationError(DomainError):
    status, code = 400, "invalid"


class Forbidden(DomainError):
    status, code = 403, "forbidden"


class NotFound(DomainError):
    status, code = 404, "not_found"


class Conflict(DomainError):
    status, code = 409, "conflict"


class Locked(DomainError):
    status, code = 423, "locked"
