"""The investigator's sign-off of a child's casebook at the protocol's milestones
(``[[signoff_milestones]]``), with the e-signature (password and second factor, trial.esign).

A signature covers the casebook's data as of signing: the participant, its assessments and
not-done forms of the visits the milestone covers, and its sessions, adverse events and their
follow-ups, status events, deviations, consents and withdrawals dated on or before the signing
day, and its randomization errors. ``covered_digest`` is a SHA-256 over those rows as canonical
JSON of an explicit, versioned list of fields per table (:data:`DIGEST_FIELDS`, version
:data:`DIGEST_VERSION`): a new column or an administrative field does not change it. Any later
audited change to a covered row (a correction, a deletion, or a late entry dated on or before the
signing day; a date moved across the signing day counts, its old and new values are both judged)
invalidates the child's valid signatures in the same transaction (the hook this module registers
with trial.audit.service). Which actions count: :data:`COUNTED_ACTIONS` (the entry, correction,
deletion and retraction of data); administrative steps (an adverse event acknowledged or reported
by the manager, a query's thread, a verification) do not. Data queries are not casebook data: a
query raised, answered or closed changes no covered row and does not invalidate a signature.

The digest check (the safety net for a change made around the audit trail) writes only where the
data are about to be certified: at signing, at a hard lock, before a site archive and in
`trial checks run` (:func:`check_all`); pages compute it read-only (:func:`out_of_date`) and show
such a signature as "out of date" without writing on a GET.

The e-signature is bound to the record: its meaning ends with the study id, the milestone and the
covered digest (what was signed can be checked against the data).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.audit.models import AuditRecord
from trial.auth import mfa
from trial.auth.models import RoleAssignment, User
from trial.catalogue import N_, Label, Msg
from trial.consent.models import Consent, ConsentWithdrawal
from trial.course.models import ChildGoal, CounsellingSession, TherapySession
from trial.db import utcnow
from trial.errors import Conflict, Forbidden
from trial.esign.models import Signature
from trial.esign.service import sign
from trial.outcomes.models import BlindingBreak, NotDone
from trial.outcomes.service import schedule
from trial.oversight.models import CasebookSignoff
from trial.paging import Page, PageRequest
from trial.participants.models import FINAL_EVENTS, Allocation, Assessment, Participant, StatusEvent
from trial.participants.service import get_participant
from trial.protocol.service import current as current_protocol
from trial.randomize.models import RandomizationError
from trial.safety.models import AdverseEvent, AdverseEventFollowUp
from trial.scope import CliActor, can_see_arm, is_cli
from trial.sites.models import Site
from trial.status.models import Deviation
from trial.timeline import local_date, today
from trial.trialstate.service import ensure_writable
from trial.validation import refuse

ROLE = "investigator"
READERS = ("coordinator", "monitor", ROLE)  # the site roles that read a child's sign-offs (and the managers)
DEFAULT_MEANING = N_("I have reviewed this casebook and confirm that its data are complete, accurate and attributable, "
                     "as the investigator responsible for this participant at this site.")
DIGEST_CHECK = N_("a change found by the digest check")
NOT_REACHED = "not_reached"
NOT_ENROLLED = N_("Set up two-factor sign-in (your account page) before you sign a casebook: a casebook's "
                  "signature needs the password and the code of your authenticator app.")
MAX_MEANING = 360  # the signer's words; the binding to the record (study id, milestone, digest) follows them


class NotReached(Conflict):
    code = NOT_REACHED


# --- milestones and when they are reached --------------------------------------------------------

def milestones(db: Session) -> list[dict]:
    return list(current_protocol(db).content.get("signoff_milestones") or [])


def milestone_label(m: dict) -> Label:
    return Label("signoff_milestone", m["key"], m["label"])


def _milestone(db: Session, key: Any) -> dict:
    ms = milestones(db)
    m = next((m for m in ms if m["key"] == key), None)
    if m is None:
        allowed = ", ".join(m["key"] for m in ms) or "-"
        refuse(N_("Not signed"), {"milestone": Msg(N_("must be one of %(allowed)s"), allowed=allowed)})
    return m


def _visit_keys(db: Session) -> list[str]:
    return [v["key"] for v in current_protocol(db).content["visits"]]


def _covered_visits(db: Session, m: dict) -> set[str]:
    keys = _visit_keys(db)
    if m.get("after_visit"):
        return set(keys[: keys.index(m["after_visit"]) + 1])
    return set(keys)


def _visit_reached(entry: dict, not_done: set[tuple[str, str]], day: dt.date) -> bool:
    """A visit is reached when each of its forms is entered or recorded not done, or its window
    has closed (or it is not expected of the child any more)."""
    expected = entry.get("instruments_expected") or []
    done = set(entry.get("instruments_done") or []) | {i for v, i in not_done if v == entry["visit"]}
    if expected and set(expected) <= done:
        return True
    if entry.get("status") in ("not_expected", "done", "done_out_of_window"):
        return True
    end = entry.get("window_end")
    return end is not None and day > dt.date.fromisoformat(end)


# the withdrawals of consent that end the child's participation (no further visit, no further form)
ENDING_SCOPES = ("all", "follow_up")


def _never_reached(e: dict, entered: dict[tuple[int, str], dt.date], end: dt.date | None, pid: int) -> bool:
    """A visit the child never reached because participation ended (withdrawn, died, consent to
    follow-up withdrawn) before its window closed and no form of it was entered: a milestone after it
    is not reached (the end-of-participation milestone applies instead)."""
    if end is None or (pid, e["visit"]) in entered:
        return False
    closes = e.get("window_end")
    return closes is None or end <= dt.date.fromisoformat(closes)


def _progress(db: Session, ids: list[int]) -> tuple[dict[int, set], dict[tuple[int, str], dt.date], dict[int, dt.date]]:
    """What the data tell of the children's progress: the forms recorded as not done (child -> {(visit,
    instrument)}), the last day a visit's form was entered ((child, visit) -> day) and the day the
    child's follow-up ended (a final event, or the consent to everything withdrawn)."""
    not_done: dict[int, set] = {}
    for pid, visit, ins in db.execute(select(NotDone.participant_id, NotDone.visit, NotDone.instrument)
                                      .where(NotDone.participant_id.in_(ids))).all():
        not_done.setdefault(pid, set()).add((visit, ins))
    entered: dict[tuple[int, str], dt.date] = {}
    for pid, visit, on_day in db.execute(select(Assessment.participant_id, Assessment.visit, Assessment.performed_on)
                                         .where(Assessment.participant_id.in_(ids))).all():
        entered[(pid, visit)] = max(on_day, entered.get((pid, visit), on_day))
    ends: dict[int, dt.date] = {}
    for pid, on_day in db.execute(select(StatusEvent.participant_id, StatusEvent.on).where(
            StatusEvent.participant_id.in_(ids), StatusEvent.type.in_(FINAL_EVENTS))).all():
        ends[pid] = min(on_day, ends.get(pid, on_day))
    for pid, on_day in db.execute(select(ConsentWithdrawal.participant_id, ConsentWithdrawal.on).where(
            ConsentWithdrawal.participant_id.in_(ids), ConsentWithdrawal.scope.in_(ENDING_SCOPES))).all():
        ends[pid] = min(on_day, ends.get(pid, on_day))
    return not_done, entered, ends


