"""The access review (issue 26): a manager's page lists every account with its roles and sites,
two-factor enrolment and last login, flags the active ones unused for 90 days (or never used and made
longer ago), deactivates from it and signs the review with an electronic signature; the review keeps
the accounts as reviewed, is audited, and the next hard lock's bundle README names it."""
from __future__ import annotations

import datetime as dt
import io
import re
import zipfile

import pyotp
import pytest
from sqlalchemy import func, select

from tests.helpers import CLI, PASSWORD
from trial.audit import service as audit
from trial.audit.models import AuditRecord
from trial.auth import mfa
from trial.auth import service as users
from trial.auth.models import AccessReview, User
from trial.db import utcnow
from trial.errors import ValidationError
from trial.esign.models import Signature
from trial.grants import review

MEANING = "I have reviewed every account listed."


def _client(app, who: str):
    c = app.test_client()
    r = c.post("/login", data={"email": f"{who}@example.org", "password": PASSWORD})
    assert r.status_code == 302, f"login of {who} failed"
    return c


@pytest.fixture()
def staff(world, db):
    """The world's accounts and five more, one of each case the review must tell apart."""
    now = utcnow()
    made = {}
    for key, roles in (("stale", [("coordinator", "NO01")]), ("recent", [("monitor", "NO01")]),
                       ("never_old", [("assessor", "NO01")]), ("never_new", [("therapist", "NO01")]),
                       ("gone", [("coordinator", "AT01")])):
        made[key] = users.create_user(db, CLI, f"{key}@example.org", key.replace("_", " ").title(), PASSWORD, roles)
    made["stale"].last_login_at, made["stale"].created_at = now - dt.timedelta(days=100), now - dt.timedelta(days=400)
    made["recent"].last_login_at, made["recent"].created_at = now - dt.timedelta(days=10), now - dt.timedelta(days=400)
    made["recent"].mfa_enrolled_at = now - dt.timedelta(days=30)
    made["never_old"].created_at = now - dt.timedelta(days=120)
    made["never_new"].created_at = now - dt.timedelta(days=5)
    made["gone"].created_at = now - dt.timedelta(days=400)
    users.deactivate(db, CLI, made["gone"])
    db.commit()
    return made


def _rows(page: str) -> dict[int, tuple[bool, str]]:
    """The accounts table: user id -> (flagged, the row's text)."""
    rows = re.findall(r'<tr id="account-(\d+)"( class="flagged")?>(.*?)</tr>', page, re.DOTALL)
    return {int(i): (bool(flag), " ".join(re.sub(r"<[^>]+>", " ", body).split())) for i, flag, body in rows}


def test_the_page_lists_every_account_with_its_roles_2fa_last_login_and_the_right_flags(app, world, staff, db):
    c = _client(app, "manager")
    page = c.get("/access-review")
    assert page.status_code == 200
    rows = _rows(page.get_data(as_text=True))
    everyone = db.execute(select(User.id, User.email)).all()
    assert set(rows) == {u.id for u in everyone}, "every account, once"
    flagged = {i for i, (flag, _) in rows.items() if flag}
    assert flagged == {staff["stale"].id, staff["never_old"].id}
    stale, recent = rows[staff["stale"].id][1], rows[staff["recent"].id][1]
    assert "stale@example.org" in stale and "coordinator @ NO01" in stale and "unused for 90 days" in stale
    assert "not enrolled" in stale and "never" not in stale
    assert "onitor @ NO01" in recent and "enrolled" in recent and "not enrolled" not in recent
    assert "never used, made over 90 days ago" in rows[staff["never_old"].id][1]
    assert "never" in rows[staff["never_new"].id][1] and not rows[staff["never_new"].id][0]
    gone = rows[staff["gone"].id][1]
    assert "no (deactivated)" in gone and "Deactivate" not in gone  # nothing left to deactivate
    assert "Deactivate" not in rows[world.users["manager"].id][1]  # nor oneself
    assert "No access review has been signed yet." in page.get_data(as_text=True)


