"""The screening log and enrollment: screenings computed from the protocol's criteria, study IDs
per site under a locked counter."""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.catalogue import N_, Joined, Label, Msg, term, terms
from trial.consent import service as consent_service
from trial.db import insert_ignore, lock_for_update, utcnow
from trial.errors import Conflict, NotFound, ValidationError
from trial.paging import Page, PageRequest, ordered, paginate, sort_key
from trial.participants.models import SEXES, Participant, Screening, SiteSequence
from trial.participants.service import age_in_months
from trial.protocol.service import current as current_protocol
from trial.randomize.models import AllocationReservation
from trial.scope import is_cli, require_site_role, visible_site_ids
from trial.sites.models import Site
from trial.sites.service import get_by_code
from trial.timeline import today
from trial.trialstate.models import TrialState
from trial.trialstate.service import ensure_writable
from trial.validation import clinical_date, ident, parse_date, refusal, refuse, text

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
        raise ValidationError(N_("The screening was not saved: site is required"), {"site": N_("is required")})
    site = get_by_code(db, str(site_code))
    require_site_role(db, actor, site.id, "coordinator")
    ensure_writable(db)
    pv = current_protocol(db)
    criteria = pv.content["criteria"]
    screened_on = clinical_date(data.get("screened_on"), "screened_on", errors, today(site.timezone))
    answers_in = data.get("answers")
    answers: dict[str, bool] = {}
    if not isinstance(answers_in, dict):
        errors["answers"] = N_("must be an object of criterion: true/false")
    else:
        keys = {c["key"] for c in criteria}
        for k in sorted(set(answers_in) - keys):
            errors[f"answers.{k}"] = N_("is not a criterion of this protocol")
        for c in criteria:
            v = answers_in.get(c["key"])
            if not isinstance(v, bool):
                errors[f"answers.{c['key']}"] = N_("is required (true or false)")
            else:
                answers[c["key"]] = v
    declined = data.get("declined", False)
    if not isinstance(declined, bool):
        errors["declined"] = N_("must be true or false")
    other = text(data.get("other_reason"), "other_reason", errors, 500)
    log_number = _log_number(db, site, data.get("log_number"), errors)
    # an answer is named by its criterion's question, in the reader's language
    refuse(N_("The screening was not saved"), errors, {
        f"answers.{c['key']}": Msg(N_("The answer to “%(question)s”"),
                                   question=Label("criterion", c["key"], c.get("question") or c["key"]))
        for c in criteria})
    outcome, failed = screening_outcome(criteria, answers, declined, other)
    sc = Screening(site_id=site.id, log_number=log_number, screened_on=screened_on, answers=answers, declined=declined,
                   other_reason=other, outcome=outcome, failed_criteria=failed, protocol_version=pv.version,
                   created_by_id=getattr(actor, "id", None))
    try:
        with db.begin_nested():  # the unique index: the backstop of two coordinators typing one number at once
            db.add(sc)
            db.flush()
    except IntegrityError as e:
        raise refusal(N_("The screening was not saved"), {"log_number": Msg(
            N_("%(number)s is already in this site's screening log"), number=log_number)}) from e
    audit.created(db, actor, "screening", sc.id, {"site": site.code, "log_number": log_number,
                                                  "screened_on": screened_on, "answers": answers,
                                                  "declined": declined, "other_reason": other, "outcome": outcome})
    return sc


def _log_number(db: Session, site, value, errors: dict) -> str | None:
    """The site's own screening-log number (optional; each used once at a site)."""
    number = text(value, "log_number", errors, 40)
    if number and db.execute(select(Screening.id).where(Screening.site_id == site.id,
                                                        Screening.log_number == number)).first():
        errors["log_number"] = Msg(N_("%(number)s is already in this site's screening log"), number=number)
    return number


SCREENING_OUTCOMES = ("eligible", "not_eligible", "declined", "other")
SCREENING_SORTS = {"id": Screening.id, "site": Site.code, "screened_on": Screening.screened_on,
                   "outcome": Screening.outcome, "study_id": Participant.study_id}


def page_screenings(db: Session, actor, req: PageRequest, site_code: str | None = None, search: str | None = None,
                    outcome: str | None = None) -> Page:
    """A page of the screening log (newest first unless sorted otherwise): rows of (screening,
    site code, study id or None), filtered by site, outcome and a study-id fragment, counted in
    the database."""
    sites = visible_site_ids(db, actor, "coordinator", "monitor", "manager")
    q = (select(Screening, Site.code, Participant.study_id).join(Site, Site.id == Screening.site_id)
         .outerjoin(Participant, Participant.screening_id == Screening.id))
    if sites is not None:
        q = q.where(Screening.site_id.in_(sorted(sites)))
    if site_code:
        q = q.where(Site.code == site_code.upper())
    if outcome:
        if outcome not in SCREENING_OUTCOMES:
            raise ValidationError(Msg(N_("outcome must be one of: %(allowed)s."),
                                      allowed=terms("screening_outcome", SCREENING_OUTCOMES)),
                                  {"outcome": N_("an unknown screening outcome")})
        q = q.where(Screening.outcome == outcome)
    if search:
        term = search.strip()
        q = q.where(Screening.id == int(term) if term.isdigit() and len(term) < 10
                    else Participant.study_id.contains(term.upper(), autoescape=True))
    sort = sort_key(req.sort, SCREENING_SORTS, "-id")
    return paginate(db, ordered(q, sort, SCREENING_SORTS, Screening.id), req, scalars=False, sort=sort, key=Screening.id)