def reached(db: Session, participants: list[Participant], on: dt.date | None = None) -> dict[int, dict[str, dt.date]]:
    """For each child, the milestones reached on ``on`` (the site's today by default) and the day
    each was reached (as far as the data tell: the last form entered, the window's end, the final
    event)."""
    ms = milestones(db)
    if not ms or not participants:
        return {p.id: {} for p in participants}
    plans = schedule(db, CliActor(), participants, on)
    not_done, entered, ends = _progress(db, [p.id for p in participants])
    tzs = dict(db.execute(select(Site.id, Site.timezone)).all())
    out: dict[int, dict[str, dt.date]] = {}
    for p in participants:
        day = on or today(tzs[p.site_id])
        visits = {e["visit"]: e for e in plans.get(p.id, [])}
        nd = not_done.get(p.id, set())

        def reach_day(e: dict, pid: int = p.id, day: dt.date = day) -> dt.date:
            end = dt.date.fromisoformat(e["window_end"]) if e.get("window_end") else day
            got = entered.get((pid, e["visit"]))
            return min(got, end) if got else end

        got: dict[str, dt.date] = {}
        for m in ms:
            if m.get("after_visit"):
                e = visits.get(m["after_visit"])
                if e is not None and e.get("status") != "not_yet_randomized" and _visit_reached(e, nd, day) \
                        and not _never_reached(e, entered, ends.get(p.id), p.id):
                    got[m["key"]] = reach_day(e)
            elif p.id in ends:
                got[m["key"]] = ends[p.id]
            elif visits and all(e.get("status") != "not_yet_randomized" and _visit_reached(e, nd, day)
                                for e in visits.values()):
                got[m["key"]] = max(reach_day(e) for e in visits.values())
        out[p.id] = got
    return out


# --- the covered data and its digest ----------------------------------------------------------------

