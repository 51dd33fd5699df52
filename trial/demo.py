"""Demo data: TIME-A's countries as ten sites, a user of each role, and synthetic participants at
every stage: screened out, enrolled, randomized months ago with sessions, counselling, follow-up
visits, blinded guesses, a few withdrawals and losses to follow-up; queries, adverse events and
source verification at the sites of the demo staff.

The demo is the same at every reset: every draw comes from ``seed`` (the same children, numbers
and allocations, with dates relative to the sites' today). Each child draws from a stream of its
own, so that a change to one child's story leaves the others as they were. The randomization
and the fidelity draw are opened with seeds derived from ``seed`` too (sealed and audited as any;
a real trial's come from the CSPRNG: ``trial randomization open`` never passes one)."""
from __future__ import annotations

import datetime as dt
import hashlib
import random

from sqlalchemy import select
from sqlalchemy.orm import Session

from trial.auth.service import create_user
from trial.catalogue import N_
from trial.course.models import TherapySession
from trial.course.service import log_counselling, log_session, set_goals
from trial.credentials import service as credentials
from trial.enrollment.service import enroll, record_screening
from trial.errors import Conflict
from trial.fidelity import service as fidelity
from trial.fidelity.models import FidelitySample
from trial.monitoring import service as monitoring
from trial.outcomes.service import check_missing_forms, record_assessment
from trial.participants.models import Allocation, Assessment, Participant
from trial.participants.service import allocation_of, events_of, randomization_day
from trial.protocol.service import current, ensure_default
from trial.queries import service as queries
from trial.randomize.service import get_design, open_randomization, randomize
from trial.safety import service as safety
from trial.scope import CliActor
from trial.sites.models import Site
from trial.sites.service import create_site
from trial.status.service import record_event
from trial.timeline import course_window
from trial.timeline import today as local_today

SITES = [
    ("AT01", "Vienna", "AT", "Europe/Vienna", 40), ("AU01", "Melbourne", "AU", "Australia/Melbourne", 40),
    ("BR01", "Sao Paulo", "BR", "America/Sao_Paulo", 30), ("IL01", "Haifa", "IL", "Asia/Jerusalem", 30),
    ("IT01", "Rome", "IT", "Europe/Rome", 30), ("KR01", "Seoul", "KR", "Asia/Seoul", 40),
    ("NO01", "Bergen", "NO", "Europe/Oslo", 50), ("NO02", "Oslo", "NO", "Europe/Oslo", 30),
    ("UK01", "London", "GB", "Europe/London", 40), ("US01", "New York", "US", "America/New_York", 40),
]
# the languages each site's families consent in, its default first (the sites in Austria also see
# English-speaking families, as Vienna's did in TIME-A)
SITE_LANGUAGES = {"AT": ["de", "en"], "BR": ["pt_BR"], "IL": ["he", "en"], "IT": ["it"], "KR": ["ko"], "NO": ["nb", "en"]}
USERS = [
    ("admin", "admin@demo.trial", "Ada Admin", [("admin", None)]),
    ("manager", "manager@demo.trial", "Mona Manager", [("manager", None)]),
    ("statistician", "statistician@demo.trial", "Stan Statistician", [("statistician", None)]),
    ("coordinator", "coordinator@demo.trial", "Cora Coordinator", [("coordinator", "AT01"), ("coordinator", "NO01")]),
    ("therapist", "therapist@demo.trial", "Theo Therapist", [("therapist", "AT01"), ("therapist", "NO01")]),
    ("therapist2", "therapist2@demo.trial", "Tove Therapist", [("therapist", "AT01"), ("therapist", "NO01")]),
    ("assessor", "assessor@demo.trial", "Asa Assessor", [("assessor", "AT01"), ("assessor", "NO01")]),
    ("monitor", "monitor@demo.trial", "Moe Monitor", [("monitor", "AT01"), ("monitor", "NO01")]),
    ("investigator", "investigator@demo.trial", "Ines Investigator", [("investigator", "AT01"), ("investigator", "NO01")]),
    ("dmc", "dmc@demo.trial", "Dag DMC", [("dmc", None)]),
]
# the demo's logins (printed by `make demo`): each passes the password rules (trial.auth.passwords),
# which refuse a password built from the user's own e-mail or name, like the old "manager-demo-2026"
DEMO_PASSWORDS = {"admin": "quiet-harbour-lantern", "manager": "copper-meadow-compass",
                  "statistician": "velvet-orbit-thistle", "coordinator": "amber-canyon-whistle",
                  "therapist": "silver-tambourine-fjord", "therapist2": "maple-cello-horizon",
                  "assessor": "granite-puzzle-heron", "monitor": "willow-beacon-saffron",
                  "investigator": "harbor-violin-quartz", "dmc": "lichen-tundra-metronome"}
