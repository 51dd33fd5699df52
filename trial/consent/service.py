"""Consents (issue 28): the documents of the protocol's ``[consent]`` section a family signed, by
version, language and options; what is due (a re-consent after an amendment gave a ``reconsent``
document a new version or added a required document, a child's assent once the child reaches its
age); and the rule that new data for a child whose re-consent is overdue are refused (adverse
events, status events and deviations excepted: see :func:`ensure_consented`)."""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.auth.models import User
from trial.catalogue import LANGUAGES, N_, Label, Msg
from trial.consent import withdrawal
from trial.consent.models import Consent
from trial.errors import Conflict
from trial.participants.models import FINAL_EVENTS, Assessment, Participant, Screening, StatusEvent
from trial.participants.service import get_participant
from trial.protocol.models import ProtocolVersion
from trial.protocol.service import current as current_protocol
from trial.protocol.service import effective_from
from trial.scope import is_cli, require_role, require_site_role, visible_site_ids
from trial.sites.models import Site
from trial.timeline import today
from trial.trialstate.service import ensure_writable
from trial.validation import clinical_date, refuse

SIGNERS = ("parent", "guardian", "child")
READERS = ("coordinator", "monitor", "manager")
DEFAULT_DOCUMENTS = [{"key": "parental_consent", "label": "Parental consent", "version": "1", "signer": "parent",
                      "required": True, "reconsent": False, "options": []}]


class ReconsentDue(Conflict):
    code = "reconsent_due"


def consent_section(content: dict[str, Any]) -> dict[str, Any]:
    """The protocol's consent section (a version stored before issue 28 has none: the default)."""
    return content.get("consent") or {"reconsent_within_days": 30, "documents": DEFAULT_DOCUMENTS}


def documents(content: dict[str, Any]) -> dict[str, dict]:
    return {d["key"]: d for d in consent_section(content)["documents"]}


def document_label(doc: dict) -> Label:
    return Label("consent_document", doc["key"], doc.get("label") or doc["key"])


def site_language(site: Site) -> str:
    """The site's default language: its first, else English."""
    return (site.languages or ["en"])[0]


def check_consent(content: dict, body: Any, site: Site, screened_on: dt.date | None, errors: dict, prefix: str = "",
                  ) -> dict | None:
    """One consent's fields checked (``errors`` keyed ``prefix + field``); the clean values or None."""
    if not isinstance(body, dict):
        errors[prefix.rstrip(".") or "body"] = N_("must be an object")
        return None
    n = len(errors)
    docs = documents(content)
    doc = docs.get(body.get("document"))
    if doc is None:
        errors[prefix + "document"] = Msg(N_("must be one of %(allowed)s"), allowed=", ".join(docs))
    elif str(body.get("version")) != doc["version"]:
        errors[prefix + "version"] = Msg(N_("must be the protocol's current version %(version)s"),
                                         version=doc["version"])
    language = body.get("language")
    if language not in LANGUAGES:
        errors[prefix + "language"] = Msg(N_("must be one of %(allowed)s"), allowed=", ".join(LANGUAGES))
    early = content["eligibility"].get("consent_before_screening_days", 0)
    not_before = None
    if screened_on is not None:
        not_before = (screened_on - dt.timedelta(days=early),
                      N_("the screening date") if not early
                      else N_("the earliest consent date the protocol allows before the screening"))
    signed_on = clinical_date(body.get("signed_on"), prefix + "signed_on", errors, today(site.timezone),
                              not_before=not_before)
    signer = body.get("signer")
    if signer not in SIGNERS:
        errors[prefix + "signer"] = Msg(N_("must be one of %(allowed)s"), allowed=", ".join(SIGNERS))
    elif doc is not None and (signer == "child") != (doc["signer"] == "child"):
        errors[prefix + "signer"] = (N_("must be child: this document is the child's assent") if doc["signer"] == "child"
                                     else N_("must be parent or guardian: a child signs only an assent"))
    options = body.get("options") or {}
    if not isinstance(options, dict) or not all(isinstance(v, bool) for v in options.values()):
        errors[prefix + "options"] = N_("must be an object of option: true/false")
    elif doc is not None:
        keys = [o["key"] for o in doc.get("options", [])]
        for k in sorted(set(options) - set(keys)):
            errors[f"{prefix}options.{k}"] = N_("is not an option of this document")
    if len(errors) > n:
        return None
    return {"document": doc["key"], "version": doc["version"], "language": language, "signed_on": signed_on,
            "signer": signer, "options": dict(options)}


