"""The data cuts' pages as their users meet them (issue 30's walk through the demo): the pages are
in the menu of the roles that may see them, and a refused recommendation keeps the committee's
words on the form instead of dropping them."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select

from tests.helpers import PASSWORD
from tests.test_interim import add_dmc, code_of, simulate, take_cut, web_login
from trial.interim.models import DmcRecommendation

WORDS = "The committee recommends that the trial continue unchanged: no safety concern."


def _recommendations(world) -> int:
    return world.db.execute(select(func.count()).select_from(DmcRecommendation)).scalar()


def test_the_data_cuts_are_in_the_menu_of_their_readers_only(world):
    add_dmc(world, enrol=False)
    for role, listed in (("manager", True), ("statistician", True), ("dmc", True), ("coordinator", False),
                         ("monitor", False), ("admin", False)):
        web = web_login(world, role)
        nav = web.get("/language").get_data(as_text=True).split('<nav aria-label="Main">', 1)[1].split("</nav>", 1)[0]
        assert ('href="/data-cuts"' in nav) is listed, role


def test_a_refused_recommendation_keeps_the_committee_s_words(world):
    member = add_dmc(world)
    world.open()
    simulate(world, 6, -2.0)
    cut_id = take_cut(world)
    web = web_login(world, "dmc", -1)
    r = web.post(f"/data-cuts/{cut_id}/recommendation", data={"decision": "modify", "text": WORDS,
                                                               "password": "not-the-password", "code": code_of(member, 0)})
    assert r.status_code == 400
    body = r.get_data(as_text=True)
    assert WORDS in body and '<option selected value="modify">' in body  # what was typed is still there
    assert "the password is wrong" in body and 'aria-invalid="true"' in body  # and why it was refused
    assert "not-the-password" not in body and code_of(member, 0) not in body  # (nor the password nor the code sent back)
    assert _recommendations(world) == 0
    # an empty text: the form again, nothing recorded
    r = web.post(f"/data-cuts/{cut_id}/recommendation", data={"decision": "continue", "text": "", "password": PASSWORD,
                                                               "code": code_of(member, 0)})
    assert r.status_code == 400 and _recommendations(world) == 0
    r = web.post(f"/data-cuts/{cut_id}/recommendation", data={"decision": "continue", "text": WORDS, "password": PASSWORD,
                                                               "code": code_of(member, 1)})
    assert r.status_code == 302 and r.headers["Location"].endswith("/data-cuts")
    assert _recommendations(world) == 1
    # anyone else posting it: refused as before, the form never shown
    manager = world.app.test_client()
    manager.post("/login", data={"email": "manager@example.org", "password": PASSWORD})
    assert manager.post(f"/data-cuts/{cut_id}/recommendation", data={"decision": "continue", "text": WORDS,
                                                                      "password": PASSWORD}).status_code == 403
    assert _recommendations(world) == 1


# --- the reports' layout, as the committee reads them --------------------------------------------

def test_the_recruitment_months_run_without_a_gap_to_the_cut():
    from trial.interim.reports import _months_through
    at = dt.datetime(2027, 2, 3, 10, 0)
    assert _months_through(["2026-11", "2027-01"], at) == ["2026-11", "2026-12", "2027-01", "2027-02"]
    assert _months_through(["2026-05", "2026-07"], dt.datetime(2026, 7, 1)) == ["2026-05", "2026-06", "2026-07"]
    assert _months_through([], at) == []


def test_a_table_s_columns_break_no_word_in_german():
    from reportlab.pdfbase.pdfmetrics import stringWidth

    from trial.interim.reports import CELL_PAD, TEXT_WIDTH, _Doc
    doc = _Doc("de", {"arms": [], "visits": [], "instruments": []})
    head = [doc._(w) for w in ("Arm", "Children with an event", "Events", "Serious events", "Fatal")] + \
        ["Schwer", doc._("Related"), doc._("Serious, by criterion")]
    rows = [["Musiktherapie, 1 Sitzung pro Woche", 1, 1, 1, 0, 1, 0, "Krankenhausaufnahme oder deren Verlängerung: 1"]]
    texts = [[str(c) for c in r] for r in [head, *rows]]
    widths = doc.widths(texts)
    assert abs(sum(widths) - TEXT_WIDTH) < 0.01
    for i, col in enumerate(zip(*texts)):
        longest = max(stringWidth(w, doc.regular, doc.small.fontSize) for c in col for w in c.split())
        assert widths[i] >= longest + 2 * CELL_PAD, (col, widths[i], longest)
    # twelve months and the site on one line each
    months = [f"2026-{m:02d}" for m in range(1, 13)]
    widths = doc.widths([["Zentrum", *months], ["AT01", *["0"] * 12]])
    assert all(w >= stringWidth("2026-12", doc.regular, doc.small.fontSize) + 2 * CELL_PAD for w in widths[1:])
    # too many columns for whole words: shared out by their longest words, still the line's width
    wide = doc.widths([[f"Spalte{i}überschrift" for i in range(30)]])
    assert abs(sum(wide) - TEXT_WIDTH) < 0.01 and max(wide) - min(wide) < 5


def _page_texts(data: bytes) -> list[str]:
    import subprocess
    pages = subprocess.run(["pdftotext", "-raw", "-", "-"], input=data, capture_output=True, check=True).stdout.decode()
    return [" ".join(p.split()) for p in pages.split("\f") if p.strip()]


def test_the_interim_analysis_stays_on_one_page_and_its_plot_says_the_boundary_in_words(world):
    add_dmc(world)
    world.open()
    simulate(world, 12, -2.0)
    cut_id = take_cut(world)
    data = world.api("GET", f"/data-cuts/{cut_id}/closed-report.json", "dmc").get_json()
    pages = _page_texts(world.api("GET", f"/data-cuts/{cut_id}/closed-report.pdf", "dmc").data)
    where = [i for i, p in enumerate(pages) if "Interim primary analysis" in p]
    assert len(where) == 1
    analysis = pages[where[0]]
    # the heading, the results, the note and the forest plot on the same page
    assert "Information fraction:" in analysis and "CI at the boundary" in analysis and "no effect" in analysis
    crossed = "no" if data["crossed"] is False else "yes, towards benefit" if data["crossed_side"] == "benefit" \
        else "yes, towards harm"
    label = f"z = {data['z']:.2f}; Boundary (|z|) {data['boundary_z']:.2f}; Boundary crossed: {crossed}"
    assert label in analysis and "?" not in analysis.split("no effect")[0].split("Information fraction:")[-1]