TECHNIQUES = ["free_improvisation", "structured_improvisation", "songs", "musical_games", "receptive_listening"]
GOALS = ["eye_contact", "turn_taking", "emotional_expression", "vocalization", "social_tolerance", "joint_attention"]
GOAL_NOTES = {"eye_contact": "Looks up to the therapist when the music pauses",
              "turn_taking": "Waits for and takes a turn on the drum",
              "emotional_expression": "Shows joy or frustration in the playing, not only by leaving",
              "vocalization": "Sings or vocalizes with the guitar",
              "social_tolerance": "Stays in the room when the parent joins the session",
              "joint_attention": "Follows the therapist's gaze to the shared instrument"}


def load_demo(db: Session, participants_per_site: int = 10, seed: int = 2011) -> list[tuple[str, str, str]]:
    """Load the demo into an empty database: the protocol, the sites, the staff, randomization
    opened, the participants at every stage, the data management and the fidelity ratings.
    Returns the logins (role, e-mail, password)."""
    if db.execute(select(Site.id)).first():
        raise Conflict(N_("The database already has sites; the demo loads into an empty database only."))
    actor = CliActor(email="demo-loader")
    ensure_default(db, actor)
    for code, name, cc, tz, target in SITES:
        create_site(db, actor, {"code": code, "name": f"TIME-A {name}", "country": cc, "timezone": tz, "target": target,
                                "languages": SITE_LANGUAGES.get(cc, ["en"])})
    staff, logins = _staff(db, actor)
    content = current(db).content
    leads = _therapists(db, actor, staff)
    if get_design(db) is None:
        open_randomization(db, actor, seed=_derived(seed, "randomization"))
    for code, _name, _cc, tz, _target in SITES:
        today = local_today(tz)  # the site's date: east or west of UTC it may not be the server's
        for i in range(participants_per_site):
            _participant(db, actor, _stream(seed, f"child:{code}:{i}"), content, code, today, i % 10,
                         leads.get(code, actor))
    _data_management(db, staff, _stream(seed, "data-management"))
    _fidelity(db, staff, _stream(seed, "fidelity"), content, seed)
    return logins


def _derived(seed: int, purpose: str) -> bytes:
    """A 32-byte secret of the demo's own, the same at every reset (never a real trial's)."""
    return hashlib.sha256(f"TIME-A demo {seed} {purpose}".encode()).digest()


def _stream(seed: int, name: str) -> random.Random:
    """A random stream of its own for one part of the demo (str seeds hash with SHA-512: the same
    in every process, whatever PYTHONHASHSEED)."""
    return random.Random(f"{seed}:{name}")


def _staff(db: Session, actor) -> tuple[dict, list[tuple[str, str, str]]]:
    """A user of each role (by role), and their logins."""
    logins = []
    staff = {}
    for role, email, name, roles in USERS:
        password = DEMO_PASSWORDS[role]
        staff[role] = create_user(db, actor, email, name, password, roles)
        logins.append((role, email, password))
    return staff, logins


def _therapists(db: Session, actor, staff: dict) -> dict:
    """The therapists' registrations, and who leads the sessions at which site. Theo is registered
    in Austria for years; Tove's Norwegian registration runs out in 30 days (the therapists page
    warns). Theo leads the sessions at AT01, Tove those at NO01; each rates the other's sampled
    sessions. Elsewhere the data manager loads the sessions."""
    on = local_today("Europe/Vienna")
    credentials.record(db, actor, staff["therapist"], {"kind": "MTG-AT", "number": "MT-AT 2014/0417",
                                                       "valid_from": "2014-09-01", "valid_to": (on + dt.timedelta(days=1400)).isoformat()})
    credentials.record(db, actor, staff["therapist2"], {"kind": "MT-NMF", "number": "NMF-3391",
                                                        "valid_from": (on - dt.timedelta(days=900)).isoformat(),
                                                        "valid_to": (on + dt.timedelta(days=30)).isoformat()})
    return {"AT01": staff["therapist"], "NO01": staff["therapist2"]}


