"""Interim looks (issue 30): data cuts, their open and closed reports, the interim primary analysis
against the protocol's boundary, and the data monitoring committee's e-signed recommendation."""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import random
import threading
import time
import zipfile

import pyotp
import pytest
from sqlalchemy import event, func, select

from tests.conftest import PG_URL, FreshDatabase
from tests.helpers import CLI, PASSWORD, World, backdate_randomization
from trial.analysis import groupseq
from trial.audit.models import AuditRecord
from trial.auth import service as users
from trial.course.models import TherapySession
from trial.course.service import log_session
from trial.enrollment import service as enrollment
from trial.errors import ValidationError
from trial.esign.models import Signature
from trial.interim import cuts
from trial.interim.models import DataCut, DmcRecommendation
from trial.outcomes.service import record_assessment
from trial.participants.models import Allocation, Assessment
from trial.safety import service as safety
from trial.timeline import today

ROLES = ("coordinator", "coordinator_no", "therapist", "assessor", "statistician", "manager", "admin", "monitor")


def add_dmc(world: World, email: str = "dmc@example.org", enrol: bool = True):
    """A member of the data monitoring committee, enrolled in two-factor sign-in (a recommendation
    needs it) unless ``enrol`` is false."""
    from trial.auth import mfa
    u = users.create_user(world.db, CLI, email, "Dr Committee", PASSWORD, [("dmc", None)])
    world.users["dmc"], world.tokens["dmc"] = u, users.issue_token(world.db, CLI, u)
    world.db.flush()
    if enrol:
        u.mfa_secret, u.mfa_enrolled_at = mfa.new_secret(u), dt.datetime(2026, 1, 1)
    world.db.commit()
    return u


def code_of(user, step: int = 0) -> str:
    """The user's authenticator code ``step`` steps of 30 s from now (-1, 0, 1 are accepted; each once)."""
    from trial.auth import mfa
    return pyotp.TOTP(mfa.unseal(user.id, user.mfa_secret), digits=mfa.DIGITS,
                      interval=mfa.STEP_SECONDS).at(time.time() + mfa.STEP_SECONDS * step)


def web_login(world: World, who: str, step: int = -1):
    """A browser signed in as ``who`` (with its second factor when enrolled)."""
    web = world.app.test_client()
    r = web.post("/login", data={"email": f"{who}@example.org", "password": PASSWORD})
    assert r.status_code == 302, r.status_code
    if "/login/code" in r.headers["Location"]:
        r = web.post("/login/code", data={"code": code_of(world.users[who], step)})
        assert r.status_code == 302 and "/login" not in r.headers["Location"], r.headers.get("Location")
    return web


def amend_interim(world: World, **values) -> None:
    """The protocol (before randomization opens) with its [interim] section's values changed (None:
    the line removed)."""
    from pathlib import Path

    from trial.protocol.service import load_text
    text_ = (Path(__file__).resolve().parent.parent / "config" / "protocols" / "time-a.toml").read_text()
    head, _, rest = text_.partition("\n[interim]\n")
    body, sep, tail = rest.partition("\n[")
    lines = {ln.split("=", 1)[0].strip(): ln for ln in body.splitlines() if "=" in ln}
    for k, v in values.items():
        if v is None:
            lines.pop(k, None)
        else:
            lines[k] = f"{k} = {json.dumps(v)}"
    load_text(world.db, world.users["admin"], head + "\n[interim]\n" + "\n".join(lines.values()) + "\n" + sep + tail)
    world.db.commit()


def simulate(world: World, n: int, effect: float, seed: int = 3, days: int = 200):
    """``n`` children through the services: baseline, randomized ``days`` ago, then month 2 and
    month 5 with the primary outcome lowered by ``effect`` in the music-therapy arms (plus noise)."""
    rng = random.Random(seed)
    db, r = world.db, today() - dt.timedelta(days=days)
    kids = []
    for i in range(n):
        site = "AT01" if i % 3 else "NO01"
        sc = world.screen(site, screened_on=(r - dt.timedelta(days=30)).isoformat())
        p = enrollment.enroll(db, CLI, {"screening_id": sc.id, "consent_date": (r - dt.timedelta(days=25)).isoformat(),
                                        "date_of_birth": (r - dt.timedelta(days=5 * 365 + 11 * i)).isoformat(),
                                        "sex": "female" if i % 2 else "male"})
        base = rng.randint(8, 16)
        record_assessment(db, CLI, p.study_id, {"visit": "baseline", "instrument": "ados2", "performed_on":
                                                (r - dt.timedelta(days=5)).isoformat(),
                                                "values": {"social_affect": base, "rrb": 4, "css": 6}})
        db.commit()
        world.randomize(p, f"k-{p.study_id}")
        kids.append((p, base))
    backdate_randomization(db, dt.datetime.combine(r, dt.time(10, 0)))
    arms = dict(db.execute(select(Allocation.participant_id, Allocation.arm)).all())
    for p, base in kids:
        shift = effect if arms[p.id] != "usual" else 0.0
        for visit, day in (("month2", 61), ("month5", 152)):
            if day > days:
                continue
            value = base + (shift * (0.5 if visit == "month2" else 1.0)) + rng.gauss(0, 1.0)
            record_assessment(db, CLI, p.study_id, {"visit": visit, "instrument": "ados2",
                                                    "performed_on": (r + dt.timedelta(days=day)).isoformat(),
                                                    "values": {"social_affect": max(0, min(20, round(value))), "rrb": 3,
                                                               "css": 5}})
    db.commit()
    return [p for p, _ in kids], arms


