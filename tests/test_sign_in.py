"""Signing in as a hospital's security office asks (issue 26): a throttle that cannot be turned
against a user (the attacks of the red-team review, each reproduced), known devices, sessions that
end when idle and after an absolute lifetime (with the page's warning and "stay signed in"), the
session id renewed at login and ended at a change of rights, passwords per NIST SP 800-63B, and
the security headers on every kind of answer."""
from __future__ import annotations

import datetime as dt
import re
import time

import pytest
from sqlalchemy import select

from tests.helpers import CLI, PASSWORD
from trial.audit.models import AuditRecord
from trial.auth import devices, passwords
from trial.auth import service as users
from trial.auth.models import LoginAttempt, User
from trial.errors import ValidationError

ATTACKER, OFFICE, HOME, NAT = "203.0.113.50", "198.51.100.7", "192.0.2.200", "192.0.2.10"


def client(app, addr):
    c = app.test_client()
    c.environ_base["REMOTE_ADDR"] = addr  # every request of this client comes from addr
    return c


def login(c, email, password=PASSWORD):
    return c.post("/login", data={"email": email, "password": password})


def fail(app, email, addr, times=1):
    c = client(app, addr)
    for _ in range(times):
        assert login(c, email, "wrong-password-1").status_code == 401


def age_attempts(db, seconds: int) -> None:
    """Let time pass for the throttle: move every recorded attempt back."""
    for a in db.execute(select(LoginAttempt)).scalars():
        a.at -= dt.timedelta(seconds=seconds)
    db.commit()


def throttled(r, where="for this account") -> bool:
    return r.status_code == 401 and f"Too many failed logins {where}" in r.get_data(as_text=True)


# --- the throttle: the attacks ------------------------------------------------------------------

def test_six_failures_from_one_address_do_not_lock_the_victim_out_of_another(world, app):
    fail(app, "manager@example.org", ATTACKER, 6)
    assert throttled(login(client(app, ATTACKER), "manager@example.org"))  # the attacker's address waits
    # a new laptop, a phone: an address the victim never used, and the victim gets in at once
    assert login(client(app, HOME), "manager@example.org").status_code == 302
    assert login(client(app, OFFICE), "manager@example.org").status_code == 302
    # an account that never logged in anywhere is not locked out either
    users.create_user(world.db, CLI, "newcomer@example.org", "New Comer", PASSWORD, [("statistician", None)])
    world.db.commit()
    fail(app, "newcomer@example.org", ATTACKER, 6)
    assert login(client(app, HOME), "newcomer@example.org").status_code == 302


def test_one_users_failures_at_a_shared_address_do_not_lock_out_the_others_there(world, app):
    fail(app, "coordinator@example.org", NAT, 6)  # a colleague forgot the password, behind the site's NAT
    assert throttled(login(client(app, NAT), "coordinator@example.org"))
    for who in ("therapist", "assessor", "monitor", "manager"):
        assert login(client(app, NAT), f"{who}@example.org").status_code == 302, who


def test_an_address_spraying_many_accounts_is_slowed_with_a_growing_wait(world, app, db):
    sprayer = client(app, ATTACKER)
    for i in range(users.ADDRESS_FREE):
        assert login(sprayer, f"user{i}@example.org", "Spring2026!!").status_code == 401
    r = login(sprayer, "coordinator@example.org")  # even the right password, from the spraying address
    assert throttled(r, "from this address") and "Try again in 1 minute(s)" in r.get_data(as_text=True)
    assert login(client(app, OFFICE), "coordinator@example.org").status_code == 302  # elsewhere: no wait
    waits = []
    for _ in range(3):
        waits.append(users.address_wait(db, ATTACKER, users.utcnow()))
        age_attempts(db, int(waits[-1].total_seconds()) + 1)
        assert login(sprayer, "nobody@example.org", "Summer2026!!").status_code == 401  # counted: the next wait is longer
    assert [round(w.total_seconds() / 60) for w in waits] == [1, 2, 4]
    # attempts refused during the wait do not extend it
    for _ in range(10):
        assert throttled(login(sprayer, "nobody@example.org", "Autumn2026!!"), "from this address")
    assert round(users.address_wait(db, ATTACKER, users.utcnow()).total_seconds() / 60) == 8


