"""The audit trail of a participant or of a site, readable: the protocol's and the catalogue's words
instead of keys (a field's label, an entity's name, an action), old → new, who, when in the site's
time zone, and why; as CSV and as PDF.

Which records: those of the child's own entities (the child, its screening, allocation, forms,
forms recorded as not done, queries, verifications, consents, surveys, status events, deviations,
adverse events, sessions, goals, sign-offs, randomization errors). What a reader gets: the
records the app's audit-trail filter lets them read (``trial.audit.service._visible``: records that
reveal an allocation are withheld from anyone the trial still blinds), and for a reader who may not
learn the child's arm (``trial.scope.can_see_arm``) none of the entities that imply an intervention
(the allocation, sessions, goals, counselling, status events, deviations, adverse events: as the
participant page hides them) nor the queries the reader may not see (``trial.queries.service``).
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import zoneinfo
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from trial.audit.models import AuditRecord
from trial.audit.service import visible_query as visible_audit
from trial.auth.models import User
from trial.catalogue import LABELS, LANGUAGES, N_, Msg, translator
from trial.consent.models import Consent, ConsentWithdrawal, Survey
from trial.course.models import ChildGoal, CounsellingSession, TherapySession
from trial.dataquality.models import DataQuery, Verification
from trial.errors import Forbidden, NotFound
from trial.outcomes.models import BlindingBreak, NotDone
from trial.oversight.document import Document, render
from trial.oversight.models import CasebookSignoff
from trial.oversight.signoff import change_text
from trial.participants.models import Assessment, Participant, Screening, StatusEvent
from trial.participants.service import check_visible
from trial.protocol.service import current as current_protocol
from trial.protocol.service import labels as protocol_labels
from trial.queries.service import about as query_about
from trial.queries.service import listing_query
from trial.randomize.models import RandomizationError
from trial.safety.models import AdverseEvent
from trial.scope import can_see_arm, is_cli
from trial.sites.models import Site
from trial.status.models import Deviation

# who reads a child's or a site's audit trail (the audit trail's readers, trial.policy "audit.trail",
# and the site's principal investigator for the investigator file)
AUDIT_READERS = ("manager", "investigator")

# the entities of a child whose very existence implies an intervention: never for a reader who may
# not learn the child's arm
# (and the investigator's sign-offs and their e-signatures: when a casebook was signed and
# invalidated follows the sessions and adverse events it covers)
ARM_ENTITIES = frozenset({"allocation", "allocation_reservation", "therapy_session", "child_goal", "counselling_session",
                          "status_event", "deviation", "adverse_event", "fidelity_rating", "casebook_signoff",
                          "signature"})

ENTITY = {
    "participant": N_("Participant"), "screening": N_("Screening"), "allocation": N_("Allocation"),
    "allocation_reservation": N_("Allocation reservation"), "assessment": N_("Form"), "not_done": N_("Form not done"),
    "query": N_("Data query"), "source_verification": N_("Source data verification"),
    "blinding_break": N_("Blinding break"), "consent": N_("Consent"), "consent_withdrawal": N_("Withdrawal of consent"),
    "survey": N_("Parents' survey"), "status_event": N_("Status event"), "deviation": N_("Protocol deviation"),
    "adverse_event": N_("Adverse event"), "therapy_session": N_("Therapy session"), "child_goal": N_("Individual goal"),
    "counselling_session": N_("Parent counselling session"), "casebook_signoff": N_("Casebook sign-off"),
    "signature": N_("Electronic signature"), "randomization_error": N_("Randomization error"),
    "site": N_("Site"), "archive_job": N_("Site archive"),
}
ACTION = {
    "create": N_("Created"), "update": N_("Changed"), "correct": N_("Corrected"), "respond": N_("Answered"),
    "close": N_("Closed"), "reopen": N_("Reopened"), "randomize": N_("Randomized"), "reserve": N_("Reserved"),
    "use": N_("Used"), "reconcile": N_("Reconciled"), "follow_up": N_("Follow-up"), "acknowledge": N_("Acknowledged"),
    "report": N_("Reported"), "revise": N_("Revised"), "clear_verification": N_("Verification cleared"),
    "invalidate": N_("Invalidated"), "sign": N_("Signed"), "archive": N_("Archived"), "export": N_("Exported"),
    "request_archive": N_("Archive requested"), "accept_unsigned": N_("Accepted unsigned casebooks"),
    "accept_open_queries": N_("Accepted open queries"), "delete": N_("Deleted"), "retract": N_("Retracted"),
    "withdraw": N_("Withdrawn"), "revoke": N_("Revoked"), "send": N_("Sent"), "second_factor": N_("Second factor"),
    "break": N_("Blinding broken"), "verify": N_("Verified"), "lock": N_("Locked"), "lift": N_("Lifted"),
}
FIELD = {
    "participant": N_("Participant"), "site": N_("Site"), "visit": N_("Visit"), "instrument": N_("Form"),
    "performed_on": N_("Date performed"), "values": N_("Values"), "out_of_window": N_("Outside the window"),
    "allocation_guess": N_("Allocation guess"), "guess_confidence": N_("Confidence of the guess"),
    "status": N_("Status"), "response": N_("Answer"), "text": N_("Text"), "reason": N_("Reason"), "on": N_("Date"),
    "type": N_("Event"), "category": N_("Category"), "description": N_("Description"), "arm": N_("Arm"),
    "screening_id": N_("Screening"), "consent_date": N_("Date of consent"), "date_of_birth": N_("Date of birth"),
    "sex": N_("Sex"), "strata": N_("Strata"), "document": N_("Document"), "version": N_("Version"),
    "signed_on": N_("Signed on"), "signer": N_("Signed by"), "options": N_("Options"), "language": N_("Language"),
    "scope": N_("Scope"), "data_use": N_("Use of the data"), "term": N_("Term"), "onset": N_("Onset"),
    "severity": N_("Severity"), "serious": N_("Serious"), "seriousness": N_("Seriousness"),
    "relatedness": N_("Relatedness"), "expectedness": N_("Expectedness"), "outcome": N_("Outcome"),
    "resolved_on": N_("Resolved on"), "held_on": N_("Date"), "attendance": N_("Attendance"), "minutes": N_("Minutes"),
    "techniques": N_("Techniques"), "engagement": N_("Engagement"), "note": N_("Note"), "goals": N_("Goals worked on"),
    "milestone": N_("Milestone"), "meaning": N_("Meaning"), "kind": N_("Kind"), "field": N_("Field"),
    "as_randomized": N_("As randomized"), "correct_value": N_("Correct value"), "verified": N_("Verified"),
    "number": N_("Number"), "recorded_by": N_("Recorded by"), "present": N_("Present"),
    "printed_name": N_("Printed name"), "purpose": N_("Purpose"), "signed_at": N_("Signed at"),
    "signing_day": N_("Signing day"), "origin": N_("Origin"), "allocation": N_("Allocation"),
    "randomized_at": N_("Randomized"), "stratum": N_("Stratum"), "languages": N_("Languages"),
    "code": N_("Code"), "name": N_("Name"), "country": N_("Country"), "is_open": N_("Open for enrolment"),
    "target": N_("Target"), "timezone": N_("Time zone"), "source": N_("Source"), "answers": N_("Answers"),
    "archive": N_("Archive"), "archive_sha256": N_("Digest of the archive (SHA-256)"),
    "participants": N_("Participants"), "email": N_("Email"), "screened_on": N_("Screened on"),
    "declined": N_("Declined"), "enrolled_at": N_("Enrolled"), "outside_course": N_("Outside the course"),
    "goal": N_("Goal"), "set_on": N_("Set on"), "attended": N_("Attended"), "follow_up": N_("Follow-up"),
    "log_number": N_("Log number"), "outcome_reason": N_("Reason"),
}

# The internal bookkeeping fields of the trail, decided per (entity, field): None = left out of the
# readable export (the raw trail, ``trial audit``, keeps them), else shown with this label.
#   entity               field           shown as
BOOKKEEPING: dict[tuple[str, str], str | None] = {
    ("casebook_signoff", "signature"): None,  # the e-signature's row number (its own record follows)
    ("casebook_signoff", "covered_seq"): None,  # the audit head when signed (the digest says what was covered)
    ("casebook_signoff", "covered_digest"): N_("Digest of the signed data (SHA-256)"),
    ("casebook_signoff", "covered_visits"): N_("Visits covered"),
    ("query", "check"): None,  # the automatic check's key ("About" names the form and visit)
    ("query", "on"): N_("About"),  # what the query is about (not the date)
    ("allocation", "seq"): None,  # the allocation list's position (concealed list bookkeeping)
    ("source_verification", "id"): None,  # the verified record's row number ("Record verified" names it)
    ("source_verification", "kind"): N_("Record verified"),
}
SIGNERS = {"parent": N_("a parent"), "guardian": N_("a guardian"), "child": N_("the child (assent)"),
           "participant": N_("the participant")}
ORIGINS = {"check": N_("automatic data check"), "manual": N_("raised by a person")}
SIGNOFF_STATUS = {"valid": N_("Valid"), "invalidated": N_("Invalidated")}
# fields whose values are keys of a catalogue kind
VALUE_KINDS = {"sex": "sex", "severity": "severity", "relatedness": "relatedness", "expectedness": "expectedness",
               "outcome": "ae_outcome", "attendance": "attendance", "category": "deviation", "type": "event",
               "scope": "withdrawal_scope", "data_use": "data_use", "present": "present"}
HEADER = (N_("When"), N_("Who"), N_("Participant"), N_("Record"), N_("Action"), N_("Field"), N_("Old value"),
          N_("New value"), N_("Reason"))

NOT_FOUND = N_("No participant with that study ID.")


@dataclass
class Reader:
    """What one reader may get of one child: the arm-implying entities, consents, safety."""
    sees_arm: bool
    reads_consents: bool
    reads_safety: bool


def reader_of(db: Session, actor, site_id: int) -> Reader:
    if is_cli(actor):
        return Reader(True, True, True)
    here = {r.role for r in actor.roles if r.site_id in (None, site_id)}
    arm = can_see_arm(db, actor, site_id)
    return Reader(arm, bool(here & {"coordinator", "monitor", "manager", "investigator"}),
                  arm and bool(here & {"coordinator", "monitor", "manager", "investigator"}))


def _ids(db: Session, column, pid_column, pids) -> list[tuple[int, str]]:
    return [(pid, str(i)) for i, pid in db.execute(select(column, pid_column).where(pid_column.in_(pids))).all()]


def _parts(reader: Reader) -> list[tuple]:
    """The kinds of record of a child the reader may have: (entity, its id column, its child column)."""
    parts = [("source_verification", Verification.id, Verification.participant_id),
             ("blinding_break", BlindingBreak.id, BlindingBreak.participant_id)]
    if reader.sees_arm:  # (a randomization error's text and a retraction's reason may name the arm)
        parts += [("randomization_error", RandomizationError.id, RandomizationError.participant_id),
                  ("assessment", Assessment.id, Assessment.participant_id),
                  ("not_done", NotDone.id, NotDone.participant_id),
                  ("casebook_signoff", CasebookSignoff.id, CasebookSignoff.participant_id),
                  ("signature", CasebookSignoff.signature_id, CasebookSignoff.participant_id)]
    if reader.reads_consents:
        parts += [("consent", Consent.id, Consent.participant_id), ("survey", Survey.id, Survey.participant_id),
                  ("consent_withdrawal", ConsentWithdrawal.id, ConsentWithdrawal.participant_id)]
    if reader.sees_arm:
        parts += [("status_event", StatusEvent.id, StatusEvent.participant_id),
                  ("deviation", Deviation.id, Deviation.participant_id),
                  ("therapy_session", TherapySession.id, TherapySession.participant_id),
                  ("child_goal", ChildGoal.id, ChildGoal.participant_id),
                  ("counselling_session", CounsellingSession.id, CounsellingSession.participant_id)]
    if reader.reads_safety:
        parts.append(("adverse_event", AdverseEvent.id, AdverseEvent.participant_id))
    return parts


def _blinded_forms(db: Session, pids: list[int], out: dict[tuple[str, str], int]) -> None:
    """A blinded reader's forms: the records of the blinded instruments only (an unblinded form's
    values and reasons for a change, a not-done's text, are the unblinded staff's words)."""
    blinded = [i["key"] for i in current_protocol(db).content["instruments"] if i.get("blinded", True)]
    for entity, model in (("assessment", Assessment), ("not_done", NotDone)):
        for start in range(0, len(pids), 900):
            for i, pid in db.execute(select(model.id, model.participant_id).where(
                    model.participant_id.in_(pids[start:start + 900]), model.instrument.in_(blinded))).all():
                out[(entity, str(i))] = pid


def scopes(db: Session, actor, participants: list[Participant], reader: Reader) -> dict[tuple[str, str], int]:
    """(entity, entity id) → participant id, for every record of these children the reader may have."""
    pids = [p.id for p in participants]
    out: dict[tuple[str, str], int] = {}
    for p in participants:
        out[("participant", p.study_id)] = p.id
        out[("screening", str(p.screening_id))] = p.id
        if reader.sees_arm:
            out[("allocation", p.study_id)] = p.id
            out[("allocation_reservation", p.study_id)] = p.id
    if not reader.sees_arm:
        _blinded_forms(db, pids, out)
    for entity, column, pid_column in _parts(reader):
        for start in range(0, len(pids), 900):
            for pid, i in _ids(db, column, pid_column, pids[start:start + 900]):
                out[(entity, i)] = pid
    # the queries the reader may see (as the query list shows them)
    q = listing_query(db, actor).with_only_columns(DataQuery.id, DataQuery.participant_id)
    for start in range(0, len(pids), 900):
        for i, pid in db.execute(q.where(DataQuery.participant_id.in_(pids[start:start + 900]))).all():
            out[("query", str(i))] = pid
    return out


def full_trail(db: Session, actor, site_id: int) -> bool:
    """The site's principal investigator reads the whole trail of the site's children: unblinded at
    the site (``can_see_arm``), so the records that reveal an allocation too (the archive's full
    casebook); the trail's own filter (``trial.audit.service``) blinds everyone else it blinds."""
    if is_cli(actor):
        return True
    return any(r.role == "investigator" and r.site_id in (None, site_id) for r in actor.roles) \
        and can_see_arm(db, actor, site_id)