SIGNER_WORDS = {"parent": N_("a parent"), "guardian": N_("a guardian"), "child": N_("the child")}


def add_consent(db: Session, actor, p: Participant, values: dict, source: str, study_id: str) -> Consent:
    """Store one checked consent and its audit record. The same document, version and signer
    recorded already: 409; except that a consent recorded without its options (at enrollment from
    the consent date alone, or migrated from it) takes the options now given (an audited update of
    ``options``; the rest must agree)."""
    old = db.execute(select(Consent).where(Consent.participant_id == p.id, Consent.document == values["document"],
                                           Consent.version == values["version"],
                                           Consent.signer == values["signer"])).scalar_one_or_none()
    if old is not None:
        if not old.options and values.get("options") and source == "entered":  # None: migrated; {}: a date alone
            audit.record(db, actor, "update", "consent", f"{study_id}/{old.document}/{old.version}",
                         {"options": (old.options, values["options"])}, reason="options recorded")
            old.options = values["options"]
            return old
        doc = documents(current_protocol(db).content).get(values["document"], {"key": values["document"]})
        raise Conflict(Msg(N_("%(study_id)s: %(document)s, version %(version)s, signed by %(signer)s, is already "
                              "recorded."), study_id=study_id, document=document_label(doc),
                           version=values["version"], signer=Msg(SIGNER_WORDS.get(values["signer"], N_("a parent")))))
    c = Consent(participant_id=p.id, source=source, obtained_by_id=getattr(actor, "id", None), **values)
    db.add(c)
    db.flush()
    audit.created(db, actor, "consent", f"{study_id}/{values['document']}/{values['version']}",
                  {**values, "source": source})
    return c


def record_consent(db: Session, actor, study_id: str, body: Any) -> Consent:
    """A consent (or assent) the site's coordinator obtained: 400 naming each bad field, 409 when
    the same document, version and signer is already recorded."""
    p = get_participant(db, actor, study_id, for_update=True)
    require_site_role(db, actor, p.site_id, "coordinator")
    ensure_writable(db)
    site = db.get(Site, p.site_id)
    screened_on = db.execute(select(Screening.screened_on).where(Screening.id == p.screening_id)).scalar_one_or_none()
    errors: dict = {}
    values = check_consent(current_protocol(db).content, body, site, screened_on, errors)
    refuse(N_("The consent was not recorded"), errors)
    return add_consent(db, actor, p, values, "entered", p.study_id)


def as_dict(c: Consent, study_id: str) -> dict:
    return {"id": c.id, "study_id": study_id, "document": c.document, "version": c.version, "language": c.language,
            "signed_on": c.signed_on.isoformat(), "signer": c.signer, "options": c.options, "source": c.source,
            "obtained_by_id": c.obtained_by_id}


def _require_reader(db: Session, actor, site_id: int) -> None:
    require_site_role(db, actor, site_id, *READERS)


def consents_of(db: Session, actor, study_id: str) -> list[Consent]:
    p = get_participant(db, actor, study_id)
    _require_reader(db, actor, p.site_id)
    return list(db.execute(select(Consent).where(Consent.participant_id == p.id)
                           .order_by(Consent.signed_on, Consent.id)).scalars())


# --- what is due -----------------------------------------------------------------------------------

def _version_since(db: Session, key: str, version: str) -> dt.date | None:
    """The effective date of the first protocol version whose document ``key`` has ``version``
    (after an older version of it), i.e. the amendment that asked for the re-consent."""
    since = None
    previous = None
    for pv in db.execute(select(ProtocolVersion).order_by(ProtocolVersion.version)).scalars():
        doc = documents(pv.content).get(key)
        v = doc["version"] if doc else None
        if v == version and previous != version:
            since = effective_from(pv)
        previous = v
    return since


def _added_since(db: Session, key: str) -> dt.date | None:
    """The effective date of the amendment that added document ``key`` to the protocol (the first
    version that has it, after a version without it); None when the first protocol already had it."""
    lacking = False
    for pv in db.execute(select(ProtocolVersion).order_by(ProtocolVersion.version)).scalars():
        if key in documents(pv.content):
            return effective_from(pv) if lacking else None
        lacking = True
    return None