def test_a_known_device_signs_in_despite_an_attack_on_the_account_from_anywhere(world, app):
    laptop = client(app, OFFICE)
    assert login(laptop, "manager@example.org").status_code == 302  # the device cookie is set at a successful login
    assert laptop.post("/logout").status_code == 302
    fail(app, "manager@example.org", ATTACKER, 20)
    fail(app, "manager@example.org", OFFICE, 20)  # even from the same address (the office's NAT)
    assert throttled(login(client(app, OFFICE), "manager@example.org"))  # a browser without the cookie waits
    assert login(laptop, "manager@example.org").status_code == 302
    # and at an address that is spraying (the device's attempts are its own)
    for i in range(users.ADDRESS_FREE):
        login(client(app, OFFICE), f"user{i}@example.org", "Spring2026!!")
    assert throttled(login(client(app, OFFICE), "monitor@example.org"), "from this address")
    laptop.post("/logout")
    assert login(laptop, "manager@example.org").status_code == 302


def test_a_device_cookie_names_its_accounts_and_buys_no_extra_guesses(world, app, db):
    laptop = client(app, HOME)
    assert login(laptop, "therapist@example.org").status_code == 302
    laptop.post("/logout")
    fail(app, "coordinator@example.org", ATTACKER, 6)
    fail(app, "coordinator@example.org", HOME, 6)
    # the cookie names the therapist, not the coordinator: no way around the coordinator's throttle
    assert throttled(login(laptop, "coordinator@example.org"))
    # a stolen cookie: its own bucket, throttled after the same five failures
    for _ in range(users.ACCOUNT_FREE):
        assert login(laptop, "therapist@example.org", "wrong-password-1").status_code == 401
    assert throttled(login(laptop, "therapist@example.org"))
    stored = {a.remote_addr for a in db.execute(select(LoginAttempt).where(
        LoginAttempt.email == "therapist@example.org", LoginAttempt.success.is_(False))).scalars()}
    assert len(stored) == 1 and stored.pop().startswith(HOME + users.DEVICE_SEP)
    assert login(client(app, OFFICE), "therapist@example.org").status_code == 302  # elsewhere: no wait


def test_a_forged_or_foreign_device_cookie_counts_for_nothing(world, app):
    fail(app, "manager@example.org", ATTACKER, 6)
    for value in (devices.remember("another-secret", None, "manager@example.org"),  # signed with another key
                  "eyJkIjoiYWJjIiwiYSI6WyJtYW5hZ2VyQGV4YW1wbGUub3JnIl19.x.y", "", "garbage"):
        c = client(app, ATTACKER)
        c.set_cookie(devices.COOKIE, value, path="/login")
        assert throttled(login(c, "manager@example.org")), value
    assert devices.read("k", devices.remember("k", None, "A@example.org "))[1] == ("a@example.org",)
    value = None
    for i in range(devices.MAX_ACCOUNTS + 2):  # a shared workstation remembers the latest few accounts
        value = devices.remember("k", value, f"u{i}@example.org")
    device, emails = devices.read("k", value)
    assert emails == tuple(f"u{i}@example.org" for i in range(devices.MAX_ACCOUNTS + 1, 1, -1)) and device


# --- sessions ------------------------------------------------------------------------------------

def signed_in(app, who="coordinator"):
    c = app.test_client()
    assert login(c, f"{who}@example.org").status_code == 302
    return c


def test_an_idle_session_ends_goes_to_the_login_page_with_a_message_and_is_audited(world, app, db):
    app.config["IDLE_MINUTES"] = 0.04  # 2.4 seconds
    c = signed_in(app)
    for _ in range(3):  # activity keeps it alive: the idle limit slides with each request
        time.sleep(0.8)
        assert c.get("/participants").status_code == 200
    time.sleep(2.6)
    r = c.get("/participants?site=AT01")
    assert r.status_code == 302 and "/login" in r.headers["Location"] and "next=" in r.headers["Location"]
    page = c.get(r.headers["Location"]).get_data(as_text=True)
    assert "You were signed out after 0.04 minutes without activity" in page
    rec = db.execute(select(AuditRecord).where(AuditRecord.action == "session_expired")).scalar_one()
    assert (rec.actor, rec.entity_id, rec.reason) == ("coordinator@example.org", "coordinator@example.org",
                                                      "idle for 0.04 minutes")
    assert c.get("/participants").status_code == 302  # ended for good
    app.config["IDLE_MINUTES"] = 30
    r = login(c, "coordinator@example.org")
    assert r.status_code == 302 and c.get("/participants").status_code == 200


