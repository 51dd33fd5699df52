"""The investigator's casebook sign-off (issue 29): who may sign, when a milestone is reached, the
invalidation of a signature by each kind of later change (and not by data of a later visit), the
digest check, the worklist, and the hard lock's refusal and its override."""
from __future__ import annotations

import datetime as dt
import io
import json
import threading
import zipfile

import pyotp
import pytest
from sqlalchemy import func, select, text, update

from tests.helpers import CLI, PASSWORD, backdate_randomization, randomized_before
from trial.audit import service as audit
from trial.audit.models import AuditRecord
from trial.auth import mfa
from trial.auth import service as users
from trial.auth.models import User
from trial.db import utcnow
from trial.esign.models import Signature
from trial.lock.models import DataLock
from trial.outcomes import service as outcomes
from trial.outcomes.models import NotDone
from trial.oversight import signoff
from trial.oversight.models import CasebookSignoff
from trial.participants.models import Assessment

SEED = bytes(range(32))
TODAY = dt.date.today()
R = TODAY - dt.timedelta(days=200)   # month 5's window (day 152 +- 21) has closed; month 12's has not opened
EARLY = TODAY - dt.timedelta(days=100)  # month 5 not reached
MEANING = "I reviewed this casebook."


def iso(d: dt.date) -> str:
    return d.isoformat()


@pytest.fixture()
def kids(world, db):
    """At AT01: a music-therapy child and a usual-care child randomized on R, and one randomized
    100 days ago; an investigator at NO01 too."""
    world.open(SEED)
    music = usual = None
    while music is None or usual is None:
        p, arm = randomized_before(world, db, R)
        if arm == "usual":
            usual = usual or p
        else:
            music = music or p
    backdate_randomization(db, dt.datetime.combine(R, dt.time(10, 0)))
    early, _ = randomized_before(world, db, EARLY)
    backdate_randomization(db, dt.datetime.combine(EARLY, dt.time(10, 0)), early.id)
    inv = users.create_user(db, CLI, "investigator@example.org", "Ivo Investigator", PASSWORD, [("investigator", "AT01")])
    world.users["investigator"], world.tokens["investigator"] = inv, users.issue_token(db, CLI, inv)
    u = users.create_user(db, CLI, "investigator_no@example.org", "Nora Investigator", PASSWORD, [("investigator", "NO01")])
    world.tokens["investigator_no"] = users.issue_token(db, CLI, u)
    world.users["investigator_no"] = u
    world.secrets = {"investigator": enrol(db, inv), "investigator_no": enrol(db, u)}
    db.commit()
    return {"music": music, "usual": usual, "early": early}


def enrol(db, user) -> str:
    """Enrol ``user`` in two-factor sign-in (a casebook's signer must be); returns the secret."""
    sealed = mfa.new_secret(user)
    secret = mfa.unseal(user.id, sealed)
    earlier = utcnow() - dt.timedelta(seconds=90)
    mfa.enrol(db, user, sealed, pyotp.TOTP(secret).at(earlier), now=earlier)
    return secret


def code_of(world, who: str) -> str:
    """A current code of ``who`` (its last used step forgotten: the tests sign more often than every
    30 seconds; the refusal of a code used twice is tested with the sign-in)."""
    world.db.execute(update(User).where(User.id == world.users[who].id).values(mfa_last_step=None))
    world.db.commit()
    return pyotp.TOTP(world.secrets[who]).now()


def sign(world, p, who="investigator", milestone="month5", password=PASSWORD, **kw):
    world.db.commit()
    if "code" not in kw and getattr(world, "secrets", {}).get(who):
        kw["code"] = code_of(world, who)
    return world.api("POST", f"/participants/{p.study_id}/signoffs", who,
                     json={"milestone": milestone, "meaning": MEANING, "password": password, **kw})


def listed(world, p, who="investigator"):
    world.db.commit()
    r = world.api("GET", f"/participants/{p.study_id}/signoffs", who)
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.get_json()


