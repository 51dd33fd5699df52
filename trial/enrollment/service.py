"""Screening log, enrollment and what each role may see of a participant."""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.scope import can_see_arm, is_cli, require_site_role, visible_site_ids
from trial.db import lock_for_update
from trial.enrollment.models import Participant, Screening, SiteSequence
from trial.errors import Conflict, Forbidden, NotFound, ValidationError
from trial.trialstate.service import ensure_writable
from trial.protocol.service import current as current_protocol
from trial.sites.models import Site
from trial.sites.service import get_by_code
from trial.timeline import today
from trial.validation import clinical_date, ident, parse_date, refuse, text

SEXES = ("female", "male")
ARM_REVEALING_EVENTS = ("not_received", "discontinued_intervention")




# --- screening -------------------------------------------------------------------------------

def screening_outcome(criteria: list[dict], answers: dict[str, bool], declined: bool, other_reason: str | None):
    failed = [c["key"] for c in criteria if answers[c["key"]] != c["qualifying_answer"]]
    if failed:
        return "not_eligible", failed
    if declined:
        return "declined", []
    if other_reason:
        return "other", []
    return "eligible", []


def record_screening(db: Session, actor, data: dict) -> Screening:
    errors: dict[str, str] = {}
    site_code = data.get("site")
    if not site_code:
        raise ValidationError("The screening was not saved: site is required", {"site": "is required"})
    site = get_by_code(db, str(site_code))
    require_site_role(db, actor, site.id, "coordinator")
    ensure_writable(db)
    pv = current_protocol(db)
    criteria = pv.content["criteria"]
    screened_on = clinical_date(data.get("screened_on"), "screened_on", errors, today(site.timezone))
    answers_in = data.get("answers")
    answers: dict[str, bool] = {}
    if not isinstance(answers_in, dict):
        errors["answers"] = "must be an object of criterion: true/false"
    else:
        keys = {c["key"] for c in criteria}
        for k in sorted(set(answers_in) - keys):
            errors[f"answers.{k}"] = "is not a criterion of this protocol"
        for c in criteria:
            v = answers_in.get(c["key"])
            if not isinstance(v, bool):
                errors[f"answers.{c['key']}"] = "is required (true or false)"
            else:
                answers[c["key"]] = v
    declined = data.get("declined", False)
    if not isinstance(declined, bool):
        errors["declined"] = "must be true or false"
    other = text(data.get("other_reason"), "other_reason", errors, 500)
    refuse("The screening was not saved", errors)
    outcome, failed = screening_outcome(criteria, answers, declined, other)
    sc = Screening(site_id=site.id, screened_on=screened_on, answers=answers, declined=declined,
                   other_reason=other, outcome=outcome, failed_criteria=failed, protocol_version=pv.version,
                   created_by_id=getattr(actor, "id", None))
    db.add(sc)
    db.flush()
    audit.created(db, actor, "screening", sc.id, {"site": site.code, "screened_on": screened_on, "answers": answers,
                                                  "declined": declined, "other_reason": other, "outcome": outcome})
    return sc


def list_screenings(db: Session, actor, site_code: str | None = None) -> list[tuple[Screening, str, str | None]]:
    sites = visible_site_ids(db, actor, "coordinator", "manager")
    q = (select(Screening, Site.code, Participant.study_id).join(Site, Site.id == Screening.site_id)
         .outerjoin(Participant, Participant.screening_id == Screening.id).order_by(Screening.id.desc()))
    if sites is not None:
        q = q.where(Screening.site_id.in_(sites))
    if site_code:
        q = q.where(Site.code == site_code.upper())
    return list(db.execute(q.limit(500)).all())


# --- enrollment ------------------------------------------------------------------------------

def age_in_months(born: dt.date, on: dt.date) -> int:
    months = (on.year - born.year) * 12 + (on.month - born.month)
    return months - (1 if on.day < born.day else 0)


def _strata(pv_content: dict, given: Any, errors: dict[str, str]) -> dict[str, str]:
    out = {}
    given = given or {}
    if not isinstance(given, dict):
        errors["strata"] = "must be an object of factor: level"
        return out
    factors = [f for f in pv_content["randomization"]["factors"] if f["key"] != "site"]
    known = {f["key"] for f in factors}
    for k in sorted(set(given) - known - {"site"}):
        errors[f"strata.{k}"] = "is not a stratification factor of this protocol"
    for f in factors:
        level = given.get(f["key"])
        if level not in f["levels"]:
            errors[f"strata.{f['key']}"] = f"is required, one of {', '.join(f['levels'])}"
        else:
            out[f["key"]] = level
    return out


