"""The parent's survey page in Chromium at 390 px (issue 28), in German and in Hebrew: filled in and
sent (the assessment saved), the draft kept on the device and restored after a reload (and gone
after sending; never under the link itself), a "one question at a time" form stepped through with
Back and Next, axe-core without a violation, a screenshot of each language (/tmp/survey_de.png,
/tmp/survey_he.png).

The server is this module's own (its own database: the demo with an amendment that adds a parent
questionnaire of several questions shown one at a time), so the protocol of the other browser tests
stays as it is."""
from __future__ import annotations

import datetime as dt
import os
import threading

import pytest
from sqlalchemy import select
from werkzeug.serving import make_server

from tests.browser.conftest import ARTIFACTS, AXE, PHONE, _QuietHandler
from tests.conftest import FreshDatabase
from trial.app import create_app
from trial.db import make_session_factory
from trial.demo import load_demo
from trial.enrollment.service import enroll, record_screening
from trial.outcomes.service import record_assessment
from trial.participants.models import Assessment, Participant
from trial.protocol.service import DEFAULT_PROTOCOL, current, load_text
from trial.randomize.service import randomize
from trial.scope import CliActor
from trial.surveys import service as surveys
from trial.timeline import today

pytestmark = pytest.mark.skipif(not AXE.exists(), reason=f"axe-core is not installed ({AXE}): run `npm ci`")

ACTOR = CliActor(email="browser-tests")
# a parent questionnaire of four questions, one at a time (an amendment of the protocol in force)
DIARY = '''
[[instruments]]
key = "sleep_diary"
label = "Sleep diary"
blinded = false
visits = ["month2"]
respondent = "parent"
survey_layout = "one_question"
[instruments.labels]
de = "Schlaftagebuch"
he = "יומן שינה"

  [[instruments.fields]]
  key = "nights"
  label = "Nights with good sleep this week"
  type = "integer"
  min = 0
  max = 7
  units = "nights"
  [instruments.fields.labels]
  de = "Nächte mit gutem Schlaf in dieser Woche"
  he = "לילות עם שינה טובה השבוע"

  [[instruments.fields]]
  key = "hours"
  label = "Hours of sleep on a usual night"
  type = "number"
  min = 0
  max = 16
  units = "h"
  [instruments.fields.labels]
  de = "Stunden Schlaf in einer üblichen Nacht"
  he = "שעות שינה בלילה רגיל"

  [[instruments.fields]]
  key = "woke"
  label = "Woke up at night"
  type = "boolean"
  [instruments.fields.labels]
  de = "In der Nacht aufgewacht"
  he = "התעורר בלילה"

  [[instruments.fields]]
  key = "note"
  label = "Anything else"
  type = "text"
  required = false
  [instruments.fields.labels]
  de = "Sonstiges"
  he = "משהו נוסף"
'''

AXE_RUN = """async () => {
  const r = await axe.run(document, {resultTypes: ['violations']});
  return r.violations.map(v => ({rule: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 4).map(n => n.target.join(' ') + ': ' + (n.failureSummary || '').replace(/\\s+/g, ' '))}));
}"""
DRAFTS = "() => Object.keys(localStorage).filter(k => k.startsWith('survey-draft-'))"


def _child(db, n: int) -> Participant:
    """A child at AT01 randomized 61 days ago: its 2-month window is open today."""
    ok = {c["key"]: c["qualifying_answer"] for c in current(db).content["criteria"]}
    randomized_on = today("Europe/Vienna") - dt.timedelta(days=61)
    screened = randomized_on - dt.timedelta(days=8)
    sc = record_screening(db, ACTOR, {"site": "AT01", "screened_on": screened.isoformat(), "answers": ok})
    p = enroll(db, ACTOR, {"screening_id": sc.id, "consent_date": (screened + dt.timedelta(days=3)).isoformat(),
                           "date_of_birth": (screened - dt.timedelta(days=5 * 365)).isoformat(), "sex": "female"},
               at=dt.datetime.combine(screened + dt.timedelta(days=3), dt.time(9, 0)))
    record_assessment(db, ACTOR, p.study_id, {"visit": "baseline", "instrument": "ados2",
                                              "performed_on": (screened + dt.timedelta(days=5)).isoformat(),
                                              "values": {"social_affect": 12, "rrb": 4, "css": 6}})
    randomize(db, ACTOR, p.study_id, f"survey-{n}", at=dt.datetime.combine(randomized_on, dt.time(10, 0)))
    return p