# the fields of each table the digest covers (version 1): the clinical content, not the row's
# bookkeeping (who entered it when) nor an administrative step (an adverse event's acknowledgement or
# report by the manager); a new column changes nothing until it is added here with a new version
DIGEST_VERSION = 1
DIGEST_FIELDS: dict[str, tuple[str, ...]] = {
    "participant": ("study_id", "site_id", "consent_date", "date_of_birth", "sex", "strata"),
    "assessment": ("id", "visit", "instrument", "performed_on", "values", "out_of_window"),
    "not_done": ("id", "visit", "instrument", "reason", "text"),
    "therapy_session": ("id", "held_on", "attendance", "minutes", "techniques", "engagement", "note", "outside_course",
                        "present", "goals"),
    "counselling_session": ("id", "number", "held_on", "attended", "note"),
    "child_goal": ("id", "goal", "description", "active", "set_on"),
    "adverse_event": ("id", "term", "onset", "severity", "serious", "seriousness", "relatedness", "expectedness",
                      "outcome", "resolved_on", "description"),
    "adverse_event_follow_up": ("id", "adverse_event_id", "on", "outcome", "resolved_on", "text"),
    "status_event": ("id", "type", "on", "reason"),
    "deviation": ("id", "on", "category", "description"),
    "consent": ("id", "document", "version", "language", "signed_on", "signer", "options"),
    "consent_withdrawal": ("id", "on", "scope", "data_use", "text"),
    "blinding_break": ("id", "reported_on", "description"),
    "randomization_error": ("id", "kind", "field", "as_randomized", "correct_value", "text"),
}
# the audit actions that change covered data (an entry, a correction, a deletion, a retraction, a
# revision); any other action (acknowledge, report, a query's steps, verification) leaves a signature
COUNTED_ACTIONS = frozenset({"create", "update", "correct", "delete", "retract", "revise", "follow_up", "randomize",
                             "withdraw"})


def _row(entity: str, obj) -> dict:
    return {k: audit._text(getattr(obj, k)) for k in DIGEST_FIELDS[entity]}


def covered_rows(db: Session, p: Participant, milestone: dict, day: dt.date,
                 visits: set[str] | None = None) -> dict[str, list[dict]]:
    """The child's rows a signature of ``milestone`` signed on ``day`` covers, table by table
    (``visits``: the visits it covered when signed; the current protocol's by default)."""
    visits = _covered_visits(db, milestone) if visits is None else visits
    pid = p.id

    def rows(entity: str, model, *where) -> list[dict]:
        q = select(model).where(*where).order_by(model.id)
        return [_row(entity, o) for o in db.execute(q).scalars()]

    aes = list(db.execute(select(AdverseEvent.id).where(AdverseEvent.participant_id == pid,
                                                         AdverseEvent.onset <= day)).scalars())
    return {
        "version": [{"digest": str(DIGEST_VERSION)}],
        "participant": [_row("participant", p)],
        "assessment": rows("assessment", Assessment, Assessment.participant_id == pid, Assessment.visit.in_(visits)),
        "not_done": rows("not_done", NotDone, NotDone.participant_id == pid, NotDone.visit.in_(visits)),
        "therapy_session": rows("therapy_session", TherapySession, TherapySession.participant_id == pid,
                                TherapySession.held_on <= day),
        "counselling_session": rows("counselling_session", CounsellingSession, CounsellingSession.participant_id == pid,
                                    CounsellingSession.held_on <= day),
        "child_goal": rows("child_goal", ChildGoal, ChildGoal.participant_id == pid, ChildGoal.set_on <= day),
        "adverse_event": rows("adverse_event", AdverseEvent, AdverseEvent.id.in_(aes)) if aes else [],
        "adverse_event_follow_up": rows("adverse_event_follow_up", AdverseEventFollowUp,
                                        AdverseEventFollowUp.adverse_event_id.in_(aes),
                                        AdverseEventFollowUp.on <= day) if aes else [],
        "status_event": rows("status_event", StatusEvent, StatusEvent.participant_id == pid, StatusEvent.on <= day),
        "deviation": rows("deviation", Deviation, Deviation.participant_id == pid, Deviation.on <= day),
        "consent": rows("consent", Consent, Consent.participant_id == pid, Consent.signed_on <= day),
        "consent_withdrawal": rows("consent_withdrawal", ConsentWithdrawal, ConsentWithdrawal.participant_id == pid,
                                   ConsentWithdrawal.on <= day),
        "blinding_break": rows("blinding_break", BlindingBreak, BlindingBreak.participant_id == pid,
                               BlindingBreak.reported_on <= day),
        "randomization_error": rows("randomization_error", RandomizationError, RandomizationError.participant_id == pid),
    }


def digest(db: Session, p: Participant, milestone: dict, day: dt.date, visits: set[str] | None = None) -> str:
    """SHA-256 over the covered rows as canonical JSON (sorted keys, every value as text)."""
    db.flush()
    data = json.dumps(covered_rows(db, p, milestone, day, visits), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)
    return hashlib.sha256(data.encode()).hexdigest()