def _next_study_id(db: Session, site: Site) -> str:
    bind = db.get_bind()
    seq = db.execute(lock_for_update(select(SiteSequence).where(SiteSequence.site_id == site.id), bind)).scalar_one_or_none()
    if seq is None:
        _insert_ignore(db, SiteSequence.__table__, {"site_id": site.id, "last_number": 0})
        seq = db.execute(lock_for_update(select(SiteSequence).where(SiteSequence.site_id == site.id), bind)).scalar_one()
    seq.last_number += 1
    return f"{site.code}-{seq.last_number:04d}"


def _insert_ignore(db: Session, table, values: dict) -> None:
    """INSERT that does nothing if the row already exists (two first-comers at once)."""
    dialect = db.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    db.execute(insert(table).values(**values).on_conflict_do_nothing())


def enroll(db: Session, actor, data: dict) -> Participant:
    errors: dict[str, str] = {}
    sid = ident(data.get("screening_id"), "screening_id", errors, "a screening's id")
    refuse("The participant was not enrolled", errors)
    sc = db.get(Screening, sid)
    if sc is None:
        raise NotFound(f"No screening with id {sid}.")
    require_site_role(db, actor, sc.site_id, "coordinator")
    ensure_writable(db)
    site = db.get(Site, sc.site_id)
    if sc.outcome != "eligible":
        raise Conflict(f"Screening {sc.id} is {sc.outcome.replace('_', ' ')}: only an eligible screening can be enrolled.")
    if db.execute(select(Participant.id).where(Participant.screening_id == sc.id)).first():
        raise Conflict(f"Screening {sc.id} has already been enrolled.")
    pv = current_protocol(db)
    consent = clinical_date(data.get("consent_date"), "consent_date", errors, today(site.timezone),
                            not_before=(sc.screened_on, "the screening date"))
    born = parse_date(data.get("date_of_birth"), "date_of_birth", errors)
    sex = data.get("sex")
    if sex not in SEXES:
        errors["sex"] = f"must be one of {', '.join(SEXES)}"
    strata = _strata(pv.content, data.get("strata"), errors)
    if born and consent:
        el = pv.content["eligibility"]
        months = age_in_months(born, consent)
        if born >= consent or not el["min_age_months"] <= months <= el["max_age_months"]:
            errors["date_of_birth"] = (f"gives an age of {max(months, 0)} months at consent; the protocol requires "
                                       f"{el['min_age_months']} to {el['max_age_months']} months")
    refuse("The participant was not enrolled", errors)
    study_id = _next_study_id(db, site)
    p = Participant(study_id=study_id, site_id=site.id, screening_id=sc.id, consent_date=consent,
                    date_of_birth=born, sex=sex, strata=strata, created_by_id=getattr(actor, "id", None))
    db.add(p)
    db.flush()
    audit.created(db, actor, "participant", study_id, {"site": site.code, "screening_id": sc.id,
                                                       "consent_date": consent, "date_of_birth": born,
                                                       "sex": sex, "strata": strata})
    return p


# --- reading participants, by role, site and blinding ----------------------------------------

def _music_arms(db: Session) -> set[str]:
    return {a["key"] for a in current_protocol(db).content["arms"] if a["sessions_per_week"] > 0}


def get_participant(db: Session, actor, study_id: str, for_update: bool = False) -> Participant:
    """The participant if ``actor`` may see it (403 for another site's staff). ``for_update``
    locks its row until the transaction ends."""
    q = select(Participant).where(Participant.study_id == (study_id or "").upper())
    p = db.execute(lock_for_update(q, db.get_bind()) if for_update else q).scalar_one_or_none()
    if p is None:
        raise NotFound(f"No participant {study_id}.")
    check_visible(db, actor, p)
    return p


def check_visible(db: Session, actor, p: Participant) -> None:
    """403 for another site's staff; 404 for a therapist when the child is not in a music arm."""
    sites = visible_site_ids(db, actor)
    if sites is not None and p.site_id not in sites:
        raise Forbidden("This participant belongs to a site you do not work at.")
    if not is_cli(actor) and _therapist_only(actor, p.site_id):
        from trial.randomize.service import allocation_of
        alloc = allocation_of(db, p.id)
        if alloc is None or alloc.arm not in _music_arms(db):
            raise NotFound(f"Participant {p.study_id} is not in a music-therapy arm.")


