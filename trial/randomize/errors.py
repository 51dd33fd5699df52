"""Randomization errors (Yelland et al., Clinical Trials 2015): a child randomized in the wrong
stratum, an ineligible child randomized, a child randomized twice. The error is recorded (by the
trial manager, audited); the allocation never changes (intention to treat); for a wrong stratum
the value the child was randomized with is kept beside the correct one, and the analysis adjusts
for the corrected strata (ADSL's ``c_<factor>``: trial.exports.dataset); ADSL flags a child
randomized though ineligible (``randinel``) or twice (``randtwic``). A record made by mistake is
retracted by the manager with a reason (:func:`retract_error`): the row goes, its audit record
keeps what it said and why."""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.auth.models import User
from trial.catalogue import N_, Joined, Label, Msg, term
from trial.errors import Conflict, NotFound
from trial.participants.models import Allocation, Participant
from trial.participants.service import allocation_of, get_participant
from trial.protocol.service import current as current_protocol
from trial.randomize.models import RandomizationError, Stratum
from trial.scope import can_see_arm, require_role
from trial.sites.models import Site
from trial.trialstate.service import ensure_writable
from trial.validation import refusal, text

KINDS = ("wrong_stratum", "ineligible", "randomized_twice")
MAX_TEXT = 2000
LEAD = N_("The randomization error was not recorded")
LABELS = {"kind": N_("Kind"), "field": N_("Stratification factor"), "correct_value": N_("Correct value"),
          "text": N_("Text")}
READERS = ("manager", "statistician")


def factors(db: Session) -> dict[str, list[str]]:
    """Each stratification factor of the protocol with its levels (the site's: the trial's sites)."""
    content = current_protocol(db).content
    out = {}
    for f in content["randomization"]["factors"]:
        out[f["key"]] = (list(db.execute(select(Site.code).order_by(Site.code)).scalars()) if f["key"] == "site"
                         else list(f.get("levels") or []))
    return out


def _factor_label(content: dict, key: str) -> Label:
    f = next((x for x in content["randomization"]["factors"] if x["key"] == key), {})
    return Label("factor", key, f.get("label") or key)


def as_randomized(db: Session, p: Participant, alloc: Allocation, field: str) -> str | None:
    """The value of a factor the child was randomized with: from the allocation's stratum (site=AT01|f=v),
    else (a minimization trial's single sequence) the child's site and strata as enrolled."""
    key = db.execute(select(Stratum.key).where(Stratum.id == alloc.stratum_id)).scalar_one_or_none() or ""
    parts = dict(part.split("=", 1) for part in key.split("|") if "=" in part)
    if field in parts:
        return parts[field]
    if field == "site":
        return db.execute(select(Site.code).where(Site.id == p.site_id)).scalar_one()
    return (p.strata or {}).get(field)


def _checked(db: Session, data: Any) -> tuple[str, str | None, str | None, str]:
    """The record's kind, factor, correct level and text, checked (400 naming each bad field)."""
    data = data if isinstance(data, dict) else {}
    content = current_protocol(db).content
    levels = factors(db)
    errors: dict[str, str] = {}
    kind = data.get("kind") if data.get("kind") in KINDS else None
    if kind is None:
        errors["kind"] = Msg(N_("must be one of: %(allowed)s"),
                             allowed=Joined((term("randomization_error", k) for k in KINDS), ", "))
    field = value = None
    if kind == "wrong_stratum":
        field = data.get("field") if isinstance(data.get("field"), str) and data.get("field") in levels else None
        if field is None:
            errors["field"] = Msg(N_("must be one of: %(allowed)s"),
                                  allowed=Joined((_factor_label(content, k) for k in levels), ", "))
        else:
            value = data.get("correct_value") if isinstance(data.get("correct_value"), str) else None
            if value not in levels[field]:
                errors["correct_value"] = Msg(N_("must be one of the levels of %(factor)s: %(allowed)s"),
                                              factor=_factor_label(content, field), allowed=", ".join(levels[field]))
                value = None
    else:
        for name in ("field", "correct_value"):
            if data.get(name) not in (None, ""):
                errors[name] = N_("is only given for a wrong stratum")
    words = text(data.get("text"), "text", errors, MAX_TEXT, required=True)
    if errors:
        raise refusal(LEAD, errors, LABELS)
    return kind, field, value, words


