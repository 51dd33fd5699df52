"""The data against the trail (`trial audit verify --data`): the audit records of every audited
table replayed to the value each field should have now, compared with the rows as they are. Values
are compared as the trail stores them (``_text``: dates in ISO form, JSON sorted and compact,
booleans ``true``/``false``, None as no value). Three things are named, by table, id and field:

- a field that differs from its records: an UPDATE without its record (``table id field``);
- a row the trail never created: an INSERT without its record (``table id *: no creation record``);
- an entity the trail created whose row is gone: a DELETE without its record (``table id *: row
  missing``). A row the services delete carries its record: a ``delete`` record (its row must be
  gone, and is named if it is there), or a role ended or a grant withdrawn (the user's ``roles`` and
  ``pending_grant`` records): none of these is reported.

Compared (TABLES), each table read once and its entity's records once, ``BATCH`` at a time:

- the child's record: screening, participant (and its enrolment time when its creation record
  gives it), allocation (arm, stratum, slot, and the time of randomization when its record gives
  it; randomized, or replayed from the allocation journal after a restore), allocation_reservation (a slot the
  journal kept for a child the restored database lacks, and its use), assessment (each
  ``values.<field>``), consent (its document, version, language, day, signer, options and
  source; the rows migration 0024 wrote from the consent dates, which have no record of their own,
  against what it wrote), consent_withdrawal, status_event, deviation, blinding_break, therapy_session,
  counselling_session, child_goal, adverse_event, adverse_event_follow_up (its own records since
  issue 27), adverse_event_report (inside its event's records: ``report`` and the fields after
  it); each child-owned row also by the child it belongs to (``participant``: a row moved to
  another child is named);
- data management and fidelity: data_query (what it is on, its text, origin, state, raiser),
  data_query_message (each query's thread in order: raised, answered, closed, reopened; the answer
  to a missing form is such a thread), source_verification (the mark standing or cleared, with
  the reason), fidelity_draw (with its sample: the fidelity_sample rows), fidelity_rating;
- the trial's records: site (its languages once the trail gives them: migration 0024 set the
  first ones without a record), protocol_version (its source against the digest recorded),
  randomization_design, data_lock, lock_bundle (its bytes against the digest recorded),
  unblinding_request, trial_state (the lock in force, the unblinding: from the locks' and the
  design's records; the randomization hold and its time: from its own ``restore`` and
  ``reconcile`` records), signature, access_review (its accounts against the digest recorded),
  credential;
- who may do what: user_account (name, active, language, digest, two-factor enrolment),
  role_assignment (each user's roles: a role held without its record, or gone), role_grant (each
  grant's state), api_token (issued with its expiry, revoked).

Not compared, and why:

- audit_record, audit_head, audit_anchor, audit_seal, audit_key_epoch: the trail itself
  (`trial audit verify`, `--anchors`);
- stratum, site_sequence, sealed_seed: the counters and the sealed seed of the randomization and
  of the numbering. What they hand out is compared (each allocation's stratum, slot and arm, each
  study id); the initial strata are recorded only by their number; the sealed seed is checked
  against the design's commitment (compared here) by `trial randomization verify`;
- course_tally, planned_visit, visit_plan_state: indexes derived from the compared rows (the
  services rebuild them);
- lock_build, notification, mail_outbox: a bundle's building and the messages about the data;
- password_reset, login_attempt, mfa_recovery_code, and user_account's secrets (password hash,
  session token, TOTP secret, last step) and must_change_password: sign-in machinery, held as
  hashes; the trail keeps its events as the user's records.

A database written before issue 27 lacks two kinds of record the services now write: the
counselling session's ``note`` and the adverse-event follow-up as an entity of its own. Its notes
and follow-ups are named until those records are added."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from sqlalchemy import MetaData, Table, select
from sqlalchemy.orm import Session

from trial.audit.models import AuditRecord
from trial.audit.service import _text
from trial.db import Base

BATCH = 5000  # rows and records read at a time (yield_per)
DELETING = ("delete",)  # the action of a record that deletes its entity: its row must then be gone

NO_CREATION = "no creation record (written without its audit record)"
ROW_MISSING = "row missing (the trail created it; deleted without an audit record)"
STILL_THERE = "the trail records its deletion, yet the row is there"
DIFFERS = "differs from its audit trail (changed without a record)"


@dataclass(frozen=True)
class Difference:
    table: str
    id: str
    field: str
    problem: str

    def __str__(self) -> str:
        return f"{self.table} {self.id} {self.field}: {self.problem}"


class Entity:
    """What the trail says of one entity: whether it was created (and deleted), and the value each
    compared field should hold now, as text."""
    __slots__ = ("created", "deleted", "values")

    def __init__(self) -> None:
        self.created = False
        self.deleted = False
        self.values: dict[str, str | None] = {}


def _records(db: Session, entity: str):
    """An entity's audit records in chain order, read ``BATCH`` at a time."""
    t = AuditRecord.__table__
    q = (select(t.c.entity_id, t.c.action, t.c.field, t.c.new, t.c.reason, t.c.actor, t.c.at, t.c.old)
         .where(t.c.entity == entity).order_by(t.c.seq).execution_options(yield_per=BATCH))
    return db.execute(q)