def pdf_text(data: bytes) -> str:
    import subprocess
    return " ".join(subprocess.run(["pdftotext", "-raw", "-", "-"], input=data, capture_output=True,
                                   check=True).stdout.decode().split())


def take_cut(world: World, label: str = "First interim look", formal: bool | None = None) -> int:
    r = world.api("POST", "/data-cuts", "manager", json={"label": label, **({} if formal is None else {"formal": formal})})
    assert r.status_code == 202, r.get_json()
    body = r.get_json()
    assert body["status"] == "ready"  # (the tests' builder is inline)
    return body["id"]


@pytest.fixture()
def trial(world):
    add_dmc(world)
    world.open()
    kids, arms = simulate(world, 12, -2.0)
    return world, kids, arms


def test_a_cut_is_taken_built_and_described(trial):
    world, kids, _ = trial
    cut_id = take_cut(world)
    for who in ("manager", "statistician", "dmc"):
        r = world.api("GET", f"/data-cuts/{cut_id}", who)
        assert r.status_code == 200
        info = r.get_json()
        assert {"id", "label", "created_at", "status"} <= set(info)
        assert info["status"] == "ready" and info["label"] == "First interim look"
        if who == "statistician":  # blinded: its state only (no digest, audit head, progress or build times)
            assert set(info) == {"id", "label", "created_at", "status"}, info
        else:
            assert len(info["sha256"]) == 64 and info["formal"] is False
        assert [c["id"] for c in world.api("GET", "/data-cuts", who).get_json()] == [cut_id]
    cut = world.db.get(DataCut, cut_id)
    content = world.db.execute(select(DataCut.content).where(DataCut.id == cut_id)).scalar()
    import hashlib
    assert hashlib.sha256(content).hexdigest() == cut.sha256
    assert cut.protocol_version >= 1 and cut.audit_seq > 0 and cut.snapshot_at is not None
    with zipfile.ZipFile(io.BytesIO(content)) as z:
        names = {n.split("/", 1)[1] for n in z.namelist()}
        assert names == {"README.txt", "open.json", "closed.json", "look.json", "bundle-unblinded.zip"}
        assert json.loads(z.read(f"cut-{cut_id}/look.json"))["information_fraction"] == pytest.approx(len(kids) / 270)
        inner = zipfile.ZipFile(io.BytesIO(z.read(f"cut-{cut_id}/bundle-unblinded.zip")))
        files = {n.split("/", 1)[1] for n in inner.namelist()}
        readme = inner.read(next(n for n in inner.namelist() if n.endswith("/README.txt"))).decode()
        table1 = inner.read(next(n for n in inner.namelist() if n.endswith("reports/baseline_table.pdf")))
    # the cut's bundle says what it is: a data cut, not a hard lock
    assert f"Data cut: {cut_id} (a snapshot of the live data: nothing was locked)" in readme
    assert "hard lock" not in readme.split("Signed by")[0] and "version none" not in readme
    assert f"data cut {cut_id}," in pdf_text(table1) and "hard lock" not in pdf_text(table1)
    # the same tables as a lock's bundle: every table in every format, the analysis, the loaders
    assert {"csv/particip.csv", "csv/assessw.csv", "analysis/adsl.csv", "analysis/primary.json", "syntax/load.R",
            "dictionary.csv", "odm/snapshot.xml", "manifest.sha256"} <= files
    adsl = inner.read(next(n for n in inner.namelist() if n.endswith("analysis/adsl.csv"))).decode()
    assert len(adsl.strip().splitlines()) == len(kids) + 1
    # audited: asked for, then built with its digest
    recs = world.db.execute(select(AuditRecord.action, AuditRecord.field, AuditRecord.new)
                            .where(AuditRecord.entity == "data_cut", AuditRecord.entity_id == str(cut_id))).all()
    assert ("build", "sha256", cut.sha256) in recs and any(a == "create" for a, _, _ in recs)


def test_a_cut_without_a_label_is_refused_and_nothing_is_taken(trial):
    world, _, _ = trial
    for body in ({}, {"label": "  "}, {"label": "x" * 201}):
        r = world.api("POST", "/data-cuts", "manager", json=body)
        assert r.status_code == 400 and "label" in r.get_json()["error"]["fields"], r.get_json()
    for who in ("statistician", "dmc", "coordinator", "admin"):
        assert world.api("POST", "/data-cuts", who, json={"label": "mine"}).status_code == 403
    assert world.db.execute(select(func.count()).select_from(DataCut)).scalar() == 0


def test_the_open_report_is_there_for_its_readers_only(trial):
    world, _, _ = trial
    cut_id = take_cut(world)
    for who in ("manager", "statistician", "dmc"):
        r = world.api("GET", f"/data-cuts/{cut_id}/open-report.pdf", who)
        assert r.status_code == 200 and r.mimetype == "application/pdf" and r.data.startswith(b"%PDF")
    for who in ("coordinator", "therapist", "assessor", "monitor", "admin"):
        assert world.api("GET", f"/data-cuts/{cut_id}/open-report.pdf", who).status_code == 403
    assert world.api("GET", "/data-cuts/999/open-report.pdf", "manager").status_code == 404