def _add_months(day: dt.date, months: int) -> dt.date:
    y, m = divmod(day.month - 1 + months, 12)
    year, month = day.year + y, m + 1
    for d in (day.day, 30, 29, 28):
        try:
            return dt.date(year, month, d)
        except ValueError:
            continue
    raise AssertionError


def _participation_ended(db: Session, content: dict, ids: list[int]) -> set[int]:
    """The children whose participation ended: a final status event (died, withdrawn), or the form
    of the protocol's last visit recorded (nothing more is asked of the family). (A withdrawal of
    consent to the follow-up ends it from its day: the caller compares.)"""
    final = set(db.execute(select(StatusEvent.participant_id).where(StatusEvent.participant_id.in_(ids),
                                                                    StatusEvent.type.in_(FINAL_EVENTS))).scalars())
    if content["visits"]:
        last = max(content["visits"], key=lambda v: v.get("day") or 0)["key"]
        final |= set(db.execute(select(Assessment.participant_id).where(Assessment.participant_id.in_(ids),
                                                                        Assessment.visit == last)).scalars())
    return final


def due_for(db: Session, participants: list[Participant]) -> list[dict]:
    """Each re-consent and assent due for these participants, children still in the trial (none
    once the participation ended: :func:`_participation_ended`, or the follow-up withdrawn; no
    access check: callers do it).

    - An assent (``signer = "child"``) is due from the day the child reaches ``min_age_months``
      until one is recorded.
    - A re-consent is due, from the amendment's effective date, for a parents' document with
      ``reconsent = true`` whose current version the family has not signed:
      * a new version of a document the family signed (an older version of it): always;
      * a document an amendment added, of which the family signed no version (they consented under
        the older set of documents): only when it is ``required`` (a required document is one
        every child in the trial must have; ``reconsent = true`` says the children already in the
        trial must sign it too, not only those enrolled from now on). An optional document added by
        an amendment (or one with ``reconsent = false``) is never due: it is offered, not owed.
      A document the first protocol version already had but a family never signed is not a
      re-consent: enrollment asks for every required one."""
    content = current_protocol(db).content
    docs = consent_section(content)["documents"]
    ids = [p.id for p in participants]
    if not ids:
        return []
    final = _participation_ended(db, content, ids)
    ended = withdrawal.follow_up_ended(db, ids)
    signed: dict[int, dict[str, set[str]]] = {}
    for c in db.execute(select(Consent).where(Consent.participant_id.in_(ids))).scalars():
        signed.setdefault(c.participant_id, {}).setdefault(c.document, set()).add(c.version)
    sites = {s.id: s for s in db.execute(select(Site)).scalars()}
    out = []
    since_cache: dict[Any, dt.date | None] = {}
    for p in participants:
        if p.id in final or (p.id in ended and ended[p.id] <= today(sites[p.site_id].timezone)):
            continue
        mine = signed.get(p.id, {})
        for d in docs:
            got = mine.get(d["key"], set())
            if d["signer"] == "child":
                birthday = _add_months(p.date_of_birth, d["min_age_months"])
                if not got and birthday <= today(sites[p.site_id].timezone):
                    out.append({"study_id": p.study_id, "document": d["key"], "version": d["version"],
                                "due_since": birthday})
            elif d.get("reconsent") and got and d["version"] not in got:
                if d["key"] not in since_cache:
                    since_cache[d["key"]] = _version_since(db, d["key"], d["version"])
                since = since_cache[d["key"]]
                if since is not None:
                    out.append({"study_id": p.study_id, "document": d["key"], "version": d["version"],
                                "due_since": since})
            elif d.get("reconsent") and d.get("required") and not got:
                if ("added", d["key"]) not in since_cache:
                    since_cache[("added", d["key"])] = _added_since(db, d["key"])
                since = since_cache[("added", d["key"])]
                if since is not None:
                    out.append({"study_id": p.study_id, "document": d["key"], "version": d["version"],
                                "due_since": since})
    return sorted(out, key=lambda r: (r["due_since"], r["study_id"], r["document"]))