def _table(db: Session, name: str) -> Table:
    """The table with its column types (dates, JSON, booleans read as the services wrote them)."""
    known = Base.metadata.tables.get(name)
    return known if known is not None else Table(name, MetaData(), autoload_with=db.get_bind())


def _rows(db: Session, name: str, *columns: str):
    t = _table(db, name)
    cols = [t.c[c] for c in columns] if columns else [t]
    return db.execute(select(*cols).order_by(*t.primary_key.columns).execution_options(yield_per=BATCH))


class Lookups:
    """What the trail names rows by instead of their ids (a site's code, a child's study id, a
    user's e-mail, a stratum's key) and a fidelity draw's sample, read once for a whole compare."""

    def __init__(self, db: Session):
        self.site = dict(_rows(db, "site", "id", "code").all())
        self.study_id = dict(_rows(db, "participant", "id", "study_id").all())
        self.email = dict(_rows(db, "user_account", "id", "email").all())
        self.stratum = dict(_rows(db, "stratum", "id", "key").all())
        self.sample: dict[int, list[int]] = defaultdict(list)
        for session_id, draw_id in _rows(db, "fidelity_sample", "session_id", "draw_id"):
            self.sample[draw_id].append(session_id)


Read = Callable[[Any, Lookups], Any]

# ``_text`` of the commonest types, without its chain of checks (a row's fields, many times over)
_AS_TEXT: dict[type, Callable[[Any], str | None]] = {
    type(None): lambda v: None, str: lambda v: v, int: str, float: str, dt.date: dt.date.isoformat,
    dt.datetime: dt.datetime.isoformat, bool: lambda v: "true" if v else "false"}


def _child(row, lk: Lookups) -> str | None:
    return lk.study_id.get(row.participant_id)


def _sha256(data: bytes | str | None) -> str | None:
    if data is None:
        return None
    return hashlib.sha256(data.encode() if isinstance(data, str) else bytes(data)).hexdigest()


def _sorted_list(value: str | None) -> str | None:
    return _text(sorted(json.loads(value))) if value else value