@pytest.mark.parametrize("what", ["closed-report.pdf", "closed-report.json"])
def test_the_closed_report_is_refused_to_every_other_role(trial, what):
    world, _, _ = trial
    cut_id = take_cut(world)
    for who in ROLES:  # the manager included
        r = world.api("GET", f"/data-cuts/{cut_id}/{what}", who)
        assert r.status_code == 403, (who, r.status_code)
        assert b"information_fraction" not in r.data and not r.data.startswith(b"%PDF")
    web = world.app.test_client()
    assert web.post("/login", data={"email": "manager@example.org", "password": PASSWORD}).status_code == 302
    assert web.get(f"/data-cuts/{cut_id}/closed-report.pdf").status_code == 403
    opened = world.db.execute(select(func.count()).select_from(AuditRecord)
                              .where(AuditRecord.action == "open_closed_report")).scalar()
    assert opened == 0  # nobody saw it


def test_the_committee_reads_the_closed_report_and_each_opening_is_audited(trial):
    world, kids, _ = trial
    cut_id = take_cut(world)
    r = world.api("GET", f"/data-cuts/{cut_id}/closed-report.json", "dmc")
    assert r.status_code == 200
    data = r.get_json()
    assert {"information_fraction", "z", "boundary_z", "crossed"} <= set(data)
    # the denominator: TIME-A's [interim] planned_primary_n (270 children with the primary outcome)
    assert data["observed_primary"] == len(kids) and data["planned_sample_size"] == 270
    assert data["planned_from"] == "protocol" and data["benefit"] == "lower"
    assert data["information_fraction"] == pytest.approx(len(kids) / 270)
    assert data["boundary_z"] == pytest.approx(groupseq.interim_boundary([0.5, 1.0], len(kids) / 270, [], 0.05, 2))
    assert data["crossed"] == (abs(data["z"]) >= data["boundary_z"])
    assert data["z"] == pytest.approx(data["analysis"]["estimate"] / data["analysis"]["se"])
    assert sum(data["n_by_arm"].values()) == len(kids)
    assert {m["arm"] for m in data["means"]} == {"usual", "low", "high"}
    assert data["baseline"]["columns"] and data["adverse_events"]
    assert "AT01" not in json.dumps(data["sae_listing"]) and "term" not in json.dumps(data["sae_listing"])
    assert "AT01-" not in json.dumps(data) and "NO01-" not in json.dumps(data)  # no identifier
    pdf = world.api("GET", f"/data-cuts/{cut_id}/closed-report.pdf", "dmc")
    assert pdf.status_code == 200 and pdf.data.startswith(b"%PDF")
    seen = world.db.execute(select(AuditRecord.actor, AuditRecord.entity_id, AuditRecord.reason, AuditRecord.at)
                            .where(AuditRecord.action == "open_closed_report").order_by(AuditRecord.seq)).all()
    assert [(s.actor, s.entity_id, s.reason) for s in seen] == [
        ("dmc@example.org", str(cut_id), "closed report (json)"), ("dmc@example.org", str(cut_id), "closed report (pdf)")]


def test_the_reports_are_in_the_readers_language(trial):
    world, _, _ = trial
    cut_id = take_cut(world)
    u = world.users["dmc"]
    u.language = "de"
    world.db.commit()
    de = pdf_text(world.api("GET", f"/data-cuts/{cut_id}/closed-report.pdf", "dmc").data)
    u.language = "en"
    world.db.commit()
    en = pdf_text(world.api("GET", f"/data-cuts/{cut_id}/closed-report.pdf", "dmc").data)
    from trial.catalogue import translator
    from trial.protocol.service import current, labels
    german, arms = translator("de"), labels(current(world.db).content, "de")["arm"]
    # the catalogue's German words (those translated today; the report's new texts follow with the catalogue)
    for word in ("Visit", "Female", "Male", "CLOSED report to the data monitoring committee"):
        assert german(word) != word and german(word) in de and german(word) not in en, (word, de)
        assert word in en
    # the protocol's German arm labels, in the baseline table's heads and the comparison
    assert arms["usual"] != labels(current(world.db).content, "en")["arm"]["usual"]
    said = german("Comparison: %(arms)s (pooled) against %(reference)s.") % {
        "arms": f"{arms['low']} + {arms['high']}", "reference": arms["usual"]}
    assert said in de and "(pooled) vs" not in de
    for english in ("(pooled) vs", "linear mixed model (REML)"):  # the analysis's English note and model: not shown
        assert english not in de and english not in en, english