def _participant(db: Session, actor, rng: random.Random, content: dict, code: str, today: dt.date, kind: int,
                 therapist) -> None:
    """One screened child at a site, taken as far as its ``kind`` goes: 8 fails a criterion and 9
    declines; 7 is enrolled and waits for the baseline; 6 is ready, not yet randomized; the others
    are randomized and followed up to today (see :func:`_follow`)."""
    criteria = content["criteria"]
    ok = {c["key"]: c["qualifying_answer"] for c in criteria}
    screened = today - dt.timedelta(days=rng.randint(30, 400))
    answers = dict(ok)
    if kind == 8:
        failing = criteria[rng.randrange(len(criteria))]["key"]
        answers[failing] = not ok[failing]
    sc = record_screening(db, actor, {"site": code, "screened_on": screened.isoformat(), "answers": answers,
                                      "declined": kind == 9})
    if sc.outcome != "eligible":
        return
    born = screened - dt.timedelta(days=rng.randint(4 * 366, 6 * 365 + 300))
    consent = screened + dt.timedelta(days=3)
    # the parental consent with its options: most families allow the video recording of sessions
    own = random.Random(f"demo consent options {code} {sc.id}")  # (its own stream: the demo stays as it was)
    options = {"video_recording": own.random() < 0.8, "future_contact": own.random() < 0.6}
    parental = {"document": "parental_consent", "version": "1", "language": SITE_LANGUAGES.get(code[:2], ["en"])[0],
                "signed_on": consent.isoformat(), "signer": "parent", "options": options}
    p = enroll(db, actor, {"screening_id": sc.id, "consents": [parental],
                           "date_of_birth": born.isoformat(), "sex": rng.choice(["female", "male", "male", "male"])},
               at=dt.datetime.combine(consent, dt.time(9, 0)))  # enrolled on the day of consent
    if kind == 7:
        return  # enrolled, waiting for the baseline assessment
    base_on = screened + dt.timedelta(days=5)
    _assess(db, actor, rng, p.study_id, "baseline", base_on)
    record_assessment(db, actor, p.study_id, {"visit": "baseline", "instrument": "srs2", "performed_on": base_on.isoformat(),
                                              "values": {"total_t": rng.randint(55, 90)}})
    if kind == 6:
        return  # ready, not yet randomized
    rand_day = base_on + dt.timedelta(days=3)
    arm = randomize(db, actor, p.study_id, f"demo-{p.study_id}",
                    at=dt.datetime.combine(rand_day, dt.time(10, 0))).allocation.arm
    _follow(db, actor, rng, content, p.study_id, arm, rand_day, today, kind, therapist)


def _assess(db, actor, rng, study_id, visit, on, guess=False):
    data = {"visit": visit, "instrument": "ados2", "performed_on": on.isoformat(),
            "values": {"social_affect": rng.randint(6, 18), "rrb": rng.randint(1, 8), "css": rng.randint(4, 10)}}
    if guess:
        data["allocation_guess"] = rng.choice(["music_therapy", "usual_care", "unsure", "unsure"])
        data["guess_confidence"] = rng.randint(1, 4)
    record_assessment(db, actor, study_id, data)


def _follow(db, actor, rng, content, study_id, arm, start, today, kind, therapist):
    """Sessions, counselling, follow-up visits and the odd exit, up to today."""
    per_week = next(a["sessions_per_week"] for a in content["arms"] if a["key"] == arm)
    stop = None
    if kind == 5:
        stop = ("withdrawn", start + dt.timedelta(days=rng.randint(20, 60)), "family withdrew consent")
    elif kind == 4 and per_week:
        stop = ("discontinued_intervention", start + dt.timedelta(days=rng.randint(30, 90)), "child distressed by sessions")
    if per_week:
        _sessions(db, rng, content, study_id, per_week, start, today, stop, therapist)
    for n in range(3):
        held = start + dt.timedelta(days=10 + 45 * n)
        if held <= today and not (stop and stop[0] == "withdrawn" and held >= stop[1]):
            log_counselling(db, actor, study_id, {"held_on": held.isoformat()})
    for visit in content["visits"][1:]:
        on = start + dt.timedelta(days=visit["day"] + rng.randint(-7, 7))
        if on > today or (stop and stop[0] == "withdrawn" and on >= stop[1]) or (kind == 3 and visit["day"] > 100):
            continue
        _assess(db, actor, rng, study_id, visit["key"], on, guess=True)
        record_assessment(db, actor, study_id, {"visit": visit["key"], "instrument": "srs2", "performed_on": on.isoformat(),
                                                "values": {"total_t": rng.randint(50, 90)}})
    if stop and stop[1] <= today:
        record_event(db, actor, study_id, {"type": stop[0], "on": stop[1].isoformat(), "reason": stop[2]})
    if kind == 3 and start + dt.timedelta(days=180) <= today:
        record_event(db, actor, study_id, {"type": "lost_to_follow_up", "on": (start + dt.timedelta(days=180)).isoformat(),
                                           "reason": "family moved away, no contact"})


