"""A small trial world for tests: protocol, sites, users of each role, API tokens, and helpers
to screen, enroll, assess and randomize."""
from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import itertools
import math
import re

from trial.auth import service as users
from trial.credentials import service as credentials
from trial.enrollment import service as enrollment
from trial.outcomes import service as outcomes
from trial.protocol.service import current, ensure_default
from trial.randomize import service as randomization
from trial.scope import CliActor
from trial.sites import service as sites

PASSWORD = "correct-horse-battery"
CLI = CliActor(email="cli:test")
ROLES = {
    "coordinator": [("coordinator", "AT01")],
    "coordinator_no": [("coordinator", "NO01")],
    "therapist": [("therapist", "AT01")],
    "assessor": [("assessor", "AT01")],
    "statistician": [("statistician", None)],
    "manager": [("manager", None)],
    "admin": [("admin", None)],
    "monitor": [("monitor", "AT01")],
}


_HASHES: dict[str, str] = {}


@contextlib.contextmanager
def _one_hash_per_password():
    """The world's users share one password: hash it (a real argon2id hash, ~25 ms) once per test
    process instead of seven times per test."""
    real = users.hash_password
    users.hash_password = lambda pw: _HASHES[pw] if pw in _HASHES else _HASHES.setdefault(pw, real(pw))
    try:
        yield
    finally:
        users.hash_password = real


class World:
    def __init__(self, db, app):
        self.db, self.app = db, app
        self.users, self.tokens = {}, {}
        self._n = itertools.count(1)

    def setup(self):
        ensure_default(self.db, CLI)
        for code, name in (("AT01", "Vienna"), ("NO01", "Bergen")):
            sites.create_site(self.db, CLI, {"code": code, "name": name, "country": code[:2], "target": 40})
        with _one_hash_per_password():
            for key, roles in ROLES.items():
                u = users.create_user(self.db, CLI, f"{key}@example.org", key.title(), PASSWORD, roles)
                self.users[key] = u
                self.tokens[key] = users.issue_token(self.db, CLI, u)
        self.credential(self.users["therapist"])
        self.db.commit()
        return self

    def credential(self, user, kind="MTG-AT", valid_from=None, valid_to=None):
        """A therapist's credential, valid by default from ten years back to three years on."""
        on = dt.date.today()
        return credentials.record(self.db, CLI, user, {
            "kind": kind, "number": f"{kind}-{user.id:05d}", "valid_from": (valid_from or on - dt.timedelta(days=3650)).isoformat(),
            "valid_to": (valid_to or on + dt.timedelta(days=1095)).isoformat()})

    def headers(self, who: str, **extra) -> dict:
        return {"Authorization": f"Bearer {self.tokens[who]}", **extra}

    def api(self, method: str, path: str, who: str | None, json=None, headers=None):
        h = dict(self.headers(who) if who else {})
        h.update(headers or {})
        client = self.app.test_client()
        return client.open("/api/v1" + path, method=method, json=json, headers=h)

    # clinical helpers (through the services, as the CLI would)
    def answers(self, **overrides):
        ans = {c["key"]: c["qualifying_answer"] for c in current(self.db).content["criteria"]}
        ans.update(overrides)
        return ans

    def screen(self, site="AT01", **kw):
        data = {"site": site, "screened_on": (dt.date.today() - dt.timedelta(days=30)).isoformat(),
                "answers": self.answers()}
        data.update(kw)
        sc = enrollment.record_screening(self.db, CLI, data)
        self.db.commit()
        return sc

    def enroll(self, site="AT01", **kw):
        sc = self.screen(site)
        data = {"screening_id": sc.id, "consent_date": (dt.date.today() - dt.timedelta(days=25)).isoformat(),
                "date_of_birth": (dt.date.today() - dt.timedelta(days=5 * 365)).isoformat(), "sex": "female"}
        data.update(kw)
        p = enrollment.enroll(self.db, CLI, data)
        self.db.commit()
        return p

    def baseline(self, p, social_affect=12):
        outcomes.record_assessment(self.db, CLI, p.study_id, {
            "visit": "baseline", "instrument": "ados2", "performed_on": (dt.date.today() - dt.timedelta(days=20)).isoformat(),
            "values": {"social_affect": social_affect, "rrb": 4, "css": 6}})
        self.db.commit()

    def ready(self, site="AT01"):
        p = self.enroll(site)
        self.baseline(p)
        return p

    def open(self, seed: bytes | None = None):
        row = randomization.open_randomization(self.db, CLI, seed=seed)
        self.db.commit()
        return row

    def randomize(self, p, key=None):
        res = randomization.randomize(self.db, CLI, p.study_id, key)
        self.db.commit()
        return res