def test_the_recommendation_is_e_signed_and_the_manager_reads_it_as_text(trial):
    world, _, _ = trial
    cut_id = take_cut(world)
    db = world.db
    sigs = db.execute(select(func.count()).select_from(Signature)).scalar()
    dmc = world.users["dmc"]
    bad = world.api("POST", f"/data-cuts/{cut_id}/recommendation", "dmc",
                    json={"decision": "continue", "text": "No safety concern.", "password": "wrong", "code": "123456"})
    assert bad.status_code == 400 and "password" in bad.get_json()["error"]["fields"]
    for body in ({"decision": "pause", "text": "x", "password": PASSWORD},
                 {"decision": "continue", "text": "", "password": PASSWORD},
                 {"decision": "continue", "text": "x"},
                 {"decision": "continue", "text": "x", "password": PASSWORD}):  # (no code)
        assert world.api("POST", f"/data-cuts/{cut_id}/recommendation", "dmc", json=body).status_code == 400
    for who in ("manager", "statistician"):
        assert world.api("POST", f"/data-cuts/{cut_id}/recommendation", who,
                         json={"decision": "continue", "text": "x", "password": PASSWORD}).status_code == 403
    assert db.execute(select(func.count()).select_from(DmcRecommendation)).scalar() == 0
    assert db.execute(select(func.count()).select_from(Signature)).scalar() == sigs  # nothing recorded
    words = "No safety concern: continue as planned."
    ok = world.api("POST", f"/data-cuts/{cut_id}/recommendation", "dmc",
                   json={"decision": "continue", "text": words, "password": PASSWORD, "code": code_of(dmc, -1)})
    assert ok.status_code == 201, ok.get_json()
    rec = db.execute(select(DmcRecommendation)).scalar_one()
    sig = db.get(Signature, rec.signature_id)
    assert sig.user_id == dmc.id and sig.purpose == "dmc_recommendation"
    import hashlib
    assert hashlib.sha256(words.encode()).hexdigest() in sig.meaning  # the signature binds the words
    # a second recommendation on the same cut: both kept, each signed, the newest first
    again = world.api("POST", f"/data-cuts/{cut_id}/recommendation", "dmc",
                      json={"decision": "modify", "text": "Add a safety visit at month 3.", "password": PASSWORD,
                            "code": code_of(dmc, 0)})
    assert again.status_code == 201, again.get_json()
    seen = world.api("GET", f"/data-cuts/{cut_id}", "manager").get_json()
    assert [r["decision"] for r in seen["recommendations"]] == ["modify", "continue"]
    assert seen["recommendations"][1]["text"] == words and seen["recommendation"]["decision"] == "modify"
    assert len({r["signature"] for r in seen["recommendations"]}) == 2
    page = web_login(world, "manager").get("/data-cuts").get_data(as_text=True)
    assert words in page and "Add a safety visit at month 3." in page
    assert page.index("Add a safety visit at month 3.") < page.index(words)
    assert "recommendation" not in world.api("GET", f"/data-cuts/{cut_id}", "statistician").get_json()
    assert world.api("GET", f"/data-cuts/{cut_id}/closed-report.json", "manager").status_code == 403


def test_the_recommendation_asks_the_second_factor_of_an_enrolled_member(trial):
    world, _, _ = trial
    cut_id = take_cut(world)
    u = world.users["dmc"]
    wrong = "000000" if code_of(u, 0) != "000000" else "111111"
    for code in (None, wrong):
        body = {"decision": "continue", "text": "x", "password": PASSWORD, **({"code": code} if code else {})}
        r = world.api("POST", f"/data-cuts/{cut_id}/recommendation", "dmc", json=body)
        assert r.status_code == 400 and "code" in r.get_json()["error"]["fields"], r.get_json()
    assert world.db.execute(select(func.count()).select_from(DmcRecommendation)).scalar() == 0
    # the current code is accepted, once
    body = {"decision": "continue", "text": "x", "password": PASSWORD, "code": code_of(u, 0)}
    assert world.api("POST", f"/data-cuts/{cut_id}/recommendation", "dmc", json=body).status_code == 201
    replay = world.api("POST", f"/data-cuts/{cut_id}/recommendation", "dmc", json=body)
    assert replay.status_code == 400 and "code" in replay.get_json()["error"]["fields"]
    assert world.db.execute(select(func.count()).select_from(DmcRecommendation)).scalar() == 1


def test_a_member_without_a_second_factor_cannot_sign_a_recommendation(world):
    add_dmc(world, enrol=False)
    world.open()
    simulate(world, 6, -2.0)
    cut_id = take_cut(world)
    sigs = world.db.execute(select(func.count()).select_from(Signature)).scalar()
    r = world.api("POST", f"/data-cuts/{cut_id}/recommendation", "dmc",
                  json={"decision": "continue", "text": "Continue.", "password": PASSWORD})
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "second_factor_needed", r.get_json()
    assert "second factor" in r.get_json()["error"]["message"]
    assert world.db.execute(select(func.count()).select_from(DmcRecommendation)).scalar() == 0
    assert world.db.execute(select(func.count()).select_from(Signature)).scalar() == sigs


