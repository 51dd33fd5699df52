"""Locks, electronic signatures, 423 on every write route, unblinding and `randomization verify`.

A soft lock freezes data entry and is lifted with a reason and a signature; a hard lock is signed
(password again, meaning, printed name, UTC time), builds the locked bundles and refuses every
write with 423; lifting it keeps its bundle; the next hard lock is version 2. Unblinding is a
signed event after a hard lock, by a manager only; afterwards the seed is revealed and the lists
can be verified (service and command line), and verification fails once an allocation is altered.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError

from tests.conftest import FreshDatabase
from tests.helpers import CLI, PASSWORD, World, backdate_randomization
from tests.test_signoff import code_of, enrol
from trial.audit import service as audit
from trial.audit.models import AuditRecord
from trial.auth import service as users
from trial.auth.models import User
from trial.course.models import ChildGoal, CounsellingSession, TherapySession
from trial.dataquality.models import DataQuery, QueryMessage, Verification
from trial.db import utcnow
from trial.enrollment import service as enrollment
from trial.errors import Conflict
from trial.esign.models import Signature
from trial.fidelity.models import FidelityDraw, FidelityRating, FidelitySample
from trial.lock.models import DataLock, LockBundle, UnblindingRequest
from trial.outcomes import service as outcomes
from trial.outcomes.models import BlindingBreak
from trial.participants.models import Allocation, Assessment, Participant, Screening, StatusEvent
from trial.queries import service as queries
from trial.randomize import service as randomization
from trial.randomize.models import RandomizationDesign
from trial.safety import service as safety
from trial.safety.models import AdverseEvent, AdverseEventFollowUp, AdverseEventReport
from trial.scope import CliActor
from trial.sites.models import Site
from trial.status.models import Deviation
from trial.timeline import today
from trial.trialstate.models import TrialState

SEED = bytes(range(32))
R = today() - dt.timedelta(days=200)      # every child is randomized on this day (backdated)
ROLES = ("coordinator", "coordinator_no", "therapist", "assessor", "statistician", "manager", "admin")
MEANING = "I approve locking the trial database; the data are complete and final."
ARM_LABELS = ("Music therapy, 1 session per week", "Music therapy, 3 sessions per week", "Enhanced usual care")


# --- building a small trial --------------------------------------------------------------------

def iso(d: dt.date) -> str:
    return d.isoformat()


def child(world, site="AT01", social_affect=12, sex="female"):
    """Screened, consented and baseline-assessed (dates before R); not yet randomized."""
    db = world.db
    sc = world.screen(site, screened_on=iso(R - dt.timedelta(days=30)))
    p = enrollment.enroll(db, CLI, {"screening_id": sc.id, "consent_date": iso(R - dt.timedelta(days=25)),
                                    "date_of_birth": iso(R - dt.timedelta(days=5 * 365)), "sex": sex})
    outcomes.record_assessment(db, CLI, p.study_id, {"visit": "baseline", "instrument": "ados2",
                                                     "performed_on": iso(R - dt.timedelta(days=5)),
                                                     "values": {"social_affect": social_affect, "rrb": 4, "css": 6}})
    db.commit()
    return p


def backdate_all(db):
    backdate_randomization(db, dt.datetime.combine(R, dt.time(10, 0)))


@pytest.fixture()
def kids(world, db):
    """AT01 slots 1-4 with the fixed seed: usual, high, high, low (asserted). Plus a child that is
    ready but not randomized, an eligible screening nobody enrolled, sessions, an event and
    follow-up assessments."""
    world.open(SEED)
    out = {}
    for name in ("usual", "high", "high2", "low"):
        p = child(world)
        arm = world.randomize(p, f"k-{p.study_id}").allocation.arm
        assert arm == name.rstrip("2"), "the AT01 list of the fixed seed starts usual, high, high, low"
        out[name] = p
    backdate_all(db)
    from trial.course.service import log_session
    from trial.status.service import record_event
    for day in (3, 10, 17):
        log_session(db, CLI, out["high"].study_id, {"held_on": iso(R + dt.timedelta(days=day)), "attendance": "attended",
                                                    "minutes": 30, "techniques": ["songs"]})
    for p in (out["usual"], out["high"], out["low"]):
        outcomes.record_assessment(db, CLI, p.study_id, {"visit": "month5", "instrument": "ados2",
                                                         "performed_on": iso(R + dt.timedelta(days=152)),
                                                         "values": {"social_affect": 9, "rrb": 3, "css": 5},
                                                         "allocation_guess": "unsure", "guess_confidence": 1})
    record_event(db, CLI, out["high2"].study_id, {"type": "discontinued_intervention", "on": iso(R + dt.timedelta(days=30)),
                                                  "reason": "family moved"})
    db.commit()
    out["ready"] = child(world)
    out["screening"] = world.screen("AT01", screened_on=iso(R))
    out["aid"] = db.execute(select(Assessment.id).where(Assessment.participant_id == out["usual"].id,
                                                        Assessment.visit == "baseline")).scalar_one()
    db.commit()  # hold no open (savepoint) transaction across the API calls of the tests
    return out


def lock(world, kind="hard", who="manager", password=PASSWORD, meaning=MEANING):
    return world.api("POST", "/locks", who, json={"kind": kind, "meaning": meaning, "password": password})


def lift(world, lock_id, reason="Queries found after the lock; data must be corrected.", who="manager", password=PASSWORD):
    return world.api("DELETE", f"/locks/{lock_id}", who, json={"reason": reason, "password": password})


def ask_unblinding(world, who="manager", password=PASSWORD, meaning="I authorise unblinding after the final lock."):
    return world.api("POST", "/unblinding", who, json={"meaning": meaning, "password": password})


def countersign(world, request_id, who="statistician", password=PASSWORD,
                meaning="I countersign the unblinding after the final lock."):
    return world.api("POST", f"/unblinding/{request_id}/countersign", who, json={"meaning": meaning, "password": password})


def unblind(world, who="manager", password=PASSWORD, meaning="I authorise unblinding after the final lock."):
    """Both signatures: the manager's request (202), then the statistician's countersignature (201,
    returned); a request that is not accepted is returned as it is."""
    r = ask_unblinding(world, who, password, meaning)
    if r.status_code != 202:
        return r
    return countersign(world, r.get_json()["id"])


def ok(r, status=201):
    assert r.status_code == status, (r.status_code, r.get_data(as_text=True))
    return r.get_json()


def err(r, status, code=None):
    assert r.status_code == status, (r.status_code, r.get_data(as_text=True))
    body = r.get_json()["error"]
    if code:
        assert body["code"] == code, body
    return body


MODELS = (Screening, Participant, Allocation, Assessment, TherapySession, CounsellingSession, StatusEvent, Deviation,
          BlindingBreak, Site, Signature, DataLock, LockBundle, AuditRecord, DataQuery, QueryMessage, Verification,
          AdverseEvent, AdverseEventFollowUp, AdverseEventReport, ChildGoal, FidelityDraw, FidelitySample, FidelityRating,
          UnblindingRequest)


def fingerprint(db) -> dict:
    """Everything a refused request might have changed: row counts, the audit chain head, the lock
    in force, a correctable value and the sites' settings."""
    db.expire_all()
    out = {m.__name__: db.execute(select(func.count()).select_from(m)).scalar() for m in MODELS}
    out["audit_max_seq"] = db.execute(select(func.max(AuditRecord.seq))).scalar()
    out["active_lock"] = db.execute(select(TrialState.active_lock_id)).scalar()
    out["assessments"] = sorted((a.id, sorted(a.values.items())) for a in db.execute(select(Assessment)).scalars())
    out["sites"] = sorted((s.code, s.name, s.target, s.is_open) for s in db.execute(select(Site)).scalars())
    out["design"] = db.execute(select(RandomizationDesign.unblinded_at, RandomizationDesign.revealed_seed)).all()
    out["users"] = sorted((u.email, u.must_change_password, u.password_hash)
                          for u in db.execute(select(User)).scalars())
    out["queries"] = sorted((q.id, q.status) for q in db.execute(select(DataQuery)).scalars())
    out["aes"] = sorted((a.id, a.outcome, a.acknowledged_at) for a in db.execute(select(AdverseEvent)).scalars())
    return out


