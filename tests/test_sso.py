"""Single sign-on with OpenID Connect, end to end against a real provider: npm's oidc-provider (a
certified implementation) run by the fixture below from tests/oidc/provider.mjs on a loopback port.

The browser is played by two parts: the Flask test client for this system's pages (its session
cookie holds the flow's state, nonce and PKCE verifier) and a `requests` session for the provider's
pages (its own cookies, its login form). The system itself talks to the provider over HTTP as in
production: discovery, the token endpoint (client secret and PKCE verifier) and the signing keys.
"""
from __future__ import annotations

import json
import os
import queue
import secrets
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit, urlunsplit

import pyotp
import pytest
import requests
from sqlalchemy import func, select

from tests.helpers import CLI, PASSWORD
from trial.audit.models import AuditRecord
from trial.auth import mfa, sso
from trial.auth import service as users
from trial.auth.models import LoginAttempt, User

ROOT = Path(__file__).resolve().parent.parent
NODE = shutil.which("node")
PROVIDER_JS = ROOT / "tests" / "oidc" / "provider.mjs"
APP = "http://localhost"  # the Flask test client's address
CALLBACK = APP + "/login/sso/callback"
CLIENT_ID = "trial-tests"
START_SECONDS = 30


# --- the provider ------------------------------------------------------------------------------

@dataclass
class Provider:
    issuer: str
    secret: str  # the test client's secret at the provider
    log: Path


def _first_line(proc: subprocess.Popen, seconds: float) -> str:
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=seconds)
    except queue.Empty:
        return ""


