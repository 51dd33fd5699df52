"""Unblinding takes two people, and a hard lock is never lifted after it (issue 26).

A manager's signed request (202) unblinds nothing; a user of the protocol's countersigner role
(TIME-A: the statistician), never the one who asked, countersigns it (201) and only then is the
seed revealed. A request may be withdrawn. After the unblinding the hard lock cannot be lifted
(409 ``unblinded``, API and page); a correction is a signed addendum that reopens data entry and is
closed by a new hard lock, signed as an addendum lock, with its own bundle naming its parent.
"""
from __future__ import annotations

import io
import tomllib
import zipfile

import pytest
from sqlalchemy import func, select

from tests.helpers import CLI, PASSWORD
from tests.test_lock import ask_unblinding, countersign, err, fingerprint, lift, lock, ok, unblind, web_client
from tests.test_lock import kids  # noqa: F401  (a fixture: the small trial of the lock tests)
from trial.audit import service as audit
from trial.audit.models import AuditRecord
from trial.auth import service as users
from trial.esign.models import Signature
from trial.lock.models import DataLock, UnblindingRequest
from trial.notify.models import Notification
from trial.randomize.models import RandomizationDesign
from trial.trialstate.models import TrialState


def _unblinded(db) -> bool:
    db.expire_all()
    return db.execute(select(RandomizationDesign.unblinded_at)).scalar() is not None


def _blinded_consort(world) -> bool:
    return list(ok(world.api("GET", "/consort", "statistician"), 200)["arms"]) == ["all"]


# --- two signatures -----------------------------------------------------------------------------------

def test_one_signature_unblinds_nothing_and_the_statistician_countersigns(world, kids, db):
    hard = ok(lock(world, "hard"))
    asked = ok(ask_unblinding(world), 202)
    assert asked == {"id": asked["id"], "status": "awaiting_countersignature", "countersigner_role": "statistician"}
    req = db.get(UnblindingRequest, asked["id"])
    assert req.lock_id == hard["id"] and req.requested_by_id == world.users["manager"].id
    assert not _unblinded(db) and _blinded_consort(world)
    assert db.execute(select(RandomizationDesign.revealed_seed)).scalar() is None
    # the statistician is told it waits (in the app), the manager who asked is not
    told = db.execute(select(Notification.user_id)).scalars().all()
    assert world.users["statistician"].id in told and world.users["manager"].id not in told
    # a second request while one waits is refused
    before = fingerprint(db)
    err(ask_unblinding(world), 409)
    assert fingerprint(db) == before
    listed = ok(world.api("GET", "/unblinding", "statistician"), 200)
    assert [(x["id"], x["status"], x["requested_by"]) for x in listed] == [(asked["id"], "awaiting_countersignature",
                                                                             "Manager")]
    # a wrong password, a missing meaning and an unknown request sign nothing
    err(countersign(world, asked["id"], password="wrong-password-7"), 400)
    err(world.api("POST", f"/unblinding/{asked['id']}/countersign", "statistician", json={"password": PASSWORD}), 400)
    err(countersign(world, 4242), 404)
    assert fingerprint(db) == before
    body = ok(countersign(world, asked["id"], meaning="I checked the lock and the SAP; I countersign."))
    assert body["id"] == asked["id"] and body["status"] == "countersigned" and body["commitment"] and body["unblinded_at"]
    assert _unblinded(db) and not _blinded_consort(world)
    assert db.execute(select(TrialState.unblinded_at)).scalar() is not None
    sigs = {s.purpose: s for s in db.execute(select(Signature)).scalars()}
    assert sigs["unblinding"].printed_name == "Manager"
    assert sigs["unblinding_countersignature"].printed_name == "Statistician"
    assert sigs["unblinding_countersignature"].meaning == "I checked the lock and the SAP; I countersign."
    rec = db.execute(select(AuditRecord).where(AuditRecord.action == "unblind", AuditRecord.field == "unblinded_at")).scalar_one()
    assert "Manager" in rec.reason and "Statistician" in rec.reason and rec.actor == "statistician@example.org"
    assert db.execute(select(func.count()).select_from(AuditRecord).where(
        AuditRecord.action.in_(("countersign_unblinding",)))).scalar() == 1
    err(countersign(world, asked["id"]), 409)  # only once
    err(ask_unblinding(world), 409)  # and the trial is unblinded
    assert audit.verify(db).ok


