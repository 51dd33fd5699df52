"""The API's request bodies, declared once: each a model that the route validates the request
with (``trial.api.routing.body``) and from which the OpenAPI document's request schema is
generated. The types carry the limits of ``trial.validation`` (text without control characters and
within its length, ids that fit the schema, real dates), so that a body the document calls valid
passes them; the services then check what depends on the trial's state and the protocol."""
from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from trial.catalogue import LANGUAGES, N_, Msg
from trial.consent.service import SIGNERS as CONSENT_SIGNERS
from trial.consent.withdrawal import DATA_USES, SCOPES
from trial.course import service as course
from trial.course.models import ATTENDANCE, PRESENT
from trial.credentials import service as credentials
from trial.dataquality.models import QUERY_KINDS
from trial.outcomes import notdone
from trial.outcomes import service as outcomes
from trial.participants.models import EVENT_TYPES, SEXES
from trial.safety.models import EXPECTEDNESS, OUTCOMES, RELATEDNESS, REPORTED_TO, SERIOUSNESS, SEVERITIES
from trial.status.service import DEVIATION_CATEGORIES
from trial.validation import (
    AGAINST,
    MAX_ID,
    NO_CONTROL,
    NOT_BLANK,
    Flag,
    Id,
    IsoDate,
    IsoMoment,
    OptionalDate,
    Text,
    Word,
    choice,
    declared,
    flag,
    ident,
    integral,
    whole,
    word,
)


class Body(BaseModel):
    """A JSON object; fields it does not declare are ignored, as they always were. ``LEAD`` is the
    refusal's first words and ``LABELS`` the fields' names in it, as the service says them."""
    model_config = ConfigDict(extra="ignore", strict=True)
    LEAD: ClassVar[str] = N_("The request was not accepted")
    LABELS: ClassVar[dict[str, str]] = {}
    WORDS: ClassVar[dict[str, Any]] = {}  # pydantic's kind of refusal -> the service's words for it


def _object(value: Any, field: str, errors: dict) -> None:
    if not isinstance(value, dict):
        errors[field] = N_("must be an object")


def _password(value: Any, field: str, errors: dict) -> None:
    if not isinstance(value, str) or not value:
        errors[field] = N_("is required")


def _field_key(value: Any, field: str, errors: dict) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        errors[field] = N_("must be a field's key")


KEYS = {"pattern": NO_CONTROL}  # the names in an object: no control characters
SCALAR = {"anyOf": [{"type": "string", "pattern": NO_CONTROL}, {"type": "number"}, {"type": "boolean"}, {"type": "null"}]}
Values = declared(_object, {"type": "object", "description": "the instrument's fields by key, each as the protocol types it",
                            "propertyNames": KEYS, "additionalProperties": SCALAR, AGAINST: "the protocol's instrument"},
                  dict[str, Any])
Password = declared(_password, {"type": "string", "minLength": 1, "format": "password"}, str)
FieldKey = declared(_field_key, {"type": "string", "minLength": 1, "maxLength": 64, "pattern": NOT_BLANK}, str, True)
def against(what: str, default: Any = ..., **kwargs) -> Any:
    """A field whose rule depends on the trial (the protocol, the record, another field): the
    document says so (``x-checked-against``)."""
    extra = {AGAINST: what, **kwargs.pop("json_schema_extra", {})}
    return Field(default, json_schema_extra=extra, **kwargs)


PROTOCOL = "the protocol"
RECORD = "the record and the trial's state"
ATTENDED = "the attendance: an attended session has minutes, one that did not take place has none"
AE_RULES = "the adverse event's other fields: seriousness with a serious event, a date of resolution with a resolved one"
SIGNER = "the signer's credentials"
Meaning = Text(500, description="the meaning of the signature, in the signer's words")
# beside the password of every signature: required (400 naming it when missing or wrong) only from a
# signer enrolled in two-factor sign-in (trial.auth.mfa), so optional here
SignerCode = Text(40, required=False, description="the current code of the signer's authenticator app (TOTP, 6 "
                  "digits): required when the signer has enrolled in two-factor sign-in")
Reason = Text(500)
CorrectionReason = Text(500, missing=N_("is required for a correction"))
MINUTES = Msg(N_("must be a whole number of minutes from 0 to %(max)s"), max=course.MAX_MINUTES)
ENGAGEMENT = N_("must be a whole number from 1 (none) to 5 (fully engaged)")
Keys = Annotated[list[Word] | None, Field(description="keys from the protocol")]


