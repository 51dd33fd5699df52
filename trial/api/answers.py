"""The API's answers, declared once: each a model from which the OpenAPI document's response
schema is generated (schemathesis checks every answer against it). A field that may be null says
so (``X | None``); a field that some callers do not get is optional (``= ABSENT``)."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from trial.course.models import ATTENDANCE, PRESENT
from trial.dataquality.models import QUERY_KINDS, QUERY_STATES
from trial.participants.models import SEXES
from trial.safety.models import EXPECTEDNESS, OUTCOMES, RELATEDNESS, REPORTED_TO, SERIOUSNESS, SEVERITIES
from trial.validation import MAX_ID

Date = Annotated[str, WithJsonSchema({"type": "string", "format": "date"})]
Moment = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
Count = Annotated[int, Field(ge=0)]
Object = dict[str, Any]
ABSENT: Any = Field(None, json_schema_extra={"x-absent": True})  # left out of the answer, never null


def one_of(*values: str) -> Any:
    return Literal[values]  # type: ignore[valid-type]


class Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDetail(Answer):
    code: str
    message: str
    fields: dict[str, str] = Field(description="each bad field and why; {} when no single field is at fault")


class Error(Answer):
    """Every error: ``{error: {code, message, fields}}``."""
    error: ErrorDetail


# --- platform -----------------------------------------------------------------------------------

class RoleSite(Answer):
    role: str
    site: str | None


class Me(Answer):
    email: str
    name: str
    roles: list[str]
    sites: list[str]
    role_sites: list[RoleSite] = ABSENT


class Site(Answer):
    code: str
    name: str
    country: str | None
    target: Count
    timezone: str = ABSENT
    open: bool = ABSENT
    languages: list[str] = Field(None, description="the site's languages, the one it consents in by default first; "
                                 "[] when none is set (English)", json_schema_extra={"x-absent": True})


class Protocol(Answer):
    version: Count
    arms: list[Object]
    randomization: Object
    criteria: list[Object]
    visits: list[Object]
    instruments: list[Object]
    primary_outcome: Object


# --- participants -------------------------------------------------------------------------------

class Event(Answer):
    type: str
    on: Date


class Participant(Answer):
    study_id: str
    site: str
    status: str
    consent_date: Date
    date_of_birth: Date
    sex: one_of(*SEXES)
    strata: dict[str, str]
    enrolled_at: Moment
    baseline_primary_recorded: bool
    randomized_on: Date | None
    events: list[Event]
    arm: str = Field(None, description="only for roles that may see the allocation", json_schema_extra={"x-absent": True})
    arm_label: str = Field(None, description="only for roles that may see the allocation",
                           json_schema_extra={"x-absent": True})


class ScreeningResult(Answer):
    id: Id
    outcome: one_of("eligible", "not_eligible", "declined", "other")
    failed_criteria: list[str]


class Enrolled(Answer):
    study_id: str
    site: str
    status: str


class AssessmentRecorded(Answer):
    id: Id
    out_of_window: bool
    warning: str = ABSENT


class NotDoneRecorded(Answer):
    id: Id
    study_id: str
    visit: str
    instrument: str
    reason: str
    text: str | None
    recorded_at: Moment


class RandomizationErrorRecord(Answer):
    id: Id
    study_id: str
    kind: one_of("wrong_stratum", "ineligible", "randomized_twice")
    field: str | None
    as_randomized: str | None
    correct_value: str | None
    text: str
    recorded_by: str | None
    recorded_at: Moment


class Randomized(Answer):
    study_id: str
    arm: str
    arm_label: str
    randomized_at: Moment


class Visit(Answer):
    visit: str
    label: str
    primary: bool
    instruments_done: list[str]
    instruments_expected: list[str]
    instruments_not_done: list[str]
    status: one_of("done", "done_out_of_window", "due", "overdue", "upcoming", "missing", "not_expected",
                   "not_yet_randomized", "not_done")
    window_start: Date = ABSENT
    target: Date = ABSENT
    window_end: Date = ABSENT


class WorklistItem(Visit):
    study_id: str
    warning: str = ABSENT


class Schedule(Answer):
    study_id: str
    visits: list[Visit]
    warning: str = ABSENT


# --- the course ---------------------------------------------------------------------------------

class Recorded(Answer):
    id: Id


class Signoff(Answer):
    milestone: str
    milestone_label: str
    signed_by: str
    signed_by_name: str
    signed_at: Moment
    status: str
    meaning: str
    invalidated_by_change: str = ABSENT
    invalidated_at: Moment = ABSENT


class SessionRecorded(Recorded):
    outside_course: bool
    warning: str = ABSENT


class CounsellingRecorded(Recorded):
    number: Id


class Session(Answer):
    id: Id
    held_on: Date
    attendance: one_of(*ATTENDANCE)
    minutes: int | None
    techniques: list[str]
    engagement: int | None
    note: str | None
    outside_course: bool
    present: one_of(*PRESENT) | None
    goals: list[str]


class CourseGoal(Answer):
    id: Id
    goal: str
    description: str | None
    active: bool
    set_on: Date
    sessions: Count


class Dose(Answer):
    planned: int | None
    attended: int | None
    logged: int | None
    dose: float | None
    course_start: Date
    course_end: Date


class CounsellingSession(Answer):
    number: Id
    held_on: Date
    attended: bool


class Course(Answer):
    study_id: str
    arm: str
    sessions: list[Session]
    counselling: list[CounsellingSession]
    dose: Dose = ABSENT
    goals: list[CourseGoal] = ABSENT


class Adherence(Answer):
    arm: str
    label: str
    participants: Count
    sessions_attended: Count
    mean_dose: float | None
    received_minimum: int | None


class AssessmentCorrected(Answer):
    id: Id
    values: Object


class Notification(Answer):
    ref: str = Field(description="the notification's random reference (POST /notifications/{ref}/dismiss)")
    message: str
    created_at: Moment


class Dismissed(Answer):
    ref: str


# --- data management ----------------------------------------------------------------------------

class QueryOn(Answer):
    kind: one_of(*QUERY_KINDS)
    id: int | None = ABSENT
    field: str | None = ABSENT
    visit: str | None = ABSENT
    instrument: str | None = ABSENT


class QueryStep(Answer):
    action: one_of("raise", "response", "close", "reopen")
    by: str
    at: Moment
    text: str | None
    correction: Object = ABSENT


class Query(Answer):
    id: Id
    number: int = Field(description="the query's number at its site: what users are shown (never the id)")
    ref: str = Field(description="what users are shown of the query: its site and number there, e.g. AT01-Q17")
    study_id: str
    site: str
    on: QueryOn
    text: str
    status: one_of(*QUERY_STATES)
    origin: one_of("manual", "check")
    answer_role: str = ABSENT
    raised_by: str
    raised_at: Moment
    updated_at: Moment = ABSENT
    thread: list[QueryStep]


class QueryState(Answer):
    id: Id
    status: one_of(*QUERY_STATES)
    number: int = Field(description="the query's number at its site: what users are shown (never the id)")


class FollowUp(Answer):
    id: Id
    on: Date
    outcome: one_of(*OUTCOMES)
    resolved_on: Date | None
    text: str


class SaeReport(Answer):
    """A serious adverse event reported onwards: to whom, when (UTC), the recipient's reference;
    who recorded it (their e-mail; null for the command line) and when."""
    id: Id
    reported_to: one_of(*REPORTED_TO)
    reported_at: Moment
    reference: str
    recorded_by: str | None
    recorded_at: Moment


class AdverseEvent(Answer):
    id: Id
    study_id: str
    site: str
    term: str
    onset: Date
    severity: one_of(*SEVERITIES)
    serious: bool
    seriousness: list[one_of(*SERIOUSNESS)]
    relatedness: one_of(*RELATEDNESS)
    expectedness: one_of(*EXPECTEDNESS) | None = ABSENT
    outcome: one_of(*OUTCOMES)
    resolved_on: Date | None
    description: str | None = ABSENT
    reported_at: Moment = ABSENT
    report_due: Moment | None
    acknowledged_at: Moment | None
    clock: str | None = ABSENT
    follow_ups: list[FollowUp]
    reports: list[SaeReport] = Field(description="the reports onwards, the first one the acknowledgement's")


class AdverseEventRecorded(Answer):
    id: Id
    serious: bool
    report_due: Moment | None = ABSENT


class Acknowledged(Answer):
    id: Id
    acknowledged_at: Moment
    report: SaeReport


# --- the intervention as delivered -----------------------------------------------------------------

class Credential(Answer):
    id: Id
    kind: str
    number: str
    issuer: str | None
    valid_from: Date
    valid_to: Date
    state: one_of("valid", "expiring", "expired", "not_yet_valid", "revoked")
    days_left: int


class Therapist(Answer):
    id: Id
    email: str
    name: str
    sites: list[str]
    credentials: list[Credential]
    credentialed: bool
    expires_on: Date | None
    warning: bool


class Goal(Answer):
    id: Id
    goal: str
    description: str | None
    active: bool
    set_on: Date


class Draw(Answer):
    id: Id
    therapist: str
    seed: str
    share: float
    population: list[Id]
    population_sha256: str
    size: Count
    sample: list[Id]
    drawn_at: Moment


class TherapistFidelity(Answer):
    therapist: str
    name: str = ABSENT
    site: str
    sampled: Count
    rated: Count
    adherent: Count
    mean_score: float | None = ABSENT
    share_adherent: float | None = ABSENT


class MonthFidelity(Answer):
    month: str
    rated: Count
    adherent: Count


class Fidelity(Answer):
    sampled: Count
    rated: Count
    adherent: Count = ABSENT
    threshold: float = ABSENT
    share: float = ABSENT
    by_therapist: list[TherapistFidelity]
    by_month: list[MonthFidelity] = ABSENT


class FidelityDue(Answer):
    session: Id
    held_on: Date
    minutes: int | None = ABSENT
    study_id: str
    site: str
    therapist: str | None = ABSENT


class Rated(Answer):
    id: Id
    mean: float
    adherent: bool


class DeliveredTable(Answer):
    arms: list[str]
    columns: list[str]
    rows: list[list[str]]
    definition: str


# --- grants -------------------------------------------------------------------------------------

GRANT_STATES = ("pending", "approved", "rejected", "withdrawn")


class Grant(Answer):
    id: Id
    user: str
    role: str
    site: str | None
    status: one_of(*GRANT_STATES)
    reason: str | None
    requested_by: str
    requested_at: Moment
    decided_by: str | None
    decided_at: Moment | None
    decision_note: str | None
    holds: str
    name: str | None = Field(description="the printed name of the account that gets the role")
    site_name: str | None = Field(description="the name of the site where it gets the role (null: trial-wide)")


class Decided(Answer):
    id: Id
    status: one_of(*GRANT_STATES)


# --- locks, CONSORT and reports -----------------------------------------------------------------

BuildStatus = Annotated[Literal["building", "ready", "failed"] | None,
                        Field(description="a hard lock's bundles (null for a soft lock)")]


class LockInfo(Answer):
    id: Id
    kind: one_of("soft", "hard", "addendum")
    version: int | None
    created_at: Moment
    signed_by: str
    meaning: str
    lifted_at: Moment | None
    lift_reason: str | None
    manifest_sha256: str | None
    accepted_open_queries: list[Id]
    status: BuildStatus
    progress: Annotated[float, Field(ge=0, le=1)] | None
    parent_lock_id: Id | None = Field(description="an addendum, and the hard lock that closes it: the hard lock it "
                                                  "corrects after the unblinding")


class Locked(Answer):
    id: Id
    kind: one_of("soft", "hard")
    version: int | None
    created_at: Moment
    status: BuildStatus


class Lifted(Answer):
    id: Id
    kind: one_of("soft", "hard")
    lifted_at: Moment


UNBLINDING_STATES = ("awaiting_countersignature", "countersigned", "withdrawn")


class UnblindingAsked(Answer):
    id: Id
    status: one_of("awaiting_countersignature")
    countersigner_role: str


class UnblindingCountersigned(Answer):
    id: Id
    status: one_of("countersigned")
    unblinded_at: Moment
    commitment: str


class UnblindingWithdrawn(Answer):
    id: Id
    status: one_of("withdrawn")


class UnblindingRequestInfo(Answer):
    id: Id
    status: one_of(*UNBLINDING_STATES)
    countersigner_role: str
    lock_id: Id
    requested_by: str
    requested_at: Moment
    meaning: str
    countersigned_by: str | None
    countersigned_at: Moment | None
    countersignature_meaning: str | None


class AddendumOpened(Answer):
    id: Id
    kind: one_of("addendum")
    parent_lock_id: Id
    created_at: Moment


class Box(Answer):
    total: int
    reasons: dict[str, int]


class NullableBox(Answer):
    total: int | None
    reasons: dict[str, int]


class ArmCounts(Answer):
    label: str
    allocated: int
    received_allocated_intervention: int | None
    did_not_receive_allocated_intervention: NullableBox
    lost_to_follow_up: Box
    discontinued_intervention: NullableBox
    analysed: int
    excluded_from_analysis: Box
    withdrawals_of_consent: dict[str, int | None] = Field(
        description="withdrawals of consent by scope (issue 28), each child once by its widest: "
                    "discontinued_intervention (null while blinded), withdrew_from_follow_up, withdrew_completely")


class Excluded(Answer):
    total: int
    not_meeting_inclusion_criteria: int
    declined_to_participate: int
    other_reasons: int


class Consort(Answer):
    assessed_for_eligibility: int
    excluded: Excluded
    randomized: int
    arms: dict[str, ArmCounts] = Field(description="by arm key; for a blinded reader the one entry 'all', pooled over "
                                                   "the arms")
    withheld_while_blinded: list[str] = ABSENT


class Summary(Answer):
    recruitment: Object
    primary_outcome_data_by_visit: Object
    blinding_index: list[Object]
    blinded: bool
    sessions_delivered: Object = ABSENT


class ConsentRecord(BaseModel):
    id: Id
    study_id: str
    document: str
    version: str
    language: str
    signed_on: Date
    signer: one_of("parent", "guardian", "child")
    options: dict[str, bool] | None = Field(description="the options given; null: not recorded (a migrated consent)")
    source: one_of("entered", "enrollment", "migrated")
    obtained_by_id: Id | None


class ConsentDue(BaseModel):
    study_id: str
    document: str
    version: str
    due_since: Date


# --- parents' surveys (issue 28) -----------------------------------------------------------------

SURVEY_STATUSES = ("sent", "opened", "completed", "expired", "revoked")


class SurveyRecord(BaseModel):
    """A survey as the coordinator sees it; ``link`` only in the answer that sent (or resent) it."""
    id: Id
    visit: str
    instrument: str
    language: str
    status: one_of(*SURVEY_STATUSES)
    expires_at: Moment
    sent_at: Moment | None
    opened_at: Moment | None
    completed_at: Moment | None
    revoked_at: Moment | None
    emailed: bool = Field(description="an e-mail address is kept for the invitation and reminders")
    reminders_sent: Count
    link: str = Field(None, json_schema_extra={"x-absent": True},
                      description="the parent's link: only now (it is not kept); give it to the family")


class SurveyChoice(BaseModel):
    key: str
    label: str


class SurveyField(BaseModel):
    key: str
    label: str = Field(description="in the survey's language")
    type: str
    required: bool
    min: float | None = ABSENT
    max: float | None = ABSENT
    units: str | None = ABSENT
    choices: list[SurveyChoice] = ABSENT


class SurveyForm(BaseModel):
    """What the parent answers: the instrument and visit (keys, with their labels in the survey's
    language), the fields, the language; never a study id, an arm or another form."""
    instrument: str
    visit: str
    fields: list[SurveyField]
    language: str
    instrument_label: str
    visit_label: str
    first_name: str | None = Field(description="the child's first name, if the coordinator gave one")
    layout: one_of("whole_form", "one_question")
    expires_on: Date = Field(description="the last day the link works (at the site)")
    rtl: bool = Field(description="the language is written right to left")


class SurveyDone(BaseModel):
    status: one_of("completed")