# --- enrollment ------------------------------------------------------------------------------

def _strata(pv_content: dict, given: Any, errors: dict[str, str]) -> dict[str, str]:
    out = {}
    given = given or {}
    if not isinstance(given, dict):
        errors["strata"] = N_("must be an object of factor: level")
        return out
    factors = [f for f in pv_content["randomization"]["factors"] if f["key"] != "site"]
    known = {f["key"] for f in factors}
    for k in sorted(set(given) - known - {"site"}):
        errors[f"strata.{k}"] = N_("is not a stratification factor of this protocol")
    for f in factors:
        level = given.get(f["key"])
        if level not in f["levels"]:
            # the levels are the values to give (the protocol has no words for them)
            errors[f"strata.{f['key']}"] = Msg(N_("is required, one of %(levels)s"), levels=", ".join(f["levels"]))
        else:
            out[f["key"]] = level
    return out


def _next_study_id(db: Session, site: Site) -> str:
    bind = db.get_bind()
    seq = db.execute(lock_for_update(select(SiteSequence).where(SiteSequence.site_id == site.id), bind)).scalar_one_or_none()
    if seq is None:
        insert_ignore(db, SiteSequence.__table__, {"site_id": site.id, "last_number": 0})
        seq = db.execute(lock_for_update(select(SiteSequence).where(SiteSequence.site_id == site.id), bind)).scalar_one()
    seq.last_number += 1
    return f"{site.code}-{seq.last_number:04d}"


def _reserved_study_id(db: Session, site: Site, sc: Screening) -> str | None:
    """The study id reserved for this screening's child by `trial randomization reconcile` (a child
    enrolled and randomized before the database was restored from a backup, entered again): the
    unused reservation of the site with the screening's log number, if its study id is free."""
    if not sc.log_number:
        return None
    r = AllocationReservation
    taken = select(Participant.id).where(Participant.study_id == r.study_id).exists()
    return db.execute(select(r.study_id).where(r.site_id == site.id, r.screening_log_number == sc.log_number,
                                               r.used_at.is_(None), ~taken)).scalar_one_or_none()


def _enrolment_values(content: dict, data: dict, sc: Screening, site: Site) -> tuple[dt.date, dt.date, str, dict]:
    """The consent date (not after today at the site, nor before the screening by more than the
    protocol's ``consent_before_screening_days``), the date of birth (an age at consent the
    protocol allows), the sex and the strata, checked, or 400 naming each bad one."""
    errors: dict[str, str] = {}
    early = content["eligibility"].get("consent_before_screening_days", 0)
    consent = clinical_date(data.get("consent_date"), "consent_date", errors, today(site.timezone),
                            not_before=(sc.screened_on - dt.timedelta(days=early),
                                        N_("the screening date") if not early
                                        else N_("the earliest consent date the protocol allows before the screening")))
    born = parse_date(data.get("date_of_birth"), "date_of_birth", errors)
    sex = data.get("sex")
    if sex not in SEXES:
        errors["sex"] = Msg(N_("must be one of %(allowed)s"), allowed=terms("sex", SEXES))
    strata = _strata(content, data.get("strata"), errors)
    if born and consent:
        el = content["eligibility"]
        months = age_in_months(born, consent)
        if born >= consent or not el["min_age_months"] <= months <= el["max_age_months"]:
            errors["date_of_birth"] = Msg(N_("gives an age of %(months)s months at consent; the protocol requires "
                                             "%(min)s to %(max)s months"),
                                          months=max(months, 0), min=el["min_age_months"], max=el["max_age_months"])
    # a stratification factor is named by the protocol's word for it
    refuse(N_("The participant was not enrolled"), errors, {
        f"strata.{f['key']}": Label("factor", f["key"], f.get("label") or f["key"])
        for f in content["randomization"]["factors"] if f["key"] != "site"})
    return consent, born, sex, strata


NO_SCREENING = N_("No such screening.")  # an unknown one and another site's: the same answer


def screening_for(db: Session, actor, screening_id: int) -> Screening:
    """The screening, for the staff who keep its site's log (coordinators and monitors of the
    site, managers); for anyone else 404, as for a screening that does not exist."""
    sc = db.get(Screening, screening_id)
    sites = visible_site_ids(db, actor, "coordinator", "monitor", "manager")
    if sc is None or (sites is not None and sc.site_id not in sites):
        raise NotFound(NO_SCREENING)
    return sc