def active_lock_id(db):
    db.expire_all()
    return db.execute(select(TrialState.active_lock_id)).scalar()


# --- signatures --------------------------------------------------------------------------------

def test_hard_lock_is_signed_with_printed_name_meaning_and_utc_time(world, kids, db):
    before = utcnow()
    body = ok(lock(world, "hard"))
    after = utcnow()
    assert set(body) >= {"id", "kind", "created_at"} and body["kind"] == "hard"
    assert body["created_at"].endswith("Z")
    lk = db.get(DataLock, body["id"])
    assert lk.version == 1 and active_lock_id(db) == lk.id
    sig = db.get(Signature, lk.signature_id)
    assert sig.user_id == world.users["manager"].id
    assert sig.printed_name == world.users["manager"].name == "Manager"
    assert sig.email == "manager@example.org"
    assert sig.meaning == MEANING
    assert before - dt.timedelta(seconds=1) <= sig.signed_at <= after + dt.timedelta(seconds=1)  # naive UTC
    created = dt.datetime.fromisoformat(body["created_at"].rstrip("Z"))
    assert abs((created - sig.signed_at).total_seconds()) < 1
    recs = db.execute(select(AuditRecord).where(AuditRecord.entity == "signature", AuditRecord.entity_id == str(sig.id))).scalars().all()
    assert {r.field: r.new for r in recs}.get("printed_name") == "Manager"
    assert {r.field: r.new for r in recs}.get("meaning") == MEANING
    assert db.execute(select(func.count()).select_from(LockBundle).where(LockBundle.lock_id == lk.id)).scalar() == 2
    assert audit.verify(db).ok
    listed = ok(world.api("GET", "/locks", "manager"), 200)
    assert [(x["id"], x["kind"], x["signed_by"]) for x in listed] == [(lk.id, "hard", "Manager")]


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_wrong_password_is_refused_and_changes_nothing(world, kids, db, kind):
    before = fingerprint(db)
    e = err(lock(world, kind, password="not-the-password"), 400)
    assert "password" in e.get("fields", {})
    assert fingerprint(db) == before
    for body in ({"kind": kind, "meaning": MEANING}, {"kind": kind, "password": PASSWORD},
                 {"kind": kind, "meaning": "   ", "password": PASSWORD}, {"kind": "frozen", "meaning": MEANING, "password": PASSWORD}):
        err(world.api("POST", "/locks", "manager", json=body), 400)
        assert fingerprint(db) == before
    # writes still go through
    ok(world.api("POST", "/screenings", "coordinator", json={"site": "AT01", "screened_on": iso(today()), "answers": world.answers()}))


def test_a_password_set_at_the_console_cannot_sign_until_changed(world, kids, db):
    """The operator may set a password at the server's console (an admin never does): the user must
    change it before signing anything."""
    manager = world.users["manager"]
    users.reset_password(db, CLI, manager, "temporary-pass-42")
    db.commit()
    err(lock(world, "hard"), 401)  # the reset revoked the manager's API tokens
    world.tokens["manager"] = users.issue_token(db, CLI, manager)
    db.commit()
    before = fingerprint(db)
    for password in ("temporary-pass-42", PASSWORD):
        e = err(lock(world, "hard", password=password), 403)
        assert "reset" in e["message"].lower() or "change" in e["message"].lower()
        assert fingerprint(db) == before
    assert active_lock_id(db) is None
    # once the manager has chosen a new password, the signature works with it
    users.change_password(db, manager, "temporary-pass-42", "my-own-new-password")
    db.commit()
    world.tokens["manager"] = users.issue_token(db, CLI, manager)  # a password change ends every token
    db.commit()
    err(lock(world, "hard", password="temporary-pass-42"), 400)
    ok(lock(world, "hard", password="my-own-new-password"))


def test_only_a_manager_locks_lifts_and_unblinds(world, kids, db):
    before = fingerprint(db)
    for who in ROLES:
        if who == "manager":
            continue
        err(lock(world, "soft", who=who), 403)
        err(lock(world, "hard", who=who), 403)
        err(unblind(world, who=who), 403)
        assert fingerprint(db) == before, who
    lk = ok(lock(world, "hard"))
    before = fingerprint(db)
    for who in ROLES:
        if who != "manager":
            err(lift(world, lk["id"], who=who), 403)
            err(unblind(world, who=who), 403)
    assert fingerprint(db) == before
    assert world.api("POST", "/locks", None, json={"kind": "hard", "meaning": MEANING, "password": PASSWORD}).status_code == 401


def test_only_statistician_and_manager_list_locks_and_download(world, kids, db):
    lk = ok(lock(world, "hard"))
    for who in ROLES:
        allowed = who in ("statistician", "manager")
        for path in ("/locks", f"/locks/{lk['id']}/bundle.zip", "/consort", "/consort.svg", "/consort.pdf"):
            r = world.api("GET", path, who)
            assert r.status_code == (200 if allowed else 403), (who, path, r.status_code)
            if not allowed:
                body = r.get_data(as_text=True)
                assert not any(label in body for label in ARM_LABELS)
    assert world.api("GET", f"/locks/{lk['id']}/bundle.zip", None).status_code == 401


# --- soft lock ---------------------------------------------------------------------------------

def test_soft_lock_freezes_entry_and_lifting_needs_a_reason_and_a_signature(world, kids, db):
    lk = ok(lock(world, "soft"))
    assert lk["kind"] == "soft" and db.get(DataLock, lk["id"]).version is None
    listed = ok(world.api("GET", "/locks", "manager"), 200)
    assert listed[0]["manifest_sha256"] is None  # a soft lock builds no bundle
    err(world.api("GET", f"/locks/{lk['id']}/bundle.zip", "manager"), 404)
    before = fingerprint(db)
    e = err(world.api("POST", "/screenings", "coordinator", json={"site": "AT01", "screened_on": iso(today()),
                                                                   "answers": world.answers()}), 423, "locked")
    assert "lock" in e["message"].lower()
    assert fingerprint(db) == before
    # a second soft lock over it is a conflict
    err(lock(world, "soft"), 409)
    # lifting: reason required, signature required, wrong password refused, other roles refused
    for body in ({"password": PASSWORD}, {"reason": "  ", "password": PASSWORD}, {"reason": "queries"},
                 {"reason": "queries", "password": "wrong-password-1"}):
        err(world.api("DELETE", f"/locks/{lk['id']}", "manager", json=body), 400)
        assert fingerprint(db) == before
    err(lift(world, 9999), 404)
    r = ok(lift(world, lk["id"], reason="Site AT01 sent late queries."), 200)
    assert r["lifted_at"].endswith("Z")
    db.expire_all()
    row = db.get(DataLock, lk["id"])
    assert row.lift_reason == "Site AT01 sent late queries." and row.lifted_at is not None
    sig = db.get(Signature, row.lift_signature_id)
    assert sig.printed_name == "Manager" and "Site AT01 sent late queries." in sig.meaning
    assert active_lock_id(db) is None
    ok(world.api("POST", "/screenings", "coordinator", json={"site": "AT01", "screened_on": iso(today()),
                                                              "answers": world.answers()}))
    err(lift(world, lk["id"]), 409)  # no longer in force
    assert audit.verify(db).ok


def test_hard_lock_supersedes_a_soft_lock(world, kids, db):
    soft = ok(lock(world, "soft"))
    hard = ok(lock(world, "hard"))
    db.expire_all()
    assert active_lock_id(db) == hard["id"]
    assert db.get(DataLock, soft["id"]).lifted_at is not None
    err(lock(world, "soft"), 409)
    err(lock(world, "hard"), 409)


# --- 423 on every write route --------------------------------------------------------------------