def test_the_dmc_role_is_never_combined_and_is_countersigned(world):
    add_dmc(world)
    with pytest.raises(ValidationError):
        users.create_user(world.db, CLI, "both@example.org", "Both", PASSWORD, [("dmc", None), ("statistician", None)])
    world.db.rollback()
    with pytest.raises(ValidationError):
        users.check_role_conflicts([("dmc", None), ("coordinator", 1)])
    with pytest.raises(ValidationError):
        users.check_role_conflicts([("coordinator", 1), ("dmc", None)])
    users.check_role_conflicts([("dmc", None)])
    # an admin's grant of dmc waits for a manager's countersignature: no closed report until then
    from trial.grants import service as grants
    db = world.db
    member = users.create_user(db, CLI, "member@example.org", "Dr Member", PASSWORD, [("statistician", None)])
    db.commit()
    users.set_roles(db, world.users["admin"], member, [("dmc", None)], reason="joins the committee")
    db.commit()
    assert not member.has_role("dmc")
    pending = [g for g in grants.list_grants(db, world.users["manager"]) if g["user"] == "member@example.org"]
    assert [g["role"] for g in pending] == ["dmc"]
    token = users.issue_token(db, CLI, member)
    db.commit()
    world.tokens["member"] = token
    assert world.api("GET", "/data-cuts", "member").status_code == 403  # pending: nothing yet
    grants.approve(db, world.users["manager"], pending[0]["id"], PASSWORD, "Countersigned: DMC member")
    db.commit()
    db.refresh(member)
    assert member.has_role("dmc")
    # a user of another role cannot be given dmc as well: refused, nothing pending
    stat = world.users["statistician"]
    with pytest.raises(ValidationError):
        users.set_roles(db, world.users["admin"], stat, [("statistician", None), ("dmc", None)], reason="both")
    db.rollback()
    assert not [g for g in grants.list_grants(db, world.users["manager"]) if g["user"] == stat.email]
    assert not db.get(type(stat), stat.id).has_role("dmc")


def test_an_interim_analysis_on_simulated_data_recovers_the_known_effect(world):
    add_dmc(world)
    world.open(seed=hashlib.sha256(b"interim: known effect").digest())  # the same allocation every run: no chance miss
    effect = -3.0
    simulate(world, 60, effect, seed=11)
    cut_id = take_cut(world)
    data = world.api("GET", f"/data-cuts/{cut_id}/closed-report.json", "dmc").get_json()
    a = data["analysis"]
    assert a["n"] == 60
    assert a["ci_low"] <= effect <= a["ci_high"], a
    assert abs(a["estimate"] - effect) < 1.0
    assert data["z"] < -3  # a large effect: far beyond the boundary at 60/270 of the information
    assert data["information_fraction"] == pytest.approx(60 / 270)
    assert abs(data["z"]) >= data["boundary_z"] > 4  # (an early look: a high boundary)
    assert data["crossed"] is True
    usual5 = next(m for m in data["means"] if m["arm"] == "usual" and m["visit"] == "month5")
    low5 = next(m for m in data["means"] if m["arm"] == "low" and m["visit"] == "month5")
    assert usual5["n"] + low5["n"] <= 60 and usual5["ci_low"] < usual5["mean"] < usual5["ci_high"]


# --- consistency under concurrent writes (PostgreSQL, real threads) ----------------------------------------