def backdate_randomization(db, at, participant_id=None) -> None:
    """Move randomization times into the past by SQL (every child's, or one child's) and re-derive
    the visit plan, as the services keep it when they write; commits."""
    from sqlalchemy import select, text

    from trial.participants.models import Allocation
    from trial.visitplan.service import replan

    if participant_id is None:
        db.execute(text("UPDATE allocation SET randomized_at = :t"), {"t": at})
        ids = list(db.execute(select(Allocation.participant_id)).scalars())
    else:
        db.execute(text("UPDATE allocation SET randomized_at = :t WHERE participant_id = :p"), {"t": at, "p": participant_id})
        ids = [participant_id]
    replan(db, ids)
    db.commit()
    db.expire_all()
    from trial import cache
    cache.summaries.clear()  # the UPDATE above bypasses the audit chain the summaries are keyed by


# --- reading a bundle's files back ---------------------------------------------------------------

def dictionary_of(files) -> dict[tuple[str, str], dict]:
    return {(r["table"], r["name"]): r for r in csv.DictReader(io.StringIO(files["dictionary.csv"].decode()))}


def _key_of(entry: dict) -> dict:
    """The dictionary's numbers of a coded variable: Stata/SAS number -> the CSV's key."""
    pairs = [p.split(" = ", 1) for p in entry["codes_in_dta_xpt"].split("; ") if p]
    return {int(n): k for n, k in pairs}


def as_csv(value, entry: dict) -> str:
    """A value read from a Stata or SAS file, written as the CSV writes it."""
    import pandas as pd  # deferred: pandas only for the tests that read bundles
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return value
    if entry["codes_in_dta_xpt"]:
        return _key_of(entry)[int(value)]
    if entry["type"] == "date":
        return value.isoformat()[:10]
    if entry["type"] == "datetime":
        return value.strftime("%Y-%m-%dT%H:%M:%S")
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def loc(table: str, fmt: str) -> str:
    """Where a table's file is in a bundle (the analysis dataset under analysis/)."""
    return f"analysis/{table}.{fmt}" if table == "adsl" else f"{fmt}/{table}.{fmt}"


def page_body(r) -> bytes:
    """A page's bytes without its form tokens (CSRF tokens are signed with the second they are made:
    two requests straddling a second give different ones)."""
    return re.sub(rb'name="csrf_token" value="[^"]*"', b'name="csrf_token"', r.get_data())


def randomized_before(world, db, randomized_on: dt.date, site: str = "AT01"):
    """A child screened 30 days, consenting 25 days and assessed at baseline 5 days before
    ``randomized_on``, then randomized (the time of randomization as the caller backdates it):
    (participant, arm)."""
    sc = world.screen(site, screened_on=(randomized_on - dt.timedelta(days=30)).isoformat())
    p = enrollment.enroll(db, CLI, {"screening_id": sc.id,
                                    "consent_date": (randomized_on - dt.timedelta(days=25)).isoformat(),
                                    "date_of_birth": (randomized_on - dt.timedelta(days=5 * 365)).isoformat(),
                                    "sex": "female"})
    outcomes.record_assessment(db, CLI, p.study_id, {"visit": "baseline", "instrument": "ados2",
                                                     "performed_on": (randomized_on - dt.timedelta(days=5)).isoformat(),
                                                     "values": {"social_affect": 12, "rrb": 4, "css": 6}})
    db.commit()
    return p, world.randomize(p, f"x-{p.study_id}").allocation.arm
