"""Two-factor sign-in (TOTP, RFC 6238; trial.auth.mfa, trial.views.mfa): enrolment, the code step
after the password, wrong and replayed codes, recovery codes used once, throttling of wrong codes,
`trial user mfa-reset`, TRIAL_MFA_ROLES (a user of such a role reaches no page before enrolling),
e-signatures that need a code beside the password, and API tokens that are never asked for one.

The codes are computed here as an authenticator app would (pyotp) from the secret the enrolment
page shows. The server's clock for codes is moved on one 30-second step per action (``clock``),
so that a test never depends on where in a step it runs, and a code is never reused by accident."""
from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from pathlib import Path

import pyotp
import pytest
from sqlalchemy import func, select
from werkzeug.routing import IntegerConverter

from tests.conftest import FreshDatabase
from tests.helpers import CLI, PASSWORD
from trial.audit.models import AuditRecord
from trial.auth import mfa
from trial.auth import service as users
from trial.auth.models import ROLES, LoginAttempt, MfaRecoveryCode, RoleGrant, User
from trial.config import ConfigError
from trial.db import utcnow
from trial.esign.models import Signature
from trial.lock.models import DataLock
from trial.policy import BEFORE_ENROLMENT

PARENTS = {"api.survey_form", "survey_parent.form", "survey_parent.done"}

SECRET_RE = re.compile(r'id="totp-secret"[^>]*>([^<]+)<')
RECOVERY_RE = re.compile(r"<li><code>([a-z0-9]{5}-[a-z0-9]{5})</code></li>")
_script = Path(sys.executable).parent / "trial"
TRIAL = [str(_script)] if _script.exists() else [sys.executable, "-m", "trial.cli"]


class Clock:
    """The server's clock for codes: now, moved on by whole 30-second steps."""

    def __init__(self):
        self.at = utcnow()

    def now(self) -> dt.datetime:
        return self.at

    def step(self, n: int = 1) -> None:
        self.at += dt.timedelta(seconds=mfa.STEP_SECONDS * n)

    def code(self, secret: str, steps: int = 0) -> str:
        """The app's code for ``secret`` at this moment (``steps`` away from it)."""
        moment = self.at + dt.timedelta(seconds=mfa.STEP_SECONDS * steps)
        return pyotp.TOTP(secret).at(int(moment.replace(tzinfo=dt.UTC).timestamp()))


@pytest.fixture()
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(mfa, "utcnow", c.now)
    return c


def password_step(app, who: str, nxt: str | None = None):
    c = app.test_client()
    r = c.post("/login" + (f"?next={nxt}" if nxt else ""), data={"email": f"{who}@example.org", "password": PASSWORD})
    return c, r


def enrol_on_the_page(c, clock) -> tuple[str, list[str]]:
    """Enrol the client's user through /account/mfa: the secret from the page, the app's code;
    returns the secret and the recovery codes the page shows."""
    page = c.get("/account/mfa")
    assert page.status_code == 200
    secret = SECRET_RE.search(page.get_data(as_text=True)).group(1).replace(" ", "")
    r = c.post("/account/mfa", data={"code": clock.code(secret)})
    assert r.status_code == 200, r.get_data(as_text=True)
    codes = RECOVERY_RE.findall(r.get_data(as_text=True))
    clock.step()
    return secret, codes


def enrolled(db, user: User, clock) -> str:
    """Enrol ``user`` through the service (as the page does); the secret."""
    sealed = mfa.new_secret(user)
    secret = mfa.unseal(user.id, sealed)
    mfa.enrol(db, user, sealed, clock.code(secret))
    db.commit()
    clock.step()
    return secret


def signed_in(app, who: str, secret: str, clock):
    c, r = password_step(app, who)
    assert r.status_code == 302 and r.headers["Location"].endswith("/login/code")
    r = c.post("/login/code", data={"code": clock.code(secret)})
    assert r.status_code == 302, r.get_data(as_text=True)
    clock.step()
    return c