def records(db: Session, actor, scope: dict[tuple[str, str], int], sees_arm: bool,
            full: bool = False) -> list[AuditRecord]:
    """The audit records of ``scope`` the reader may read, in the chain's order (``full``: the
    investigator's whole trail of the site, :func:`full_trail`)."""
    by_entity: dict[str, list[str]] = defaultdict(list)
    for entity, i in scope:
        by_entity[entity].append(i)
    clauses, wide = [], []
    for entity, ids in by_entity.items():
        if len(ids) > 900:  # a site's many forms: the entity's records, sorted out below
            wide.append(entity)
        else:
            clauses.append(and_(AuditRecord.entity == entity, AuditRecord.entity_id.in_(ids)))
    if wide:
        clauses.append(AuditRecord.entity.in_(wide))
    if not clauses:
        return []
    q = (select(AuditRecord) if full and sees_arm else visible_audit(db, actor)).where(or_(*clauses))
    if not sees_arm:
        q = q.where(AuditRecord.reveals_allocation.is_(False))
    out = db.execute(q.order_by(AuditRecord.seq)).scalars().all()
    return [r for r in out if (r.entity, r.entity_id) in scope and (sees_arm or r.entity not in ARM_ENTITIES)]


# --- readable rows ----------------------------------------------------------------------------

