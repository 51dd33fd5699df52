"""Demo data: TIME-A's countries as ten sites, a user of each role, synthetic participants."""
from __future__ import annotations

import datetime as dt
import random

from sqlalchemy import select
from sqlalchemy.orm import Session

from trial.auth.scope import CliActor
from trial.auth.service import create_user
from trial.enrollment.service import enroll, record_screening
from trial.errors import Conflict
from trial.outcomes.service import record_assessment
from trial.protocol.service import current, ensure_default
from trial.randomize.service import get_design, open_randomization, randomize
from trial.sites.models import Site
from trial.sites.service import create_site

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


def load_demo(db: Session, participants_per_site: int = 8, seed: int = 2011) -> list[tuple[str, str, str]]:
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
    criteria = current(db).content["criteria"]
    ok = {c["key"]: c["qualifying_answer"] for c in criteria}
    if get_design(db) is None:
        open_randomization(db, actor)
    today = dt.date.today()
    for code, *_ in SITES:
        for i in range(participants_per_site):
            screened = today - dt.timedelta(days=rng.randint(20, 200))
            answers = dict(ok)
            kind = i % 8
            if kind == 6:
                failing = criteria[rng.randrange(len(criteria))]["key"]
                answers[failing] = not ok[failing]
            sc = record_screening(db, actor, {"site": code, "screened_on": screened.isoformat(), "answers": answers,
                                              "declined": kind == 7})
            if sc.outcome != "eligible":
                continue
            born = screened - dt.timedelta(days=rng.randint(4 * 366, 6 * 365 + 300))
            p = enroll(db, actor, {"screening_id": sc.id, "consent_date": (screened + dt.timedelta(days=3)).isoformat(),
                                   "date_of_birth": born.isoformat(), "sex": rng.choice(["female", "male", "male", "male"])})
            if kind == 5:
                continue  # enrolled, waiting for the baseline assessment
            on = (screened + dt.timedelta(days=5)).isoformat()
            record_assessment(db, actor, p.study_id, {"visit": "baseline", "instrument": "ados2", "performed_on": on,
                                                      "values": {"social_affect": rng.randint(6, 18), "rrb": rng.randint(1, 8),
                                                                 "css": rng.randint(4, 10)}})
            record_assessment(db, actor, p.study_id, {"visit": "baseline", "instrument": "srs2", "performed_on": on,
                                                      "values": {"total_t": rng.randint(55, 90)}})
            if kind != 4:
                randomize(db, actor, p.study_id, f"demo-{p.study_id}")
    return logins