def count(db, model, *where) -> int:
    db.expire_all()
    return db.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def audited(db, action: str, email: str) -> int:
    return count(db, AuditRecord, AuditRecord.action == action, AuditRecord.entity_id == email)


# --- enrolment ---------------------------------------------------------------------------------

def test_enrolment_shows_a_qr_code_and_the_secret_and_a_correct_code_enrols(app, world, db, clock):
    c, r = password_step(app, "manager")
    assert r.status_code == 302 and r.headers["Location"].endswith("/")  # development: nobody must enrol
    other, _ = password_step(app, "manager")  # a second session of the same account
    page = c.get("/account/mfa").get_data(as_text=True)
    secret = SECRET_RE.search(page).group(1).replace(" ", "")
    assert re.fullmatch(r"[A-Z2-7]{32}", secret)
    svg = re.search(r"<svg.*?</svg>", page, re.DOTALL).group(0)
    assert 'class="qr-code"' in svg and "<path" in svg
    assert "http" not in svg.replace("http://www.w3.org/2000/svg", "")  # drawn here: no outside service
    assert SECRET_RE.search(c.get("/account/mfa").get_data(as_text=True)).group(1).replace(" ", "") == secret  # stable
    user = world.users["manager"]
    for wrong in ("", "12345", clock.code(secret, steps=3), "abcdef"):
        r = c.post("/account/mfa", data={"code": wrong})
        assert r.status_code == 400 and "recovery-codes" not in r.get_data(as_text=True)
    db.refresh(user)
    assert user.mfa_enrolled_at is None and user.mfa_secret is None and count(db, MfaRecoveryCode) == 0
    assert audited(db, "mfa_enrol", user.email) == 0
    r = c.post("/account/mfa", data={"code": clock.code(secret, steps=-1)})  # a step of drift is fine
    assert r.status_code == 200
    codes = RECOVERY_RE.findall(r.get_data(as_text=True))
    assert len(codes) == 10 == len(set(codes))
    db.refresh(user)
    assert user.mfa_enrolled_at is not None and secret not in user.mfa_secret and user.mfa_secret.startswith("v1.")
    assert mfa.unseal(user.id, user.mfa_secret) == secret
    hashes = db.execute(select(MfaRecoveryCode.code_hash).where(MfaRecoveryCode.user_id == user.id)).scalars().all()
    assert len(hashes) == 10 and all(h.startswith("$argon2id$") for h in hashes)
    assert not any(code.replace("-", "") in h for code in codes for h in hashes)
    assert audited(db, "mfa_enrol", user.email) == 2  # a record per field: enrolled at, codes
    # this session goes on; the other one has ended; the page now shows no secret, and the codes never again
    assert c.get("/").status_code == 200
    assert other.get("/").status_code == 302
    again = c.get("/account/mfa").get_data(as_text=True)
    assert 'id="totp-secret"' not in again and not RECOVERY_RE.search(again) and "10 recovery codes are left" in again
    assert c.post("/account/mfa", data={"code": clock.code(secret, steps=1)}).status_code == 200  # no second enrolment
    assert count(db, MfaRecoveryCode) == 10


def test_a_secret_is_bound_to_its_account_and_to_the_servers_key(world, db, clock, monkeypatch):
    user, other = world.users["manager"], world.users["monitor"]
    sealed = mfa.new_secret(user)
    assert mfa.unseal(user.id, sealed) and mfa.unseal(other.id, sealed) is None
    assert mfa.unseal(user.id, sealed[:-4] + "AAAA") is None and mfa.unseal(user.id, "not sealed") is None
    secret = enrolled(db, user, clock)
    other.mfa_secret, other.mfa_enrolled_at = user.mfa_secret, user.mfa_enrolled_at  # copied by a database writer
    with pytest.raises(Exception) as e:
        mfa.verify(db, other, clock.code(secret))
    assert e.value.message == mfa.UNREADABLE
    db.rollback()
    monkeypatch.setenv("TRIAL_SECRET_KEY", "another-secret-key-of-this-server")
    assert mfa.unseal(user.id, user.mfa_secret) is None
    with pytest.raises(Exception) as e:
        mfa.verify(db, user, clock.code(secret))
    assert e.value.message == mfa.UNREADABLE