def test_the_operator_s_list_shows_2fa_and_last_login(world, staff, db):
    """`trial user list` (trial.auth.service.accounts): the same accounts for the operator."""
    listed = {a["email"]: a for a in users.accounts(db, CLI)}
    assert listed["recent@example.org"]["mfa_enrolled"] and not listed["stale@example.org"]["mfa_enrolled"]
    assert listed["recent@example.org"]["last_login_at"] == staff["recent"].last_login_at
    assert listed["stale@example.org"]["roles"] == "coordinator@NO01" and not listed["gone@example.org"]["active"]
    unused = {a["email"] for a in users.accounts(db, CLI, inactive_days=90)}
    assert {"stale@example.org", "never_old@example.org", "never_new@example.org"} <= unused
    assert "recent@example.org" not in unused


def test_the_signed_review_keeps_the_accounts_as_reviewed_and_is_audited(app, world, staff, db):
    c = _client(app, "manager")
    r = c.post("/access-review/sign", data={"meaning": MEANING, "password": PASSWORD})
    assert r.status_code == 302
    db.expire_all()
    rev = db.execute(select(AccessReview)).scalar_one()
    sig = db.get(Signature, rev.signature_id)
    assert (sig.purpose, sig.printed_name, sig.meaning, rev.inactive_days) == ("access_review", "Manager", MEANING, 90)
    by_email = {a["email"]: a for a in rev.accounts}
    assert set(by_email) == set(db.execute(select(User.email)).scalars())
    assert by_email["stale@example.org"]["inactive"] and by_email["never_old@example.org"]["inactive"]
    assert by_email["stale@example.org"]["roles"] == ["coordinator@NO01"]
    assert by_email["recent@example.org"]["mfa_enrolled"] and not by_email["gone@example.org"]["active"]
    assert sum(a["inactive"] for a in rev.accounts) == 2
    changes = {x.field: x.new for x in db.execute(select(AuditRecord).where(AuditRecord.entity == "access_review",
                                                                            AuditRecord.entity_id == str(rev.id)))
               .scalars()}
    assert changes["accounts_sha256"] == review.digest(rev.accounts) and changes["inactive"] == "2"
    assert changes["signature_id"] == str(sig.id)
    assert audit.verify(db).ok
    page = c.get("/access-review").get_data(as_text=True)
    assert "Last review signed by Manager" in page and "2 flagged" in page
    # what is kept is the review as signed: a later change of an account does not change it
    users.deactivate(db, CLI, staff["stale"])
    db.commit()
    db.expire_all()
    assert {a["email"]: a for a in db.get(AccessReview, rev.id).accounts}["stale@example.org"]["active"]


def test_a_wrong_password_signs_and_stores_nothing(app, world, staff, db):
    c = _client(app, "manager")
    head = audit.head(db)
    db.commit()
    signatures = db.execute(select(func.count()).select_from(Signature)).scalar()
    r = c.post("/access-review/sign", data={"meaning": MEANING, "password": "not-the-password"}, follow_redirects=True)
    assert "the password is wrong" in r.get_data(as_text=True)
    db.expire_all()
    assert db.execute(select(func.count()).select_from(AccessReview)).scalar() == 0
    assert db.execute(select(func.count()).select_from(Signature)).scalar() == signatures
    assert audit.head(db) == head
    with pytest.raises(ValidationError) as e:
        review.sign_review(db, world.users["manager"], "", MEANING)
    assert "password" in e.value.fields


@pytest.mark.parametrize("who", ["admin", "coordinator", "assessor", "statistician", "monitor", "therapist"])
def test_no_other_role_sees_signs_or_deactivates(app, world, staff, db, who):
    c = _client(app, who)
    target = staff["stale"]
    for method, url, data in (("GET", "/access-review", None),
                              ("POST", "/access-review/sign", {"meaning": MEANING, "password": PASSWORD}),
                              ("POST", f"/access-review/{target.id}/deactivate", {"confirm": "y"})):
        r = c.open(url, method=method, data=data)
        assert r.status_code == 403, (who, url, r.status_code)
        assert "stale@example.org" not in r.get_data(as_text=True)
    db.expire_all()
    assert db.get(User, target.id).active and db.execute(select(func.count()).select_from(AccessReview)).scalar() == 0


