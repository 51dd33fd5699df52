"""The tables of a locked dataset, with their data dictionary.

Variable names are at most 8 characters and labels at most 40 (the limits of SAS transport v5;
Stata allows 32 and 80), checked when a table is defined. A blinded dataset carries a dummy
allocation (codes A, B, ... drawn at random in the protocol's ratio, independent of the real
allocation) instead of arms, and leaves out everything that reveals an allocation: sessions,
intervention events and deviations, adherence.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from sqlalchemy import Text, cast, select
from sqlalchemy.orm import Session

from trial.course.models import PRESENT, ChildGoal, CounsellingSession, TherapySession
from trial.dataquality.models import QUERY_KINDS, QUERY_STATES, VERIFIABLE, DataQuery, Verification
from trial.fidelity.models import FidelityDraw, FidelityRating, FidelitySample
from trial.participants.models import Allocation, Assessment, Participant, Screening, StatusEvent
from trial.participants.service import status_label
from trial.protocol.service import current as current_protocol
from trial.randomize.lists import Stream
from trial.randomize.models import Stratum
from trial.safety.models import EXPECTEDNESS, RELATEDNESS, SERIOUSNESS, SEVERITIES, AdverseEvent
from trial.safety.models import OUTCOMES as AE_OUTCOMES
from trial.sites.models import Site
from trial.status.models import Deviation

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,7}$")
MAX_LABEL = 40
ARM_REVEALING_EVENTS = ("not_received", "discontinued_intervention")


@dataclass
class Var:
    name: str
    label: str
    type: str            # "str", "int", "float", "date", "datetime"
    units: str = ""
    allowed: str = ""
    source: str = ""

    def __post_init__(self):
        if not NAME_RE.match(self.name):
            raise ValueError(f"variable name {self.name!r} is not a valid name of at most 8 characters")
        if len(self.label) > MAX_LABEL:
            raise ValueError(f"label of {self.name} is longer than {MAX_LABEL} characters: {self.label!r}")


@dataclass
class Table:
    name: str
    label: str
    vars: list[Var]
    rows: list[tuple] = field(default_factory=list)

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


def _d(v):
    return v.isoformat() if v is not None else None


def _dt(v):
    return v.strftime("%Y-%m-%dT%H:%M:%S") if v is not None else None


def build_tables(db: Session, blinded: bool, cache: dict | None = None, dummy_seed: bytes | None = None) -> list[Table]:
    """The tables of one variant. Pass the same ``cache`` to build both variants from one read of
    the database. A blinded variant carries the dummy allocation drawn from ``dummy_seed``."""
    cache = {} if cache is None else cache

    def fetch(key: str, stmt):
        if key not in cache:
            cache[key] = db.execute(stmt).all()
        return cache[key]

    content = current_protocol(db).content
    labels = {a["key"]: a["label"] for a in content["arms"]}
    site = dict(db.execute(select(Site.id, Site.code)).all())
    pid = {}
    participants = fetch("participants", select(Participant.id, Participant.study_id, Participant.site_id, Participant.sex,
                                     Participant.date_of_birth, Participant.consent_date, Participant.enrolled_at,
                                     Participant.screening_id, Participant.strata).order_by(Participant.study_id))
    for p in participants:
        pid[p.id] = p.study_id
    alloc = {a.participant_id: a for a in fetch("alloc", select(Allocation.participant_id, Allocation.arm, Allocation.seq,
                                                               Allocation.randomized_at, Allocation.stratum_id))}
    strata = dict(db.execute(select(Stratum.id, Stratum.key)).all())
    events: dict[int, list] = {}
    for e in fetch("events", select(StatusEvent.participant_id, StatusEvent.type, StatusEvent.on, StatusEvent.reason)
                   .order_by(StatusEvent.participant_id, StatusEvent.on, StatusEvent.id)):
        if blinded and e.type in ARM_REVEALING_EVENTS:
            continue
        events.setdefault(e.participant_id, []).append(e)
    dummy: dict[str, str] = {}
    if blinded:
        if dummy_seed is None:
            raise ValueError("a blinded dataset needs the lock's dummy-allocation seed")
        dummy, weight_of = dummy_allocation(dummy_seed, [pid[p_id] for p_id in alloc], content["arms"])
        ratio = ":".join(str(weight_of[c]) for c in sorted(weight_of))
        arm_var = Var("armcd", "Arm code: DUMMY allocation (blinded)", "str", allowed=", ".join(sorted(weight_of)),
                      source=f"dummy allocation in the ratio {ratio}, independent of the real one (README)")
    else:
        arm_var = Var("arm", "Arm", "str", allowed=", ".join(labels), source="randomization")

    def arm_of(p_id):
        a = alloc.get(p_id)
        return None if a is None else (dummy[pid[p_id]] if blinded else a.arm)

    factor_vars = [f["key"] for f in content["randomization"]["factors"] if f["key"] != "site"]
    tables = []
    pvars = [Var("studyid", "Study ID", "str"), Var("site", "Site code", "str"),
             Var("sex", "Sex", "str", allowed="female, male"), Var("brthdt", "Date of birth", "date"),
             Var("consdt", "Date of consent", "date"), Var("enroldt", "Date of enrolment (UTC)", "date"),
             Var("randdt", "Date of randomization (UTC)", "date"), arm_var]
    if not blinded:
        pvars.append(Var("armlbl", "Arm label", "str", source="protocol"))
    pvars.append(Var("status", "Final status", "str",
                     allowed="enrolled, randomized, withdrawn, lost_to_follow_up, died" +
                     ("" if blinded else ", discontinued_intervention, not_received")))
    pvars += [Var(f"s_{k[:6]}", f"Stratum: {k}"[:MAX_LABEL].rstrip(), "str", source="enrolment") for k in factor_vars]
    rows = []
    for p in participants:
        a = alloc.get(p.id)
        row = [p.study_id, site[p.site_id], p.sex, _d(p.date_of_birth), _d(p.consent_date), _d(p.enrolled_at.date()),
               _d(a.randomized_at.date()) if a else None, arm_of(p.id)]
        if not blinded:
            row.append(labels[a.arm] if a else None)
        row.append(status_label(a is not None, events.get(p.id, [])))
        row += [(p.strata or {}).get(k) for k in factor_vars]
        rows.append(tuple(row))
    tables.append(Table("particip", "Participants", pvars, rows))

    criteria = content["criteria"]
    svars = [Var("scrid", "Screening number", "int"), Var("site", "Site code", "str"), Var("scrdt", "Date of screening", "date"),
             Var("outcome", "Screening outcome", "str", allowed="eligible, not_eligible, declined, other"),
             Var("failcrit", "Criteria not met", "str"), Var("declined", "Family declined (1 = yes)", "int", allowed="0, 1"),
             Var("othrsn", "Other reason not enrolled", "str"), Var("studyid", "Study ID if enrolled", "str")]
    svars += [Var(f"crit{i + 1}", c["question"][:MAX_LABEL].rstrip(), "int", allowed="0, 1",
                  source=f"criterion {c['key']}: {c['question']}") for i, c in enumerate(criteria)]
    enrolled = {p.screening_id: p.study_id for p in participants}
    rows = []
    for s in fetch("screenings", select(Screening.id, Screening.site_id, Screening.screened_on, Screening.outcome,
                                        Screening.failed_criteria, Screening.declined, Screening.other_reason,
                                        Screening.answers).order_by(Screening.id)):
        rows.append((s.id, site[s.site_id], _d(s.screened_on), s.outcome, ";".join(s.failed_criteria or []) or None,
                     int(s.declined), s.other_reason, enrolled.get(s.id))
                    + tuple(int(s.answers.get(c["key"])) if c["key"] in s.answers else None for c in criteria))
    tables.append(Table("screen", "Screening log", svars, rows))

    avars = [Var("studyid", "Study ID", "str"), Var("site", "Site code", "str"), Var("stratum", "Stratum", "str"),
             Var("slot", "Slot in the stratum's list", "int"), Var("randdtm", "Randomized at (UTC)", "datetime"), arm_var]
    p_site = {p.id: site[p.site_id] for p in participants}
    rows = [(pid[p_id], p_site[p_id], strata[a.stratum_id], a.seq, _dt(a.randomized_at), arm_of(p_id))
            for p_id, a in sorted(alloc.items(), key=lambda kv: pid[kv[0]])]
    tables.append(Table("alloc", "Allocation", avars, rows))

    if not blinded:
        techniques = ", ".join(content["course"]["techniques"])
        svars = [Var("studyid", "Study ID", "str"), Var("sessdt", "Session date", "date"),
                 Var("attend", "Attendance", "str", allowed="attended, cancelled, no_show"),
                 Var("minutes", "Duration", "int", units="minutes"), Var("techniq", "Techniques used", "str", allowed=techniques),
                 Var("engage", "Child engagement (1-5)", "int", allowed="1-5"),
                 Var("outcours", "Outside the course window (1 = yes)", "int", allowed="0, 1"),
                 Var("present", "Who took part", "str", allowed=", ".join(PRESENT)),
                 Var("goals", "Child's goals worked on", "str", allowed=", ".join(g["key"] for g in content.get("goals", []))),
                 Var("therap", "Therapist who led it (code)", "str")]
        decoded: dict[str | None, str | None] = {}

        def techniques_of(raw):  # at most a few dozen distinct lists: decode each once
            if raw not in decoded:
                decoded[raw] = ";".join(json.loads(raw)) or None if raw else None
            return decoded[raw]
        rows, notes = [], []
        for s in db.execute(select(Participant.study_id, TherapySession.held_on, TherapySession.attendance,
                                   TherapySession.minutes, cast(TherapySession.techniques, Text), TherapySession.engagement,
                                   TherapySession.outside_course, TherapySession.note, TherapySession.present,
                                   cast(TherapySession.goals, Text), TherapySession.logged_by_id)
                            .join(Participant, Participant.id == TherapySession.participant_id)
                            .order_by(Participant.study_id, TherapySession.held_on)
                            .execution_options(yield_per=10000)):  # streamed: the largest table
            day = _d(s[1])
            rows.append((s[0], day, s[2], s[3], techniques_of(s[4]), s[5], int(s[6]), s[8], techniques_of(s[9]),
                         therapist_code(s[10])))
            if s[7]:
                notes.append((s[0], day, s[7]))
        tables.append(Table("sessions", "Music-therapy sessions", svars, rows))
        tables.append(Table("sessnote", "Therapists' notes on sessions", [
            Var("studyid", "Study ID", "str"), Var("sessdt", "Session date", "date"), Var("note", "Therapist's note", "str")], notes))
        tables += intervention_tables(db, content, pid)

    cvars = [Var("studyid", "Study ID", "str"), Var("number", "Counselling session number", "int"),
             Var("counsdt", "Counselling date", "date"), Var("attended", "Parents attended (1 = yes)", "int", allowed="0, 1")]
    rows = sorted((pid[c.participant_id], c.number, _d(c.held_on), int(c.attended)) for c in fetch("counselling",
        select(CounsellingSession.participant_id, CounsellingSession.number, CounsellingSession.held_on,
               CounsellingSession.attended)))
    tables.append(Table("counsel", "Parent counselling sessions", cvars, rows))

    names = short_names(content["instruments"])
    fields = {(i["key"], f["key"]): (i, f) for i in content["instruments"] for f in i["fields"]}
    if "assessments" not in cache:
        cache["assessments"] = sorted(db.execute(select(
            Assessment.participant_id, Assessment.visit, Assessment.instrument, Assessment.performed_on, Assessment.values,
            Assessment.out_of_window, Assessment.allocation_guess, Assessment.guess_confidence)).all(),
            key=lambda a: (pid[a.participant_id], a.visit, a.instrument))
    assessments = cache["assessments"]
    lvars = [Var("studyid", "Study ID", "str"), Var("visit", "Visit", "str", allowed=", ".join(v["key"] for v in content["visits"])),
             Var("instr", "Instrument", "str", allowed=", ".join(i["key"] for i in content["instruments"])),
             Var("item", "Item", "str"), Var("value", "Value", "float"), Var("perfdt", "Date performed", "date"),
             Var("outwin", "Outside the visit window (1 = yes)", "int", allowed="0, 1")]
    rows = []
    for a in assessments:
        for (ik, fk), (ins, f) in fields.items():
            if ik == a.instrument and a.values.get(fk) is not None:
                rows.append((pid[a.participant_id], a.visit, a.instrument, fk, float(a.values[fk]), _d(a.performed_on),
                             int(a.out_of_window)))
    tables.append(Table("assessl", "Assessments, long (one row per item)", lvars, rows))

    wvars = [Var("studyid", "Study ID", "str"), Var("visit", "Visit", "str")]
    for (ik, fk), name in names.items():
        ins, f = fields[(ik, fk)]
        rng = f"{f['min']}-{f['max']}" if f.get("min") is not None else ""
        wvars.append(Var(name, f"{ins['key']} {f['label']}"[:MAX_LABEL].rstrip(), "float", units=f.get("units") or "",
                         allowed=rng, source=f"{ins['label']}: {f['key']}"))
    wide: dict[tuple[str, str], dict] = {}
    for a in assessments:
        row = wide.setdefault((pid[a.participant_id], a.visit), {})
        for fk, v in a.values.items():
            if (a.instrument, fk) in names and v is not None:
                row[names[(a.instrument, fk)]] = float(v)
    visit_order = {v["key"]: i for i, v in enumerate(content["visits"])}
    rows = [(s, v) + tuple(vals.get(n) for n in names.values())
            for (s, v), vals in sorted(wide.items(), key=lambda kv: (kv[0][0], visit_order.get(kv[0][1], 99)))]
    tables.append(Table("assessw", "Assessments, wide (one row per visit)", wvars, rows))

    gvars = [Var("studyid", "Study ID", "str"), Var("visit", "Visit", "str"), Var("perfdt", "Date of the assessment", "date"),
             Var("guess", "Assessor's guess of the allocation", "str", allowed="music_therapy, usual_care, unsure"),
             Var("confid", "Confidence of the guess (1-5)", "int", allowed="1-5"), arm_var]
    rows = [(pid[a.participant_id], a.visit, _d(a.performed_on), a.allocation_guess, a.guess_confidence, arm_of(a.participant_id))
            for a in assessments if a.allocation_guess]
    tables.append(Table("guesses", "Blinding: assessors' guesses", gvars, rows))

    evars = [Var("studyid", "Study ID", "str"), Var("evtype", "Event", "str",
                                                     allowed="withdrawn, lost_to_follow_up, died" + ("" if blinded else ", discontinued_intervention, not_received")),
             Var("evdt", "Date of the event", "date"), Var("reason", "Reason", "str")]
    # free text written by unblinded staff can name the intervention: withheld from blinded readers
    rows = sorted(((pid[p_id], e.type, _d(e.on), FREE_TEXT_WITHHELD if blinded else e.reason)
                   for p_id, evs in events.items() for e in evs),
                  key=lambda r: (r[0], r[2], r[1]))
    tables.append(Table("events", "Status events", evars, rows))

    dvars = [Var("studyid", "Study ID", "str"), Var("devdt", "Date of the deviation", "date"),
             Var("category", "Category", "str"), Var("descr", "Description", "str")]
    rows = sorted((pid[d.participant_id], _d(d.on), d.category, FREE_TEXT_WITHHELD if blinded else d.description)
                  for d in fetch("deviations", select(Deviation.participant_id, Deviation.on, Deviation.category,
                                                      Deviation.description))
                  if not (blinded and d.category == "intervention"))
    tables.append(Table("deviatn", "Protocol deviations", dvars, rows))
    tables += data_management_tables(db, blinded, pid)
    return tables


DM_TABLES = ("ae", "aefu", "queries", "querymsg", "verif", "goals", "fidrate")


def therapist_code(user_id: int | None) -> str | None:
    """A therapist in the bundle: a code, not a name (the site's staff list maps it)."""
    return f"T{user_id:04d}" if user_id is not None else None


def intervention_tables(db: Session, content: dict, pid: dict[int, str]) -> list[Table]:
    """The intervention as delivered (unblinded bundle only): each child's goals, the fidelity
    draws with their seeds, and the ratings of the sampled sessions."""
    goals = ", ".join(g["key"] for g in content.get("goals", []))
    gvars = [Var("studyid", "Study ID", "str"), Var("goal", "Individual goal", "str", allowed=goals),
             Var("descr", "What the goal means for the child", "str"), Var("active", "Still pursued (1 = yes)", "int", allowed="0, 1"),
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
    rvars += [Var(f"fid{i + 1}", item["label"][:40], "int", allowed=rng) for i, item in enumerate(fid["items"])]
    rvars += [Var("fidmean", "Mean fidelity score", "float", allowed=rng),
              Var("adherent", f"Mean at least {fid['threshold']} (1 = yes)", "int", allowed="0, 1")]
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
FREE_TEXT_WITHHELD = "(withheld while blinded)"


def data_management_tables(db: Session, blinded: bool, pid: dict[int, str]) -> list[Table]:
    """Adverse events with their follow-ups (unblinded bundle only: an AE can tell the arm), the
    queries with their threads (a blinded bundle holds only those a blinded assessor may read)
    and the source-verification marks (in a blinded bundle, none on sessions, events or AEs)."""
    out = []
    if not blinded:
        aevars = [Var("studyid", "Study ID", "str"), Var("aeid", "Adverse event number", "int"),
                  Var("term", "Adverse event term", "str"), Var("onset", "Date of onset", "date"),
                  Var("severity", "Severity", "str", allowed=", ".join(SEVERITIES)),
                  Var("serious", "Serious (1 = yes)", "int", allowed="0, 1"),
                  Var("seriousn", "Seriousness criteria", "str", allowed=", ".join(SERIOUSNESS)),
                  Var("related", "Relatedness to the intervention", "str", allowed=", ".join(RELATEDNESS)),
                  Var("expected", "Expectedness", "str", allowed=", ".join(EXPECTEDNESS)),
                  Var("outcome", "Outcome", "str", allowed=", ".join(AE_OUTCOMES)),
                  Var("resoldt", "Date resolved (or of death)", "date"), Var("descr", "Description", "str"),
                  Var("reptdtm", "Reported at (UTC)", "datetime"), Var("ackdtm", "SAE acknowledged at (UTC)", "datetime")]
        aes = db.execute(select(AdverseEvent).order_by(AdverseEvent.id)).scalars().all()
        out.append(Table("ae", "Adverse events", aevars, [
            (pid[a.participant_id], a.id, a.term, _d(a.onset), a.severity, int(a.serious), ";".join(a.seriousness) or None,
             a.relatedness, a.expectedness, a.outcome, _d(a.resolved_on), a.description, _dt(a.reported_at),
             _dt(a.acknowledged_at)) for a in aes]))
        fuvars = [Var("studyid", "Study ID", "str"), Var("aeid", "Adverse event number", "int"),
                  Var("fudt", "Date of the follow-up", "date"), Var("outcome", "Outcome", "str", allowed=", ".join(AE_OUTCOMES)),
                  Var("resoldt", "Date resolved (or of death)", "date"), Var("text", "Follow-up note", "str")]
        out.append(Table("aefu", "Adverse event follow-ups", fuvars, [
            (pid[a.participant_id], a.id, _d(f.on), f.outcome, _d(f.resolved_on), f.text) for a in aes for f in a.follow_ups]))
    q = select(DataQuery).order_by(DataQuery.id)
    if blinded:
        q = q.where(DataQuery.assessor_visible.is_(True))
    queries = db.execute(q).scalars().all()
    qvars = [Var("qid", "Query number", "int"), Var("studyid", "Study ID", "str"),
             Var("kind", "Record the query is about", "str", allowed=", ".join(QUERY_KINDS)),
             Var("targetid", "Number of that record", "int"), Var("field", "Field queried", "str"),
             Var("visit", "Visit", "str"), Var("instr", "Instrument", "str"),
             Var("origin", "Raised by a person or a check", "str", allowed="manual, check"),
             Var("status", "Status at the lock", "str", allowed=", ".join(QUERY_STATES)),
             Var("raisedby", "Raised by", "str"), Var("raisdtm", "Raised at (UTC)", "datetime"), Var("text", "Query", "str")]
    out.append(Table("queries", "Data queries", qvars, [
        (x.id, pid[x.participant_id], x.kind, x.target_id, x.field, x.visit, x.instrument, x.origin, x.status, x.raised_by,
         _dt(x.raised_at), x.text) for x in queries]))
    mvars = [Var("qid", "Query number", "int"), Var("msgno", "Step in the thread", "int"),
             Var("action", "Step", "str", allowed="raise, response, close, reopen"), Var("by", "By", "str"),
             Var("atdtm", "At (UTC)", "datetime"), Var("text", "Text", "str"),
             Var("correctn", "Correction made with the answer (JSON)", "str")]
    out.append(Table("querymsg", "Data query threads", mvars, [
        (x.id, n, m.action, m.by, _dt(m.at), m.text, json.dumps(m.correction, sort_keys=True) if m.correction else None)
        for x in queries for n, m in enumerate(x.messages, 1)]))
    v = select(Verification).order_by(Verification.id)
    if blinded:
        v = v.where(Verification.kind.in_(("participant", "screening", "assessment")))
    vvars = [Var("studyid", "Study ID", "str"), Var("kind", "Record verified", "str", allowed=", ".join(VERIFIABLE)),
             Var("targetid", "Number of that record", "int"), Var("verifby", "Verified by", "str"),
             Var("verifdtm", "Verified at (UTC)", "datetime"), Var("cleardtm", "Mark cleared at (UTC)", "datetime"),
             Var("clearrsn", "Why the mark was cleared", "str")]
    out.append(Table("verif", "Source-data verification marks", vvars, [
        (pid[m.participant_id], m.kind, m.target_id, m.verified_by, _dt(m.verified_at), _dt(m.cleared_at), m.cleared_reason)
        for m in db.execute(v).scalars()]))
    return out