# --- the code step -----------------------------------------------------------------------------

def test_an_enrolled_user_gives_a_code_after_the_password(app, world, db, clock):
    secret = enrolled(db, world.users["coordinator"], clock)
    c, r = password_step(app, "coordinator", nxt="/participants")
    assert r.status_code == 302 and r.headers["Location"].endswith("/login/code")
    assert c.get("/").status_code == 302 and "/login" in c.get("/").headers["Location"]  # not signed in yet
    page = c.get("/login/code")
    assert page.status_code == 200 and 'name="code"' in page.get_data(as_text=True)
    assert 'autocomplete="one-time-code"' in page.get_data(as_text=True)
    r = c.post("/login/code", data={"code": "000000" if clock.code(secret) != "000000" else "111111"})
    assert r.status_code == 401 and "The code is wrong." in r.get_data(as_text=True)
    assert c.get("/").status_code == 302
    r = c.post("/login/code", data={"code": clock.code(secret)})
    assert r.status_code == 302 and r.headers["Location"].endswith("/participants")
    assert c.get("/participants").status_code == 200
    assert audited(db, "second_factor", "coordinator@example.org") == 1
    # without a password first, or too late, the code step sends to the login page
    fresh = app.test_client()
    assert fresh.get("/login/code").headers["Location"].endswith("/login")
    assert fresh.post("/login/code", data={"code": clock.code(secret, steps=1)}).status_code == 302
    late, _ = password_step(app, "coordinator")
    with late.session_transaction() as s:
        held = s["_mfa_pending"]
        held["at"] -= 301
        s["_mfa_pending"] = held
    assert late.post("/login/code", data={"code": clock.code(secret, steps=1)}).headers["Location"].endswith("/login")
    assert late.get("/").status_code == 302


def test_a_code_is_accepted_once_and_never_for_an_earlier_step(app, world, db, clock):
    user = world.users["therapist"]
    secret = enrolled(db, user, clock)
    used = clock.code(secret)
    c, _ = password_step(app, "therapist")
    assert c.post("/login/code", data={"code": used}).status_code == 302
    again, _ = password_step(app, "therapist")
    r = again.post("/login/code", data={"code": used})  # the same step, within its 90 seconds
    assert r.status_code == 401 and "used already" in r.get_data(as_text=True)
    assert again.get("/").status_code == 302
    clock.step(-1)  # an earlier step still in the window: refused as well
    assert again.post("/login/code", data={"code": clock.code(secret)}).status_code == 401
    clock.step(2)
    assert again.post("/login/code", data={"code": clock.code(secret)}).status_code == 302
    # two requests with one code at the same instant: one UPDATE each, only one wins
    clock.step()
    step = int(clock.at.replace(tzinfo=dt.UTC).timestamp()) // 30
    assert mfa._claim(db, user, step) is True and mfa._claim(db, user, step) is False


def test_a_recovery_code_signs_in_once(app, world, db, clock):
    c, _ = password_step(app, "monitor")
    _, codes = enrol_on_the_page(c, clock)
    first = codes[3]
    c, r = password_step(app, "monitor")
    r = c.post("/login/code", data={"code": f"  {first.upper().replace('-', ' ')} "}, follow_redirects=True)
    assert r.status_code == 200 and "9 are left" in r.get_data(as_text=True)
    user = world.users["monitor"]
    assert count(db, MfaRecoveryCode, MfaRecoveryCode.user_id == user.id, MfaRecoveryCode.used_at.is_not(None)) == 1
    again, _ = password_step(app, "monitor")
    r = again.post("/login/code", data={"code": first})
    assert r.status_code == 401 and again.get("/").status_code == 302
    assert again.post("/login/code", data={"code": codes[4]}).status_code == 302
    # a recovery code signs no e-signature
    with pytest.raises(Exception) as e:
        mfa.check_for_signature(db, user, codes[5])
    assert e.value.fields == {"code": "is wrong"}