def counts(db) -> tuple[int, int]:
    db.expire_all()
    return (db.execute(select(func.count()).select_from(CasebookSignoff)).scalar(),
            db.execute(select(func.count()).select_from(Signature)).scalar())


def test_only_the_investigator_of_the_site_signs(world, kids, db):
    p = kids["usual"]
    before = counts(db)
    for who in ("coordinator", "monitor", "assessor", "manager", "therapist", "statistician"):
        r = sign(world, p, who)
        assert r.status_code == 403, (who, r.status_code)
    r = sign(world, p, "investigator_no")
    assert r.status_code == 404 and p.study_id not in r.get_data(as_text=True)
    r = sign(world, p, password="not the password")
    assert r.status_code == 400 and "password" in r.get_json()["error"]["fields"]
    r = sign(world, p, milestone="month7")
    assert r.status_code == 400 and "milestone" in r.get_json()["error"]["fields"]
    assert counts(db) == before
    r = sign(world, p)
    assert r.status_code == 201, r.get_data(as_text=True)
    body = r.get_json()
    assert body["milestone"] == "month5" and body["status"] == "valid" and body["signed_by"] == "investigator@example.org"
    row = db.execute(select(CasebookSignoff)).scalar_one()
    # the e-signature is bound to the record: the study id and the covered digest end its meaning
    assert body["meaning"].startswith(MEANING) and p.study_id in body["meaning"] and row.covered_digest in body["meaning"]
    sig = db.get(Signature, row.signature_id)
    assert sig.meaning == body["meaning"]
    # a second signature of the same milestone while the first is valid
    assert sign(world, p).status_code == 409
    row = db.execute(select(CasebookSignoff)).scalar_one()
    assert len(row.covered_digest) == 64 and row.covered_seq > 0
    assert row.covered_digest == signoff.digest(db, p, signoff.milestones(db)[0], TODAY)
    # the readers: the site's unblinded staff and the managers; never a blinded role
    for who in ("investigator", "coordinator", "monitor", "manager"):
        assert [s["status"] for s in listed(world, p, who)] == ["valid"], who
    for who in ("assessor", "therapist", "statistician", "admin"):
        assert world.api("GET", f"/participants/{p.study_id}/signoffs", who).status_code == 403, who
    assert world.api("GET", f"/participants/{p.study_id}/signoffs", "investigator_no").status_code == 404


def test_a_signer_needs_the_second_factor(world, kids, db):
    secret = world.secrets["investigator"]
    before = counts(db)
    r = sign(world, kids["usual"], code=None)
    assert r.status_code == 400 and "code" in r.get_json()["error"]["fields"]
    r = sign(world, kids["usual"], code="000000" if pyotp.TOTP(secret).now() != "000000" else "111111")
    assert r.status_code == 400 and "code" in r.get_json()["error"]["fields"]
    assert counts(db) == before
    assert sign(world, kids["usual"]).status_code == 201


def test_an_investigator_not_enrolled_in_two_factor_sign_in_cannot_sign(world, kids, db):
    inv = world.users["investigator"]
    db.execute(update(User).where(User.id == inv.id).values(mfa_enrolled_at=None, mfa_secret=None))
    db.commit()
    before = counts(db)
    r = sign(world, kids["usual"], code=None)
    assert r.status_code == 403, r.get_data(as_text=True)
    assert "two-factor" in r.get_json()["error"]["message"]
    assert counts(db) == before