def _therapist_only(actor, site_id: int) -> bool:
    """A therapist at this site who is not also its coordinator (nor a manager) sees only
    children in music-therapy arms; trial-wide roles such as admin add nothing here."""
    if actor.has_role("manager"):
        return False
    here = {r.role for r in actor.roles if r.site_id == site_id}
    return "therapist" in here and "coordinator" not in here


def list_participants(db: Session, actor, site_code: str | None = None) -> list[Participant]:
    sites = visible_site_ids(db, actor)
    q = select(Participant).order_by(Participant.study_id)
    if sites is not None:
        q = q.where(Participant.site_id.in_(sites))
    if site_code:
        site = get_by_code(db, site_code)
        if sites is not None and site.id not in sites:
            raise Forbidden("You do not work at that site.")
        q = q.where(Participant.site_id == site.id)
    rows = list(db.execute(q).scalars())
    if not is_cli(actor) and actor.has_role("therapist"):
        from trial.randomize.service import allocations_for
        allocs = allocations_for(db, [p.id for p in rows])
        music = _music_arms(db)
        rows = [p for p in rows if not _therapist_only(actor, p.site_id)
                or (p.id in allocs and allocs[p.id].arm in music)]
    return rows


def participant_views(db: Session, actor, rows: list[Participant]) -> list[dict]:
    """What ``actor`` may see of each participant: the arm only for unblinded roles."""
    from trial.outcomes.service import baseline_done
    from trial.randomize.service import allocations_for
    if not rows:
        return []
    allocs = allocations_for(db, [p.id for p in rows])
    from trial.timeline import local_date
    codes = dict(db.execute(select(Site.id, Site.code)).all())
    tzs = dict(db.execute(select(Site.id, Site.timezone)).all())
    arms = {a["key"]: a["label"] for a in current_protocol(db).content["arms"]}
    from trial.status.service import events_of, status_label
    baseline = baseline_done(db, [p.id for p in rows])
    events = events_of(db, [p.id for p in rows])
    out = []
    for p in rows:
        a = allocs.get(p.id)
        unblinded = a is not None and can_see_arm(db, actor, p.site_id)
        # events about the intervention would tell a blinded reader the child had one to receive
        evs = [e for e in events.get(p.id, []) if unblinded or e.type not in ARM_REVEALING_EVENTS]
        d = {"study_id": p.study_id, "site": codes[p.site_id], "status": status_label(a is not None, evs),
             "consent_date": p.consent_date.isoformat(), "date_of_birth": p.date_of_birth.isoformat(),
             "sex": p.sex, "strata": p.strata, "enrolled_at": p.enrolled_at.isoformat() + "Z",
             "baseline_primary_recorded": p.id in baseline,
             "randomized_on": local_date(a.randomized_at, tzs[p.site_id]).isoformat() if a else None}
        d["events"] = [{"type": e.type, "on": e.on.isoformat()} for e in evs]
        if unblinded:
            d["arm"] = a.arm
            d["arm_label"] = arms.get(a.arm, a.arm)
        out.append(d)
    return out


def home_summary(db: Session, actor) -> dict:
    """Counts for the start page: screened / enrolled / randomized per visible site. No per-arm
    figure, for anyone."""
    from trial.randomize.models import Allocation
    if actor.has_role("admin") and not actor.has_role("coordinator", "therapist", "assessor", "manager", "statistician"):
        return {"admin": True}
    sites = visible_site_ids(db, actor)
    site_rows = db.execute(select(Site).order_by(Site.code)).scalars().all()
    site_rows = [s for s in site_rows if sites is None or s.id in sites]
    ids = [s.id for s in site_rows]

    def counts(q):
        return dict(db.execute(q.where(q.selected_columns[0].in_(ids)).group_by(q.selected_columns[0])).all())
    screened = counts(select(Screening.site_id, func.count()))
    enrolled = counts(select(Participant.site_id, func.count()))
    randomized = counts(select(Participant.site_id, func.count()).join(Allocation, Allocation.participant_id == Participant.id))
    return {"sites": [{"code": s.code, "name": s.name, "target": s.target, "screened": screened.get(s.id, 0),
                       "enrolled": enrolled.get(s.id, 0), "randomized": randomized.get(s.id, 0)} for s in site_rows]}
