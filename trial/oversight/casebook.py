"""The casebook of one child as a PDF, in the reader's language: the identifiers the reader may see,
consents, every form (the protocol's instrument, visit and field labels, each value with its unit),
forms recorded as not done with their reasons, status events, deviations, adverse events and
sessions (for readers who may learn the arm), every change from the audit trail (old → new, who,
when in the site's time zone, why), data queries with their threads, the investigator's sign-offs
with their meaning and status, and randomization errors. Every page carries the study id, the print
time and "page X of Y"; the last page the digest of the content (``trial.oversight.document``).

The blinded casebook, for a reader who may not learn the child's arm (``trial.scope.can_see_arm``:
the site's assessor, anyone the trial blinds) shows what the assessor's participant page shows and
nothing more: no arm, no session, no adverse event, no status event (the page shows none to a
blinded reader, nor their free-text reasons), no deviation, no sign-off (when a casebook was signed
and invalidated follows the sessions and adverse events it covers); the forms the unblinded staff
enter (the coordinator's, e.g. the parents' questionnaire) only as entered, without their values,
and a form not done with its reason but its text only for the assessor's own (blinded) forms; of
the audit trail and the queries only what the app's own filters give that reader
(``trial.oversight.auditexport``, ``trial.queries.service``), without the records of the
unblinded forms. It is then the same document whatever the child's arm.

Before it is drawn the sign-offs' digests are checked read-only: a valid signature whose data no
longer match is printed "out of date" (nothing is written on a reading).

Who gets it: a site role that may read the child (``check_visible``); everyone else the 404 of an
unknown child. No Flask here: the caller says which language.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from trial.audit.models import AuditRecord
from trial.auth.models import User
from trial.catalogue import LANGUAGES, N_, Msg
from trial.consent.models import Consent
from trial.course.models import TherapySession
from trial.dataquality.models import DataQuery
from trial.dataquality.service import SYSTEM as SYSTEM_CHECK
from trial.errors import Forbidden, NotFound
from trial.esign.models import Signature
from trial.outcomes.models import NotDone
from trial.oversight import auditexport, signoff
from trial.oversight.auditexport import Reader, Words
from trial.oversight.document import Document, render
from trial.oversight.models import CasebookSignoff
from trial.participants.models import Assessment, Participant
from trial.participants.service import ARM_REVEALING_EVENTS, allocation_of, check_visible, events_of, participant_views
from trial.queries import service as queries
from trial.randomize.models import RandomizationError
from trial.safety.models import AdverseEvent
from trial.sites.models import Site
from trial.status.models import Deviation

NOT_FOUND = N_("No participant with that study ID.")
# the site roles that read a child's casebook (each only where check_visible lets them see the child)
READERS = ("coordinator", "therapist", "assessor", "monitor", "manager", "investigator")


@dataclass
class Casebook:
    study_id: str
    blinded: bool
    document: Document

    @property
    def digest(self) -> str:
        return self.document.digest


def _refused() -> NotFound:
    return NotFound(NOT_FOUND)


def participant_for(db: Session, actor, study_id: str) -> Participant:
    """The child, for a reader who may read its casebook; the same 404 for anyone else."""
    p = db.execute(select(Participant).where(Participant.study_id == (study_id or "").upper())).scalar_one_or_none()
    if p is None:
        raise _refused()
    try:
        check_visible(db, actor, p)
    except (Forbidden, NotFound):
        raise _refused() from None
    if not auditexport.is_cli(actor) and not any(r.role in READERS and r.site_id in (None, p.site_id)
                                                 for r in actor.roles):
        raise _refused()
    return p


def casebook(db: Session, actor, study_id: str, language: str, now: dt.datetime | None = None,
             prefetched=None) -> Casebook:
    """The casebook's content for ``actor`` in ``language`` (the 404 of an unknown child to a reader
    who may not have it). ``prefetched``: (site, words, audit rows) when a site archive has them."""
    p = participant_for(db, actor, study_id)
    if prefetched is not None:
        site, w, audit_rows, names = prefetched
    else:
        site = db.get(Site, p.site_id)
        w = Words(db, language, site.timezone)
        audit_rows, names = None, _names(db)
    reader = auditexport.reader_of(db, actor, p.site_id)
    if audit_rows is None:
        scope = auditexport.scopes(db, actor, [p], reader)
        audit_rows = auditexport.rows(db, auditexport.records(db, actor, scope, reader.sees_arm,
                                                                   auditexport.full_trail(db, actor, p.site_id)), scope, w)
    t = w.t
    title = t(N_("Casebook")) if reader.sees_arm else t(N_("Casebook (blinded)"))
    made = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    doc = Document(title, p.study_id, w.moment(made), language, created=made, about=w.content["trial"].get("name", ""))
    doc.h1(f"{title}: {p.study_id}")
    doc.small(w.content["trial"].get("name", ""))
    if not reader.sees_arm:
        doc.small(t(N_("Blinded casebook: whatever could tell the child's allocation is left out.")))
    _sections(doc, db, actor, p, site, w, reader, names)
    doc.h2(t(N_("Audit trail")))
    doc.small(t(N_("Every change to this child's data: when (site time, %(zone)s), who, what (old → new) and why."))
              % {"zone": w.timezone})
    auditexport.add_changes(doc, audit_rows, w)
    return Casebook(p.study_id, not reader.sees_arm, doc)


def _sections(doc: Document, db: Session, actor, p: Participant, site: Site, w: Words, reader: Reader, names) -> None:
    """The casebook's sections, each as the reader may have it."""
    _identifiers(doc, db, actor, p, site, w, reader)
    if reader.reads_consents:
        _consents(doc, db, p, w, names)
    here = {"assessor"} if auditexport.is_cli(actor) else {r.role for r in actor.roles if r.site_id in (None, p.site_id)}
    _forms(doc, db, p, w, names, reader)
    _not_done(doc, db, p, w, names, reader, "assessor" in here)
    if reader.sees_arm:  # (the participant page shows no status event to a blinded reader)
        _events(doc, db, actor, p, w, reader)
        _deviations(doc, db, p, w, names)
    if reader.reads_safety:
        _adverse_events(doc, db, p, w)
    if reader.sees_arm:
        _sessions(doc, db, p, w)
    _queries(doc, db, actor, p, w, names)
    if reader.sees_arm:
        _signoffs(doc, db, p, w)
    _randomization_errors(doc, db, p, w, names, reader)