def test_the_absolute_lifetime_does_not_slide(world, app, db):
    app.config["SESSION_HOURS"] = 0.0005  # 1.8 seconds, however active
    c = signed_in(app, "manager")
    for _ in range(3):
        time.sleep(0.4)
        assert c.get("/").status_code == 200
    time.sleep(0.8)
    r = c.get("/")
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    assert "a session lasts at most 0.0005 hours" in c.get(r.headers["Location"]).get_data(as_text=True)
    assert db.execute(select(AuditRecord.reason).where(AuditRecord.action == "session_expired")).scalar_one() == \
        "0.0005 hours after the login"


def test_a_copy_of_an_old_cookie_is_as_dead_as_the_session(world, app):
    app.config["IDLE_MINUTES"] = 0.05  # 3 seconds
    c = signed_in(app)
    old = c.get_cookie("trial_session").value
    time.sleep(1.6)
    assert c.get("/").status_code == 200  # the owner goes on working: the cookie is renewed
    time.sleep(1.6)
    assert c.get("/").status_code == 200
    thief = app.test_client()
    thief.set_cookie("trial_session", old)
    assert thief.get("/").status_code == 302  # the copy says idle since it was taken


def test_the_keepalive_answers_the_warning_and_only_staying_counts_as_activity(world, app):
    app.config["IDLE_MINUTES"] = 0.04  # 2.4 seconds
    c = signed_in(app)
    state = c.get("/session/alive").get_json()
    assert set(state) == {"idle", "idle_left", "absolute_left", "warn"} and state["warn"] == 60
    assert 0 < state["idle_left"] <= 3 and state["absolute_left"] > 12 * 3600 - 10
    for _ in range(4):  # asking how long is left is no activity
        time.sleep(0.7)
        r = c.get("/session/alive")
    assert r.status_code == 401 and r.get_json()["signed_in"] is False
    c = signed_in(app)
    for _ in range(4):  # "stay signed in" is
        time.sleep(0.7)
        assert c.post("/session/alive").status_code == 200
    assert c.get("/participants").status_code == 200
    assert app.test_client().get("/session/alive").status_code == 302  # nobody signed in: to the login page


def test_the_page_carries_the_warning_without_inline_script(world, app):
    page = signed_in(app).get("/participants").get_data(as_text=True)
    assert '<script src="/static/session.js" defer></script>' in page
    assert 'id="session-warning"' in page and 'data-alive="/session/alive"' in page and "Stay signed in" in page
    assert 'data-idle="1800"' in page  # the limit only: the seconds left come from the server
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page) == []  # every script is a file of the site
    assert not re.search(r"\son[a-z]+=", page)  # no inline handler either
    assert "session-warning" not in app.test_client().get("/login").get_data(as_text=True)  # signed out: no clock
    js = app.test_client().get("/static/session.js")
    assert js.status_code == 200 and "keep-alive" in js.get_data(as_text=True)


def test_login_gives_a_new_session_and_a_change_of_rights_ends_every_session(world, app, db):
    c = app.test_client()
    with c.session_transaction() as s:  # a session an attacker planted before the login (fixation)
        s["planted"] = "by someone else"
    login(c, "coordinator@example.org")
    with c.session_transaction() as s:
        assert "planted" not in s and "_login_at" in s
    assert c.get("/participants").status_code == 200
    users.set_roles(db, CLI, db.get(User, world.users["coordinator"].id), [("coordinator", "NO01")], reason="moved")
    db.commit()
    r = c.get("/participants")  # the new rights take effect at the next login
    assert r.status_code == 302 and "/login" in r.headers["Location"]


def test_deactivation_ends_web_sessions_and_api_tokens(world, app, db):
    c = signed_in(app, "therapist")
    assert world.api("GET", "/me", "therapist").status_code == 200
    users.deactivate(db, CLI, db.get(User, world.users["therapist"].id), reason="left the trial")
    db.commit()
    assert c.get("/").status_code == 302
    r = world.api("GET", "/me", "therapist")
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "unauthorized"


# --- passwords (NIST SP 800-63B) ---------------------------------------------------------------------