class Words:
    """The protocol's and the catalogue's words in one language, and the site's clock."""

    def __init__(self, db: Session, language: str, timezone: str):
        self.language = language
        self.gettext = translator(language)
        self.content = current_protocol(db).content
        self.plabels = protocol_labels(self.content, language)
        self.zone = zoneinfo.ZoneInfo(timezone or "UTC")
        self.timezone = timezone or "UTC"
        self.reasons = {r["key"]: r for r in (self.content.get("missing_reasons") or
                                              [{"key": "other", "label": "Other", "needs_text": True}])}

    def t(self, text: str) -> str:
        return self.gettext(text) if text else ""

    def term(self, kind: str, key) -> str:
        if key is None:
            return ""
        return self.t(LABELS.get(kind, {}).get(key, "")) or str(key).replace("_", " ")

    def p(self, kind: str, key) -> str:
        if key is None:
            return ""
        return self.plabels.get(kind, {}).get(key) or str(key).replace("_", " ")

    def reason(self, key: str | None) -> str:
        r = self.reasons.get(key)
        if r is None:
            return str(key or "")
        labels = r.get("labels") or {}
        return labels.get(self.language) or labels.get(self.language.split("_")[0]) or r.get("label") or key

    def moment(self, at: dt.datetime | None) -> str:
        """A moment in the site's time zone, as 2026-05-04 14:03:07 CEST (sortable, every language)."""
        if at is None:
            return ""
        local = at.replace(tzinfo=dt.UTC).astimezone(self.zone)
        return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname()}"

    def yes_no(self, v) -> str:
        return self.t(N_("Yes")) if v else self.t(N_("No"))


