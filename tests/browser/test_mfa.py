"""Two-factor sign-in in Chromium, as a person does it: a new account enrols at /account/mfa with a
code its authenticator app would show (computed here with pyotp from the key the page shows), keeps
the ten recovery codes, and from then on signs in with the password and then a code.

The account is the test's own: the demo's users are shared with the other browser tests, whose
saved logins an enrolment would end."""
from __future__ import annotations

import re
import time

import pyotp
from playwright.sync_api import expect

from tests.browser.conftest import PHONE
from trial.auth.service import create_user
from trial.scope import CliActor

EMAIL, PASSWORD = "two-factor@demo.trial", "violet-canyon-quartz-1893"
CODE_LABEL = "Code from your authenticator app"


def _password_step(page, live) -> None:
    page.goto(live.url + "/login")
    page.get_by_label("E-mail").fill(EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()


def test_a_user_enrols_with_the_app_s_code_and_then_signs_in_with_a_code(open_as, live):
    with live.sessions() as db:
        create_user(db, CliActor(email="browser-tests"), EMAIL, "Two Factor", PASSWORD, [("statistician", None)])
        db.commit()
    page = open_as(None, viewport=PHONE)
    _password_step(page, live)
    page.wait_for_url(live.url + "/")
    page.get_by_role("link", name="Password").first.click()
    page.get_by_role("link", name="Set up two-factor sign-in").click()
    page.wait_for_url(live.url + "/account/mfa")
    qr = page.locator("svg.qr-code")
    expect(qr).to_be_visible()
    assert qr.bounding_box()["width"] <= PHONE["width"]
    secret = page.locator("#totp-secret").inner_text().replace(" ", "")
    assert re.fullmatch(r"[A-Z2-7]{32}", secret)
    app = pyotp.TOTP(secret)
    page.get_by_label(CODE_LABEL).fill(app.now())
    page.get_by_role("button", name="Turn on two-factor sign-in").click()
    codes = page.locator("#recovery-codes li")
    expect(codes).to_have_count(10)
    assert all(re.fullmatch(r"[a-z0-9]{5}-[a-z0-9]{5}", c.strip()) for c in codes.all_inner_texts())
    page.get_by_role("link", name="I have kept them: continue").click()
    page.wait_for_url(live.url + "/")
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(re.compile(r".*/login$"))
    # the password alone no longer signs in: the code step follows
    _password_step(page, live)
    page.wait_for_url(live.url + "/login/code")
    page.goto(live.url + "/")
    page.wait_for_url(re.compile(r".*/login(\?.*)?$"))
    _password_step(page, live)
    page.wait_for_url(live.url + "/login/code")
    page.get_by_label(CODE_LABEL).fill(app.at(time.time() + app.interval))  # the next step: never the one used
    page.get_by_role("button", name="Continue").click()
    page.wait_for_url(live.url + "/")
    expect(page.get_by_role("button", name="Log out")).to_be_visible()