REFUSED = {
    "aaaaaaaaaaaa": "too easy to guess", "1234567890": "at least 12 characters",
    "123456789012": "too easy to guess", "qwerty123456": "a common or breached password",
    "1qaz2wsx3edc": "a common or breached password", "LeaveMeAlone": "a common or breached password",
    "qwertyuiopasdf": "too easy to guess", "Password2026!": "too easy to guess",
    "iloveyou1234": "too easy to guess", "short-one": "at least 12 characters",
    "coordinator-blue-piano": "contains your e-mail address or name",  # the e-mail's local part (and name)
    "my name is Cora Bauer": "contains your e-mail address or name",
}
ACCEPTED = ["staple-violin-harbour", "lantern fjord marmalade", "Grüße aus Bergen mit 🎵", "zebra-quartz-ninety"]


@pytest.mark.parametrize("password, why", REFUSED.items(), ids=list(REFUSED))
def test_a_weak_common_or_personal_password_is_refused_with_its_reason(world, db, password, why):
    u = db.get(User, world.users["coordinator"].id)
    u.name = "Cora Bauer"
    db.commit()
    with pytest.raises(ValidationError) as e:
        users.change_password(db, u, PASSWORD, password)
    assert str(e.value.fields["new_password"]) == why
    db.rollback()
    assert users.check_password(db.get(User, u.id), PASSWORD)  # unchanged


@pytest.mark.parametrize("password", ACCEPTED)
def test_a_long_passphrase_of_any_characters_is_accepted_without_composition_rules(world, db, password):
    u = db.get(User, world.users["therapist"].id)
    users.change_password(db, u, PASSWORD, password)
    db.commit()
    assert users.check_password(db.get(User, u.id), password)


def test_the_rules_apply_to_every_way_a_password_is_set(world, app, db):
    c = signed_in(app)
    r = c.post("/password", data={"current_password": PASSWORD, "new_password": "qwerty123456"})
    page = r.get_data(as_text=True)
    assert r.status_code == 400 and "a common or breached password" in page and "list of common and breached" in page
    assert login(app.test_client(), "coordinator@example.org").status_code == 302  # nothing changed
    r = c.post("/password", data={"current_password": "not-my-password", "new_password": "lantern fjord marmalade"})
    assert r.status_code == 400 and "is wrong" in r.get_data(as_text=True)  # the current password is required
    with pytest.raises(ValidationError, match="at least 12"):
        users.create_user(db, CLI, "new@example.org", "New Person", "abcdefghij1", [("statistician", None)])
    db.rollback()
    with pytest.raises(ValidationError, match="e-mail address or your name"):
        users.create_user(db, CLI, "newperson@example.org", "New Person", "newperson-fjord-lantern", [("statistician", None)])
    db.rollback()
    token, _ = users.issue_password_reset(db, CLI, db.get(User, world.users["assessor"].id))
    db.commit()
    r = app.test_client().post(users.reset_link(token), data={"new_password": "assessor-lantern-fjord"})
    assert r.status_code == 400 and "contains your e-mail address or name" in r.get_data(as_text=True)
    assert app.test_client().get(users.reset_link(token)).status_code == 200  # the link still works
    assert passwords.MIN_LENGTH == users.MIN_PASSWORD == 12


# --- headers ---------------------------------------------------------------------------------------

def security_headers(r) -> None:
    h = r.headers
    csp = dict(part.strip().split(" ", 1) for part in h["Content-Security-Policy"].split(";"))
    assert csp["script-src"] == "'self'" and "unsafe-inline" not in h["Content-Security-Policy"]
    assert csp["frame-ancestors"] == "'none'" and csp["object-src"] == "'none'" and csp["style-src"] == "'self'"
    assert h["X-Content-Type-Options"] == "nosniff"
    assert h["Referrer-Policy"] == "same-origin"
    assert all(f"{f}=()" in h["Permissions-Policy"] for f in ("camera", "microphone", "geolocation"))


def test_every_kind_of_answer_carries_the_security_headers(world, app):
    c = signed_in(app, "manager")
    answers = {"page": c.get("/participants"), "login page": app.test_client().get("/login"),
               "api": world.api("GET", "/me", "manager"), "pdf": c.get("/consort.pdf"),
               "static": c.get("/static/style.css"), "error": c.get("/no-such-page"),
               "api error": app.test_client().get("/api/v1/me")}
    assert answers["pdf"].mimetype == "application/pdf" and answers["static"].status_code == 200
    for kind, r in answers.items():
        security_headers(r)
        assert "Strict-Transport-Security" not in r.headers, kind  # plain http: no HSTS
    tls = app.test_client()
    r = tls.get("/login", base_url="https://trial.example.org")
    security_headers(r)
    assert r.headers["Strict-Transport-Security"].startswith("max-age=31536000")