EXCLUDED_PREFIXES = ("lock.", "auth.", "mfa.")  # mfa: two-factor sign-in, an account's own
# account administration goes on under a lock (a compromised token must be revocable at any time)
ACCOUNT_ROUTES = {"admin.user_new", "admin.user_edit", "admin.revoke_tokens", "grants.approve", "grants.reject",
                  "api.approve_grant", "api.reject_grant",
                  # the access review and deactivating an account from it go on under a lock
                  "access.sign", "access.deactivate",
                  # a therapist's credential is staff administration, like a user's roles, not trial data
                  "api.record_credential", "api.revoke_credential", "intervention.new_credential"}
# dismissing one's own in-app notification, choosing the language of one's pages or opting out of
# the weekly digest e-mail, is the user's screen, not trial data
USER_STATE_ROUTES = {"api.dismiss_notification", "dm.dismiss", "auth.language", "auth.digest",
                     "auth.keepalive"}  # (and staying signed in when the idle warning asks)
# the lock, unblinding (both signatures, and withdrawing a request) and addendum routes, and asking for
# the sharing bundle (made under the hard lock in force, after the unblinding: tests/test_sharing.py)
LOCK_ROUTES = {"api.create_lock", "api.lift_lock", "api.unblinding", "api.countersign_unblinding",
               "api.withdraw_unblinding", "api.open_addendum", "api.request_sharing"}
# a parent's survey form (no login: the link is the credential): its 423 is a page for a family that names
# no lock and no signer; tests/test_survey_parent_page.py posts it under a hard lock (423, nothing changed)
PARENT_ROUTES = {"survey_parent.form"}
# the parent's answers through the API (the link's token is the credential): refused with 423 and
# the code "locked", but in words for a family that name no lock (the locked case below)
PARENT_API_ROUTES = {"api.submit_survey"}
# a data cut reads the data (it locks nothing and refuses nothing: taken under a lock too) and the data
# monitoring committee's recommendation is no trial data (tests/test_interim.py)
INTERIM_ROUTES = {"api.create_data_cut", "api.recommend", "interim.create", "interim.recommend"}
# the site archive for the investigator file is made at close-out, under the hard lock: it reads the data
# (tests/test_archive.py)
CLOSEOUT_ROUTES = {"closeout.archives_page"}
EXCLUDED = LOCK_ROUTES | ACCOUNT_ROUTES | USER_STATE_ROUTES | PARENT_ROUTES | INTERIM_ROUTES | CLOSEOUT_ROUTES
STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}


def write_routes(app) -> dict[str, tuple[str, str]]:
    """Every state-changing (endpoint -> (method, rule)) of the app, except lock, unblinding,
    login/password and user administration."""
    out = {}
    for rule in app.url_map.iter_rules():
        methods = (rule.methods or set()) & STATE_CHANGING
        if not methods or rule.endpoint in EXCLUDED or rule.endpoint.startswith(EXCLUDED_PREFIXES):
            continue
        for m in methods:
            out[rule.endpoint] = (m, rule.rule)
    return out


@pytest.fixture()
def dm(world, kids, db):
    """The kids, and what the data-management writes act on: a query to answer, one to close, a
    closed one to reopen, a serious adverse event to follow up and acknowledge, and another one
    acknowledged already to report onwards."""
    u = kids["usual"].study_id
    made = {}
    for name in ("respond", "close", "reopen"):
        made[name] = queries.raise_query(db, world.users["manager"], {"study_id": u, "on": {"kind": "participant"},
                                                                      "text": f"Please confirm the consent date ({name})."}).id
    queries.close(db, world.users["manager"], made["reopen"], {})
    made["ae"] = safety.record(db, world.users["coordinator"], u, {
        "term": "Febrile seizure", "onset": iso(R + dt.timedelta(days=40)), "severity": "severe", "serious": True,
        "seriousness": ["hospitalisation"], "relatedness": "not_related", "outcome": "recovering"}).id
    made["reported"] = safety.record(db, world.users["coordinator"], u, {
        "term": "Pneumonia", "onset": iso(R + dt.timedelta(days=45)), "severity": "severe", "serious": True,
        "seriousness": ["hospitalisation"], "relatedness": "not_related", "outcome": "recovering"}).id
    safety.acknowledge(db, world.users["manager"], made["reported"], SAE_REPORT)
    # the intervention as delivered: sessions the world's therapist led (the fixture's are loaded
    # by the command line), a goal to revise, a fidelity draw with a session to rate by a second
    # credentialed therapist, and one session logged after the draw for the next one
    hi = kids["high"].study_id
    from trial.course import service as course
    from trial.fidelity import service as fidelity
    for day in (26, 27):
        course.log_session(db, world.users["therapist"], hi, {"held_on": iso(R + dt.timedelta(days=day)),
                                                              "attendance": "attended", "minutes": 30})
    made["goal"] = course.set_goals(db, world.users["therapist"], hi, {"goals": [{"goal": "turn_taking"}]})[0].id
    (draw,) = fidelity.draw(db, world.users["manager"])
    made["rate"] = fidelity.derive(draw.seed, draw.population, draw.size)[0]
    course.log_session(db, world.users["therapist"], hi, {"held_on": iso(R + dt.timedelta(days=28)),
                                                          "attendance": "attended", "minutes": 30})
    rater = users.create_user(db, CLI, "therapist2@example.org", "Tove", PASSWORD, [("therapist", "AT01")])
    world.users["therapist2"], world.tokens["therapist2"] = rater, users.issue_token(db, CLI, rater)
    world.credential(rater, kind="HCPC")
    # the site's investigator, who signs casebooks (issue 29)
    inv = users.create_user(db, CLI, "investigator@example.org", "Ivo", PASSWORD, [("investigator", "AT01")])
    world.users["investigator"], world.tokens["investigator"] = inv, users.issue_token(db, CLI, inv)
    world.secrets = {"investigator": enrol(db, inv)}  # a casebook's signer signs with a code (tests/test_signoff.py)
    # parents' surveys (issue 28): two children enrolled today-ish (their baseline window is open), a
    # survey of each: one to resend and revoke (then send again), one whose link the parent answers
    # a form recorded as not done and a randomization error, each to retract (issue 29)
    from trial.outcomes import notdone
    from trial.randomize import errors as randomization_errors
    lo = kids["low"].study_id  # (the usual-care child's forms are the other cases')
    made["not_done"] = notdone.record_not_done(db, world.users["assessor"], lo, {"visit": "month2", "instrument": "ados2",
                                                                                 "reason": "refused"}).id
    made["randerr"] = randomization_errors.record_error(db, world.users["manager"], lo, {
        "kind": "ineligible", "text": "found at monitoring"}).id
    from trial.surveys import service as surveys
    for name in ("survey", "survey2"):
        sc = child(world)
        made[name + "_child"] = sc.study_id
        sv, made[name + "_token"] = surveys.send_survey(db, world.users["coordinator"], sc.study_id,
                                                        {"visit": "baseline", "instrument": "srs2", "language": "de"})
        made[name] = sv.id
    db.commit()
    kids["dm"] = made
    return kids


# a serious adverse event's report onwards: over the API (a moment with its offset from UTC) and by
# the web form (the wall-clock time at the site)
SAE_REPORT = {"reported_to": "ethics_committee", "reported_at": f"{iso(R + dt.timedelta(days=47))}T09:30:00Z",
              "reference": "EC-2026-017"}
SAE_REPORT_FORM = {"reported_to": "authority", "reported_at": f"{iso(R + dt.timedelta(days=48))}T11:15",
                   "reference": "BASG-SAE-0042"}

FIDELITY_SCORES = {"follows_lead": 4, "attunement": 4, "affect_sharing": 5, "joint_attention": 3, "reciprocity": 4}


def hard_or_soft(world, kind):
    """The lock of the 423 tests, signed over the open queries of the dm fixture and the casebooks
    waiting for the site investigator's signature."""
    return world.api("POST", "/locks", "manager", json={"kind": kind, "meaning": MEANING, "password": PASSWORD,
                                                        "accept_open_queries": True, "accept_unsigned": True})


