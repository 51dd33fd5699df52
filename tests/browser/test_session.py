"""The idle warning in a real browser, under the real Content-Security-Policy: a minute before an
idle session ends the page says so and offers to stay signed in; staying keeps the session, and
ignoring the notice ends it on the login page with the reason. No script or style is refused by
the policy on the way (the browser reports every refusal on its console)."""
from __future__ import annotations

from tests.browser.conftest import DESKTOP, login, reachable


def test_the_page_warns_before_the_idle_end_and_staying_keeps_the_session(open_as, live):
    idle_before = live.app.config["IDLE_MINUTES"]
    live.app.config["IDLE_MINUTES"] = 1.05  # 63 seconds: the warning comes after 3
    try:
        page = open_as(None, DESKTOP)
        refused = []
        page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
        login(page, live, "coordinator")
        page.goto(live.url + "/participants")
        warning = page.locator("#session-warning")
        assert warning.is_hidden()
        warning.wait_for(state="visible", timeout=25_000)
        assert "You will be signed out in a minute" in warning.inner_text()
        stay = page.get_by_role("button", name="Stay signed in")
        assert stay.evaluate("b => b === document.activeElement")  # the keyboard is on it
        with page.expect_response(lambda r: r.url.endswith("/session/alive") and r.request.method == "POST") as posted:
            stay.click()
        assert posted.value.status == 200 and posted.value.json()["idle_left"] > 60
        assert warning.is_hidden()
        # ignored this time: at the end the page goes to the login page, which says why
        warning.wait_for(state="visible", timeout=25_000)
        page.wait_for_url(lambda url: "/login" in url, timeout=90_000)
        assert "You were signed out after 1.05 minutes without activity" in page.content()
        assert refused == [], refused
    finally:
        live.app.config["IDLE_MINUTES"] = idle_before


def test_no_page_a_manager_reaches_has_anything_refused_by_the_content_security_policy(open_as, live):
    """The manager reaches the most kinds of page (charts drawn as SVG, the CONSORT diagram, forms):
    the browser refuses no script, style, image or frame on any of them."""
    page = open_as("manager", DESKTOP)
    refused = []
    page.on("console", lambda m: refused.append((page.url, m.text)) if "Content Security Policy" in m.text else None)
    seen = reachable(page, live.url, per_kind=1)
    assert len(seen) >= 10, seen
    assert refused == [], refused