def test_five_wrong_codes_throttle_like_wrong_passwords(app, world, db, clock):
    user = world.users["statistician"]
    secret = enrolled(db, user, clock)
    enrolled_step = user.mfa_last_step
    c, _ = password_step(app, "statistician")
    right = clock.code(secret)
    wrong = next(f"{n:06d}" for n in range(100000, 999999, 1111) if f"{n:06d}" not in
                 {clock.code(secret, s) for s in (-1, 0, 1)})
    for _ in range(5):
        r = c.post("/login/code", data={"code": wrong})
        assert r.status_code == 401 and "The code is wrong." in r.get_data(as_text=True)
    assert count(db, LoginAttempt, LoginAttempt.email == user.email, LoginAttempt.success.is_(False),
                 LoginAttempt.counted.is_(True)) == 5
    r = c.post("/login/code", data={"code": right})  # the right code, now refused unchecked
    assert r.status_code == 401 and "Too many failed logins" in r.get_data(as_text=True)
    assert c.get("/").status_code == 302
    db.refresh(user)
    assert user.mfa_last_step == enrolled_step  # the right code was not even checked
    _, r = password_step(app, "statistician")  # the password step of that account waits too
    assert r.status_code == 401 and "Too many failed logins" in r.get_data(as_text=True)


def test_a_stolen_password_does_not_clear_the_count_of_wrong_codes(app, world, db, clock):
    """The right password is no success for an enrolled user until the code follows: signing in
    again with it between guesses does not give the guesser five more."""
    user = world.users["statistician"]
    secret = enrolled(db, user, clock)
    wrong = next(f"{n:06d}" for n in range(100000, 999999, 1111) if f"{n:06d}" not in
                 {clock.code(secret, s) for s in (-1, 0, 1)})
    for _ in range(3):
        c, r = password_step(app, "statistician")
        assert r.status_code in (302, 303)
        assert c.post("/login/code", data={"code": wrong}).status_code == 401
        assert c.post("/login/code", data={"code": wrong}).status_code == 401
    _, r = password_step(app, "statistician")
    assert r.status_code == 401 and "Too many failed logins" in r.get_data(as_text=True)


# --- reset ---------------------------------------------------------------------------------------

def test_mfa_reset_ends_every_session_and_the_user_enrols_again(app, world, db, clock, monkeypatch):
    user = world.users["manager"]
    secret = enrolled(db, user, clock)
    c = signed_in(app, "manager", secret, clock)
    token = user.session_token
    assert mfa.reset(db, CLI, user) is True
    db.commit()
    db.refresh(user)
    assert user.mfa_secret is None and user.mfa_enrolled_at is None and user.mfa_last_step is None
    assert user.session_token != token and count(db, MfaRecoveryCode, MfaRecoveryCode.user_id == user.id) == 0
    rec = db.execute(select(AuditRecord).where(AuditRecord.action == "mfa_reset")).scalars().all()
    assert rec and all(r.actor == CLI.email for r in rec)
    assert c.get("/").status_code == 302  # its session has ended
    assert mfa.reset(db, CLI, user) is False  # nothing to reset: nothing changes
    monkeypatch.setenv("TRIAL_MFA_ROLES", "manager")
    c, r = password_step(app, "manager")  # no code asked: it must enrol again
    assert r.headers["Location"].endswith("/account/mfa")
    enrol_on_the_page(c, clock)