def casebook_pdf(db: Session, actor, study_id: str, language: str | None, now: dt.datetime | None = None) -> bytes:
    """The casebook PDF for ``actor`` (see :func:`casebook`)."""
    return render(casebook(db, actor, study_id, language or "en", now).document)[0]


# --- the sections ------------------------------------------------------------------------------

def _names(db: Session) -> dict[int, str]:
    return dict(db.execute(select(User.id, User.name)).all())


def _creators(db: Session, entity: str, ids: list[int], names) -> dict[str, str]:
    """Who created each record, from its audit trail (a record without its user: the loader, a script)."""
    if not ids:
        return {}
    out: dict[str, str] = {}
    for eid, actor_id, actor in db.execute(select(AuditRecord.entity_id, AuditRecord.actor_id, AuditRecord.actor)
                                           .where(AuditRecord.entity == entity, AuditRecord.action == "create",
                                                  AuditRecord.entity_id.in_([str(i) for i in ids]))
                                           .order_by(AuditRecord.seq)).all():
        out.setdefault(eid, names.get(actor_id) or actor or "")
    return out


def _day(d) -> str:
    return d.isoformat() if d else ""


def _identifiers(doc: Document, db: Session, actor, p: Participant, site: Site, w: Words, reader: Reader) -> None:
    t = w.t
    view = participant_views(db, actor, [p])[0] if not auditexport.is_cli(actor) else None
    doc.h2(t(N_("Participant")))
    doc.kv(t(N_("Study ID")), p.study_id)
    doc.kv(t(N_("Site")), f"{site.code} – {site.name}")
    doc.kv(t(N_("Sex")), w.term("sex", p.sex))
    doc.kv(t(N_("Date of birth")), _day(p.date_of_birth))
    doc.kv(t(N_("Date of consent")), _day(p.consent_date))
    doc.kv(t(N_("Enrolled")), w.moment(p.enrolled_at))
    for f in w.content.get("randomization", {}).get("factors", []):
        if f["key"] != "site" and f["key"] in (p.strata or {}):
            doc.kv(w.p("factor", f["key"]), str(p.strata[f["key"]]).replace("_", " "))
    alloc = allocation_of(db, p.id)
    if alloc is not None:
        doc.kv(t(N_("Randomized")), w.moment(alloc.randomized_at) if reader.sees_arm
               else (view or {}).get("randomized_on") or "")
        if reader.sees_arm:
            doc.kv(t(N_("Allocated arm")), w.p("arm", alloc.arm))
    else:
        doc.kv(t(N_("Randomized")), t(N_("Not yet randomized")))


