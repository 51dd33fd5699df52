"""Login, logout, password change, throttling, tokens, cookies and security headers."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from tests.helpers import CLI, PASSWORD
from trial.auth import service as users
from trial.auth.models import LoginAttempt, RoleGrant, User
from trial.errors import Forbidden, ValidationError


def login(client, email, password=PASSWORD):
    return client.post("/login", data={"email": email, "password": password})


def test_login_and_home(world, client):
    r = login(client, "coordinator@example.org")
    assert r.status_code == 302 and r.headers["Location"].endswith("/")
    assert "Coordinator" in client.get("/").get_data(as_text=True)


def test_unknown_user_and_wrong_password_get_identical_answers(world, app):
    a = login(app.test_client(), "nobody@example.org", "whatever-password")
    b = login(app.test_client(), "coordinator@example.org", "wrong-password-1")
    assert a.status_code == b.status_code == 401
    assert users.LOGIN_FAILED in a.get_data(as_text=True)
    assert a.get_data(as_text=True).replace("nobody@example.org", "X") == \
        b.get_data(as_text=True).replace("coordinator@example.org", "X")


def test_throttling_after_repeated_failures_is_stored_in_the_database(world, app, db):
    c = app.test_client()
    for _ in range(users.THROTTLE_FAILURES):
        assert login(c, "assessor@example.org", "wrong-password-1").status_code == 401
    r = login(c, "assessor@example.org")  # right password, but throttled
    assert r.status_code == 401 and users.LOGIN_THROTTLED in r.get_data(as_text=True)
    n = db.execute(select(func.count()).select_from(LoginAttempt).where(
        LoginAttempt.email == "assessor@example.org", LoginAttempt.success.is_(False))).scalar()
    assert n == users.THROTTLE_FAILURES + 1
    # an unknown e-mail is throttled the same way: throttling reveals nothing about accounts
    for _ in range(users.THROTTLE_FAILURES):
        login(c, "ghost@example.org", "wrong-password-1")
    assert users.LOGIN_THROTTLED in login(c, "ghost@example.org", "x" * 12).get_data(as_text=True)
    # other accounts are unaffected
    assert login(app.test_client(), "manager@example.org").status_code == 302


def test_session_replay_after_logout_is_refused(world, app):
    c1 = app.test_client()
    login(c1, "manager@example.org")
    c2 = app.test_client()  # a second browser of the same user
    login(c2, "manager@example.org")
    stolen = c1.get_cookie("trial_session").value
    assert c1.get("/participants").status_code == 200
    r = c1.post("/logout")
    assert r.status_code == 302
    replay = app.test_client()
    replay.set_cookie("trial_session", stolen)
    r = replay.get("/participants")
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    # logout ends every session of the user, not just this one
    assert c2.get("/participants").status_code == 302


def test_password_change_ends_every_session(world, app, db):
    c1, c2 = app.test_client(), app.test_client()
    login(c1, "coordinator@example.org")
    login(c2, "coordinator@example.org")
    r = c1.post("/password", data={"current_password": PASSWORD, "new_password": "a-brand-new-password"})
    assert r.status_code == 302
    assert c2.get("/").status_code == 302
    assert login(app.test_client(), "coordinator@example.org").status_code == 401
    assert login(app.test_client(), "coordinator@example.org", "a-brand-new-password").status_code == 302


def test_password_change_rejects_wrong_current_and_short_new(world, db):
    u = world.users["coordinator"]
    with pytest.raises(ValidationError) as e:
        users.change_password(db, u, "not-it-at-all", "another-long-one")
    assert "current_password" in e.value.fields
    with pytest.raises(ValidationError):
        users.change_password(db, u, PASSWORD, "short")
    db.rollback()
    assert users.check_password(db.get(User, u.id), PASSWORD)


def test_admin_reset_forces_a_password_change(world, app, db):
    u = world.users["therapist"]
    users.reset_password(db, CLI, u, "temporary-password-1")
    db.commit()
    c = app.test_client()
    assert login(c, "therapist@example.org", "temporary-password-1").status_code == 302
    r = c.get("/participants")
    assert r.status_code == 302 and r.headers["Location"].endswith("/password")


def test_deactivated_user_cannot_log_in_or_use_tokens(world, app, db):
    u = world.users["statistician"]
    users.update_user(db, CLI, u, active=False, reason="left the trial")
    db.commit()
    assert login(app.test_client(), "statistician@example.org").status_code == 401
    assert world.api("GET", "/me", "statistician").status_code == 401


def test_api_token_is_stored_hashed_and_bad_tokens_get_401(world, db):
    from trial.auth.models import ApiToken
    token = world.tokens["manager"]
    stored = [t.token_hash for t in db.execute(select(ApiToken)).scalars()]
    assert token not in stored and all(len(h) == 64 for h in stored)
    r = world.app.test_client().get("/api/v1/me", headers={"Authorization": "Bearer " + token[:-2] + "xx"})
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "unauthorized"
    assert world.app.test_client().get("/api/v1/me").status_code == 401


def test_security_headers_and_cookie_flags(world, client):
    r = client.get("/login")
    csp = r.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "same-origin"
    r = login(client, "manager@example.org")
    cookies = {c.split("=", 1)[0]: c for c in r.headers.getlist("Set-Cookie")}
    assert "HttpOnly" in cookies["trial_session"] and "SameSite=Lax" in cookies["trial_session"]
    # the known-device cookie: only for the login pages, never sent cross-site, never read by a script
    device = cookies["trial_device"]
    assert "HttpOnly" in device and "SameSite=Strict" in device and "Path=/login" in device


def test_production_refuses_to_start_without_secret_key(monkeypatch):
    from trial import create_app
    from trial.config import ConfigError
    monkeypatch.setenv("TRIAL_ENV", "production")
    monkeypatch.delenv("TRIAL_SECRET_KEY", raising=False)
    with pytest.raises(ConfigError, match="TRIAL_SECRET_KEY"):
        create_app()


def test_production_cookies_are_secure(monkeypatch, engine, session_factory, world):
    from trial import create_app
    monkeypatch.setenv("TRIAL_ENV", "production")
    app = create_app({"ENGINE": engine, "SESSION_FACTORY": session_factory, "SECRET_KEY": "s" * 32,
                      "WTF_CSRF_ENABLED": False})
    r = app.test_client().post("/login", data={"email": "manager@example.org", "password": PASSWORD})
    assert "Secure" in r.headers["Set-Cookie"]
    assert "Strict-Transport-Security" in r.headers


def test_roles_assessor_never_with_unblinded_role_at_same_site(world, db):
    with pytest.raises(ValidationError, match="same site"):
        users.create_user(db, CLI, "mix@example.org", "Mix", PASSWORD, [("assessor", "AT01"), ("coordinator", "AT01")])
    with pytest.raises(ValidationError, match="manager"):
        users.create_user(db, CLI, "mix@example.org", "Mix", PASSWORD, [("assessor", "AT01"), ("manager", None)])
    # different sites are allowed
    users.create_user(db, CLI, "mix@example.org", "Mix", PASSWORD, [("assessor", "AT01"), ("coordinator", "NO01")])


def test_non_admin_cannot_manage_users(world, db):
    with pytest.raises(Forbidden):
        users.create_user(db, world.users["manager"], "x@example.org", "X", PASSWORD, [("admin", None)])


def test_admin_pages_edit_users(world, app, db):
    """(The admin's page creating a user: tests/test_admin_powers.py, with a real SMTP server.)"""
    c = app.test_client()
    login(c, "admin@example.org")
    u = users.create_user(db, CLI, "new@example.org", "New Person", "a-console-password-1", [("assessor", "NO01")])
    db.commit()
    assert u.role_names() == {"assessor"}
    r = c.post(f"/admin/users/{u.id}", data={"name": "New Person", "roles": "assessor@NO01, coordinator@NO01",
                                             "active": "y", "reason": "wrong role"})
    assert r.status_code == 400 and "same site" in r.get_data(as_text=True)
    db.expire_all()
    assert db.get(User, u.id).role_names() == {"assessor"}
    r = c.post(f"/admin/users/{u.id}", data={"name": "New Person", "roles": "assessor@AT01", "reason": "moved site"})
    assert r.status_code == 302
    db.expire_all()
    u = db.get(User, u.id)
    assert not u.active
    from trial.audit.models import AuditRecord
    recs = db.execute(select(AuditRecord).where(AuditRecord.entity == "user", AuditRecord.entity_id == "new@example.org",
                                                AuditRecord.field == "roles", AuditRecord.action == "update")).scalars().all()
    # the role at the new site waits for a manager's countersignature (an assessor enters clinical data)
    assert [(r.old, r.new, r.reason) for r in recs] == [("assessor@NO01", None, "moved site")]
    assert [(g.role, g.status) for g in db.execute(select(RoleGrant)).scalars()] == [("assessor", "pending")]


def test_an_admin_cannot_change_their_own_roles(world, db):
    admin = world.users["admin"]
    with pytest.raises(Forbidden, match="Another administrator"):
        users.set_roles(db, admin, admin, [("admin", None), ("manager", None)], reason="self-promotion")


# --- deactivation, last login, one-time password links (issue 25) -------------------------------

def test_deactivation_ends_web_sessions_refuses_login_and_tokens_and_is_audited(world, app, db):
    from trial.audit.models import AuditRecord
    u = world.users["monitor"]
    c = app.test_client()
    assert login(c, "monitor@example.org").status_code == 302
    assert c.get("/").status_code == 200
    assert world.api("GET", "/me", "monitor").status_code == 200
    before = db.execute(select(func.count()).select_from(AuditRecord)).scalar()
    assert users.deactivate(db, CLI, u, reason="left the trial") is True
    db.commit()
    assert users.deactivate(db, CLI, u) is False  # already: nothing changes, nothing audited
    actions = db.execute(select(AuditRecord.action, AuditRecord.field).where(AuditRecord.seq > before)
                         .order_by(AuditRecord.seq)).all()
    assert ("update", "active") in actions and ("revoke_tokens", "tokens_revoked") in actions
    r = c.get("/")  # the open web session has ended
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    assert login(app.test_client(), "monitor@example.org").status_code == 401
    assert world.api("GET", "/me", "monitor").status_code == 401  # the token it had
    # reactivated: the user logs in again; the token revoked at deactivation stays revoked
    assert users.reactivate(db, CLI, u, reason="back") is True
    db.commit()
    assert login(app.test_client(), "monitor@example.org").status_code == 302
    assert world.api("GET", "/me", "monitor").status_code == 401


def test_a_login_records_the_last_login(world, app, db):
    u = world.users["coordinator"]
    db.get(User, u.id).last_login_at = None  # (the test's world issued it a token: that counts as use)
    db.commit()
    assert login(app.test_client(), "coordinator@example.org").status_code == 302
    db.expire_all()
    seen = db.get(User, u.id).last_login_at
    assert seen is not None and seen <= users.utcnow()
    assert login(app.test_client(), "coordinator@example.org", "wrong-password-1").status_code == 401
    db.expire_all()
    assert db.get(User, u.id).last_login_at == seen  # a failed login is no login


def test_password_reset_link_works_once(world, app, db):
    from trial.audit.models import AuditRecord
    from trial.auth.models import PasswordReset
    u = world.users["therapist"]
    token, row = users.issue_password_reset(db, CLI, u)
    db.commit()
    assert token not in {r.token_hash for r in db.execute(select(PasswordReset)).scalars()}  # stored hashed
    assert row.expires_at - row.created_at == users.dt.timedelta(hours=24)
    issued = db.execute(select(AuditRecord).where(AuditRecord.action == "issue_password_reset")).scalar_one()
    assert issued.actor == CLI.email and issued.entity_id == "therapist@example.org"
    link = users.reset_link(token)
    assert link == f"/reset-password/{token}"
    c = app.test_client()
    assert login(c, "therapist@example.org").status_code == 302  # a session of the user, before the reset
    page = app.test_client().get(link)
    assert page.status_code == 200 and 'name="new_password"' in page.get_data(as_text=True)
    # the password rules of a password change: too short is refused and the link stays usable
    r = app.test_client().post(link, data={"new_password": "short"})
    assert r.status_code == 400
    r = app.test_client().post(link, data={"new_password": "set-by-the-user-1"})
    assert r.status_code == 302 and r.headers["Location"].endswith("/login")
    assert c.get("/").status_code == 302  # every session of the user has ended
    assert login(app.test_client(), "therapist@example.org").status_code == 401
    assert login(app.test_client(), "therapist@example.org", "set-by-the-user-1").status_code == 302
    assert world.api("GET", "/me", "therapist").status_code == 401  # its tokens ended with the password
    done = db.execute(select(AuditRecord).where(AuditRecord.action == "reset_password")).scalars().all()
    assert [(a.actor, a.entity_id) for a in done] == [("therapist@example.org", "therapist@example.org")]
    # a second use of the link is refused and changes nothing
    again = app.test_client().post(link, data={"new_password": "someone-else-s-1"})
    assert again.status_code == 410 and "not valid" in again.get_data(as_text=True)
    assert app.test_client().get(link).status_code == 410
    assert login(app.test_client(), "therapist@example.org", "set-by-the-user-1").status_code == 302
    assert app.test_client().get("/reset-password/not-a-token-at-all").status_code == 404


def test_password_reset_link_expires_after_24_hours(world, app, db, monkeypatch):
    u = world.users["assessor"]
    token, row = users.issue_password_reset(db, CLI, u)
    db.commit()
    link = users.reset_link(token)
    monkeypatch.setattr("trial.auth.service.utcnow", lambda: row.created_at + users.dt.timedelta(hours=23, minutes=59))
    assert app.test_client().get(link).status_code == 200
    monkeypatch.setattr("trial.auth.service.utcnow", lambda: row.created_at + users.dt.timedelta(hours=24, seconds=1))
    assert app.test_client().get(link).status_code == 410
    assert app.test_client().post(link, data={"new_password": "too-late-for-this"}).status_code == 410
    monkeypatch.undo()
    assert login(app.test_client(), "assessor@example.org").status_code == 302  # the password is unchanged


def test_a_newer_link_ends_the_older_and_only_the_command_line_issues_them(world, app, db):
    u = world.users["coordinator"]
    first, _ = users.issue_password_reset(db, CLI, u)
    second, _ = users.issue_password_reset(db, CLI, u)
    db.commit()
    assert app.test_client().get(users.reset_link(first)).status_code == 410
    assert app.test_client().get(users.reset_link(second)).status_code == 200
    with pytest.raises(Forbidden):
        users.issue_password_reset(db, world.users["admin"], u)
    db.rollback()
    users.deactivate(db, CLI, u)
    db.commit()
    assert app.test_client().get(users.reset_link(second)).status_code == 410  # a deactivated account
    from trial.errors import Conflict
    with pytest.raises(Conflict):
        users.issue_password_reset(db, CLI, u)
    db.rollback()


def test_password_reset_link_is_absolute_with_the_base_url(monkeypatch):
    monkeypatch.setenv("TRIAL_BASE_URL", "https://trial.example.org/")
    assert users.reset_link("abc") == "https://trial.example.org/reset-password/abc"
