"""Checks of raw input that every service and face shares: text without control characters,
whole numbers that fit the database, and dates that are real and plausible. Each check adds
``field -> why`` to an ``errors`` dict, so one answer names every bad field."""
from __future__ import annotations

import datetime as dt
import math
import re
import zoneinfo
from typing import Annotated, Any

from pydantic import PlainValidator, WithJsonSchema
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticCustomError

from trial.catalogue import N_, Joined, Label, Msg
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


MAX_NESTING = 32  # a JSON body deeper than this is refused before it is decoded
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")


def nests_too_deep(raw: bytes, limit: int = MAX_NESTING) -> bool:
    """Whether a JSON text nests its arrays and objects deeper than ``limit`` (brackets inside
    strings do not count), found without decoding it: a JSON parser recurses once a level, and a
    body of 100,000 brackets would exhaust Python's stack."""
    depth = 0
    for m in _BRACKET.finditer(_JSON_STRING.sub(b"", raw)):
        depth += 1 if m[0] in b"[{" else -1
        if depth > limit:
            return True
    return False


def check_json_depth(raw: bytes) -> None:
    """A 400 naming ``body`` for a body nested deeper than :data:`MAX_NESTING`."""
    if raw and nests_too_deep(raw):
        raise ValidationError(Msg(N_("The request body nests deeper than %(n)s levels."), n=MAX_NESTING),
                              {"body": Msg(N_("nests deeper than %(n)s levels"), n=MAX_NESTING)})


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
    reasons = Joined(Msg(N_("%(field)s %(reason)s"), field=as_msg((labels or {}).get(k, k)), reason=as_msg(v))
                     for k, v in errors.items())
    e = ValidationError(Msg(N_("%(lead)s: %(reasons)s"), lead=as_msg(message), reasons=reasons), errors, lead=message)
    e.labels = dict(labels or {})  # a form that has no field for a reason names it by its label
    return e


def as_msg(text) -> Msg:
    """A catalogue text (or a composed message) as a value of a message, shown in the reader's language."""
    return text if isinstance(text, (Msg, Label, Joined)) else Msg(str(text))


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


# RFC 3339 (OpenAPI's date-time) with seconds and an offset: a time without its offset from UTC is
# refused, as it could be any zone's (a report's time decides whether 24 hours were kept)
MOMENT_PATTERN = (r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
                  r"(\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$")
_MOMENT_RE = re.compile(MOMENT_PATTERN)
MOMENT_FORM = N_("is not a date and time with its offset from UTC (YYYY-MM-DDTHH:MM:SSZ, or +01:00 for the offset)")


def parse_moment(value: Any, field: str, errors: dict[str, str], tz: str | None = None) -> dt.datetime | None:
    """A moment as naive UTC (as the database keeps them): RFC 3339 text with its offset (``Z`` or
    ``+01:00``; the API), an aware datetime, or a naive datetime read as the wall-clock time in the
    time zone ``tz`` (a site's: the web form; a time the clocks skipped there is refused)."""
    if value is None or value == "":
        errors[field] = N_("is required")
        return None
    if isinstance(value, dt.datetime) and value.tzinfo is None and tz:
        return _wall_clock(value, tz, field, errors)
    try:
        if isinstance(value, dt.datetime) and value.tzinfo is not None:
            return value.astimezone(dt.UTC).replace(tzinfo=None)
        if isinstance(value, str) and _MOMENT_RE.fullmatch(value):
            return dt.datetime.fromisoformat(value).astimezone(dt.UTC).replace(tzinfo=None)
    except (ValueError, OverflowError):
        errors[field] = Msg(N_("%(value)s is not a moment of the calendar"), value=value)
        return None
    errors[field] = MOMENT_FORM
    return None


def _wall_clock(local: dt.datetime, tz: str, field: str, errors: dict[str, str]) -> dt.datetime | None:
    zone = zoneinfo.ZoneInfo(tz)
    try:
        utc = local.replace(tzinfo=zone).astimezone(dt.UTC)
        exists = utc.astimezone(zone).replace(tzinfo=None) == local
    except OverflowError:
        exists = False
    if not exists:
        errors[field] = Msg(N_("%(moment)s does not exist in the time zone %(zone)s (the clocks skipped it)"),
                            moment=f"{local:%Y-%m-%d %H:%M}", zone=tz)
        return None
    return utc.replace(tzinfo=None)


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


