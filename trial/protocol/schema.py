"""The protocol file, declared: one typed model per section (pydantic), with its types, ranges,
defaults and the rules that tie fields together. :func:`parse` reads a TOML file and returns the
normalised protocol (the models' dump) that the rest of the system reads; a file with problems
raises :class:`ProtocolError` naming every problem at once, each by its path
(``visits[2].window_before: must be 0 or more``). ``trial protocol schema`` prints the JSON Schema
generated from the same models, so that an editor can check and complete a protocol file.

Rules that need more than one section (a visit named by an instrument, the primary outcome, the
analysis) are checked once the sections themselves are valid, by :class:`Protocol`'s validator;
so a file is reported in two rounds at most: every problem within the sections, then every problem
between them. The amendment rules live beside the versions, in ``trial.protocol.service``."""
from __future__ import annotations

import datetime as dt
import re
import tomllib
from itertools import pairwise
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from trial.catalogue import LANGUAGES

KEY_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
TRIAL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
CREDENTIAL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,31}$")  # kinds as the bodies spell them: MT-BC, HCPC
TECHNIQUE_CATEGORIES = ("active", "receptive")
FIELD_TYPES = ("integer", "number", "text", "boolean", "choice")
METHODS = ("permuted_blocks", "minimization")
IMBALANCE = ("range", "variance")
ANALYSIS_MODELS = ("mixed_model",)


class ProtocolError(ValueError):
    """A protocol file's problems, each a (path, problem) pair in the file's order; ``key`` and
    ``problem`` are the first. ``str()`` names them all on one line."""

    def __init__(self, key: str, problem: str, errors: list[tuple[str, str]] | None = None):
        self.errors = errors or [(key, problem)]
        self.key, self.problem = self.errors[0]
        super().__init__("; ".join(f"{k}: {p}" for k, p in self.errors))


# --- the building blocks: a problem at a path, and the checked types ------------------------------

def problem(text: str, at: str = "") -> PydanticCustomError:
    """A problem in the house's words; ``at`` continues the path below the value checked
    (``.fr`` of a labels table, ``[1].key`` of a list)."""
    return PydanticCustomError("protocol", "{problem}", {"problem": text, "at": at})


def _type_name(v: Any) -> str:
    return type(v).__name__


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(v: Any) -> int | float:
    if not _is_number(v):
        raise problem(f"must be a number, not {_type_name(v)} {v!r}")
    return v


def _key_check(pattern: re.Pattern, what: str):
    def check(v: str) -> str:
        if not pattern.match(v):
            raise problem(f"{v!r} is not a valid {what}")
        return v
    return check


def one_of(*values: str):
    """A string that must be one of ``values`` (named in the problem, listed in the JSON Schema)."""
    def check(v: str) -> str:
        if v not in values:
            raise problem(f"must be one of {', '.join(values)}, not {v!r}")
        return v
    return Annotated[str, AfterValidator(check), WithJsonSchema({"type": "string", "enum": list(values)})]


Number = Annotated[Any, PlainValidator(_number), WithJsonSchema({"type": "number"})]


def fraction(lo: float, hi: float):
    """A number from ``lo`` to ``hi``, read as a float."""
    def check(v: Any) -> float:
        v = _number(v)
        if not lo <= v <= hi:
            raise problem(f"must be between {lo:g} and {hi:g}")
        return float(v)
    return Annotated[Any, PlainValidator(check), WithJsonSchema({"type": "number", "minimum": lo, "maximum": hi})]
Key = Annotated[str, AfterValidator(_key_check(KEY_RE, "key (lower-case letters, digits, _; starts with a letter)")),
                WithJsonSchema({"type": "string", "pattern": KEY_RE.pattern})]
CredentialKind = Annotated[str, AfterValidator(_key_check(CREDENTIAL_RE, "credential kind (letters, digits, . _ -)")),
                           WithJsonSchema({"type": "string", "pattern": CREDENTIAL_RE.pattern})]
TrialKey = Annotated[str, AfterValidator(_key_check(TRIAL_KEY_RE, "trial key (lower-case letters, digits, - and _)")),
                     WithJsonSchema({"type": "string", "pattern": TRIAL_KEY_RE.pattern})]
# a language tag (ISO 639 and an optional region or script): the web UI speaks LANGUAGES; words in
# other languages (a site's own, e.g. sv) are kept and exported, and shown in English on the pages
LANGUAGE_TAG = re.compile(r"^[a-z]{2,3}([_-]([A-Z]{2}|[A-Z][a-z]{3}|\d{3}))?$")