def test_a_milestone_not_reached_is_refused(world, kids, db):
    r = sign(world, kids["early"])
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "not_reached"
    r = sign(world, kids["usual"], milestone="end")
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "not_reached"
    assert counts(db)[0] == 0
    # a final status event ends the participation: the end of participation is reached
    assert world.api("POST", f"/participants/{kids['early'].study_id}/events", "coordinator",
                     json={"type": "withdrawn", "on": iso(TODAY - dt.timedelta(days=2)),
                           "reason": "the family moved abroad"}).status_code == 201
    assert sign(world, kids["early"], milestone="end").status_code == 201
    # month 5 is reached once its forms are entered or not done, before its window closes
    p2, _ = randomized_before(world, db, TODAY - dt.timedelta(days=140))
    backdate_randomization(db, dt.datetime.combine(TODAY - dt.timedelta(days=140), dt.time(10)), p2.id)
    assert sign(world, p2).status_code == 409
    for ins, values, guess in (("ados2", {"social_affect": 10, "rrb": 3, "css": 5},
                                {"allocation_guess": "unsure", "guess_confidence": 2}), ("srs2", {"total_t": 60}, {})):
        outcomes.record_assessment(db, CLI, p2.study_id, {"visit": "month5", "instrument": ins, "values": values,
                                                          "performed_on": iso(TODAY - dt.timedelta(days=1)), **guess})
    db.commit()
    assert signoff.reached(db, [p2])[p2.id].get("month5") is not None
    assert sign(world, p2).status_code == 201


def _music_session(world, db, p) -> int:
    r = world.api("POST", f"/participants/{p.study_id}/sessions", "therapist",
                  json={"held_on": iso(R + dt.timedelta(days=24)), "attendance": "attended", "minutes": 30})
    assert r.status_code == 201, r.get_data(as_text=True)
    return r.get_json()["id"]


def _baseline(db, p) -> int:
    return db.execute(select(Assessment.id).where(Assessment.participant_id == p.id, Assessment.visit == "baseline")).scalar()


CHANGES = {
    "assessment": lambda world, db, k, ctx: world.api(
        "POST", f"/assessments/{_baseline(db, k['music'])}/corrections", "assessor",
        json={"values": {"social_affect": 13}, "reason": "transcription error"}),
    "session": lambda world, db, k, ctx: world.api(
        "POST", f"/sessions/{ctx['session']}/corrections", "therapist",
        json={"minutes": 45, "reason": "the paper log says 45"}),
    "adverse_event": lambda world, db, k, ctx: world.api(
        "POST", f"/participants/{k['music'].study_id}/adverse-events", "coordinator",
        json={"term": "Otitis media", "onset": iso(R + dt.timedelta(days=50)), "severity": "mild", "serious": False,
              "relatedness": "not_related", "outcome": "recovering"}),
    "status_event": lambda world, db, k, ctx: world.api(
        "POST", f"/participants/{k['music'].study_id}/events", "coordinator",
        json={"type": "lost_to_follow_up", "on": iso(R + dt.timedelta(days=180)), "reason": "moved abroad"}),
    "deviation": lambda world, db, k, ctx: world.api(
        "POST", f"/participants/{k['music'].study_id}/deviations", "coordinator",
        json={"on": iso(R + dt.timedelta(days=5)), "category": "other", "description": "late visit"}),
    "consent": lambda world, db, k, ctx: world.api(
        "POST", f"/participants/{k['music'].study_id}/consents", "coordinator",
        json={"document": "parental_consent", "version": "1", "language": "de", "signed_on": iso(R + dt.timedelta(days=5)),
              "signer": "guardian", "options": {"video_recording": True}}),
    "not_done": lambda world, db, k, ctx: world.api(
        "POST", f"/participants/{k['music'].study_id}/not-done", "coordinator",
        json={"visit": "month2", "instrument": "srs2", "reason": "child_unwell"}),
    "counselling_session": lambda world, db, k, ctx: world.api(
        "POST", f"/participants/{k['music'].study_id}/counselling", "coordinator",
        json={"held_on": iso(R + dt.timedelta(days=20))}),
    "randomization_error": lambda world, db, k, ctx: world.api(
        "POST", f"/participants/{k['music'].study_id}/randomization-errors", "manager",
        json={"kind": "ineligible", "text": "found at monitoring"}),
    "consent_withdrawal": lambda world, db, k, ctx: world.api(
        "POST", f"/participants/{k['music'].study_id}/consent-withdrawals", "coordinator",
        json={"on": iso(TODAY - dt.timedelta(days=1)), "scope": "intervention", "data_use": "keep"}),
    "adverse_event_follow_up": lambda world, db, k, ctx: world.api(
        "POST", f"/adverse-events/{ctx['ae']}/follow-ups", "coordinator",
        json={"on": iso(R + dt.timedelta(days=55)), "outcome": "recovering", "text": "better"}),
    "deletion": lambda world, db, k, ctx: world.api(
        "POST", f"/participants/{k['music'].study_id}/not-done/{ctx['not_done']}/retract", "coordinator",
        json={"reason": "recorded for the wrong child"}),
}
# the change each names (its words' entity label: the English text is not asserted)
LABELS = {"assessment": "assessment", "session": "therapy_session", "adverse_event": "adverse_event",
          "status_event": "status_event", "deviation": "deviation", "consent": "consent", "not_done": "not_done",
          "counselling_session": "counselling_session", "randomization_error": "randomization_error",
          "consent_withdrawal": "consent_withdrawal", "adverse_event_follow_up": "adverse_event_follow_up",
          "deletion": "not_done"}