def _tz(db: Session, p: Participant) -> str:
    return db.get(Site, p.site_id).timezone


def signing_day(db: Session, p: Participant, s: CasebookSignoff) -> dt.date:
    return coverage(db, [s]).get(s.id, (None, local_date(s.signed_at, _tz(db, p))))[1]


def coverage(db: Session, signoffs: list[CasebookSignoff]) -> dict[int, tuple[set[str] | None, dt.date]]:
    """What each signature covered when signed: (the milestone's visits then, the signing day in the
    site's time zone then), as its creation's audit record keeps them (so that a later amendment of
    the visits or an edit of the site's time zone does not change what was signed). A signature
    without them (written before they were kept): the current protocol's visits and the site's day."""
    if not signoffs:
        return {}
    got: dict[int, dict[str, str | None]] = {}
    ids = [str(s.id) for s in signoffs]
    for entity_id, field, new in db.execute(select(AuditRecord.entity_id, AuditRecord.field, AuditRecord.new).where(
            AuditRecord.entity == "casebook_signoff", AuditRecord.action == "create", AuditRecord.entity_id.in_(ids),
            AuditRecord.field.in_(("covered_visits", "signing_day")))).all():
        got.setdefault(int(entity_id), {})[field] = new
    out = {}
    tzs = None
    for s in signoffs:
        kept = got.get(s.id, {})
        visits = set(json.loads(kept["covered_visits"])) if kept.get("covered_visits") else None
        if kept.get("signing_day"):
            day = dt.date.fromisoformat(kept["signing_day"])
        else:
            if tzs is None:
                tzs = dict(db.execute(select(Participant.id, Site.timezone).join(Site, Site.id == Participant.site_id)
                                      .where(Participant.id.in_({x.participant_id for x in signoffs}))).all())
            day = local_date(s.signed_at, tzs[s.participant_id])
        out[s.id] = (visits, day)
    return out


# --- who may sign and read --------------------------------------------------------------------------

def is_investigator_of(actor, site_id: int) -> bool:
    if actor is None or is_cli(actor):
        return False
    return any(r.role == ROLE and r.site_id == site_id for r in actor.roles)


def _signer_participant(db: Session, actor, study_id: str) -> Participant:
    """The child for its site's investigator: another role 403, another site's child 404 (as for a
    study id that does not exist)."""
    if actor is None or is_cli(actor) or not actor.has_role(ROLE):
        raise Forbidden(N_("Only the site's investigator signs a casebook."))
    p = get_participant(db, actor, study_id)
    if not is_investigator_of(actor, p.site_id):
        raise Forbidden(N_("Only the site's investigator signs a casebook."))
    return p


def binding(study_id: str, m: dict, day: dt.date, covered: str) -> str:
    """What binds an e-signature to the casebook it signs (the end of its meaning): the study id,
    the milestone, the signing day and the covered data's digest."""
    return f"[{study_id} · {m.get('label') or m['key']} · {day.isoformat()} · SHA-256 {covered}]"


def sign_casebook(db: Session, actor, study_id: str, data: dict) -> CasebookSignoff:
    """Sign a child's casebook at a milestone: 409 ``not_reached`` before it is reached, 409 when
    a valid signature of that milestone exists (two signing at once: one wins, the other 409); the
    signer must be enrolled in two-factor sign-in (403 otherwise) and gives the password and a
    current code. The signature's meaning ends with the study id, the milestone, the signing day
    and the covered digest."""
    if not isinstance(data, dict):
        refuse(N_("Not signed"), {"body": N_("must be an object")})
    p = _signer_participant(db, actor, study_id)
    if not mfa.is_enrolled(actor):
        raise Forbidden(NOT_ENROLLED)
    ensure_writable(db)
    m = _milestone(db, data.get("milestone"))
    meaning = data.get("meaning")
    if isinstance(meaning, str) and not meaning.strip():
        meaning = None
    if isinstance(meaning, str) and len(meaning.strip()) > MAX_MEANING:
        refuse(N_("Not signed"), {"meaning": Msg(N_("is too long (at most %(n)s characters)"), n=MAX_MEANING)})
    p = get_participant(db, actor, study_id, for_update=True)  # two signers of one child queue here
    _check_digests(db, [p])
    if m["key"] not in reached(db, [p]).get(p.id, {}):
        raise NotReached(Msg(N_("%(study_id)s has not reached “%(milestone)s” yet: its casebook cannot be signed "
                                "for it."), study_id=p.study_id, milestone=milestone_label(m)))
    if _valid(db, [p.id]).get((p.id, m["key"])):
        raise _already(p, m)
    now = utcnow()
    day = local_date(now, _tz(db, p))
    visits = _covered_visits(db, m)
    covered = digest(db, p, m, day, visits)
    words = meaning.strip() if isinstance(meaning, str) else str(Msg(DEFAULT_MEANING))
    sig = sign(db, actor, data.get("password"), f"{words} {binding(p.study_id, m, day, covered)}",
               f"casebook_signoff:{m['key']}", data.get("code"))
    seq, _ = audit.head(db)
    s = CasebookSignoff(participant_id=p.id, milestone=m["key"], signature_id=sig.id, signed_by_id=actor.id,
                        signed_at=sig.signed_at, covered_seq=seq, covered_digest=covered, status="valid")
    try:
        with db.begin_nested():
            db.add(s)
            db.flush()
    except IntegrityError:  # another signature of this milestone won (uq_casebook_signoff_valid)
        raise _already(p, m) from None
    audit.created(db, actor, "casebook_signoff", s.id, {"participant": p.study_id, "milestone": m["key"],
                                                        "signature": sig.id, "covered_seq": seq,
                                                        "covered_digest": s.covered_digest,
                                                        "covered_visits": json.dumps(sorted(visits)),
                                                        "signing_day": day.isoformat()},
                  reveals_allocation=True)
    return s