def translations(english: str | None):
    """A table of the words in other languages, by language tag (``de``, ``pt_BR`` or ``pt-BR``,
    ``sv``, ...): ``labels`` beside ``label``, ``questions`` beside a criterion's ``question``.
    English is the plain ``label`` (or ``question``) and the fallback of every language left out;
    ``english`` None: English may be given in the table too (technique labels). Languages the web
    UI does not speak are kept (the bundle exports them). An empty table is no table."""
    def check(table: Any) -> dict[str, str] | None:
        if not isinstance(table, dict):
            raise problem(f"must be a dict, not {_type_name(table)} {table!r}")
        out: dict[str, str] = {}
        for lang, words in table.items():
            code = str(lang).replace("-", "_")
            if code == "en" and english:
                raise problem(f"English is the {english} itself, not a translation", f".{lang}")
            if not LANGUAGE_TAG.match(str(lang)):
                raise problem("is not a language tag (e.g. de, pt_BR, sv)", f".{lang}")
            if not isinstance(words, str) or not words.strip():
                raise problem("must be a non-empty string", f".{lang}")
            out[code] = words
        return out or None
    names = {"pattern": LANGUAGE_TAG.pattern} if english is None else {"pattern": LANGUAGE_TAG.pattern, "not": {"const": "en"}}
    schema = {"type": "object", "propertyNames": names, "additionalProperties": {"type": "string", "minLength": 1},
              "description": f"the words in other languages, by language tag (the web UI speaks {', '.join(LANGUAGES)})"}
    return Annotated[dict[str, str] | None, PlainValidator(check), WithJsonSchema(schema)]


Labels = translations("label")
Questions = translations("question")
AnyLabels = translations(None)


def unique_keys(items: list) -> list:
    """No two items of a list with the same key."""
    seen: set[str] = set()
    for i, it in enumerate(items):
        if it.key in seen:
            raise problem(f"duplicate key {it.key!r}", f"[{i}].key")
        seen.add(it.key)
    return items


def not_empty(items: list) -> list:
    if not items:
        raise problem("must not be empty")
    return items


def NonEmpty(item):
    return Annotated[list[item], AfterValidator(not_empty), Field(min_length=1)]


def Keyed(item):
    """A non-empty list of tables, each with a key no other has."""
    return Annotated[list[item], AfterValidator(not_empty), AfterValidator(unique_keys), Field(min_length=1)]


class Section(BaseModel):
    """A table of the protocol file: misspelled keys are refused (``mni = 0`` must not silently
    drop a minimum), types are strict (``weight = "one"`` is not a number). ``OMIT_NONE`` names the
    keys left out of the normalised protocol when the file does not give them (a protocol without
    translations keeps the content it always had)."""
    model_config = ConfigDict(strict=True, extra="forbid", validate_default=False)
    OMIT_NONE: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        out = handler(self)
        for k in self.OMIT_NONE:
            if out.get(k) is None:
                out.pop(k, None)
        return out


# --- the sections -------------------------------------------------------------------------------

class TrialInfo(Section):
    key: TrialKey
    name: str
    amendment: Annotated[Any, PlainValidator(lambda v: str(v) if isinstance(v, str) or _is_number(v) else _bad_amendment(v)),
                         WithJsonSchema({"type": ["string", "number"]})] = Field("1", description="the amendment's number")


def _bad_amendment(v: Any):
    raise problem(f"must be a string or number, not {_type_name(v)} {v!r}")


class Arm(Section):
    OMIT_NONE = ("labels",)
    key: Key
    label: str
    sessions_per_week: int = Field(ge=0, le=14)
    weight: int = Field(ge=1, description="the allocation ratio's weight")
    labels: Labels = None


class Factor(Section):
    """A stratification factor: site (its levels are the trial's sites) or one with its own levels."""
    OMIT_NONE = ("labels",)
    key: Key
    levels: list[str] | None = None
    label: str | None = None
    labels: Labels = None

    @model_validator(mode="after")
    def _levels(self):
        if self.key == "site":
            self.levels, self.label, self.labels = None, None, None
            return self
        if self.levels is None:
            raise problem("is missing", ".levels")
        if len(self.levels) < 2 or not all(KEY_RE.match(x) for x in self.levels):
            raise problem("must list at least two level keys", ".levels")
        self.label = self.label or self.key
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        if self.key == "site":
            return {"key": "site", "levels": None}
        return Section._dump(self, handler)


class Minimization(Section):
    probability: fraction(0.5, 1) = 0.8
    imbalance: one_of(*IMBALANCE) = "range"


class Randomization(Section):
    method: one_of(*METHODS)
    block_sizes: NonEmpty(int)
    factors: Annotated[list[Factor], AfterValidator(unique_keys)] = Field(default_factory=lambda: [Factor(key="site")])
    minimization: Minimization = Field(default_factory=Minimization)
    initial_blocks: int = Field(10, ge=1, le=10000, description="blocks generated per stratum when the trial opens")
    extension_blocks: int = Field(10, ge=1, le=10000, description="blocks added when a stratum's list runs out")

    @model_validator(mode="after")
    def _site_and_order(self):
        if not any(f.key == "site" for f in self.factors):
            raise problem("site must be one of the factors", ".factors")
        self.block_sizes = sorted(self.block_sizes)
        return self


class Eligibility(Section):
    min_age_months: int = Field(0, ge=0)
    max_age_months: int = Field(1200, ge=0)
    consent_before_screening_days: int = Field(
        0, ge=0, le=365, description="how many days before the screening a family's consent may be dated (families "
                                     "often consent first); 0: not before the screening")

    @model_validator(mode="after")
    def _range(self):
        if self.min_age_months > self.max_age_months:
            raise problem("must not be below min_age_months", ".max_age_months")
        return self


class Criterion(Section):
    OMIT_NONE = ("questions",)
    key: Key
    question: str
    qualifying_answer: bool
    questions: Questions = None