def _ae(world, p, onset) -> int:
    r = world.api("POST", f"/participants/{p.study_id}/adverse-events", "coordinator",
                  json={"term": "Otitis media", "onset": iso(onset), "severity": "mild", "serious": False,
                        "relatedness": "not_related", "outcome": "recovering"})
    assert r.status_code == 201, r.get_data(as_text=True)
    return r.get_json()["id"]


def _not_done(world, p) -> int:
    r = world.api("POST", f"/participants/{p.study_id}/not-done", "coordinator",
                  json={"visit": "month2", "instrument": "srs2", "reason": "child_unwell"})
    assert r.status_code == 201, r.get_data(as_text=True)
    return r.get_json()["id"]


def names(row, entity: str) -> bool:
    """Whether the sign-off's stored change (its words) names ``entity``'s label."""
    return signoff.ENTITY_LABELS[entity] in json.dumps(row.invalidated_words)


@pytest.mark.parametrize("kind", sorted(CHANGES))
def test_each_kind_of_later_change_invalidates_the_signature(world, kids, db, kind):
    p = kids["music"]
    ctx = {"session": _music_session(world, db, p)}
    if kind == "adverse_event_follow_up":
        ctx["ae"] = _ae(world, p, R + dt.timedelta(days=50))
    if kind == "deletion":
        ctx["not_done"] = _not_done(world, p)
    assert sign(world, p).status_code == 201
    r = CHANGES[kind](world, db, kids, ctx)
    assert r.status_code in (200, 201), (kind, r.status_code, r.get_data(as_text=True)[:300])
    db.expire_all()
    row = db.execute(select(CasebookSignoff)).scalar_one()
    assert row.status == "invalidated" and row.invalidated_at is not None, kind
    assert names(row, LABELS[kind]), row.invalidated_words
    # the change's audit record is the one named; the invalidation has its own, with labels
    change = db.execute(select(AuditRecord).where(AuditRecord.seq == row.invalidated_seq)).scalar_one()
    assert change.entity == LABELS[kind] or change.entity in ("allocation", "adverse_event"), change.entity
    inv = db.execute(select(AuditRecord).where(AuditRecord.entity == "casebook_signoff",
                                               AuditRecord.action == "invalidate")).scalars().all()
    assert inv and all(p.study_id in a.reason and "After the 5-month visit" in a.reason for a in inv)
    assert all("month5" not in a.reason for a in inv)
    assert all(a.reveals_allocation for a in inv)  # (when a casebook was invalidated can tell the arm)
    assert audit.verify(db).ok
    got = listed(world, p)
    assert got[0]["status"] == "invalidated" and got[0]["invalidated_by_change_words"] == row.invalidated_words
    # the casebook returns to the worklist, and it may be signed again
    assert p.study_id in [w["study_id"] for w in signoff.waiting(db, [p.site_id])]
    assert sign(world, p).status_code == 201
    assert [s["status"] for s in listed(world, p)] == ["invalidated", "valid"]


