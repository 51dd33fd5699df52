"""Outcome entry from the protocol's instruments: validation, windows, who may enter what."""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.auth.scope import require_site_role
from trial.enrollment.service import get_participant, parse_date, today
from trial.errors import Conflict, ValidationError
from trial.outcomes.models import GUESSES, Assessment
from trial.protocol.service import current as current_protocol


def validate_values(instrument: dict, values: Any) -> dict[str, Any]:
    """Check every field against the protocol; raise 400 naming each bad field."""
    errors: dict[str, str] = {}
    if not isinstance(values, dict):
        raise ValidationError("values must be an object of field: value", {"values": "must be an object"})
    fields = {f["key"]: f for f in instrument["fields"]}
    for k in sorted(set(values) - set(fields)):
        errors[f"values.{k}"] = f"is not a field of {instrument['key']}"
    out: dict[str, Any] = {}
    for key, f in fields.items():
        v = values.get(key)
        name = f"values.{key}"
        if v is None or v == "":
            if f["required"]:
                errors[name] = "is required"
            continue
        t = f["type"]
        if t == "integer":
            if isinstance(v, bool) or not isinstance(v, int):
                if isinstance(v, float) and v.is_integer():
                    v = int(v)
                else:
                    errors[name] = "must be a whole number"
                    continue
        elif t == "number":
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                errors[name] = "must be a number"
                continue
        elif t == "boolean" and not isinstance(v, bool):
            errors[name] = "must be true or false"
            continue
        elif t == "text" and not isinstance(v, str):
            errors[name] = "must be text"
            continue
        elif t == "choice" and v not in f["choices"]:
            errors[name] = f"must be one of {', '.join(map(str, f['choices']))}"
            continue
        if t in ("integer", "number"):
            lo, hi = f.get("min"), f.get("max")
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                errors[name] = f"{v} is out of range {lo}–{hi}"
                continue
        out[key] = v
    if errors:
        raise ValidationError("The assessment was not saved: " + "; ".join(f"{k} {v}" for k, v in errors.items()), errors)
    return out


def visit_window(visit: dict, start: dt.date) -> tuple[dt.date, dt.date, dt.date]:
    target = start + dt.timedelta(days=visit["day"])
    return target - dt.timedelta(days=visit["window_before"]), target, target + dt.timedelta(days=visit["window_after"])


def record_assessment(db: Session, actor, study_id: str, data: dict) -> Assessment:
    from trial.randomize.service import allocation_of
    p = get_participant(db, actor, study_id)
    content = current_protocol(db).content
    pv_version = current_protocol(db).version
    instruments = {i["key"]: i for i in content["instruments"]}
    visits = {v["key"]: v for v in content["visits"]}
    errors: dict[str, str] = {}
    ins = instruments.get(data.get("instrument"))
    if ins is None:
        errors["instrument"] = f"must be one of {', '.join(instruments)}"
    visit = visits.get(data.get("visit"))
    if visit is None:
        errors["visit"] = f"must be one of {', '.join(visits)}"
    elif ins is not None and visit["key"] not in ins["visits"]:
        errors["visit"] = f"{ins['key']} is not collected at {visit['key']}"
    performed = parse_date(data.get("performed_on"), "performed_on", errors)
    if performed and performed > today():
        errors["performed_on"] = "is in the future"
    if errors:
        raise ValidationError("The assessment was not saved: " + "; ".join(f"{k} {v}" for k, v in errors.items()), errors)
    # who enters what: blinded instruments only by the site's assessors, others by its coordinators
    require_site_role(db, actor, p.site_id, "assessor" if ins["blinded"] else "coordinator")
    values = validate_values(ins, data.get("values"))
    guess = data.get("allocation_guess")
    confidence = data.get("guess_confidence")
    alloc = allocation_of(db, p.id)
    if guess is not None:
        if not ins["blinded"]:
            errors["allocation_guess"] = "is recorded only with a blinded assessment"
        elif guess not in GUESSES:
            errors["allocation_guess"] = f"must be one of {', '.join(GUESSES)}"
        elif visit["key"] == "baseline":
            errors["allocation_guess"] = "there is no allocation to guess at baseline"
        if confidence is not None and (isinstance(confidence, bool) or not isinstance(confidence, int) or not 1 <= confidence <= 5):
            errors["guess_confidence"] = "must be a whole number from 1 (pure guess) to 5 (certain)"
    if errors:
        raise ValidationError("The assessment was not saved: " + "; ".join(f"{k} {v}" for k, v in errors.items()), errors)
    out_of_window = False
    if visit["key"] == "baseline":
        if alloc is not None:
            raise Conflict("The baseline is recorded before randomization; this participant is already randomized.")
        if performed < p.consent_date:
            raise ValidationError("The assessment was not saved: performed_on is before consent",
                                  {"performed_on": f"is before consent ({p.consent_date.isoformat()})"})
    else:
        if alloc is None:
            raise Conflict(f"Visit {visit['key']} follows randomization; {p.study_id} is not randomized yet.")
        lo, _, hi = visit_window(visit, alloc.randomized_at.date())
        out_of_window = not lo <= performed <= hi
    if db.execute(select(Assessment.id).where(Assessment.participant_id == p.id, Assessment.visit == visit["key"],
                                              Assessment.instrument == ins["key"])).first():
        raise Conflict(f"{ins['key']} at {visit['key']} is already recorded for {p.study_id}.")
    a = Assessment(participant_id=p.id, visit=visit["key"], instrument=ins["key"], performed_on=performed,
                   values=values, out_of_window=out_of_window, allocation_guess=guess, guess_confidence=confidence,
                   protocol_version=pv_version, entered_by_id=getattr(actor, "id", None))
    db.add(a)
    db.flush()
    audit.created(db, actor, "assessment", a.id, {"participant": p.study_id, "visit": a.visit, "instrument": a.instrument,
                                                  "performed_on": performed, "values": values,
                                                  "out_of_window": out_of_window, "allocation_guess": guess,
                                                  "guess_confidence": confidence})
    return a


def baseline_done(db: Session, participant_ids: list[int]) -> set[int]:
    """Participants whose baseline primary outcome is recorded."""
    prim = current_protocol(db).content["primary_outcome"]
    if not participant_ids:
        return set()
    rows = db.execute(select(Assessment.participant_id, Assessment.values).where(
        Assessment.participant_id.in_(participant_ids), Assessment.visit == "baseline",
        Assessment.instrument == prim["instrument"])).all()
    return {pid for pid, values in rows if values.get(prim["field"]) is not None}