def _consents(doc: Document, db: Session, p: Participant, w: Words, names) -> None:
    t = w.t
    doc.h2(t(N_("Consents")))
    rows = db.execute(select(Consent).where(Consent.participant_id == p.id).order_by(Consent.signed_on, Consent.id)).scalars().all()
    if not rows:
        doc.p(t(N_("None recorded.")))
    for c in rows:
        doc.h3(f"{w.p('consent_document', c.document)} " + t(N_("(version %(version)s)")) % {"version": c.version})
        doc.kv(t(N_("Signed on")), _day(c.signed_on))
        doc.kv(t(N_("Signed by")), w.t(auditexport.SIGNERS.get(c.signer, "")) or str(c.signer).replace("_", " "))
        doc.kv(t(N_("Language")), LANGUAGES.get(c.language, c.language))
        for key, value in sorted((c.options or {}).items()) if isinstance(c.options, dict) else []:
            doc.kv(w.p("consent_option", key), w.yes_no(value) if isinstance(value, bool) else str(value))
        if c.obtained_by_id:
            doc.kv(t(N_("Obtained by")), names.get(c.obtained_by_id, ""))


def _forms(doc: Document, db: Session, p: Participant, w: Words, names, reader: Reader) -> None:
    t = w.t
    doc.h2(t(N_("Forms")))
    instruments = {i["key"]: i for i in w.content["instruments"]}
    order = {v["key"]: n for n, v in enumerate(w.content["visits"])}
    rows = db.execute(select(Assessment).where(Assessment.participant_id == p.id)).scalars().all()
    rows = sorted(rows, key=lambda a: (order.get(a.visit, 99), a.performed_on, a.instrument))
    if not rows:
        doc.p(t(N_("None recorded.")))
    creators = _creators(db, "assessment", [a.id for a in rows if not names.get(a.entered_by_id)], names)
    for a in rows:
        ins = instruments.get(a.instrument, {"fields": []})
        doc.h3(f"{w.p('visit', a.visit)} · {w.p('instrument', a.instrument)}")
        doc.kv(t(N_("Date performed")), _day(a.performed_on) + (f" ({t(N_('outside the window'))})" if a.out_of_window else ""))
        who = names.get(a.entered_by_id) or creators.get(str(a.id)) or ""
        doc.kv(t(N_("Entered by")), " · ".join(x for x in (who, w.moment(a.entered_at)) if x))
        if not reader.sees_arm and not ins.get("blinded", True):  # an unblinded staff's form: entered, no values
            doc.small(t(N_("Values withheld in the blinded casebook.")))
            continue
        known = set()
        for f in ins["fields"]:
            known.add(f["key"])
            value = (a.values or {}).get(f["key"])
            unit = w.p("unit", f"{a.instrument}.{f['key']}") if f.get("units") else ""  # in the reader's language
            shown = "" if value is None else (w.yes_no(value) if isinstance(value, bool) else str(value))
            doc.kv(w.p("field", f"{a.instrument}.{f['key']}"), f"{shown} {unit}".strip() if shown else "–")
        for key, value in (a.values or {}).items():
            if key not in known:
                doc.kv(w.p("field", f"{a.instrument}.{key}"), str(value))