def test_data_of_a_later_visit_and_other_children_do_not_invalidate(world, kids, db):
    p = kids["usual"]
    assert sign(world, p).status_code == 201
    # the 12-month visit is not covered by the 5-month sign-off, whenever it is entered
    outcomes.record_assessment(db, CLI, p.study_id, {"visit": "month12", "instrument": "srs2", "values": {"total_t": 55},
                                                     "performed_on": iso(TODAY)})
    db.commit()
    # nor a not-done of the 12-month visit (written through the model and the audit, as the service would)
    nd = NotDone(participant_id=p.id, visit="month12", instrument="ados2", reason="refused", recorded_at=utcnow())
    db.add(nd)
    db.flush()
    audit.created(db, CLI, "not_done", nd.id, {"participant": p.study_id, "visit": "month12", "instrument": "ados2"})
    db.commit()
    # another child's change
    aid = _baseline(db, kids["music"])
    assert world.api("POST", f"/assessments/{aid}/corrections", "assessor",
                     json={"values": {"social_affect": 13}, "reason": "transcription error"}).status_code == 200
    assert [s["status"] for s in listed(world, p)] == ["valid"]
    # a not-done of month 2 (covered), written the same way, does
    nd2 = NotDone(participant_id=p.id, visit="month2", instrument="ados2", reason="refused", recorded_at=utcnow())
    db.add(nd2)
    db.flush()
    audit.created(db, CLI, "not_done", nd2.id, {"participant": p.study_id, "visit": "month2", "instrument": "ados2"})
    db.commit()
    got = listed(world, p)
    assert got[0]["status"] == "invalidated" and got[0]["invalidated_by_change_words"]["params"]["what"]
    db.expire_all()
    assert names(db.execute(select(CasebookSignoff)).scalar_one(), "not_done")


def test_the_digest_check_finds_a_change_made_around_the_audit(world, kids, db):
    p = kids["usual"]
    assert sign(world, p).status_code == 201
    db.execute(text("UPDATE assessment SET performed_on = :d WHERE id = :i"),
               {"d": R - dt.timedelta(days=6), "i": _baseline(db, p)})
    db.commit()
    c = _web(world.app, "investigator", world)
    db.expire_all()
    head = audit.head(db)[0]
    # a reading computes the check read-only: shown out of date, nothing written on a GET
    got = listed(world, p)
    assert got[0]["status"] == "valid" and got[0]["out_of_date"] is True
    page = c.get(f"/participants/{p.study_id}")
    assert page.status_code == 200 and "out of date" in page.get_data(as_text=True)
    db.expire_all()
    assert audit.head(db)[0] == head and db.execute(select(CasebookSignoff)).scalar_one().status == "valid"
    # the periodic job (`trial checks run`) invalidates it, audited
    assert signoff.check_all(db) == 1
    db.commit()
    got = listed(world, p)
    assert got[0]["status"] == "invalidated" and got[0]["invalidated_by_change_words"]["template"] == signoff.DIGEST_CHECK
    db.expire_all()
    rec = db.execute(select(AuditRecord).where(AuditRecord.entity == "casebook_signoff",
                                               AuditRecord.action == "invalidate")).scalars().first()
    assert rec is not None and "digest check" in rec.reason


def _web(app, who, world=None):
    c = app.test_client()
    r = c.post("/login", data={"email": f"{who}@example.org", "password": PASSWORD})
    assert r.status_code == 302, who
    if r.headers["Location"].endswith("/login/code"):  # the investigator is enrolled in two-factor sign-in
        r = c.post("/login/code", data={"code": code_of(world, who)})
        assert r.status_code == 302, r.get_data(as_text=True)[:300]
    return c


