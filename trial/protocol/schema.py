"""Validation of a protocol file. Every problem names the key (a dotted path) and what is wrong."""
from __future__ import annotations

import re
import tomllib
from typing import Any

from trial.catalogue import LANGUAGES

KEY_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
CREDENTIAL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,31}$")  # kinds as the bodies spell them: MT-BC, HCPC
TECHNIQUE_CATEGORIES = ("active", "receptive")
FIELD_TYPES = ("integer", "number", "text", "boolean", "choice")
METHODS = ("permuted_blocks", "minimization")


class ProtocolError(ValueError):
    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


ALLOWED = {
    "trial": {"key", "name", "amendment"},
    "arms": {"key", "label", "labels", "sessions_per_week", "weight"},
    "randomization": {"method", "block_sizes", "factors", "minimization", "initial_blocks", "extension_blocks"},
    "factors": {"key", "levels", "label", "labels"},
    "minimization": {"probability", "imbalance"},
    "eligibility": {"min_age_months", "max_age_months"},
    "criteria": {"key", "question", "questions", "qualifying_answer"},
    "course": {"months", "session_minutes", "min_attended_sessions", "parent_counselling_sessions", "techniques",
               "technique_labels", "technique_categories"},
    "credentials": {"key", "label", "labels", "issuer"},
    "goals": {"key", "label", "labels"},
    "fidelity": {"share", "min", "max", "threshold", "items"},
    "items": {"key", "label", "labels"},
    "visits": {"key", "label", "labels", "day", "window_before", "window_after", "primary", "allocation_guess"},
    "instruments": {"key", "label", "labels", "blinded", "visits", "fields"},
    "fields": {"key", "label", "labels", "type", "min", "max", "soft_min", "soft_max", "required", "units", "choices"},
    "primary_outcome": {"instrument", "field", "visit"},
    "analysis": {"model", "visits", "reference_arm", "pooled_arms", "pooled_label", "adjust", "per_protocol_min_dose",
                 "secondary_outcomes"},
    "secondary_outcomes": {"instrument", "field"},
}

ANALYSIS_MODELS = ("mixed_model",)


def _analysis(raw: dict[str, Any], out: dict[str, Any]) -> None:
    """The primary analysis (optional): a linear mixed model of the primary outcome at the given
    visits (baseline, then follow-ups up to the primary visit) with fixed effects for visit, group
    x visit after baseline and the adjustment factors, and a random intercept per child; group is
    the pooled arms against the reference arm. Each pooled arm against the reference is the
    secondary analysis."""
    if "analysis" not in raw:
        return
    a = _need(raw, "analysis", "", dict)
    _known(a, "analysis", "analysis")
    model = _need(a, "model", "analysis", str, "mixed_model")
    if model not in ANALYSIS_MODELS:
        raise ProtocolError("analysis.model", f"must be one of {', '.join(ANALYSIS_MODELS)}")
    arm_keys = [x["key"] for x in out["arms"]]
    visit_keys = [v["key"] for v in out["visits"]]
    prim = out["primary_outcome"]
    visits = _need(a, "visits", "analysis", list)
    unknown = [v for v in visits if v not in visit_keys]
    if unknown:
        raise ProtocolError("analysis.visits", f"unknown visit {unknown[0]!r}")
    if not visits or visits[0] != "baseline" or prim["visit"] not in visits or len(set(visits)) != len(visits):
        raise ProtocolError("analysis.visits", "must start with 'baseline' and include the primary visit, each once")
    if visits != sorted(visits, key=visit_keys.index):
        raise ProtocolError("analysis.visits", "must be in the protocol's order of visits")
    ins = next(i for i in out["instruments"] if i["key"] == prim["instrument"])
    missing = [v for v in visits if v not in ins["visits"]]
    if missing:
        raise ProtocolError("analysis.visits", f"the primary instrument is not collected at {missing[0]!r}")
    ref = _need(a, "reference_arm", "analysis", str)
    if ref not in arm_keys:
        raise ProtocolError("analysis.reference_arm", f"unknown arm {ref!r}")
    pooled = _need(a, "pooled_arms", "analysis", list, [k for k in arm_keys if k != ref])
    if not pooled or any(k not in arm_keys or k == ref for k in pooled) or len(set(pooled)) != len(pooled):
        raise ProtocolError("analysis.pooled_arms", "must list arms other than the reference arm, each once")
    adjust = _need(a, "adjust", "analysis", list, ["site"])
    factors = [f["key"] for f in out["randomization"]["factors"]]
    bad = [f for f in adjust if f not in factors]
    if bad:
        raise ProtocolError("analysis.adjust", f"{bad[0]!r} is not a randomization factor")
    dose = _need(a, "per_protocol_min_dose", "analysis", (int, float), 0.5)
    if not 0 <= dose <= 1:
        raise ProtocolError("analysis.per_protocol_min_dose", "must be between 0 and 1")
    secondary = []
    for i, so in enumerate(_need(a, "secondary_outcomes", "analysis", list, [])):
        sp = f"analysis.secondary_outcomes[{i}]"
        if not isinstance(so, dict):
            raise ProtocolError(sp, "must be a table with instrument and field")
        _known(so, "secondary_outcomes", sp)
        sins = next((x for x in out["instruments"] if x["key"] == _need(so, "instrument", sp, str)), None)
        if sins is None:
            raise ProtocolError(f"{sp}.instrument", f"unknown instrument {so['instrument']!r}")
        fld = next((f for f in sins["fields"] if f["key"] == _need(so, "field", sp, str)), None)
        if fld is None or fld["type"] not in ("integer", "number"):
            raise ProtocolError(f"{sp}.field", f"instrument {sins['key']!r} has no numeric field {so['field']!r}")
        secondary.append({"instrument": sins["key"], "field": fld["key"]})
    out["analysis"] = {"model": model, "visits": visits, "reference_arm": ref, "pooled_arms": pooled,
                       "pooled_label": _need(a, "pooled_label", "analysis", str, "Pooled arms"),
                       "adjust": adjust, "per_protocol_min_dose": float(dose), "secondary_outcomes": secondary}