def _already(p: Participant, m: dict) -> Conflict:
    return Conflict(Msg(N_("%(study_id)s: the casebook is already signed for “%(milestone)s”."),
                        study_id=p.study_id, milestone=milestone_label(m)))


def _valid(db: Session, ids: list[int]) -> dict[tuple[int, str], CasebookSignoff]:
    if not ids:
        return {}
    q = select(CasebookSignoff).where(CasebookSignoff.participant_id.in_(ids), CasebookSignoff.status == "valid")
    return {(s.participant_id, s.milestone): s for s in db.execute(q).scalars()}


# --- invalidation ----------------------------------------------------------------------------------

def invalidate(db: Session, s: CasebookSignoff, change: Msg | str, seq: int | None, actor=None) -> None:
    """Make ``s`` invalidated by ``change`` (kept as words, read in each reader's language; the English
    text in ``invalidated_change``); its audit record reveals the allocation (when a casebook was
    signed and invalidated follows the sessions and adverse events it covers)."""
    p = db.get(Participant, s.participant_id)
    s.status, s.invalidated_at, s.invalidated_change = "invalidated", utcnow(), str(change)[:300]
    s.invalidated_words = change.words() if isinstance(change, Msg) else None
    recs = audit.record(db, actor if actor is not None and not isinstance(actor, str) else audit.SYSTEM,
                        "invalidate", "casebook_signoff", s.id,
                        {"status": ("valid", "invalidated"), "participant": (p.study_id, p.study_id)},
                        reason=str(Msg(N_("%(study_id)s: the signature of “%(milestone)s” is invalidated by %(change)s"),
                                   study_id=p.study_id, milestone=_label_of(db, s.milestone), change=change)),
                        reveals_allocation=True)
    s.invalidated_seq = seq if seq is not None else recs[-1]["seq"]
    db.flush()


def change_text(s: CasebookSignoff, gettext=None, plabel=None) -> str | None:
    """The change that invalidated ``s`` in a reader's language (``gettext``; English without)."""
    if s.status != "invalidated":
        return None
    m = Msg.from_words(s.invalidated_words, s.invalidated_change) if s.invalidated_words else s.invalidated_change
    if isinstance(m, Msg) and gettext is not None:
        return m.translated(gettext, lambda d: d.isoformat(), plabel or (lambda kind, key: None))
    return str(m) if m is not None else None


def _label_of(db: Session, key: str) -> Label:
    m = next((m for m in milestones(db) if m["key"] == key), None)
    return milestone_label(m) if m else Label("signoff_milestone", key, key)


def out_of_date(db: Session, participants: list[Participant]) -> set[int]:
    """Read-only: the ids of the valid signatures of these children whose covered data no longer give
    their digest (a change made around the audit trail). Nothing is written: pages show them as "out
    of date"; :func:`check_digests` invalidates them where the data are certified."""
    by_id = {p.id: p for p in participants}
    valid = list(_valid(db, list(by_id)).values())
    if not valid:
        return set()
    ms = {m["key"]: m for m in milestones(db)}
    cov = coverage(db, valid)
    out = set()
    for s in valid:
        m = ms.get(s.milestone)
        visits, day = cov[s.id]
        if m is None or digest(db, by_id[s.participant_id], m, day, visits) != s.covered_digest:
            out.add(s.id)
    return out


def _check_digests(db: Session, participants: list[Participant]) -> int:
    """The safety net: each valid signature whose covered data no longer give its digest is
    invalidated ("a change found by the digest check"). Returns how many were. Called where data
    are certified (signing, the hard lock, a site archive) and by `trial checks run`."""
    stale = out_of_date(db, participants)
    if not stale:
        return 0
    for s in _valid(db, [p.id for p in participants]).values():
        if s.id in stale:
            invalidate(db, s, Msg(DIGEST_CHECK), None)
    return len(stale)