class Course(Section):
    OMIT_NONE = ("technique_labels", "technique_categories")
    months: int = Field(ge=1, le=60)
    session_minutes: int = 30
    min_attended_sessions: int = Field(1, description='"received the allocated intervention"')
    parent_counselling_sessions: int = 0
    techniques: list[Key] = []
    technique_labels: dict[str, AnyLabels] | None = Field(None, description="each technique's words, by language")
    technique_categories: dict[str, one_of(*TECHNIQUE_CATEGORIES)] | None = Field(
        None, description="active (improvisation, songs, games) or receptive (listening); unnamed ones count as active")

    @model_validator(mode="after")
    def _techniques(self):
        for name in ("technique_labels", "technique_categories"):
            for t in getattr(self, name) or {}:
                if t not in self.techniques:
                    raise problem("is not one of course.techniques", f".{name}.{t}")
        if self.technique_labels is not None:
            self.technique_labels = {t: w for t, w in self.technique_labels.items() if w}
        cats = self.technique_categories
        self.technique_categories = {t: cats.get(t, "active") for t in self.techniques} if cats else None
        return self


class Credential(Section):
    OMIT_NONE = ("labels",)
    key: CredentialKind
    label: str
    issuer: str | None = None
    labels: Labels = None


class Goal(Section):
    OMIT_NONE = ("labels",)
    key: Key
    label: str
    labels: Labels = None


class FidelityItem(Goal):
    pass


class Fidelity(Section):
    share: Number = Field(description="the share of sessions rated")
    min: int
    max: int
    threshold: Number
    items: Keyed(FidelityItem)

    @model_validator(mode="after")
    def _scale(self):
        if not 0 < self.share <= 1:
            raise problem("must be more than 0 and at most 1 (the share of sessions rated)", ".share")
        if self.min >= self.max:
            raise problem("must be above min", ".max")
        if not self.min <= self.threshold <= self.max:
            raise problem(f"must be within the scale ({self.min}-{self.max})", ".threshold")
        return self


APPLIES_TO = ("new", "all")
AppliesTo = Field(None, description="when an amendment adds it: 'new' (default) for children randomized on or after the "
                                    "version's effective_from, 'all' for every child whose window has not closed by then")


class Visit(Section):
    OMIT_NONE = ("labels", "applies_to")
    key: Key
    label: str | None = None
    day: int = Field(description="target day after randomization")
    window_before: int = Field(ge=0)
    window_after: int = Field(ge=0)
    primary: bool = False
    labels: Labels = None
    allocation_guess: bool | None = Field(
        None, description="does the blinded assessor guess the allocation here? By default at every visit after "
                          "baseline with a blinded instrument")
    applies_to: one_of(*APPLIES_TO) | None = AppliesTo

    @model_validator(mode="after")
    def _guess(self):
        self.label = self.label or self.key
        if self.allocation_guess and self.key == "baseline":
            raise problem("there is no allocation to guess at baseline (it comes before randomization)",
                          ".allocation_guess")
        return self


class InstrumentField(Section):
    OMIT_NONE = ("labels", "units_labels")
    key: Key
    label: str | None = None
    type: one_of(*FIELD_TYPES)
    required: bool = True
    min: Number | None = None
    max: Number | None = None
    soft_min: Number | None = Field(None, description="a value below it is saved but queried")
    soft_max: Number | None = Field(None, description="a value above it is saved but queried")
    units: str | None = None
    units_labels: Labels = Field(None, description="the units in other languages, by language code")
    choices: list[str] | None = None
    labels: Labels = None

    @model_validator(mode="after")
    def _by_type(self):
        self.label = self.label or self.key
        if self.type in ("integer", "number"):
            self._numeric()
        elif self.soft_min is not None or self.soft_max is not None:
            raise problem("soft limits are for integer and number fields", ".soft_min")
        else:
            self.min = self.max = None
        if self.type == "choice":
            if self.choices is None:
                raise problem("is missing", ".choices")
            if not self.choices:
                raise problem("must not be empty", ".choices")
        else:
            self.choices = None
        return self

    def _numeric(self) -> None:
        if self.type == "integer":
            for k in ("min", "max", "soft_min", "soft_max"):
                v = getattr(self, k)
                if v is not None and not _is_int(v):
                    raise problem(f"must be an integer, not {_type_name(v)} {v!r}", f".{k}")
        lo, hi = self.min, self.max
        if lo is not None and hi is not None and lo > hi:
            raise problem("must not be below min", ".max")
        for k in ("soft_min", "soft_max"):
            v = getattr(self, k)
            if v is not None and (lo is not None and v < lo or hi is not None and v > hi):
                raise problem(f"{v} is outside the hard range {lo}-{hi}", f".{k}")
        if self.soft_min is not None and self.soft_max is not None and self.soft_min > self.soft_max:
            raise problem("must not be below soft_min", ".soft_max")


RESPONDENTS = ("parent", "assessor", "staff")
SURVEY_LAYOUTS = ("whole_form", "one_question")