class ScreeningBody(Body):
    LEAD = N_("The screening was not saved")
    site: word(description="a site code, e.g. AT01") = against("the trial's sites")
    log_number: Text(40, required=False, description="the site's own screening-log number (optional)") = against(
        "the site's screening log: each number once", None)
    screened_on: IsoDate
    answers: dict[str, Flag] = against(PROTOCOL, description="each of the protocol's criteria by key: the answer",
                                       json_schema_extra={"propertyNames": KEYS})
    declined: flag(nullable=True) = against("the answers", None)
    other_reason: Text(500, required=False) = against("the answers", None)


class ConsentBody(Body):
    LEAD = N_("The consent was not recorded")
    document: Word = against(PROTOCOL, description="a consent document's key")
    version: Text(20) = against(PROTOCOL, description="the document's current version")
    # checked by the service with the others, so that one answer names every bad field
    language: Word = against(PROTOCOL, description=f"the language it was read in: one of {', '.join(LANGUAGES)}")
    signed_on: IsoDate
    signer: Word = against("the document: child only for an assent",
                           description=f"one of {', '.join(CONSENT_SIGNERS)}")
    options: dict[str, Flag] | None = against(PROTOCOL, None, description="the document's options by key: given or not",
                                              json_schema_extra={"propertyNames": KEYS})


class EnrollmentBody(Body):
    LEAD = N_("The participant was not enrolled")
    screening_id: Id = against(RECORD)
    consent_date: OptionalDate = against("the consents: the parental consent's date when they are given", None)
    # each checked by the service and named by its place (consents[1].language)
    consents: list[dict[str, Any]] | None = against(
        PROTOCOL, None, description="a consent of each required document, each with the fields of a consent "
        "(document, version, language, signed_on, signer, options); without it: consent_date, for the protocol's one "
        "parental consent")
    date_of_birth: IsoDate
    sex: choice(*SEXES)
    strata: dict[str, Word] | None = against(PROTOCOL, None, description="a level for each stratification factor but "
                                             "site", json_schema_extra={"propertyNames": KEYS})


class AssessmentBody(Body):
    LEAD = N_("The assessment was not saved")
    LABELS = outcomes.GUESS_LABELS
    visit: Word = against(PROTOCOL)
    instrument: Word = against(PROTOCOL)
    performed_on: IsoDate
    values: Values
    allocation_guess: choice("music_therapy", "usual_care", "unsure", nullable=True) = against(
        "the protocol's visits where the guess is taken", None)
    guess_confidence: whole(1, 5, nullable=True, words=N_("must be a whole number from 1 (pure guess) to 5 (certain)"),
                            description="how sure the assessor is of the guess: 1 (a guess) to 5 (certain)") = against(
        "the allocation guess", None)


class SessionBody(Body):
    LEAD = N_("The session was not saved")
    LABELS = course.LABELS
    held_on: IsoDate
    attendance: choice(*ATTENDANCE)
    minutes: whole(0, course.MAX_MINUTES, nullable=True, words=MINUTES) = against(ATTENDED, None)
    techniques: Keys = against(PROTOCOL, None)
    engagement: whole(1, 5, nullable=True, words=ENGAGEMENT) = against(ATTENDED, None)
    note: Text(1000, required=False) = None
    present: choice(*PRESENT, description="who took part: the child alone, or with a parent", nullable=True) = against(
        ATTENDED, None)
    goals: list[Word] | None = against("the child's goals and the attendance", None,
                                       description="keys of the child's goals the session worked on")
    video_recorded: bool | None = against("the family's consent options", None,
                                          description="the session was video-recorded: true only when the family "
                                                      "gave the consent option video_recording")


class SessionCorrectionBody(Body):
    """The fields to change (the others stay as recorded; null empties minutes, engagement or
    note) and the reason. The session as corrected must be valid: an attended session has minutes,
    one that did not take place has none."""
    model_config = ConfigDict(extra="forbid", strict=True)
    LEAD = N_("The correction was not saved")
    LABELS = course.LABELS
    WORDS = {"extra_forbidden": N_("is not a field of a session that can be corrected"),
             "missing:reason": N_("is required for a correction")}
    held_on: IsoDate = None
    attendance: choice(*ATTENDANCE) = against("the session as recorded", None)
    minutes: whole(0, course.MAX_MINUTES, nullable=True, words=MINUTES) = against(ATTENDED, None)
    techniques: list[Word] | None = against(PROTOCOL, None)
    engagement: whole(1, 5, nullable=True, words=ENGAGEMENT) = against(ATTENDED, None)
    note: Text(1000, required=False) = against("the session as recorded", None)
    present: choice(*PRESENT, nullable=True) = against(ATTENDED, None)
    goals: list[Word] | None = against("the child's goals and the attendance", None)
    reason: CorrectionReason