def _wait_until_serving(issuer: str, proc: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(sso.discovery_url(issuer), timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the OpenID provider did not answer at {issuer}")


@pytest.fixture(scope="session")
def provider(tmp_path_factory):
    """oidc-provider on a loopback port of its choosing (it prints its issuer once it listens),
    with the test client registered (confidential, PKCE required) and the accounts of
    tests/oidc/provider.mjs; stopped at the end of the session."""
    if NODE is None:
        pytest.skip("the single sign-on tests run a real OpenID provider (npm's oidc-provider) and need Node.js: "
                    "`node` is not on PATH")
    if not (ROOT / "node_modules" / "oidc-provider").is_dir():
        pytest.fail("npm's oidc-provider is not installed: run `npm ci` (make install-dev does)")
    secret = secrets.token_urlsafe(24)
    log = tmp_path_factory.mktemp("oidc") / "provider.log"
    env = {**os.environ, "OIDC_CLIENT_ID": CLIENT_ID, "OIDC_CLIENT_SECRET": secret, "OIDC_REDIRECT_URIS": CALLBACK,
           "OIDC_POST_LOGOUT_REDIRECT_URIS": APP + "/login"}
    with log.open("wb") as err:
        proc = subprocess.Popen([NODE, str(PROVIDER_JS)], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        deadline = time.monotonic() + START_SECONDS
        line = _first_line(proc, START_SECONDS)
        if not line.startswith("{"):
            raise RuntimeError(f"the OpenID provider did not start: {line!r}; {log.read_text()[-2000:]}")
        issuer = json.loads(line)["issuer"]
        _wait_until_serving(issuer, proc, deadline)
        yield Provider(issuer, secret, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()


def _app(engine, session_factory, **config):
    from trial import create_app
    return create_app({"ENGINE": engine, "SESSION_FACTORY": session_factory, "TESTING": True,
                       "WTF_CSRF_ENABLED": False, "SECRET_KEY": "test-secret", **config})


@pytest.fixture()
def app(engine, session_factory, provider):
    """The system with single sign-on at the test provider (the world's fixture uses it too)."""
    return _app(engine, session_factory, OIDC_ISSUER=provider.issuer, OIDC_CLIENT_ID=CLIENT_ID,
                OIDC_CLIENT_SECRET=provider.secret)


# --- the browser -------------------------------------------------------------------------------

def at_provider(auth_url: str, account: str) -> str:
    """What the person does at the provider: open the authorization request, sign in as
    ``account`` on its login page; returns the address the provider sends the browser back to."""
    browser = requests.Session()
    url, method, data = auth_url, "GET", None
    for _ in range(12):
        r = browser.request(method, url, data=data, allow_redirects=False, timeout=10)
        if r.status_code in (302, 303):
            url, method, data = urljoin(url, r.headers["Location"]), "GET", None
            if url.startswith(CALLBACK):
                return url
        elif r.status_code == 200 and "/interaction/" in url and method == "GET":
            method, data = "POST", {"login": account}
        else:
            raise AssertionError(f"the provider answered {r.status_code} at {url}: {r.text[:500]}")
    raise AssertionError("the provider never sent the browser back")


def start(client, path: str = "/login/sso") -> str:
    r = client.get(path)
    assert r.status_code == 302, r.get_data(as_text=True)[:500]
    return r.headers["Location"]


def back_at(client, url: str):
    """The browser comes back to the system with the provider's answer."""
    assert url.startswith(APP)
    return client.get(url[len(APP):])


def sso_login(client, account: str, path: str = "/login/sso"):
    return back_at(client, at_provider(start(client, path), account))


def signed_in(client) -> bool:
    r = client.get("/")
    return r.status_code == 200


def with_param(url: str, **changes) -> str:
    parts = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    q.update(changes)
    return urlunsplit(parts._replace(query=urlencode({k: v for k, v in q.items() if v is not None})))


def refusals(db, email: str) -> list[AuditRecord]:
    return list(db.execute(select(AuditRecord).where(AuditRecord.action == "login_refused",
                                                     AuditRecord.entity_id == email)).scalars())


# --- the flow ----------------------------------------------------------------------------------

def test_an_existing_active_account_signs_in_with_pkce_state_and_nonce(world, app, db):
    c = app.test_client()
    auth_url = start(c, "/login/sso?next=/participants")
    q = parse_qs(urlsplit(auth_url).query)
    assert auth_url.startswith(world.app.extensions["trial.sso"].server_metadata["authorization_endpoint"])
    assert q["client_id"] == [CLIENT_ID] and q["response_type"] == ["code"] and q["redirect_uri"] == [CALLBACK]
    assert q["code_challenge_method"] == ["S256"] and len(q["code_challenge"][0]) == 43
    assert len(q["state"][0]) >= 20 and len(q["nonce"][0]) >= 20 and "openid" in q["scope"][0].split()
    r = back_at(c, at_provider(auth_url, "coordinator"))
    assert r.status_code == 302 and r.headers["Location"] == "/participants"  # where the login was asked for
    assert signed_in(c) and "Coordinator" in c.get("/").get_data(as_text=True)
    u = db.get(User, world.users["coordinator"].id)
    db.refresh(u)
    assert u.last_login_at is not None
    login = db.execute(select(AuditRecord).where(AuditRecord.action == "login", AuditRecord.entity_id == u.email)
                       .order_by(AuditRecord.seq.desc())).scalars().first()
    assert login.actor == u.email and "single sign-on by " + world.app.config["OIDC_ISSUER"] in login.reason
    assert "amr pwd: one factor" in login.reason
    assert db.execute(select(LoginAttempt).where(LoginAttempt.email == u.email, LoginAttempt.success.is_(True))).first()
    # the roles are the system's: the coordinator's pages, nothing the provider could add
    assert c.get("/admin/users").status_code == 403


def test_the_login_page_offers_single_sign_on_only_when_it_is_configured(world, app, engine, session_factory):
    page = app.test_client().get("/login?next=/visits").get_data(as_text=True)
    assert "Sign in with your organisation's account" in page and 'href="/login/sso?next=/visits"' in page
    plain = _app(engine, session_factory)
    c = plain.test_client()
    assert "organisation" not in c.get("/login").get_data(as_text=True)
    assert c.get("/login/sso").status_code == 404
    assert c.get("/login/sso/callback?code=x&state=y").status_code == 404


def test_the_e_mail_matches_whatever_its_capitals(world, app):
    c = app.test_client()
    assert sso_login(c, "coordinator-caps").status_code == 302 and signed_in(c)


def test_an_unknown_e_mail_is_refused_audited_and_no_account_is_made(world, app, db):
    before = db.execute(select(func.count()).select_from(User)).scalar()
    c = app.test_client()
    r = sso_login(c, "stranger")
    page = r.get_data(as_text=True)
    assert r.status_code == 403
    assert "No active account of this system has the e-mail address stranger@example.org" in page
    assert not signed_in(c)
    assert db.execute(select(func.count()).select_from(User)).scalar() == before
    [rec] = refusals(db, "stranger@example.org")
    assert rec.actor == sso.SSO_ACTOR and "no account has this e-mail address" in rec.reason
    attempt = db.execute(select(LoginAttempt).where(LoginAttempt.email == "stranger@example.org")).scalar_one()
    assert attempt.success is False and attempt.counted is False  # a failed login, not a guessed password


@pytest.mark.parametrize("account", ["monitor-unverified", "monitor-unsaid"])
def test_an_e_mail_the_provider_has_not_verified_is_refused(world, app, db, account):
    c = app.test_client()
    r = sso_login(c, account)
    assert r.status_code == 403
    assert "Your organisation has not verified the e-mail address monitor@example.org" in r.get_data(as_text=True)
    assert not signed_in(c)
    [rec] = refusals(db, "monitor@example.org")
    assert "has not verified the e-mail address" in rec.reason


def test_a_deactivated_account_is_refused(world, app, db):
    users.deactivate(db, CLI, world.users["therapist"], reason="left the site")
    db.commit()
    c = app.test_client()
    r = sso_login(c, "therapist")
    assert r.status_code == 403 and "No active account" in r.get_data(as_text=True)
    assert not signed_in(c)
    [rec] = refusals(db, "therapist@example.org")
    assert "the account is deactivated" in rec.reason


# --- what the callback refuses -------------------------------------------------------------------

def test_a_tampered_state_is_refused_and_signs_nobody_in(world, app, db):
    c = app.test_client()
    url = at_provider(start(c), "coordinator")
    state = parse_qs(urlsplit(url).query)["state"][0]
    for bad in (with_param(url, state=state[:-1] + ("A" if state[-1] != "A" else "B")), with_param(url, state=None)):
        r = back_at(c, bad)
        assert r.status_code == 400 and "This sign-in was not started here" in r.get_data(as_text=True)
        assert not signed_in(c)
    # another browser (without the session that started the flow) cannot use the answer either
    other = app.test_client()
    assert back_at(other, url).status_code == 400 and not signed_in(other)
    assert refusals(db, "coordinator@example.org") == []  # nobody was identified: the log says it, not the trail


def test_an_answer_from_another_issuer_is_refused(world, app):
    c = app.test_client()
    url = at_provider(start(c), "coordinator")
    r = back_at(c, with_param(url, iss="https://evil.example"))
    assert r.status_code == 400 and not signed_in(c)


def test_a_replayed_authorization_code_is_refused_by_the_provider(world, app):
    c = app.test_client()
    auth_url = start(c)
    thief = app.test_client()  # holds a copy of the session cookie made when the flow started
    thief.set_cookie("trial_session", c.get_cookie("trial_session").value)
    url = at_provider(auth_url, "coordinator")
    assert back_at(c, url).status_code == 302 and signed_in(c)
    # the same answer again in the same browser: its state is used up
    assert back_at(c, url).status_code == 400
    # the copied session still has the state, so the system asks the provider, which refuses the used code
    r = back_at(thief, url)
    assert r.status_code == 401
    assert "could not be completed or verified, so nobody was signed in" in r.get_data(as_text=True)
    assert not signed_in(thief)


def test_a_nonce_that_does_not_match_the_id_token_is_refused(world, app):
    c = app.test_client()
    url = at_provider(start(c), "coordinator")
    with c.session_transaction() as s:
        key = next(k for k in s if k.startswith("_state_institution_"))
        data = dict(s[key])
        data["data"] = {**data["data"], "nonce": "not-the-nonce-sent"}
        s[key] = data
    r = back_at(c, url)
    assert r.status_code == 401 and not signed_in(c)


def test_an_id_token_is_checked_against_the_providers_keys(world, app, provider):
    """A genuine ID token of the provider verifies; the same with a changed claim, or signed by
    another key, does not (the signature is checked against the provider's published keys)."""
    import base64

    from joserfc import jwt
    from joserfc.errors import JoseError
    from joserfc.jwk import RSAKey

    c = app.test_client()
    client = app.extensions["trial.sso"]
    url = at_provider(start(c), "coordinator")
    q = parse_qs(urlsplit(url).query)
    with c.session_transaction() as s:
        state = s[f"_state_institution_{q['state'][0]}"]["data"]
    token = requests.post(client.server_metadata["token_endpoint"], auth=(CLIENT_ID, provider.secret), timeout=10,
                          data={"grant_type": "authorization_code", "code": q["code"][0], "redirect_uri": CALLBACK,
                                "code_verifier": state["code_verifier"]}).json()
    header, payload, signature = token["id_token"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged = base64.urlsafe_b64encode(json.dumps({**claims, "sub": "manager"}).encode()).rstrip(b"=")
    other_key = RSAKey.generate_key(2048, parameters={"kid": json.loads(base64.urlsafe_b64decode(header + "=="))["kid"]})
    resigned = jwt.encode({"alg": "RS256", "kid": other_key.kid}, claims, other_key)
    opts = {"iss": {"essential": True, "value": provider.issuer}}
    with app.test_request_context():
        good = client.parse_id_token({**token}, nonce=state["nonce"], claims_options=opts)
        assert good["sub"] == "coordinator" and good["amr"] == ["pwd"]
        for bad in (f"{header}.{forged.decode()}.{signature}", resigned):
            with pytest.raises(JoseError):
                client.parse_id_token({**token, "id_token": bad}, nonce=state["nonce"], claims_options=opts)


def test_a_provider_that_cannot_be_reached_is_said_so(world, engine, session_factory):
    app = _app(engine, session_factory, OIDC_ISSUER="http://127.0.0.1:9", OIDC_CLIENT_ID=CLIENT_ID,
               OIDC_CLIENT_SECRET="x")
    r = app.test_client().get("/login/sso")
    assert r.status_code == 503 and "cannot be used at the moment" in r.get_data(as_text=True)


def test_a_provider_that_names_another_issuer_is_not_used(world, engine, session_factory, provider):
    """The discovery document must name TRIAL_OIDC_ISSUER exactly (the ID tokens are checked against it)."""
    app = _app(engine, session_factory, OIDC_ISSUER=provider.issuer + "/", OIDC_CLIENT_ID=CLIENT_ID,
               OIDC_CLIENT_SECRET=provider.secret)
    r = app.test_client().get("/login/sso")
    assert r.status_code == 503 and "cannot be used at the moment" in r.get_data(as_text=True)


def test_a_wrong_client_secret_signs_nobody_in(world, engine, session_factory, provider):
    app = _app(engine, session_factory, OIDC_ISSUER=provider.issuer, OIDC_CLIENT_ID=CLIENT_ID,
               OIDC_CLIENT_SECRET="not-the-secret")
    c = app.test_client()
    r = sso_login(c, "coordinator")
    assert r.status_code == 401 and not signed_in(c)


# --- logout --------------------------------------------------------------------------------------

def test_logout_ends_the_local_session_and_offers_the_providers_logout(world, app, provider):
    c = app.test_client()
    sso_login(c, "manager")
    assert signed_in(c)
    r = c.post("/logout")
    assert r.status_code == 302 and not signed_in(c)
    page = c.get("/login").get_data(as_text=True)
    assert 'id="sso-logout"' in page
    end = next(part.split('"')[1] for part in page.split("<a ") if 'id="sso-logout"' in part)
    end = end.replace("&amp;", "&")
    assert end.startswith(provider.issuer) and f"client_id={CLIENT_ID}" in end
    assert requests.get(end, timeout=10).status_code == 200  # the provider's own sign-out page
    assert 'id="sso-logout"' not in c.get("/login").get_data(as_text=True)  # offered once
    # a password login's logout offers nothing of the provider
    p = app.test_client()
    p.post("/login", data={"email": "manager@example.org", "password": PASSWORD})
    p.post("/logout")
    assert 'id="sso-logout"' not in p.get("/login").get_data(as_text=True)


# --- the second factor ---------------------------------------------------------------------------

@pytest.mark.parametrize(("amr", "two"), [
    (["mfa"], True), (["pwd", "otp"], True), (["pwd", "mfa"], True), (["hwk", "pin"], True), (["hwk", "fpt"], True),
    (["swk", "face"], True), (["pwd"], False), (["otp"], False), (["hwk"], False), (["hwk", "swk"], False),
    (["hwk", "user"], False), (["pwd", "rba"], False), (["pwd", "kba"], False), ([], False), (None, False),
    ("mfa", False), (["mfa", 1], False)])
def test_which_amr_counts_as_a_second_factor(amr, two):
    assert sso.second_factor(amr) is two


def _enrol(db, user) -> str:
    sealed = mfa.new_secret(user)
    secret = mfa.unseal(user.id, sealed)
    mfa.enrol(db, user, sealed, pyotp.TOTP(secret).now())
    db.commit()
    return secret


@pytest.mark.parametrize("account", ["coordinator-otp", "coordinator-mfa"])
def test_a_provider_second_factor_skips_the_code_step_of_an_enrolled_user(world, app, db, account):
    _enrol(db, world.users["coordinator"])
    c = app.test_client()
    r = sso_login(c, account)
    assert r.status_code == 302 and r.headers["Location"] == "/"
    assert signed_in(c)
    login = db.execute(select(AuditRecord).where(AuditRecord.action == "login").order_by(AuditRecord.seq.desc())
                       ).scalars().first()
    assert "two factors" in login.reason


@pytest.mark.parametrize("account", ["coordinator", "coordinator-hwk"])
def test_without_a_second_factor_at_the_provider_the_code_step_is_asked(world, app, db, account):
    secret = _enrol(db, world.users["coordinator"])
    c = app.test_client()
    r = sso_login(c, account)
    assert r.status_code == 302 and r.headers["Location"].startswith("/login/code")
    assert not signed_in(c)
    r = c.post("/login/code", data={"code": pyotp.TOTP(secret).at(time.time() + 30)})
    assert r.status_code == 302 and signed_in(c)


def test_single_sign_on_does_not_replace_enrolment(world, app, monkeypatch):
    """A role that must use two-factor sign-in enrols even after the provider's second factor: an
    e-signature here needs the local code beside the password."""
    monkeypatch.setenv("TRIAL_MFA_ROLES", "coordinator")
    c = app.test_client()
    r = sso_login(c, "coordinator-mfa")
    assert r.status_code == 302 and r.headers["Location"] == "/account/mfa"
    r = c.get("/participants")
    assert r.status_code == 302 and r.headers["Location"].endswith("/account/mfa")


def test_an_error_answer_of_the_provider_signs_nobody_in(world, app):
    """The person cancelled at the provider (or it refused): RFC 6749's error answer, with the
    flow's own state."""
    c = app.test_client()
    state = parse_qs(urlsplit(start(c)).query)["state"][0]
    r = c.get("/login/sso/callback?" + urlencode({"error": "access_denied", "state": state}))
    assert r.status_code == 401 and "nobody was signed in" in r.get_data(as_text=True) and not signed_in(c)


def test_the_three_settings_go_together_and_the_issuer_is_https(monkeypatch):
    from trial import settings
    from trial.config import ConfigError, from_env
    monkeypatch.setenv("TRIAL_OIDC_ISSUER", "https://login.hospital.example/realms/staff")
    with pytest.raises(ConfigError, match=r"needs TRIAL_OIDC_ISSUER, TRIAL_OIDC_CLIENT_ID and TRIAL_OIDC_CLIENT_SECRET "
                                          r"together; set: TRIAL_OIDC_ISSUER\.$"):
        from_env()
    monkeypatch.setenv("TRIAL_OIDC_CLIENT_ID", "trial")
    monkeypatch.setenv("TRIAL_OIDC_CLIENT_SECRET", "s3cret-of-the-client")
    cfg = from_env()
    assert (cfg["OIDC_ISSUER"], cfg["OIDC_CLIENT_ID"], cfg["OIDC_CLIENT_SECRET"]) == (
        "https://login.hospital.example/realms/staff", "trial", "s3cret-of-the-client")
    shown = {d.variable: d.value for d in settings.describe()}
    assert shown["TRIAL_OIDC_CLIENT_SECRET"] == "set (hidden)"
    for bad in ("http://login.hospital.example", "login.hospital.example", "https://login.example/?x=1"):
        monkeypatch.setenv("TRIAL_OIDC_ISSUER", bad)
        with pytest.raises(ConfigError, match=r"^TRIAL_OIDC_ISSUER must be the provider's https:// address"):
            settings.current()
    monkeypatch.setenv("TRIAL_OIDC_ISSUER", "http://127.0.0.1:8080")  # the loopback: tests, a local provider
    assert settings.current().oidc_issuer == "http://127.0.0.1:8080"