class Instrument(Section):
    OMIT_NONE = ("labels", "applies_to", "respondent", "survey_layout")
    key: Key
    label: str
    blinded: bool = Field(description="entered by the blinded assessor")
    visits: list[str]
    fields: Keyed(InstrumentField)
    labels: Labels = None
    applies_to: one_of(*APPLIES_TO) | None = AppliesTo
    respondent: one_of(*RESPONDENTS) | None = Field(
        None, description="who answers it: \"parent\" (may be sent to the family as a survey), \"assessor\" "
                          "(the blinded assessor) or \"staff\"; by default the assessor for a blinded instrument, "
                          "else staff")
    survey_layout: one_of(*SURVEY_LAYOUTS) | None = Field(
        None, description="a parent's survey shows the whole form (\"whole_form\", the default) or one question "
                          "at a time (\"one_question\")")

    @model_validator(mode="after")
    def _respondent(self):
        if self.respondent == "parent" and self.blinded:
            raise problem("must not be \"parent\" for a blinded instrument: a child's parents know its arm",
                          ".respondent")
        if self.respondent == "assessor" and not self.blinded:
            raise problem("is \"assessor\" only for a blinded instrument (blinded = true)", ".respondent")
        if self.survey_layout is not None and self.respondent != "parent":
            raise problem("is for an instrument the parents answer (respondent = \"parent\")", ".survey_layout")
        return self


def respondent_of(ins: dict) -> str:
    """Who answers an instrument (its protocol's ``respondent``, else by its blinding)."""
    return ins.get("respondent") or ("assessor" if ins.get("blinded") else "staff")


class PrimaryOutcome(Section):
    instrument: str
    field: str
    visit: str


class SecondaryOutcome(Section):
    instrument: str
    field: str


INTERCURRENT_EVENTS = ("discontinued_intervention", "withdrawal", "not_received", "death")
STRATEGIES = ("treatment_policy", "hypothetical", "while_on_treatment", "composite")
DF_METHODS = ("wald", "satterthwaite", "kenward_roger")
MULTIPLICITY = ("hierarchy", "holm")
SENSITIVITY_ANALYSES = ("ancova", "all_strata", "in_window", "per_protocol", "cace", "dose_response", "mi",
                        "tipping_point")


class IntercurrentEvent(Section):
    """An event after randomization that affects the outcome's existence or meaning (ICH E9(R1)),
    with the strategy the estimand takes for it: ``treatment_policy`` (the values as observed,
    whatever happened), ``hypothetical`` (the values the child would have had without it: those
    after it are set aside and the model treats them as missing at random), ``while_on_treatment``
    (the child's last value before it stands for the later visits) or ``composite`` (the event is
    itself an unfavourable outcome: the worst value of the outcome's range at every visit after it)."""
    OMIT_NONE = ("rationale",)
    event: one_of(*INTERCURRENT_EVENTS)
    strategy: one_of(*STRATEGIES)
    rationale: str | None = None


class Estimand(Section):
    """The estimand of the primary outcome (ICH E9(R1)): the population, the variable, the
    intercurrent events with a strategy for each (an event not listed: treatment policy) and the
    population-level summary measure. The treatment conditions are the arms."""
    population: str
    variable: str
    summary_measure: str
    intercurrent_events: list[IntercurrentEvent] = []

    @model_validator(mode="after")
    def _once(self):
        events = [e.event for e in self.intercurrent_events]
        if len(set(events)) != len(events):
            raise problem("must name each event once", ".intercurrent_events")
        return self


class MultipleImputation(Section):
    """Multiple imputation of the missing primary outcomes (by arm, from the baseline value and the
    site; Rubin's rules): the number of imputations and the fixed seed, recorded in the results."""
    imputations: int = Field(20, ge=2, le=500)
    seed: int = Field(20240101, ge=0, lt=2**63)


class TippingPoint(Section):
    """The delta-adjusted tipping-point analysis (missing not at random): the imputed values of the
    intervention arms shifted by each delta in turn, in the outcome's units, in the direction of harm;
    the delta that overturns the conclusion is reported."""
    deltas: list[Number] = Field(min_length=2, max_length=200, description="the shifts tried, ascending")

    @model_validator(mode="after")
    def _ascending(self):
        if any(b <= a for a, b in pairwise(self.deltas)):
            raise problem("must be in ascending order", ".deltas")
        return self


