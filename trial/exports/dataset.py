"""The tables of a locked dataset, with their data dictionary.

Variable names are at most 8 characters and labels at most 40 (the limits of SAS transport v5;
Stata allows 32 and 80), checked when a table is defined. A blinded dataset carries a dummy
allocation (codes A, B, ... drawn at random in the protocol's ratio, independent of the real
allocation) instead of arms, and leaves out everything that reveals an allocation: sessions,
intervention events and deviations, adherence.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import zoneinfo
from dataclasses import dataclass, field

from sqlalchemy import Text, cast, func, select
from sqlalchemy.orm import Session

from trial.analysis.service import arm_levels
from trial.auth.models import User
from trial.catalogue import LABELS
from trial.consent.models import Consent, ConsentWithdrawal
from trial.consent.withdrawal import DATA_USES, SCOPES
from trial.course.models import PRESENT, ChildGoal, CounsellingSession, TherapySession
from trial.dataquality.models import QUERY_KINDS, QUERY_STATES, VERIFIABLE, DataQuery, Verification
from trial.fidelity.models import FidelityDraw, FidelityRating, FidelitySample
from trial.outcomes.models import NotDone
from trial.outcomes.notdone import missing_reasons
from trial.participants.models import Allocation, Assessment, Participant, Screening, StatusEvent
from trial.participants.service import age_in_months, status_label
from trial.protocol.service import current as current_protocol
from trial.randomize import errors as randomization_errors
from trial.randomize.lists import Stream
from trial.randomize.models import RandomizationError, Stratum
from trial.safety.models import EXPECTEDNESS, RELATEDNESS, REPORTED_TO, SERIOUSNESS, SEVERITIES, AdverseEvent
from trial.safety.models import OUTCOMES as AE_OUTCOMES
from trial.sites.models import Site
from trial.status.models import Deviation
from trial.timeline import course_window, local_date, planned_sessions

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,7}$")
CODES_RE = re.compile(r"^[A-Z]{2,8}$")  # a SAS format name (v5: 8 characters, no digit at its end) and a Stata label
MAX_LABEL = 40        # SAS transport v5: variable and table labels
MAX_STATA_LABEL = 80  # Stata: variable labels
ARM_REVEALING_EVENTS = ("not_received", "discontinued_intervention")


@dataclass(frozen=True)
class Codes:
    """The values a coded variable takes and what each means. In the CSV files the value is the
    key (``low``); in the Stata and SAS files it is a number with a value label (Stata) or a
    format (SAS, defined by syntax/load.sas): keys are numbered 1, 2, ... in the order given,
    numbers (0/1 flags, 1-5 scales) are kept as they are."""
    name: str
    items: tuple[tuple[int | str, str], ...]

    def __post_init__(self):
        if not CODES_RE.match(self.name):
            raise ValueError(f"code list name {self.name!r} must be 2 to 8 capital letters")

    @property
    def numeric(self) -> bool:
        return all(isinstance(k, int) for k, _ in self.items)

    def code_of(self) -> dict:
        return {k: k for k, _ in self.items} if self.numeric else {k: i + 1 for i, (k, _) in enumerate(self.items)}

    def value_labels(self) -> dict[int, str]:
        code = self.code_of()
        return {code[k]: meaning for k, meaning in self.items}

    def meanings(self) -> str:
        """For the dictionary: 'low = Music therapy, 1 session per week; high = ...'."""
        return "; ".join(f"{k} = {m}" for k, m in self.items)

    def numbered(self) -> str:
        """For the dictionary: the numbers the Stata and SAS files hold ('1 = low; 2 = high')."""
        code = self.code_of()
        return "" if self.numeric else "; ".join(f"{code[k]} = {k}" for k, _ in self.items)


def codes(name: str, kind_or_items, keys=None) -> Codes:
    """A code list from the catalogue's words for ``kind`` (``keys`` in that order), or from
    (key, meaning) pairs."""
    if isinstance(kind_or_items, str):
        words = LABELS[kind_or_items]
        return Codes(name, tuple((k, words[k]) for k in (keys if keys is not None else words)))
    return Codes(name, tuple(kind_or_items))


YESNO = Codes("NOYES", ((0, "No"), (1, "Yes")))


@dataclass
class Var:
    name: str
    label: str
    type: str            # "str", "int", "float", "date", "datetime"
    units: str = ""
    allowed: str = ""    # a range ("0-20") or what a text holds; coded variables give ``codes``
    source: str = ""
    codes: Codes | None = None
    instrument: str = ""  # the protocol's instrument, field and visit the value comes from, where it is one
    visit: str = ""
    field: str = ""
    primary: bool = False  # the protocol's primary outcome

    def __post_init__(self):
        if not NAME_RE.match(self.name):
            raise ValueError(f"variable name {self.name!r} is not a valid name of at most 8 characters")
        if self.codes is not None and self.codes.numeric and self.type != "int":
            raise ValueError(f"{self.name}: numeric codes need an integer variable")

    @property
    def kind(self) -> str:
        """The variable's type as the dictionary names it."""
        if self.codes is not None:
            return "integer (coded)" if self.codes.numeric else "text (coded)"
        return {"str": "text", "int": "integer", "float": "number"}.get(self.type, self.type)


@dataclass
class Table:
    name: str
    label: str
    vars: list[Var]
    rows: list[tuple] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # what else a reader of the table needs (adsl: the dummy arms' weights)

    def __post_init__(self):
        if not NAME_RE.match(self.name):
            raise ValueError(f"table name {self.name!r} is not a valid name of at most 8 characters")
        if len(self.label) > MAX_LABEL:
            raise ValueError(f"table label of {self.name} is too long")
        names = [v.name for v in self.vars]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate variable names in {self.name}")


DUMMY_LABEL = "dummy-allocation"