def test_the_manager_deactivates_from_the_review(app, world, staff, db):
    c = _client(app, "manager")
    target = staff["stale"]
    token = users.issue_token(db, CLI, target)
    db.commit()
    assert world.app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    r = c.post(f"/access-review/{target.id}/deactivate", data={}, follow_redirects=True)  # the box not ticked
    assert "tick the box" in r.get_data(as_text=True)
    db.expire_all()
    assert db.get(User, target.id).active
    r = c.post(f"/access-review/{target.id}/deactivate", data={"confirm": "y"}, follow_redirects=True)
    assert "Account deactivated" in r.get_data(as_text=True)
    db.expire_all()
    assert not db.get(User, target.id).active
    assert world.app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    rec = db.execute(select(AuditRecord).where(AuditRecord.entity == "user", AuditRecord.entity_id == target.email,
                                               AuditRecord.field == "active", AuditRecord.action == "update")).scalar_one()
    assert (rec.actor, rec.old, rec.new, rec.reason) == ("manager@example.org", "true", "false",
                                                         "deactivated at the access review")
    # not oneself, and an unknown account is a 404
    r = c.post(f"/access-review/{world.users['manager'].id}/deactivate", data={"confirm": "y"}, follow_redirects=True)
    assert "You cannot deactivate your own account." in r.get_data(as_text=True)
    assert c.post("/access-review/999999/deactivate", data={"confirm": "y"}).status_code == 404


def test_a_manager_enrolled_in_two_factor_signs_the_review_with_a_code(world, staff, db):
    boss = world.users["manager"]
    sealed = mfa.new_secret(boss)
    secret = mfa.unseal(boss.id, sealed)
    earlier = utcnow() - dt.timedelta(seconds=90)
    mfa.enrol(db, boss, sealed, pyotp.TOTP(secret).at(earlier), now=earlier)
    db.commit()
    with pytest.raises(ValidationError) as e:
        review.sign_review(db, boss, PASSWORD, MEANING)
    assert "code" in e.value.fields
    db.rollback()
    assert db.execute(select(func.count()).select_from(AccessReview)).scalar() == 0
    rev = review.sign_review(db, boss, PASSWORD, MEANING, code=pyotp.TOTP(secret).now())
    assert rev.id and len(rev.accounts) == db.execute(select(func.count()).select_from(User)).scalar()


def _readme(world, lock_id: int, who: str = "manager") -> str:
    z = zipfile.ZipFile(io.BytesIO(world.api("GET", f"/locks/{lock_id}/bundle.zip", who).data))
    return next(z.read(n).decode() for n in z.namelist() if n.endswith("README.txt"))


def _hard_lock(world) -> int:
    r = world.api("POST", "/locks", "manager", json={"kind": "hard", "meaning": "Final lock.", "password": PASSWORD})
    assert r.status_code == 201, r.get_data(as_text=True)
    return r.get_json()["id"]


def test_the_bundle_readme_names_the_last_review_before_the_lock(world, staff, db):
    world.open()
    world.randomize(world.ready())
    review.sign_review(db, world.users["manager"], PASSWORD, "An earlier review.")
    db.commit()
    rev = review.sign_review(db, world.users["manager"], PASSWORD, MEANING)
    db.commit()
    lock_id = _hard_lock(world)
    review.sign_review(db, world.users["manager"], PASSWORD, "A review after the lock.")  # not the lock's
    db.commit()
    line = (f"Access review: the last before this lock was signed by Manager <manager@example.org> at "
            f"{rev.signed_at:%Y-%m-%d %H:%M:%S} UTC ({len(rev.accounts)} accounts, 2 flagged unused).")
    for who in ("manager", "statistician"):
        assert line in _readme(world, lock_id, who)


def test_the_bundle_readme_says_when_no_review_was_signed(world, db):
    world.open()
    world.randomize(world.ready())
    lock_id = _hard_lock(world)
    assert "Access review: none was signed before this lock." in _readme(world, lock_id)
