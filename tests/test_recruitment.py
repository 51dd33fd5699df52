"""Recruitment you can see: the manager's home (the trial) and each site's page (that site) show the
cumulative randomizations by month against the target, drawn on the server as SVG with the same
numbers in a table beside it, and visit completeness by visit; in the reader's language and
direction, pooled over the arms, a site's page only for the managers and the site's own
coordinators and monitors."""
from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest
from babel.dates import format_skeleton
from lxml import html
from sqlalchemy import select

from tests.helpers import CLI, PASSWORD, backdate_randomization
from tests.test_outcomes import assess, d, randomized
from trial.dashboard.service import progress
from trial.participants.models import Allocation, Participant
from trial.sites import service as sites
from trial.sites.models import Site
from trial.timeline import add_months, today
from trial.visitplan.models import PlannedVisit

SVG = "{http://www.w3.org/2000/svg}"


def client(app, who: str, language: str | None = None):
    c = app.test_client()
    if language:
        c.environ_base["HTTP_ACCEPT_LANGUAGE"] = language
    assert c.post("/login", data={"email": f"{who}@example.org", "password": PASSWORD}).status_code == 302, who
    return c


def page(c, url: str):
    r = c.get(url)
    assert r.status_code == 200, (url, r.status_code, r.get_data(as_text=True)[:300])
    return html.fromstring(r.get_data(as_text=True))


def chart(doc):
    """The recruitment chart of a page (inline SVG) and the table of its numbers beside it."""
    svgs = doc.xpath("//section[@aria-labelledby='recruitment-heading']//*[local-name()='svg']")
    tables = doc.xpath("//section[@aria-labelledby='recruitment-heading']//table[contains(@class, 'by-month')]")
    assert len(svgs) == 1 and len(tables) == 1
    return svgs[0], tables[0]


def table_rows(table) -> list[list[str]]:
    return [[c.text_content().strip() for c in tr.xpath("./th|./td")] for tr in table.xpath("./tbody/tr")]


def svg_words(svg) -> list[str]:
    """Every piece of text of the chart a reader or a screen reader meets: texts, title, label."""
    texts = [t.text_content().strip() for t in svg.iter() if isinstance(t.tag, str) and t.tag.split("}")[-1] in ("text", "title")]
    return texts + [svg.get("aria-label")]


def month(k: int) -> dt.date:
    """The first day of the month ``k`` months from this one (UTC: the test sites' calendar)."""
    return add_months(today().replace(day=1), k)


@pytest.fixture()
def by_month(world):
    """Children randomized at known days: AT01 two three months ago and one last month (none two
    months ago), NO01 one two months ago; nobody this month."""
    world.open(bytes(range(32)))
    days = {"AT01": [month(-3) + dt.timedelta(days=14), month(-3) + dt.timedelta(days=2), month(-1) + dt.timedelta(days=20)],
            "NO01": [month(-2) + dt.timedelta(days=5)]}
    for site, ons in days.items():
        for on in ons:
            p = randomized(world, site=site)
            backdate_randomization(world.db, dt.datetime.combine(on, dt.time(12, 0)), p.id)
    return days