class CounsellingBody(Body):
    LEAD = N_("The counselling session was not saved")
    held_on: IsoDate
    attended: Flag = True
    note: Text(1000, required=False) = None


class StatusEventBody(Body):
    LEAD = N_("The event was not recorded")
    type: choice(*EVENT_TYPES)
    on: IsoDate
    reason: Reason


class WithdrawalBody(Body):
    LEAD = N_("The withdrawal was not recorded")
    on: IsoDate
    scope: choice(*SCOPES)
    data_use: choice(*DATA_USES)
    text: Text(2000, required=False) = None


class DeviationBody(Body):
    LEAD = N_("The deviation was not recorded")
    on: IsoDate
    category: choice(*DEVIATION_CATEGORIES)
    description: Text(2000)


class BlindingBreakBody(Body):
    LEAD = N_("The report was not saved")
    reported_on: OptionalDate = Field(None, description="default: today at the site")
    description: Text(1000)


class NotDoneBody(Body):
    LEAD = notdone.LEAD
    LABELS = notdone.LABELS
    visit: Word = against(PROTOCOL)
    instrument: Word = against(PROTOCOL, description="an instrument collected at the visit")
    reason: Word = against(PROTOCOL, description="a key of the protocol's [[missing_reasons]]")
    text: Text(notdone.MAX_TEXT, required=False) = against("the reason: required where it needs a text", None)


class RetractionBody(Body):
    LEAD = N_("The record was not retracted")
    reason: Text(500) = against("why the record was a mistake")


class RandomizationErrorBody(Body):
    LEAD = N_("The randomization error was not recorded")
    kind: choice("wrong_stratum", "ineligible", "randomized_twice")
    field: Word | None = against("the kind: a stratification factor of the protocol, for wrong_stratum", None)
    correct_value: Word | None = against("the field: one of the factor's levels, for wrong_stratum", None)
    text: Text(2000)


class AssessmentCorrectionBody(Body):
    LEAD = N_("The correction was not saved")
    WORDS = {"missing:reason": N_("is required for a correction")}
    values: Values = against("the protocol's instrument and the values as recorded")
    reason: CorrectionReason


class QueryTargetBody(Body):
    kind: choice(*QUERY_KINDS)
    id: declared(ident, {"type": "integer", "minimum": 1, "maximum": MAX_ID}, int, True, convert=integral) = None
    field: FieldKey = None


class QueryBody(Body):
    LEAD = N_("The query was not raised")
    study_id: Word = against(RECORD)
    on: QueryTargetBody = against(RECORD)
    text: Text(2000)


class CorrectionBody(Body):
    values: Values


class QueryResponseBody(Body):
    LEAD = N_("The answer was not saved")
    text: Text(2000)
    correction: CorrectionBody | None = against("the record the query is on", None)


class QueryNoteBody(Body):
    LEAD = N_("Not saved")
    text: Text(2000, required=False) = None


class AdverseEventBody(Body):
    LEAD = N_("The adverse event was not recorded")
    term: Text(200)
    onset: IsoDate
    severity: choice(*SEVERITIES)
    serious: Flag = against(AE_RULES)
    seriousness: list[choice(*SERIOUSNESS)] | None = against(AE_RULES, None)
    relatedness: choice(*RELATEDNESS)
    expectedness: choice(*EXPECTEDNESS, nullable=True) = None
    outcome: choice(*OUTCOMES) = against(AE_RULES)
    resolved_on: OptionalDate = None
    description: Text(4000, required=False) = None


class FollowUpBody(Body):
    LEAD = N_("The follow-up was not recorded")
    on: IsoDate
    outcome: choice(*OUTCOMES) = against("the adverse event as recorded")
    resolved_on: OptionalDate = None
    text: Text(4000)


class SaeReportBody(Body):
    """A serious adverse event reported onwards: the first one acknowledges the event (and stops its
    24-hour clock), each further one adds to its reporting record."""
    LEAD = N_("The report was not recorded")
    reported_to: choice(*REPORTED_TO, description="to whom it was reported")
    reported_at: IsoMoment = Field(description="when it was reported, with its offset from UTC (e.g. "
                                               "2026-03-05T14:30:00+01:00, or Z for UTC); not in the future, not "
                                               "before the onset")
    reference: Text(80, description="the reference number the recipient gave")


class RecordRefBody(Body):
    kind: choice(*QUERY_KINDS)
    id: declared(ident, {"type": "integer", "minimum": 1, "maximum": MAX_ID}, int, True, convert=integral) = None