def record_error(db: Session, actor, study_id: str, data: dict) -> RandomizationError:
    """Record a randomization error of a randomized child (the manager): checked, written and
    audited in one transaction. The allocation is not touched."""
    require_role(db, actor, "manager")
    p = get_participant(db, actor, study_id, for_update=True)
    kind, field, value, words = _checked(db, data)
    ensure_writable(db)
    alloc = allocation_of(db, p.id)
    if alloc is None:
        raise Conflict(Msg(N_("%(study_id)s is not randomized: there is no randomization to be in error."),
                           study_id=p.study_id))
    was = as_randomized(db, p, alloc, field) if field else None
    if field and was == value:
        raise refusal(LEAD, {"correct_value": Msg(N_("is the value %(study_id)s was randomized with"),
                                                  study_id=p.study_id)}, LABELS)
    e = RandomizationError(participant_id=p.id, kind=kind, field=field, as_randomized=was, correct_value=value,
                           text=words, recorded_by_id=getattr(actor, "id", None))
    db.add(e)
    db.flush()
    audit.created(db, actor, "randomization_error", e.id, {"participant": p.study_id, "kind": kind, "field": field,
                                                           "as_randomized": was, "correct_value": value, "text": words})
    return e


def listing(db: Session, actor) -> list[tuple[RandomizationError, str, str | None]]:
    """Every randomization error (manager, statistician), with the child's study id and who recorded it."""
    require_role(db, actor, *READERS)
    return list(db.execute(select(RandomizationError, Participant.study_id, User.name)
                           .join(Participant, Participant.id == RandomizationError.participant_id)
                           .outerjoin(User, User.id == RandomizationError.recorded_by_id)
                           .order_by(RandomizationError.recorded_at, RandomizationError.id)).all())


TEXT_WITHHELD = "(withheld while blinded)"  # as the blinded bundle writes it (trial.exports.dataset)


def text_shown(db: Session, actor) -> bool:
    """Whether the reader may read the errors' free text, which can name the arm: a reader who may
    learn the allocation (the manager; the statistician only from the unblinding on)."""
    return can_see_arm(db, actor, None)


def as_dict(e: RandomizationError, study_id: str, recorded_by: str | None, shown: bool = True) -> dict:
    return {"id": e.id, "study_id": study_id, "kind": e.kind, "field": e.field, "as_randomized": e.as_randomized,
            "correct_value": e.correct_value, "text": e.text if shown else TEXT_WITHHELD, "recorded_by": recorded_by,
            "recorded_at": e.recorded_at.replace(tzinfo=dt.UTC).isoformat()}


def retract_error(db: Session, actor, study_id: str, error_id, data: dict) -> dict:
    """Retract a randomization error recorded by mistake (the manager), with a reason: the row is
    deleted, its audit record (action ``delete``) keeps its values and the reason; the corrected
    strata and ADSL's flags follow. Returns what was retracted."""
    require_role(db, actor, "manager")
    p = get_participant(db, actor, study_id, for_update=True)
    try:
        e = db.get(RandomizationError, int(error_id))
    except (TypeError, ValueError):
        e = None
    if e is None or e.participant_id != p.id:
        raise NotFound(N_("No such randomization error for this participant."))
    ensure_writable(db)
    errors: dict[str, str] = {}
    why = text((data if isinstance(data, dict) else {}).get("reason"), "reason", errors, 500, required=True)
    if errors:
        raise refusal(N_("The randomization error was not retracted"), errors, {"reason": N_("Reason")})
    out = as_dict(e, p.study_id, None)
    audit.record(db, actor, "delete", "randomization_error", e.id,
                 {"participant": (p.study_id, None), "kind": (e.kind, None), "field": (e.field, None),
                  "as_randomized": (e.as_randomized, None), "correct_value": (e.correct_value, None),
                  "text": (e.text, None)}, reason=why)
    db.delete(e)
    db.flush()
    return out


def kinds_of(db: Session) -> dict[int, set[str]]:
    """Each child's kinds of randomization error recorded (ADSL's flags)."""
    out: dict[int, set[str]] = {}
    for pid, kind in db.execute(select(RandomizationError.participant_id, RandomizationError.kind)):
        out.setdefault(pid, set()).add(kind)
    return out


def corrected_strata(db: Session) -> dict[int, dict[str, str]]:
    """Each child's corrected factor values (the latest wrong-stratum error of each factor)."""
    out: dict[int, dict[str, str]] = {}
    for pid, field, value in db.execute(select(RandomizationError.participant_id, RandomizationError.field,
                                               RandomizationError.correct_value)
                                        .where(RandomizationError.kind == "wrong_stratum")
                                        .order_by(RandomizationError.recorded_at, RandomizationError.id)):
        out.setdefault(pid, {})[field] = value
    return out


def counts(db: Session) -> dict[str, int]:
    """How many errors of each kind (for the bundle's README)."""
    out = dict.fromkeys(KINDS, 0)
    for kind in db.execute(select(RandomizationError.kind)).scalars():
        out[kind] = out.get(kind, 0) + 1
    return out