def enroll(db: Session, actor, data: dict, at: dt.datetime | None = None) -> Participant:
    """Enrol from an eligible screening. ``at`` (a UTC datetime) is honoured only for the
    command-line operator loading synthetic or migrated data (the demo); users enrol now."""
    errors: dict[str, str] = {}
    sid = ident(data.get("screening_id"), "screening_id", errors, Msg(N_("a screening's id")))
    refuse(N_("The participant was not enrolled"), errors)
    sc = screening_for(db, actor, sid)
    require_site_role(db, actor, sc.site_id, "coordinator")
    ensure_writable(db)
    if db.execute(select(TrialState.randomization_hold_at).where(TrialState.randomization_hold.is_not(None))).first():
        # a child enrolled now would take the next study id, which the allocation journal may give a
        # child the restored database lacks
        raise Conflict(N_("Enrollment is closed until the allocation journal is reconciled after the restore from a "
                          "backup: a new child could take the study ID of a child enrolled after the backup. The "
                          "trial manager runs `trial randomization reconcile`."))
    site = db.get(Site, sc.site_id)
    if sc.outcome != "eligible":
        raise Conflict(Msg(N_("Screening %(id)s has the outcome %(outcome)s: only an eligible screening can be enrolled."),
                           id=sc.id, outcome=term("screening_outcome", sc.outcome)))
    if db.execute(select(Participant.id).where(Participant.screening_id == sc.id)).first():
        raise Conflict(Msg(N_("Screening %(id)s has already been enrolled."), id=sc.id))
    pv = current_protocol(db)
    consents, data = _enrolment_consents(pv.content, data, sc, site)
    consent, born, sex, strata = _enrolment_values(pv.content, data, sc, site)
    reserved = _reserved_study_id(db, site, sc)
    study_id = reserved or _next_study_id(db, site)
    p = Participant(study_id=study_id, site_id=site.id, screening_id=sc.id, consent_date=consent,
                    date_of_birth=born, sex=sex, strata=strata, created_by_id=getattr(actor, "id", None),
                    enrolled_at=at if (at is not None and is_cli(actor)) else utcnow())
    db.add(p)
    db.flush()
    audit.created(db, actor, "participant", study_id, {"site": site.code, "screening_id": sc.id,
                                                       "consent_date": consent, "date_of_birth": born,
                                                       "sex": sex, "strata": strata, "enrolled_at": p.enrolled_at},
                  reason=("the study id reserved for this screening's child, randomized before the database was "
                          "restored from a backup (trial randomization reconcile)") if reserved else None)
    for values in consents:
        consent_service.add_consent(db, actor, p, values, "enrollment", study_id)
    return p


def _enrolment_consents(content: dict, data: dict, sc: Screening, site: Site) -> tuple[list[dict], dict]:
    """The consents an enrollment records, checked, and the body with the parental consent's date
    as ``consent_date``: ``consents`` as given (each required document's current version, 400
    ``consent`` naming the missing ones), or from ``consent_date`` alone the protocol's one
    required parental document in the site's first language (400 naming ``consents`` when the
    protocol requires more than one)."""
    errors: dict = {}
    required = [d for d in consent_service.consent_section(content)["documents"]
                if d.get("required") and d["signer"] != "child"]
    given = data.get("consents")
    if given is None:
        if len(required) > 1:
            errors["consents"] = Msg(N_("are required: the protocol asks for %(documents)s"),
                                     documents=Joined([consent_service.document_label(d) for d in required], ", "))
            refuse(N_("The participant was not enrolled"), errors)
        if not required:
            return [], data
        doc = required[0]
        given = [{"document": doc["key"], "version": doc["version"], "language": consent_service.site_language(site),
                  "signed_on": data.get("consent_date"), "signer": "parent", "options": {}}]
        nested = False  # a consent_date alone: its problem is named consent_date
    elif not isinstance(given, list):
        errors["consents"] = N_("must be a list of consents")
        refuse(N_("The participant was not enrolled"), errors)
    else:
        nested = True
    out = []
    for i, body in enumerate(given):
        sub: dict = {}
        values = consent_service.check_consent(content, body, site, sc.screened_on, sub,
                                               f"consents[{i}]." if nested else "")
        if not nested and "signed_on" in sub:
            return [], data  # the one consent of a consent_date: its date is consent_date, refused below
        errors.update(sub)
        if values is not None:
            out.append(values)
    if not errors:
        missing = [d for d in required if not any(v["document"] == d["key"] for v in out)]
        if missing:
            errors["consent"] = Msg(N_("is missing for %(documents)s"),
                                    documents=Joined([consent_service.document_label(d) for d in missing], ", "))
    refuse(N_("The participant was not enrolled"), errors)
    parental = next((v for v in out if v["signer"] != "child"), None)
    if parental is not None and data.get("consents") is not None:
        data = {**data, "consent_date": parental["signed_on"].isoformat()}
    return out, data