def test_the_mfa_reset_command(tmp_path):
    """`trial user mfa-reset --email E`, the real console script on a database of its own."""
    fresh = FreshDatabase("mfareset")
    env = dict(os.environ, TRIAL_DATABASE_URL=fresh.url, TRIAL_INSTANCE_PATH=str(tmp_path))

    def run(*args, stdin=None):
        return subprocess.run([*TRIAL, *args], check=False, env=env, input=stdin, capture_output=True, text=True, timeout=300)
    try:
        assert run("user", "create", "--email", "m@x.org", "--name", "M", "--role", "manager", "--password-stdin",
                   stdin="a-long-password-1\n").returncode == 0
        from sqlalchemy.orm import Session
        with Session(fresh.engine) as s:
            u = s.execute(select(User)).scalar_one()
            sealed = mfa.new_secret(u)
            mfa.enrol(s, u, sealed, pyotp.TOTP(mfa.unseal(u.id, sealed)).now())
            s.commit()
            token = u.session_token
        r = run("user", "mfa-reset", "--email", "m@x.org")
        assert r.returncode == 0 and "reset" in r.stdout and "Traceback" not in r.stderr
        with Session(fresh.engine) as s:
            u = s.execute(select(User)).scalar_one()
            assert u.mfa_enrolled_at is None and u.mfa_secret is None and u.session_token != token
            assert s.execute(select(func.count()).select_from(MfaRecoveryCode)).scalar_one() == 0
            assert s.execute(select(AuditRecord.actor).where(AuditRecord.action == "mfa_reset")).scalars().first() \
                .startswith("cli:")
        r = run("user", "mfa-reset", "--email", "m@x.org")
        assert r.returncode == 0 and "nothing changed" in r.stdout
        r = run("user", "mfa-reset", "--email", "nobody@x.org")
        assert r.returncode != 0 and r.stderr.startswith("error:") and "nobody@x.org" in r.stderr
    finally:
        fresh.drop()


# --- TRIAL_MFA_ROLES -----------------------------------------------------------------------------

def test_the_roles_that_must_enrol(monkeypatch):
    monkeypatch.delenv("TRIAL_MFA_ROLES", raising=False)
    assert mfa.required_roles() == frozenset()  # development
    monkeypatch.setenv("TRIAL_ENV", "production")
    assert mfa.required_roles() == frozenset(ROLES)
    monkeypatch.setenv("TRIAL_MFA_ROLES", "none")
    assert mfa.required_roles() == frozenset()
    monkeypatch.setenv("TRIAL_ENV", "development")
    monkeypatch.setenv("TRIAL_MFA_ROLES", " Manager , monitor")
    assert mfa.required_roles() == {"manager", "monitor"}
    monkeypatch.setenv("TRIAL_MFA_ROLES", "all")
    assert mfa.required_roles() == frozenset(ROLES)
    for bad, words in (("manager,wizard", "wizard"), ("manager;monitor", "TRIAL_MFA_ROLES"), ("manager,", "TRIAL_MFA_ROLES")):
        monkeypatch.setenv("TRIAL_MFA_ROLES", bad)
        with pytest.raises(ConfigError, match=words):
            mfa.required_roles()


def test_the_app_refuses_to_start_with_an_unknown_role(engine, session_factory, monkeypatch):
    from trial import create_app
    monkeypatch.setenv("TRIAL_MFA_ROLES", "manager,managers")
    with pytest.raises(ConfigError, match="TRIAL_MFA_ROLES names no role managers"):
        create_app({"ENGINE": engine, "SESSION_FACTORY": session_factory, "TESTING": True, "SECRET_KEY": "t"})


def _url(rule) -> str:
    values = {"study_id": "AT01-0001", "filename": "style.css", "code": "AT01", "instrument": "ados2", "kind": "due"}
    args = {a: 1 if isinstance(rule._converters.get(a), IntegerConverter) else values.get(a, "x") for a in rule.arguments}
    return rule.build(args, append_unknown=False)[1]