AE_BODY = {"term": "Otitis media", "onset": iso(R + dt.timedelta(days=50)), "severity": "mild", "serious": False,
           "relatedness": "not_related", "outcome": "recovering"}


def first_session(world, k) -> int:
    """The high child's first session (3 days after randomization)."""
    sid = world.db.execute(select(TherapySession.id).where(TherapySession.participant_id == k["high"].id)
                           .order_by(TherapySession.held_on)).scalars().first()
    world.db.commit()  # hold no transaction while the app answers
    return sid


def api_cases(world, k) -> dict:
    """A valid request for every API write (accepted while unlocked; see the control test)."""
    u, hi, ready = k["usual"].study_id, k["high"].study_id, k["ready"].study_id
    return {
        "api.create_screening": ("POST", "/screenings", "coordinator",
                                 {"site": "AT01", "screened_on": iso(today()), "answers": world.answers()}, None),
        "api.create_participant": ("POST", "/participants", "coordinator",
                                   {"screening_id": k["screening"].id, "consent_date": iso(today()),
                                    "date_of_birth": iso(today() - dt.timedelta(days=5 * 365)), "sex": "male"}, None),
        "api.create_assessment": ("POST", f"/participants/{u}/assessments", "assessor",
                                  {"visit": "month2", "instrument": "ados2", "performed_on": iso(R + dt.timedelta(days=61)),
                                   "values": {"social_affect": 10, "rrb": 3, "css": 5}, "allocation_guess": "unsure",
                                   "guess_confidence": 2}, None),
        "api.randomize": ("POST", f"/participants/{ready}/randomize", "coordinator", None, {"Idempotency-Key": "lock-test"}),
        "api.record_not_done": ("POST", f"/participants/{u}/not-done", "coordinator",
                                {"visit": "month2", "instrument": "srs2", "reason": "refused"}, None),
        "api.record_randomization_error": ("POST", f"/participants/{u}/randomization-errors", "manager",
                                           {"kind": "ineligible", "text": "found at monitoring"}, None),
        "api.retract_not_done": ("POST", f"/participants/{k['low'].study_id}/not-done/{k['dm']['not_done']}/retract",
                                 "assessor",
                                 {"reason": "the form was done after all"}, None),
        "api.retract_randomization_error": ("POST", (f"/participants/{k['low'].study_id}/randomization-errors/"
                                                     f"{k['dm']['randerr']}/retract"), "manager",
                                            {"reason": "recorded on the wrong child"}, None),
        "api.log_session": ("POST", f"/participants/{hi}/sessions", "therapist",
                            {"held_on": iso(R + dt.timedelta(days=24)), "attendance": "attended", "minutes": 30}, None),
        "api.log_counselling": ("POST", f"/participants/{u}/counselling", "coordinator",
                                {"held_on": iso(R + dt.timedelta(days=20))}, None),
        "api.sign_casebook": ("POST", f"/participants/{u}/signoffs", "investigator",
                              {"milestone": "month5", "meaning": "I reviewed it.", "password": PASSWORD,
                               "code": code_of(world, "investigator")}, None),
        "api.send_survey": ("POST", f"/participants/{k['dm']['survey_child']}/surveys", "coordinator",
                            {"visit": "baseline", "instrument": "srs2", "language": "de"}, None),
        "api.resend_survey": ("POST", f"/surveys/{k['dm']['survey']}/resend", "coordinator", {}, None),
        "api.revoke_survey": ("POST", f"/surveys/{k['dm']['survey']}/revoke", "coordinator", None, None),
        "api.submit_survey": ("POST", f"/surveys/{k['dm']['survey2_token']}", None, {"values": {"total_t": 61}}, None),
        "api.create_event": ("POST", f"/participants/{u}/events", "coordinator",
                             {"type": "lost_to_follow_up", "on": iso(R + dt.timedelta(days=180)), "reason": "moved abroad"}, None),
        "api.create_deviation": ("POST", f"/participants/{u}/deviations", "coordinator",
                                 {"on": iso(R + dt.timedelta(days=5)), "category": "other", "description": "late visit"}, None),
        "api.withdraw_consent": ("POST", f"/participants/{u}/consent-withdrawals", "coordinator",
                                 {"on": iso(R + dt.timedelta(days=5)), "scope": "intervention", "data_use": "keep"}, None),
        "api.create_consent": ("POST", f"/participants/{u}/consents", "coordinator",
                               {"document": "parental_consent", "version": "1", "language": "de",
                                "signed_on": iso(R + dt.timedelta(days=5)), "signer": "guardian",
                                "options": {"video_recording": True}}, None),
        "api.report_blinding_break": ("POST", f"/participants/{u}/blinding-breaks", "assessor",
                                      {"description": "the parent mentioned the drums"}, None),
        "api.correct_assessment": ("POST", f"/assessments/{k['aid']}/corrections", "assessor",
                                   {"values": {"social_affect": 13}, "reason": "transcription error"}, None),
        "api.correct_session": ("POST", f"/sessions/{first_session(world, k)}/corrections", "therapist",
                                {"minutes": 45, "reason": "the paper log says 45"}, None),
        "api.raise_query": ("POST", "/queries", "monitor", {"study_id": u, "on": {"kind": "screening"},
                                                            "text": "Is the screening date right?"}, None),
        "api.respond_query": ("POST", f"/queries/{k['dm']['respond']}/responses", "coordinator",
                              {"text": "Confirmed from the signed form."}, None),
        "api.close_query": ("POST", f"/queries/{k['dm']['close']}/close", "manager", {"text": "fine"}, None),
        "api.reopen_query": ("POST", f"/queries/{k['dm']['reopen']}/reopen", "manager", {"text": "one more thing"}, None),
        "api.create_adverse_event": ("POST", f"/participants/{u}/adverse-events", "coordinator", AE_BODY, None),
        "api.follow_up_adverse_event": ("POST", f"/adverse-events/{k['dm']['ae']}/follow-ups", "coordinator",
                                        {"on": iso(R + dt.timedelta(days=42)), "outcome": "recovering",
                                         "text": "Discharged home."}, None),
        "api.acknowledge_adverse_event": ("POST", f"/adverse-events/{k['dm']['ae']}/acknowledge", "manager", SAE_REPORT,
                                          None),
        "api.report_adverse_event": ("POST", f"/adverse-events/{k['dm']['reported']}/reports", "manager",
                                     dict(SAE_REPORT, reported_to="authority", reference="BASG-SAE-0042"), None),
        "api.verify_record": ("POST", f"/participants/{u}/verifications", "monitor", {"on": {"kind": "participant"}}, None),
        "api.set_goals": ("POST", f"/participants/{hi}/goals", "therapist", {"goals": [{"goal": "eye_contact"}]}, None),
        "api.revise_goal": ("POST", f"/goals/{k['dm']['goal']}/revisions", "therapist",
                            {"description": "waits for a turn on the drum", "reason": "made concrete"}, None),
        "api.draw_fidelity": ("POST", "/fidelity/draws", "manager", {}, None),
        "api.rate_fidelity": ("POST", f"/sessions/{k['dm']['rate']}/fidelity", "therapist2", {"scores": FIDELITY_SCORES}, None),
    }