def test_worklist_round_trip(app, world, kids, db):
    p, early = kids["music"], kids["early"]
    db.commit()
    c = _web(app, "investigator", world)
    home = c.get("/").get_data(as_text=True)
    assert "wait for your signature" in home and p.study_id in home
    page = c.get("/signoffs").get_data(as_text=True)
    assert p.study_id in page and kids["usual"].study_id in page and early.study_id not in page
    assert "After the 5-month visit" in page and "month5" not in page.replace("#sign-month5", "")  # (an anchor)
    # signing from the worklist
    r = c.post(f"/participants/{p.study_id}/signoffs/sign",
               data={"milestone": "month5", "meaning": MEANING, "password": PASSWORD, "back": "worklist",
                     "code": code_of(world, "investigator")})
    assert r.status_code == 302 and r.headers["Location"].endswith("/signoffs")
    page = c.get("/signoffs").get_data(as_text=True)
    assert f">{p.study_id}<" not in page and kids["usual"].study_id in page
    # a wrong password signs nothing
    r = c.post(f"/participants/{kids['usual'].study_id}/signoffs/sign",
               data={"milestone": "month5", "meaning": MEANING, "password": "wrong", "back": "worklist"})
    assert counts(db)[0] == 1
    # an assessor's correction returns the casebook to the worklist, and the page says why
    aid = _baseline(db, p)
    assert world.api("POST", f"/assessments/{aid}/corrections", "assessor",
                     json={"values": {"social_affect": 13}, "reason": "transcription error"}).status_code == 200
    page = c.get("/signoffs").get_data(as_text=True)
    assert p.study_id in page and "a change invalidated the signature" in page
    part = c.get(f"/participants/{p.study_id}").get_data(as_text=True)
    assert "Invalidated on" in part and "ADOS-2" in part and "Sign the casebook" in part
    # others may not reach the worklist
    assert _web(app, "coordinator").get("/signoffs").status_code == 403
    coord = _web(app, "coordinator").get(f"/participants/{p.study_id}").get_data(as_text=True)
    assert "Invalidated on" in coord and "Sign the casebook" not in coord
    assessor = _web(app, "assessor").get(f"/participants/{p.study_id}").get_data(as_text=True)
    assert "sign-off" not in assessor


def _lock(world, **kw):
    world.db.commit()
    return world.api("POST", "/locks", "manager", json={"kind": "hard", "meaning": "Final lock.", "password": PASSWORD,
                                                        "accept_open_queries": True, **kw})


def test_the_hard_lock_waits_for_unsigned_casebooks_unless_accepted(world, kids, db):
    p, u = kids["music"], kids["usual"]
    assert sign(world, p).status_code == 201
    r = _lock(world)
    assert r.status_code == 409, r.get_data(as_text=True)
    err = r.get_json()["error"]
    assert err["code"] == "unsigned_casebooks" and set(err["fields"]) == {u.study_id}
    assert db.execute(select(func.count()).select_from(DataLock)).scalar() == 0
    r = _lock(world, accept_unsigned=True)
    assert r.status_code == 201, r.get_data(as_text=True)
    db.expire_all()
    lock = db.get(DataLock, r.get_json()["id"])
    assert lock.accepted_unsigned == [u.study_id]
    # the meaning stays short (a count); the ids are in the lock's row, its audit record (which
    # reveals the allocation, as accept_open_queries) and the unblinded README
    meaning = db.get(Signature, lock.signature_id).meaning
    assert u.study_id not in meaning and "accepting 1 casebooks" in meaning
    rec = db.execute(select(AuditRecord).where(AuditRecord.entity == "data_lock", AuditRecord.action == "accept_unsigned")
                     ).scalar_one()
    assert u.study_id in rec.new and rec.reveals_allocation is True
    z = world.api("GET", f"/locks/{lock.id}/bundle.zip", "manager")
    assert z.status_code == 200
    with zipfile.ZipFile(io.BytesIO(z.data)) as zf:
        readme = zf.read(f"lock-{lock.id}/README.txt").decode()
    assert f"accepting 1 casebooks that waited for their site investigator's signature ({u.study_id})" in readme
    # the statistician's (blinded) bundle counts them only
    z = world.api("GET", f"/locks/{lock.id}/bundle.zip", "statistician")
    assert z.status_code == 200
    with zipfile.ZipFile(io.BytesIO(z.data)) as zf:
        readme = zf.read(f"lock-{lock.id}/README.txt").decode()
    assert "BLINDED" in readme and "accepting 1 casebooks" in readme and u.study_id not in readme