class Spec:
    """An audited table: the trail's entity name for its rows, the column (or function of the row)
    its records' entity_id names, and the fields compared. A compared field is, by default, the
    column of that name recorded under that name; else ``trail`` names the field the records give
    it, ``read`` how the row gives it (the child's study id for its participant_id, ...), and
    ``reasons`` that it holds the reason of the record that set a field (a lift's reason), cut to a
    length. ``defaults``: what a creation gives fields its records leave out; ``created``: the
    actions that create the entity; ``actor``: a field holding who created it (the record's actor);
    ``norm``: how a field's text is put before comparing (an order that does not matter);
    ``optional``: fields compared only when the entity's trail gives them (records written before
    the services recorded them lack them: a participant's ``enrolled_at``, an allocation's
    ``randomized_at``)."""

    def __init__(self, table: str, entity: str, key: str | Callable[[Any], str], fields: tuple[str, ...], *,
                 trail: Mapping[str, str] | None = None, read: Mapping[str, Read] | None = None,
                 reasons: Mapping[str, tuple[str, int | None]] | None = None,
                 defaults: Mapping[str, str | None] | None = None, created: tuple[str, ...] = ("create",),
                 actor: str | None = None, norm: Mapping[str, Callable[[str | None], str | None]] | None = None,
                 optional: tuple[str, ...] = ()):
        self.table, self.entity, self.key, self.fields = table, entity, key, fields
        self.optional = frozenset(optional)
        self.trail, self.read, self.reasons = dict(trail or {}), dict(read or {}), dict(reasons or {})
        self.defaults, self.created, self.actor, self.norm = dict(defaults or {}), created, actor, dict(norm or {})
        self._by_trail: dict[str, list[str]] = defaultdict(list)
        for f in fields:
            if f not in self.reasons and f != actor:
                self._by_trail[self.trail.get(f, f)].append(f)
        self._by_reason: dict[str, list[tuple[str, int | None]]] = defaultdict(list)
        for f, (source, length) in self.reasons.items():
            self._by_reason[source].append((f, length))

    def __repr__(self) -> str:
        return f"Spec({self.table})"

    # --- the trail ---
    def expected(self, db: Session) -> dict[str, Entity]:
        """Each entity the trail names, by its id: created, deleted, and its fields' values now.
        (The one loop over every record of the entity: kept flat, the values interned, so that a
        big trail costs little time and memory.)"""
        out: dict[str, Entity] = {}
        seen: dict[str, str] = {}  # each value once: a trail repeats the same days, codes and choices
        by_trail, by_reason, created, extra = self._by_trail, self._by_reason, self.created, self.extra
        for rec in _records(db, self.entity):
            entity_id, action, fld, new, reason = rec[:5]
            e = out.get(entity_id)
            if e is None:
                e = out[entity_id] = Entity()
            if action in created and (not e.created or e.deleted):  # (an id used again after a deletion)
                self.create(e, rec)
            elif action in DELETING:
                e.deleted = True
            if fld is None:
                continue
            if new is not None:
                new = seen.setdefault(new, new)
            for f in by_trail.get(fld, ()):
                e.values[f] = new
            for f, length in by_reason.get(fld, ()):
                e.values[f] = reason[:length] if reason and length else reason
            if extra is not None:
                extra(e, rec)
        return out

    extra = None  # what a subclass does with a record besides its compared fields: extra(entity, record)

    def create(self, e: Entity, rec) -> None:
        """The entity created: every compared field none, but those a creation gives by default."""
        e.created, e.deleted = True, False
        e.values = dict.fromkeys(f for f in self.fields if f not in self.optional)
        e.values.update(self.defaults)
        if self.actor:
            e.values[self.actor] = rec.actor

    # --- the rows ---
    def key_of(self, row) -> str:
        return self.key(row) if callable(self.key) else str(getattr(row, self.key))

    def actual(self, row, lk: Lookups) -> dict[str, str | None]:
        read = self.read
        out = {}
        for f in self.fields:
            how = read.get(f)
            v = how(row, lk) if how is not None else getattr(row, f)
            conv = _AS_TEXT.get(type(v))
            out[f] = conv(v) if conv is not None else _text(v)
        return out

    def compare(self, db: Session, lk: Lookups) -> list[Difference]:
        """The rows that differ from their trail, the rows it never created, the entities it
        created whose rows are gone."""
        expected = self.expected(db)
        out: list[Difference] = []
        seen: set[str] = set()
        for row in _rows(db, self.table):
            key = self.key_of(row)
            seen.add(key)
            want = expected.get(key)
            if want is None or not want.created:
                out.append(Difference(self.table, key, "*", NO_CREATION))
            elif want.deleted:
                out.append(Difference(self.table, key, "*", STILL_THERE))
            else:
                got = self.actual(row, lk)
                if self.optional:  # (a field the trail does not give is not compared)
                    got = {f: v for f, v in got.items() if f not in self.optional or f in want.values}
                if got != want.values:
                    out.extend(self._fields(key, got, want.values))
        out.extend(Difference(self.table, key, "*", ROW_MISSING) for key, want in expected.items()
                   if want.created and not want.deleted and key not in seen)
        return out

    def _fields(self, key: str, got: dict, want: dict) -> Iterable[Difference]:
        for f in sorted(set(got) | set(want)):
            a, b, norm = got.get(f), want.get(f), self.norm.get(f)
            if norm is not None:
                a, b = norm(a), norm(b)
            if a != b:
                yield Difference(self.table, key, f, DIFFERS)