class Analysis(Section):
    """The statistical analysis plan (optional). The primary analysis: a linear mixed model of the
    primary outcome at the given visits (baseline, then follow-ups up to the primary visit) with
    fixed effects for visit, group x visit after baseline and the adjustment factors, and a random
    intercept per child; group is the pooled arms against the reference arm. Each pooled arm against
    the reference is the secondary analysis. The SAP adds (each optional, so an older protocol keeps
    its meaning): its version, the estimand, the degrees-of-freedom method of the tests, the secondary
    outcomes' multiplicity procedure, the sensitivity analyses run in the lock, and the multiple
    imputation's and the tipping point's parameters."""
    OMIT_NONE = ("sap_version", "estimand", "df_method", "multiplicity", "sensitivity", "mi", "tipping_point", "alpha",
                 "benefit")
    model: one_of(*ANALYSIS_MODELS) = "mixed_model"
    visits: list[str]
    reference_arm: str
    pooled_arms: list[str] | None = Field(None, description="by default every arm but the reference")
    pooled_label: str = "Pooled arms"
    adjust: list[str] = Field(["site"], description="randomization factors adjusted for")
    per_protocol_min_dose: fraction(0, 1) = 0.5
    secondary_outcomes: list[SecondaryOutcome] = Field(
        [], description="in the order of the hierarchy when the multiplicity procedure is \"hierarchy\"")
    sap_version: str | None = Field(None, description="the version of the statistical analysis plan (results.json)")
    benefit: Literal["lower", "higher"] | None = Field(
        None, description="the primary outcome's direction of benefit: \"lower\" (a lower score is better) or "
                          "\"higher\"; it decides the composite strategy's worst value, the tipping point's direction "
                          "and the forest plot's sides (default: [interim] benefit, else \"lower\")")
    estimand: Estimand | None = None
    df_method: one_of(*DF_METHODS) | None = Field(
        None, description="the tests' degrees of freedom: \"wald\" (the normal distribution; the default), "
                          "\"satterthwaite\" or \"kenward_roger\" (as lmerTest and pbkrtest)")
    alpha: fraction(0.0001, 0.5) | None = Field(None, description="the two-sided significance level (default 0.05)")
    multiplicity: one_of(*MULTIPLICITY) | None = Field(
        None, description="the secondary outcomes' procedure: \"hierarchy\" (fixed order, each tested at alpha "
                          "until the first not significant) or \"holm\" (the default)")
    sensitivity: list[one_of(*SENSITIVITY_ANALYSES)] | None = Field(
        None, description="the sensitivity analyses the SAP names (default: every one)")
    mi: MultipleImputation | None = None
    tipping_point: TippingPoint | None = None


SIGNERS = ("parent", "child")


class ConsentOption(Goal):
    """An optional choice within a consent document (video recording of sessions, future contact):
    a key and its words, as a goal."""


class ConsentDocument(Section):
    """A consent (signer ``parent``) or a child's assent (signer ``child``, from ``min_age_months``)."""
    OMIT_NONE = ("labels", "min_age_months")
    key: Key
    label: str
    labels: Labels = None
    version: str = Field(min_length=1, max_length=20)
    signer: one_of(*SIGNERS) = "parent"
    min_age_months: int | None = Field(None, ge=0, le=1200, description="a child's assent: from this age on")
    required: bool = True
    reconsent: bool = Field(False, description="a new version requires re-consent of children still in the trial")
    options: Annotated[list[ConsentOption], AfterValidator(unique_keys)] = []

    @model_validator(mode="after")
    def _assent(self):
        if self.signer == "child" and self.min_age_months is None:
            raise problem("is missing (a child's assent is asked from an age)", ".min_age_months")
        if self.signer == "parent" and self.min_age_months is not None:
            raise problem("is for a child's assent (signer = \"child\")", ".min_age_months")
        return self


def _default_documents() -> list[ConsentDocument]:
    return [ConsentDocument(key="parental_consent", label="Parental consent", version="1")]


class SignoffMilestone(Section):
    """A point at which the site's investigator signs a child's casebook: after a visit
    (``after_visit``) or at the end of participation (``end_of_participation = true``)."""
    OMIT_NONE = ("labels", "after_visit")
    key: Key
    label: str
    labels: Labels = None
    after_visit: Key | None = Field(None, description="the visit after which the casebook is signed")
    end_of_participation: bool = Field(False, description="signed when the child's participation has ended")

    @model_validator(mode="after")
    def _one_point(self):
        if (self.after_visit is None) == (not self.end_of_participation):
            raise problem("give either after_visit or end_of_participation = true", ".after_visit")
        return self


class MissingReason(Section):
    """Why a form will never be filled (recorded as "not done"); ``needs_text``: the reason needs
    words (``other``)."""
    OMIT_NONE = ("labels",)
    key: Key
    label: str
    labels: Labels = None
    needs_text: bool = Field(False, description="a text must say more (as for \"other\")")


SPENDING_FUNCTIONS = ("obrien_fleming",)


class Interim(Section):
    """The group-sequential design of the interim looks: the planned looks as information
    fractions (the last is 1, the final analysis) and the alpha spending function (Lan-DeMets,
    O'Brien-Fleming type), applied to the primary analysis's effect."""
    information_fractions: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        min_length=1, max_length=10, description="the planned looks, as fractions of the final information, ascending; "
                                                 "the last is 1")
    spending: one_of(*SPENDING_FUNCTIONS) = Field(
        "obrien_fleming", description="the alpha spending function: Lan-DeMets with O'Brien-Fleming-type boundaries")
    alpha: Number = Field(0.05, description="the overall type I error rate (above 0, below 0.5)")
    sides: Literal[1, 2] = Field(2, description="a two-sided (2) or one-sided (1) test")
    planned_primary_n: int | None = Field(
        None, gt=0, description="the planned number of children with the primary outcome at the primary visit: the "
                                "information fraction's denominator (default: the sites' recruitment targets added up)")
    benefit: Literal["lower", "higher"] = Field(
        "lower", description="the direction of benefit of the primary analysis's effect (the arm against the "
                             "reference): \"lower\" (a lower score is better) or \"higher\"; a one-sided design "
                             "tests in this direction")

    @model_validator(mode="after")
    def _looks(self):
        f = self.information_fractions
        if any(b <= a for a, b in pairwise(f)):
            raise problem("must be in ascending order", ".information_fractions")
        if f[-1] != 1:
            raise problem("must end with 1 (the final analysis)", ".information_fractions")
        if not 0 < self.alpha < 0.5:
            raise problem("must be above 0 and below 0.5", ".alpha")
        return self