def _value(w: Words, field: str | None, value: str | None, instrument: str | None, entity: str,
           screenings: dict | None = None) -> str:
    if value is None:
        return ""
    if len(value) >= 19 and value[4] == "-" and value[10] == "T" and value[13] == ":":  # a moment (UTC): the site's clock
        try:
            return w.moment(dt.datetime.fromisoformat(value.removesuffix("Z")).replace(tzinfo=None))
        except ValueError:
            pass
    if field == "screening_id":  # the screening's own number is internal: its log number and date instead
        log_number, on = (screenings or {}).get(value, (None, None))
        return " ".join(x for x in (log_number, on.isoformat() if on else None) if x)
    if value.startswith("{") and value.endswith("}"):
        shown = _json_value(w, field, value, instrument, entity, screenings)
        if shown is not None:
            return shown
    shown = _coded(w, field, value, entity)
    if shown is not None:
        return shown
    if field in ("visit",):
        return w.p("visit", value)
    if field == "instrument":
        return w.p("instrument", value)
    if field == "arm":
        return w.p("arm", value)
    if field == "reason" and entity == "not_done":
        return w.reason(value)
    if field == "outcome" and entity == "screening":
        return w.term("screening_outcome", value)
    if field == "status" and entity == "query":
        return w.term("query_status", value)
    if field in VALUE_KINDS:
        return w.term(VALUE_KINDS[field], value)
    if value in ("true", "True"):
        return w.yes_no(True)
    if value in ("false", "False"):
        return w.yes_no(False)
    return value


