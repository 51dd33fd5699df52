"""JSON Schema pieces of the OpenAPI document, shared by the API modules. They state what the
services accept and answer: a constraint here is one the service enforces (a required text may
not be empty: ``minLength: 1``), and a field that can be null says so."""
from __future__ import annotations

from trial.validation import MAX_ID

S = {"type": "string"}
NS = {"type": "string", "nullable": True}
I = {"type": "integer"}
NI = {"type": "integer", "nullable": True}
N = {"type": "number"}
B = {"type": "boolean"}
D = {"type": "string", "format": "date"}
ND = {"type": "string", "format": "date", "nullable": True}
DT = {"type": "string", "format": "date-time"}
NDT = {"type": "string", "format": "date-time", "nullable": True}
ID = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
COUNT = {"type": "integer", "minimum": 0}
ERR = {"$ref": "#/components/schemas/Error"}
OBJ = {"type": "object"}


def text(max_len: int, required: bool = True) -> dict:
    """A text field the service refuses when empty (``required``) or longer than ``max_len``."""
    return {"type": "string", "minLength": 1 if required else 0, "maxLength": max_len}


def enum(*values: str) -> dict:
    return {"type": "string", "enum": list(values)}


def obj(required: list[str], **properties) -> dict:
    return {"type": "object", "required": required, "properties": properties}


def array(items: dict) -> dict:
    return {"type": "array", "items": items}


def err(description: str) -> dict:
    return {"description": description, "schema": ERR}


def ok(description: str, schema: dict) -> dict:
    return {"description": description, "schema": schema}


def media(description: str, content_type: str) -> dict:
    """A response that is not JSON (a PDF, an SVG, a CSV, a zip)."""
    return {"description": description, "content_type": content_type, "schema": {"type": "string", "format": "binary"}}


SITE_QUERY = [{"name": "site", "in": "query", "required": False, "schema": S, "description": "a site code, e.g. AT01"}]

EVENT = obj(["type", "on"], type=S, on=D)
PARTICIPANT = obj(
    ["study_id", "site", "status", "consent_date", "date_of_birth", "sex", "strata", "enrolled_at",
     "baseline_primary_recorded", "randomized_on", "events"],
    study_id=S, site=S, status=S, consent_date=D, date_of_birth=D, sex=enum("female", "male"),
    strata={"type": "object", "additionalProperties": S}, enrolled_at=DT, baseline_primary_recorded=B,
    randomized_on=ND, events=array(EVENT),
    arm={"type": "string", "description": "only for roles that may see the allocation"},
    arm_label={"type": "string", "description": "only for roles that may see the allocation"})

VISIT = obj(["visit", "label", "primary", "instruments_done", "instruments_expected", "status"],
            visit=S, label=S, primary=B, instruments_done=array(S), instruments_expected=array(S),
            status=enum("done", "done_out_of_window", "due", "overdue", "upcoming", "missing", "not_expected",
                        "not_yet_randomized"),
            window_start=D, target=D, window_end=D)
WORKLIST_ITEM = {"allOf": [VISIT, obj(["study_id"], study_id=S, warning=S)]}

REASONS = {"type": "object", "additionalProperties": I}
NULLABLE_BOX = obj(["total", "reasons"], total=NI, reasons=REASONS)
BOX = obj(["total", "reasons"], total=I, reasons=REASONS)
ARM_COUNTS = obj(["label", "allocated", "received_allocated_intervention", "did_not_receive_allocated_intervention",
                  "lost_to_follow_up", "discontinued_intervention", "analysed", "excluded_from_analysis"],
                 label=S, allocated=I, received_allocated_intervention=NI,
                 did_not_receive_allocated_intervention=NULLABLE_BOX, lost_to_follow_up=BOX,
                 discontinued_intervention=NULLABLE_BOX, analysed=I, excluded_from_analysis=BOX)
CONSORT = obj(["assessed_for_eligibility", "excluded", "randomized", "arms"],
              assessed_for_eligibility=I,
              excluded=obj(["total", "not_meeting_inclusion_criteria", "declined_to_participate", "other_reasons"],
                           total=I, not_meeting_inclusion_criteria=I, declined_to_participate=I, other_reasons=I),
              randomized=I,
              arms={"type": "object", "additionalProperties": ARM_COUNTS,
                    "description": "by arm key; for a blinded reader the one entry 'all', pooled over the arms"},
              withheld_while_blinded=array(S))