def test_the_tables_numbers_are_the_randomizations_by_month(world, app, by_month):
    # what the database holds, counted here by month: the table must say the same
    held = Counter((site, at.date().replace(day=1)) for site, at in world.db.execute(
        select(Participant.site_id, Allocation.randomized_at).join(Allocation, Allocation.participant_id == Participant.id)))
    assert sum(held.values()) == 4
    months = [month(k) for k in (-3, -2, -1, 0)]
    expected_all = [(2, 2), (1, 3), (1, 4), (0, 4)]
    assert [sum(n for (_, m), n in held.items() if m == mo) for mo in months] == [r for r, _ in expected_all]
    doc = page(client(app, "manager"), "/")
    svg, table = chart(doc)
    assert table_rows(table) == [[format_skeleton("yMMMM", m, locale="en"), str(r), str(c), "80", f"{round(100 * c / 80)}%"]
                                 for m, (r, c) in zip(months, expected_all)]
    assert table.xpath("./caption") and all(th.get("scope") == "col" for th in table.xpath("./thead//th"))
    assert all(th.get("scope") == "row" for th in table.xpath("./tbody/tr/th"))
    # the chart: one point per month on one line, the target, "4 of 80", every month labelled (four)
    assert svg.get("role") == "img" and svg.get("aria-label") and svg.xpath("./*[local-name()='title']")
    assert len(svg.xpath(".//*[local-name()='circle']")) == 4 and len(svg.xpath(".//*[local-name()='polyline']")) == 1
    words = svg_words(svg)
    assert "4 of 80" in words and all(format_skeleton("yMMM", m, locale="en") in words for m in months)
    # a site's page: that site's months only (a month without any listed, at 0)
    site_rows = table_rows(chart(page(client(app, "coordinator"), "/dashboard/sites/AT01"))[1])
    assert [row[1:3] for row in site_rows] == [["2", "2"], ["0", "2"], ["1", "3"], ["0", "3"]]
    assert [row[1:3] for row in table_rows(chart(page(client(app, "manager"), "/dashboard/sites/NO01"))[1])] == \
        [["1", "1"], ["0", "1"], ["0", "1"]]
    # pooled over the arms: no arm's name or key anywhere on the pages
    for body in (html.tostring(doc, encoding="unicode"),
                 client(app, "coordinator").get("/dashboard/sites/AT01").get_data(as_text=True)):
        assert not any(w in body for w in ("usual care", "Music therapy", '"low"', '"high"', '"usual"'))


def test_a_german_chart_has_no_english_and_a_hebrew_page_runs_right_to_left(world, app, by_month):
    english = {w for w in svg_words(chart(page(client(app, "manager"), "/"))[0]) if any(ch.isalpha() for ch in w)}
    german_doc = page(client(app, "manager", "de"), "/")
    assert german_doc.getroottree().getroot().get("lang") == "de"
    german = [w for w in svg_words(chart(german_doc)[0]) if any(ch.isalpha() for ch in w)]
    assert english and german and not english & set(german), english & set(german)
    assert {"Rekrutierung im Zeitverlauf", "randomisiert", "Ziel", "4 von 80"} <= set(german), german
    assert format_skeleton("yMMM", month(-3), locale="de") in german
    assert format_skeleton("yMMMM", month(-3), locale="de") == table_rows(chart(german_doc)[1])[0][0]
    hebrew = page(client(app, "manager", "he"), "/dashboard/sites/AT01")
    root = hebrew.getroottree().getroot()
    assert (root.get("lang"), root.get("dir")) == ("he", "rtl")
    svg, table = chart(hebrew)
    assert svg.get("direction") == "rtl"  # the texts read right to left; the time axis still runs left to right
    assert [e.get("dir") for e in table.xpath("ancestor-or-self::*[@dir]")] == ["rtl"]  # the page's direction: the html's
    assert format_skeleton("yMMMM", month(-3), locale="he") == table_rows(table)[0][0]


def test_an_empty_trial_and_a_site_without_a_target_render(world, app):
    sites.update_site(world.db, CLI, "NO01", {"target": 0}, reason="No target agreed yet")
    world.db.commit()
    home = page(client(app, "manager"), "/")
    svg, table = chart(home)
    assert "No child has been randomized yet." in svg_words(svg)
    assert not svg.xpath(".//*[local-name()='polyline']")
    assert table_rows(table) == [["No child has been randomized yet."]]
    assert all(row[1:] == ["0", "0", "0", "0", "—"] for row in table_rows(home.xpath("//table[contains(@class, 'completeness')]")[0]))
    # a site with target 0: no target line, no share, a dash for the target
    world.open(bytes(range(32)))
    randomized(world, site="NO01")
    dashed = ".//*[local-name()='line'][@stroke-dasharray]"  # the legend's, and the target's where there is one
    assert len(chart(page(client(app, "manager"), "/dashboard/sites/AT01"))[0].xpath(dashed)) == 2
    svg, table = chart(page(client(app, "manager"), "/dashboard/sites/NO01"))
    assert len(svg.xpath(dashed)) == 1
    assert table_rows(table) == [[format_skeleton("yMMMM", month(0), locale="en"), "1", "1", "—", "—"]]
    assert progress(world.db, world.users["manager"], "NO01")["recruitment"]["share"] is None