def _known(d: dict, kind: str, path: str) -> None:
    """Refuse misspelled keys: `mni = 0` must not silently drop a minimum."""
    for k in d:
        if k not in ALLOWED[kind]:
            raise ProtocolError(f"{path}.{k}".lstrip("."), f"is not a known key here (expected one of {', '.join(sorted(ALLOWED[kind]))})")


def _need(d: dict, key: str, path: str, typ, default=...):
    if key not in d:
        if default is not ...:
            return default
        raise ProtocolError(f"{path}.{key}".lstrip("."), "is missing")
    v = d[key]
    types = typ if isinstance(typ, tuple) else (typ,)
    if bool in types and isinstance(v, bool):
        return v
    if isinstance(v, bool) and bool not in types or not isinstance(v, types):
        names = " or ".join(t.__name__.replace("str", "string").replace("int", "integer") for t in types)
        raise ProtocolError(f"{path}.{key}".lstrip("."), f"must be a {names}, not {type(v).__name__} {v!r}")
    return v


def _translations(d: dict, key: str, path: str, english: str | None = "label") -> dict[str, str] | None:
    """A table of the words in other languages of the web UI, by language (``de``, ``pt_BR`` or
    ``pt-BR``, ...): ``labels`` beside ``label``, ``questions`` beside a criterion's ``question``.
    English is the plain ``label`` (or ``question``) and the fallback of every language left out;
    ``english`` None: English may be given in the table too (technique labels)."""
    table = _need(d, key, path, dict, None)
    if table is None:
        return None
    out: dict[str, str] = {}
    for lang, words in table.items():
        where = f"{path}.{key}.{lang}".lstrip(".")
        code = lang.replace("-", "_")
        if code == "en" and english:
            raise ProtocolError(where, f"English is the {english} itself, not a translation")
        if code not in LANGUAGES:
            raise ProtocolError(where, f"is not a language of the web UI (one of {', '.join(LANGUAGES)})")
        if not isinstance(words, str) or not words.strip():
            raise ProtocolError(where, "must be a non-empty string")
        out[code] = words
    return out or None


def _with_translations(item: dict, source: dict, key: str, path: str, english: str = "label") -> dict:
    """``item`` with its translations table (``key``) when the file gives one: a protocol without
    translations keeps the content it always had."""
    t = _translations(source, key, path, english)
    if t:
        item[key] = t
    return item


def _key(d: dict, path: str) -> str:
    k = _need(d, "key", path, str)
    if not KEY_RE.match(k):
        raise ProtocolError(f"{path}.key", f"{k!r} is not a valid key (lower-case letters, digits, _; starts with a letter)")
    return k