class Surveys(Section):
    """The parents' surveys: reminders by e-mail, each a number of days after the link was sent,
    until the survey is answered or expires."""
    reminder_days: list[Annotated[int, Field(ge=1, le=365)]] = Field(
        default_factory=lambda: [3, 7], max_length=10,
        description="days after the link was sent on which a reminder goes out (ascending)")

    @model_validator(mode="after")
    def _ascending(self):
        if any(b <= a for a, b in pairwise(self.reminder_days)):
            raise problem("must be in ascending order", ".reminder_days")
        return self


class Consent(Section):
    """The consent documents a family signs (default: one required parental consent, version 1)."""
    reconsent_within_days: int = Field(30, ge=0, le=365, description="days a re-consent may be outstanding before new "
                                                                     "data for the child are refused")
    documents: Keyed(ConsentDocument) = Field(default_factory=_default_documents)


# Who countersigns the manager's request to unblind (two signatures, two people). A trial-wide role:
# unblinding reveals every site's arms, so a site role (which sees its own sites) cannot vouch for
# it; never the manager's own role, and never a role that stays blinded (assessor, admin).
UNBLINDING_COUNTERSIGNERS = ("statistician",)
_NOT_COUNTERSIGNERS = {
    "manager": "must not be 'manager': the manager asks for the unblinding, a second person of another role "
               "countersigns it",
    "assessor": "must not be 'assessor': a blinded assessor stays blinded, even after the unblinding",
    "admin": "must not be 'admin': an administrator sees no clinical data and stays blinded",
}
_SITE_ROLES = ("coordinator", "therapist", "monitor", "investigator")


def _countersigner(v: str) -> str:
    if v in UNBLINDING_COUNTERSIGNERS:
        return v
    if v in _NOT_COUNTERSIGNERS:
        raise problem(_NOT_COUNTERSIGNERS[v])
    if v in _SITE_ROLES:
        raise problem(f"must be a trial-wide role, not the site role {v!r}: unblinding reveals every site's arms "
                      f"(one of: {', '.join(UNBLINDING_COUNTERSIGNERS)})")
    raise problem(f"unknown role {v!r} (one of: {', '.join(UNBLINDING_COUNTERSIGNERS)})")


class Unblinding(Section):
    """Unblinding takes two signatures: the manager's request, then a user of this role (never the
    same person)."""
    countersigner_role: Annotated[str, AfterValidator(_countersigner),
                                  WithJsonSchema({"type": "string", "enum": list(UNBLINDING_COUNTERSIGNERS)})] = Field(
        "statistician", description="the role whose user countersigns the manager's request to unblind")


# what the JSON Schema can say of the visits: one primary visit, and a baseline on day 0
VISITS_SCHEMA = {"allOf": [
    {"contains": {"required": ["primary"], "properties": {"primary": {"const": True}}}, "minContains": 1, "maxContains": 1},
    {"contains": {"required": ["key", "day"], "properties": {"key": {"const": "baseline"}, "day": {"const": 0}}}}]}

class Protocol(Section):
    """A trial's protocol: arms, randomization, eligibility, course, visits, instruments, the
    primary outcome and (optionally) the intervention's details and the primary analysis."""
    model_config = ConfigDict(strict=True, extra="forbid", title="Trial protocol")
    OMIT_NONE = ("credentials", "goals", "fidelity", "analysis", "effective_from", "unblinding", "signoff_milestones",
                 "missing_reasons", "interim")
    trial: TrialInfo
    effective_from: Annotated[dt.date, PlainSerializer(dt.date.isoformat)] | None = Field(
        None, description="an amendment's date: a visit or instrument it adds is due for children randomized on or "
                          "after it (default: the day the version is loaded)")
    arms: Keyed(Arm) = Field(json_schema_extra={"minItems": 2})
    randomization: Randomization
    eligibility: Eligibility = Field(default_factory=Eligibility)
    criteria: Keyed(Criterion)
    course: Course
    credentials: Keyed(Credential) | None = Field(None, description="credentials a session's therapist must hold")
    goals: Keyed(Goal) | None = Field(None, description="the individual goals a therapist may set")
    fidelity: Fidelity | None = Field(None, description="the treatment-fidelity scale and the share of sessions rated")
    visits: Keyed(Visit) = Field(json_schema_extra=VISITS_SCHEMA)
    instruments: Keyed(Instrument)
    primary_outcome: PrimaryOutcome
    analysis: Analysis | None = None
    unblinding: Unblinding | None = Field(None, description="who countersigns the unblinding (default: statistician)")
    consent: Consent = Field(default_factory=Consent, description="the consent documents (default: one parental consent)")
    surveys: Surveys = Field(default_factory=Surveys, description="the parents' surveys' reminders")
    signoff_milestones: Keyed(SignoffMilestone) | None = Field(
        None, description="where the site's investigator signs each child's casebook (default: nowhere)")
    interim: Interim | None = Field(None, description="the interim looks' group-sequential design (default: none)")
    missing_reasons: Keyed(MissingReason) | None = Field(
        None, description="the reasons a form is recorded as not done (default: one, \"other\", with a text)")

    @model_validator(mode="after")
    def _between_sections(self):
        found = _cross_problems(self)
        if found:
            raise _Problems(found)
        return self