HEX64 = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")


def grouped(digest: str) -> str:
    """A hex digest in groups of eight (it wraps between groups, never mid-group)."""
    return " ".join(digest[i:i + 8] for i in range(0, len(digest), 8))


def _milestone(w: Words, key: str) -> str:
    return w.p("signoff_milestone", key)


def _coded(w: Words, field: str | None, value: str, entity: str) -> str | None:
    """The coded values of the close-out's records in words (None: not one of them)."""
    if field in ("covered_digest", "archive_sha256", "sha256") and len(value) == 64:
        return grouped(value)
    if field == "milestone":
        return _milestone(w, value)
    if field == "meaning" and HEX64.search(value):  # a signature's binding names the signed data's digest
        return HEX64.sub(lambda m: grouped(m.group(0)), value)
    if field == "purpose" and value.startswith("casebook_signoff:"):
        return f"{w.t(ENTITY['casebook_signoff'])}: {_milestone(w, value.split(':', 1)[1])}"
    if field == "status" and entity == "casebook_signoff":
        return w.t(SIGNOFF_STATUS.get(value, "")) or value
    if field == "origin" and entity == "query":
        return w.t(ORIGINS.get(value, "")) or value
    if field == "kind" and entity == "source_verification":
        return w.t(ENTITY.get(value, "")) or value.replace("_", " ")
    if field == "signer":
        return w.t(SIGNERS.get(value, "")) or value.replace("_", " ")
    if field == "language":
        return LANGUAGES.get(value, value)
    if field == "stratum":
        return "; ".join(f"{w.p('factor', k) if k != 'site' else w.t(FIELD['site'])}: {v.replace('_', ' ')}"
                         for k, _, v in (part.partition("=") for part in value.replace(",", ";").split(";") if part))
    if field == "goal" and entity == "child_goal":
        return w.p("goal", value)
    if value.startswith("[") and value.endswith("]") and field in ("covered_visits", "languages", "techniques", "goals"):
        try:
            items = json.loads(value)
        except ValueError:
            return None
        if field == "languages":
            return ", ".join(LANGUAGES.get(str(i), str(i)) for i in items)
        if field in ("techniques", "goals"):
            return ", ".join(w.p(field[:-1], str(i)) for i in items)
        return ", ".join(w.p("visit", str(i)) for i in items)
    return None