class AllocationSpec(Spec):
    """An allocation's one record (action ``randomize``, keyed by the child's study id) holds its
    arm, stratum and slot as one JSON object, and, since issue 27's review, the moment of
    randomization (``randomized_at``; compared only when the record has it)."""

    def extra(self, e: Entity, rec) -> None:
        if rec.field == "allocation":
            got = json.loads(rec.new) if rec.new else {}
            e.values.update({"participant": rec.entity_id, "arm": _text(got.get("arm")),
                             "stratum": _text(got.get("stratum")), "seq": _text(got.get("seq"))})
            if "randomized_at" in got:
                e.values["randomized_at"] = got["randomized_at"]


class AssessmentSpec(Spec):
    """An assessment's ``values`` are compared field by field: created as one JSON object,
    corrected as ``values.<field>``."""

    def extra(self, e: Entity, rec) -> None:
        if rec.field == "values":
            e.values.update({f"values.{k}": _text(v) for k, v in (json.loads(rec.new) if rec.new else {}).items()})
        elif rec.field is not None and rec.field.startswith("values."):
            e.values[rec.field] = rec.new

    def actual(self, row, lk: Lookups) -> dict[str, str | None]:
        got = super().actual(row, lk)
        got.update({f"values.{k}": _text(v) for k, v in (row.values or {}).items()})
        return got


class ChildSpec(Spec):
    """Rows the trail records inside their parent's records: a marker field whose new value is the
    row's id (an adverse event's ``report``, a user's ``token_prefix``), the row's fields in the
    same append after it; ``parent``: the field holding the parent's id."""

    def __init__(self, *args, marker: str, parent: str, **kw):
        super().__init__(*args, **kw)
        self.marker, self.parent = marker, parent

    def expected(self, db: Session) -> dict[str, Entity]:
        out: dict[str, Entity] = {}
        current: dict[str, tuple[str, str, Any]] = {}  # parent id -> (the child's id, the append's action and time)
        for rec in _records(db, self.entity):
            if rec.field == self.marker and rec.new is not None:
                e = out[rec.new] = Entity()
                self.create(e, rec)
                e.values[self.parent] = rec.entity_id
                current[rec.entity_id] = (rec.new, rec.action, rec.at)
                continue
            cur = current.get(rec.entity_id)
            if cur is not None and (cur[1], cur[2]) == (rec.action, rec.at) and rec.field in self._by_trail:
                for f in self._by_trail[rec.field]:
                    out[cur[0]].values[f] = rec.new
            self.more(out, rec)
        return out

    def more(self, out: dict[str, Entity], rec) -> None:
        """What else a parent's record says of its children."""


class TokenSpec(ChildSpec):
    """A user's API tokens: issued (``token_prefix`` with its expiry), revoked (``tokens_revoked``:
    the prefixes, comma-separated, with the reason)."""

    def more(self, out: dict[str, Entity], rec) -> None:
        if rec.field == "tokens_revoked" and rec.new:
            for prefix in rec.new.split(","):
                e = out.get(prefix)
                if e is not None:
                    e.values["revoked"], e.values["revoked_reason"] = "true", (rec.reason or "")[:200] or None


def _labels(text: str | None) -> set[str]:
    return set(text.split(",")) if text else set()


def _label(row, lk: Lookups) -> str:
    return f"{row.role}@{lk.site.get(row.site_id)}" if row.site_id is not None else row.role


class RoleAssignments:
    """Each user's roles (role_assignment rows) against the last ``roles`` the trail gives the user
    (``role`` or ``role@SITE``, comma-separated): a role held without its record is named by the
    row's id, a role the trail gives whose row is gone by the user and the role."""
    table = "role_assignment"

    def compare(self, db: Session, lk: Lookups) -> list[Difference]:
        want: dict[str, set[str]] = {}
        for rec in _records(db, "user"):
            if rec.field == "roles":
                want[rec.entity_id] = _labels(rec.new)
        out, seen = [], set()
        for row in _rows(db, self.table):
            email, label = lk.email.get(row.user_id), _label(row, lk)
            if label in want.get(email, ()):
                seen.add((email, label))
            else:
                out.append(Difference(self.table, str(row.id), "*", f"{NO_CREATION}: {label} of {email}"))
        out.extend(Difference(self.table, f"{email} {label}", "*", ROW_MISSING)
                   for email, labels in sorted(want.items()) for label in sorted(labels) if (email, label) not in seen)
        return out