@pytest.mark.skipif(not PG_URL, reason="PostgreSQL: REPEATABLE READ snapshot while real threads write")
def test_a_cut_is_one_moment_while_assessments_are_written_meanwhile(monkeypatch):
    from trial import create_app
    from trial.db import make_session_factory
    fresh = FreshDatabase("cut_consistency")
    factory = make_session_factory(fresh.engine)
    db = factory()
    try:
        app = create_app({"ENGINE": fresh.engine, "SESSION_FACTORY": factory, "TESTING": True,
                          "WTF_CSRF_ENABLED": False, "SECRET_KEY": "test-secret"})
        world = World(db, app).setup()
        world.open(bytes(range(32)))
        kids, arms = simulate(world, 24, -1.0, days=120)  # (month5 not yet due: written by the threads)
        music = {p.study_id for p in kids if arms[p.id] != "usual"}
        cut = cuts.request_cut(db, world.users["manager"], "while writing")
        db.commit()
        cut_id = cut.id
        stop, written, errors = threading.Event(), [], []
        todo = [p.study_id for p in kids]

        def building() -> bool:  # the snapshot is open and the build goes on (its first progress report)
            with factory() as s:
                return (s.execute(select(DataCut.progress).where(DataCut.id == cut_id)).scalar() or 0) > 0

        def writer(share, wait):
            while wait and not building() and not stop.is_set():
                time.sleep(0.005)
            with factory() as s:
                for sid in share:
                    try:  # an assessment, a first session (music therapy: the child received it) and an AE
                        record_assessment(s, CLI, sid, {"visit": "month5", "instrument": "srs2",
                                                         "performed_on": today().isoformat(), "values": {"total_t": 60}})
                        if sid in music:
                            log_session(s, CLI, sid, {"held_on": today().isoformat(), "attendance": "attended",
                                                      "minutes": 30, "techniques": ["songs"], "engagement": 3})
                        safety.record(s, CLI, sid, {
                            "term": "a cold", "onset": today().isoformat(), "severity": "mild", "serious": False,
                            "relatedness": "not_related", "outcome": "recovering"})
                        s.commit()
                        written.append((sid, wait, dt.datetime.now(dt.UTC).replace(tzinfo=None)))
                    except Exception as e:  # noqa: BLE001
                        s.rollback()
                        errors.append(repr(e))
                    time.sleep(0.01)

        # one writer from before the snapshot on, two once the build is under way
        threads = [threading.Thread(target=writer, args=(todo[:8], False)),
                   threading.Thread(target=writer, args=(todo[8:16], True)),
                   threading.Thread(target=writer, args=(todo[16:], True))]
        with factory() as s:
            assert cuts.claim(s, "test-builder", cut_id) == cut_id
        for t in threads:
            t.start()
        time.sleep(0.02)
        state = cuts.run(factory, cut_id, "test-builder", parallel=True)
        stop.set()
        for t in threads:
            t.join()
        assert state == "ready", db.execute(select(DataCut.error).where(DataCut.id == cut_id)).scalar()
        assert not errors, errors[:3]  # nothing refused: no writer waited on the cut nor failed
        db.expire_all()
        c = db.get(DataCut, cut_id)
        # the cut's tables agree with one moment: the audit trail's head at the snapshot
        created = db.execute(select(func.count(func.distinct(AuditRecord.entity_id)))
                             .where(AuditRecord.entity == "assessment", AuditRecord.action == "create",
                                    AuditRecord.seq <= c.audit_seq)).scalar()
        content = db.execute(select(DataCut.content).where(DataCut.id == cut_id)).scalar()
        with zipfile.ZipFile(io.BytesIO(content)) as z:
            inner = zipfile.ZipFile(io.BytesIO(z.read(f"cut-{cut_id}/bundle-unblinded.zip")))

            def member(end: str) -> str:
                return inner.read(next(n for n in inner.namelist() if n.endswith(end))).decode()
            rows = member("csv/assessw.csv").strip().splitlines()
            sessions = member("csv/sessions.csv").strip().splitlines()
            aes = member("csv/ae.csv").strip().splitlines()
            consort = json.loads(member("reports/consort.json"))
        assert len(rows) - 1 == created

        def created_by_head(entity: str) -> set[str]:
            return set(db.execute(select(AuditRecord.entity_id).where(
                AuditRecord.entity == entity, AuditRecord.action == "create", AuditRecord.seq <= c.audit_seq)).scalars())
        # the sessions, the adverse events and the CONSORT counts of the same moment
        assert len(sessions) - 1 == len(created_by_head("therapy_session"))
        assert len(aes) - 1 == len(created_by_head("adverse_event"))
        received = sum(a["received_allocated_intervention"] for k, a in consort["arms"].items() if k != "usual")
        assert received == len(created_by_head("therapy_session"))  # one first session a child
        total_sessions = db.execute(select(func.count()).select_from(TherapySession)).scalar()
        assert len(sessions) - 1 < total_sessions  # (some were written after the snapshot)
        total = db.execute(select(func.count()).select_from(Assessment)).scalar()
        assert total == 24 * 2 + len(written) and created < total
        during = [w for w in written if w[1]]
        assert len(written) == len(todo) and len(during) == 16
        after = db.execute(select(func.count(func.distinct(AuditRecord.entity_id)))
                           .where(AuditRecord.entity == "assessment", AuditRecord.action == "create",
                                  AuditRecord.seq > c.audit_seq)).scalar()
        assert after >= 16  # the writes made while the cut was read: committed, and not in the cut
        assert sum(1 for w in during if w[2] < c.finished_at) >= 1  # (committed before the cut was stored)
    finally:
        db.close()
        fresh.drop()


def test_the_pages_take_a_cut_and_sign_a_recommendation(trial):
    world, _, _ = trial
    mgr = world.app.test_client()
    assert mgr.post("/login", data={"email": "manager@example.org", "password": PASSWORD}).status_code == 302
    assert mgr.post("/data-cuts/new", data={"label": ""}).status_code == 302
    assert world.db.execute(select(func.count()).select_from(DataCut)).scalar() == 0  # a cut needs its label
    r = mgr.post("/data-cuts/new", data={"label": "Web look"})
    assert r.status_code == 302 and r.headers["Location"].endswith("/data-cuts")
    cut = world.db.execute(select(DataCut)).scalar_one()
    assert cut.status == "ready"
    page = mgr.get("/data-cuts").get_data(as_text=True)
    assert "Web look" in page and f"/data-cuts/{cut.id}/open-report.pdf" in page and "closed-report" not in page
    assert mgr.get(f"/data-cuts/{cut.id}/open-report.pdf").data.startswith(b"%PDF")
    assert mgr.get(f"/data-cuts/{cut.id}/recommendation").status_code == 403  # the form: the dmc's only
    dmc = web_login(world, "dmc", -1)
    assert dmc.get(f"/data-cuts/{cut.id}/recommendation").status_code == 200
    dmc.post(f"/data-cuts/{cut.id}/recommendation", data={"decision": "continue", "text": "Fine.", "password": "wrong",
                                                          "code": code_of(world.users["dmc"], 0)})
    assert world.db.execute(select(func.count()).select_from(DmcRecommendation)).scalar() == 0
    r = dmc.post(f"/data-cuts/{cut.id}/recommendation", data={"decision": "modify", "text": "Add a safety visit.",
                                                              "password": PASSWORD, "code": code_of(world.users["dmc"], 1)})
    assert r.status_code == 302
    assert world.db.execute(select(DmcRecommendation.decision)).scalar_one() == "modify"
    page = mgr.get("/data-cuts").get_data(as_text=True)
    assert "Add a safety visit." in page and "Continue with modifications" in page