def _json_value(w: Words, field: str | None, value: str, instrument: str | None, entity: str,
                screenings: dict | None) -> str | None:
    """A JSON object's value in words: a form's values, strata, a screening's answers, a record's fields."""
    try:
        parsed = json.loads(value)
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    if field == "values" and instrument:
        return "; ".join(f"{w.p('field', f'{instrument}.{k}')}: {v}" for k, v in parsed.items())
    if field == "answers":  # a screening's: the protocol's questions
        return "; ".join(f"{w.p('criterion', k)}: {w.yes_no(v) if isinstance(v, bool) else v}" for k, v in parsed.items())
    if field == "strata":
        return "; ".join(f"{w.p('factor', k)}: {str(v).replace('_', ' ')}" for k, v in parsed.items())
    return "; ".join(f"{_field(w, k, instrument, entity)}: {_value(w, k, _plain(v), instrument, entity, screenings)}"
                     for k, v in parsed.items() if BOOKKEEPING.get((entity, k), "") is not None)


def _plain(v) -> str | None:
    if v is None or isinstance(v, str):
        return v
    return json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else str(v)


def _field(w: Words, field: str | None, instrument: str | None, entity: str | None = None) -> str:
    if not field:
        return ""
    if BOOKKEEPING.get((entity, field)):
        return w.t(BOOKKEEPING[(entity, field)])
    if field.startswith("values.") and instrument:
        return w.p("field", f"{instrument}.{field[len('values.'):]}")
    if field in FIELD:
        return w.t(FIELD[field])
    return field.replace("_", " ").capitalize()


def rows(db: Session, recs: list[AuditRecord], scope: dict[tuple[str, str], int], w: Words) -> list[dict]:
    """Each record as words: when, who, the child, the record, the action, the field, old, new, why."""
    study = dict(db.execute(select(Participant.id, Participant.study_id)
                            .where(Participant.id.in_(set(scope.values())))).all()) if scope else {}
    forms: dict[str, tuple[str, str]] = {}
    ids = [int(r.entity_id) for r in recs if r.entity == "assessment" and r.entity_id.isdigit()]
    for start in range(0, len(ids), 900):
        for i, ins, visit in db.execute(select(Assessment.id, Assessment.instrument, Assessment.visit)
                                        .where(Assessment.id.in_(ids[start:start + 900]))).all():
            forms[str(i)] = (ins, visit)
    ids = [int(r.new) for r in recs if r.field == "screening_id" and (r.new or "").isdigit()]
    screenings = {str(i): (n, on) for i, n, on in db.execute(
        select(Screening.id, Screening.log_number, Screening.screened_on).where(Screening.id.in_(ids)))} if ids else {}
    qids = [int(r.entity_id) for r in recs if r.entity == "query" and r.field == "on" and r.entity_id.isdigit()]
    about = {}
    for start in range(0, len(qids), 900):  # what a query is about, in the protocol's words (not "assessment 7, field rrb")
        for q in db.execute(select(DataQuery).where(DataQuery.id.in_(qids[start:start + 900]))).scalars():
            m = query_about(w.content, q)
            about[str(q.id)] = m.translated(w.gettext, None, lambda kind, key: w.plabels.get(kind, {}).get(key)) \
                if isinstance(m, Msg) else str(m)
    actors = {r.actor_id for r in recs if r.actor_id}
    names = dict(db.execute(select(User.id, User.name).where(User.id.in_(actors))).all()) if actors else {}
    invalidations = _invalidations(db, recs, w)
    withdrawn = _invalidated_signatures(db, recs, w)
    out = []
    for r in recs:
        if r.field and BOOKKEEPING.get((r.entity, r.field), "") is None:
            continue  # internal bookkeeping: left out of the readable trail (BOOKKEEPING)
        ins, visit = forms.get(r.entity_id, (None, None)) if r.entity == "assessment" else (None, None)
        what = w.t(ENTITY.get(r.entity, "")) or r.entity.replace("_", " ")
        if ins:
            what = f"{what}: {w.p('instrument', ins)}, {w.p('visit', visit)}"
        if r.entity == "signature" and r.entity_id in withdrawn:  # never read as valid: it was invalidated since
            what = f"{what} ({withdrawn[r.entity_id]})"
        who = f"{names[r.actor_id]} ({r.actor})" if r.actor_id in names else r.actor
        new = about.get(r.entity_id) if r.entity == "query" and r.field == "on" else None
        out.append({"seq": r.seq, "when": w.moment(r.at), "who": who,
                    "study_id": study.get(scope.get((r.entity, r.entity_id)), ""), "record": what,
                    "action": w.t(ACTION.get(r.action, "")) or r.action.replace("_", " "),
                    "field": _field(w, r.field, ins, r.entity), "old": _value(w, r.field, r.old, ins, r.entity, screenings),
                    "new": new or _value(w, r.field, r.new, ins, r.entity, screenings),
                    "reason": invalidations.get(r.entity_id, r.reason) if r.entity == "casebook_signoff"
                    and r.action == "invalidate" else r.reason or ""})
    return without_empty(out)