@pytest.fixture(scope="module")
def server():
    database = FreshDatabase("survey")
    sessions = make_session_factory(database.engine)
    with sessions() as db:
        load_demo(db, participants_per_site=2)
        db.commit()
        since = today("Europe/Vienna") - dt.timedelta(days=100)  # (in the plan of the children randomized below)
        load_text(db, ACTOR, f"effective_from = {since.isoformat()}\n\n" + DEFAULT_PROTOCOL.read_text() + DIARY,
                  "amendment.toml")
        db.commit()
        kids = [_child(db, n).study_id for n in range(6)]
        db.commit()
    app = create_app({"ENGINE": database.engine, "SESSION_FACTORY": sessions, "DATABASE_URL": database.url,
                      "SECRET_KEY": "survey-tests-" + os.urandom(8).hex()})
    srv = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
    thread = threading.Thread(target=srv.serve_forever, name="survey-server", daemon=True)
    thread.start()
    try:
        yield {"url": f"http://127.0.0.1:{srv.server_port}", "sessions": sessions, "kids": kids}
    finally:
        srv.shutdown()
        thread.join(10)
        database.drop()


def send(server, kid: int, instrument: str, language: str, **kw) -> str:
    with server["sessions"]() as db:
        _, token = surveys.send_survey(db, ACTOR, server["kids"][kid], {"visit": "month2", "instrument": instrument,
                                                                        "language": language, **kw})
        db.commit()
    return token


def saved(server, kid: int, instrument: str) -> dict | None:
    with server["sessions"]() as db:
        p = db.execute(select(Participant).where(Participant.study_id == server["kids"][kid])).scalar_one()
        a = db.execute(select(Assessment).where(Assessment.participant_id == p.id, Assessment.visit == "month2",
                                                Assessment.instrument == instrument)).scalar_one_or_none()
        return a and a.values


@pytest.fixture()
def phone(browser, request):
    """``phone(locale)``: a page at 390 px of a fresh browser context with axe-core loaded; a failure
    leaves its screenshot in tests/artifacts/."""
    made = []

    def _open(locale: str):
        ctx = browser.new_context(viewport=PHONE, locale=locale)
        ctx.add_init_script(path=str(AXE))
        page = ctx.new_page()
        made.append(page)
        return page
    yield _open
    failed = getattr(getattr(request.node, "rep_call", None), "failed", False)
    for n, page in enumerate(made):
        if failed:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"survey-{request.node.name}-{n}.png"), full_page=True)
        page.context.close()


def axe_clean(page) -> None:
    violations = page.evaluate(AXE_RUN)
    assert violations == [], violations


@pytest.mark.parametrize("language,label,kid", [("de", "SRS-2 Gesamt-T-Wert", 0), ("he", "ציון T כולל של SRS-2", 1)])
def test_a_parent_fills_in_the_form_on_a_phone_with_a_draft_kept_on_the_device(server, phone, language, label, kid):
    token = send(server, kid, "srs2", language, first_name="Mia")
    page = phone("en-US")  # the browser's language is not the survey's
    page.goto(f"{server['url']}/s/{token}")
    requests = []  # from here to "Send": the page sends nothing at all (a wrong answer, the draft, the check)
    page.on("request", lambda r: requests.append(f"{r.method} {r.url}"))
    assert page.evaluate("document.documentElement.lang") == language
    assert page.evaluate("document.documentElement.dir") == ("rtl" if language == "he" else "ltr")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
    box = page.locator("#send-button").bounding_box()
    assert box["height"] >= 44 and box["width"] >= 300  # a large touch target
    axe_clean(page)
    field = page.get_by_label(label)
    # a wrong answer: the error beside the field and in the summary, which gets the focus; nothing sent
    field.fill("200")
    page.locator("#send-button").click()
    assert page.locator("#e-total_t").is_visible()
    assert page.evaluate("document.activeElement.id") == "summary"
    assert saved(server, kid, "srs2") is None
    page.screenshot(path=f"/tmp/survey_{language}_error.png", full_page=True)
    axe_clean(page)
    field.fill("61")
    # the draft: kept on this device under a key that is not the link, restored after a reload
    page.wait_for_function(DRAFTS + ".length === 1")
    keys = page.evaluate(DRAFTS)
    assert token not in keys[0] and token not in page.evaluate(f"localStorage.getItem('{keys[0]}')")
    assert requests == []
    page.reload()
    page.wait_for_selector("#draft-notice:not([hidden])")
    assert page.get_by_label(label).input_value() == "61"
    assert saved(server, kid, "srs2") is None  # nothing went to the server before sending
    page.screenshot(path=f"/tmp/survey_{language}.png", full_page=True)
    axe_clean(page)
    page.locator("#send-button").click()
    page.wait_for_selector("#done")
    assert page.evaluate("document.documentElement.lang") == language
    assert saved(server, kid, "srs2") == {"total_t": 61}
    assert page.evaluate(DRAFTS) == []  # the draft is gone once the answers are saved
    axe_clean(page)
    # the link again: answered (409), in the survey's language
    r = page.goto(f"{server['url']}/s/{token}")
    assert r.status == 409 and page.evaluate("document.documentElement.lang") == language
    axe_clean(page)