# --- the looks: formal or practice, the denominator, the direction of benefit -------------------------------------

def test_a_practice_cut_spends_no_alpha_and_only_formal_looks_count(world):
    """A practice cut at 0.125 then a formal look at 0.5 of TIME-A's design: the formal one is the FIRST look,
    whose boundary is the design's 2.963 (not the final look's: a look is final only at a fraction of 1)."""
    add_dmc(world)
    amend_interim(world, planned_primary_n=24)
    world.open()
    simulate(world, 3, -2.0, seed=5)  # 3 of 24 with the primary outcome
    practice = take_cut(world, "Practice run")  # (formal defaults to false)
    simulate(world, 9, -2.0, seed=6)  # 12 of 24
    formal = take_cut(world, "First interim look", formal=True)
    looks = {c: world.api("GET", f"/data-cuts/{c}/closed-report.json", "dmc").get_json() for c in (practice, formal)}
    assert looks[practice]["information_fraction"] == pytest.approx(3 / 24) and looks[practice]["formal"] is False
    assert looks[formal]["information_fraction"] == pytest.approx(0.5) and looks[formal]["formal"] is True
    assert looks[formal]["previous_fractions"] == [] and looks[formal]["look_number"] == 1
    assert looks[formal]["boundary_z"] == pytest.approx(2.963, abs=5e-4)
    assert looks[formal]["boundary_z"] == pytest.approx(groupseq.obf_boundaries([0.5, 1.0])[0], abs=1e-6)
    info = world.api("GET", f"/data-cuts/{formal}", "manager").get_json()
    assert info["formal"] is True and info["information_fraction"] == pytest.approx(0.5)
    # a second formal look at 0.75 counts the first (and not the practice run)
    simulate(world, 6, -2.0, seed=7)  # 18 of 24
    second = take_cut(world, "Second interim look", formal=True)
    data = world.api("GET", f"/data-cuts/{second}/closed-report.json", "dmc").get_json()
    assert data["previous_fractions"] == [pytest.approx(0.5)] and data["look_number"] == 2
    assert data["boundary_z"] == pytest.approx(groupseq.obf_boundaries([0.5, 0.75, 1.0])[1], abs=1e-6)
    bad = world.api("POST", "/data-cuts", "manager", json={"label": "x", "formal": "yes"})
    assert bad.status_code == 400 and "formal" in bad.get_json()["error"]["fields"]


def test_without_planned_primary_n_the_sites_targets_are_the_denominator(world):
    add_dmc(world)
    amend_interim(world, planned_primary_n=None)
    world.open()
    kids, _ = simulate(world, 8, -2.0)
    data = world.api("GET", f"/data-cuts/{take_cut(world)}/closed-report.json", "dmc").get_json()
    assert data["planned_sample_size"] == 80 and data["planned_from"] == "site_targets"  # two sites of 40
    assert data["information_fraction"] == pytest.approx(len(kids) / 80)
    assert "sites' targets" in data["information_fraction_definition"]


@pytest.mark.parametrize("benefit,crossed", [("lower", True), ("higher", False)])
def test_a_one_sided_design_tests_in_the_direction_of_benefit(world, benefit, crossed):
    """A large effect lowering the score: benefit when lower is better; with "higher" the same data are harm,
    which a one-sided design does not test."""
    add_dmc(world)
    amend_interim(world, sides=1, alpha=0.025, benefit=benefit, planned_primary_n=80)
    world.open()
    simulate(world, 60, -3.0, seed=11)
    data = world.api("GET", f"/data-cuts/{take_cut(world, formal=True)}/closed-report.json", "dmc").get_json()
    assert data["z"] < -3 and data["sides"] == 1 and data["benefit"] == benefit
    assert data["z_benefit"] == pytest.approx(-data["z"] if benefit == "lower" else data["z"])
    assert data["boundary_z"] == pytest.approx(groupseq.interim_boundary([0.5, 1.0], 60 / 80, [], 0.025, 1))
    assert data["crossed"] is crossed and data["crossed_side"] == ("benefit" if crossed else None)
    pdf = pdf_text(world.api("GET", f"/data-cuts/{data['cut']['cut']}/closed-report.pdf", "dmc").data)
    assert "Boundary (z in the direction of benefit)" in pdf and "Boundary (|z|)" not in pdf


def test_a_two_sided_crossing_says_its_side_and_an_unestimable_effect_crosses_nothing(world):
    add_dmc(world)
    world.open()
    simulate(world, 60, -3.0, seed=11)
    data = world.api("GET", f"/data-cuts/{take_cut(world, formal=True)}/closed-report.json", "dmc").get_json()
    assert data["crossed"] is True and data["crossed_side"] == "benefit"  # lower is better in TIME-A
    pdf = pdf_text(world.api("GET", f"/data-cuts/{data['cut']['cut']}/closed-report.pdf", "dmc").data)
    assert "Boundary (|z|)" in pdf and "yes, towards benefit" in pdf
    # a fit that did not converge, or an effect not estimable: no decision (crossed None), the boundary still given
    from trial.interim import reports
    design = {"interim": {"information_fractions": [0.5, 1.0], "alpha": 0.05, "sides": 2, "planned_primary_n": 80}}
    for primary in ({"estimate": -9.0, "se": 0.5, "converged": False}, {"estimate": None, "se": None, "converged": None}):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("lock-cut1/analysis/primary.json", json.dumps(primary))
        out = reports._interim(world.db, design, buf.getvalue(), [{"primfl": "1"}] * 40, [], True)
        assert out["crossed"] is None and out["crossed_side"] is None and out["boundary_z"] is not None, out