def test_a_role_that_must_enrol_reaches_no_page_before_enrolling(app, world, db, clock, monkeypatch):
    monkeypatch.setenv("TRIAL_MFA_ROLES", "manager,monitor")
    c, r = password_step(app, "manager", nxt="/audit/")
    assert r.status_code == 302 and r.headers["Location"].endswith("/account/mfa")
    crawled = 0
    for rule in app.url_map.iter_rules():
        if "GET" not in rule.methods:
            continue
        url = _url(rule)
        r = c.get(url)
        crawled += 1
        if rule.endpoint in BEFORE_ENROLMENT:
            assert r.status_code in (200, 404), (url, r.status_code)  # the page itself, the session clock, a file
        elif rule.endpoint in PARENTS:  # a family's survey link: no account, the link is the credential; a staff
            # session that must enrol is sent to enrol (the page), the API answers 404 (no such link)
            assert r.status_code == 404 or r.headers.get("Location", "").endswith("/account/mfa"), (url, r.status_code)
        elif url.startswith("/api/"):  # the API takes tokens, never this session: nothing to see
            assert r.status_code == 401 or rule.endpoint == "api.openapi", (url, r.status_code)
        else:
            assert r.status_code == 302 and r.headers["Location"].endswith("/account/mfa"), (url, r.status_code)
    assert crawled > 60
    assert c.get("/account/mfa").status_code == 200 and c.get("/session/alive").is_json
    assert "Your role requires two-factor sign-in" in c.get("/account/mfa").get_data(as_text=True)
    # the API token of the same user is not asked for a code
    assert world.api("GET", "/me", "manager").status_code == 200
    # logging out works; a role outside TRIAL_MFA_ROLES is not held up
    assert c.post("/logout").status_code == 302 and c.get("/account/mfa").status_code == 302
    other, r = password_step(app, "coordinator")
    assert r.headers["Location"].endswith("/") and other.get("/participants").status_code == 200
    # enrolled, the manager reaches its pages
    c, _ = password_step(app, "manager")
    enrol_on_the_page(c, clock)
    assert c.get("/audit/").status_code == 200


# --- e-signatures --------------------------------------------------------------------------------

def ask_for_a_grant(world, db) -> None:
    """An admin asks for a role that waits for a manager's countersignature."""
    users.set_roles(db, world.users["admin"], world.users["coordinator_no"], [("coordinator", "NO01"), ("monitor", "AT01")])
    db.commit()


def _signatures(db) -> tuple[int, int]:
    return count(db, Signature), count(db, DataLock)


def test_an_e_signature_by_an_enrolled_user_needs_a_current_code(app, world, db, clock):
    secret = enrolled(db, world.users["manager"], clock)
    body = {"kind": "soft", "meaning": "I approve locking the database.", "password": PASSWORD}
    before = _signatures(db)
    for extra, why in (({}, "is required"), ({"code": ""}, "is required"), ({"code": "12"}, "is wrong"),
                       ({"code": clock.code(secret, steps=3)}, "is wrong")):
        r = world.api("POST", "/locks", "manager", json={**body, **extra})
        assert r.status_code == 400, r.get_json()
        assert set(r.get_json()["error"]["fields"]) == {"code"} and why in r.get_json()["error"]["fields"]["code"]
        assert _signatures(db) == before
    r = world.api("POST", "/locks", "manager", json={**body, "password": "wrong-password", "code": clock.code(secret)})
    assert r.status_code == 400 and "password" in r.get_json()["error"]["fields"] and _signatures(db) == before
    db.refresh(world.users["manager"])
    used = clock.code(secret)
    r = world.api("POST", "/locks", "manager", json={**body, "code": used})
    assert r.status_code == 201, r.get_json()
    assert _signatures(db) == (before[0] + 1, before[1] + 1)
    lock_id = r.get_json()["id"]
    # the same code again (the lift's signature): refused, nothing signed, the lock stays
    lift = {"reason": "reopen for corrections", "password": PASSWORD}
    r = world.api("DELETE", f"/locks/{lock_id}", "manager", json={**lift, "code": used})
    assert r.status_code == 400 and "used already" in r.get_json()["error"]["fields"]["code"]
    assert _signatures(db) == (before[0] + 1, before[1] + 1)
    clock.step()
    assert world.api("DELETE", f"/locks/{lock_id}", "manager", json={**lift, "code": clock.code(secret)}).status_code == 200