def web_cases(world, k) -> dict:
    """A valid form post for every web write (accepted while unlocked; see the control test)."""
    u, hi, ready = k["usual"].study_id, k["high"].study_id, k["ready"].study_id
    answers = {f"c_{key}": "yes" if v else "no" for key, v in world.answers().items()}
    site_form = {"name": "Vienna General", "country": "AT", "timezone": "UTC", "target": "41", "is_open": "y",
                 "reason": "new target"}
    return {
        "enrollment.screen": ("/screenings/new", "coordinator", {"site": "AT01", "screened_on": iso(today()), **answers}),
        "enrollment.enroll": (f"/screenings/{k['screening'].id}/enroll", "coordinator",
                              {"consent_date": iso(today()), "date_of_birth": iso(today() - dt.timedelta(days=5 * 365)),
                               "sex": "male"}),
        "enrollment.randomize": (f"/participants/{ready}/randomize", "coordinator", {"confirm": "y", "idempotency_key": "web-lock"}),
        "enrollment.assess": (f"/participants/{u}/assess/ados2", "assessor",
                              {"visit": "month2", "performed_on": iso(R + dt.timedelta(days=61)), "v_social_affect": "10",
                               "v_rrb": "3", "v_css": "5", "allocation_guess": "unsure", "guess_confidence": "2"}),
        "course.log_session": (f"/participants/{hi}/sessions/new", "therapist",
                               {"held_on": iso(R + dt.timedelta(days=24)), "attendance": "attended", "minutes": "30",
                                "techniques": "songs", "engagement": "4", "note": ""}),
        "course.log_counselling": (f"/participants/{u}/counselling/new", "coordinator",
                                   {"held_on": iso(R + dt.timedelta(days=20)), "attended": "y"}),
        "status.event": (f"/participants/{u}/events/new", "coordinator",
                         {"type": "lost_to_follow_up", "on": iso(R + dt.timedelta(days=180)), "reason": "moved abroad"}),
        "status.withdraw": (f"/participants/{u}/consent-withdrawals/new", "coordinator",
                            {"on": iso(R + dt.timedelta(days=5)), "scope": "intervention", "data_use": "keep", "text": ""}),
        "status.deviation": (f"/participants/{u}/deviations/new", "coordinator",
                             {"category": "other", "on": iso(R + dt.timedelta(days=5)), "description": "late visit"}),
        "consent.record": (f"/participants/{u}/consents/new", "coordinator",
                           {"document": "parental_consent", "language": "de", "signed_on": iso(R + dt.timedelta(days=5)),
                            "signer": "guardian", "options": "video_recording"}),
        "course.correct_session": (f"/sessions/{first_session(world, k)}/correct", "therapist",
                                   {"held_on": iso(R + dt.timedelta(days=3)), "attendance": "attended", "minutes": "45",
                                    "techniques": "songs", "engagement": "", "note": "", "reason": "the paper log says 45"}),
        "outcomes.correct": (f"/assessments/{k['aid']}/correct", "assessor",
                             {"v_social_affect": "13", "v_rrb": "4", "v_css": "6", "reason": "transcription error"}),
        "outcomes.blinding_break": (f"/participants/{u}/blinding-break", "assessor",
                                    {"reported_on": iso(today()), "description": "the parent mentioned the drums"}),
        "outcomes.not_done": (f"/participants/{u}/not-done", "coordinator",
                              {"visit": "month5", "instrument": "srs2", "reason": "refused", "text": ""}),
        "outcomes.randomization_errors_page": ("/randomization-errors", "manager",
                                               {"study_id": u, "kind": "ineligible", "field": "", "correct_value": "",
                                                "text": "found at monitoring"}),
        "admin.site_new": ("/admin/sites/new", "admin", {"code": "SE01", **site_form, "name": "Stockholm", "country": "SE"}),
        "admin.site_edit": ("/admin/sites/AT01", "admin", {"code": "AT01", **site_form}),
        "dm.raise_query": (f"/participants/{u}/queries/new?kind=screening", "monitor",
                           {"kind": "screening", "text": "Is the screening date right?"}),
        "dm.respond": (f"/queries/{k['dm']['respond']}/respond", "coordinator", {"text": "Confirmed from the signed form."}),
        "dm.close": (f"/queries/{k['dm']['close']}/close", "manager", {"text": "fine"}),
        "dm.reopen": (f"/queries/{k['dm']['reopen']}/reopen", "manager", {"text": "one more thing"}),
        "dm.new_adverse_event": (f"/participants/{u}/adverse-events/new", "coordinator",
                                 {"term": "Otitis media", "onset": iso(R + dt.timedelta(days=50)), "severity": "mild",
                                  "relatedness": "not_related", "expectedness": "", "outcome": "recovering"}),
        "dm.follow_up": (f"/adverse-events/{k['dm']['ae']}/follow-up", "coordinator",
                         {"on": iso(R + dt.timedelta(days=42)), "outcome": "recovering", "text": "Discharged home."}),
        "dm.acknowledge": (f"/adverse-events/{k['dm']['ae']}/acknowledge", "manager", SAE_REPORT_FORM),
        "dm.sae_report": (f"/adverse-events/{k['dm']['reported']}/reports", "manager", SAE_REPORT_FORM),
        "dm.verify": (f"/participants/{u}/verify", "monitor", {"kind": "participant"}),
        "surveys.send": (f"/participants/{k['dm']['survey_child']}/surveys", "coordinator",
                         {"instrument": "srs2", "visit": "baseline", "language": "de", "email": "", "first_name": ""}),
        "surveys.resend": (f"/surveys/{k['dm']['survey']}/resend", "coordinator", {"confirmed": "1"}),
        "surveys.revoke": (f"/surveys/{k['dm']['survey']}/revoke", "coordinator", {"confirmed": "1"}),
        "signoffs.sign": (f"/participants/{u}/signoffs/sign", "investigator",
                          {"milestone": "month5", "meaning": "I reviewed it.", "password": PASSWORD,
                           "code": code_of(world, "investigator")}),
        "course.set_goals": (f"/participants/{hi}/goals/new", "therapist", {"pick_eye_contact": "y", "describe_eye_contact": ""}),
        "course.revise_goal": (f"/goals/{k['dm']['goal']}/revise", "therapist",
                               {"description": "waits for a turn on the drum", "active": "y", "reason": "made concrete"}),
        "intervention.draw": ("/fidelity/draw", "manager", {}),
        "intervention.rate": (f"/sessions/{k['dm']['rate']}/fidelity", "therapist2",
                              {f"item_{key}": str(v) for key, v in FIDELITY_SCORES.items()}),
    }


def test_every_write_route_has_a_locked_case(app, world, dm):
    routes = write_routes(app)
    cases = set(api_cases(world, dm)) | set(web_cases(world, dm))
    assert set(routes) - cases == set(), f"write routes the 423 test does not cover: {sorted(set(routes) - cases)}"
    assert cases - set(routes) == set(), f"cases for routes that no longer exist: {sorted(cases - set(routes))}"
    # the exclusions are exactly the lock, unblinding, login/password (a reset link's too: an account,
    # not clinical data) and user-administration routes
    excluded = {r.endpoint for r in app.url_map.iter_rules() if (r.methods or set()) & STATE_CHANGING} - set(routes)
    assert excluded == LOCK_ROUTES | {"lock.create", "lock.lift", "lock.unblind", "lock.countersign_unblinding",
                                      "lock.withdraw_unblinding", "lock.addendum", "lock.request_sharing",
                                      "auth.login", "auth.logout", "auth.password", "auth.reset_password",
                                      "mfa.code", "mfa.enrol"} | \
        ACCOUNT_ROUTES | USER_STATE_ROUTES | PARENT_ROUTES | INTERIM_ROUTES | CLOSEOUT_ROUTES


def _api_call(world, case):
    method, path, who, body, headers = case
    return world.api(method, path, who, json=body, headers=headers)


def test_control_every_api_write_is_accepted_while_unlocked(app, world, dm, db):
    """The requests of the 423 test are valid: without a lock each one succeeds and is audited."""
    for endpoint, (method, rule) in sorted(write_routes(app).items()):
        if not endpoint.startswith("api."):
            continue
        case = api_cases(world, dm)[endpoint]
        assert case[0] == method
        n = fingerprint(db)["AuditRecord"]
        r = _api_call(world, case)
        assert r.status_code in (200, 201), (endpoint, r.status_code, r.get_data(as_text=True))
        assert fingerprint(db)["AuditRecord"] > n, endpoint


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_every_api_write_answers_423_and_changes_nothing_while_locked(app, world, dm, db, kind):
    ok(hard_or_soft(world, kind))
    before = fingerprint(db)
    routes = write_routes(app)
    checked = []
    for endpoint, (method, rule) in sorted(routes.items()):
        if not endpoint.startswith("api."):
            continue
        case = api_cases(world, dm)[endpoint]
        assert case[0] == method, endpoint
        r = _api_call(world, case)
        assert r.status_code == 423, (endpoint, r.status_code, r.get_data(as_text=True))
        e = r.get_json()["error"]
        if endpoint in PARENT_API_ROUTES:  # a parent is told in the family's words, naming no lock
            assert e["code"] == "locked" and "locked" not in e["message"], (endpoint, e)
        else:
            assert e["code"] == "locked" and f"{kind}-locked" in e["message"], (endpoint, e)
        assert fingerprint(db) == before, endpoint
        checked.append(endpoint)
    assert len(checked) == 35  # with the consents, consent-withdrawals and surveys of issue 28, the sign-off, not-done and randomization errors (and their retractions) of issue 29