# --- the same limits as annotated types, for the API's declared bodies -----------------------------
# Each type checks with the functions above (the same words as the services') and says in its JSON
# Schema what it accepts, so that the OpenAPI document and the check are one declaration. A value the
# schema calls valid passes the type; the services still check what depends on the trial's state
# (a site's today, a record's dates, the protocol).

_CONTROLS = r"\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f"
# what str.strip() takes away (the services strip text), spelled out: a pattern's \s differs
_SPACES = "".join(f"\\u{ord(c):04x}" for c in map(chr, range(0x3000 + 1)) if c.isspace())
NO_CONTROL = f"^[^{_CONTROLS}]*$"
NOT_BLANK = f"^[^{_CONTROLS}]*[^{_CONTROLS}{_SPACES}][^{_CONTROLS}]*$"
DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"


def house_error(message: Any) -> PydanticCustomError:
    """A refusal in the services' words (a catalogue message, translated when shown)."""
    return PydanticCustomError("house", "{message}", {"message": message})


def integral(value: Any) -> Any:
    """A whole number written with a fraction of zero (``3.0``: JSON does not tell them apart) as
    the integer it is; anything else as it is."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_JSON_INT:
        return int(value)
    return value


def checked(check, *args, convert=None, **kwargs):
    """A validator from a check that adds ``field -> why`` to an errors dict; ``convert`` makes
    the value checked (and passed on) from the value sent."""
    def validate(value: Any) -> Any:
        if convert is not None:
            value = convert(value)
        errors: dict[str, Any] = {}
        check(value, "value", errors, *args, **kwargs)
        if errors:
            raise house_error(errors["value"])
        return value
    return validate


def Text(max_len: int, required: bool = True, description: str | None = None,  # noqa: N802 (a type)
         missing: Any = None):
    """Text of at most ``max_len`` characters without control characters; a required one is not
    blank (an optional one may be null or empty: nothing); ``missing``: the refusal of a required
    one left out or blank, in the service's words."""
    schema: dict[str, Any] = {"type": "string", "maxLength": max_len, "pattern": NOT_BLANK if required else NO_CONTROL}
    if required:
        schema["minLength"] = 1
    else:
        schema = {"anyOf": [schema, {"type": "null"}]}
    if description:
        schema["description"] = description
    def check(value: Any, field: str, errors: dict[str, str]) -> None:
        text(value, field, errors, max_len, required)
        if missing and errors.get(field) == N_("is required"):
            errors[field] = missing
    return Annotated[str | None if not required else str, PlainValidator(checked(check)), WithJsonSchema(schema)]


def _id(value: Any, field: str, errors: dict[str, str]) -> None:
    ident(value, field, errors)


def _iso_date(value: Any, field: str, errors: dict[str, str]) -> None:
    if isinstance(value, dt.date):  # only text comes in JSON
        errors[field] = N_("is not a date (YYYY-MM-DD)")
        return
    parse_date(value, field, errors)


def _date_or_null(value: Any, field: str, errors: dict[str, str]) -> None:
    if value is not None:
        _iso_date(value, field, errors)


Id = Annotated[int, PlainValidator(checked(_id, convert=integral)),
               WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_ID})]
# what a schema says of a field whose rule depends on the trial, not on the body alone (a
# valid-looking value may still be refused there, with a 400 naming the field)
AGAINST = "x-checked-against"
CALENDAR = ("the site's calendar and the record's dates: not in the future at the site, at most "
            f"{PLAUSIBLE_YEARS} years back, not before the events it follows")
IsoDate = Annotated[str, PlainValidator(checked(_iso_date)), WithJsonSchema(
    {"type": "string", "format": "date", "description": "YYYY-MM-DD", AGAINST: CALENDAR})]
OptionalDate = Annotated[str | None, PlainValidator(checked(_date_or_null)), WithJsonSchema(
    {"anyOf": [{"type": "string", "format": "date"}, {"type": "null"}], "description": "YYYY-MM-DD, or null",
     AGAINST: CALENDAR})]


def _iso_moment(value: Any, field: str, errors: dict[str, str]) -> None:
    if not isinstance(value, str):  # only text comes in JSON
        errors[field] = MOMENT_FORM
        return
    parse_moment(value, field, errors)


IsoMoment = Annotated[str, PlainValidator(checked(_iso_moment)), WithJsonSchema(
    {"type": "string", "format": "date-time", "pattern": MOMENT_PATTERN,
     "description": "a moment with its offset from UTC: YYYY-MM-DDTHH:MM:SS (fractions of a second allowed) then Z "
                    "or ±HH:MM; kept in UTC", AGAINST: "the clock and the record's dates: not in the future, not before "
                                                       "the events it follows"})]