GRANT_ENDS = {"countersign_grant": "approved", "reject_grant": "rejected", "withdraw_grant": "withdrawn"}


class RoleGrants:
    """The grants waiting for a manager's countersignature (role_grant rows) against the trail's
    ``pending_grant`` records of each user: asked for (none to the role), then countersigned,
    rejected or withdrawn (the role to none); each user's grants of one role in order."""
    table = "role_grant"

    def compare(self, db: Session, lk: Lookups) -> list[Difference]:
        want: dict[tuple[str, str], list[str]] = defaultdict(list)
        for rec in _records(db, "user"):
            if rec.field != "pending_grant":
                continue
            if rec.old is None and rec.new:
                want[(rec.entity_id, rec.new)].append("pending")
            elif rec.old and rec.new is None:
                states = want[(rec.entity_id, rec.old)]
                i = next((i for i, s in enumerate(states) if s == "pending"), None)
                if i is not None:
                    states[i] = GRANT_ENDS.get(rec.action, rec.action)
        got: dict[tuple[str, str], list] = defaultdict(list)
        for row in _rows(db, self.table):
            got[(lk.email.get(row.user_id), _label(row, lk))].append(row)
        out = []
        for (email, label), rows in got.items():
            states = want.get((email, label), [])
            for i, row in enumerate(rows):
                if i >= len(states):
                    out.append(Difference(self.table, str(row.id), "*", f"{NO_CREATION}: {label} of {email}"))
                elif row.status != states[i]:
                    out.append(Difference(self.table, str(row.id), "status", DIFFERS))
        for (email, label), states in sorted(want.items()):
            for i in range(len(got.get((email, label), [])), len(states)):
                out.append(Difference(self.table, f"{email} {label} #{i + 1}", "*", ROW_MISSING))
        return out


class QueryMessages:
    """Each query's thread (data_query_message rows in order) against its records: raised (the
    creation's ``text``), answered (``response``), closed and reopened (``status``, the note as the
    record's reason)."""
    table = "data_query_message"

    def compare(self, db: Session, lk: Lookups) -> list[Difference]:
        want: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
        for rec in _records(db, "query"):
            if rec.action == "create" and rec.field == "text":
                want[rec.entity_id].append(("raise", rec.new))
            elif rec.field == "response":
                want[rec.entity_id].append(("response", rec.new))
            elif rec.field == "status" and rec.action in ("close", "reopen"):
                want[rec.entity_id].append((rec.action, rec.reason))
        got: dict[str, list] = defaultdict(list)
        for row in _rows(db, self.table, "id", "query_id", "action", "text"):
            got[str(row.query_id)].append(row)
        out = []
        for query_id, rows in got.items():
            steps = want.get(query_id, [])
            for i, row in enumerate(rows):
                if i >= len(steps):
                    out.append(Difference(self.table, str(row.id), "*", f"{NO_CREATION}: step {i + 1} of query {query_id}"))
                    continue
                for f, value in zip(("action", "text"), steps[i]):
                    if getattr(row, f) != value:
                        out.append(Difference(self.table, str(row.id), f, DIFFERS))
        for query_id, steps in want.items():
            for i in range(len(got.get(query_id, [])), len(steps)):
                out.append(Difference(self.table, f"query {query_id} step {i + 1}", "*", ROW_MISSING))
        return out