def web_client(app, who, world=None):
    c = app.test_client()
    r = c.post("/login", data={"email": f"{who}@example.org", "password": PASSWORD})
    assert r.status_code == 302, who
    if r.headers["Location"].endswith("/login/code"):  # the investigator is enrolled in two-factor sign-in
        r = c.post("/login/code", data={"code": code_of(world, who)})
        assert r.status_code == 302 and not r.headers["Location"].endswith("/login/code"), who
        code_of(world, who)  # the step the login used forgotten: a signature follows within its 30 seconds
    return c


def test_control_every_web_write_is_accepted_while_unlocked(app, world, dm, db):
    clients = {}
    for endpoint, (method, rule) in sorted(write_routes(app).items()):
        if endpoint.startswith("api."):
            continue
        path, who, form = web_cases(world, dm)[endpoint]
        c = clients.setdefault(who, web_client(app, who, world))
        n = fingerprint(db)["AuditRecord"]
        r = c.post(path, data=form)
        assert r.status_code == 302, (endpoint, r.status_code, r.get_data(as_text=True)[:2000])
        assert fingerprint(db)["AuditRecord"] > n, (endpoint, "nothing was written")


def test_every_web_write_answers_423_and_changes_nothing_while_locked(app, world, dm, db):
    clients = {who: web_client(app, who, world) for who in ("coordinator", "therapist", "therapist2", "assessor", "admin",
                                                          "manager", "monitor", "investigator")}
    ok(hard_or_soft(world, "hard"))
    before = fingerprint(db)
    wrong = {}
    for endpoint, (method, rule) in sorted(write_routes(app).items()):
        if endpoint.startswith("api."):
            continue
        path, who, form = web_cases(world, dm)[endpoint]
        r = clients[who].post(path, data=form)
        assert fingerprint(db) == before, endpoint  # nothing changes, whatever the status
        if r.status_code != 423 or "locked" not in r.get_data(as_text=True):
            wrong[endpoint] = r.status_code
    assert not wrong, f"web writes that do not answer 423 under a hard lock: {wrong}"


def test_web_writes_change_nothing_while_locked(app, world, dm, db):
    """Whatever the status code, a web write under a hard lock changes nothing and says why."""
    clients = {who: web_client(app, who, world) for who in ("coordinator", "therapist", "therapist2", "assessor", "admin",
                                                          "manager", "monitor", "investigator")}
    ok(hard_or_soft(world, "hard"))
    before = fingerprint(db)
    for endpoint, (method, rule) in sorted(write_routes(app).items()):
        if endpoint.startswith("api."):
            continue
        path, who, form = web_cases(world, dm)[endpoint]
        r = clients[who].post(path, data=form, follow_redirects=True)
        main = r.get_data(as_text=True).split("<main", 1)[1]  # the answer itself, not the banner every page has
        assert "hard-locked" in main, endpoint
        assert fingerprint(db) == before, endpoint


def test_the_command_line_and_service_faces_refuse_while_locked(world, kids, db):
    """Writes that have no route (protocol load, randomization open, site admin by CLI) refuse too."""
    from trial.errors import Locked
    from trial.protocol.service import DEFAULT_PROTOCOL, load_text
    from trial.sites import service as sites
    ok(lock(world, "hard"))
    before = fingerprint(db)
    db.commit()
    writes = [
        lambda: load_text(db, CLI, DEFAULT_PROTOCOL.read_text().replace('amendment = "1.0"', 'amendment = "1.1"')),
        lambda: randomization.open_randomization(db, CLI, seed=SEED),
        lambda: sites.create_site(db, CLI, {"code": "DK01", "name": "Aarhus"}),
        lambda: sites.update_site(db, CLI, "AT01", {"target": 3}, reason="late change"),
        lambda: enrollment.record_screening(db, CLI, {"site": "AT01", "screened_on": iso(today()), "answers": world.answers()}),
        lambda: randomization.randomize(db, CLI, kids["ready"].study_id, "cli-locked"),
    ]
    for write in writes:
        with pytest.raises(Locked, match="hard-locked"):
            write()
        db.rollback()
    assert fingerprint(db) == before


def _flashes(client) -> str:
    return client.get("/locks").get_data(as_text=True)


def test_web_lock_forms_sign_refuse_and_respect_roles(app, world, kids, db):
    stat = web_client(app, "statistician")
    assert stat.get("/locks").status_code == 200
    for path, form in (("/locks/new", {"kind": "hard", "meaning": MEANING, "password": PASSWORD}),
                       ("/unblinding", {"meaning": "unblind", "password": PASSWORD}),
                       ("/locks/1/lift", {"reason": "x", "password": PASSWORD})):
        assert stat.post(path, data=form).status_code == 403, path
    for who in ("coordinator", "assessor", "therapist", "admin"):
        assert web_client(app, who).get("/locks").status_code == 403, who
    mgr = web_client(app, "manager")
    before = fingerprint(db)
    r = mgr.post("/locks/new", data={"kind": "hard", "meaning": MEANING, "password": "wrong-password-9"})
    assert r.status_code == 302
    assert "password is wrong" in _flashes(mgr)
    assert fingerprint(db) == before
    r = mgr.post("/locks/new", data={"kind": "hard", "meaning": MEANING, "password": PASSWORD})
    assert r.status_code == 302
    lk = active_lock_id(db)
    assert lk is not None and db.get(DataLock, lk).kind == "hard"
    assert db.get(Signature, db.get(DataLock, lk).signature_id).printed_name == "Manager"
    page = mgr.get("/locks").get_data(as_text=True)
    assert "Download bundle" in page and f"/locks/{lk}/bundle.zip" in page
    assert mgr.get(f"/locks/{lk}/bundle.zip").data == world.api("GET", f"/locks/{lk}/bundle.zip", "manager").data
    before = fingerprint(db)
    mgr.post(f"/locks/{lk}/lift", data={"reason": "", "password": PASSWORD, "confirm": "y"})
    mgr.post(f"/locks/{lk}/lift", data={"reason": "late data", "password": "wrong-password-9", "confirm": "y"})
    assert fingerprint(db) == before
    # lifting and unblinding each need their own confirmation ticked: without it, nothing changes
    mgr.post(f"/locks/{lk}/lift", data={"reason": "late data", "password": PASSWORD})
    assert "The lock was not lifted: tick the box" in _flashes(mgr)
    mgr.post("/unblinding", data={"meaning": "Unblind after the final lock.", "password": PASSWORD})
    assert "The trial was not unblinded: tick the box" in _flashes(mgr)
    db.expire_all()
    assert fingerprint(db) == before and active_lock_id(db) == lk
    assert db.execute(select(RandomizationDesign.unblinded_at)).scalar() is None
    mgr.post("/unblinding", data={"meaning": "Unblind after the final lock.", "password": PASSWORD, "confirm": "y"})
    db.expire_all()
    assert db.execute(select(RandomizationDesign.unblinded_at)).scalar() is None, "one signature unblinds nothing"
    req = db.execute(select(UnblindingRequest)).scalar_one()
    assert "awaits the countersignature" in _flashes(mgr) and f"/unblinding/{req.id}/countersign" not in _flashes(mgr)
    page = stat.get("/locks").get_data(as_text=True)
    assert f'action="/unblinding/{req.id}/countersign"' in page and "Unblind after the final lock." in page
    stat.post(f"/unblinding/{req.id}/countersign", data={"meaning": "Countersigned.", "password": PASSWORD})
    assert "The trial was not unblinded: tick the box" in _flashes(stat)
    stat.post(f"/unblinding/{req.id}/countersign", data={"meaning": "Countersigned.", "password": PASSWORD, "confirm": "y"})
    db.expire_all()
    assert db.execute(select(RandomizationDesign.unblinded_at)).scalar() is not None
    assert "Countersign the unblinding" not in stat.get("/locks").get_data(as_text=True)