def test_a_grant_countersignature_needs_the_code_and_others_sign_without_one(app, world, db, clock):
    ask_for_a_grant(world, db)
    grant = db.execute(select(RoleGrant).where(RoleGrant.status == "pending")).scalars().first()
    secret = enrolled(db, world.users["manager"], clock)
    body = {"meaning": "I countersign this grant.", "password": PASSWORD}
    before = count(db, Signature)
    r = world.api("POST", f"/grants/{grant.id}/approve", "manager", json=body)
    assert r.status_code == 400 and set(r.get_json()["error"]["fields"]) == {"code"} and count(db, Signature) == before
    db.refresh(grant)
    assert grant.status == "pending"
    r = world.api("POST", f"/grants/{grant.id}/approve", "manager", json={**body, "code": clock.code(secret)})
    assert r.status_code == 200 and count(db, Signature) == before + 1
    # a signer who has not enrolled (and need not) signs with the password alone; a code is ignored
    assert world.users["statistician"].mfa_enrolled_at is None
    from trial.esign.service import sign
    sig = sign(db, world.users["statistician"], PASSWORD, "I have read it.", "test", code="whatever")
    assert sig.id


def test_a_user_who_must_enrol_cannot_sign_before_enrolling(world, db, monkeypatch):
    monkeypatch.setenv("TRIAL_MFA_ROLES", "manager")
    before = _signatures(db)
    r = world.api("POST", "/locks", "manager", json={"kind": "soft", "meaning": "Lock it.", "password": PASSWORD})
    assert r.status_code == 403 and "two-factor" in r.get_json()["error"]["message"] and _signatures(db) == before


def test_the_web_signing_forms_ask_an_enrolled_user_for_the_code(app, world, db, clock):
    c, _ = password_step(app, "manager")
    assert 'name="code"' not in c.get("/locks").get_data(as_text=True)  # not enrolled: no code field
    secret, _ = enrol_on_the_page(c, clock)
    page = c.get("/locks").get_data(as_text=True)
    assert page.count('name="code"') >= 1 and 'autocomplete="one-time-code"' in page
    before = _signatures(db)
    form = {"kind": "soft", "meaning": "I approve locking.", "password": PASSWORD}
    r = c.post("/locks/new", data=form, follow_redirects=True)
    assert "Not signed: code is required" in r.get_data(as_text=True) and _signatures(db) == before
    r = c.post("/locks/new", data={**form, "code": clock.code(secret)}, follow_redirects=True)
    assert "Signed and locked." in r.get_data(as_text=True) and _signatures(db) == (before[0] + 1, before[1] + 1)
    ask_for_a_grant(world, db)
    assert 'name="code"' in c.get("/grants").get_data(as_text=True)


def test_api_tokens_are_never_asked_for_a_code(world, db, clock, monkeypatch):
    enrolled(db, world.users["coordinator"], clock)
    monkeypatch.setenv("TRIAL_MFA_ROLES", "all")
    for who in ("coordinator", "assessor"):  # enrolled, and required but not enrolled
        r = world.api("GET", "/me", who)
        assert r.status_code == 200 and r.get_json()["email"] == f"{who}@example.org"
    assert world.api("GET", "/participants", "assessor").status_code == 200


def test_the_account_list_says_who_has_enrolled(world, db, clock):
    enrolled(db, world.users["monitor"], clock)
    rows = {a["email"]: a["mfa_enrolled"] for a in users.accounts(db, CLI)}
    assert rows["monitor@example.org"] is True and rows["manager@example.org"] is False