@pytest.mark.parametrize("language,kid", [("de", 2), ("he", 3)])
def test_one_question_at_a_time(server, phone, language, kid):
    token = send(server, kid, "sleep_diary", language)
    page = phone("en-US")
    page.goto(f"{server['url']}/s/{token}")
    progress = page.locator("#progress")
    visible = "() => [...document.querySelectorAll('.question')].filter(q => !q.hidden).map(q => q.id)"
    assert page.evaluate(visible) == ["q-nights"]
    assert "1" in progress.inner_text() and "4" in progress.inner_text()
    assert not page.locator("#back").is_visible() and not page.locator("#send-button").is_visible()
    axe_clean(page)
    page.locator("#next").click()  # unanswered: stays, says why
    assert page.evaluate(visible) == ["q-nights"] and page.locator("#e-nights").is_visible()
    page.locator("#f-nights").fill("9")
    page.locator("#next").click()  # out of range
    assert page.evaluate(visible) == ["q-nights"]
    page.locator("#f-nights").fill("5")
    page.locator("#next").click()
    assert page.evaluate(visible) == ["q-hours"] and "2" in progress.inner_text()
    assert not page.locator("#e-nights").is_visible()
    page.locator("#back").click()
    assert page.evaluate(visible) == ["q-nights"] and page.locator("#f-nights").input_value() == "5"
    page.locator("#next").click()
    page.locator("#f-hours").fill("9,5")
    page.locator("#f-hours").press("Enter")  # Enter is "Next" until the last question
    assert page.evaluate(visible) == ["q-woke"] and "3" in progress.inner_text()
    page.locator("#f-woke").check()
    page.locator("#next").click()
    assert page.evaluate(visible) == ["q-note"] and page.locator("#send-button").is_visible()
    assert not page.locator("#next").is_visible()
    axe_clean(page)
    if language == "de":
        page.screenshot(path="/tmp/survey_steps_de.png", full_page=True)
        # the draft of the steps, restored after a reload (the form starts again at the first question)
        page.wait_for_function(DRAFTS + ".length === 1")
        page.reload()
        page.wait_for_selector("#draft-notice:not([hidden])")
        assert page.locator("#f-nights").input_value() == "5"
        for _ in range(3):
            page.locator("#next").click()
        page.locator("#send-button").click()
        page.wait_for_selector("#done")
        assert saved(server, kid, "sleep_diary") == {"nights": 5, "hours": 9.5, "woke": True}
        assert page.evaluate(DRAFTS) == []
    else:
        page.screenshot(path="/tmp/survey_steps_he.png", full_page=True)


def test_without_javascript_the_one_question_form_is_whole(server, browser):
    token = send(server, 1, "sleep_diary", "de")
    ctx = browser.new_context(viewport=PHONE, java_script_enabled=False)
    page = ctx.new_page()
    try:
        page.goto(f"{server['url']}/s/{token}")
        assert page.locator(".question:visible").count() == 4 and not page.locator("#steps").is_visible()
        page.locator("#f-nights").fill("3")
        page.locator("#f-hours").fill("8")
        page.locator("#f-woke-2").check()
        page.locator("#send-button").click()
        page.wait_for_selector("#done")
        assert saved(server, 1, "sleep_diary") == {"nights": 3, "hours": 8.0, "woke": False}
    finally:
        ctx.close()