def test_web_lock_page_gives_lifting_and_unblinding_a_section_each(app, world, kids, db):
    mgr = web_client(app, "manager")
    page = mgr.get("/locks").get_data(as_text=True)
    assert 'id="unblind-title"' in page and 'action="/unblinding"' not in page  # no hard lock: nothing to sign
    ok(lock(world, "hard"))
    page = mgr.get("/locks").get_data(as_text=True)
    sections = re.findall(r'<section class="narrow action[^"]*" aria-labelledby="([a-z-]+)">(.*?)</section>', page, re.DOTALL)
    by_title = {title: body for title, body in sections}
    assert set(by_title) == {"lift-title", "unblind-title"}, list(by_title)
    lift_, unblind_ = by_title["lift-title"], by_title["unblind-title"]
    assert "/lift" in lift_ and "/unblinding" not in lift_ and 'id="lift-confirm"' in lift_ and "snapshot" in lift_
    assert "/unblinding" in unblind_ and "/lift" not in unblind_ and 'id="unblind-confirm"' in unblind_
    assert "cannot be taken back" in unblind_
    assert re.search(r'<input[^>]*id="unblind-confirm"[^>]*required', unblind_)


# --- lifting a hard lock, version 2 -----------------------------------------------------------------

def test_lifting_a_hard_lock_keeps_its_bundle_and_the_next_is_version_2(world, kids, db):
    first = ok(lock(world, "hard"))
    z1 = world.api("GET", f"/locks/{first['id']}/bundle.zip", "manager")
    b1 = world.api("GET", f"/locks/{first['id']}/bundle.zip", "statistician")
    assert z1.status_code == b1.status_code == 200 and z1.data != b1.data
    before = fingerprint(db)
    for body in ({"password": PASSWORD}, {"reason": "", "password": PASSWORD}, {"reason": "re-open"},
                 {"reason": "re-open", "password": "wrong-password-2"}):
        err(world.api("DELETE", f"/locks/{first['id']}", "manager", json=body), 400)
    assert fingerprint(db) == before
    ok(lift(world, first["id"], reason="A site reported unentered month-5 data."), 200)
    db.expire_all()
    row = db.get(DataLock, first["id"])
    assert row.lift_reason == "A site reported unentered month-5 data." and row.lift_signature_id is not None
    assert active_lock_id(db) is None
    # entry is open again
    ok(world.api("POST", "/screenings", "coordinator", json={"site": "AT01", "screened_on": iso(today()), "answers": world.answers()}))
    # the first bundle is unchanged and still downloadable
    assert world.api("GET", f"/locks/{first['id']}/bundle.zip", "manager").data == z1.data
    assert world.api("GET", f"/locks/{first['id']}/bundle.zip", "statistician").data == b1.data
    second = ok(lock(world, "hard"))
    assert second["id"] != first["id"] and db.get(DataLock, second["id"]).version == 2
    assert second.get("version") == 2
    z2 = world.api("GET", f"/locks/{second['id']}/bundle.zip", "manager")
    assert z2.status_code == 200 and z2.data != z1.data
    assert world.api("GET", f"/locks/{first['id']}/bundle.zip", "manager").data == z1.data
    listed = {x["id"]: x for x in ok(world.api("GET", "/locks", "manager"), 200)}
    assert listed[first["id"]]["lifted_at"] and listed[second["id"]]["lifted_at"] is None
    for lid, data in ((first["id"], z1.data), (second["id"], z2.data)):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            manifest = z.read(f"lock-{lid}/manifest.sha256")
        assert listed[lid]["manifest_sha256"] == hashlib.sha256(manifest).hexdigest()
    with zipfile.ZipFile(io.BytesIO(z2.data)) as z:
        readme = z.read(f"lock-{second['id']}/README.txt").decode()
    assert "hard lock version 2" in readme
    assert audit.verify(db).ok


def test_a_lock_that_is_not_hard_or_unknown_has_no_bundle(world, kids):
    soft = ok(lock(world, "soft"))
    err(world.api("GET", f"/locks/{soft['id']}/bundle.zip", "manager"), 404)
    err(world.api("GET", "/locks/4242/bundle.zip", "statistician"), 404)


# --- unblinding -------------------------------------------------------------------------------

def test_unblinding_needs_a_hard_lock(world, kids, db):
    before = fingerprint(db)
    e = err(unblind(world), 409, "conflict")
    assert "hard lock" in e["message"]
    assert fingerprint(db) == before
    soft = ok(lock(world, "soft"))
    before = fingerprint(db)
    err(unblind(world), 409)
    assert fingerprint(db) == before
    ok(lift(world, soft["id"]), 200)
    hard = ok(lock(world, "hard"))
    ok(lift(world, hard["id"]), 200)
    before = fingerprint(db)
    err(unblind(world), 409)  # a lifted hard lock is not in force
    assert fingerprint(db) == before


def test_unblinding_is_signed_and_refuses_a_wrong_password(world, kids, db):
    ok(lock(world, "hard"))
    before = fingerprint(db)
    err(unblind(world, password="wrong-password-3"), 400)
    err(world.api("POST", "/unblinding", "manager", json={"password": PASSWORD}), 400)
    assert fingerprint(db) == before
    body = ok(unblind(world))
    design = db.execute(select(RandomizationDesign)).scalar_one()
    db.refresh(design)
    assert design.unblinded_at is not None and design.revealed_seed == SEED.hex()
    assert body["commitment"] == design.commitment
    sig = db.execute(select(Signature).where(Signature.purpose == "unblinding")).scalar_one()
    assert sig.printed_name == "Manager" and sig.meaning == "I authorise unblinding after the final lock."
    assert abs((sig.signed_at - design.unblinded_at).total_seconds()) < 1
    err(unblind(world), 409)  # only once


def test_reset_password_cannot_unblind(world, kids, db):
    ok(lock(world, "hard"))
    users.reset_password(db, CLI, world.users["manager"], "temporary-pass-43")
    db.commit()
    world.tokens["manager"] = users.issue_token(db, CLI, world.users["manager"])  # the reset revoked the old ones
    db.commit()
    before = fingerprint(db)
    err(unblind(world, password="temporary-pass-43"), 403)
    assert fingerprint(db) == before