class TrialStateCheck:
    """The trial's state row: the lock in force (the soft or hard lock the trail has not lifted),
    the moment of the unblinding, and the randomization hold with its time (set after a restore,
    action ``restore``; cleared by `trial randomization reconcile`, action ``reconcile``: the
    trail's ``trial_state`` records; none before the first hold)."""
    table = "trial_state"
    HOLD = ("randomization_hold", "randomization_hold_at")

    def compare(self, db: Session, lk: Lookups) -> list[Difference]:
        locks = DATA_LOCK.expected(db)
        in_force = [k for k, e in locks.items() if e.created and e.values.get("kind") in ("soft", "hard")
                    and e.values.get("lifted_at") is None]
        unblinded = None
        for rec in _records(db, "randomization"):
            if rec.field == "unblinded_at":
                unblinded = rec.new
        want = {"active_lock_id": in_force[-1] if len(in_force) == 1 else None, "unblinded_at": unblinded}
        held: dict[str, dict[str, str | None]] = defaultdict(lambda: dict.fromkeys(self.HOLD))
        for rec in _records(db, "trial_state"):
            if rec.field in self.HOLD:
                held[rec.entity_id][rec.field] = rec.new
        out = []
        for row in _rows(db, self.table, "id", "active_lock_id", "unblinded_at", *self.HOLD):
            for f, value in {**want, **held[str(row.id)]}.items():
                if _text(getattr(row, f)) != value:
                    out.append(Difference(self.table, str(row.id), f, DIFFERS))
        return out


class ConsentSpec(Spec):
    """A family's consents (issue 28). The trail names a consent ``study_id/document/version`` (a
    parent and a guardian may both sign one version, each a row of its own): each creation append
    is told apart by the signer it records; a row is named by its id, a row gone by
    ``study_id/document/version/signer``.
    Rows with ``source = "migrated"`` were written by migration 0024 from each child's consent date,
    without a record of their own: accepted when they are what the migration wrote (the parental
    consent, version 1, signed by a parent, no options recorded, on the child's consent date, which
    the participant's own records vouch for); such a row changed afterwards is named."""
    MIGRATED: ClassVar[dict[str, str | None]] = {"document": "parental_consent", "version": "1", "signer": "parent",
                                                 "options": None}

    def expected(self, db: Session) -> dict[str, Entity]:
        appends: dict[tuple[str, Any], list] = {}  # (entity id, time) of each creation -> its records
        later: list = []  # records after a creation (none are written today): applied to every signer's row
        for rec in _records(db, self.entity):
            if rec.action in self.created:
                appends.setdefault((rec.entity_id, rec.at), []).append(rec)
            else:
                later.append(rec)
        out: dict[str, Entity] = {}
        for (entity_id, _at), recs in appends.items():
            signer = next((r.new for r in recs if r.field == "signer"), None)
            e = out[f"{entity_id}/{signer}"] = Entity()
            self.create(e, recs[0])
            e.values["participant"] = entity_id.split("/", 1)[0]
            for r in recs:
                for f in self._by_trail.get(r.field, ()):
                    e.values[f] = r.new
        for rec in later:
            for key, e in out.items():
                if key.rsplit("/", 1)[0] != rec.entity_id:
                    continue
                if rec.action in DELETING:
                    e.deleted = True
                for f in self._by_trail.get(rec.field, ()):
                    e.values[f] = rec.new
        return out

    def compare(self, db: Session, lk: Lookups) -> list[Difference]:
        """As :meth:`Spec.compare`, a row named by its id (a row gone by the trail's name)."""
        expected = self.expected(db)
        consent_date = dict(_rows(db, "participant", "id", "consent_date").all())
        out: list[Difference] = []
        seen: set[str] = set()
        for row in _rows(db, self.table):
            rid = self.key_of(row)
            key = f"{lk.study_id.get(row.participant_id)}/{row.document}/{row.version}/{row.signer}"
            seen.add(key)
            want = expected.get(key)
            if want is None and row.source == "migrated":
                got = self.actual(row, lk)
                wrote = {**{f: _text(v) for f, v in self.MIGRATED.items()},
                         "signed_on": _text(consent_date.get(row.participant_id))}
                out.extend(Difference(self.table, rid, f, f"{DIFFERS}: not what migration 0024 wrote")
                           for f in sorted(wrote) if got[f] != wrote[f])
            elif want is None or not want.created:
                out.append(Difference(self.table, rid, "*", NO_CREATION))
            elif want.deleted:
                out.append(Difference(self.table, rid, "*", STILL_THERE))
            else:
                got = self.actual(row, lk)
                if got != want.values:
                    out.extend(self._fields(rid, got, want.values))
        out.extend(Difference(self.table, key, "*", ROW_MISSING) for key, want in expected.items()
                   if want.created and not want.deleted and key not in seen)
        return out