def _strict(kind: type, words: str):
    def check(value: Any, field: str, errors: dict[str, str]) -> None:
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            errors[field] = words
    return check


def _or_null(check):
    def maybe(value: Any, field: str, errors: dict[str, str]) -> None:
        if value is not None:
            check(value, field, errors)
    return maybe


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    description = schema.pop("description", None)
    out: dict[str, Any] = {"anyOf": [schema, {"type": "null"}]}
    if description:
        out["description"] = description
    return out


def declared(check, schema: dict[str, Any], kind: Any, nullable: bool = False, convert=None):
    """An annotated type: ``check(value, field, errors)`` (the services' words) and its JSON
    Schema; ``nullable``: null is accepted too (an optional field left empty)."""
    if nullable:
        return Annotated[kind | None, PlainValidator(checked(_or_null(check), convert=convert)),
                         WithJsonSchema(_nullable(dict(schema)))]
    return Annotated[kind, PlainValidator(checked(check, convert=convert)), WithJsonSchema(schema)]


def flag(nullable: bool = False):
    return declared(_strict(bool, N_("must be true or false")), {"type": "boolean"}, bool, nullable)


def word(nullable: bool = False, description: str | None = None, words: Any = None):
    """A short text: a key, a code; ``words``: the refusal in the service's own words."""
    schema: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 200, "pattern": NOT_BLANK}
    if description:
        schema["description"] = description

    def check(value: Any, field: str, errors: dict[str, str]) -> None:
        text(value, field, errors, 200, required=True)
        if field in errors and words:
            errors[field] = words
    return declared(check, schema, str, nullable)


Flag = flag()
Word = word()


def whole(lo: int | None = None, hi: int | None = None, nullable: bool = False, description: str | None = None,
          words: Any = None):
    """A whole number (not a boolean) from ``lo`` to ``hi``; ``words``: the refusal in the
    service's own words."""
    def check(value: Any, field: str, errors: dict[str, str]) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            errors[field] = words if words else N_("must be a whole number")
        elif lo is not None and value < lo or hi is not None and value > hi:
            errors[field] = words if words else Msg(N_("must be from %(lo)s to %(hi)s"), lo=lo, hi=hi)
    schema: dict[str, Any] = {"type": "integer"}
    if lo is not None:
        schema["minimum"] = lo
    if hi is not None:
        schema["maximum"] = hi
    if description:
        schema["description"] = description
    return declared(check, schema, int, nullable, convert=integral)


def choice(*values: str, description: str | None = None, nullable: bool = False, words: Any = None):
    """One of ``values``."""
    def check(value: Any, field: str, errors: dict[str, str]) -> None:
        if not isinstance(value, str) or value not in values:
            errors[field] = words if words else Msg(N_("must be one of %(values)s"), values=", ".join(values))
    schema: dict[str, Any] = {"type": "string", "enum": list(values)}
    if description:
        schema["description"] = description
    return declared(check, schema, str, nullable)


def pydantic_fields(exc: PydanticValidationError, words: dict[str, Any] | None = None) -> dict[str, Any]:
    """A declared body's refusals as ``field -> why``, each field by its dotted path (``on.kind``,
    ``values.total_t``), in the services' words; a bad item of a list is named by its list, as the
    services name it (``techniques``, with the item in the words)."""
    out: dict[str, Any] = {}
    for err in exc.errors(include_url=False):
        path = ""
        for part in err["loc"]:
            if isinstance(part, int):
                break
            path += f".{part}" if path else str(part)
        path = path or "body"
        if path in out:
            continue
        kind, ctx = err["type"], err.get("ctx") or {}
        if kind == "house":
            out[path] = ctx["message"]
        elif f"{kind}:{path}" in (words or {}) or kind in (words or {}):
            out[path] = words.get(f"{kind}:{path}") or words[kind]
        elif kind == "missing":
            out[path] = N_("is required")
        elif kind == "extra_forbidden":
            out[path] = N_("is not a field of this request")
        elif kind in ("dict_type", "model_type", "model_attributes_type"):
            out[path] = N_("must be an object")
        elif kind == "list_type":
            out[path] = N_("must be a list")
        elif kind in ("string_type", "str_type"):
            out[path] = N_("must be text")
        else:
            out[path] = err["msg"]
    return out
