"""Demo data: TIME-A's countries as ten sites, a user of each role, and synthetic participants at
every stage: screened out, enrolled, randomized months ago with sessions, counselling, follow-up
visits, blinded guesses, and a few withdrawals and losses to follow-up."""
from __future__ import annotations

import datetime as dt
import random

from sqlalchemy import select
from sqlalchemy.orm import Session

from trial.auth.service import create_user
from trial.course.service import log_counselling, log_session
from trial.enrollment.service import enroll, record_screening
from trial.errors import Conflict
from trial.outcomes.service import record_assessment
from trial.protocol.service import current, ensure_default
from trial.randomize.service import get_design, open_randomization, randomize
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
USERS = [
    ("admin", "admin@demo.trial", "Ada Admin", [("admin", None)]),
    ("manager", "manager@demo.trial", "Mona Manager", [("manager", None)]),
    ("statistician", "statistician@demo.trial", "Stan Statistician", [("statistician", None)]),
    ("coordinator", "coordinator@demo.trial", "Cora Coordinator", [("coordinator", "AT01"), ("coordinator", "NO01")]),
    ("therapist", "therapist@demo.trial", "Theo Therapist", [("therapist", "AT01"), ("therapist", "NO01")]),
    ("assessor", "assessor@demo.trial", "Asa Assessor", [("assessor", "AT01"), ("assessor", "NO01")]),
]
TECHNIQUES = ["free_improvisation", "structured_improvisation", "songs", "musical_games", "receptive_listening"]


def load_demo(db: Session, participants_per_site: int = 10, seed: int = 2011) -> list[tuple[str, str, str]]:
    if db.execute(select(Site.id)).first():
        raise Conflict("The database already has sites; the demo loads into an empty database only.")
    actor = CliActor(email="demo-loader")
    ensure_default(db, actor)
    for code, name, cc, tz, target in SITES:
        create_site(db, actor, {"code": code, "name": f"TIME-A {name}", "country": cc, "timezone": tz, "target": target})
    logins = []
    for role, email, name, roles in USERS:
        password = f"{role}-demo-2026"
        create_user(db, actor, email, name, password, roles)
        logins.append((role, email, password))
    rng = random.Random(seed)
    content = current(db).content
    criteria = content["criteria"]
    ok = {c["key"]: c["qualifying_answer"] for c in criteria}
    if get_design(db) is None:
        open_randomization(db, actor)
    for code, _name, _cc, tz, _target in SITES:
        today = local_today(tz)  # the site's date: east or west of UTC it may not be the server's
        for i in range(participants_per_site):
            screened = today - dt.timedelta(days=rng.randint(30, 400))
            answers = dict(ok)
            kind = i % 10
            if kind == 8:
                failing = criteria[rng.randrange(len(criteria))]["key"]
                answers[failing] = not ok[failing]
            sc = record_screening(db, actor, {"site": code, "screened_on": screened.isoformat(), "answers": answers,
                                              "declined": kind == 9})
            if sc.outcome != "eligible":
                continue
            born = screened - dt.timedelta(days=rng.randint(4 * 366, 6 * 365 + 300))
            consent = screened + dt.timedelta(days=3)
            p = enroll(db, actor, {"screening_id": sc.id, "consent_date": consent.isoformat(),
                                   "date_of_birth": born.isoformat(), "sex": rng.choice(["female", "male", "male", "male"])},
                       at=dt.datetime.combine(consent, dt.time(9, 0)))  # enrolled on the day of consent
            if kind == 7:
                continue  # enrolled, waiting for the baseline assessment
            base_on = screened + dt.timedelta(days=5)
            _assess(db, actor, rng, p.study_id, "baseline", base_on)
            record_assessment(db, actor, p.study_id, {"visit": "baseline", "instrument": "srs2", "performed_on": base_on.isoformat(),
                                                      "values": {"total_t": rng.randint(55, 90)}})
            if kind == 6:
                continue  # ready, not yet randomized
            rand_day = base_on + dt.timedelta(days=3)
            arm = randomize(db, actor, p.study_id, f"demo-{p.study_id}",
                            at=dt.datetime.combine(rand_day, dt.time(10, 0))).allocation.arm
            _follow(db, actor, rng, content, p.study_id, arm, rand_day, today, kind)
    return logins


def _assess(db, actor, rng, study_id, visit, on, guess=False):
    data = {"visit": visit, "instrument": "ados2", "performed_on": on.isoformat(),
            "values": {"social_affect": rng.randint(6, 18), "rrb": rng.randint(1, 8), "css": rng.randint(4, 10)}}
    if guess:
        data["allocation_guess"] = rng.choice(["music_therapy", "usual_care", "unsure", "unsure"])
        data["guess_confidence"] = rng.randint(1, 4)
    record_assessment(db, actor, study_id, data)


def _follow(db, actor, rng, content, study_id, arm, start, today, kind):
    """Sessions, counselling, follow-up visits and the odd exit, up to today."""
    per_week = next(a["sessions_per_week"] for a in content["arms"] if a["key"] == arm)
    stop = None
    if kind == 5:
        stop = ("withdrawn", start + dt.timedelta(days=rng.randint(20, 60)), "family withdrew consent")
    elif kind == 4 and per_week:
        stop = ("discontinued_intervention", start + dt.timedelta(days=rng.randint(30, 90)), "child distressed by sessions")
    _, course_end = course_window(start, content["course"]["months"])
    if per_week:
        day = start + dt.timedelta(days=1)
        while day <= min(course_end, today):
            if stop and day >= stop[1]:
                break
            for k in range(per_week):
                held = day + dt.timedelta(days=2 * k)
                if held > today:
                    break
                attendance = rng.choices(["attended", "cancelled", "no_show"], [0.85, 0.1, 0.05])[0]
                log_session(db, actor, study_id, {"held_on": held.isoformat(), "attendance": attendance,
                                                  "minutes": 30 if attendance == "attended" else None,
                                                  "techniques": rng.sample(TECHNIQUES, 2) if attendance == "attended" else [],
                                                  "engagement": rng.randint(2, 5) if attendance == "attended" else None})
            day += dt.timedelta(days=7)
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