def _zip_names(data: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return z.namelist()


def test_after_unblinding_the_statistician_gets_arm_keys_and_verify_passes(world, kids, db):
    hard = ok(lock(world, "hard"))
    blinded = world.api("GET", f"/locks/{hard['id']}/bundle.zip", "statistician").data
    unblinded = world.api("GET", f"/locks/{hard['id']}/bundle.zip", "manager").data
    c = ok(world.api("GET", "/consort", "statistician"), 200)
    assert list(c["arms"]) == ["all"]  # pooled while blinded
    assert not any(n.endswith("sessions.csv") for n in _zip_names(blinded))
    with pytest.raises(Conflict, match="the seed is still sealed"):
        randomization.verify(db, CliActor())
    ok(unblind(world))
    after = world.api("GET", f"/locks/{hard['id']}/bundle.zip", "statistician")
    assert after.status_code == 200 and after.data == unblinded
    assert any(n.endswith("csv/sessions.csv") for n in _zip_names(after.data))
    c = ok(world.api("GET", "/consort", "statistician"), 200)
    assert set(c["arms"]) == {"low", "high", "usual"}
    assert c["arms"]["usual"]["label"] == "Enhanced usual care"
    svg = world.api("GET", "/consort.svg", "statistician").get_data(as_text=True)
    assert "Enhanced usual care" in svg
    listed = ok(world.api("GET", "/locks", "statistician"), 200)
    with zipfile.ZipFile(io.BytesIO(unblinded)) as z:
        manifest = z.read(f"lock-{hard['id']}/manifest.sha256")
    assert listed[0]["manifest_sha256"] == hashlib.sha256(manifest).hexdigest()
    res = randomization.verify(db, CliActor())
    assert res.ok and res.checked == 4 and res.problems == []
    assert randomization.verify(db, world.users["statistician"]).ok


def test_verify_fails_when_an_allocation_is_altered(world, kids, db):
    ok(lock(world, "hard"))
    ok(unblind(world))
    assert randomization.verify(db, CliActor()).ok
    low = kids["low"]
    db.execute(text("UPDATE allocation SET arm = 'usual' WHERE participant_id = :p"), {"p": low.id})
    db.commit()
    db.expire_all()
    res = randomization.verify(db, CliActor())
    assert not res.ok
    assert any(low.study_id in p and "usual" in p and "low" in p for p in res.problems), res.problems


def test_verify_fails_when_an_allocation_takes_another_slot(world, kids, db):
    ok(lock(world, "hard"))
    ok(unblind(world))
    high2 = kids["high2"]
    db.execute(text("UPDATE allocation SET seq = 7 WHERE participant_id = :p"), {"p": high2.id})
    db.commit()
    db.expire_all()
    res = randomization.verify(db, CliActor())
    assert not res.ok and any(high2.study_id in p for p in res.problems), res.problems


# --- the command line against a committed database ---------------------------------------------------

_script = Path(sys.executable).parent / "trial"
TRIAL = [str(_script)] if _script.exists() else [sys.executable, "-m", "trial.cli"]


def run_cli(url: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TRIAL_DATABASE_URL=url)
    return subprocess.run(TRIAL + list(args), env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture()
def live():
    """A committed database with its own app: the CLI runs against it in a subprocess."""
    from trial import create_app
    fresh = FreshDatabase("lock")
    app = create_app({"DATABASE_URL": fresh.url, "ENGINE": fresh.engine, "TESTING": True, "SECRET_KEY": "t"})
    session = app.extensions["trial.sessions"]()
    world = World(session, app).setup()
    try:
        yield fresh, world
    finally:
        session.close()
        fresh.drop()


def test_cli_randomization_verify_passes_after_unblinding_and_fails_after_tampering(live):
    fresh, world = live
    db = world.db
    world.open(SEED)
    people = []
    for site in ("AT01", "AT01", "AT01", "NO01", "NO01"):
        p = child(world, site)
        world.randomize(p, f"cli-{p.study_id}")
        people.append(p)
    db.commit()
    db.close()  # hold no transaction while the app and the CLI use the database
    r = run_cli(fresh.url, "randomization", "verify")
    assert r.returncode != 0 and "not unblinded" in r.stderr, (r.returncode, r.stdout, r.stderr)
    ok(lock(world, "hard"))
    ok(unblind(world))
    r = run_cli(fresh.url, "randomization", "verify")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "all 5 allocations" in r.stdout
    victim = people[3]
    with fresh.engine.begin() as c:
        arm = c.execute(text("SELECT arm FROM allocation WHERE participant_id = :p"), {"p": victim.id}).scalar()
        other = "usual" if arm != "usual" else "high"
        c.execute(text("UPDATE allocation SET arm = :a WHERE participant_id = :p"), {"a": other, "p": victim.id})
    r = run_cli(fresh.url, "randomization", "verify")
    assert r.returncode != 0, r.stdout
    assert victim.study_id in r.stderr and "MISMATCH" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: verification failed")
    # the service says the same
    s = world.app.extensions["trial.sessions"]()
    try:
        res = randomization.verify(s, CliActor())
        assert not res.ok and any(victim.study_id in p for p in res.problems)
    finally:
        s.close()


# --- the lock on every page ----------------------------------------------------------------------

# the links and forms that enter or change data: gone from every page while a lock holds
ENTRY = re.compile(r'href="[^"]*(?:/screenings/new|/enroll|/assess/|/sessions/new|/counselling/new|/events/new|/deviations/new'
                   r'|/adverse-events/new|/queries/new|/blinding-break|/correct|/admin/sites/)[^"]*"'
                   r'|action="[^"]*(?:/randomize|/respond|/close|/reopen|/follow-up|/acknowledge|/reports|/verify|/correct)"')
BANNER = "Data entry is closed."


def test_a_lock_puts_a_banner_on_every_page_and_hides_data_entry_until_it_is_lifted(app, world, dm, db):
    """While a soft lock holds, every page of every role says so (which lock, who signed it) and
    shows no link or button that enters data; lifting it brings both back. The control: before the
    lock each page offers data entry and has no banner."""
    u, hi = dm["usual"].study_id, dm["high"].study_id
    pages = {
        "coordinator": ["/", "/screenings", f"/participants/{u}", f"/queries/{dm['dm']['respond']}",
                        f"/adverse-events/{dm['dm']['ae']}"],
        "assessor": [f"/participants/{u}", "/dashboard/"],
        "therapist": [f"/participants/{hi}"],
        "monitor": [f"/participants/{u}"],
        "manager": [f"/participants/{u}", f"/queries/{dm['dm']['close']}", f"/queries/{dm['dm']['reopen']}",
                    f"/adverse-events/{dm['dm']['ae']}", f"/adverse-events/{dm['dm']['reported']}"],
        "admin": ["/admin/sites"],
    }
    quiet = {"manager": ["/", "/locks", "/audit/"], "statistician": ["/", "/locks", "/consort"], "admin": ["/"]}
    clients = {who: web_client(app, who) for who in set(pages) | set(quiet)}

    def read(who, path):
        r = clients[who].get(path)
        assert r.status_code == 200, (who, path, r.status_code)
        return r.get_data(as_text=True)

    def entries(who, path):
        return ENTRY.findall(read(who, path))

    for who, paths in pages.items():
        for path in paths:
            assert entries(who, path), f"control: {who} enters data from {path} while the database is open"
    for who, paths in (pages | quiet).items():
        for path in paths:
            assert BANNER not in read(who, path), (who, path)

    lk = ok(lock(world, "soft"))["id"]
    for who, paths in pages.items():
        for path in paths:
            page = read(who, path)
            assert BANNER in page and f"soft-locked (lock {lk}, signed by Manager" in page, (who, path)
            assert not ENTRY.findall(page), (who, path, ENTRY.findall(page))
    for who, paths in quiet.items():
        for path in paths:
            assert BANNER in read(who, path), (who, path)
    lock_page = read("manager", "/locks")
    assert f"/locks/{lk}/lift" in lock_page, "the lock page keeps the form that lifts the lock"

    ok(lift(world, lk), 200)
    for who, paths in pages.items():
        for path in paths:
            assert BANNER not in read(who, path), (who, path)
            assert entries(who, path), f"{who} enters data from {path} again once the lock is lifted"


def test_the_banner_is_for_logged_in_users_and_a_failed_read_of_the_lock_does_not_break_the_page(app, world, kids, db,
                                                                                                 monkeypatch):
    ok(lock(world, "soft"))
    anonymous = app.test_client().get("/login").get_data(as_text=True)
    assert BANNER not in anonymous and "soft-locked" not in anonymous
    coordinator = web_client(app, "coordinator")
    page = coordinator.get("/no-such-page")
    assert page.status_code == 404 and BANNER in page.get_data(as_text=True)

    def unreadable(_db):
        raise OperationalError("SELECT trial_state", {}, Exception("disk I/O error"))
    monkeypatch.setattr("trial.http.lock_in_force", unreadable)
    page = coordinator.get("/")
    assert page.status_code == 200 and BANNER not in page.get_data(as_text=True)