def test_a_sites_page_is_for_the_managers_and_the_sites_own_coordinators_and_monitors(world, app):
    for who in ("manager", "coordinator", "monitor"):
        assert client(app, who).get("/dashboard/sites/AT01").status_code == 200, who
    assert client(app, "manager").get("/dashboard/sites/NO01").status_code == 200
    assert client(app, "coordinator_no").get("/dashboard/sites/NO01").status_code == 200
    for who in ("coordinator", "monitor"):  # another site's page
        assert client(app, who).get("/dashboard/sites/NO01").status_code == 403, who
    for who in ("assessor", "therapist", "statistician", "admin"):
        assert client(app, who).get("/dashboard/sites/AT01").status_code == 403, who
    assert client(app, "manager").get("/dashboard/sites/XX99").status_code == 404
    # the pages are linked where they may be opened: the home page's sites, the overview
    own = page(client(app, "coordinator"), "/")
    assert own.xpath("//a[@href='/dashboard/sites/AT01']") and not own.xpath("//a[@href='/dashboard/sites/NO01']")
    assert not page(client(app, "therapist"), "/").xpath("//a[starts-with(@href, '/dashboard/sites/')]")
    assert page(client(app, "manager"), "/dashboard/overview").xpath("//a[@href='/dashboard/sites/NO01']")
    # only the managers see the trial's chart on their home page
    assert not page(client(app, "coordinator"), "/").xpath("//section[@aria-labelledby='recruitment-heading']")


def _from_plan(db, site_ids, on) -> dict[str, list[int]]:
    """Per visit, counted here from the visit plan's rows one by one: due, done, open, overdue."""
    out: dict[str, list[int]] = {}
    for r in db.execute(select(PlannedVisit).where(PlannedVisit.site_id.in_(site_ids))).scalars():
        done = r.blinded_entered == r.blinded_forms and r.other_entered == r.other_forms
        due = done or (not r.ended and r.opens <= on)
        overdue = not done and not r.ended and r.closes < on
        c = out.setdefault(r.visit, [0, 0, 0, 0])
        c[0] += due
        c[1] += done
        c[2] += due and not done and not overdue
        c[3] += overdue
    return out


def test_visit_completeness_is_the_visit_plans(world, app, db):
    world.open(bytes(range(32)))
    done = randomized(world, 100)            # month 2: every form entered
    assert assess(world, done, performed_on=d(40)).status_code == 201
    assert assess(world, done, instrument="srs2", performed_on=d(40)).status_code == 201
    randomized(world, 100)                   # month 2 overdue
    randomized(world, 55)                    # month 2 in its window
    gone = randomized(world, 70)             # withdrew while its month-2 window was open: not due
    r = world.api("POST", f"/participants/{gone.study_id}/events", "coordinator",
                  json={"type": "withdrawn", "on": d(1).isoformat(), "reason": "Family decision"})
    assert r.status_code == 201, r.get_json()
    randomized(world, 160)                   # month 2 overdue, month 5 in its window
    randomized(world, 100, site="NO01")      # month 2 overdue at the other site
    expected_at = {"month2": [4, 1, 1, 2], "month5": [1, 0, 1, 0], "month12": [0, 0, 0, 0]}
    expected_all = {"month2": [5, 1, 1, 3], "month5": [1, 0, 1, 0], "month12": [0, 0, 0, 0]}
    ids = dict(db.execute(select(Site.code, Site.id)).all())
    db.expire_all()
    assert {v: _from_plan(db, [ids["AT01"]], today()).get(v, [0] * 4) for v in expected_at} == expected_at
    assert {v: _from_plan(db, list(ids.values()), today()).get(v, [0] * 4) for v in expected_all} == expected_all
    for url, who, expected in (("/", "manager", expected_all), ("/dashboard/sites/AT01", "monitor", expected_at)):
        rows = table_rows(page(client(app, who), url).xpath("//table[contains(@class, 'completeness')]")[0])
        labels = ["2 months", "5 months (primary endpoint)", "12 months"]  # the protocol's words, never its keys
        assert [r[0] for r in rows] == labels
        for row, (visit, (due, n_done, n_open, overdue)) in zip(rows, expected.items()):
            share = f"{round(100 * n_done / due)}%" if due else "—"
            assert row[1:] == [str(due), str(n_done), str(n_open), str(overdue), share], (url, visit, row)
    german = page(client(app, "manager", "de"), "/").xpath("//table[contains(@class, 'completeness')]")[0]
    assert table_rows(german)[0][0] == "2 Monate"
