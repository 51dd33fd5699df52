"""Separation of duties, API tokens and login throttling (issue 8, parts 2 and 4).

The attack is reproduced as written: an admin creates a manager account, logs in as it and tries
to read the arms. The grant waits for another manager's countersignature, so it cannot."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select, text

from tests.helpers import CLI, PASSWORD
from trial.audit.models import AuditRecord
from trial.auth import service as users
from trial.auth.models import ApiToken, LoginAttempt, RoleAssignment, RoleGrant, User
from trial.errors import Forbidden, ValidationError
from trial.esign.models import Signature
from trial.grants import service as grants


def login(app, email, password=PASSWORD, addr="10.0.0.1"):
    c = app.test_client()
    c.environ_base["REMOTE_ADDR"] = addr  # every request of this client comes from addr
    r = c.post("/login", data={"email": email, "password": password})
    return c, r


@pytest.fixture()
def randomized(world, db):
    world.open()
    p = world.ready()
    world.randomize(p, "grant-test")
    return p


# --- separation of duties ----------------------------------------------------------------------

def user_sets_password(db, user, password: str) -> None:
    """What the owner of the account's mailbox does with the one-time link (the operator's link
    here; tests/test_admin_powers.py takes the e-mailed one from a real SMTP server)."""
    token, _ = users.issue_password_reset(db, CLI, user)
    users.complete_password_reset(db, token, password)
    db.commit()


def test_an_admin_who_creates_a_manager_account_cannot_read_the_arms_with_it(world, app, db, randomized):
    """The admin creates the account for a mailbox it controls (the worst case): it gets in, but the
    manager role waits for another manager's countersignature."""
    sock = users.create_user(db, world.users["admin"], "sock@example.org", "Sock Puppet", None, [("manager", None)])
    db.commit()
    assert sock.role_names() == set(), "the manager role must not be in force yet"
    grant = db.execute(select(RoleGrant).where(RoleGrant.user_id == sock.id)).scalar_one()
    assert (grant.role, grant.status, grant.requested_by) == ("manager", "pending", "admin@example.org")
    user_sets_password(db, sock, "now-the-admin-s-own")
    c, r = login(app, "sock@example.org", "now-the-admin-s-own")
    assert r.status_code == 302
    for url in (f"/participants/{randomized.study_id}", "/participants", "/consort", "/adherence", "/audit/"):
        page = c.get(url)
        assert page.status_code == 403, url
        assert "Enhanced usual care" not in page.get_data(as_text=True) and "Music therapy" not in page.get_data(as_text=True)
    # nor can that account, or the admin, countersign the grant
    with pytest.raises(Forbidden):
        grants.approve(db, sock, grant.id, "now-the-admin-s-own", "I approve myself")
    with pytest.raises(Forbidden):
        grants.approve(db, world.users["admin"], grant.id, PASSWORD, "I approve")
    db.rollback()
    assert db.get(RoleGrant, grant.id).status == "pending"