check_digests = _check_digests


def check_all(db: Session, site_ids: list[int] | None = None) -> int:
    """`trial checks run`, the hard lock, a site archive: the digest check of every child (of these
    sites) holding a valid signature; returns how many signatures it invalidated."""
    q = select(Participant).where(exists().where(CasebookSignoff.participant_id == Participant.id,
                                                 CasebookSignoff.status == "valid"))
    if site_ids is not None:
        q = q.where(Participant.site_id.in_(site_ids))
    ps = list(db.execute(q.order_by(Participant.id)).scalars())
    n = 0
    for start in range(0, len(ps), 200):
        n += _check_digests(db, ps[start:start + 200])
    return n


ENTITY_LABELS = {
    "participant": N_("the participant's record"), "assessment": N_("an assessment"), "not_done": N_("a form not done"),
    "therapy_session": N_("a session"), "counselling_session": N_("a counselling session"),
    "child_goal": N_("an individual goal"), "adverse_event": N_("an adverse event"),
    "adverse_event_follow_up": N_("an adverse event's follow-up"), "status_event": N_("a status event"),
    "deviation": N_("a protocol deviation"), "consent": N_("a consent"),
    "consent_withdrawal": N_("a withdrawal of consent"), "blinding_break": N_("a blinding break"),
    "randomization_error": N_("a randomization error"),
}
MODELS = {"assessment": Assessment, "not_done": NotDone, "therapy_session": TherapySession,
          "counselling_session": CounsellingSession, "child_goal": ChildGoal, "adverse_event": AdverseEvent,
          "adverse_event_follow_up": AdverseEventFollowUp, "status_event": StatusEvent, "deviation": Deviation,
          "consent_withdrawal": ConsentWithdrawal, "blinding_break": BlindingBreak,
          "randomization_error": RandomizationError}
# the day that places a row before or after a signing day
DATED = {"therapy_session": "held_on", "counselling_session": "held_on", "child_goal": "set_on",
         "adverse_event": "onset", "adverse_event_follow_up": "on", "status_event": "on", "deviation": "on",
         "consent": "signed_on", "consent_withdrawal": "on", "blinding_break": "reported_on"}


def _load(db: Session, entity: str, entity_id: str):
    """The row an audit record of a covered entity names, and the child it belongs to (None, None
    when the row is gone: see :func:`_deleted_child`)."""
    if entity == "participant":
        p = db.execute(select(Participant).where(Participant.study_id == entity_id)).scalar_one_or_none()
        return p, p.id if p else None
    if entity == "consent":
        study_id, _, rest = entity_id.partition("/")
        document, _, version = rest.rpartition("/")
        row = db.execute(select(Consent).join(Participant, Participant.id == Consent.participant_id).where(
            Participant.study_id == study_id, Consent.document == document, Consent.version == version)
            .order_by(Consent.id.desc()).limit(1)).scalar()
        return row, row.participant_id if row else None
    try:
        row = db.get(MODELS[entity], int(entity_id))
    except (TypeError, ValueError):
        return None, None
    if row is None:
        return None, None
    if entity == "adverse_event_follow_up":
        ae = db.get(AdverseEvent, row.adverse_event_id)
        return row, ae.participant_id if ae else None
    return row, row.participant_id


def _deleted_child(db: Session, entity: str, entity_id: str, records: list[dict]) -> int | None:
    """The child of a row that is gone (deleted, retracted): the "participant" its records name (the
    deletion's own, else its creation's in the trail)."""
    study_id = next((r.get("old") or r.get("new") for r in records if r.get("field") == "participant"
                     and (r.get("old") or r.get("new"))), None)
    if study_id is None:
        study_id = db.execute(select(AuditRecord.new).where(AuditRecord.entity == entity, AuditRecord.entity_id == entity_id,
                                                            AuditRecord.field == "participant", AuditRecord.new.is_not(None))
                              .order_by(AuditRecord.seq).limit(1)).scalar()
    if study_id is None and entity == "consent":
        study_id = entity_id.partition("/")[0]
    if study_id is None:
        return None
    return db.execute(select(Participant.id).where(Participant.study_id == study_id)).scalar()


def _day_value(value) -> dt.date | None:
    try:
        return dt.date.fromisoformat(str(value)[:10]) if value else None
    except ValueError:
        return None