class VerificationBody(Body):
    on: RecordRefBody = against(RECORD)


class CredentialBody(Body):
    LEAD = N_("The credential was not recorded")
    LABELS = credentials.LABELS
    kind: word(description="a credential kind of the protocol, e.g. MT-BC") = against(PROTOCOL)
    number: Text(64)
    valid_to: IsoDate
    valid_from: OptionalDate = None
    issuer: Text(200, required=False) = None


class RevocationBody(Body):
    LEAD = N_("The credential was not revoked")
    LABELS = credentials.LABELS
    reason: Reason


class GrantRejectionBody(Body):
    LEAD = N_("The grant was not rejected")
    reason: Reason


class GoalItemBody(Body):
    goal: word(description="a goal key of the protocol")
    description: Text(500, required=False) = None


class GoalsBody(Body):
    LEAD = N_("The goals were not saved")
    LABELS = {"goals": N_("Goals"), "description": N_("Description"), "set_on": N_("Set on")}
    goals: list[GoalItemBody] = against("the protocol's goals and the child's goals already set")
    set_on: OptionalDate = Field(None, description="the day the goals were set (default today); not before the first "
                                                   "attended session")


class GoalRevisionBody(Body):
    LEAD = N_("The goal was not revised")
    LABELS = course.LABELS
    description: Text(500, required=False) = against("the goal as recorded", None)
    active: flag(nullable=True) = against("the goal as recorded", None)
    reason: Reason


class FidelityDrawBody(Body):
    therapist: Text(254, required=False, description="a therapist's e-mail: draw only theirs") = against(
        "the trial's therapists", None)


class FidelityRatingBody(Body):
    LEAD = N_("The rating was not saved")
    scores: dict[str, whole()] = against(PROTOCOL, description="each item of the protocol's fidelity scale by key: its score",
                                         json_schema_extra={"propertyNames": KEYS})
    note: Text(1000, required=False) = None


class SignoffBody(Body):
    LEAD = N_("Not signed")
    milestone: Word = against(PROTOCOL, description="a key of the protocol's [[signoff_milestones]]")
    meaning: Text(500, required=False, description="the meaning of the signature, in the signer's words (default: the "
                                                   "investigator's review of the casebook)") = None
    password: Password = against(SIGNER)
    code: SignerCode = against(SIGNER, None)


class LockBody(Body):
    LEAD = N_("Not signed")
    kind: choice("soft", "hard")
    meaning: Meaning
    password: Password = against(SIGNER)
    code: SignerCode = against(SIGNER, None)
    accept_open_queries: Flag = Field(False, description="sign a hard lock although queries are open (recorded with "
                                                         "the signature)")
    accept_unsigned: Flag = Field(False, description="sign a hard lock although casebooks wait for their investigator's "
                                                     "signature (recorded with the signature and in the bundle's README)")


class LockLiftBody(Body):
    LEAD = N_("The lock was not lifted")
    reason: Reason
    password: Password = against(SIGNER)
    code: SignerCode = against(SIGNER, None)


class SignatureBody(Body):
    LEAD = N_("Not signed")
    meaning: Meaning
    password: Password = against(SIGNER)
    code: SignerCode = against(SIGNER, None)


class UnblindingWithdrawalBody(Body):
    LEAD = N_("The request was not withdrawn")
    reason: Reason


class AddendumBody(Body):
    LEAD = N_("The addendum was not opened")
    reason: Reason
    password: Password = against(SIGNER)
    code: SignerCode = against(SIGNER, None)


# --- parents' surveys (issue 28) -----------------------------------------------------------------

class SurveyBody(Body):
    LEAD = N_("The survey was not sent")
    visit: Word = against(PROTOCOL, description="a visit at which the instrument is collected")
    instrument: Word = against(PROTOCOL, description="an instrument the parents answer (respondent = \"parent\")")
    language: word(nullable=True, description=f"the family's language: one of {', '.join(LANGUAGES)}; default: the "
                   "site's first language") = against(PROTOCOL, None)
    email: Text(254, required=False, description="the family's e-mail address: the invitation and the reminders "
                "go there (through the outbox)") = against("the form of an e-mail address", None)
    first_name: Text(100, required=False, description="the child's first name, shown to the parent (optional)") = None


class SurveyResendBody(Body):
    LEAD = N_("The survey was not sent again")
    email: Text(254, required=False, description="a new e-mail address for the family (default: the one the survey "
                "has)") = against("the form of an e-mail address", None)


class SurveyAnswersBody(Body):
    LEAD = N_("The questionnaire was not saved")
    values: Values