def test_a_manager_countersigns_and_the_role_takes_effect(world, app, db, randomized):
    u = users.create_user(db, world.users["admin"], "new.coord@example.org", "New Coordinator", None,
                          [("coordinator", "AT01")])
    db.commit()
    user_sets_password(db, u, PASSWORD)
    pending = world.api("GET", "/grants", "manager").get_json()
    assert [(g["user"], g["role"], g["site"], g["status"]) for g in pending] == [
        ("new.coord@example.org", "coordinator", "AT01", "pending")]
    c, _ = login(app, "new.coord@example.org")
    assert c.get(f"/participants/{randomized.study_id}").status_code == 403
    home, _ = login(app, "manager@example.org")
    assert "1 role grant(s) wait for your countersignature" in home.get("/").get_data(as_text=True)
    # a wrong password signs nothing
    before = db.execute(select(func.count()).select_from(Signature)).scalar()
    r = world.api("POST", f"/grants/{pending[0]['id']}/approve", "manager", json={"password": "wrong-one-12", "meaning": "ok"})
    assert r.status_code == 400 and "password" in r.get_json()["error"]["fields"]
    assert db.execute(select(func.count()).select_from(Signature)).scalar() == before
    r = world.api("POST", f"/grants/{pending[0]['id']}/approve", "manager",
                  json={"password": PASSWORD, "meaning": "I checked the delegation log of AT01."})
    assert r.status_code == 200 and r.get_json() == {"id": pending[0]["id"], "status": "approved"}
    db.expire_all()
    assert db.get(User, u.id).role_names() == {"coordinator"}
    sig = db.execute(select(Signature).where(Signature.purpose == "countersign_grant")).scalar_one()
    assert sig.printed_name == "Manager" and sig.meaning == "I checked the delegation log of AT01."
    rec = db.execute(select(AuditRecord).where(AuditRecord.action == "countersign_grant")).scalars().all()
    assert {r.field for r in rec} == {"pending_grant", "roles"} and all("signed:" in r.reason for r in rec)
    # the session of the new coordinator ended (new rights at the next login), and then it works
    assert c.get("/participants").status_code == 302
    c, _ = login(app, "new.coord@example.org")
    assert c.get(f"/participants/{randomized.study_id}").status_code == 200
    assert world.api("POST", f"/grants/{pending[0]['id']}/approve", "manager",
                     json={"password": PASSWORD, "meaning": "again"}).status_code == 409


def test_nobody_countersigns_a_grant_they_asked_for(world, db):
    """An admin may not also be a manager any more; an account from before that rule (its manager
    role written straight into the database) still cannot countersign the grants it asked for."""
    boss = users.create_user(db, CLI, "boss@example.org", "Admin And Manager", PASSWORD, [("admin", None)])
    db.add(RoleAssignment(user_id=boss.id, role="manager", site_id=None))
    db.commit()
    db.expire_all()
    boss = users.get_user_by_email(db, "boss@example.org")
    users.create_user(db, boss, "t2@example.org", "Therapist Two", None, [("therapist", "NO01")])
    db.commit()
    g = db.execute(select(RoleGrant).where(RoleGrant.status == "pending")).scalar_one()
    with pytest.raises(Forbidden, match="asked for"):
        grants.approve(db, boss, g.id, PASSWORD, "ok")
    db.rollback()
    assert grants.count_pending(db, boss) == 0 and grants.count_pending(db, world.users["manager"]) == 1
    grants.approve(db, world.users["manager"], g.id, PASSWORD, "ok")
    db.commit()
    assert users.get_user_by_email(db, "t2@example.org").role_names() == {"therapist"}


@pytest.mark.parametrize("role", ["coordinator@AT01", "therapist@AT01", "monitor@AT01", "manager", "statistician"])
def test_an_admin_never_also_holds_a_role_that_sees_allocations(world, db, role):
    name, _, site = role.partition("@")
    before = db.execute(select(func.count()).select_from(RoleAssignment)).scalar()
    for who in (CLI, world.users["admin"]):
        with pytest.raises(ValidationError, match="stays blinded"):
            users.create_user(db, who, f"both{len(name)}@example.org", "Both", PASSWORD if who is CLI else None,
                              [("admin", None), (name, site or None)])
        db.rollback()
    with pytest.raises(ValidationError, match="stays blinded"):  # nor can the admin be given one later
        users.set_roles(db, CLI, world.users["admin"], [("admin", None), (name, site or None)], reason="more")
    db.rollback()
    assert db.execute(select(func.count()).select_from(RoleAssignment)).scalar() == before
    assert db.execute(select(func.count()).select_from(RoleGrant)).scalar() == 0


