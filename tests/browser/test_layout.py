"""Every page works on a phone: at 390 px wide the page body never scrolls sideways (every table
sits in a box that scrolls sideways by itself: the ``scroll`` macro of _table.html), the header wraps so that every link, "Log out" included, is on the
screen, and forms are one column. On a desktop the audit trail wraps its long values instead of
being thousands of pixels wide."""
from __future__ import annotations

import pytest

from tests.browser.conftest import ARTIFACTS, DESKTOP, PHONE, ROLES, reachable, slug

# How wide the page is, and the elements that stick out of the window (outside a scroll box)
OVERFLOW = """() => {
  const w = window.innerWidth, out = [];
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width && (r.right > w + 0.5 || r.left < -0.5) && !el.closest('.table-scroll')) {
      const cls = typeof el.className === 'string' && el.className ? '.' + el.className.trim().split(/\\s+/).join('.') : '';
      out.push(`${el.tagName.toLowerCase()}${el.id ? '#' + el.id : ''}${cls} ${Math.round(r.left)}..${Math.round(r.right)}`);
    }
  }
  const unwrapped = [...document.querySelectorAll('table')].filter(t => !t.closest('.table-scroll'))
    .map(t => (t.className ? 'table.' + t.className + ' ' : 'table ') + (t.querySelector('th') || t).textContent.trim().slice(0, 30));
  return {scroll: document.documentElement.scrollWidth, inner: w, outside: out.slice(0, 6), unwrapped};
}"""

# The horizontal offsets of a form's fields (one column: one offset)
FORM_COLUMNS = """() => [...document.querySelectorAll('form.form')].map(f =>
  [...new Set([...f.querySelectorAll(':scope > .field')].map(e => Math.round(e.getBoundingClientRect().left)))])"""


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{slug(name)}.png"), full_page=True)


def _fits(page, role: str, path: str, bad: dict) -> None:
    m = page.evaluate(OVERFLOW)
    columns = [c for c in page.evaluate(FORM_COLUMNS) if len(c) > 1]
    if m["scroll"] > m["inner"] or columns or m["unwrapped"]:
        bad[path] = {"page width": m["scroll"], "window": m["inner"], "sticking out": m["outside"],
                     "form columns": columns, "tables outside a scroll box": m["unwrapped"]}
        _shot(page, f"phone-{role}-{path}")


@pytest.mark.parametrize("role", ROLES)
def test_every_page_a_role_reaches_fits_a_phone(open_as, live, role):
    page = open_as(role, PHONE)
    bad: dict = {}
    seen = reachable(page, live.url, visit=lambda path: _fits(page, role, path, bad))
    page.goto(live.url + "/no-such-page")
    _fits(page, role, "/no-such-page", bad)
    assert len(seen) >= 3, seen
    assert not bad, f"pages wider than a 390 px phone for the {role}: {bad}"


def test_the_login_page_fits_a_phone(open_as, live):
    page = open_as(None, PHONE)
    page.goto(live.url + "/login")
    bad: dict = {}
    _fits(page, "anonymous", "/login", bad)
    assert not bad, bad


@pytest.mark.parametrize("role", ["manager", "admin", "coordinator"])
def test_every_header_link_and_log_out_are_on_a_phone_screen(open_as, live, role):
    page = open_as(role, PHONE)
    page.goto(live.url + "/")
    links = page.locator("header a, header button")
    assert links.count() >= 3
    for i in range(links.count()):
        box = links.nth(i).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], \
            (links.nth(i).inner_text(), box)
    log_out = page.get_by_role("button", name="Log out")
    assert log_out.is_visible()
    log_out.scroll_into_view_if_needed()
    box = log_out.bounding_box()
    assert box["x"] + box["width"] <= PHONE["width"]


def test_the_audit_trail_wraps_its_values_on_a_desktop(open_as, live):
    page = open_as("manager", DESKTOP)
    page.goto(live.url + "/audit/")
    assert page.locator("table.audit tbody tr").count() > 10
    widths = page.evaluate("""() => ({page: document.documentElement.scrollWidth, window: window.innerWidth,
        table: document.querySelector('table.audit').getBoundingClientRect().width,
        main: document.querySelector('main').getBoundingClientRect().width})""")
    if widths["page"] > widths["window"] or widths["table"] > widths["main"] + 1:
        _shot(page, "desktop-audit-trail")
    assert widths["page"] <= widths["window"], widths
    assert widths["table"] <= widths["main"] + 1, widths