def _sessions(db, rng, content, study_id, per_week, start, today, stop, therapist):
    """The weekly music-therapy sessions of the course up to today (or the child's exit), the
    goals set after the first attended one and worked on in the sessions after it."""
    _, course_end = course_window(start, content["course"]["months"])
    goals: list[str] = []
    day = start + dt.timedelta(days=1)
    while day <= min(course_end, today):
        if stop and day >= stop[1]:
            break
        for k in range(per_week):
            held = day + dt.timedelta(days=2 * k)
            if held > today:
                break
            attendance = rng.choices(["attended", "cancelled", "no_show"], [0.85, 0.1, 0.05])[0]
            went = attendance == "attended"
            log_session(db, therapist, study_id, {"held_on": held.isoformat(), "attendance": attendance,
                                              "minutes": rng.choice([25, 30, 30, 30, 35, 40]) if went else None,
                                              "techniques": rng.sample(TECHNIQUES, 2) if went else [],
                                              "engagement": rng.randint(2, 5) if went else None,
                                              "present": rng.choice(["child", "child", "child_and_parent"]) if went else None,
                                              "goals": rng.sample(goals, min(len(goals), rng.randint(1, 2))) if went and goals else []})
            if went and not goals:  # the first attended session is the assessment: the goals follow it
                goals = rng.sample(GOALS, 3)
                set_goals(db, therapist, study_id, {"set_on": held.isoformat(),
                                                    "goals": [{"goal": g, "description": GOAL_NOTES[g]} for g in goals]})
        day += dt.timedelta(days=7)


def _data_management(db: Session, staff: dict, rng: random.Random) -> None:
    """The day-to-day loop at the demo staff's sites (AT01, NO01): the automatic checks, a few
    queries (answered, closed, open), adverse events with one serious event waiting for the
    manager's acknowledgement, and records a monitor has verified."""
    people = list(db.execute(select(Participant).join(Allocation, Allocation.participant_id == Participant.id)
                             .order_by(Participant.id)).scalars())
    check_missing_forms(db, people)
    exits = events_of(db, [p.id for p in people])
    here = [p for p in people if p.site.code in ("AT01", "NO01") and not exits.get(p.id)]  # still in the trial
    arms = {p.id: allocation_of(db, p.id).arm for p in here}
    music = [p for p in here if arms[p.id] != "usual" and db.execute(
        select(TherapySession.id).where(TherapySession.participant_id == p.id)).first()]
    _queries(db, staff, here, music)
    _adverse_events(db, staff, rng, here, music)
    # the monitor's source verification of the first children's records
    for p in here[:3]:
        monitoring.verify(db, staff["monitor"], p.study_id, {"on": {"kind": "participant"}})
        monitoring.verify(db, staff["monitor"], p.study_id, {"on": {"kind": "screening"}})
        for a in db.execute(select(Assessment).where(Assessment.participant_id == p.id, Assessment.visit == "baseline")).scalars():
            monitoring.verify(db, staff["monitor"], p.study_id, {"on": {"kind": "assessment", "id": a.id}})