def test_an_admin_cannot_make_a_puppet_admin_to_change_its_own_roles(world, app, db, randomized):
    """The review's escalation: the admin creates a second admin, logs in as it and gives itself a
    coordinator role. The new admin role waits for a countersignature, and an admin may never
    hold a coordinator role anyway."""
    admin = world.users["admin"]
    puppet = users.create_user(db, admin, "puppet@example.org", "Puppet", None, [("admin", None)])
    db.commit()
    user_sets_password(db, puppet, PASSWORD)
    assert puppet.role_names() == set()
    g = db.execute(select(RoleGrant).where(RoleGrant.user_id == puppet.id)).scalar_one()
    assert g.role == "admin" and g.status == "pending"
    c, _ = login(app, "puppet@example.org")
    assert c.get(f"/admin/users/{admin.id}").status_code == 403
    # a manager countersigns the admin (as it may, knowingly: the grants page says what it holds) ...
    listed = world.api("GET", "/grants", "manager").get_json()
    assert [(x["user"], x["role"], x["holds"]) for x in listed] == [("puppet@example.org", "admin", "")]
    grants.approve(db, world.users["manager"], g.id, PASSWORD, "second administrator")
    db.commit()
    # ... and the puppet still cannot give the first admin a role that sees allocations
    with pytest.raises(ValidationError, match="stays blinded"):
        users.set_roles(db, users.get_user_by_email(db, "puppet@example.org"), admin,
                        [("admin", None), ("coordinator", "AT01")], reason="helping out")
    db.rollback()
    assert world.api("GET", f"/participants/{randomized.study_id}", "admin").status_code == 403


def test_a_manager_rejects_with_a_reason(world, db):
    users.create_user(db, world.users["admin"], "s2@example.org", "Stats Two", None, [("statistician", None)])
    db.commit()
    g = db.execute(select(RoleGrant)).scalar_one()
    r = world.api("POST", f"/grants/{g.id}/reject", "manager", json={"reason": ""})
    assert r.status_code == 400 and "reason" in r.get_json()["error"]["fields"]
    r = world.api("POST", f"/grants/{g.id}/reject", "manager", json={"reason": "not on the delegation log"})
    assert r.status_code == 200 and r.get_json()["status"] == "rejected"
    db.expire_all()
    assert users.get_user_by_email(db, "s2@example.org").role_names() == set()
    assert world.api("GET", "/grants?status=rejected", "admin").get_json()[0]["decision_note"] == "not on the delegation log"


@pytest.mark.parametrize("role", ["assessor@NO01", "coordinator@NO01", "therapist@NO01", "monitor@NO01", "manager",
                                  "statistician"])
def test_an_admin_s_grant_of_a_data_entry_or_unblinded_role_waits_and_the_console_s_takes_effect(world, db, role):
    name, _, site = role.partition("@")
    u = users.create_user(db, world.users["admin"], "a2@example.org", "Staff Two", None, [(name, site or None)])
    assert u.role_names() == set()
    g = db.execute(select(RoleGrant).where(RoleGrant.user_id == u.id)).scalar_one()
    assert (g.role, g.status) == (name, "pending")
    m = users.create_user(db, CLI, "first.manager@example.org", "First Manager", PASSWORD, [(name, site or None)])
    assert m.role_names() == {name}
    db.commit()
    assert db.execute(select(func.count()).select_from(RoleGrant)).scalar() == 1


def test_removing_a_role_is_immediate_and_withdraws_pending_grants(world, db):
    u = world.users["coordinator"]
    users.set_roles(db, world.users["admin"], u, [("coordinator", "AT01"), ("coordinator", "NO01")], reason="second site")
    db.commit()
    assert {r.site_id for r in u.roles} == {world.db.execute(text("SELECT id FROM site WHERE code='AT01'")).scalar()}
    users.set_roles(db, world.users["admin"], u, [("coordinator", "NO01")], reason="moved, in fact")
    db.commit()
    db.expire_all()
    u = db.get(User, u.id)
    assert u.roles == [] and [g.status for g in db.execute(select(RoleGrant)).scalars()] == ["pending"]
    users.set_roles(db, world.users["admin"], u, [("assessor", "AT01")], reason="assessor instead")
    db.commit()
    grants_ = [(g.role, g.status) for g in db.execute(select(RoleGrant).order_by(RoleGrant.id)).scalars()]
    assert grants_ == [("coordinator", "withdrawn"), ("assessor", "pending")]  # an assessor enters data: countersigned