def test_sites_without_an_investigator_do_not_hold_the_lock(world, kids, db):
    world.users["investigator"].active = False
    db.commit()
    assert signoff.unsigned_casebooks(db) == []
    r = _lock(world)
    assert r.status_code == 201, r.get_data(as_text=True)
    db.expire_all()
    assert db.get(DataLock, r.get_json()["id"]).accepted_unsigned is None


def test_an_admins_grant_of_the_investigator_role_waits_for_a_managers_countersignature(world, kids, db):
    from trial.grants import service as grants
    u = users.create_user(db, CLI, "pi@example.org", "Petra", PASSWORD, [("coordinator", "NO01")])
    db.commit()
    users.set_roles(db, world.users["admin"], u, [("coordinator", "NO01"), ("investigator", "AT01")], reason="new PI")
    db.commit()
    assert "investigator" not in u.role_names() and users.pending_roles_text(u, db) == "investigator@AT01"
    (g,) = users.pending_grants_of(db, u)
    grants.approve(db, world.users["manager"], g.id, PASSWORD, "I countersign the site investigator's role.")
    db.commit()
    db.refresh(u)
    assert "investigator" in u.role_names() and u.site_ids("investigator") == {kids["usual"].site_id}


def test_two_investigators_signing_at_once_make_one_valid_signature():
    """Concurrent signing (real threads, each request with its own connection, a committed
    PostgreSQL database): the child's row is taken for update and the partial unique index keeps
    one valid signature per milestone; the other signer gets 409."""
    from tests.conftest import PG_URL, FreshDatabase
    from tests.helpers import World
    from trial import create_app
    if not PG_URL:
        pytest.skip("concurrent writers: PostgreSQL (SQLite serializes its writers)")
    fresh = FreshDatabase("signoff")
    app = create_app({"DATABASE_URL": fresh.url, "ENGINE": fresh.engine, "TESTING": True, "SECRET_KEY": "t"})
    db = app.extensions["trial.sessions"]()
    try:
        world = World(db, app).setup()
        world.open(SEED)
        p, _ = randomized_before(world, db, R)
        backdate_randomization(db, dt.datetime.combine(R, dt.time(10, 0)), p.id)
        world.secrets = {}
        for who in ("investigator", "investigator2"):
            u = users.create_user(db, CLI, f"{who}@example.org", who, PASSWORD, [("investigator", "AT01")])
            world.users[who], world.tokens[who] = u, users.issue_token(db, CLI, u)
            world.secrets[who] = enrol(db, u)
        db.commit()
        who = ["investigator", "investigator2"]
        codes = [code_of(world, w) for w in who]
        study_id, pid = p.study_id, p.id  # (read here: the threads do not share this session)
        barrier = threading.Barrier(2)
        results = [None, None]

        def run(i):
            barrier.wait()
            results[i] = world.api("POST", f"/participants/{study_id}/signoffs", who[i],
                                   json={"milestone": "month5", "meaning": MEANING, "password": PASSWORD,
                                         "code": codes[i]})
        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(r.status_code for r in results) == [201, 409], [r.get_data(as_text=True)[:200] for r in results]
        db.expire_all()
        rows = db.execute(select(CasebookSignoff).where(CasebookSignoff.participant_id == pid)).scalars().all()
        assert [r.status for r in rows] == ["valid"]
        assert audit.verify(db).ok
    finally:
        db.close()
        fresh.drop()