def without_empty(rs: list[dict]) -> list[dict]:
    """The rows less the fields empty before and after (a creation's strata or goals that got no
    value): a change shows only the fields that changed; a change none of whose fields did keeps
    one row without a field (when, who, what and why are still there)."""
    out: list[dict] = []
    group: list[dict] = []
    for r in [*rs, None]:
        if group and (r is None or _change(r) != _change(group[0])):
            filled = [x for x in group if not x["field"] or x["old"] or x["new"]]
            out += filled or [dict(group[0], field="", old="", new="")]
            group = []
        if r is not None:
            group.append(r)
    return out


def _change(r: dict) -> tuple:
    """One change of one record: its rows share when, who, the child, the record and the action."""
    return r["when"], r["who"], r["study_id"], r["record"], r["action"]


def _invalidated_signatures(db: Session, recs: list[AuditRecord], w: Words) -> dict[str, str]:
    """The e-signatures of casebook sign-offs invalidated since, each with when (for the heading of
    the signature's own records: the change history never shows an invalidated signature as valid)."""
    ids = {int(r.entity_id) for r in recs if r.entity == "signature" and r.entity_id.isdigit()}
    if not ids:
        return {}
    return {str(sid): w.t(N_("invalidated on %(moment)s")) % {"moment": w.moment(at)}
            for sid, at in db.execute(select(CasebookSignoff.signature_id, CasebookSignoff.invalidated_at)
                                      .where(CasebookSignoff.signature_id.in_(ids),
                                             CasebookSignoff.status == "invalidated")).all()}


def _invalidations(db: Session, recs: list[AuditRecord], w: Words) -> dict[str, str]:
    """The reason of each sign-off's invalidation in the reader's language (the trail keeps English)."""
    ids = {int(r.entity_id) for r in recs if r.entity == "casebook_signoff" and r.action == "invalidate"
           and r.entity_id.isdigit()}
    if not ids:
        return {}
    out = {}

    def plabel(kind, key):
        return w.plabels.get(kind, {}).get(key)
    for so, study_id in db.execute(select(CasebookSignoff, Participant.study_id)
                                   .join(Participant, Participant.id == CasebookSignoff.participant_id)
                                   .where(CasebookSignoff.id.in_(ids))).all():
        change = change_text(so, w.gettext, plabel) or ""
        out[str(so.id)] = w.t(N_("%(study_id)s: the signature of “%(milestone)s” is invalidated by %(change)s")) % {
            "study_id": study_id, "milestone": _milestone(w, so.milestone), "change": change}
    return out


# --- who may have which trail -------------------------------------------------------------------

def _require_reader(actor, site_id: int) -> None:
    if is_cli(actor):
        return
    if not any(r.role in AUDIT_READERS and r.site_id in (None, site_id) for r in actor.roles):
        raise Forbidden(N_("Your role does not allow this."))