def test_an_admin_never_sets_a_password_and_a_reset_keeps_the_roles(world, db):
    """An admin's reset sends the user a link (tests/test_admin_powers.py): the admin never learns
    the password, so the roles stay; only the server's console sets a password."""
    u = world.users["therapist"]
    for attempt in (lambda: users.reset_password(db, world.users["admin"], u, "the-admin-would-know-9"),
                    lambda: users.create_user(db, world.users["admin"], "x9@example.org", "X", "the-admin-would-know-9",
                                              [("assessor", "NO01")])):
        with pytest.raises(Forbidden, match="never sets or learns"):
            attempt()
        db.rollback()
    users.disable_password(db, world.users["admin"], u)
    db.commit()
    db.expire_all()
    assert db.get(User, u.id).role_names() == {"therapist"} and not users.check_password(db.get(User, u.id), PASSWORD)
    assert db.execute(select(func.count()).select_from(RoleGrant)).scalar() == 0
    users.reset_password(db, CLI, world.users["coordinator"], "set-at-the-console-10")
    db.commit()
    assert db.get(User, world.users["coordinator"].id).role_names() == {"coordinator"}


# --- API tokens --------------------------------------------------------------------------------------

def _tokens(db, user):
    db.expire_all()
    return db.execute(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id)).scalars().all()


def test_tokens_expire_after_90_days_by_default(world, db):
    t = _tokens(db, world.users["manager"])[-1]
    assert t.expires_at - t.created_at == dt.timedelta(days=90)
    assert world.api("GET", "/me", "manager").status_code == 200
    db.execute(text("UPDATE api_token SET expires_at = :t WHERE id = :id"),
               {"t": dt.datetime.utcnow() - dt.timedelta(seconds=1), "id": t.id})
    db.commit()
    assert world.api("GET", "/me", "manager").status_code == 401


def test_a_token_for_n_days_and_bad_day_counts(world, db):
    token = users.issue_token(db, CLI, world.users["manager"], days=7)
    db.commit()
    t = _tokens(db, world.users["manager"])[-1]
    assert t.expires_at - t.created_at == dt.timedelta(days=7) and token.startswith(t.prefix)
    for days in (0, -1, 367, True):
        with pytest.raises(ValidationError):
            users.issue_token(db, CLI, world.users["manager"], days=days)


def test_an_admin_cannot_issue_a_token_for_someone_else(world, db):
    with pytest.raises(Forbidden):
        users.issue_token(db, world.users["admin"], world.users["manager"])
    users.issue_token(db, world.users["manager"], world.users["manager"])  # one's own, yes


@pytest.mark.parametrize("how", ["password change", "admin reset", "deactivation", "revoke all"])
def test_tokens_end_with_password_change_reset_deactivation_and_revocation(world, db, how):
    u = world.users["statistician"]
    assert world.api("GET", "/me", "statistician").status_code == 200
    if how == "password change":
        users.change_password(db, u, PASSWORD, "a-brand-new-password")
    elif how == "admin reset":
        users.disable_password(db, world.users["admin"], u)
    elif how == "deactivation":
        users.update_user(db, world.users["admin"], u, active=False, reason="left")
    else:
        assert users.revoke_tokens(db, world.users["admin"], u) == 1
    db.commit()
    assert world.api("GET", "/me", "statistician").status_code == 401
    assert all(t.revoked_at is not None for t in _tokens(db, u))
    rec = db.execute(select(AuditRecord).where(AuditRecord.action == "revoke_tokens",
                                               AuditRecord.entity_id == u.email)).scalar_one()
    assert rec.new == _tokens(db, u)[0].prefix


def test_the_admin_user_page_lists_tokens_without_secrets_and_revokes_them(world, app, db):
    u = world.users["therapist"]
    second = users.issue_token(db, CLI, u, days=30)
    db.commit()
    c, _ = login(app, "admin@example.org")
    page = c.get(f"/admin/users/{u.id}").get_data(as_text=True)
    assert world.tokens["therapist"] not in page and second not in page
    assert world.tokens["therapist"][:12] in page and second[:12] in page
    first = _tokens(db, u)[0]
    r = c.post(f"/admin/users/{u.id}/tokens/revoke", data={"token_id": first.id})
    assert r.status_code == 302
    assert world.api("GET", "/me", "therapist").status_code == 401
    assert world.app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {second}"}).status_code == 200
    r = c.post(f"/admin/users/{u.id}/tokens/revoke", data={"all": "yes"})
    assert world.app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {second}"}).status_code == 401
    assert "revoked" in c.get(f"/admin/users/{u.id}").get_data(as_text=True)


