"""The log: one JSON object a line on standard error, each line of a request with its request id
(and the signed-in user's id). The audit trail is the record of what changed; the log is for the
operators, and never carries a password, a token, an arm or a clinical value: request lines name
the URL rule, never the path or the query."""
from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
import sys
import uuid

# what this request's lines carry: request_id, user_id, route (set by trial.views.ops)
context: contextvars.ContextVar[dict | None] = contextvars.ContextVar("trial_log_context", default=None)

_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HANDLER_NAME = "trial-json"
# attributes of every LogRecord: anything else given in ``extra=`` is a field of the line
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def request_id(given: str | None) -> str:
    """The caller's ``X-Request-ID`` when it is sane (at most 64 of ``A-Z a-z 0-9 . _ -``), else a new one."""
    if given and _SANE_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
                "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        line.update(context.get() or {})
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class _StandardError(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is at the time of each line (a test's
    capture, a replaced stream), not to the stream there was when the app was first made."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def configure(level: int = logging.INFO) -> None:
    """JSON lines on standard error for the ``trial`` loggers (the app's own, ``trial.access`` and
    every module's); once per process, called by the app factory. The lines still propagate, so
    a caller's handlers (pytest's caplog) see them too."""
    logger = logging.getLogger("trial")
    if any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
        return
    handler = _StandardError()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > level:
        logger.setLevel(level)