def _target(row, lk: Lookups) -> str:
    """What a query or a verification mark is about, as the trail names it (as
    trial.dataquality.service.target_text writes it)."""
    return (row.kind + (f" {row.target_id}" if row.target_id is not None else "")
            + (f", field {row.field}" if getattr(row, "field", None) else ""))


CHILD = {"participant": _child}

DATA_LOCK = Spec("data_lock", "data_lock", "id", ("kind", "version", "signature", "parent_lock_id", "lifted_at",
                                                 "lift_reason", "accepted_open_queries"),
                 read={"signature": lambda r, lk: r.signature_id}, reasons={"lift_reason": ("lifted_at", None)})

TABLES = (
    # the child's record
    Spec("screening", "screening", "id", ("site", "log_number", "screened_on", "answers", "declined", "other_reason",
                                          "outcome"), read={"site": lambda r, lk: lk.site.get(r.site_id)}),
    Spec("participant", "participant", "study_id", ("site", "screening_id", "consent_date", "date_of_birth", "sex",
                                                    "strata", "enrolled_at"),
         read={"site": lambda r, lk: lk.site.get(r.site_id)}, optional=("enrolled_at",)),
    AllocationSpec("allocation", "allocation", "study_id", ("participant", "arm", "stratum", "seq", "randomized_at"),
                   read={**CHILD, "stratum": lambda r, lk: lk.stratum.get(r.stratum_id)},
                   created=("randomize", "reconcile"),  # (reconcile: replayed from the allocation journal)
                   optional=("randomized_at",)),
    Spec("allocation_reservation", "allocation_reservation", "study_id", ("site", "stratum", "seq", "arm",
                                                                          "screening_log_number", "used_at"),
         read={"site": lambda r, lk: lk.site.get(r.site_id), "stratum": lambda r, lk: lk.stratum.get(r.stratum_id)},
         created=("reserve",)),
    AssessmentSpec("assessment", "assessment", "id", ("participant", "visit", "instrument", "performed_on",
                                                      "out_of_window", "allocation_guess", "guess_confidence"),
                   read=CHILD),
    Spec("status_event", "status_event", "id", ("participant", "type", "on", "reason"), read=CHILD),
    Spec("deviation", "deviation", "id", ("participant", "on", "category", "description"), read=CHILD),
    Spec("blinding_break", "blinding_break", "id", ("participant", "assessor", "reported_on", "description"),
         read={**CHILD, "assessor": lambda r, lk: lk.email.get(r.assessor_id)}),
    Spec("therapy_session", "therapy_session", "id", ("participant", "held_on", "attendance", "minutes", "techniques",
                                                      "engagement", "note", "outside_course", "present", "goals"),
         read=CHILD),
    Spec("counselling_session", "counselling_session", "id", ("participant", "number", "held_on", "attended", "note"),
         read=CHILD),
    Spec("child_goal", "child_goal", "id", ("participant", "goal", "description", "set_on", "active"), read=CHILD,
         defaults={"active": "true"}),
    ConsentSpec("consent", "consent", "id", ("participant", "document", "version", "language", "signed_on", "signer",
                                             "options", "source"), read=CHILD),
    Spec("consent_withdrawal", "consent_withdrawal", "id", ("participant", "on", "scope", "data_use", "text"),
         read=CHILD),
    Spec("adverse_event", "adverse_event", "id", ("participant", "term", "onset", "severity", "serious", "seriousness",
                                                  "relatedness", "expectedness", "outcome", "resolved_on",
                                                  "description", "acknowledged_at"), read=CHILD),
    Spec("adverse_event_follow_up", "adverse_event_follow_up", "id", ("adverse_event", "on", "outcome", "resolved_on",
                                                                      "text"),
         read={"adverse_event": lambda r, lk: r.adverse_event_id}),
    ChildSpec("adverse_event_report", "adverse_event", "id", ("adverse_event", "reported_to", "reported_at",
                                                              "reference"),
              read={"adverse_event": lambda r, lk: r.adverse_event_id}, marker="report", parent="adverse_event"),
    # data management and fidelity
    Spec("data_query", "query", "id", ("participant", "on", "origin", "check", "text", "status", "raised_by"),
         read={**CHILD, "on": _target, "check": lambda r, lk: r.check_key}, defaults={"status": "open"},
         actor="raised_by"),
    QueryMessages(),
    Spec("source_verification", "source_verification", "id", ("participant", "kind", "id", "verified", "verified_by",
                                                               "cleared_reason"),
         read={**CHILD, "id": lambda r, lk: r.target_id,
               "verified": lambda r, lk: r.current_key is not None and r.cleared_at is None},
         reasons={"cleared_reason": ("verified", 300)}, defaults={"verified": "true"}, actor="verified_by"),
    Spec("fidelity_draw", "fidelity_draw", "id", ("therapist", "seed", "share", "population", "population_sha256",
                                                  "size", "sample"),
         read={"therapist": lambda r, lk: lk.email.get(r.therapist_id), "population": lambda r, lk: len(r.population),
               "sample": lambda r, lk: sorted(lk.sample.get(r.id, []))}, norm={"sample": _sorted_list}),
    Spec("fidelity_rating", "fidelity_rating", "id", ("session", "scores", "mean", "adherent", "note"),
         read={"session": lambda r, lk: r.session_id}),
    # the trial's records
    Spec("site", "site", "code", ("code", "name", "country", "timezone", "target", "is_open", "languages"),
         optional=("languages",)),
    Spec("protocol_version", "protocol_version", "version", ("trial_key", "sha256", "source"),
         trail={"source": "sha256"}, read={"source": lambda r, lk: _sha256(r.source)}),
    Spec("randomization_design", "randomization", "id", ("method", "protocol_version", "commitment", "unblinded_at",
                                                         "revealed_seed")),
    DATA_LOCK,
    Spec("lock_bundle", "lock_bundle", lambda r: f"{r.lock_id}/{r.variant}", ("sha256", "manifest_sha256", "content"),
         trail={"content": "sha256"}, read={"content": lambda r, lk: _sha256(r.content)}),
    Spec("unblinding_request", "unblinding_request", "id", ("lock_id", "status", "countersigner_role", "signature"),
         read={"signature": lambda r, lk: r.signature_id}),
    TrialStateCheck(),
    Spec("signature", "signature", "id", ("printed_name", "email", "meaning", "purpose", "signed_at"), actor="email"),
    Spec("access_review", "access_review", "id", ("signature_id", "accounts", "inactive", "accounts_sha256"),
         trail={"accounts_sha256": "accounts_sha256"},
         read={"accounts": lambda r, lk: len(r.accounts), "inactive": lambda r, lk: sum(a["inactive"] for a in r.accounts),
               "accounts_sha256": lambda r, lk: _sha256(_text(r.accounts))}),
    Spec("credential", "credential", "id", ("user", "kind", "number", "issuer", "valid_from", "valid_to", "revoked_at",
                                            "revoked_reason"),
         read={"user": lambda r, lk: lk.email.get(r.user_id)}, reasons={"revoked_reason": ("revoked_at", 500)}),
    # who may do what
    Spec("user_account", "user", "email", ("name", "active", "language", "weekly_digest", "mfa_enrolled_at"),
         defaults={"weekly_digest": "true"}),
    RoleAssignments(),
    RoleGrants(),
    TokenSpec("api_token", "user", "prefix", ("user", "expires_at", "revoked", "revoked_reason"),
              trail={"expires_at": "token_expires_at"},
              read={"user": lambda r, lk: lk.email.get(r.user_id), "revoked": lambda r, lk: r.revoked_at is not None},
              defaults={"revoked": "false"}, marker="token_prefix", parent="user"),
)


def compare_table(db: Session, spec, lk: Lookups | None = None) -> list[Difference]:
    """The rows of one table that differ from their trail (see :meth:`Spec.compare`)."""
    return spec.compare(db, lk or Lookups(db))


def compare(db: Session) -> list[Difference]:
    """Every audited table against the trail."""
    lk = Lookups(db)
    return [d for spec in TABLES for d in spec.compare(db, lk)]