class _Problems(Exception):
    """The problems between sections, every one (not a ValueError: pydantic lets it through)."""

    def __init__(self, found: list[tuple[str, str]]):
        super().__init__(found)
        self.found = found


# --- the rules between sections, one function per section that refers to others ------------------

def _cross_problems(p: Protocol) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for check in (_arms_and_blocks, _visits_order, _instrument_visits, _guesses, _primary_outcome, _milestone_visits):
        found += check(p)
    if not found and p.analysis is not None:
        found += _analysis(p)
    return found


def _arms_and_blocks(p: Protocol) -> list[tuple[str, str]]:
    if len(p.arms) < 2:
        return [("arms", "a randomized trial needs at least two arms")]
    ratio_sum = sum(a.weight for a in p.arms)
    return [(f"randomization.block_sizes[{j}]", f"{s!r} is not a positive multiple of the ratio sum {ratio_sum}")
            for j, s in enumerate(p.randomization.block_sizes) if s <= 0 or s % ratio_sum][:1]


def _visits_order(p: Protocol) -> list[tuple[str, str]]:
    days = [v.day for v in p.visits]
    if days != sorted(days):
        return [("visits", "must be listed in order of their day")]
    if sum(v.primary for v in p.visits) != 1:
        return [("visits", "exactly one visit must be marked primary = true")]
    if not any(v.key == "baseline" and v.day == 0 for v in p.visits):
        return [("visits", "a 'baseline' visit on day 0 is required (randomization needs the baseline outcome)")]
    return []


def _instrument_visits(p: Protocol) -> list[tuple[str, str]]:
    keys = {v.key for v in p.visits}
    return [(f"instruments[{i}].visits[{j}]", f"unknown visit {vk!r}")
            for i, ins in enumerate(p.instruments) for j, vk in enumerate(ins.visits) if vk not in keys]


def _milestone_visits(p: Protocol) -> list[tuple[str, str]]:
    keys = {v.key for v in p.visits}
    return [(f"signoff_milestones[{i}].after_visit", f"unknown visit {m.after_visit!r}")
            for i, m in enumerate(p.signoff_milestones or []) if m.after_visit is not None and m.after_visit not in keys]


def _guesses(p: Protocol) -> list[tuple[str, str]]:
    """The guess is taken with a blinded assessment: by default at every visit after baseline
    with a blinded instrument."""
    found = []
    for i, visit in enumerate(p.visits):
        blinded_here = any(ins.blinded and visit.key in ins.visits for ins in p.instruments)
        if visit.allocation_guess and not blinded_here:
            found.append((f"visits[{i}].allocation_guess", ("the guess is recorded with a blinded assessment, "
                                                            "and no blinded instrument is collected at this visit")))
        if visit.allocation_guess is None:
            visit.allocation_guess = visit.key != "baseline" and blinded_here
    return found


def _primary_outcome(p: Protocol) -> list[tuple[str, str]]:
    prim = p.primary_outcome
    ins = next((x for x in p.instruments if x.key == prim.instrument), None)
    if ins is None:
        return [("primary_outcome.instrument", f"unknown instrument {prim.instrument!r}")]
    if not any(f.key == prim.field for f in ins.fields):
        return [("primary_outcome.field", f"instrument {ins.key!r} has no field {prim.field!r}")]
    visit = next((v for v in p.visits if v.key == prim.visit), None)
    if visit is None:
        return [("primary_outcome.visit", f"unknown visit {prim.visit!r}")]
    if not visit.primary:
        return [("primary_outcome.visit", f"visit {prim.visit!r} is not the visit marked primary")]
    return [(f"instruments[{p.instruments.index(ins)}].visits", f"the primary instrument must be collected at {vk!r}")
            for vk in (prim.visit, "baseline") if vk not in ins.visits][:1]


def _analysis(p: Protocol) -> list[tuple[str, str]]:
    a = p.analysis
    found = _analysis_visits(p, a)
    arm_keys = [x.key for x in p.arms]
    if a.reference_arm not in arm_keys:
        found.append(("analysis.reference_arm", f"unknown arm {a.reference_arm!r}"))
    if a.pooled_arms is None:
        a.pooled_arms = [k for k in arm_keys if k != a.reference_arm]
    if not a.pooled_arms or any(k not in arm_keys or k == a.reference_arm for k in a.pooled_arms) \
            or len(set(a.pooled_arms)) != len(a.pooled_arms):
        found.append(("analysis.pooled_arms", "must list arms other than the reference arm, each once"))
    factors = [f.key for f in p.randomization.factors]
    found += [("analysis.adjust", f"{f!r} is not a randomization factor") for f in a.adjust if f not in factors][:1]
    for i, so in enumerate(a.secondary_outcomes):
        sp = f"analysis.secondary_outcomes[{i}]"
        ins = next((x for x in p.instruments if x.key == so.instrument), None)
        if ins is None:
            found.append((f"{sp}.instrument", f"unknown instrument {so.instrument!r}"))
        elif not any(f.key == so.field and f.type in ("integer", "number") for f in ins.fields):
            found.append((f"{sp}.field", f"instrument {ins.key!r} has no numeric field {so.field!r}"))
    return found


