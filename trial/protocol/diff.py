"""What changed between two protocol versions, in lines a trial manager reads: added, removed and
changed visits, instruments, fields and labels (``trial protocol diff``, ``load --dry-run``)."""
from __future__ import annotations

from typing import Any

# what a change of a keyed item is named by, per section
SECTIONS = (("arms", "arm"), ("criteria", "criterion"), ("visits", "visit"), ("instruments", "instrument"))
NOT_COMPARED = {"key", "fields", "visits", "labels", "questions"}


def _keyed(items: list[dict] | None) -> dict[str, dict]:
    return {it["key"]: it for it in items or []}


def _value(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def _changed_values(what: str, old: dict, new: dict) -> list[str]:
    out = []
    for k in sorted((set(old) | set(new)) - NOT_COMPARED):
        if old.get(k) == new.get(k):
            continue
        out.append(f"{what}: {k} {_value(old.get(k))} -> {_value(new.get(k))}")
    for table in ("labels", "questions"):
        a, b = old.get(table) or {}, new.get(table) or {}
        for lang in sorted(set(a) | set(b)):
            if a.get(lang) != b.get(lang):
                change = "added" if lang not in a else "removed" if lang not in b else "changed"
                out.append(f"{what}: {table}.{lang} {change}")
    return out


def _visit_summary(v: dict) -> str:
    return f"{v.get('label', v['key'])}, day {v['day']}, window -{v['window_before']}/+{v['window_after']}"


def _section(name: str, noun: str, old: list[dict] | None, new: list[dict] | None) -> list[str]:
    a, b = _keyed(old), _keyed(new)
    out = [f"added {noun} {k}" + (f" ({_visit_summary(b[k])})" if noun == "visit" else "") for k in b if k not in a]
    out += [f"removed {noun} {k}" for k in a if k not in b]
    for k in (k for k in b if k in a):
        out += _changed_values(f"{noun} {k}", a[k], b[k])
        if noun == "instrument":
            out += _instrument(k, a[k], b[k])
    return out


def _instrument(key: str, old: dict, new: dict) -> list[str]:
    out = []
    added = [v for v in new["visits"] if v not in old["visits"]]
    removed = [v for v in old["visits"] if v not in new["visits"]]
    if added:
        out.append(f"{key}: now also at {', '.join(added)}")
    if removed:
        out.append(f"{key}: no longer at {', '.join(removed)}")
    a, b = _keyed(old["fields"]), _keyed(new["fields"])
    out += [f"added field {key}.{k}" for k in b if k not in a]
    out += [f"removed field {key}.{k}" for k in a if k not in b]
    for k in (k for k in b if k in a):
        out += _changed_values(f"field {key}.{k}", a[k], b[k])
    return out


def describe(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Every difference from ``old`` to ``new`` (normalised protocols), one line each; [] when
    the two are the same protocol."""
    out = []
    if old["trial"].get("amendment") != new["trial"].get("amendment"):
        out.append(f"amendment {old['trial'].get('amendment')} -> {new['trial'].get('amendment')}")
    if old.get("effective_from") != new.get("effective_from"):
        out.append(f"effective from {new.get('effective_from') or 'the day it is loaded'}")
    for section, noun in SECTIONS:
        out += _section(section, noun, old.get(section), new.get(section))
    for section in sorted(set(old) | set(new)):
        if section in {"trial", "effective_from"} | {s for s, _ in SECTIONS}:
            continue
        if old.get(section) != new.get(section):
            out.append(f"{section}: " + ("added" if section not in old else "removed" if section not in new else "changed"))
    return out