def dummy_allocation(seed: bytes, study_ids: list[str], arms: list[dict]) -> tuple[dict[str, str], dict[str, int]]:
    """A dummy allocation for a blinded bundle: codes A, B, C ... assigned to the randomized
    participants at random in the protocol's ratio, from ``seed`` alone, so it is independent of
    the real allocation. Returns (study id -> code, code -> weight).

    Derivation (fixed, so anyone can re-derive it from the seed in the README): an HMAC-SHA256
    stream (trial.randomize.lists.Stream) with label ``dummy-allocation``; first a Fisher-Yates
    shuffle gives the arms' weights to the codes, then each code gets floor(N * w / W) places,
    the remaining places go one each to codes in a shuffled order, and the list of N codes is
    shuffled and given to the participants in study-id order."""
    stream = Stream(seed, DUMMY_LABEL)
    codes = [chr(ord("A") + i) for i in range(len(arms))]
    weights = [a["weight"] for a in arms]
    stream.shuffle(weights)
    weight_of = dict(zip(codes, weights))
    n, total = len(study_ids), sum(weights)
    places = [c for c in codes for _ in range(n * weight_of[c] // total)]
    extra = list(codes)
    stream.shuffle(extra)
    places += extra[:n - len(places)]
    stream.shuffle(places)
    return dict(zip(sorted(study_ids), places)), weight_of


def short_names(instruments: list[dict]) -> dict[tuple[str, str], str]:
    """Variable names for instrument fields in the wide table: instrument[:4] + '_' + field[:3],
    made unique with a digit when two would clash."""
    out, used = {}, set()
    for ins in instruments:
        for f in ins["fields"]:
            base = f"{ins['key'][:4]}_{f['key'][:3]}".lower()
            name, n = base, 1
            while name in used:
                name = f"{base[:7]}{n}"
                n += 1
            used.add(name)
            out[(ins["key"], f["key"])] = name
    return out


GUESS_CODES = Codes("GUESS", (("music_therapy", "Guessed: music therapy"), ("usual_care", "Guessed: usual care"),
                                ("unsure", "Unsure")))
PRESENT_WORDS = {"child": "The child alone", "child_and_parent": "The child with a parent"}


def arm_codes(content: dict) -> Codes:
    """The arms in level order (trial.analysis.service.arm_levels: the reference arm first, then the
    protocol's order): the numbers 1..k of the Stata and SAS files, the levels of R's factor."""
    label = {a["key"]: a["label"] for a in content["arms"]}
    return Codes("ARM", tuple((k, label[k]) for k in arm_levels(content)))


def dummy_arm_codes(content: dict, weight_of: dict[str, int]) -> Codes:
    """A blinded bundle's dummy codes in the same level order as the arms (arm_codes): each takes
    the place of the arm it stands for (the code standing for the reference arm first), under the
    same code list name, so that a program written on the blinded bundle runs on the unblinded one."""
    return Codes("ARM", tuple((c, f"Dummy arm {c}") for c in arm_levels(content, True, weight_of)))


def visit_codes(content: dict) -> Codes:
    return Codes("VISIT", tuple((v["key"], v["label"]) for v in content["visits"]))


def instrument_codes(content: dict) -> Codes:
    return Codes("INSTR", tuple((i["key"], i["label"]) for i in content["instruments"]))


def reason_codes(content: dict) -> Codes:
    """The protocol's reasons a form is not done ([[missing_reasons]])."""
    return Codes("NDREASON", tuple((r["key"], r["label"]) for r in missing_reasons(content)))


def item_codes(content: dict) -> Codes:
    """The items of the long table: a field's key, meaning its instrument's and its own label."""
    words: dict[str, list[str]] = {}
    for ins in content["instruments"]:
        for f in ins["fields"]:
            words.setdefault(f["key"], []).append(f"{ins['label']}: {f['label']}")
    return Codes("ITEM", tuple((k, " / ".join(w)) for k, w in words.items()))


def technique_label(content: dict, key: str) -> str:
    words = content["course"].get("technique_labels", {}).get(key, {})
    return words.get("en") or key.replace("_", " ")


def field_var(name: str, ins: dict, f: dict, visit: str = "", primary: bool = False) -> Var:
    """A variable holding one of the protocol's instrument fields (at ``visit``, when given)."""
    kind = {"integer": "int", "number": "float", "boolean": "int"}.get(f["type"], "str")
    choice = YESNO if f["type"] == "boolean" else None
    if f["type"] == "choice":
        choice = Codes(re.sub(r"[^A-Z]", "", f"{ins['key']}{f['key']}".upper())[:8] or "CHOICE",
                       tuple((c, c.replace("_", " ")) for c in f["choices"]))
    rng = f"{f['min']}-{f['max']}" if f.get("min") is not None else ""
    label = f"{ins['label']}: {f['label']}" + (f", {visit}" if visit else "")
    return Var(name, label, kind, units=f.get("units") or "", allowed=rng, codes=choice,
               source=f"protocol instrument {ins['key']}, field {f['key']}", instrument=ins["key"], visit=visit,
               field=f["key"], primary=primary)


def _num(v):
    """A value of a numeric field: an int when it is one (integer scores are integers, not floats)."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _d(v):
    return v.isoformat() if v is not None else None


def _dt(v):
    return v.strftime("%Y-%m-%dT%H:%M:%S") if v is not None else None


def rows_of(db: Session, stmt) -> list:
    """The rows of a select of columns, executed on the session's connection (SQLAlchemy Core: no
    ORM loading machinery, a third faster over a trial's hundreds of thousands of rows)."""
    return db.connection().execute(stmt).all()


class _Reader:
    """The database as a variant's tables read it, through ``cache``: what both variants read (rows,
    and tables that are the same in both) is read or made once when they share it."""

    def __init__(self, db: Session, cache: dict):
        self.db, self.cache = db, cache

    def once(self, key: str, make):
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def fetch(self, key: str, stmt):
        return self.once(key, lambda: rows_of(self.db, stmt))

    def shared(self, name: str, make) -> Table:
        """A table that is the same in both variants: made once per cache, both hold the object
        (the bundle then makes its files once)."""
        return self.once(f"table:{name}", make)


@dataclass
class _Variant:
    """What a variant's tables are made from: the participants (in study-id order) and their
    allocations, the strata, the status events the variant shows, and its arm variable (the real
    arm, or the dummy code of a blinded variant)."""
    content: dict
    blinded: bool
    site: dict[int, str]
    participants: list
    pid: dict[int, str]
    alloc: dict
    strata: dict[int, str]
    events: dict[int, list]
    arm_var: Var
    dummy: dict[str, str]
    weight_of: dict[str, int] | None  # the dummy codes' weights (blinded)
    days: SiteDays  # the sites' calendar days of moments in UTC

    def site_day(self, p, when) -> str | None:
        """The site's calendar day (ISO) of a moment recorded in UTC (a child's enrolment, randomization)."""
        return self.days(p.site_id, when)

    def arm_of(self, p_id):
        a = self.alloc.get(p_id)
        return None if a is None else (self.dummy[self.pid[p_id]] if self.blinded else a.arm)


class SiteDays:
    """The site's calendar day (ISO) of moments recorded in UTC, by site id: the site's offset from
    UTC is worked out once per UTC day, and a moment of a day whose offset changes (a clock change)
    is converted on its own. (Converting every moment took 15 microseconds each: 0.3 s for the two
    dates of 10,000 children.)"""

    def __init__(self, tz_of: dict[int, str | None]):
        self.tz_of = tz_of
        self.offsets: dict[tuple[str, dt.date], dt.timedelta | None] = {}

    def __call__(self, site_id: int, when: dt.datetime | None) -> str | None:
        if when is None:
            return None
        tz = self.tz_of.get(site_id) or "UTC"
        key = (tz, when.date())
        if key not in self.offsets:
            self.offsets[key] = _offset_all_day(tz, key[1])
        offset = self.offsets[key]
        return (local_date(when, tz) if offset is None else (when + offset).date()).isoformat()


def _offset_all_day(tz: str, day: dt.date) -> dt.timedelta | None:
    """The zone's offset from UTC through the UTC day ``day``, or None when it changes that day."""
    zone = zoneinfo.ZoneInfo(tz)
    start = dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)
    first = start.astimezone(zone).utcoffset()
    last = (start + dt.timedelta(days=1, microseconds=-1)).astimezone(zone).utcoffset()
    return first if first == last else None


def build_tables(db: Session, blinded: bool, cache: dict | None = None, dummy_seed: bytes | None = None) -> list[Table]:
    """The tables of one variant. Pass the same ``cache`` to build both variants from one read of
    the database. A blinded variant carries the dummy allocation drawn from ``dummy_seed``."""
    cache = {} if cache is None else cache
    read = _Reader(db, cache)
    v = _read_variant(db, read, blinded, dummy_seed)
    content, pid = v.content, v.pid
    tables = [participants_table(v),
              read.shared("screen", lambda: screening_table(content, v.site, v.participants, read.fetch)),
              allocation_table(v)]
    # (the sessions go here, made last: a parallel build reads them in a helper meanwhile, see trial.exports.bundle)
    sessions_at = len(tables)
    tables.append(read.shared("counsel", lambda: counselling_table(pid, read.fetch)))
    assessments = read.once("assessments", lambda: _read_assessments(db, pid))
    made = read.once("tables:assessments", lambda: assessment_tables(content, pid, assessments))  # the same in both
    tables += [made["assessl"], made["assessw"], not_done_table(v, read), guesses_table(v, assessments), events_table(v),
               deviations_table(v, read), *consent_tables(v, read), randomization_errors_table(v, read)]
    tables += data_management_tables(db, content, blinded, pid)
    tables.append(adsl_table(db, v, assessments))
    if not blinded:
        rows, notes = cache["session_rows"]() if "session_rows" in cache else session_rows(db, v.participants, pid)
        tables[sessions_at:sessions_at] = [*session_tables(content, rows, notes), *intervention_tables(db, content, pid)]
    return tables


def _read_variant(db: Session, read: _Reader, blinded: bool, dummy_seed: bytes | None) -> _Variant:
    content = current_protocol(db).content
    sites = db.execute(select(Site.id, Site.code, Site.timezone)).all()
    site = {s.id: s.code for s in sites}
    participants = read.fetch("participants", select(
        Participant.id, Participant.study_id, Participant.site_id, Participant.sex, Participant.date_of_birth,
        Participant.consent_date, Participant.enrolled_at, Participant.screening_id, Participant.strata)
        .order_by(Participant.study_id))
    pid = {p.id: p.study_id for p in participants}
    alloc = {a.participant_id: a for a in read.fetch("alloc", select(
        Allocation.participant_id, Allocation.arm, Allocation.seq, Allocation.randomized_at, Allocation.stratum_id))}
    strata = dict(db.execute(select(Stratum.id, Stratum.key)).all())
    events: dict[int, list] = {}
    for e in read.fetch("events", select(StatusEvent.participant_id, StatusEvent.type, StatusEvent.on, StatusEvent.reason)
                        .order_by(StatusEvent.participant_id, StatusEvent.on, StatusEvent.id)):
        if blinded and e.type in ARM_REVEALING_EVENTS:
            continue
        events.setdefault(e.participant_id, []).append(e)
    arm_var, dummy, weight_of = _arm_var(content, blinded, dummy_seed, [pid[p_id] for p_id in alloc])
    days = read.once("site_days", lambda: SiteDays({s.id: s.timezone for s in sites}))  # (both variants')
    return _Variant(content, blinded, site, participants, pid, alloc, strata, events, arm_var, dummy, weight_of, days)


def _read_assessments(db: Session, pid: dict[int, str]) -> list:
    """Every assessment, by child (in study-id order), visit and instrument."""
    return sorted(rows_of(db, select(
        Assessment.participant_id, Assessment.visit, Assessment.instrument, Assessment.performed_on, Assessment.values,
        Assessment.out_of_window, Assessment.allocation_guess, Assessment.guess_confidence, Assessment.entered_by_id)),
        key=lambda a: (pid[a.participant_id], a.visit, a.instrument))


def _arm_var(content: dict, blinded: bool, dummy_seed: bytes | None,
             study_ids: list[str]) -> tuple[Var, dict[str, str], dict[str, int] | None]:
    """The arm variable, with the dummy allocation and its codes' weights in a blinded variant: ``arm``
    in both, text, its levels in the same order (the reference arm, or the dummy code standing for
    it, first: arm_codes, dummy_arm_codes); only the labels differ."""
    if not blinded:
        return Var("arm", "Arm", "str", codes=arm_codes(content), source="randomization"), {}, None
    if dummy_seed is None:
        raise ValueError("a blinded dataset needs the lock's dummy-allocation seed")
    dummy, weight_of = dummy_allocation(dummy_seed, study_ids, content["arms"])
    ratio = ":".join(str(weight_of[c]) for c in sorted(weight_of))
    arm_var = Var("arm", "Arm: DUMMY allocation (blinded)", "str", codes=dummy_arm_codes(content, weight_of),
                  source=f"dummy allocation in the ratio {ratio}, independent of the real one (README); each "
                         "code in the level of the arm of its weight (the reference arm's first)")
    return arm_var, dummy, weight_of


def _factor_keys(content: dict) -> list[str]:
    """The randomization's stratification factors other than the site (each a stratum variable)."""
    return [f["key"] for f in content["randomization"]["factors"] if f["key"] != "site"]


def _all_factor_keys(content: dict) -> list[str]:
    """Every stratification factor of the randomization, the site included."""
    return [f["key"] for f in content["randomization"]["factors"]]


def corrected_column(factor: str) -> str:
    """ADSL's column of a stratification factor as corrected (randomization errors): c_ and the
    factor's first six letters (c_site). The analysis adjusts for it (trial.analysis.service.adjust_column)."""
    return f"c_{factor[:6]}"


def participants_table(v: _Variant) -> Table:
    """One row per enrolled child: the dates, the arm (its label unblinded), the final status and
    the strata."""
    labels = {a["key"]: a["label"] for a in v.content["arms"]}
    factor_vars = _factor_keys(v.content)
    pvars = [Var("studyid", "Study ID", "str"), Var("site", "Site code", "str"),
             Var("sex", "Sex", "str", codes=codes("SEX", "sex")), Var("brthdt", "Date of birth", "date"),
             Var("consdt", "Date of consent", "date"),
             Var("enroldt", "Date of enrolment (site's calendar)", "date",
                 source="the site's calendar day of the moment of enrolment (in its time zone)"),
             Var("randdt", "Date of randomization (site's calendar)", "date",
                 source="the site's calendar day of the moment of randomization (in its time zone), as in adsl; "
                        "the moment itself in UTC: alloc.randdtm"), v.arm_var]
    if not v.blinded:
        pvars.append(Var("armlbl", "Arm label", "str", source="protocol"))
    pvars.append(Var("status", "Final status", "str",
                     codes=codes("STATUS", "status", ["enrolled", "randomized", "withdrawn", "lost_to_follow_up", "died"]
                                 + ([] if v.blinded else ["discontinued_intervention", "not_received"]))))
    pvars += [Var(f"s_{k[:6]}", f"Stratum: {k}", "str", source="enrolment") for k in factor_vars]
    rows = []
    for p in v.participants:
        a = v.alloc.get(p.id)
        row = [p.study_id, v.site[p.site_id], p.sex, _d(p.date_of_birth), _d(p.consent_date), v.site_day(p, p.enrolled_at),
               v.site_day(p, a.randomized_at) if a else None, v.arm_of(p.id)]
        if not v.blinded:
            row.append(labels[a.arm] if a else None)
        row.append(status_label(a is not None, v.events.get(p.id, [])))
        row += [(p.strata or {}).get(k) for k in factor_vars]
        rows.append(tuple(row))
    return Table("particip", "Participants", pvars, rows)


def allocation_table(v: _Variant) -> Table:
    """Each randomized child's stratum, slot and arm; a blinded variant leaves the slot out (a
    blinded reader has no use for a child's place in the concealed list)."""
    avars = [Var("studyid", "Study ID", "str"), Var("site", "Site code", "str"), Var("stratum", "Stratum", "str"),
             *([] if v.blinded else [Var("slot", "Slot in the stratum's list", "int")]),
             Var("randdtm", "Randomized at (UTC)", "datetime"), v.arm_var]
    p_site = {p.id: v.site[p.site_id] for p in v.participants}
    rows = [(v.pid[p_id], p_site[p_id], v.strata[a.stratum_id], *(() if v.blinded else (a.seq,)), _dt(a.randomized_at),
             v.arm_of(p_id)) for p_id, a in sorted(v.alloc.items(), key=lambda kv: v.pid[kv[0]])]
    return Table("alloc", "Allocation", avars, rows)


def guesses_table(v: _Variant, assessments) -> Table:
    """The assessors' guesses of the allocation, each with the assessor's pseudonymous code (who
    entered the assessment: see assessor_code), beside the arm (for the blinding index, and to look
    for an assessor who guesses right too often)."""
    gvars = [Var("studyid", "Study ID", "str"), Var("visit", "Visit", "str", codes=visit_codes(v.content)),
             Var("perfdt", "Date of the assessment", "date"),
             Var("guess", "Assessor's guess of the allocation", "str", codes=GUESS_CODES),
             Var("confid", "Confidence of the guess (1-5)", "int", allowed="1-5"),
             Var("assessor", "Assessor (a code, not a name)", "str", source="R + the user id of who entered it"),
             v.arm_var]
    rows = [(v.pid[a.participant_id], a.visit, _d(a.performed_on), a.allocation_guess, a.guess_confidence,
             assessor_code(a.entered_by_id), v.arm_of(a.participant_id)) for a in assessments if a.allocation_guess]
    return Table("guesses", "Blinding: assessors' guesses", gvars, rows)


FREE_TEXT_WITHHELD = "(withheld while blinded)"


def events_table(v: _Variant) -> Table:
    """The status events the variant shows (a blinded one, none that tells the arm)."""
    evars = [Var("studyid", "Study ID", "str"),
             Var("evtype", "Event", "str", codes=codes("EVENT", "event", ["withdrawn", "lost_to_follow_up", "died"]
                                                       + ([] if v.blinded else ["discontinued_intervention", "not_received"]))),
             Var("evdt", "Date of the event", "date"), Var("reason", "Reason", "str")]
    # free text written by unblinded staff can name the intervention: withheld from blinded readers
    rows = sorted(((v.pid[p_id], e.type, _d(e.on), FREE_TEXT_WITHHELD if v.blinded else e.reason)
                   for p_id, evs in v.events.items() for e in evs),
                  key=lambda r: (r[0], r[2], r[1]))
    return Table("events", "Status events", evars, rows)


def deviations_table(v: _Variant, read: _Reader) -> Table:
    """The protocol deviations (a blinded variant: none about the intervention, no description)."""
    dvars = [Var("studyid", "Study ID", "str"), Var("devdt", "Date of the deviation", "date"),
             Var("category", "Category", "str", codes=codes("DEVCAT", "deviation")), Var("descr", "Description", "str")]
    rows = sorted((v.pid[d.participant_id], _d(d.on), d.category, FREE_TEXT_WITHHELD if v.blinded else d.description)
                  for d in read.fetch("deviations", select(Deviation.participant_id, Deviation.on, Deviation.category,
                                                           Deviation.description))
                  if not (v.blinded and d.category == "intervention"))
    return Table("deviatn", "Protocol deviations", dvars, rows)


def not_done_table(v: _Variant, read: _Reader) -> Table:
    """The forms recorded as not done, with the protocol's reason (the missing outcomes' why); the
    text of a reason is free text: withheld from a blinded reader, as a status event's reason is."""
    nvars = [Var("studyid", "Study ID", "str"), Var("visit", "Visit", "str", codes=visit_codes(v.content)),
             Var("instr", "Instrument", "str", codes=instrument_codes(v.content)),
             Var("reason", "Why the form was not done", "str", codes=reason_codes(v.content), source="protocol [[missing_reasons]]"),
             Var("ndtext", "Reason: text", "str", allowed=f"free text; {FREE_TEXT_WITHHELD!r} in a blinded bundle"),
             Var("recdt", "Recorded at (UTC)", "datetime")]
    order = {x["key"]: i for i, x in enumerate(v.content["visits"])}
    rows = sorted(((v.pid[n.participant_id], n.visit, n.instrument, n.reason,
                    (FREE_TEXT_WITHHELD if n.text else None) if v.blinded else n.text, _dt(n.recorded_at))
                   for n in read.fetch("not_done", select(NotDone.participant_id, NotDone.visit, NotDone.instrument,
                                                          NotDone.reason, NotDone.text, NotDone.recorded_at))
                   if n.participant_id in v.pid),
                  key=lambda r: (r[0], order.get(r[1], 99), r[2]))
    return Table("notdone", "Forms not done, with the reason", nvars, rows)


def randomization_errors_table(v: _Variant, read: _Reader) -> Table:
    """The randomization errors (the allocation kept: intention to treat); the text is free text,
    withheld from a blinded reader."""
    rvars = [Var("studyid", "Study ID", "str"),
             Var("kind", "Kind of randomization error", "str", codes=codes("RANDERR", "randomization_error",
                                                                            list(randomization_errors.KINDS))),
             Var("factor", "Stratification factor (wrong stratum)", "str"),
             Var("asrand", "Value as randomized", "str", source="the allocation's stratum"),
             Var("correct", "Correct value", "str"),
             Var("errtext", "What happened", "str", allowed=f"free text; {FREE_TEXT_WITHHELD!r} in a blinded bundle"),
             Var("recdt", "Recorded at (UTC)", "datetime")]
    rows = sorted(((v.pid[e.participant_id], e.kind, e.field, e.as_randomized, e.correct_value,
                    FREE_TEXT_WITHHELD if v.blinded else e.text, _dt(e.recorded_at))
                   for e in read.fetch("randerr", select(
                       RandomizationError.participant_id, RandomizationError.kind, RandomizationError.field,
                       RandomizationError.as_randomized, RandomizationError.correct_value, RandomizationError.text,
                       RandomizationError.recorded_at).order_by(RandomizationError.recorded_at, RandomizationError.id))
                   if e.participant_id in v.pid), key=lambda r: (r[0], r[6] or ""))
    return Table("randerr", "Randomization errors (allocation kept)", rvars, rows)


def consent_options(content: dict) -> list[tuple[str, str, str]]:
    """The protocol's consent options (issue 28) as columns of the consent table: (variable name,
    option key, label), in the protocol's order; none when the protocol declares no consent."""
    out, used = [], set()
    for doc in (content.get("consent") or {}).get("documents", []):
        for o in doc.get("options", []):
            if o["key"] in {k for _, k, _ in out}:
                continue
            base = "o_" + re.sub(r"[^a-z0-9_]", "", o["key"].lower())[:6]
            name, n = base, 1
            while name in used:
                n += 1
                name = f"{base[:8 - len(str(n))]}{n}"
            used.add(name)
            out.append((name, o["key"], str(o.get("label") or o["key"])[:MAX_LABEL]))
    return out


def consent_tables(v: _Variant, read: _Reader) -> list[Table]:
    """The consents each family gave (document, version, language, signed on, signer, each option
    of the protocol as a yes/no column, empty when not recorded) and the withdrawals of consent
    with their scope and data use; the withdrawal's free text only in the unblinded variant (it
    could name an arm), and a withdrawal from the intervention alone not in a blinded one."""
    opts = consent_options(v.content)
    cvars = [Var("studyid", "Study ID", "str"), Var("document", "Consent document", "str"),
             Var("version", "Document version", "str"), Var("language", "Language it was read in", "str"),
             Var("signdt", "Date signed", "date"),
             Var("signer", "Signer", "str", allowed="parent, guardian, child (assent)")]
    cvars += [Var(name, label, "int", codes=YESNO, source=f"consent option {key}") for name, key, label in opts]

    def option(options, key):
        return None if not isinstance(options, dict) or key not in options else int(bool(options[key]))
    crows = sorted((v.pid[c.participant_id], c.document, c.version, c.language, _d(c.signed_on), c.signer,
                    *(option(c.options, key) for _, key, _ in opts))
                   for c in read.fetch("consents", select(Consent.participant_id, Consent.document, Consent.version,
                                                          Consent.language, Consent.signed_on, Consent.signer,
                                                          Consent.options))
                   if c.participant_id in v.pid)
    wvars = [Var("studyid", "Study ID", "str"), Var("wdrdt", "Withdrawn from (date)", "date"),
             Var("scope", "Scope of the withdrawal", "str",
                 codes=codes("WDRSCOPE", "withdrawal_scope", [x for x in SCOPES if not v.blinded or x != "intervention"])),
             Var("datause", "Use of the data collected", "str", codes=codes("DATAUSE", "data_use", DATA_USES)),
             Var("text", "Notes", "str")]
    wrows = sorted((v.pid[w.participant_id], _d(w.on), w.scope, w.data_use,
                    FREE_TEXT_WITHHELD if v.blinded and w.text else w.text)
                   for w in read.fetch("withdrawals", select(ConsentWithdrawal.participant_id, ConsentWithdrawal.on,
                                                             ConsentWithdrawal.scope, ConsentWithdrawal.data_use,
                                                             ConsentWithdrawal.text))
                   # a withdrawal from the intervention alone tells a therapy arm (as a discontinued
                   # intervention does): left out of a blinded variant
                   if w.participant_id in v.pid and not (v.blinded and w.scope == "intervention"))
    return [Table("consent", "Consents", cvars, crows), Table("withdraw", "Withdrawals of consent", wvars, wrows)]


SESSION_TABLES = ("sessions", "sessnote")


def session_tables(content: dict, rows: list[tuple], notes: list[tuple]) -> list[Table]:
    """The sessions (unblinded only) and the therapists' notes on them, from session_rows."""
    techniques = "; ".join(f"{k} = {technique_label(content, k)}" for k in content["course"]["techniques"])
    svars = [Var("studyid", "Study ID", "str"), Var("sessdt", "Session date", "date"),
             Var("attend", "Attendance", "str", codes=codes("ATTEND", "attendance")),
             Var("minutes", "Duration", "int", units="minutes"),
             Var("techniq", "Techniques used (';'-separated)", "str", allowed=techniques),
             Var("engage", "Child engagement (1-5)", "int", allowed="1-5"),
             Var("outcours", "Outside the course window", "int", codes=YESNO),
             Var("present", "Who took part", "str", codes=Codes("PRESENT", tuple((k, PRESENT_WORDS[k]) for k in PRESENT))),
             Var("goals", "Child's goals worked on (';'-separated)", "str",
                 allowed="; ".join(f"{g['key']} = {g['label']}" for g in content.get("goals", []))),
             Var("therap", "Therapist who led it (code)", "str")]
    return [Table("sessions", "Music-therapy sessions", svars, rows),
            Table("sessnote", "Therapists' notes on sessions", [Var("studyid", "Study ID", "str"),
                                                               Var("sessdt", "Session date", "date"),
                                                               Var("note", "Therapist's note", "str")], notes)]


def session_rows(db: Session, participants, pid: dict[int, str]) -> tuple[list[tuple], list[tuple]]:
    """The sessions table's rows and the therapists' notes, in study-id order (``participants``
    are in it): the largest table of a trial."""
    by_child, notes_of = _sessions_by_child(db, pid)
    rows, notes = [], []
    for p in participants:  # in study-id order
        rows += by_child.pop(p.id, ())
        notes += notes_of.pop(p.id, ())
    return rows, notes


def _sessions_by_child(db: Session, pid: dict[int, str]) -> tuple[dict[int, list], dict[int, list]]:
    """The sessions' rows and the notes, by child (in date order).

    A third of a million rows: each repeated value (a child's id, a day, a word, a therapist's
    code) is one shared object, not one a row (memory), and is worked out once (time). They come
    in the order of the (child, day) index, with no sort in the database (session_rows puts them
    in study-id order a child at a time)."""
    decoded: dict[str | None, str | None] = {}

    def techniques_of(raw):  # at most a few dozen distinct lists: decode each once
        if raw not in decoded:
            decoded[raw] = ";".join(json.loads(raw)) or None if raw else None
        return decoded[raw]
    day_of: dict = {}
    one_of: dict = {}
    code_of: dict = {}
    by_child: dict[int, list] = {}
    notes_of: dict[int, list] = {}
    for p_id, held, attendance, minutes, tech, engage, outside, note, present, goals, by in db.connection().execute(
            select(TherapySession.participant_id, TherapySession.held_on, TherapySession.attendance,
                   TherapySession.minutes, cast(TherapySession.techniques, Text), TherapySession.engagement,
                   TherapySession.outside_course, TherapySession.note, TherapySession.present,
                   cast(TherapySession.goals, Text), TherapySession.logged_by_id)
            .order_by(TherapySession.participant_id, TherapySession.held_on)
            .execution_options(yield_per=10000)):  # streamed: the largest table
        day = day_of.get(held)
        if day is None:
            day = day_of[held] = held.isoformat()
        code = code_of.get(by)
        if code is None:
            code = code_of[by] = therapist_code(by)
        sid = pid[p_id]
        mine = by_child.get(p_id)
        if mine is None:
            mine = by_child[p_id] = []
        mine.append((sid, day, one_of.setdefault(attendance, attendance), minutes, techniques_of(tech), engage,
                     1 if outside else 0, one_of.setdefault(present, present), techniques_of(goals), code))
        if note:
            notes_of.setdefault(p_id, []).append((sid, day, note))
    return by_child, notes_of


def screening_table(content: dict, site: dict, participants, fetch) -> Table:
    """The screening log: every screening, its outcome and each criterion's answer."""
    criteria = content["criteria"]
    svars = [Var("scrid", "Screening number", "int"), Var("site", "Site code", "str"), Var("scrdt", "Date of screening", "date"),
             Var("outcome", "Screening outcome", "str", codes=codes("SCREEN", "screening_outcome")),
             Var("failcrit", "Criteria not met (keys, ';'-separated)", "str", allowed="; ".join(c["key"] for c in content["criteria"])),
             Var("declined", "Family declined", "int", codes=YESNO),
             Var("othrsn", "Other reason not enrolled", "str"), Var("studyid", "Study ID if enrolled", "str"),
             Var("lognum", "Site's screening-log number", "str")]
    svars += [Var(f"crit{i + 1}", c["question"], "int", codes=YESNO,
                  source=f"criterion {c['key']}: {c['question']}") for i, c in enumerate(criteria)]
    enrolled = {p.screening_id: p.study_id for p in participants}
    rows = []
    for s in fetch("screenings", select(Screening.id, Screening.site_id, Screening.screened_on, Screening.outcome,
                                        Screening.failed_criteria, Screening.declined, Screening.other_reason,
                                        Screening.answers, Screening.log_number).order_by(Screening.id)):
        rows.append((s.id, site[s.site_id], _d(s.screened_on), s.outcome, ";".join(s.failed_criteria or []) or None,
                     int(s.declined), s.other_reason, enrolled.get(s.id), s.log_number)
                    + tuple(int(s.answers.get(c["key"])) if c["key"] in s.answers else None for c in criteria))
    return Table("screen", "Screening log", svars, rows)


def counselling_table(pid: dict, fetch) -> Table:
    """The parents' counselling sessions."""
    cvars = [Var("studyid", "Study ID", "str"), Var("number", "Counselling session number", "int"),
             Var("counsdt", "Counselling date", "date"), Var("attended", "Parents attended", "int", codes=YESNO)]
    rows = sorted((pid[c.participant_id], c.number, _d(c.held_on), int(c.attended)) for c in fetch("counselling",
        select(CounsellingSession.participant_id, CounsellingSession.number, CounsellingSession.held_on,
               CounsellingSession.attended)))
    return Table("counsel", "Parent counselling sessions", cvars, rows)


def assessment_tables(content: dict, pid: dict, assessments) -> dict[str, Table]:
    """The assessments, long (one row per item) and wide (one row per child and visit)."""
    return {"assessl": _assessments_long(content, pid, assessments),
            "assessw": _assessments_wide(content, pid, assessments)}


def _instrument_fields(content: dict) -> dict[tuple[str, str], tuple[dict, dict]]:
    """Every field of every instrument, by (instrument, field) key, in the protocol's order."""
    return {(i["key"], f["key"]): (i, f) for i in content["instruments"] for f in i["fields"]}


def _assessments_long(content: dict, pid: dict, assessments) -> Table:
    """One row per item given: its child, visit, instrument, value, date and window flag."""
    integer_items = all(f["type"] == "integer" for i in content["instruments"] for f in i["fields"]
                        if f["type"] in ("integer", "number"))
    lvars = [Var("studyid", "Study ID", "str"), Var("visit", "Visit", "str", codes=visit_codes(content)),
             Var("instr", "Instrument", "str", codes=instrument_codes(content)),
             Var("item", "Item", "str", codes=item_codes(content)),
             Var("value", "Value", "int" if integer_items else "float"), Var("perfdt", "Date performed", "date"),
             Var("outwin", "Outside the visit window", "int", codes=YESNO)]
    rows = []
    keys_of: dict[str, list[str]] = {}  # each instrument's fields, in the protocol's order
    for ik, fk in _instrument_fields(content):
        keys_of.setdefault(ik, []).append(fk)
    day_of: dict = {}
    for a in assessments:
        values = a.values
        day = day_of.get(a.performed_on)
        if day is None:
            day = day_of[a.performed_on] = _d(a.performed_on)
        sid, late = pid[a.participant_id], int(a.out_of_window)
        for fk in keys_of.get(a.instrument, ()):
            if (v := values.get(fk)) is not None:
                rows.append((sid, a.visit, a.instrument, fk, _num(v), day, late))
    return Table("assessl", "Assessments, long (one row per item)", lvars, rows)


def _assessments_wide(content: dict, pid: dict, assessments) -> Table:
    """One row per child and visit: every field of every instrument, then each instrument's date
    performed and window flag."""
    names = short_names(content["instruments"])
    fields = _instrument_fields(content)
    prim = content["primary_outcome"]
    wvars = [Var("studyid", "Study ID", "str"), Var("visit", "Visit", "str", codes=visit_codes(content))]
    for (ik, fk), name in names.items():
        wvars.append(field_var(name, *fields[(ik, fk)], primary=(ik, fk) == (prim["instrument"], prim["field"])))
    perf = {ins["key"]: (f"{ins['key'][:4]}dt".lower(), f"{ins['key'][:4]}ow".lower()) for ins in content["instruments"]}
    for ins in content["instruments"]:
        d, w = perf[ins["key"]]
        wvars += [Var(d, f"{ins['label']}: date performed", "date", instrument=ins["key"]),
                  Var(w, f"{ins['label']}: outside the visit window", "int", codes=YESNO, instrument=ins["key"])]
    wide: dict[tuple[str, str], dict] = {}
    for a in assessments:
        row = wide.setdefault((pid[a.participant_id], a.visit), {})
        for fk, v in a.values.items():
            if (a.instrument, fk) in names and v is not None:
                row[names[(a.instrument, fk)]] = _num(v)
        if a.instrument in perf:
            row[perf[a.instrument][0]] = _d(a.performed_on)
            row[perf[a.instrument][1]] = int(a.out_of_window)
    visit_order = {v["key"]: i for i, v in enumerate(content["visits"])}
    rows = [(s, v) + tuple(vals.get(n) for n in [*names.values(), *(x for pair in perf.values() for x in pair)])
            for (s, v), vals in sorted(wide.items(), key=lambda kv: (kv[0][0], visit_order.get(kv[0][1], 99)))]
    return Table("assessw", "Assessments, wide (one row per visit)", wvars, rows)


EXIT_EVENTS = ("withdrawn", "lost_to_follow_up", "died")
ANALYSIS_TABLES = ("adsl",)  # written under analysis/ in the bundle


def visit_code(key: str, used: set[str]) -> str:
    """A short code of a visit for variable names: bl, m2, m5, m12 (first letter and digits)."""
    digits = "".join(ch for ch in key if ch.isdigit())
    code = "bl" if key == "baseline" else (key[0] + digits if digits else key[:3]).lower()
    base, n = code, 1
    while code in used:
        code, n = f"{base[:2]}{n}", n + 1
    used.add(code)
    return code


def field_code(ins: dict, f: dict, used: set[str]) -> str:
    """Four letters of an instrument's field for variable names: the instrument's first letter and
    three of the field's (asoc, arrb, acss, stot)."""
    letters = re.sub(r"[^a-z0-9]", "", f["key"].lower())
    code = (ins["key"][0] + letters[:3]).lower()
    base, n = code, 1
    while code in used:
        code, n = f"{base[:3]}{n}", n + 1
    used.add(code)
    return code


def adsl_table(db: Session, v: _Variant, assessments) -> Table:
    """The analysis dataset: one row per randomized child, with the strata, the arm (the dummy code
    in a blinded bundle), age at randomization, the trial's dates, each instrument's numeric fields
    at each visit with the date performed and the out-of-window flag, the sessions attended in the
    course and the dose (unblinded only: they tell the arm), and the population flags."""
    out_vars = _adsl_vars(v, _adsl_outcome_vars(v.content))
    made = _AdslRows(db, v, assessments)
    rows = [made.row(p) for p in v.participants if p.id in v.alloc]
    return Table("adsl", "Analysis dataset: one row per child", out_vars, rows,
                 meta={"dummy_weights": v.weight_of} if v.blinded else {})


def _instrument_letters(content: dict) -> dict[str, str]:
    """One letter an instrument (a digit added where two share one)."""
    iused: set[str] = set()
    icode = {}
    for ins in content["instruments"]:
        c, n = ins["key"][0].lower(), 1
        while c in iused:
            c, n = f"{ins['key'][0].lower()}{n}", n + 1
        iused.add(c)
        icode[ins["key"]] = c
    return icode


def _adsl_outcome_vars(content: dict) -> list[Var]:
    """Each instrument's numeric fields at each of its visits (asoc_m5), then the date it was
    performed (adt_m5), the out-of-window flag (aow_m5) and, for a form recorded as not done, the
    protocol's reason (anr_m5)."""
    prim = content["primary_outcome"]
    vused: set[str] = set()
    vcode = {v["key"]: visit_code(v["key"], vused) for v in content["visits"]}
    vlabel = {v["key"]: v["label"] for v in content["visits"]}
    icode = _instrument_letters(content)
    fused: set[str] = set()
    ivars = []
    for ins in content["instruments"]:
        numeric = [f for f in ins["fields"] if f["type"] in ("integer", "number")]
        codes_of = {f["key"]: field_code(ins, f, fused) for f in numeric}
        for vk in (v["key"] for v in content["visits"] if v["key"] in ins["visits"]):
            for f in numeric:
                name = f"{codes_of[f['key']]}_{vcode[vk]}"
                primary = (ins["key"], f["key"], vk) == (prim["instrument"], prim["field"], prim["visit"])
                ivars.append(field_var(name, ins, f, vlabel[vk], primary))
                ivars[-1].visit = vk
            ivars += [Var(f"{icode[ins['key']]}dt_{vcode[vk]}", f"{ins['label']}: date performed, {vlabel[vk]}", "date",
                          instrument=ins["key"], visit=vk),
                      Var(f"{icode[ins['key']]}ow_{vcode[vk]}", f"{ins['label']}: outside the visit window, {vlabel[vk]}", "int",
                          codes=YESNO, instrument=ins["key"], visit=vk),
                      Var(f"{icode[ins['key']]}nr_{vcode[vk]}", f"{ins['label']}: why not done, {vlabel[vk]}", "str",
                          codes=reason_codes(content), source="the form recorded as not done (notdone table); "
                          "empty when entered or simply missing", instrument=ins["key"], visit=vk)]
    return ivars


def _adsl_vars(v: _Variant, ivars: list[Var]) -> list[Var]:
    """The analysis dataset's variables: the child, the strata and the arm, the trial's dates, the
    outcomes (``ivars``), the dose (unblinded) and the population flags."""
    arm_var, months = v.arm_var, v.content["course"]["months"]
    out_vars = [Var("studyid", "Study ID", "str"), Var("site", "Site code", "str"), Var("stratum", "Randomization stratum", "str")]
    out_vars += [Var(f"s_{k[:6]}", f"Stratum: {k}", "str", source="enrolment") for k in _factor_keys(v.content)]
    out_vars += [Var(corrected_column(k), f"Stratum as corrected: {k}", "str",
                     source=f"{'site' if k == 'site' else 's_' + k[:6]} (as randomized), or the correct value of a "
                            "wrong-stratum randomization error (randerr); the primary analysis adjusts for it")
                 for k in _all_factor_keys(v.content)]
    out_vars += [Var("randinel", "Randomized though ineligible (randomization error)", "int",
                     source="1 when an 'ineligible' randomization error is recorded for the child (randerr), else 0"),
                 Var("randtwic", "Randomized twice (randomization error)", "int",
                     source="1 when a 'randomized_twice' randomization error is recorded for the child (randerr), else 0")]
    out_vars.append(Var(arm_var.name, arm_var.label, "str", codes=arm_var.codes, source=arm_var.source))
    if not v.blinded:
        out_vars.append(Var("armlbl", "Arm label", "str", source="protocol"))
    out_vars += [Var("sex", "Sex", "str", codes=codes("SEX", "sex")),
                 Var("agerand", "Age at randomization", "int", units="months"),
                 Var("consdt", "Date of consent", "date"), Var("randdt", "Date of randomization (site's calendar)", "date"),
                 Var("courend", "Last day of the course", "date", source=f"randomization day + {months} months - 1 day"),
                 Var("exitdt", "Date the child left the trial", "date", source="first withdrawal, loss to follow-up or death"),
                 Var("exitrsn", "Why the child left the trial", "str", codes=codes("EXIT", "event", EXIT_EVENTS))]
    out_vars += ivars
    if not v.blinded:
        out_vars += [Var("sessatt", "Sessions attended in the course", "int", units="sessions",
                         source="attended sessions within the course (those after it are not counted)"),
                     Var("sessout", "Sessions attended after the course", "int", units="sessions"),
                     Var("sessplan", "Sessions the course plans for the arm", "int", units="sessions"),
                     Var("dose", "Dose: sessions attended / planned", "float", source="sessatt / sessplan (none for usual care)")]
    return out_vars + _population_vars(v.content, v.blinded)


def _population_vars(content: dict, blinded: bool) -> list[Var]:
    """The analysis populations' flags: intention to treat, the primary outcome given and,
    unblinded, per protocol."""
    prim = content["primary_outcome"]
    min_dose = (content.get("analysis") or {}).get("per_protocol_min_dose", 0.5)
    out_vars = [Var("ittfl", "Intention-to-treat population", "int", codes=YESNO, source="every randomized child"),
                Var("primfl", "Has the primary outcome", "int", codes=YESNO,
                    source=f"{prim['instrument']}.{prim['field']} at {prim['visit']} entered")]
    if not blinded:
        out_vars.append(Var("ppfl", "Per-protocol population", "int", codes=YESNO,
                            source=f"has the primary outcome and, in a music-therapy arm, a dose of at least {min_dose:g}"))
    return out_vars


def _sessions_attended(db: Session) -> dict[int, tuple[int, int]]:
    """Each child's sessions attended within the course and after it."""
    attended: dict[int, tuple[int, int]] = {}
    for p_id, outside, n in db.execute(select(TherapySession.participant_id, TherapySession.outside_course, func.count())
                                       .where(TherapySession.attendance == "attended")
                                       .group_by(TherapySession.participant_id, TherapySession.outside_course)):
        a, o = attended.get(p_id, (0, 0))
        attended[p_id] = (a, o + n) if outside else (a + n, o)
    return attended


class _AdslRows:
    """The analysis dataset's rows, a randomized child at a time (in the order of _adsl_vars)."""

    def __init__(self, db: Session, v: _Variant, assessments):
        content = v.content
        self.v = v
        self.prim = content["primary_outcome"]
        self.tz = dict(db.execute(select(Site.id, Site.timezone)).all())
        self.arms = {a["key"]: a for a in content["arms"]}
        self.months = content["course"]["months"]
        self.factor_vars = _factor_keys(content)
        self.all_factors = _all_factor_keys(content)
        self.corrected = randomization_errors.corrected_strata(db)
        self.error_kinds = randomization_errors.kinds_of(db)
        self.not_done: dict[int, dict[tuple[str, str], str]] = {}
        for n in rows_of(db, select(NotDone.participant_id, NotDone.visit, NotDone.instrument, NotDone.reason)):
            self.not_done.setdefault(n.participant_id, {})[(n.instrument, n.visit)] = n.reason
        self.min_dose = (content.get("analysis") or {}).get("per_protocol_min_dose", 0.5)
        self.attended = {} if v.blinded else _sessions_attended(db)
        self.by_child: dict[int, dict[tuple[str, str], object]] = {}  # a child's assessment of each (instrument, visit)
        for a in assessments:
            self.by_child.setdefault(a.participant_id, {})[(a.instrument, a.visit)] = a
        # each (instrument, visit) with the numeric fields it gives, in the order of the variables (ivars)
        self.layout = [(ins["key"], vk, [f["key"] for f in ins["fields"] if f["type"] in ("integer", "number")])
                       for ins in content["instruments"]
                       for vk in (v["key"] for v in content["visits"] if v["key"] in ins["visits"])]
        self.day_of: dict = {}

    def row(self, p) -> tuple:
        v, prim, al = self.v, self.prim, self.v.alloc[p.id]
        start = local_date(al.randomized_at, self.tz[p.site_id])
        _, end = course_window(start, self.months)
        exits = [e for e in v.events.get(p.id, []) if e.type in EXIT_EVENTS]
        got = self.by_child.get(p.id, {})
        row = [p.study_id, v.site[p.site_id], v.strata[al.stratum_id]] + [(p.strata or {}).get(k) for k in self.factor_vars]
        fixed = self.corrected.get(p.id, {})
        row += [fixed.get(k, v.site[p.site_id] if k == "site" else (p.strata or {}).get(k)) for k in self.all_factors]
        kinds = self.error_kinds.get(p.id, set())
        row += [int("ineligible" in kinds), int("randomized_twice" in kinds)]
        row.append(v.arm_of(p.id))
        if not v.blinded:
            row.append(self.arms[al.arm]["label"])
        row += [p.sex, age_in_months(p.date_of_birth, start), _d(p.consent_date), _d(start), _d(end),
                _d(exits[0].on) if exits else None, exits[0].type if exits else None]
        row += self._outcomes(got, self.not_done.get(p.id, {}))
        primary = got.get((prim["instrument"], prim["visit"]))
        has_primary = primary is not None and primary.values.get(prim["field"]) is not None
        if v.blinded:
            return tuple(row + [1, int(has_primary)])
        dose, pp = self._dose(p.id, al.arm, start, end, has_primary)
        return tuple(row + dose + [1, int(has_primary), pp])

    def _outcomes(self, got: dict, not_done: dict) -> list:
        """A child's values of each (instrument, visit), with the date performed, the window flag
        and the reason a form not done was not."""
        out = []
        for ins, vk, fields in self.layout:
            a = got.get((ins, vk))
            if a is None:
                out += [None] * (len(fields) + 2) + [not_done.get((ins, vk))]
                continue
            values = a.values
            out += [_num(v) if (v := values.get(f)) is not None else None for f in fields]
            day = self.day_of.get(a.performed_on)
            if day is None:
                day = self.day_of[a.performed_on] = _d(a.performed_on)
            out += [day, int(a.out_of_window), None]
        return out

    def _dose(self, p_id: int, arm: str, start, end, has_primary: bool) -> tuple[list, int]:
        """The sessions attended in the course and after it, those it plans and the dose; and
        whether the child is in the per-protocol population."""
        att, out = self.attended.get(p_id, (0, 0))
        spw = self.arms[arm]["sessions_per_week"]
        plan = planned_sessions(spw, start, end) if spw else 0
        dose = round(att / plan, 3) if plan else None
        pp = int(has_primary and (spw == 0 or (dose is not None and dose >= self.min_dose)))
        return [att, out, plan, dose], pp


def therapist_code(user_id: int | None) -> str | None:
    """A therapist in the bundle: a code, not a name (the site's staff list maps it)."""
    return f"T{user_id:04d}" if user_id is not None else None


def assessor_code(user_id: int | None) -> str | None:
    """An assessor in the bundle: a code, not a name or an e-mail (the site's staff list maps it)."""
    return f"R{user_id:04d}" if user_id is not None else None


def intervention_tables(db: Session, content: dict, pid: dict[int, str]) -> list[Table]:
    """The intervention as delivered (unblinded bundle only): each child's goals, the fidelity
    draws with their seeds, and the ratings of the sampled sessions."""
    goals = Codes("GOAL", tuple((g["key"], g["label"]) for g in content.get("goals", []))) if content.get("goals") else None
    gvars = [Var("studyid", "Study ID", "str"), Var("goal", "Individual goal", "str", codes=goals),
             Var("descr", "What the goal means for the child", "str"), Var("active", "Still pursued", "int", codes=YESNO),
             Var("setdt", "Date the goal was set", "date")]
    grows = sorted((pid[g.participant_id], g.goal, g.description, int(g.active), _d(g.set_on))
                   for g in db.execute(select(ChildGoal)).scalars() if g.participant_id in pid)
    dvars = [Var("drawid", "Fidelity draw number", "int"), Var("therap", "Therapist whose sessions (code)", "str"),
             Var("seed", "Seed of the draw (hex)", "str"), Var("share", "Share of sessions drawn", "float"),
             Var("popn", "Sessions drawn from", "int"), Var("size", "Sessions drawn", "int"),
             Var("popsha", "SHA-256 of the population", "str"), Var("drawdtm", "Drawn at (UTC)", "datetime")]
    drows = [(d.id, therapist_code(d.therapist_id), d.seed, d.share, len(d.population), d.size, d.population_sha256,
              _dt(d.drawn_at)) for d in db.execute(select(FidelityDraw).order_by(FidelityDraw.id)).scalars()]
    fid = content.get("fidelity", {"items": [], "min": "", "max": "", "threshold": ""})
    rng = f"{fid['min']}-{fid['max']}"
    rvars = [Var("studyid", "Study ID", "str"), Var("sessdt", "Session date", "date"),
             Var("drawid", "Fidelity draw number", "int"), Var("therap", "Therapist who led it (code)", "str"),
             Var("rater", "Therapist who rated it (code)", "str"), Var("ratedt", "Date rated", "date")]
    rvars += [Var(f"fid{i + 1}", item["label"], "int", allowed=rng) for i, item in enumerate(fid["items"])]
    rvars += [Var("fidmean", "Mean fidelity score", "float", allowed=rng),
              Var("adherent", f"Mean at least {fid['threshold']} (adherent)", "int", codes=YESNO)]
    rrows = []
    for r, sess, draw in db.execute(select(FidelityRating, TherapySession, FidelitySample.draw_id)
                                    .join(FidelitySample, FidelitySample.session_id == FidelityRating.session_id)
                                    .join(TherapySession, TherapySession.id == FidelityRating.session_id)):
        if sess.participant_id in pid:
            rrows.append((pid[sess.participant_id], _d(sess.held_on), draw, therapist_code(sess.logged_by_id),
                          therapist_code(r.rater_id), _d(r.rated_on), *[r.scores.get(i["key"]) for i in fid["items"]],
                          r.mean, int(r.adherent)))
    rrows.sort(key=lambda x: (x[0], x[1]))
    return [Table("goals", "Individual goals", gvars, grows), Table("fiddraw", "Fidelity draws", dvars, drows),
            Table("fidrate", "Fidelity ratings of sampled sessions", rvars, rrows)]


def data_management_tables(db: Session, content: dict, blinded: bool, pid: dict[int, str]) -> list[Table]:
    """Adverse events with their follow-ups (unblinded bundle only: an AE can tell the arm), the
    queries with their threads (a blinded bundle holds only those a blinded assessor may read)
    and the source-verification marks (in a blinded bundle, none on sessions, events or AEs)."""
    out = [] if blinded else adverse_event_tables(db, pid)
    return out + query_tables(db, content, blinded, pid) + [verification_table(db, blinded, pid)]


def adverse_event_tables(db: Session, pid: dict[int, str]) -> list[Table]:
    """The adverse events, their follow-ups and the serious ones' reports."""
    aevars = [Var("studyid", "Study ID", "str"), Var("aeid", "Adverse event number", "int"),
              Var("term", "Adverse event term", "str"), Var("onset", "Date of onset", "date"),
              Var("severity", "Severity", "str", codes=codes("SEVERITY", "severity", SEVERITIES)),
              Var("serious", "Serious", "int", codes=YESNO),
              Var("seriousn", "Seriousness criteria (';'-separated)", "str",
                  allowed="; ".join(f"{k} = {LABELS['seriousness'][k]}" for k in SERIOUSNESS)),
              Var("related", "Relatedness to the intervention", "str", codes=codes("RELATED", "relatedness", RELATEDNESS)),
              Var("expected", "Expectedness", "str", codes=codes("EXPECTED", "expectedness", EXPECTEDNESS)),
              Var("outcome", "Outcome", "str", codes=codes("AEOUT", "ae_outcome", AE_OUTCOMES)),
              Var("resoldt", "Date resolved (or of death)", "date"), Var("descr", "Description", "str"),
              Var("reptdtm", "Reported at (UTC)", "datetime"), Var("ackdtm", "SAE acknowledged at (UTC)", "datetime")]
    aes = db.execute(select(AdverseEvent).order_by(AdverseEvent.id)).scalars().all()
    ae = Table("ae", "Adverse events", aevars, [
        (pid[a.participant_id], a.id, a.term, _d(a.onset), a.severity, int(a.serious), ";".join(a.seriousness) or None,
         a.relatedness, a.expectedness, a.outcome, _d(a.resolved_on), a.description, _dt(a.reported_at),
         _dt(a.acknowledged_at)) for a in aes])
    fuvars = [Var("studyid", "Study ID", "str"), Var("aeid", "Adverse event number", "int"),
              Var("fudt", "Date of the follow-up", "date"), Var("outcome", "Outcome", "str", codes=codes("AEOUT", "ae_outcome", AE_OUTCOMES)),
              Var("resoldt", "Date resolved (or of death)", "date"), Var("text", "Follow-up note", "str")]
    return [ae, Table("aefu", "Adverse event follow-ups", fuvars, [
        (pid[a.participant_id], a.id, _d(f.on), f.outcome, _d(f.resolved_on), f.text) for a in aes for f in a.follow_ups]),
        sae_report_table(db, aes, pid)]


def sae_report_table(db: Session, aes: list[AdverseEvent], pid: dict[int, str]) -> Table:
    """The reports of the serious adverse events onwards, in the order recorded: the first of an
    event is the one that acknowledged it and stopped its 24-hour clock."""
    rvars = [Var("studyid", "Study ID", "str"), Var("aeid", "Adverse event number", "int"),
             Var("repno", "Report number of the event (1: first)", "int"),
             Var("repto", "Reported to", "str", codes=codes("REPTO", "reported_to", REPORTED_TO)),
             Var("repdtm", "Reported at (UTC)", "datetime"), Var("repref", "Reference number of the recipient", "str"),
             Var("recby", "Recorded by", "str"), Var("recdtm", "Recorded at (UTC)", "datetime")]
    emails = dict(db.execute(select(User.id, User.email)).all())
    return Table("aerep", "Serious adverse event reports", rvars, [
        (pid[a.participant_id], a.id, n, r.reported_to, _dt(r.reported_at), r.reference, emails.get(r.recorded_by_id),
         _dt(r.recorded_at)) for a in aes for n, r in enumerate(a.reports, 1)])


def query_tables(db: Session, content: dict, blinded: bool, pid: dict[int, str]) -> list[Table]:
    """The data queries and their threads, a step a row (blinded: those a blinded assessor may read)."""
    q = select(DataQuery).order_by(DataQuery.id)
    if blinded:
        q = q.where(DataQuery.assessor_visible.is_(True))
    queries = db.execute(q).scalars().all()
    qvars = [Var("qid", "Query number", "int"), Var("studyid", "Study ID", "str"),
             Var("kind", "Record the query is about", "str", codes=codes("QKIND", "query_kind", QUERY_KINDS)),
             Var("targetid", "Number of that record", "int"), Var("field", "Field queried", "str"),
             Var("visit", "Visit", "str", codes=visit_codes(content)), Var("instr", "Instrument", "str", codes=instrument_codes(content)),
             Var("origin", "Raised by a person or a check", "str",
                 codes=Codes("QORIGIN", (("manual", "Raised by a person"), ("check", "Raised by an automatic check")))),
             Var("status", "Status at the lock", "str", codes=codes("QSTATUS", "query_status", QUERY_STATES)),
             Var("raisedby", "Raised by", "str"), Var("raisdtm", "Raised at (UTC)", "datetime"), Var("text", "Query", "str")]
    mvars = [Var("qid", "Query number", "int"), Var("msgno", "Step in the thread", "int"),
             Var("action", "Step", "str", codes=codes("QSTEP", "query_step", ["raise", "response", "close", "reopen"])),
             Var("by", "By", "str"),
             Var("atdtm", "At (UTC)", "datetime"), Var("text", "Text", "str"),
             Var("correctn", "Correction made with the answer (JSON)", "str")]
    return [Table("queries", "Data queries", qvars, [
                (x.id, pid[x.participant_id], x.kind, x.target_id, x.field, x.visit, x.instrument, x.origin, x.status,
                 x.raised_by, _dt(x.raised_at), x.text) for x in queries]),
            Table("querymsg", "Data query threads", mvars, [
                (x.id, n, m.action, m.by, _dt(m.at), m.text, json.dumps(m.correction, sort_keys=True) if m.correction else None)
                for x in queries for n, m in enumerate(x.messages, 1)])]


def verification_table(db: Session, blinded: bool, pid: dict[int, str]) -> Table:
    """The source-data verification marks (blinded: none on sessions, events or AEs)."""
    v = select(Verification).order_by(Verification.id)
    if blinded:
        v = v.where(Verification.kind.in_(("participant", "screening", "assessment")))
    vvars = [Var("studyid", "Study ID", "str"), Var("kind", "Record verified", "str", codes=codes("VKIND", "query_kind", VERIFIABLE)),
             Var("targetid", "Number of that record", "int"), Var("verifby", "Verified by", "str"),
             Var("verifdtm", "Verified at (UTC)", "datetime"), Var("cleardtm", "Mark cleared at (UTC)", "datetime"),
             Var("clearrsn", "Why the mark was cleared", "str")]
    return Table("verif", "Source-data verification marks", vvars, [
        (pid[m.participant_id], m.kind, m.target_id, m.verified_by, _dt(m.verified_at), _dt(m.cleared_at), m.cleared_reason)
        for m in db.execute(v).scalars()])
