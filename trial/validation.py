"""Checks of raw input that every service and face shares: text without control characters,
whole numbers that fit the database, and dates that are real and plausible. Each check adds
``field -> why`` to an ``errors`` dict, so one answer names every bad field."""
from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

from trial.catalogue import N_, Msg
from trial.errors import ValidationError

# C0 controls except tab, line feed and carriage return; DEL; lone UTF-16 surrogates (which no
# database can store)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
MAX_ID = 2**31 - 1          # ids and counters are 32-bit integers in the schema
MAX_JSON_INT = 2**63 - 1
PLAUSIBLE_YEARS = 10        # a clinical date more than ten years back is a typing error
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
CONTROL_MESSAGE = N_("must not contain control characters")


def has_control(text: str) -> bool:
    return bool(_CONTROL.search(text))


def check_tree(value: Any, path: str = "", errors: dict[str, str] | None = None) -> dict[str, str]:
    """Every string (keys too), integer and number in a decoded JSON document: control
    characters, integers beyond 64 bits and non-finite numbers are refused, named by their
    dotted path (``values.total_t``, ``answers[2]``)."""
    errors = {} if errors is None else errors
    name = path or "body"
    if isinstance(value, str):
        if has_control(value):
            errors[name] = CONTROL_MESSAGE
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int):
        if not -MAX_JSON_INT - 1 <= value <= MAX_JSON_INT:
            errors[name] = N_("is out of range")
    elif isinstance(value, float):
        if not math.isfinite(value):
            errors[name] = N_("must be a finite number")
    elif isinstance(value, dict):
        for k, v in value.items():
            key = str(k)
            sub = f"{path}.{key}" if path else key
            if has_control(key):
                errors[sub] = N_("has a name with control characters")
                continue
            check_tree(v, sub, errors)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_tree(v, f"{name}[{i}]", errors)
    return errors


def refusal(message: str, errors: dict[str, str], labels: dict[str, str] | None = None) -> ValidationError:
    """One ValidationError naming every bad field: ``message`` ("The session was not saved"),
    then each field (by its label in ``labels``, else its name) with its reason. ``message`` is
    the error's lead, which a web form shows above the reasons it puts beside its fields."""
    e = ValidationError(message + ": " + "; ".join(f"{(labels or {}).get(k, k)} {v}" for k, v in errors.items()),
                        errors, lead=message)
    e.labels = dict(labels or {})  # a form that has no field for a reason names it by its label
    return e


def refuse(message: str, errors: dict[str, str], labels: dict[str, str] | None = None) -> None:
    """Raise :func:`refusal` if there is any bad field."""
    if errors:
        raise refusal(message, errors, labels)


def ident(value: Any, field: str, errors: dict[str, str], what: str = "an id") -> int | None:
    """A positive id that fits the schema's integer columns."""
    if isinstance(value, bool) or not isinstance(value, int):
        errors[field] = Msg(N_("must be %(what)s (a whole number)"), what=what)
        return None
    if not 1 <= value <= MAX_ID:
        errors[field] = Msg(N_("must be %(what)s from 1 to %(max)s"), what=what, max=MAX_ID)
        return None
    return value


def text(value: Any, field: str, errors: dict[str, str], max_len: int, required: bool = False) -> str | None:
    """Stripped text of at most ``max_len`` characters, without control characters; empty = None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            errors[field] = N_("is required")
        return None
    if not isinstance(value, str):
        errors[field] = N_("must be text")
        return None
    if has_control(value):
        errors[field] = CONTROL_MESSAGE
        return None
    value = value.strip()
    if len(value) > max_len:
        errors[field] = Msg(N_("must be at most %(n)s characters"), n=max_len)
        return None
    return value


def parse_date(value: Any, field: str, errors: dict[str, str], required: bool = True) -> dt.date | None:
    """A calendar date written YYYY-MM-DD (or a date object from a form)."""
    if value in (None, ""):
        if required:
            errors[field] = N_("is required (YYYY-MM-DD)")
        return None
    if isinstance(value, dt.datetime):
        errors[field] = N_("must be a date, not a time stamp (YYYY-MM-DD)")
        return None
    if isinstance(value, dt.date):
        return value
    if not isinstance(value, str) or not _DATE_RE.match(value):
        errors[field] = N_("is not a date (YYYY-MM-DD)")
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        errors[field] = Msg(N_("%(value)s is not a date of the calendar"), value=value)
        return None


def years_before(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February
        return day.replace(year=day.year - years, day=28)


def clinical_date(value: Any, field: str, errors: dict[str, str], today: dt.date, required: bool = True,
                  not_before: tuple[dt.date, str] | None = None) -> dt.date | None:
    """A date on which something happened in the trial: not in the future (``today`` is the
    site's), not more than ten years back, and not before ``not_before`` (a date and what it is)."""
    d = parse_date(value, field, errors, required)
    if d is None:
        return None
    if d > today:
        errors[field] = Msg(N_("%(day)s is in the future (today is %(today)s at the site)"), day=d, today=today)
        return None
    earliest = years_before(today, PLAUSIBLE_YEARS)
    if d < earliest:
        errors[field] = Msg(N_("%(day)s is more than %(n)s years ago: check the year"), day=d, n=PLAUSIBLE_YEARS)
        return None
    if not_before is not None and not_before[0] is not None and d < not_before[0]:
        errors[field] = Msg(N_("is before %(what)s (%(day)s)"), what=Msg(not_before[1]), day=not_before[0])
        return None
    return d
