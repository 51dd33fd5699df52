"""What a query or a verification mark can be about: a participant's own record, its screening,
one of its assessments (optionally one field), sessions, status events and adverse events."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from trial.catalogue import N_, Label, Msg, term
from trial.course.models import TherapySession
from trial.dataquality.models import ANSWERED_BY, QUERY_KINDS
from trial.dataquality.service import ARM_REVEALING_KINDS  # what a blinded assessor must never learn exists
from trial.errors import NotFound, ValidationError
from trial.participants.models import Assessment, Participant, Screening, StatusEvent
from trial.protocol.service import current as current_protocol
from trial.safety.models import AdverseEvent
from trial.scope import can_see_arm
from trial.validation import refusal

MODELS = {"screening": Screening, "assessment": Assessment, "session": TherapySession, "event": StatusEvent,
          "adverse_event": AdverseEvent}


@dataclass
class Target:
    kind: str
    id: int | None
    field: str | None
    answer_role: str
    assessor_visible: bool
    label: str
    visit: str | None = None
    instrument: str | None = None


# what a record of each kind is called, with its number (the participant's record has none)
KIND_WORDS = {"participant": N_("Participant"), "screening": N_("Screening %(id)s"), "assessment": N_("Assessment %(id)s"),
              "session": N_("Session %(id)s"), "event": N_("Status event %(id)s"),
              "adverse_event": N_("Adverse event %(id)s")}


def describe(protocol: dict, kind: str, target_id: int | None, instrument: str | None = None, visit: str | None = None,
             field: str | None = None) -> Msg:
    """What a query or a verification mark is about, in the protocol's and the catalogue's words
    (each reader's language on a page): "ADOS-2 (blinded assessor) at 5 months (primary
    endpoint), Calibrated severity score", "Session 632" — never a key."""
    if kind != "assessment" or not instrument:
        return Msg(KIND_WORDS[kind], id=target_id) if kind != "participant" else Msg(KIND_WORDS[kind])
    ins = next((i for i in protocol["instruments"] if i["key"] == instrument), {"key": instrument, "label": instrument,
                                                                                "fields": []})
    v = next((v for v in protocol["visits"] if v["key"] == visit), {"key": visit, "label": visit})
    form, when = Label("instrument", ins["key"], ins["label"]), Label("visit", v["key"], v["label"])
    if not field:
        return Msg(N_("%(form)s at %(visit)s"), form=form, visit=when)
    f = next((f for f in ins["fields"] if f["key"] == field), None)
    words = (Label("field", f"{ins['key']}.{field}", f["label"]) if f is not None
             else Msg(N_("the date performed")) if field == "performed_on" else field)
    return Msg(N_("%(form)s at %(visit)s, %(field)s"), form=form, visit=when, field=words)


def resolve(db: Session, actor, p: Participant, on, allow_field: bool = True) -> Target:
    """Check ``on`` = {kind, id?, field?} against the participant's records; 400 naming the part
    at fault, 404 for a record that is not the participant's."""
    if not isinstance(on, dict):
        raise ValidationError(N_("on must be an object {kind, id?, field?}"), {"on": N_("must be an object")})
    kind = on.get("kind")
    if kind not in QUERY_KINDS:
        raise ValidationError(Msg(N_("%(field)s must be one of: %(allowed)s."), field="on.kind", allowed=", ".join(QUERY_KINDS)),
                              {"on.kind": N_("unknown kind")})
    target_id = on.get("id")
    field = on.get("field") if allow_field else None
    errors = {}
    if kind == "participant":
        target_id = None
    elif kind == "screening":
        target_id = p.screening_id if target_id is None else target_id
    elif isinstance(target_id, bool) or not isinstance(target_id, int) or target_id < 1:
        errors["on.id"] = Msg(N_("is required: the id of the record (%(kind)s)"), kind=term("query_kind", kind))
    if field is not None and (not isinstance(field, str) or not field.strip() or len(field) > 64):
        errors["on.field"] = N_("must be a field name")
    if errors:
        raise refusal(N_("The query's record is not valid"), errors)
    if kind in ARM_REVEALING_KINDS and not can_see_arm(db, actor, p.site_id):
        raise NotFound(Msg(N_("No such record (%(kind)s) of %(study_id)s."), kind=term("query_kind", kind), study_id=p.study_id))
    row = db.get(MODELS[kind], target_id) if kind != "participant" else p
    owner = row.id if kind == "screening" and row is not None else None
    if row is None or (kind == "screening" and owner != p.screening_id) or (
            kind not in ("participant", "screening") and row.participant_id != p.id):
        # the id is not repeated: another site's record and one that does not exist answer alike
        raise NotFound(Msg(N_("No such record (%(kind)s) of %(study_id)s."), kind=term("query_kind", kind),
                           study_id=p.study_id))
    protocol = current_protocol(db).content
    if kind == "assessment":
        ins = next(i for i in protocol["instruments"] if i["key"] == row.instrument)
        if field is not None and field not in {f["key"] for f in ins["fields"]} | {"performed_on"}:
            form = Label("instrument", ins["key"], ins["label"])
            raise ValidationError(Msg(N_("%(form)s has no field “%(field)s”."), form=form, field=field),
                                  {"on.field": Msg(N_("is not a field of %(form)s"), form=form)})
        return Target(kind, row.id, field, "assessor" if ins["blinded"] else "coordinator", bool(ins["blinded"]),
                      describe(protocol, kind, row.id, row.instrument, row.visit, field), row.visit, row.instrument)
    label = describe(protocol, kind, target_id)
    if field:  # a field of another kind of record: named as the client named it (no protocol word for it)
        label = Msg(N_("%(record)s, %(field)s"), record=label, field=field)
    return Target(kind, target_id, field, ANSWERED_BY[kind], False, label)