def consents_due(db: Session, actor, site: str | None = None) -> list[dict]:
    """``[{study_id, document, version, due_since}]`` at the sites ``actor`` reads consents of."""
    if not is_cli(actor):
        require_role(db, actor, *READERS)
    q = select(Participant).order_by(Participant.study_id)
    sites = visible_site_ids(db, actor, *READERS)
    if sites is not None:
        q = q.where(Participant.site_id.in_(sites))
    if site:
        from_code = db.execute(select(Site.id).where(Site.code == site.upper())).scalar_one_or_none()
        q = q.where(Participant.site_id == from_code)
    return due_for(db, list(db.execute(q).scalars()))


def reconsent_state(db: Session, p: Participant) -> tuple[list[Msg], dict | None]:
    """The warnings for re-consents due but not yet overdue, and the first overdue one (or None)."""
    content = current_protocol(db).content
    within = consent_section(content)["reconsent_within_days"]
    day = today(db.get(Site, p.site_id).timezone)
    warnings, overdue = [], None
    docs = documents(content)
    for r in due_for(db, [p]):
        d = docs[r["document"]]
        if d["signer"] == "child":
            continue
        if (day - r["due_since"]).days > within:
            overdue = overdue or r
        else:
            warnings.append(Msg(N_("%(study_id)s: the re-consent to %(document)s version %(version)s is due since "
                                   "%(day)s; from %(deadline)s new data will be refused until it is recorded."),
                                study_id=p.study_id, document=document_label(d), version=r["version"],
                                day=r["due_since"], deadline=r["due_since"] + dt.timedelta(days=within + 1)))
    return warnings, overdue


def ensure_consented(db: Session, p: Participant) -> list[Msg]:
    """New data for ``p``: 409 ``reconsent_due`` when a re-consent is overdue (due for longer than
    the protocol's ``reconsent_within_days``); else the warnings of re-consents due (for the caller
    to pass on). An assent due warns on the pages but refuses nothing here.

    What is refused while a re-consent is overdue is new data collected *from* the child and its
    family under the consent it lacks, i.e. the callers of this function:

    - a new assessment (``trial.outcomes.service.record_assessment``),
    - a new therapy session and a new parent-counselling session (``trial.course.service``),
    - a new parents' survey sent (``trial.surveys.service``).

    Always accepted, on purpose, whatever is overdue (they never call this):

    - adverse events and their follow-ups and reports: safety data are collected whatever the
      consent (ICH E6(R3); a re-consent must never delay an SAE report);
    - status events (withdrawn, lost to follow-up, discontinued intervention, died) and
      withdrawals of consent: they record what happened to the child, often the very reason the
      re-consent will not come; refusing them would hide it;
    - protocol deviations and blinding breaks: a missed re-consent is itself a deviation to record;
    - the re-consent itself and any other consent or assent;
    - corrections of data already entered, answers to data queries, source verification: they add
      no new observation of the child (a correction keeps its audit reason).

    Not refused either, though not by a decision of the same weight: the child's therapy goals and
    a randomization (a child is randomized days after its consent, long before an amendment can make
    a re-consent overdue)."""
    warnings, overdue = reconsent_state(db, p)
    if overdue is not None:
        d = documents(current_protocol(db).content)[overdue["document"]]
        raise ReconsentDue(Msg(N_("%(study_id)s: the re-consent to %(document)s version %(version)s is overdue (due "
                                  "since %(day)s); no new data is accepted until it is recorded."),
                               study_id=p.study_id, document=document_label(d), version=overdue["version"],
                               day=overdue["due_since"]))
    return warnings


def reconsent_warning(db: Session, participant_id: int) -> str | None:
    """The re-consents due (not yet overdue) for a child, as one text for an answer's ``warning``."""
    warnings, _ = reconsent_state(db, db.get(Participant, participant_id))
    return " ".join(warnings) or None


def consent_views(db: Session, rows: list[Consent]) -> list[dict]:
    """Consents for a page: each with the name of whoever obtained it."""
    ids = {c.obtained_by_id for c in rows if c.obtained_by_id}
    names = dict(db.execute(select(User.id, User.name).where(User.id.in_(ids))).all()) if ids else {}
    return [{**as_dict(c, ""), "signed_on": c.signed_on, "obtained_by": names.get(c.obtained_by_id),
             "language_name": LANGUAGES.get(c.language, c.language)} for c in rows]