def _unique(items: list[dict], path: str) -> None:
    seen = set()
    for i, it in enumerate(items):
        if it["key"] in seen:
            raise ProtocolError(f"{path}[{i}].key", f"duplicate key {it['key']!r}")
        seen.add(it["key"])


def _list(d: dict, key: str, path: str) -> list[dict]:
    items = _need(d, key, path, list)
    if not items:
        raise ProtocolError(f"{path}.{key}".lstrip("."), "must not be empty")
    for i, it in enumerate(items):
        if not isinstance(it, dict):
            raise ProtocolError(f"{path}.{key}[{i}]".lstrip("."), "must be a table")
    return items


def _intervention(raw: dict[str, Any], out: dict[str, Any]) -> None:
    """The intervention as delivered, each part optional: the therapists' credentials the trial
    accepts (with one, a session needs a therapist holding a valid one), the individual goals a
    therapist may set, and the treatment-fidelity scale with the share of sessions to rate."""
    if "credentials" in raw:
        creds = []
        for i, c in enumerate(_list(raw, "credentials", "")):
            p = f"credentials[{i}]"
            _known(c, "credentials", p)
            k = _need(c, "key", p, str)
            if not CREDENTIAL_RE.match(k):
                raise ProtocolError(f"{p}.key", f"{k!r} is not a valid credential kind (letters, digits, . _ -)")
            creds.append(_with_translations({"key": k, "label": _need(c, "label", p, str),
                                             "issuer": _need(c, "issuer", p, str, None)}, c, "labels", p))
        _unique(creds, "credentials")
        out["credentials"] = creds
    if "goals" in raw:
        goals = []
        for i, g in enumerate(_list(raw, "goals", "")):
            p = f"goals[{i}]"
            _known(g, "goals", p)
            goals.append(_with_translations({"key": _key(g, p), "label": _need(g, "label", p, str)}, g, "labels", p))
        _unique(goals, "goals")
        out["goals"] = goals
    if "fidelity" in raw:
        f = _need(raw, "fidelity", "", dict)
        _known(f, "fidelity", "fidelity")
        fid = {"share": _need(f, "share", "fidelity", (int, float)), "min": _need(f, "min", "fidelity", int),
               "max": _need(f, "max", "fidelity", int), "threshold": _need(f, "threshold", "fidelity", (int, float)),
               "items": []}
        if not 0 < fid["share"] <= 1:
            raise ProtocolError("fidelity.share", "must be more than 0 and at most 1 (the share of sessions rated)")
        if fid["min"] >= fid["max"]:
            raise ProtocolError("fidelity.max", "must be above min")
        if not fid["min"] <= fid["threshold"] <= fid["max"]:
            raise ProtocolError("fidelity.threshold", f"must be within the scale ({fid['min']}-{fid['max']})")
        for i, it in enumerate(_list(f, "items", "fidelity")):
            p = f"fidelity.items[{i}]"
            _known(it, "items", p)
            fid["items"].append(_with_translations({"key": _key(it, p), "label": _need(it, "label", p, str)}, it, "labels", p))
        _unique(fid["items"], "fidelity.items")
        out["fidelity"] = fid