# --- what a blinded reader sees of a cut, and what a report's request reads ------------------------------------

def test_a_blinded_reader_sees_a_cuts_state_only(trial):
    world, _, _ = trial
    cut = cuts.request_cut(world.db, world.users["manager"], "Being built")  # (not started: building)
    world.db.commit()
    world.db.execute(DataCut.__table__.update().where(DataCut.id == cut.id).values(progress=0.42, heartbeat=cuts.utcnow()))
    world.db.commit()
    info = world.api("GET", f"/data-cuts/{cut.id}", "statistician").get_json()
    assert info == {"id": cut.id, "label": "Being built", "created_at": info["created_at"], "status": "building"}
    r = world.api("GET", f"/data-cuts/{cut.id}/open-report.pdf", "statistician")
    assert r.status_code == 409 and "%" not in r.get_json()["error"]["message"]
    page = web_login(world, "statistician").get("/data-cuts").get_data(as_text=True)
    assert "<progress" not in page and "42" not in page
    assert world.api("GET", f"/data-cuts/{cut.id}", "manager").get_json()["progress"] == pytest.approx(0.42)
    assert "42%" in world.api("GET", f"/data-cuts/{cut.id}/open-report.pdf", "manager").get_json()["error"]["message"]


def test_a_report_reads_its_own_part_of_the_cut_never_the_whole(trial):
    """The open report's request fetches the zip's directory and open.json only: no byte of the closed report or of
    the unblinded tables; no statement reads the stored zip whole."""
    world, _, _ = trial
    cut_id = take_cut(world)
    content = world.db.execute(select(DataCut.content).where(DataCut.id == cut_id)).scalar()
    with zipfile.ZipFile(io.BytesIO(content)) as z:
        infos = {i.filename.split("/", 1)[1]: i for i in z.infolist()}
    end_of = {n: (infos[n].header_offset, infos[n].header_offset + 30 + len(infos[n].filename) + infos[n].compress_size)
              for n in infos}
    statements = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        if "data_cut" in statement and "content" in statement:
            statements.append((statement, parameters))
    engine = world.db.get_bind().engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        assert world.api("GET", f"/data-cuts/{cut_id}/open-report.pdf", "statistician").status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    spans = []
    for statement, parameters in statements:
        if "length(data_cut.content)" in statement:
            continue  # (the zip's size, to find its directory)
        assert "substr" in statement.lower(), statement  # ranges only
        values = list(parameters.values()) if isinstance(parameters, dict) else list(parameters)
        start, n = int(values[0]) - 1, int(values[1])
        spans.append((start, start + n))
    assert spans and sum(b - a for a, b in spans) < len(content) / 4
    for name in ("closed.json", "bundle-unblinded.zip"):
        lo, hi = end_of[name]
        assert not any(a < hi and lo < b for a, b in spans), (name, spans)  # none of its bytes


# --- builders: inline only for the tests; a worker claims cuts; a stale build is failed ----------------------------

def test_the_inline_builder_is_refused_in_production(monkeypatch):
    from trial.config import ConfigError, from_env
    monkeypatch.setenv("TRIAL_ENV", "production")
    monkeypatch.setenv("TRIAL_LOCK_BUILDER", "inline")
    with pytest.raises(ConfigError, match="TRIAL_LOCK_BUILDER=inline is for the tests"):
        from_env()


def test_a_worker_claims_a_cut_and_a_stale_build_is_failed_for_good(trial):
    world, _, _ = trial
    db = world.db
    stale = cuts.request_cut(db, world.users["manager"], "Abandoned")
    waiting = cuts.request_cut(db, world.users["manager"], "Waiting", True)
    db.commit()
    db.execute(DataCut.__table__.update().where(DataCut.id == stale.id).values(
        worker="w:dead", heartbeat=cuts.utcnow() - dt.timedelta(minutes=10)))
    db.commit()
    assert cuts.claim(db, "w:1") == waiting.id  # the stale one is not taken over: failed, stored as such
    db.expire_all()
    assert db.get(DataCut, stale.id).status == "failed" and "stopped reporting" in db.get(DataCut, stale.id).error
    assert cuts.claim(db, "w:2") is None and cuts.claim(db, "w:2", waiting.id) is None  # claimed once
    # the dead builder comes back with its build: a failed cut is not stored
    made = {"content": b"x", "sha256": "0" * 64, "snapshot_at": cuts.utcnow(), "audit_seq": 1, "protocol_version": 1}
    assert cuts._store(db, CLI, stale.id, made, "w:dead") is False
    db.expire_all()
    assert db.get(DataCut, stale.id).status == "failed" and db.get(DataCut, stale.id).sha256 is None
    # the claimed one is built by its worker (inline here: the tests' transaction), formal as asked
    cuts.build_inline(db, CLI, waiting.id)
    db.commit()
    assert world.api("GET", f"/data-cuts/{waiting.id}", "manager").get_json()["formal"] is True