def _covers(db: Session, entity: str, row, records: list[dict], s: CasebookSignoff, visits: set[str] | None,
            day: dt.date) -> bool:
    """Whether the change (``records`` of one row) touches what ``s`` covers: the row as it is now
    and as it was (the old values of the records: a date moved from before the signing day to after
    it, a form moved to another visit, counts)."""
    m = next((m for m in milestones(db) if m["key"] == s.milestone), None)
    if m is None:
        return True  # a milestone no longer in the protocol
    if row is None:  # a row deleted: judged on what its deletion's records say it was
        old = {r.get("field"): r.get("old") for r in records if r.get("field")}
        if entity in ("assessment", "not_done") and old.get("visit"):
            return old["visit"] in (_covered_visits(db, m) if visits is None else visits)
        if entity in DATED and _day_value(old.get(DATED[entity])):
            return _day_value(old[DATED[entity]]) <= day
        return True
    if entity in ("assessment", "not_done"):
        visits = _covered_visits(db, m) if visits is None else visits
        olds = {r.get("old") for r in records if r.get("field") == "visit"}
        return row.visit in visits or bool(olds & visits)
    if entity == "adverse_event_follow_up":
        ae = db.get(AdverseEvent, row.adverse_event_id)
        if ae is not None and ae.onset > day:
            return False
    if entity in DATED:
        field = DATED[entity]
        days = [getattr(row, field)] + [_day_value(r.get("old")) for r in records if r.get("field") == field]
        return any(d is not None and d <= day for d in days)
    return True  # the participant's record, a randomization error


def _change(db: Session, entity: str, action: str, row) -> Msg:
    what = Msg(ENTITY_LABELS[entity])
    if entity in ("assessment", "not_done") and row is not None:
        content = current_protocol(db).content
        ins = next((i for i in content["instruments"] if i["key"] == row.instrument), None)
        vis = next((v for v in content["visits"] if v["key"] == row.visit), None)
        if ins and vis:
            what = Msg(N_("%(what)s (%(form)s at %(visit)s)"), what=what, form=Label("instrument", ins["key"], ins["label"]),
                       visit=Label("visit", vis["key"], vis["label"]))
    if action == "create":
        return Msg(N_("%(what)s entered later"), what=what)
    if action in ("delete", "retract"):
        return Msg(N_("%(what)s deleted or retracted"), what=what)
    return Msg(N_("a change to %(what)s"), what=what)


def _on_audit(db: Session, actor, rows: list[dict]) -> None:
    """The audit hook: the records just appended that change a covered row of a child whose
    casebook holds a valid signature invalidate that signature, in the same transaction. Only
    :data:`COUNTED_ACTIONS` count (an adverse event acknowledged or reported by the manager does
    not); data queries are not casebook data (the entity "query" is not covered)."""
    changes = [r for r in rows if r["entity"] in ENTITY_LABELS and r["action"] in COUNTED_ACTIONS]
    if not changes:
        return
    if not db.execute(select(exists().where(CasebookSignoff.status == "valid"))).scalar():
        return
    grouped: dict[tuple[str, str], list[dict]] = {}
    for r in changes:
        grouped.setdefault((r["entity"], str(r["entity_id"])), []).append(r)
    for (entity, entity_id), recs in grouped.items():
        row, pid = _load(db, entity, entity_id)
        if pid is None:
            pid = _deleted_child(db, entity, entity_id, recs)
        if pid is None:
            continue
        valid = list(_valid(db, [pid]).values())
        cov = coverage(db, valid)
        action = "delete" if row is None else recs[0]["action"]
        for s in valid:
            visits, day = cov[s.id]
            if _covers(db, entity, row, recs, s, visits, day):
                invalidate(db, s, _change(db, entity, action, row), recs[0]["seq"], actor)


audit.on_append(_on_audit)


# --- reading -----------------------------------------------------------------------------------------

def may_read(db: Session, actor, p: Participant) -> bool:
    """The sign-offs of a child are read by its site's unblinded staff and investigator and the
    managers: not by blinded roles (the dates a casebook was signed and invalidated follow the
    sessions and adverse events it covers, which can tell an arm)."""
    if actor is None:
        return False
    if is_cli(actor):
        return True
    if not can_see_arm(db, actor, p.site_id):  # an admin, an assessor of the site, a blinded reader
        return False
    return actor.has_role("manager") or p.site_id in actor.site_ids(*READERS)


def signoffs_of(db: Session, actor, study_id: str) -> list[dict]:
    p = get_participant(db, actor, study_id)
    if not may_read(db, actor, p):
        raise Forbidden(N_("Your role does not allow reading the casebook's signatures."))
    return views(db, p)


