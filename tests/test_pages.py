"""The pages' structure for assistive technology and for a later right-to-left translation, checked
on the HTML the server sends (no browser needed; tests/browser/ checks the same pages in Chromium):
the language and direction of every page, a skip link to <main>, ids unique on a page, a label for
every field, yes/no questions as radio groups and multiple choices as checkbox groups, each in a
fieldset with its question as legend, and a style sheet in logical properties only."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from flask import render_template
from lxml import html

from tests.helpers import PASSWORD
from trial.forms.course import session_form
from trial.protocol.service import current

ROOT = Path(__file__).resolve().parent.parent


def web_client(app, who: str):
    c = app.test_client()
    assert c.post("/login", data={"email": f"{who}@example.org", "password": PASSWORD}).status_code == 302, who
    return c


def parse(response):
    assert response.status_code == 200, (response.status_code, response.get_data(as_text=True)[:500])
    return html.fromstring(response.get_data(as_text=True))


def duplicate_ids(doc) -> list[str]:
    return sorted(k for k, n in Counter(doc.xpath("//@id")).items() if n > 1)


def unlabelled(doc) -> list[str]:
    """Fields a screen reader cannot name: no <label for=...>, no wrapping label, no aria-label."""
    out = []
    labels = set(doc.xpath("//label/@for"))
    for el in doc.xpath("//input[not(@type='hidden') and not(@type='submit')] | //select | //textarea"):
        named = el.get("id") in labels or el.xpath("ancestor::label") or el.get("aria-label") or el.get("aria-labelledby")
        if not named:
            out.append(html.tostring(el, encoding="unicode")[:80])
    return out


@pytest.fixture()
def child(world):
    """A randomized child at AT01, with its baseline."""
    world.open(bytes(range(32)))
    p = world.ready()
    world.randomize(p)
    return p


def test_every_page_has_its_language_direction_skip_link_and_main(app, world, child):
    c = web_client(app, "coordinator")
    for path in ("/", "/screenings/new", f"/participants/{child.study_id}", "/no-such-page"):
        r = c.get(path)
        doc = html.fromstring(r.get_data(as_text=True))
        root = doc.getroottree().getroot()
        assert (root.get("lang"), root.get("dir")) == ("en", "ltr"), path
        first = doc.xpath("//body//a[@href] | //body//button | //body//input[not(@type='hidden')] | //body//select")[0]
        assert first.get("href") == "#content" and first.text_content() == "Skip to main content", path
        assert [m.get("id") for m in doc.xpath("//main")] == ["content"], path
    current_link = parse(c.get("/screenings")).xpath("//nav[@aria-label='Main']//a[@aria-current='page']")
    assert [a.text_content() for a in current_link] == ["Screening log"]
    login = html.fromstring(app.test_client().get("/login").get_data(as_text=True))
    assert login.getroottree().getroot().get("lang") == "en" and login.xpath("//a[@href='#content']")


def test_yes_no_questions_are_radio_groups_in_fieldsets(app, world):
    doc = parse(web_client(app, "coordinator").get("/screenings/new"))
    criteria = current(world.db).content["criteria"]
    for c in criteria:
        sets = [f for f in doc.xpath("//fieldset") if f.xpath("string(legend)").strip() == c["question"]]
        assert len(sets) == 1, c["question"]
        radios = sets[0].xpath(".//input[@type='radio']")
        assert [r.get("value") for r in radios] == ["yes", "no"], c["question"]
        assert {r.get("name") for r in radios} == {f"c_{c['key']}"}
        for r in radios:
            assert sets[0].xpath(f".//label[@for='{r.get('id')}']"), r.get("id")
    assert not doc.xpath("//ul[.//input[@type='radio']]"), "radio buttons are not a bullet list any more"
    assert not unlabelled(doc) and not duplicate_ids(doc)


def test_multiple_choices_are_checkbox_groups_in_fieldsets(app, world):
    techniques = current(world.db).content["course"]["techniques"]
    with app.test_request_context("/"):
        doc = html.fromstring(render_template("enrollment/form.html", form=session_form(techniques), title="Log a session"))
    group = [f for f in doc.xpath("//fieldset") if f.xpath("string(legend)").strip() == "Techniques"]
    assert len(group) == 1
    boxes = group[0].xpath(".//input[@type='checkbox']")
    assert [b.get("value") for b in boxes] == techniques and {b.get("name") for b in boxes} == {"techniques"}
    assert not doc.xpath("//select[@multiple]") and not unlabelled(doc) and not duplicate_ids(doc)


def test_the_adverse_event_form_has_its_seriousness_criteria_in_a_fieldset(app, world, child):
    doc = parse(web_client(app, "coordinator").get(f"/participants/{child.study_id}/adverse-events/new"))
    group = [f for f in doc.xpath("//fieldset") if "Seriousness criteria" in f.xpath("string(legend)")]
    assert len(group) == 1 and len(group[0].xpath(".//input[@type='checkbox']")) >= 3
    assert not unlabelled(doc) and not duplicate_ids(doc)


@pytest.mark.parametrize("kind", ["none", "soft", "hard"])
def test_the_lock_page_has_unique_ids_and_every_field_labelled(app, world, child, kind):
    manager = web_client(app, "manager")
    if kind != "none":
        r = world.api("POST", "/locks", "manager", json={"kind": kind, "password": PASSWORD, "accept_open_queries": True,
                                                         "meaning": "I approve locking the trial database."})
        assert r.status_code == 201, r.get_data(as_text=True)
    doc = parse(manager.get("/locks"))
    forms = doc.xpath("//main//form[@method='post']")
    assert len(forms) == {"none": 1, "soft": 2, "hard": 2}[kind]
    assert not duplicate_ids(doc), duplicate_ids(doc)
    assert not unlabelled(doc), unlabelled(doc)
    names = {tuple(sorted(f.xpath(".//input[@type='password']/@name"))) for f in forms}
    assert names == {("password",)}, "the posted field names stay as they were"


def test_a_query_page_with_two_forms_has_unique_ids(app, world, child):
    r = world.api("POST", "/queries", "manager", json={"study_id": child.study_id, "on": {"kind": "participant"},
                                                       "text": "Please confirm the consent date."})
    assert r.status_code == 201, r.get_data(as_text=True)
    qid = r.get_json()["id"]
    r = world.api("POST", f"/queries/{qid}/responses", "coordinator", json={"text": "Confirmed."})
    assert r.status_code == 201, r.get_data(as_text=True)
    doc = parse(web_client(app, "manager").get(f"/queries/{qid}"))
    assert len(doc.xpath("//main//form[@method='post']")) >= 1
    assert not duplicate_ids(doc) and not unlabelled(doc)


PHYSICAL = re.compile(r"(?<![\w-])(?:(?:margin|padding|border)-(?:left|right|top|bottom)(?:-\w+)?|left|right|top|bottom|"
                      r"(?:min-|max-)?(?:width|height))\s*:|text-align\s*:\s*(?:left|right)|float\s*:\s*(?:left|right)"
                      r"|clear\s*:\s*(?:left|right)")


def test_the_style_sheet_uses_logical_properties_only():
    """Ready for right to left: inline/block properties, never left/right (nor width/height)."""
    css = re.sub(r"/\*.*?\*/", "", (ROOT / "trial" / "static" / "style.css").read_text(), flags=re.DOTALL)
    css = re.sub(r"@media[^{]*\{", "{", css)  # a media query's (max-width: ...) is a condition, not a property
    bad = [m.group(0) for m in PHYSICAL.finditer(css)]
    assert not bad, f"physical properties in style.css: {bad}"
