"""The data against the trail (`trial audit verify --data`): the audit records of each clinical
table replayed to the value every field should have now, compared with the rows as they are. A
value changed without its audit record (a plain UPDATE by whoever can write the database) is named
by table, id and field. Values are compared as the trail stores them (``_text``: dates in ISO
form, JSON sorted and compact, booleans ``true``/``false``, None as no value)."""
from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import MetaData, Table, select
from sqlalchemy.orm import Session

from trial.audit.models import AuditRecord
from trial.audit.service import _text
from trial.db import Base


@dataclass(frozen=True)
class Spec:
    """A clinical table: the trail's entity name for its rows, the column the records' entity_id
    names, and the fields compared (columns recorded under their own names)."""
    table: str
    entity: str
    key: str
    fields: tuple[str, ...]


TABLES = (
    Spec("screening", "screening", "id", ("log_number", "screened_on", "answers", "declined", "other_reason", "outcome")),
    Spec("participant", "participant", "study_id", ("consent_date", "date_of_birth", "sex", "strata")),
    Spec("allocation", "allocation", "study_id", ("arm", "seq")),
    Spec("assessment", "assessment", "id", ("performed_on", "values", "out_of_window", "allocation_guess",
                                            "guess_confidence")),
    Spec("therapy_session", "therapy_session", "id", ("held_on", "attendance", "minutes", "techniques", "engagement",
                                                      "note", "outside_course", "present", "goals")),
    Spec("status_event", "status_event", "id", ("type", "on", "reason")),
    Spec("adverse_event", "adverse_event", "id", ("term", "onset", "severity", "serious", "relatedness",
                                                  "expectedness", "outcome", "resolved_on", "description",
                                                  "acknowledged_at")),
)


@dataclass(frozen=True)
class Difference:
    table: str
    id: str
    field: str
    problem: str

    def __str__(self) -> str:
        return f"{self.table} {self.id} {self.field}: {self.problem}"


def expected_values(db: Session, spec: Spec) -> dict[str, dict[str, str | None]]:
    """What the trail says each row's fields hold now, by entity id, as text."""
    out: dict[str, dict[str, str | None]] = {}
    t = AuditRecord.__table__
    q = (select(t.c.entity_id, t.c.field, t.c.new).where(t.c.entity == spec.entity, t.c.field.is_not(None))
         .order_by(t.c.seq).execution_options(yield_per=5000))
    for entity_id, fld, new in db.execute(q):
        _apply(out.setdefault(entity_id, {}), spec, fld, new)
    return out


def _apply(state: dict[str, str | None], spec: Spec, fld: str, new: str | None) -> None:
    """One record replayed onto a row's state: an assessment's ``values`` are kept field by field
    (created as one JSON object, corrected as ``values.<field>``); an allocation's one record holds
    its arm and slot."""
    if spec.entity == "allocation" and fld == "allocation":
        got = json.loads(new) if new else {}
        state.update({"arm": _text(got.get("arm")), "seq": _text(got.get("seq"))})
    elif fld == "values":
        state.update({f"values.{k}": _text(v) for k, v in (json.loads(new) if new else {}).items()})
    elif fld.startswith("values.") or fld in spec.fields:
        state[fld] = new


def _actual(row, spec: Spec) -> dict[str, str | None]:
    got = {f: _text(getattr(row, f)) for f in spec.fields if f != "values"}
    if "values" in spec.fields:
        got.update({f"values.{k}": _text(v) for k, v in (row.values or {}).items()})
    return got


def _table(db: Session, name: str) -> Table:
    """The table with its column types (dates, JSON, booleans read as the services wrote them)."""
    known = Base.metadata.tables.get(name)
    return known if known is not None else Table(name, MetaData(), autoload_with=db.get_bind())


def compare_table(db: Session, spec: Spec) -> list[Difference]:
    """The rows of one table that differ from their trail (a row with no trail at all included)."""
    expected = expected_values(db, spec)
    t = _table(db, spec.table)
    out = []
    for row in db.execute(select(t).order_by(t.c[spec.key]).execution_options(yield_per=5000)):
        key = str(getattr(row, spec.key))
        want = expected.get(key)
        if want is None:
            out.append(Difference(spec.table, key, "*", "the row has no audit record"))
            continue
        got = _actual(row, spec)
        for fld in sorted(set(got) | {f for f in want if f.startswith("values.")}):
            if got.get(fld) != want.get(fld):
                out.append(Difference(spec.table, key, fld, "differs from its audit trail (changed without a record)"))
    return out


def compare(db: Session) -> list[Difference]:
    """Every clinical table against the trail."""
    return [d for spec in TABLES for d in compare_table(db, spec)]