def test_administrative_steps_and_queries_do_not_invalidate(world, kids, db):
    """A serious adverse event acknowledged by the manager and a data query raised and answered are
    not casebook data: the signature stays valid (the digest covers the event's clinical fields)."""
    p = kids["usual"]
    r = world.api("POST", f"/participants/{p.study_id}/adverse-events", "coordinator",
                  json={"term": "Pneumonia", "onset": iso(R + dt.timedelta(days=30)), "severity": "severe",
                        "serious": True, "seriousness": ["hospitalisation"], "relatedness": "not_related",
                        "outcome": "recovering"})
    assert r.status_code == 201, r.get_data(as_text=True)
    ae = r.get_json()["id"]
    assert sign(world, p).status_code == 201
    r = world.api("POST", f"/adverse-events/{ae}/acknowledge", "manager",
                  json={"reported_to": "ethics_committee", "reported_at": (utcnow() - dt.timedelta(hours=1))
                        .isoformat(timespec="seconds") + "Z", "reference": "EC-1"})
    assert r.status_code == 200, r.get_data(as_text=True)
    r = world.api("POST", "/queries", "monitor", json={"study_id": p.study_id, "on": {"kind": "assessment",
                                                                                      "id": _baseline(db, p), "field": "css"},
                                                      "text": "Please check."})
    assert r.status_code == 201, r.get_data(as_text=True)
    got = listed(world, p)
    assert [s["status"] for s in got] == ["valid"] and got[0]["out_of_date"] is False


def test_what_was_signed_stays_what_was_signed(world, kids, db):
    """The signature keeps its covered visits and signing day: a later edit of the site's time zone
    does not make it out of date; a date moved from before the signing day to after it counts."""
    from trial.course.models import TherapySession
    from trial.sites.models import Site
    p = kids["music"]
    sid = _music_session(world, db, p)
    assert sign(world, p).status_code == 201
    db.execute(update(Site).where(Site.id == p.site_id).values(timezone="Pacific/Kiritimati"))
    db.commit()
    assert signoff.out_of_date(db, [p]) == set()
    s = db.execute(select(CasebookSignoff)).scalar_one()
    visits, day = signoff.coverage(db, [s])[s.id]
    assert day == TODAY and "month5" in visits and "month12" not in visits
    # the rule for a row whose date moved: judged on its old and its new date
    row = db.get(TherapySession, sid)
    before = R + dt.timedelta(days=24)
    moved = [{"field": "held_on", "old": iso(before), "new": iso(TODAY + dt.timedelta(days=3))}]
    row.held_on = TODAY + dt.timedelta(days=3)
    assert signoff._covers(db, "therapy_session", row, moved, s, visits, day)
    assert not signoff._covers(db, "therapy_session", row, [], s, visits, day)
    db.rollback()


def test_the_digest_covers_the_listed_fields_only(world, kids, db):
    """A column outside the digest's field list (who entered a form, when) changes nothing."""
    p = kids["usual"]
    assert sign(world, p).status_code == 201
    db.execute(text("UPDATE assessment SET entered_at = :t WHERE id = :i"),
               {"t": utcnow() - dt.timedelta(days=400), "i": _baseline(db, p)})
    db.commit()
    assert signoff.out_of_date(db, [p]) == set()
    db.execute(text("UPDATE assessment SET performed_on = :d WHERE id = :i"),
               {"d": R - dt.timedelta(days=9), "i": _baseline(db, p)})
    db.commit()
    assert len(signoff.out_of_date(db, [p])) == 1