def _not_done(doc: Document, db: Session, p: Participant, w: Words, names, reader: Reader, assessor: bool) -> None:
    t = w.t
    blinded = {i["key"]: i.get("blinded", True) for i in w.content["instruments"]}
    rows = db.execute(select(NotDone).where(NotDone.participant_id == p.id).order_by(NotDone.id)).scalars().all()
    doc.h2(t(N_("Forms not done")))
    if not rows:
        doc.p(t(N_("None recorded.")))
    for nd in rows:
        # the text as the participant page shows it: to those who may learn the arm, and to the
        # assessor for the assessor's own (blinded) forms
        shown = nd.text if nd.text and (reader.sees_arm or (blinded.get(nd.instrument, True) and assessor)) else None
        reason = w.reason(nd.reason) + (f": {shown}" if shown else "")
        doc.kv(f"{w.p('visit', nd.visit)} · {w.p('instrument', nd.instrument)}", reason)
        doc.small(f"{names.get(nd.recorded_by_id, '')} {w.moment(nd.recorded_at)}".strip())


def _events(doc: Document, db: Session, actor, p: Participant, w: Words, reader: Reader) -> None:
    t = w.t
    events = [e for e in events_of(db, [p.id]).get(p.id, []) if reader.sees_arm or e.type not in ARM_REVEALING_EVENTS]
    doc.h2(t(N_("Status events")))
    if not events:
        doc.p(t(N_("None recorded.")))
    for e in events:
        doc.kv(f"{_day(e.on)} · {w.term('event', e.type)}", e.reason or "")


def _deviations(doc: Document, db: Session, p: Participant, w: Words, names) -> None:
    t = w.t
    rows = db.execute(select(Deviation).where(Deviation.participant_id == p.id).order_by(Deviation.on, Deviation.id)).scalars().all()
    doc.h2(t(N_("Protocol deviations")))
    if not rows:
        doc.p(t(N_("None recorded.")))
    for d in rows:
        doc.kv(f"{_day(d.on)} · {w.term('deviation', d.category)}", d.description)


def _adverse_events(doc: Document, db: Session, p: Participant, w: Words) -> None:
    t = w.t
    rows = db.execute(select(AdverseEvent).where(AdverseEvent.participant_id == p.id)
                      .order_by(AdverseEvent.onset, AdverseEvent.id)).scalars().all()
    doc.h2(t(N_("Adverse events")))
    if not rows:
        doc.p(t(N_("None recorded.")))
    for ae in rows:
        doc.h3(f"{ae.term} · {_day(ae.onset)}")
        doc.kv(t(N_("Severity")), w.term("severity", ae.severity))
        doc.kv(t(N_("Serious")), w.yes_no(ae.serious) + (": " + ", ".join(w.term("seriousness", s) for s in ae.seriousness or [])
                                                          if ae.serious else ""))
        doc.kv(t(N_("Relatedness")), w.term("relatedness", ae.relatedness))
        if ae.expectedness:
            doc.kv(t(N_("Expectedness")), w.term("expectedness", ae.expectedness))
        doc.kv(t(N_("Outcome")), w.term("ae_outcome", ae.outcome))
        if ae.resolved_on:
            doc.kv(t(N_("Resolved on")), _day(ae.resolved_on))
        if ae.description:
            doc.kv(t(N_("Description")), ae.description)


def _sessions(doc: Document, db: Session, p: Participant, w: Words) -> None:
    t = w.t
    rows = db.execute(select(TherapySession).where(TherapySession.participant_id == p.id)
                      .order_by(TherapySession.held_on, TherapySession.id)).scalars().all()
    doc.h2(t(N_("Sessions")))
    if not rows:
        doc.p(t(N_("No sessions logged.")))
    for s in rows:
        parts = [w.term("attendance", s.attendance)]
        if s.minutes:
            parts.append(f"{s.minutes} {t(N_('minutes'))}")
        if s.techniques:
            parts.append(", ".join(w.p("technique", k) for k in s.techniques))
        if s.present:
            parts.append(w.term("present", s.present))
        if s.goals:
            parts.append(", ".join(w.p("goal", k) for k in s.goals))
        if s.engagement:
            parts.append(f"{t(N_('Engagement'))} {s.engagement}")
        if s.note:
            parts.append(s.note)
        doc.kv(_day(s.held_on), " · ".join(parts))


def _msg(w: Words, words, text: str | None) -> str:
    m = Msg.from_words(words, text)
    if isinstance(m, Msg):
        return m.translated(w.gettext, _day, lambda kind, key: w.plabels.get(kind, {}).get(key))
    return m or ""


