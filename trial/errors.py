"""Domain errors. Services raise them; the web, the API and the CLI turn them into a status
code, a clear message and (for bad input) the fields at fault. Raising one means nothing was
changed: callers roll back. The exception is :class:`OutcomeUnknown`, raised when a commit failed
in a way that leaves open whether it took effect."""
from __future__ import annotations


class DomainError(Exception):
    status = 400
    code = "bad_request"
    retry_after: int | None = None

    def __init__(self, message: str, fields: dict[str, str] | None = None, lead: str | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        # the message without the fields' reasons ("The session was not saved"), for a form that
        # shows each reason beside its field
        self.lead = lead
        self.labels: dict[str, str] = {}  # the fields' labels, by field name


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


class Unavailable(DomainError):
    """The database cannot be reached, is full, read-only or busy: nothing was changed, and the
    same request may succeed later (``Retry-After`` seconds)."""
    status, code = 503, "unavailable"

    def __init__(self, message: str, retry_after: int = 30, kind: str = "unreachable"):
        super().__init__(message)
        self.retry_after = retry_after
        self.kind = kind


class OutcomeUnknown(DomainError):
    """The commit itself failed (the connection was lost while committing): the change may or may
    not have been saved. Retrying with the same Idempotency-Key is safe."""
    status, code = 503, "outcome_unknown"
    retry_after = 5