def validate(raw: dict[str, Any]) -> dict[str, Any]:
    """Return the normalized protocol or raise :class:`ProtocolError`."""
    if not isinstance(raw, dict):
        raise ProtocolError("(file)", "must be a TOML document")
    trial = _need(raw, "trial", "", dict)
    _known(trial, "trial", "trial")
    tkey = _need(trial, "key", "trial", str)
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", tkey):
        raise ProtocolError("trial.key", f"{tkey!r} is not a valid trial key (lower-case letters, digits, - and _)")
    out: dict[str, Any] = {"trial": {"key": tkey, "name": _need(trial, "name", "trial", str),
                                     "amendment": str(_need(trial, "amendment", "trial", (str, int, float), "1"))}}

    arms = []
    for i, a in enumerate(_list(raw, "arms", "")):
        p = f"arms[{i}]"
        _known(a, "arms", p)
        arm = _with_translations({"key": _key(a, p), "label": _need(a, "label", p, str),
                                  "sessions_per_week": _need(a, "sessions_per_week", p, int),
                                  "weight": _need(a, "weight", p, int)}, a, "labels", p)
        if arm["weight"] < 1:
            raise ProtocolError(f"{p}.weight", "must be 1 or more")
        if not 0 <= arm["sessions_per_week"] <= 14:
            raise ProtocolError(f"{p}.sessions_per_week", "must be between 0 and 14")
        arms.append(arm)
    if len(arms) < 2:
        raise ProtocolError("arms", "a randomized trial needs at least two arms")
    _unique(arms, "arms")
    out["arms"] = arms
    ratio_sum = sum(a["weight"] for a in arms)

    r = _need(raw, "randomization", "", dict)
    _known(r, "randomization", "randomization")
    method = _need(r, "method", "randomization", str)
    if method not in METHODS:
        raise ProtocolError("randomization.method", f"must be one of {', '.join(METHODS)}, not {method!r}")
    sizes = _need(r, "block_sizes", "randomization", list)
    if not sizes:
        raise ProtocolError("randomization.block_sizes", "must not be empty")
    for j, s in enumerate(sizes):
        if isinstance(s, bool) or not isinstance(s, int) or s <= 0 or s % ratio_sum:
            raise ProtocolError(f"randomization.block_sizes[{j}]", f"{s!r} is not a positive multiple of the ratio sum {ratio_sum}")
    factors = []
    for i, f in enumerate(_need(r, "factors", "randomization", list, [{"key": "site"}])):
        p = f"randomization.factors[{i}]"
        if not isinstance(f, dict):
            raise ProtocolError(p, "must be a table")
        _known(f, "factors", p)
        k = _key(f, p)
        if k == "site":
            factors.append({"key": "site", "levels": None})
            continue
        levels = _need(f, "levels", p, list)
        if len(levels) < 2 or not all(isinstance(x, str) and KEY_RE.match(x) for x in levels):
            raise ProtocolError(f"{p}.levels", "must list at least two level keys")
        factors.append(_with_translations({"key": k, "levels": levels, "label": _need(f, "label", p, str, k)},
                                          f, "labels", p))
    _unique(factors, "randomization.factors")
    if not any(f["key"] == "site" for f in factors):
        raise ProtocolError("randomization.factors", "site must be one of the factors")
    mini = _need(r, "minimization", "randomization", dict, {})
    _known(mini, "minimization", "randomization.minimization")
    prob = _need(mini, "probability", "randomization.minimization", (float, int), 0.8)
    if not 0.5 <= float(prob) <= 1.0:
        raise ProtocolError("randomization.minimization.probability", "must be between 0.5 and 1")
    imb = _need(mini, "imbalance", "randomization.minimization", str, "range")
    if imb not in ("range", "variance"):
        raise ProtocolError("randomization.minimization.imbalance", "must be 'range' or 'variance'")
    for k in ("initial_blocks", "extension_blocks"):
        v = _need(r, k, "randomization", int, 10)
        if not 1 <= v <= 10000:
            raise ProtocolError(f"randomization.{k}", "must be between 1 and 10000")
    out["randomization"] = {"method": method, "block_sizes": sorted(sizes), "factors": factors,
                            "minimization": {"probability": float(prob), "imbalance": imb},
                            "initial_blocks": _need(r, "initial_blocks", "randomization", int, 10),
                            "extension_blocks": _need(r, "extension_blocks", "randomization", int, 10)}

    el = _need(raw, "eligibility", "", dict, {})
    _known(el, "eligibility", "eligibility")
    lo = _need(el, "min_age_months", "eligibility", int, 0)
    hi = _need(el, "max_age_months", "eligibility", int, 1200)
    if lo > hi:
        raise ProtocolError("eligibility.max_age_months", "must not be below min_age_months")
    out["eligibility"] = {"min_age_months": lo, "max_age_months": hi}
    criteria = []
    for i, c in enumerate(_list(raw, "criteria", "")):
        p = f"criteria[{i}]"
        _known(c, "criteria", p)
        criteria.append(_with_translations({"key": _key(c, p), "question": _need(c, "question", p, str),
                                            "qualifying_answer": _need(c, "qualifying_answer", p, bool)},
                                           c, "questions", p, english="question"))
    _unique(criteria, "criteria")
    out["criteria"] = criteria

    c = _need(raw, "course", "", dict)
    _known(c, "course", "course")
    course = {"months": _need(c, "months", "course", int), "session_minutes": _need(c, "session_minutes", "course", int, 30),
              "min_attended_sessions": _need(c, "min_attended_sessions", "course", int, 1),
              "parent_counselling_sessions": _need(c, "parent_counselling_sessions", "course", int, 0),
              "techniques": _need(c, "techniques", "course", list, [])}
    if not 1 <= course["months"] <= 60:
        raise ProtocolError("course.months", "must be between 1 and 60")
    for j, t in enumerate(course["techniques"]):
        if not isinstance(t, str) or not KEY_RE.match(t):
            raise ProtocolError(f"course.techniques[{j}]", f"{t!r} is not a valid key")
    # the words for each technique, by language (English too; without it the key, capitalized)
    words = _need(c, "technique_labels", "course", dict, None)
    if words is not None:
        course["technique_labels"] = {}
        for t in words:
            if t not in course["techniques"]:
                raise ProtocolError(f"course.technique_labels.{t}", "is not one of course.techniques")
            tr = _translations(words, t, "course.technique_labels", english=None)
            if tr:
                course["technique_labels"][t] = tr
    # active (improvisation, songs, games) or receptive (listening); unnamed ones count as active
    cats = _need(c, "technique_categories", "course", dict, {})
    for t, cat in cats.items():
        if t not in course["techniques"]:
            raise ProtocolError(f"course.technique_categories.{t}", "is not one of course.techniques")
        if cat not in TECHNIQUE_CATEGORIES:
            raise ProtocolError(f"course.technique_categories.{t}", f"must be one of {', '.join(TECHNIQUE_CATEGORIES)}")
    if cats:
        course["technique_categories"] = {t: cats.get(t, "active") for t in course["techniques"]}
    out["course"] = course
    _intervention(raw, out)

    visits = []
    for i, v in enumerate(_list(raw, "visits", "")):
        p = f"visits[{i}]"
        _known(v, "visits", p)
        visit = {"key": _key(v, p), "label": _need(v, "label", p, str, v.get("key")),
                 "day": _need(v, "day", p, int), "window_before": _need(v, "window_before", p, int),
                 "window_after": _need(v, "window_after", p, int), "primary": _need(v, "primary", p, bool, False)}
        _with_translations(visit, v, "labels", p)
        for k in ("window_before", "window_after"):
            if visit[k] < 0:
                raise ProtocolError(f"{p}.{k}", "must be 0 or more")
        # does the blinded assessor guess the allocation at this visit? (decided below, once the
        # instruments are known: by default at every visit after baseline with a blinded instrument)
        guess = _need(v, "allocation_guess", p, bool, None)
        if guess and visit["key"] == "baseline":
            raise ProtocolError(f"{p}.allocation_guess", "there is no allocation to guess at baseline "
                                                         "(it comes before randomization)")
        visit["allocation_guess"] = guess
        visits.append(visit)
    _unique(visits, "visits")
    if [v["day"] for v in visits] != sorted(v["day"] for v in visits):
        raise ProtocolError("visits", "must be listed in order of their day")
    if sum(v["primary"] for v in visits) != 1:
        raise ProtocolError("visits", "exactly one visit must be marked primary = true")
    if not any(v["key"] == "baseline" and v["day"] == 0 for v in visits):
        raise ProtocolError("visits", "a 'baseline' visit on day 0 is required (randomization needs the baseline outcome)")
    out["visits"] = visits
    visit_keys = {v["key"] for v in visits}

    instruments = []
    for i, ins in enumerate(_list(raw, "instruments", "")):
        p = f"instruments[{i}]"
        _known(ins, "instruments", p)
        item = {"key": _key(ins, p), "label": _need(ins, "label", p, str), "blinded": _need(ins, "blinded", p, bool),
                "visits": _need(ins, "visits", p, list), "fields": []}
        _with_translations(item, ins, "labels", p)
        for j, vk in enumerate(item["visits"]):
            if not isinstance(vk, str) or vk not in visit_keys:
                raise ProtocolError(f"{p}.visits[{j}]", f"unknown visit {vk!r}")
        for j, f in enumerate(_list(ins, "fields", p)):
            fp = f"{p}.fields[{j}]"
            _known(f, "fields", fp)
            fld = {"key": _key(f, fp), "label": _need(f, "label", fp, str, f.get("key")),
                   "type": _need(f, "type", fp, str), "required": _need(f, "required", fp, bool, True),
                   "min": None, "max": None, "soft_min": None, "soft_max": None,
                   "units": _need(f, "units", fp, str, None), "choices": None}
            _with_translations(fld, f, "labels", fp)
            if fld["type"] not in FIELD_TYPES:
                raise ProtocolError(f"{fp}.type", f"must be one of {', '.join(FIELD_TYPES)}, not {fld['type']!r}")
            if fld["type"] in ("integer", "number"):
                num = int if fld["type"] == "integer" else (int, float)
                fld["min"] = _need(f, "min", fp, num, None)
                fld["max"] = _need(f, "max", fp, num, None)
                if fld["min"] is not None and fld["max"] is not None and fld["min"] > fld["max"]:
                    raise ProtocolError(f"{fp}.max", "must not be below min")
                # soft limits: a value outside them is saved but queried (checked by a person)
                fld["soft_min"] = _need(f, "soft_min", fp, num, None)
                fld["soft_max"] = _need(f, "soft_max", fp, num, None)
                for k, cmp in (("soft_min", "min"), ("soft_max", "max")):
                    v = fld[k]
                    if v is None:
                        continue
                    if fld["min"] is not None and v < fld["min"] or fld["max"] is not None and v > fld["max"]:
                        raise ProtocolError(f"{fp}.{k}", f"{v} is outside the hard range {fld['min']}-{fld['max']}")
                if fld["soft_min"] is not None and fld["soft_max"] is not None and fld["soft_min"] > fld["soft_max"]:
                    raise ProtocolError(f"{fp}.soft_max", "must not be below soft_min")
            elif "soft_min" in f or "soft_max" in f:
                raise ProtocolError(f"{fp}.soft_min", "soft limits are for integer and number fields")
            if fld["type"] == "choice":
                fld["choices"] = _need(f, "choices", fp, list)
                if not fld["choices"]:
                    raise ProtocolError(f"{fp}.choices", "must not be empty")
            item["fields"].append(fld)
        _unique(item["fields"], f"{p}.fields")
        instruments.append(item)
    _unique(instruments, "instruments")
    out["instruments"] = instruments
    for i, visit in enumerate(visits):
        blinded_here = any(ins["blinded"] and visit["key"] in ins["visits"] for ins in instruments)
        if visit["allocation_guess"] and not blinded_here:
            raise ProtocolError(f"visits[{i}].allocation_guess", "the guess is recorded with a blinded assessment, "
                                                                 "and no blinded instrument is collected at this visit")
        if visit["allocation_guess"] is None:
            visit["allocation_guess"] = visit["key"] != "baseline" and blinded_here

    po = _need(raw, "primary_outcome", "", dict)
    _known(po, "primary_outcome", "primary_outcome")
    prim = {"instrument": _need(po, "instrument", "primary_outcome", str),
            "field": _need(po, "field", "primary_outcome", str), "visit": _need(po, "visit", "primary_outcome", str)}
    ins = next((x for x in instruments if x["key"] == prim["instrument"]), None)
    if ins is None:
        raise ProtocolError("primary_outcome.instrument", f"unknown instrument {prim['instrument']!r}")
    if not any(f["key"] == prim["field"] for f in ins["fields"]):
        raise ProtocolError("primary_outcome.field", f"instrument {ins['key']!r} has no field {prim['field']!r}")
    if prim["visit"] not in visit_keys:
        raise ProtocolError("primary_outcome.visit", f"unknown visit {prim['visit']!r}")
    if not next(v for v in visits if v["key"] == prim["visit"])["primary"]:
        raise ProtocolError("primary_outcome.visit", f"visit {prim['visit']!r} is not the visit marked primary")
    for vk in (prim["visit"], "baseline"):
        if vk not in ins["visits"]:
            raise ProtocolError(f"instruments[{instruments.index(ins)}].visits",
                                f"the primary instrument must be collected at {vk!r}")
    out["primary_outcome"] = prim
    _analysis(raw, out)
    unknown = set(raw) - {"trial", "arms", "randomization", "eligibility", "criteria", "course", "visits",
                          "instruments", "primary_outcome", "credentials", "goals", "fidelity", "analysis"}
    if unknown:
        raise ProtocolError(sorted(unknown)[0], "is not a known protocol section")
    return out


def parse(text: str) -> dict[str, Any]:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProtocolError("(file)", f"is not valid TOML: {e}") from e
    return validate(raw)
