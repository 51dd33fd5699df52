"""WCAG 2.1 AA in a real browser: axe-core (the npm package, injected into every page) finds no
serious or critical violation on any page a role reaches, on a phone and on a desktop; every page
has unique ids, one <main>, its language and direction, and a skip link as its first stop; and the
keyboard alone is enough: the skip link, a visible focus ring on every stop, and a screening
recorded without the mouse."""
from __future__ import annotations

import datetime as dt

import pytest

from tests.browser.conftest import ARTIFACTS, AXE, DESKTOP, PHONE, ROLES, reachable, slug
from trial.protocol.service import current

pytestmark = pytest.mark.skipif(not AXE.exists(), reason=f"axe-core is not installed ({AXE}): run `npm ci` "
                                                         "(make install-dev does)")

AXE_RUN = """async () => {
  const r = await axe.run(document, {resultTypes: ['violations']});
  return r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical').map(v => ({
    rule: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 4).map(n => n.target.join(' ') + ': ' + (n.failureSummary || '').replace(/\\s+/g, ' ').slice(0, 240)),
  }));
}"""

PAGE_FACTS = """() => {
  const ids = [...document.querySelectorAll('[id]')].map(e => e.id), seen = new Set(), dup = new Set();
  for (const id of ids) { if (seen.has(id)) dup.add(id); seen.add(id); }
  const first = document.querySelector('a[href], button, input:not([type=hidden]), select, textarea, [tabindex]');
  return {duplicate_ids: [...dup], mains: document.querySelectorAll('main').length,
          lang: document.documentElement.lang, dir: document.documentElement.dir,
          first_stop: first ? first.outerHTML.slice(0, 80) : null,
          skip_target: first && first.getAttribute('href') === '#content' && !!document.getElementById('content')};
}"""


def _check(page, role: str, path: str, problems: dict) -> None:
    found = {}
    for name, viewport in (("phone", PHONE), ("desktop", DESKTOP)):
        page.set_viewport_size(viewport)
        violations = page.evaluate(AXE_RUN)
        if violations:
            found[name] = violations
    facts = page.evaluate(PAGE_FACTS)
    if facts["duplicate_ids"] or facts["mains"] != 1 or not facts["lang"] or not facts["dir"] or not facts["skip_target"]:
        found["page"] = facts
    if found:
        problems[path] = found
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{slug(f'axe-{role}-{path}')}.png"), full_page=True)


@pytest.mark.parametrize("role", ROLES)
def test_no_serious_accessibility_violation_on_any_page_a_role_reaches(open_as, live, role):
    page = open_as(role, PHONE, axe=True)
    problems: dict = {}
    # one page of each kind: axe's findings belong to a page's template (the phone layout test,
    # whose overflow depends on the data, reads two of each kind)
    seen = reachable(page, live.url, visit=lambda path: _check(page, role, path, problems), per_kind=1)
    page.goto(live.url + "/no-such-page")
    _check(page, role, "/no-such-page", problems)
    assert len(seen) >= 3, seen
    assert not problems, f"accessibility problems for the {role}: {problems}"


def test_no_serious_accessibility_violation_on_the_login_page(open_as, live):
    page = open_as(None, PHONE, axe=True)
    page.goto(live.url + "/login")
    problems: dict = {}
    _check(page, "anonymous", "/login", problems)
    page.get_by_label("E-mail").fill("nobody@demo.trial")
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Log in").click()
    _check(page, "anonymous", "/login (refused)", problems)
    assert not problems, problems


FOCUS = """() => { const e = document.activeElement, s = getComputedStyle(e);
  return {tag: e.tagName.toLowerCase(), type: e.type || '', id: e.id, name: e.name || '', text: (e.innerText || e.value || '').trim().slice(0, 40),
          href: e.getAttribute('href'), outline: s.outlineStyle, width: parseFloat(s.outlineWidth) || 0,
          visible: (() => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0 && r.bottom > 0 && r.top < innerHeight; })()}; }"""


def _tab(page, back: bool = False) -> dict:
    page.keyboard.press("Shift+Tab" if back else "Tab")
    return page.evaluate(FOCUS)


def test_the_skip_link_comes_first_and_every_stop_shows_its_focus(open_as, live):
    page = open_as("manager", PHONE)
    page.goto(live.url + "/")
    first = _tab(page)
    assert first["href"] == "#content" and first["text"] == "Skip to main content" and first["visible"], first
    assert first["outline"] != "none" and first["width"] >= 2, first
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "content"
    after = _tab(page)
    assert page.evaluate("document.activeElement.closest('main') !== null"), after  # past the header's links
    page.goto(live.url + "/locks")
    stops = [_tab(page) for _ in range(40)]
    unringed = [s for s in stops if s["tag"] != "body" and (s["outline"] == "none" or s["width"] < 2)]
    assert not unringed, f"focus stops without a visible focus ring: {unringed}"
    assert {"lock-kind", "lock-password"} <= {s["id"] for s in stops}, stops


def test_a_coordinator_records_a_screening_with_the_keyboard_only(open_as, live):
    with live.sessions() as db:
        criteria = current(db).content["criteria"]
    qualifying = {c["question"]: c["qualifying_answer"] for c in criteria}
    page = open_as("coordinator", DESKTOP)
    page.goto(live.url + "/screenings/new")
    answered, typed_date = set(), False
    for _ in range(60):
        f = _tab(page)
        assert f["outline"] != "none" and f["width"] >= 2, f
        if f["tag"] == "input" and f["type"] == "date" and not typed_date:
            day = dt.date.today() - dt.timedelta(days=1)
            page.keyboard.type(day.strftime("%m%d%Y"))  # Chromium's en-US date field: month, day, year
            typed_date = True
        elif f["tag"] == "input" and f["type"] == "radio" and f["name"] not in answered:
            question = page.evaluate("document.activeElement.closest('fieldset').querySelector('legend').innerText")
            # the first radio of the group (Yes) has the focus: Space takes it, the down arrow moves to No
            page.keyboard.press("Space" if qualifying[question.strip()] else "ArrowDown")
            answered.add(f["name"])
        elif f["tag"] == "input" and f["type"] == "submit":
            assert typed_date and len(answered) == len(criteria), (typed_date, answered)
            page.keyboard.press("Enter")
            break
    else:
        pytest.fail("the submit button was never reached with the Tab key")
    page.wait_for_url("**/enroll")
    assert "Eligible" in page.locator(".flash").first.inner_text()