def _queries(db: Session, staff: dict, here: list[Participant], music: list[Participant]) -> None:
    """Queries in each state: answered with a correction and closed, answered and still to be
    closed, and open ones."""
    monitor, manager = staff["monitor"], staff["manager"]
    # a value queried by the monitor and answered by the assessor with a correction
    a = db.execute(select(Assessment).where(Assessment.participant_id == here[0].id, Assessment.visit == "baseline",
                                            Assessment.instrument == "ados2")).scalar()
    up = a.values["rrb"] <= 6  # the worksheet's value is within the scale's 1-8 either way
    q = queries.raise_query(db, monitor, {"study_id": here[0].study_id, "on": {"kind": "assessment", "id": a.id, "field": "rrb"},
                                          "text": f"The source worksheet gives RRB 2 points {'higher' if up else 'lower'} "
                                                  "than entered. Please check."})
    fixed = dict(a.values, rrb=a.values["rrb"] + (2 if up else -2))
    queries.respond(db, staff["assessor"], q.id, {"text": "Transcription error; corrected from the worksheet.",
                                                  "correction": {"values": fixed}})
    queries.close(db, monitor, q.id, {"text": "Matches the source now."})
    # a session queried, answered by the therapist, still to be closed
    if music:
        sess = db.execute(select(TherapySession).where(TherapySession.participant_id == music[0].id).order_by(TherapySession.held_on)).scalars().first()
        q = queries.raise_query(db, monitor, {"study_id": music[0].study_id, "on": {"kind": "session", "id": sess.id},
                                              "text": "The session log on paper says 45 minutes; 30 were entered."})
        queries.respond(db, staff["therapist"], q.id, {"text": "The paper log is right: the session ran over. Please advise."})
    # open ones: the consent date, and an SRS-2 for the coordinator
    queries.raise_query(db, manager, {"study_id": here[1].study_id, "on": {"kind": "participant"},
                                      "text": "The consent form scan is missing from the eTMF. Please upload it and confirm the date."})
    if len(here) > 2:
        srs = db.execute(select(Assessment).where(Assessment.participant_id == here[2].id,
                                                  Assessment.instrument == "srs2")).scalars().first()
        if srs is not None:
            queries.raise_query(db, monitor, {"study_id": here[2].study_id, "on": {"kind": "assessment", "id": srs.id, "field": "total_t"},
                                              "text": "Was the parent form complete? Two items look blank on the scan."})


def _adverse_events(db: Session, staff: dict, rng: random.Random, here: list[Participant],
                    music: list[Participant]) -> None:
    """Adverse events: a mild one resolved, and a serious one the manager has not acknowledged yet."""
    coordinator = staff["coordinator"]
    for p, serious in ((here[3 % len(here)], False), (music[-1] if music else here[-1], True)):
        start = randomization_day(db, p, allocation_of(db, p.id))
        onset = min(start + dt.timedelta(days=rng.randint(20, 60)), local_today(p.site.timezone))
        if serious:
            ae = safety.record(db, coordinator, p.study_id, {
                "term": "Febrile seizure", "onset": onset.isoformat(), "severity": "severe", "serious": True,
                "seriousness": ["hospitalisation"], "relatedness": "not_related", "expectedness": "unexpected",
                "outcome": "recovering", "description": "Admitted overnight for observation; discharged the next day."})
            next_day = min(onset + dt.timedelta(days=1), local_today(p.site.timezone))  # never in the site's future
            safety.follow_up(db, coordinator, ae.id, {"on": next_day.isoformat(), "outcome": "recovering",
                                                      "text": "Discharged home; follow-up with the paediatrician next week."})
        else:
            safety.record(db, coordinator, p.study_id, {
                "term": "Upper respiratory tract infection", "onset": onset.isoformat(), "severity": "mild", "serious": False,
                "relatedness": "not_related", "outcome": "recovered",
                "resolved_on": min(onset + dt.timedelta(days=6), local_today(p.site.timezone)).isoformat()})


def _fidelity(db: Session, staff: dict, rng: random.Random, content: dict, seed: int) -> None:
    """The fidelity draw over Theo's and Tove's sessions, and most of the sample rated by the other."""
    emails = {u.id: u.email for u in staff.values()}
    fidelity.draw(db, staff["manager"], seed_for=lambda tid: _derived(seed, f"fidelity:{emails.get(tid, tid)}").hex())
    items = [i["key"] for i in content["fidelity"]["items"]]
    other = {staff["therapist"].id: staff["therapist2"], staff["therapist2"].id: staff["therapist"]}
    sampled = db.execute(select(TherapySession).join(FidelitySample, FidelitySample.session_id == TherapySession.id)
                         .order_by(TherapySession.id)).scalars().all()
    for i, s in enumerate(sampled):
        if i % 5 == 4:
            continue  # still to rate
        rater = other[s.logged_by_id]
        base = rng.choice([3, 4, 4, 5])
        fidelity.rate(db, rater, s.id, {"scores": {k: max(1, min(5, base + rng.choice([-1, 0, 0, 1]))) for k in items}})