def _person(w: Words, names, user_id: int | None, by: str) -> str:
    """Who wrote in a query's thread, as the audit trail names them: the name with the e-mail in
    brackets (a system check in the reader's words; a script as it was recorded)."""
    if user_id in names:
        return f"{names[user_id]} ({by})"
    return w.t(N_("system check")) if by == SYSTEM_CHECK else by


def _queries(doc: Document, db: Session, actor, p: Participant, w: Words, names) -> None:
    t = w.t
    q = queries.listing_query(db, actor).where(DataQuery.participant_id == p.id).order_by(DataQuery.raised_at, DataQuery.number)
    rows = db.execute(q).scalars().all()
    doc.h2(t(N_("Data queries")))
    if not rows:
        doc.p(t(N_("None raised.")))
    code = db.get(Site, p.site_id).code
    for r in rows:
        about = _msg(w, None, queries.about(w.content, r))
        doc.h3(f"{queries.query_ref(code, r.number)} · {about} · {w.term('query_status', r.status)}")
        doc.kv(t(N_("Raised")), f"{w.moment(r.raised_at)} · {_person(w, names, r.raised_by_id, r.raised_by)}")
        doc.kv(t(N_("Question")), _msg(w, r.words, r.text))
        for m in (m for m in r.messages if m.action != "raise"):  # (the question, shown once above)
            # (the step in the label column; when and who with the text: a moment never wraps in the label)
            doc.kv(w.term("query_step", m.action), f"{w.moment(m.at)} · {_person(w, names, m.by_id, m.by)}: {_msg(w, m.words, m.text)}".rstrip(": "))


def _signoffs(doc: Document, db: Session, p: Participant, w: Words) -> None:
    t = w.t
    rows = db.execute(select(CasebookSignoff, Signature).join(Signature, Signature.id == CasebookSignoff.signature_id)
                      .where(CasebookSignoff.participant_id == p.id).order_by(CasebookSignoff.signed_at)).all()
    milestones = {m["key"]: m for m in (w.content.get("signoff_milestones") or [])}
    doc.h2(t(N_("Investigator's sign-offs")))
    if not rows:
        doc.p(t(N_("None signed.")))
    stale = signoff.out_of_date(db, [p]) if any(so.status == "valid" for so, _ in rows) else set()
    for so, sig in rows:
        m = milestones.get(so.milestone, {})
        label = (m.get("labels") or {}).get(w.language) or m.get("label") or so.milestone
        status = (t(N_("valid, but out of date: its data no longer match what was signed")) if so.id in stale
                  else t(N_("valid"))) if so.status == "valid" else t(N_("invalidated"))
        doc.h3(f"{label} · {status}")
        doc.kv(t(N_("Signed by")), f"{sig.printed_name} ({sig.email})")
        doc.kv(t(N_("Signed at")), w.moment(so.signed_at))
        doc.kv(t(N_("Meaning")), auditexport.HEX64.sub(lambda m: auditexport.grouped(m.group(0)), sig.meaning or ""))
        if so.status != "valid":
            change = signoff.change_text(so, w.gettext, lambda kind, key: w.plabels.get(kind, {}).get(key)) or ""
            doc.kv(t(N_("Invalidated")), f"{w.moment(so.invalidated_at)} {change}".strip())


def _randomization_errors(doc: Document, db: Session, p: Participant, w: Words, names, reader: Reader) -> None:
    t = w.t
    rows = db.execute(select(RandomizationError).where(RandomizationError.participant_id == p.id)
                      .order_by(RandomizationError.id)).scalars().all()
    doc.h2(t(N_("Randomization errors")))
    if not rows:
        doc.p(t(N_("None recorded.")))
    kinds = {"wrong_stratum": N_("Randomized in the wrong stratum"), "ineligible": N_("Randomized though ineligible"),
             "randomized_twice": N_("Randomized twice")}
    for e in rows:
        doc.h3(t(kinds.get(e.kind, "")) or e.kind)
        if e.field:
            doc.kv(w.p("factor", e.field), f"{e.as_randomized or '–'} → {e.correct_value or '–'}")
        if reader.sees_arm:  # free text may name the arm
            doc.kv(t(N_("Text")), e.text)
        doc.small(f"{names.get(e.recorded_by_id, '')} {w.moment(getattr(e, 'recorded_at', None))}".strip())