def views(db: Session, p: Participant, check: bool = True) -> list[dict]:
    """The child's sign-offs, oldest first; a valid one whose data no longer give its digest is
    marked ``out_of_date`` (read-only: nothing written). ``invalidated_by_change``: the change in
    English; ``invalidated_by_change_words``: its words, for a reader's language (trial.http.say)."""
    stale = out_of_date(db, [p]) if check else set()
    q = (select(CasebookSignoff, User.name, User.email, Signature.meaning)
         .join(User, User.id == CasebookSignoff.signed_by_id).join(Signature, Signature.id == CasebookSignoff.signature_id)
         .where(CasebookSignoff.participant_id == p.id).order_by(CasebookSignoff.signed_at, CasebookSignoff.id))
    out = []
    labels = {m["key"]: milestone_label(m) for m in milestones(db)}
    for s, name, email, meaning in db.execute(q).all():
        v = {"milestone": s.milestone, "milestone_label": labels.get(s.milestone, s.milestone), "signed_by": email,
             "signed_by_name": name, "signed_at": s.signed_at, "status": s.status, "meaning": meaning,
             "out_of_date": s.id in stale}
        if s.status == "invalidated":
            v.update(invalidated_by_change=s.invalidated_change, invalidated_by_change_words=s.invalidated_words,
                     invalidated_at=s.invalidated_at)
        out.append(v)
    return out


def _investigator_sites(db: Session, actor) -> list[int]:
    if actor is None or is_cli(actor):
        return []
    return sorted({r.site_id for r in actor.roles if r.role == ROLE and r.site_id is not None})


def waiting(db: Session, site_ids: list[int] | None = None, on: dt.date | None = None,
            check: str | None = None) -> list[dict]:
    """Casebooks with a milestone reached and no valid signature (at these sites; all when None),
    newest first: {participant, study_id, site_id, milestone, since, returned} (``since``: a day in
    the site's time zone). ``check``: None (pages: the audit hook keeps signatures current), "read"
    (a signature out of date waits too, nothing written), "write" (the digest check invalidates
    them first: the hard lock)."""
    if not milestones(db):
        return []
    q = select(Participant).join(Allocation, Allocation.participant_id == Participant.id)
    if site_ids is not None:
        if not site_ids:
            return []
        q = q.where(Participant.site_id.in_(site_ids))
    ps = list(db.execute(q.order_by(Participant.id)).scalars())
    # the children who left before randomization have no casebook to sign at these milestones
    if check == "write":
        _check_digests(db, ps)
    got = reached(db, ps, on)
    valid = _valid(db, [p.id for p in ps])
    if check == "read":  # a signature out of date waits again (nothing written)
        stale = out_of_date(db, ps)
        valid = {k: v for k, v in valid.items() if v.id not in stale}
    returned: dict[tuple[int, str], dt.datetime] = {}
    if ps:
        for pid, key, at in db.execute(select(CasebookSignoff.participant_id, CasebookSignoff.milestone,
                                              CasebookSignoff.invalidated_at).where(
                CasebookSignoff.participant_id.in_([p.id for p in ps]), CasebookSignoff.status == "invalidated")).all():
            if at and (pid, key) not in returned or at and at > returned[(pid, key)]:
                returned[(pid, key)] = at
    labels = {m["key"]: milestone_label(m) for m in milestones(db)}
    tzs = dict(db.execute(select(Site.id, Site.timezone)).all())
    out = []
    for p in ps:
        for key, day in got.get(p.id, {}).items():
            if (p.id, key) in valid:
                continue
            back = returned.get((p.id, key))
            out.append({"participant": p, "study_id": p.study_id, "site_id": p.site_id, "milestone": key,
                        "milestone_label": labels[key], "since": local_date(back, tzs[p.site_id]) if back else day,
                        "returned": back})
    out.sort(key=lambda w: (w["since"], w["study_id"]), reverse=True)
    return out


def worklist_page(db: Session, actor, req: PageRequest) -> Page:
    """The investigator's worklist: the casebooks of their sites waiting for a signature."""
    if actor is None or not actor.has_role(ROLE):
        raise Forbidden(N_("The sign-off worklist is the investigator's."))
    items = waiting(db, _investigator_sites(db, actor))
    return Page(items=items[req.offset: req.offset + req.per_page], total=len(items), request=req)


def sites_with_investigator(db: Session) -> set[int]:
    """Sites that have an active investigator (their casebooks hold the hard lock)."""
    return set(db.execute(select(RoleAssignment.site_id).join(User, User.id == RoleAssignment.user_id).where(
        RoleAssignment.role == ROLE, User.active.is_(True), RoleAssignment.site_id.is_not(None))).scalars())


def unsigned_casebooks(db: Session, check: str = "write") -> list[str]:
    """Study ids of the casebooks that wait for their investigator's signature, at the sites that
    have one (``check``: "write" at the hard lock, the digest check invalidating what changed;
    "read" on a page, nothing written)."""
    sites = sites_with_investigator(db)
    if not sites:
        return []
    return sorted({w["study_id"] for w in waiting(db, sorted(sites), check=check)})