def test_the_same_person_never_countersigns(world, kids, db):
    """A user who holds both roles asks, then tries to countersign: refused, nothing signed."""
    both = users.create_user(db, CLI, "both@example.org", "Both Roles", PASSWORD, [("manager", None), ("statistician", None)])
    db.commit()
    world.tokens["both"] = users.issue_token(db, CLI, both)
    db.commit()
    ok(lock(world, "hard"))
    asked = ok(ask_unblinding(world, who="both"), 202)
    page = world.app.test_client()
    assert page.post("/login", data={"email": "both@example.org", "password": PASSWORD}).status_code == 302
    before = fingerprint(db)
    e = err(countersign(world, asked["id"], who="both"), 403)
    assert "second person" in e["message"]
    assert fingerprint(db) == before and not _unblinded(db)
    # the web page says so instead of offering the form
    html = page.get("/locks").get_data(as_text=True)
    assert "Countersign the unblinding" in html and f'action="/unblinding/{asked["id"]}/countersign"' not in html
    assert page.post(f"/unblinding/{asked['id']}/countersign",
                     data={"meaning": "me again", "password": PASSWORD, "confirm": "y"}).status_code == 403
    assert fingerprint(db) == before and not _unblinded(db)
    ok(countersign(world, asked["id"]))  # another person of the role may
    assert _unblinded(db)


@pytest.mark.parametrize("who", ["manager2", "coordinator", "therapist", "assessor", "monitor", "admin"])
def test_a_user_of_another_role_cannot_countersign(world, kids, db, who):
    if who == "manager2":
        m2 = users.create_user(db, CLI, "manager2@example.org", "Second Manager", PASSWORD, [("manager", None)])
        db.commit()
        world.tokens["manager2"] = users.issue_token(db, CLI, m2)
        db.commit()
    ok(lock(world, "hard"))
    asked = ok(ask_unblinding(world), 202)
    c = web_client(world.app, who) if who != "manager2" else None
    before = fingerprint(db)
    err(countersign(world, asked["id"], who=who), 403)
    assert fingerprint(db) == before and not _unblinded(db)
    err(ask_unblinding(world, who="statistician"), 403)  # nor may the countersigner ask
    if c is not None:
        c.post(f"/unblinding/{asked['id']}/countersign", data={"meaning": "x", "password": PASSWORD, "confirm": "y"})
    assert fingerprint(db) == before and not _unblinded(db)


def test_a_manager_withdraws_a_request_that_waits(world, kids, db):
    ok(lock(world, "hard"))
    asked = ok(ask_unblinding(world), 202)
    before = fingerprint(db)
    err(world.api("POST", f"/unblinding/{asked['id']}/withdraw", "manager", json={"reason": ""}), 400)
    err(world.api("POST", f"/unblinding/{asked['id']}/withdraw", "statistician", json={"reason": "no"}), 403)
    err(world.api("POST", "/unblinding/4242/withdraw", "manager", json={"reason": "no"}), 404)
    assert fingerprint(db) == before
    # a lock is not lifted while a request signed under it waits
    e = err(lift(world, db.get(UnblindingRequest, asked["id"]).lock_id), 409)
    assert "withdraw" in e["message"]
    body = ok(world.api("POST", f"/unblinding/{asked['id']}/withdraw", "manager",
                        json={"reason": "The SAP is not final yet."}), 200)
    assert body == {"id": asked["id"], "status": "withdrawn"}
    rec = db.execute(select(AuditRecord).where(AuditRecord.action == "withdraw_unblinding")).scalar_one()
    assert rec.reason == "The SAP is not final yet."
    before = fingerprint(db)
    err(countersign(world, asked["id"]), 409)
    assert fingerprint(db) == before and not _unblinded(db)
    again = ok(ask_unblinding(world), 202)  # a new request may be signed
    ok(countersign(world, again["id"]))
    assert _unblinded(db)