def _analysis_visits(p: Protocol, a: Analysis) -> list[tuple[str, str]]:
    visit_keys = [v.key for v in p.visits]
    unknown = [v for v in a.visits if v not in visit_keys]
    if unknown:
        return [("analysis.visits", f"unknown visit {unknown[0]!r}")]
    if not a.visits or a.visits[0] != "baseline" or p.primary_outcome.visit not in a.visits \
            or len(set(a.visits)) != len(a.visits):
        return [("analysis.visits", "must start with 'baseline' and include the primary visit, each once")]
    if a.visits != sorted(a.visits, key=visit_keys.index):
        return [("analysis.visits", "must be in the protocol's order of visits")]
    ins = next(i for i in p.instruments if i.key == p.primary_outcome.instrument)
    missing = [v for v in a.visits if v not in ins.visits]
    if missing:
        return [("analysis.visits", f"the primary instrument is not collected at {missing[0]!r}")]
    return []


# --- the amendment rules: what a new version may change once randomization is open ---------------

FIXED_ONCE_RANDOMIZING = ("arms", "randomization")


def without_translations(part: Any) -> Any:
    """``part`` of a protocol's content without its translations (``labels``, ``questions``): an
    amendment that only translates changes nothing of the design."""
    if isinstance(part, dict):
        return {k: without_translations(v) for k, v in part.items() if k not in ("labels", "questions")}
    if isinstance(part, list):
        return [without_translations(v) for v in part]
    return part


def amendment_problems(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str]]:
    """What an amendment may not change once randomization is open: the trial's key, the arms and
    the randomization design (their translations into the languages of the web UI are not part of
    the design). Each problem is (the section, why)."""
    if old["trial"]["key"] != new["trial"]["key"]:
        return [("trial.key", "An amendment cannot change the trial key.")]
    return [(part, f"Randomization is open: an amendment cannot change '{part}'.") for part in FIXED_ONCE_RANDOMIZING
            if without_translations(old[part]) != without_translations(new[part])]


# --- pydantic's findings in the house's words -----------------------------------------------------

TYPE_WORDS = {"int_type": "an integer", "int_from_float": "an integer", "string_type": "a string", "bool_type": "a bool",
              "float_type": "a number", "dict_type": "a dict", "list_type": "a list", "model_type": "a table",
              "model_attributes_type": "a table"}


def path_of(loc: tuple) -> str:
    """``('visits', 2, 'window_before')`` as ``visits[2].window_before``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out.lstrip(".")


def _allowed(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """The keys a table at ``loc`` may hold (for a misspelled key's problem)."""
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = _model_in(field.annotation)
        if model is None:
            return None
    return list(model.model_fields)


def _model_in(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def describe(error: dict, root: type[BaseModel] = Protocol) -> tuple[str, str]:
    """One of pydantic's errors as (path, problem) in a trial manager's words."""
    loc, typ, ctx, value = tuple(error["loc"]), error["type"], error.get("ctx") or {}, error.get("input")
    path = path_of(loc)
    if typ == "protocol":
        return (path + ctx.get("at", "")).lstrip("."), ctx["problem"]
    if typ == "missing":
        return path, "is missing"
    if typ == "extra_forbidden":
        if len(loc) == 1 and root is Protocol:
            return path, "is not a known protocol section"
        allowed = _allowed(root, loc)
        return path, "is not a known key here" + (f" (expected one of {', '.join(sorted(allowed))})" if allowed else "")
    if typ in TYPE_WORDS:
        return path, f"must be {TYPE_WORDS[typ]}, not {_type_name(value)} {value!r}"
    if typ in ("greater_than_equal", "greater_than"):
        return path, f"must be {ctx.get('ge', ctx.get('gt'))} or more"
    if typ in ("less_than_equal", "less_than"):
        return path, f"must be {ctx.get('le', ctx.get('lt'))} or less"
    if typ == "too_short":
        return path, "must not be empty"
    return path, error["msg"]


def _ordered(found: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Each path once (a failed length check and a failed element check say one thing)."""
    seen, out = set(), []
    for key, text in found:
        if key not in seen:
            seen.add(key)
            out.append((key, text))
    return out


def validate_model(raw: Any) -> Protocol:
    """The protocol model of a parsed file, or :class:`ProtocolError` naming every problem."""
    if not isinstance(raw, dict):
        raise ProtocolError("(file)", "must be a TOML document")
    try:
        return Protocol.model_validate(raw)
    except _Problems as e:
        raise ProtocolError(*e.found[0], errors=e.found) from None
    except ValidationError as e:
        found = _ordered([describe(err) for err in e.errors(include_url=False)])
        raise ProtocolError(*found[0], errors=found) from None


def validate(raw: Any) -> dict[str, Any]:
    """The normalised protocol (the model's dump, as every version stores it), or :class:`ProtocolError`."""
    return validate_model(raw).model_dump()


def parse(text: str) -> dict[str, Any]:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProtocolError("(file)", f"is not valid TOML: {e}") from e
    return validate(raw)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a protocol file (the checks within sections; the rules between sections
    are checked when the file is loaded)."""
    schema = Protocol.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["description"] = ("A trial protocol file (TOML) of the TIME-A trial system. References between sections "
                             "(visits named by instruments, the primary outcome, the analysis) are checked by "
                             "`trial protocol load`.")
    return schema
