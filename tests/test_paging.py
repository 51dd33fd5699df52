"""Lists paged, searched, sorted and filtered in the database: the API's GET /participants with
X-Total-Count and Link, every list page's pager and sort links, bad parameters answered 400, the
arm filter and sort only for readers who see arms, and a page that costs the same number of SQL
statements whatever the size of the trial."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import event

from tests.helpers import PASSWORD
from trial import cache
from trial.paging import Page, PageRequest

SEED = bytes(range(32))


def login(app, who):
    c = app.test_client()
    assert c.post("/login", data={"email": f"{who}@example.org", "password": PASSWORD}).status_code == 302
    return c


@pytest.fixture()
def trial(world):
    """Nine randomized children at AT01 (arms from a fixed seed), two enrolled only, one at NO01."""
    world.open(SEED)
    kids = []
    for _ in range(9):
        p = world.ready("AT01")
        world.randomize(p, p.study_id)
        kids.append(p)
    waiting = [world.enroll("AT01") for _ in range(2)]
    other = world.ready("NO01")
    world.randomize(other, other.study_id)
    return {"world": world, "kids": kids, "waiting": waiting, "other": other}


def test_page_window_and_bounds():
    page = Page(list(range(50)), 1234, PageRequest(7, 50))
    assert page.pages == 25 and page.first == 301 and page.last == 350 and page.has_prev and page.has_next
    assert page.window() == [1, None, 5, 6, 7, 8, 9, None, 25]
    assert Page([], 0, PageRequest()).pages == 1 and Page([], 0, PageRequest()).first == 0


def test_api_participants_pages_with_total_and_links(trial):
    w = trial["world"]
    everyone = w.api("GET", "/participants", "manager").get_json()
    assert len(everyone) == 12  # without page: the whole list, as before
    r = w.api("GET", "/participants?page=1&per_page=5", "manager")
    assert r.status_code == 200 and r.headers["X-Total-Count"] == "12"
    assert [p["study_id"] for p in r.get_json()] == sorted(p["study_id"] for p in everyone)[:5]
    links = dict((rel, url) for url, rel in re.findall(r'<([^>]+)>; rel="(\w+)"', r.headers["Link"]))
    assert "page=2" in links["next"] and "per_page=5" in links["next"] and "prev" not in links and "page=3" in links["last"]
    last = w.api("GET", "/participants?page=3&per_page=5", "manager")
    assert len(last.get_json()) == 2 and 'rel="prev"' in last.headers["Link"] and 'rel="next"' not in last.headers["Link"]
    beyond = w.api("GET", "/participants?page=9&per_page=5", "manager")
    assert beyond.status_code == 200 and beyond.get_json() == [] and beyond.headers["X-Total-Count"] == "12"
    # search, status, sort
    one = trial["kids"][3].study_id
    assert [p["study_id"] for p in w.api("GET", f"/participants?page=1&q={one[-4:]}", "manager").get_json()] == [one]
    enrolled = w.api("GET", "/participants?page=1&status=enrolled", "manager")
    assert enrolled.headers["X-Total-Count"] == "2"
    assert {p["study_id"] for p in enrolled.get_json()} == {p.study_id for p in trial["waiting"]}
    desc = w.api("GET", "/participants?page=1&per_page=200&sort=-study_id", "manager").get_json()
    assert [p["study_id"] for p in desc] == sorted((p["study_id"] for p in everyone), reverse=True)
    by_site = w.api("GET", "/participants?page=1&per_page=200&sort=-site", "manager").get_json()
    assert by_site[0]["site"] == "NO01"
    # bad parameters: 400 naming the parameter, nothing else
    for bad, field in (("page=1&per_page=201", "per_page"), ("page=0", "page"), ("page=1&sort=date_of_birth", "sort"),
                       ("page=1&status=cured", "status"), ("page=1&per_page=x", "per_page"), ("sort=nonsense", "sort"),
                       ("page=", "page"), ("page=1&per_page=", "per_page")):
        r = w.api("GET", f"/participants?{bad}", "manager")
        assert r.status_code == 400 and field in r.get_json()["error"]["fields"], bad


def test_arm_filter_and_sort_only_for_readers_who_see_arms(trial):
    w = trial["world"]
    everyone = w.api("GET", "/participants", "manager").get_json()
    arms = {p["study_id"]: p.get("arm") for p in everyone}
    usual = sorted(s for s, a in arms.items() if a == "usual")
    r = w.api("GET", "/participants?page=1&per_page=200&arm=usual", "manager")
    assert sorted(p["study_id"] for p in r.get_json()) == usual and r.headers["X-Total-Count"] == str(len(usual))
    by_arm = [p.get("arm") for p in w.api("GET", "/participants?page=1&per_page=200&sort=arm", "manager").get_json()
              if p.get("arm")]
    assert by_arm == sorted(by_arm)
    # the assessor can neither filter nor sort by arm: both are refused alike, whatever the arm
    for q in ("arm=usual", "arm=high", "sort=arm", "sort=-arm"):
        r = w.api("GET", f"/participants?page=1&{q}", "assessor")
        assert r.status_code == 400, q
    # a blinded reader's status filter never meets the statuses only an intervention gives
    assert w.api("GET", "/participants?page=1&status=discontinued_intervention", "assessor").get_json() == []


def test_therapist_pages_count_only_music_therapy_children(trial):
    w = trial["world"]
    everyone = w.api("GET", "/participants", "manager").get_json()
    music = sorted(p["study_id"] for p in everyone if p.get("arm") in ("low", "high") and p["site"] == "AT01")
    r = w.api("GET", "/participants?page=1&per_page=3", "therapist")
    assert r.headers["X-Total-Count"] == str(len(music))
    assert [p["study_id"] for p in r.get_json()] == music[:3]


LIST_PAGES = {
    "manager": ["/participants", "/screenings", "/dashboard/", "/visits?kind=due", "/adherence", "/queries?status=all",
                "/adverse-events", "/audit/"],
    "admin": ["/admin/users"],
}


@pytest.mark.parametrize("who", sorted(LIST_PAGES))
def test_every_list_page_has_a_pager_and_refuses_bad_parameters(trial, app, who):
    c = login(app, who)
    for url in LIST_PAGES[who]:
        sep = "&" if "?" in url else "?"
        r = c.get(f"{url}{sep}per_page=1")
        assert r.status_code == 200, url
        html = r.get_data(as_text=True)
        assert 'class="pager"' in html, url
        m = re.search(r"1–1 of (\d+)", html)
        if m and int(m.group(1)) > 1:
            assert "page=2" in html and 'rel="next"' in html, url
        for bad in ("per_page=500", "page=-1", "sort=nonsense"):
            assert c.get(f"{url}{sep}{bad}").status_code == 400, (url, bad)


def test_screening_log_no_longer_stops_at_500_rows_and_pages(trial, app):
    c = login(app, "coordinator")
    html = c.get("/screenings?per_page=5").get_data(as_text=True)
    assert "1–5 of 11 screenings" in html  # the coordinator's site: AT01's eleven
    html = c.get("/screenings?per_page=5&page=3").get_data(as_text=True)
    assert "11–11 of 11 screenings" in html
    html = c.get("/screenings?outcome=eligible&q=" + trial["waiting"][0].study_id).get_data(as_text=True)
    assert "1–1 of 1 screenings" in html


def _statements(engine, fn) -> int:
    seen = []

    def count(conn, cursor, statement, params, context, executemany):
        seen.append(statement)
    event.listen(engine, "before_cursor_execute", count)
    try:
        fn()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return len(seen)


@pytest.mark.parametrize("url", ["/participants?per_page=5", "/dashboard/?per_page=5", "/adherence?per_page=5",
                                 "/visits?kind=due&per_page=5", "/queries?status=all&per_page=5"])
def test_a_page_costs_the_same_statements_with_more_children(world, app, engine, url):
    """No per-row queries: a page of five costs as many SQL statements with 6 children in the trial
    as with 16."""
    world.open(SEED)
    c = login(app, "manager")

    def add(n):
        for _ in range(n):
            p = world.ready("AT01")
            world.randomize(p, p.study_id)
    def fetch():  # the whole-trial summaries worked out afresh each time, as after any change
        cache.summaries.clear()
        c.get(url)
    add(6)
    c.get(url)  # warm the per-process caches
    small = _statements(engine, fetch)
    add(10)
    large = _statements(engine, fetch)
    assert large == small, (url, small, large)


def test_the_whole_audit_trail_pages_by_its_chain_without_a_count(trial, db):
    """The unfiltered trail of an unblinded reader is paged from the chain's numbers (records
    1..top without a gap): the same records and total as counting and skipping would give, in
    both orders, and the filtered trail still counts."""
    from sqlalchemy import func, select

    from trial.audit.models import AuditRecord
    from trial.audit.service import page_records
    world = trial["world"]
    manager = world.users["manager"]
    seqs = list(db.execute(select(AuditRecord.seq).order_by(AuditRecord.seq)).scalars())
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 20
    for sort, order in (("-seq", seqs[::-1]), ("seq", seqs)):
        for page in (1, 2, 3, (len(seqs) + 6) // 7, (len(seqs) + 6) // 7 + 1):
            got = page_records(db, manager, PageRequest(page=page, per_page=7, sort=sort))
            assert got.total == len(seqs)
            assert [r.seq for r in got.items] == order[(page - 1) * 7:page * 7], (sort, page)
    filtered = page_records(db, manager, PageRequest(page=1, per_page=7), entity="allocation")
    assert filtered.total == db.execute(select(func.count()).where(AuditRecord.entity == "allocation")).scalar() < len(seqs)


def test_the_allocation_carries_the_childs_study_id_and_site(trial, db):
    """Copied when the child is randomized (the adherence lists read them from the allocation)."""
    from sqlalchemy import select

    from trial.participants.models import Allocation, Participant
    rows = db.execute(select(Allocation, Participant).join(Participant, Participant.id == Allocation.participant_id)).all()
    assert len(rows) == 10
    assert all((a.study_id, a.site_id) == (p.study_id, p.site_id) for a, p in rows)


def test_the_adherence_list_pages_sorts_and_filters_as_the_children_are(trial, db):
    """Every page, in each order and with each filter, is the music-therapy children a reference
    worked out from the participants and their allocations gives, and the total is their number."""
    from sqlalchemy import select

    from trial.course.service import adherence_page
    from trial.participants.models import Allocation, Participant
    manager = trial["world"].users["manager"]
    kids = [(p.study_id, a.arm, a.randomized_at, p.site_id) for a, p in db.execute(
        select(Allocation, Participant).join(Participant, Participant.id == Allocation.participant_id)).all()
        if a.arm in ("low", "high")]
    assert len(kids) >= 4

    def listed(**kw):
        sort, per_page = kw.pop("sort", "study_id"), 2
        out, page, total = [], 1, None
        while True:
            got = adherence_page(db, manager, PageRequest(page=page, per_page=per_page, sort=sort), **kw)
            total = got.total
            out += [r["study_id"] for r in got.items]
            if not got.has_next:
                return out, total
            page += 1

    by_id = sorted(kids)
    assert listed() == ([k[0] for k in by_id], len(kids))
    assert listed(sort="-study_id")[0] == [k[0] for k in reversed(by_id)]
    by_arm = listed(sort="arm")[0]
    assert by_arm == [k[0] for k in sorted(kids, key=lambda k: (k[1], k[0]))]
    high = sorted(k[0] for k in kids if k[1] == "high")
    assert listed(arm="high") == (high, len(high))
    assert listed(site_code="NO01")[0] == sorted(k[0] for k in kids if k[3] == trial["other"].site_id)
    one = kids[0][0]
    assert listed(search=one[-4:].lower())[0] == [k[0] for k in by_id if one[-4:] in k[0]]


def test_a_therapists_pages_keyed_from_the_allocations_are_the_music_therapy_children(trial):
    """A therapist who sees only music-therapy children at every site of the list is paged from the
    allocations: every page, in both orders, with a search and a site, is the reference's."""
    w = trial["world"]
    everyone = w.api("GET", "/participants", "manager").get_json()
    music = sorted(p["study_id"] for p in everyone if p.get("arm") in ("low", "high") and p["site"] == "AT01")
    assert len(music) >= 3

    def pages(query, per_page=2):
        out, page = [], 1
        while True:
            r = w.api("GET", f"/participants?page={page}&per_page={per_page}&{query}", "therapist")
            assert r.status_code == 200 and r.headers["X-Total-Count"] == str(total(query)), query
            rows = r.get_json()
            if not rows:
                return out
            out += [p["study_id"] for p in rows]
            page += 1

    def total(query):
        return len(expected[query])
    fragment = music[1][-4:]
    expected = {"sort=study_id": music, "sort=-study_id": music[::-1], "q=" + fragment: [s for s in music if fragment in s],
                "site=AT01": music, "site=AT01&sort=-study_id": music[::-1]}
    for query, want in expected.items():
        assert pages(query) == want, query
    # a filter the allocations do not hold goes the participants' way, with the same children
    assert [p["study_id"] for p in w.api("GET", "/participants?page=1&per_page=200&status=randomized",
                                         "therapist").get_json()] == music