def participant_trail(db: Session, actor, study_id: str, language: str) -> tuple[Participant, Site, list[dict], Words]:
    """A child's audit trail as the reader may read it (404 as for an unknown child to anyone who
    may not see the child; 403 to a reader of the child who does not read audit trails)."""
    p = db.execute(select(Participant).where(Participant.study_id == (study_id or "").upper())).scalar_one_or_none()
    if p is None:
        raise NotFound(NOT_FOUND)
    try:
        check_visible(db, actor, p)
    except (Forbidden, NotFound):
        raise NotFound(NOT_FOUND) from None
    _require_reader(actor, p.site_id)
    site = db.get(Site, p.site_id)
    w = Words(db, language, site.timezone)
    reader = reader_of(db, actor, p.site_id)
    scope = scopes(db, actor, [p], reader)
    full = full_trail(db, actor, p.site_id)
    return p, site, rows(db, records(db, actor, scope, reader.sees_arm, full), scope, w), w


def site_trail(db: Session, actor, site_code: str, language: str) -> tuple[Site, list[dict], Words]:
    """A site's audit trail (its children's records and the site's own) as the reader may read it."""
    site = db.execute(select(Site).where(Site.code == (site_code or "").upper())).scalar_one_or_none()
    if site is None:
        raise NotFound(N_("No site with that code."))
    _require_reader(actor, site.id)
    w = Words(db, language, site.timezone)
    kids = list(db.execute(select(Participant).where(Participant.site_id == site.id).order_by(Participant.study_id)).scalars())
    reader = reader_of(db, actor, site.id)
    scope = scopes(db, actor, kids, reader)
    scope[("site", site.code)] = 0
    full = full_trail(db, actor, site.id)
    return site, rows(db, records(db, actor, scope, reader.sees_arm, full), scope, w), w


# --- the files -----------------------------------------------------------------------------------

def to_csv(rs: list[dict], w: Words) -> bytes:
    """UTF-8 CSV with a BOM (spreadsheets read it as UTF-8); a cell that a spreadsheet would run as
    a formula is quoted with a leading apostrophe."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\r\n")
    out.writerow([w.t(h) for h in HEADER])
    for r in rs:
        out.writerow([_safe(r[k]) for k in ("when", "who", "study_id", "record", "action", "field", "old", "new", "reason")])
    return ("\ufeff" + buf.getvalue()).encode("utf-8")


def _safe(v) -> str:
    s = "" if v is None else str(v)
    return "'" + s if s[:1] in ("=", "+", "-", "@", "\t", "\r") else s


def add_changes(doc: Document, rs: list[dict], w: Words, with_child: bool = False) -> None:
    """The trail in a document: each change as a short block (when · who · what, the field old → new, why)."""
    if not rs:
        doc.p(w.t(N_("No changes recorded.")))
        return
    last = None
    for r in rs:
        head = " · ".join(x for x in (r["when"], r["who"], r["study_id"] if with_child else "", r["record"], r["action"]) if x)
        if head != last:  # the fields of one change under one heading
            doc.h3(head)
            last = head
        if r["field"]:
            doc.kv(r["field"], f"{r['old'] or '–'} → {r['new'] or '–'}")
        if r["reason"]:
            doc.kv(w.t(N_("Reason")), r["reason"])


def to_pdf(title: str, subject: str, rs: list[dict], w: Words, now: dt.datetime | None = None,
           with_child: bool = False) -> tuple[bytes, int, str]:
    """The trail as a PDF: (bytes, pages, content digest)."""
    made = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    doc = Document(title, subject, w.moment(made), w.language, created=made, about=w.content["trial"].get("name", ""))
    doc.h1(f"{title}: {subject}")
    doc.kv(w.t(N_("Time zone")), w.timezone)
    add_changes(doc, rs, w, with_child)
    pdf, pages = render(doc)
    return pdf, pages, doc.digest


def participant_csv(db: Session, actor, study_id: str, language: str) -> bytes:
    _, _, rs, w = participant_trail(db, actor, study_id, language)
    return to_csv(rs, w)


def participant_pdf(db: Session, actor, study_id: str, language: str) -> bytes:
    p, _, rs, w = participant_trail(db, actor, study_id, language)
    return to_pdf(w.t(N_("Audit trail")), p.study_id, rs, w)[0]


def site_csv(db: Session, actor, site_code: str, language: str) -> bytes:
    _, rs, w = site_trail(db, actor, site_code, language)
    return to_csv(rs, w)


def site_pdf(db: Session, actor, site_code: str, language: str) -> bytes:
    site, rs, w = site_trail(db, actor, site_code, language)
    return to_pdf(w.t(N_("Audit trail")), f"{site.code} {site.name}", rs, w, with_child=True)[0]