def test_the_servers_refusal_shows_each_error_beside_its_field_and_focuses_the_summary(server, phone):
    token = send(server, 3, "srs2", "de")
    page = phone("de-DE")
    page.goto(f"{server['url']}/s/{token}")
    page.locator("#f-total_t").fill("95")
    page.evaluate("document.getElementById('survey').submit()")  # past the page's own check: the server's
    page.wait_for_selector("#e-total_t")
    assert page.evaluate("document.activeElement.id") == "summary"
    assert page.locator("#summary a[href='#f-total_t']").is_visible()
    assert page.locator("#f-total_t").get_attribute("aria-invalid") == "true"
    assert page.locator("#f-total_t").input_value() == "95"
    axe_clean(page)
    page.locator("#f-total_t").fill("60")
    page.locator("#send-button").click()
    page.wait_for_selector("#done")
    assert saved(server, 3, "srs2") == {"total_t": 60}


def test_a_draft_goes_when_its_link_expires_or_ends(server, phone):
    """A shared tablet keeps no family's answers: a draft past its link's expiry is purged on the next
    survey page, and a page saying the link ended (revoked, answered, unknown) clears its draft."""
    token = send(server, 4, "srs2", "de")
    page = phone("de-DE")
    page.goto(f"{server['url']}/s/{token}")
    page.locator("#f-total_t").fill("61")
    page.wait_for_function(DRAFTS + ".length === 1")
    key = page.evaluate(DRAFTS)[0]
    draft = page.evaluate(f"JSON.parse(localStorage.getItem('{key}'))")
    assert draft["values"] == {"v-total_t": "61"} and draft["expires"] > page.evaluate("Date.now()")
    page.evaluate(f"localStorage.setItem('{key}', JSON.stringify({{expires: Date.now() - 1000, values: {{'v-total_t': '61'}}}}))")
    page.reload()
    assert page.evaluate(DRAFTS) == [] and page.locator("#f-total_t").input_value() == ""
    assert page.locator("#draft-notice").is_hidden()
    page.locator("#f-total_t").fill("62")
    page.wait_for_function(DRAFTS + ".length === 1")
    with server["sessions"]() as db:
        p = db.execute(select(Participant).where(Participant.study_id == server["kids"][4])).scalar_one()
        sv = surveys.surveys_of(db, ACTOR, p.study_id)[0]
        surveys.revoke_survey(db, ACTOR, sv.id)
        db.commit()
    r = page.goto(f"{server['url']}/s/{token}")
    assert r.status == 410
    page.wait_for_function(DRAFTS + ".length === 0")


TEXTS = """() => {
  const out = [], walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walk.nextNode()) {
    const el = walk.currentNode.parentElement, t = walk.currentNode.textContent.trim();
    if (t && el && el.tagName !== 'SCRIPT' && el.tagName !== 'STYLE') out.push(t);
  }
  for (const el of document.querySelectorAll('[data-msg-required], [data-progress], [aria-label], [title]'))
    for (const a of el.attributes) if (a.name.startsWith('data-msg') || a.name === 'data-progress'
        || a.name === 'aria-label' || a.name === 'title') out.push(a.value.trim());
  out.push(document.title.trim());
  return out;
}"""


@pytest.mark.parametrize("instrument", ["srs2", "sleep_diary"])
def test_the_german_and_hebrew_pages_hold_no_english_sentence(server, phone, instrument):
    """Every sentence and word of the English page is another on the German and the Hebrew page, but
    for names (SRS-2) and the protocol's units, which it gives in one language only."""
    texts = {}
    for language in ("en", "de", "he"):
        token = send(server, 5, instrument, language)
        page = phone("en-US")
        page.goto(f"{server['url']}/s/{token}")
        texts[language] = set(page.evaluate(TEXTS))
        with server["sessions"]() as db:
            sv = surveys.surveys_of(db, ACTOR, server["kids"][5])[0]
            surveys.revoke_survey(db, ACTOR, sv.id)
            db.commit()
    english = {t for t in texts["en"] if any(c.isalpha() for c in t)}
    units = {f.get("units") for i in DEFAULT_PROTOCOL_AND_DIARY() for f in i["fields"] if f.get("units")}
    allowed = {t for t in english if t.startswith("SRS-2") and not any(c.islower() for c in t.replace("SRS", ""))} | units
    for language in ("de", "he"):
        assert (english & texts[language]) - allowed == set(), language


def DEFAULT_PROTOCOL_AND_DIARY() -> list[dict]:
    import tomllib
    return tomllib.loads(DEFAULT_PROTOCOL.read_text())["instruments"] + tomllib.loads(DIARY)["instruments"]