def test_the_web_page_shows_the_request_to_each_signer(app, world, kids, db):
    ok(lock(world, "hard"))
    mgr, stat = web_client(app, "manager"), web_client(app, "statistician")
    assert "Countersign the unblinding" not in stat.get("/locks").get_data(as_text=True)
    mgr.post("/unblinding", data={"meaning": "Final analysis, SAP v2.", "password": PASSWORD, "confirm": "y"})
    req = db.execute(select(UnblindingRequest)).scalar_one()
    page = mgr.get("/locks").get_data(as_text=True)
    assert "awaits the countersignature" in page and 'action="/unblinding"' not in page
    assert f'action="/unblinding/{req.id}/withdraw"' in page and "countersign-confirm" not in page
    page = stat.get("/locks").get_data(as_text=True)
    assert "Countersign the unblinding" in page and "Final analysis, SAP v2." in page
    assert f'action="/unblinding/{req.id}/countersign"' in page and 'id="countersign-confirm"' in page
    mgr.post(f"/unblinding/{req.id}/withdraw", data={"reason": "wrong SAP version"})
    db.expire_all()
    assert db.get(UnblindingRequest, req.id).status == "withdrawn"
    assert "Countersign the unblinding" not in stat.get("/locks").get_data(as_text=True)


# --- no lift after the unblinding; the addendum ---------------------------------------------------------

def test_a_hard_lock_is_not_lifted_after_the_unblinding(app, world, kids, db):
    hard = ok(lock(world, "hard"))
    ok(unblind(world))
    mgr = web_client(app, "manager")
    before = fingerprint(db)
    e = err(lift(world, hard["id"]), 409, "unblinded")
    assert "addendum" in e["message"]
    page = mgr.get("/locks").get_data(as_text=True)
    assert 'id="lift-title"' not in page and f'action="/locks/{hard["id"]}/lift"' not in page
    assert 'id="addendum-title"' in page and f'action="/locks/{hard["id"]}/addendum"' in page
    mgr.post(f"/locks/{hard['id']}/lift", data={"reason": "late data", "password": PASSWORD, "confirm": "y"})
    assert "not lifted after the unblinding" in mgr.get("/locks").get_data(as_text=True)
    assert fingerprint(db) == before
    # writes stay refused
    r = world.api("POST", f"/assessments/{kids['aid']}/corrections", "assessor",
                  json={"values": {"social_affect": 3}, "reason": "a change after the arms are known"})
    assert r.status_code == 423
    assert fingerprint(db) == before
    # the page's addendum: its box must be ticked, then it reopens entry
    mgr.post(f"/locks/{hard['id']}/addendum", data={"reason": "ADOS transcription error", "password": PASSWORD})
    assert "The addendum was not opened: tick the box" in mgr.get("/locks").get_data(as_text=True)
    assert fingerprint(db) == before
    mgr.post(f"/locks/{hard['id']}/addendum", data={"reason": "ADOS transcription error", "password": PASSWORD,
                                                     "confirm": "y"})
    page = mgr.get("/locks").get_data(as_text=True)
    assert "Addendum opened" in page and 'id="lock-title"' in page  # a hard lock signed now closes it
    db.expire_all()
    assert db.execute(select(TrialState.active_lock_id)).scalar() is None
    assert db.execute(select(DataLock).where(DataLock.kind == "addendum")).scalar_one().parent_lock_id == hard["id"]