# --- login throttling --------------------------------------------------------------------------------------

def _age_attempts(db, seconds: int) -> None:
    """Let time pass for the throttle: move every recorded attempt back."""
    for a in db.execute(select(LoginAttempt)).scalars():
        a.at -= dt.timedelta(seconds=seconds)
    db.commit()


def test_attempts_during_the_wait_do_not_extend_it_and_the_owner_gets_in_after(world, app, db):
    for _ in range(users.ACCOUNT_FREE):
        assert login(app, "manager@example.org", "wrong-password-1", addr="203.0.113.9")[1].status_code == 401
    # an attacker keeps trying all through the wait
    for _ in range(50):
        r = login(app, "manager@example.org", "wrong-password-1", addr="203.0.113.9")[1]
        assert r.status_code == 401 and users.LOGIN_THROTTLED in r.get_data(as_text=True)
    counted = db.execute(select(func.count()).select_from(LoginAttempt).where(
        LoginAttempt.email == "manager@example.org", LoginAttempt.counted.is_(True))).scalar()
    assert counted == users.ACCOUNT_FREE, "throttled attempts must not count"
    _age_attempts(db, 61)  # the first wait is one minute
    c, r = login(app, "manager@example.org", addr="203.0.113.9")
    assert r.status_code == 302, r.get_data(as_text=True)


def test_the_wait_grows_with_each_failure_after_the_wait_and_stays_bounded(world, app, db):
    email = "ghost@example.org"  # an unknown account is throttled the same way
    for _ in range(users.ACCOUNT_FREE):
        login(app, email, "x" * 12)
    waits = []
    for _ in range(6):
        now = users.utcnow()
        waits.append(users.account_wait(db, email, "10.0.0.1", now))
        _age_attempts(db, int(waits[-1].total_seconds()) + 1)
        assert login(app, email, "x" * 12)[1].status_code == 401  # counted again: the next wait is longer
    minutes = [round(w.total_seconds() / 60) for w in waits]
    assert minutes == [1, 2, 4, 8, 15, 15], minutes


def test_an_attacker_elsewhere_cannot_lock_the_owner_out_of_any_other_address(world, app, db):
    assert login(app, "manager@example.org", addr="198.51.100.7")[1].status_code == 302  # the owner's office
    for _ in range(20):
        login(app, "manager@example.org", "wrong-password-1", addr="203.0.113.50")
    assert users.LOGIN_THROTTLED in login(app, "manager@example.org", addr="203.0.113.50")[1].get_data(as_text=True)
    assert login(app, "manager@example.org", addr="198.51.100.7")[1].status_code == 302
    # nor out of an address never used before (a new laptop, a phone): the throttle is per (account, address)
    assert login(app, "manager@example.org", addr="192.0.2.201")[1].status_code == 302


def test_password_spraying_from_one_address_is_limited(world, app, db):
    emails = [f"user{i}@example.org" for i in range(users.ADDRESS_FREE)]
    for e in emails:
        assert login(app, e, "Spring2026!!", addr="192.0.2.66")[1].status_code == 401
    r = login(app, "coordinator@example.org", addr="192.0.2.66")[1]  # the right password, from the spraying address
    assert r.status_code == 401 and "from this address" in r.get_data(as_text=True)
    assert login(app, "coordinator@example.org", addr="192.0.2.67")[1].status_code == 302
    _age_attempts(db, 61)  # the first wait is a minute (then 2, 4 ... 60: tests/test_sign_in.py)
    assert login(app, "coordinator@example.org", addr="192.0.2.66")[1].status_code == 302