def test_an_addendum_reopens_entry_and_a_new_hard_lock_closes_it_with_its_own_bundle(world, kids, db):
    hard = ok(lock(world, "hard"))
    z1 = world.api("GET", f"/locks/{hard['id']}/bundle.zip", "manager").data
    before = fingerprint(db)
    err(world.api("POST", f"/locks/{hard['id']}/addendum", "manager", json={"reason": "x", "password": PASSWORD}),
        409)  # not unblinded: lift instead
    ok(unblind(world))
    before = fingerprint(db)
    for body in ({"password": PASSWORD}, {"reason": "", "password": PASSWORD}, {"reason": "fix"},
                 {"reason": "fix", "password": "wrong-password-5"}):
        err(world.api("POST", f"/locks/{hard['id']}/addendum", "manager", json=body), 400)
    err(world.api("POST", f"/locks/{hard['id']}/addendum", "statistician", json={"reason": "x", "password": PASSWORD}), 403)
    err(world.api("POST", "/locks/4242/addendum", "manager", json={"reason": "x", "password": PASSWORD}), 404)
    assert fingerprint(db) == before
    reason = "Source data verification found a transcription error in an ADOS score."
    add = ok(world.api("POST", f"/locks/{hard['id']}/addendum", "manager", json={"reason": reason, "password": PASSWORD}))
    assert add["kind"] == "addendum" and add["parent_lock_id"] == hard["id"]
    assert db.get(Signature, db.get(DataLock, add["id"]).signature_id).purpose == "addendum"
    # the correction goes through and is audited as any other
    ok(world.api("POST", f"/assessments/{kids['aid']}/corrections", "assessor",
                 json={"values": {"social_affect": 11}, "reason": "the worksheet says 11"}), 200)
    listed = {x["id"]: x for x in ok(world.api("GET", "/locks", "manager"), 200)}
    assert listed[add["id"]]["kind"] == "addendum" and listed[add["id"]]["parent_lock_id"] == hard["id"]
    assert listed[hard["id"]]["lifted_at"]
    # the next hard lock closes the addendum, signed as an addendum lock, with bundles of its own
    second = ok(lock(world, "hard", meaning="Closing the addendum after the ADOS correction."))
    row = db.get(DataLock, second["id"])
    assert row.parent_lock_id == hard["id"] and row.version == 2
    assert db.get(Signature, row.signature_id).purpose == "addendum_lock"
    assert db.get(DataLock, add["id"]).lifted_at is not None
    z2 = world.api("GET", f"/locks/{second['id']}/bundle.zip", "manager").data
    with zipfile.ZipFile(io.BytesIO(z2)) as z:
        readme = z.read(f"lock-{second['id']}/README.txt").decode()
    assert "Addendum lock" in readme and f"hard lock {hard['id']}" in readme
    assert world.api("GET", f"/locks/{hard['id']}/bundle.zip", "manager").data == z1  # the parent's stays
    with zipfile.ZipFile(io.BytesIO(z1)) as z:
        assert "Addendum" not in z.read(f"lock-{hard['id']}/README.txt").decode()
    # and the closing lock is not lifted either
    err(lift(world, second["id"]), 409, "unblinded")
    assert audit.verify(db).ok


# --- the protocol names the countersigner ------------------------------------------------------------

@pytest.mark.parametrize("role, words", [("manager", "must not be 'manager'"), ("assessor", "must not be 'assessor'"),
                                         ("admin", "must not be 'admin'"), ("coordinator", "trial-wide"),
                                         ("dean", "unknown role")])
def test_the_countersigner_role_is_validated(role, words):
    from trial.protocol.schema import ProtocolError, validate
    from trial.protocol.service import DEFAULT_PROTOCOL
    raw = tomllib.loads(DEFAULT_PROTOCOL.read_text())
    assert validate(raw)["unblinding"] == {"countersigner_role": "statistician"}
    raw["unblinding"] = {"countersigner_role": role}
    with pytest.raises(ProtocolError) as e:
        validate(raw)
    assert e.value.key == "unblinding.countersigner_role" and words in e.value.problem
    del raw["unblinding"]
    assert "unblinding" not in validate(raw)  # optional: the default is the statistician
