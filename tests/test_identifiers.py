"""Identifiers shown to a user are per site or random, never a global sequence whose gaps tell how
much happens elsewhere: a query is shown (pages, their addresses, notifications, e-mails) by its
number at its site, AT01-Q17, given when it is raised by a person or by a check; a notification is
dismissed by a random reference. The API keeps a query's ``id`` (API.md) and adds ``number``."""
from __future__ import annotations

import datetime as dt
import re

import pytest
from sqlalchemy import select, update

from tests.helpers import PASSWORD
from tests.test_datamanagement import inbox  # noqa: F401  (a fixture: a real SMTP server)
from trial.dataquality.models import DataQuery
from trial.notify.models import Notification
from trial.notify.service import notify
from trial.outcomes.service import check_missing_forms
from trial.participants.models import Assessment

REF = re.compile(r"\b[A-Z]{2}\d{2}-Q\d+\b")


def web(app, who):
    c = app.test_client()
    assert c.post("/login", data={"email": f"{who}@example.org", "password": PASSWORD}).status_code == 302
    return c


def raise_(world, p, text: str, who: str = "manager") -> dict:
    r = world.api("POST", "/queries", who, json={"study_id": p.study_id, "on": {"kind": "participant"}, "text": text})
    assert r.status_code == 201, r.get_json()
    return r.get_json()


@pytest.fixture()
def two_sites(world, db):
    world.open(bytes(range(32)))
    kids = {site: world.ready(site) for site in ("AT01", "NO01")}
    for site, p in kids.items():
        world.randomize(p, f"ids-{site}")
    return kids


def test_queries_are_numbered_per_site_by_people_and_by_checks(world, db, two_sites):
    at, no = two_sites["AT01"], two_sites["NO01"]
    answers = [raise_(world, p, f"Question {i}?") for i, p in enumerate([at, no, no, at, no])]
    assert [a["number"] for a in answers] == [1, 1, 2, 2, 3]  # each site counts its own
    assert {"id", "status", "number"} <= set(answers[0]) and answers[0]["status"] == "open"
    # a run of the missing-form check numbers its batch after them, site by site
    assert check_missing_forms(db, [at, no], dt.date.today() + dt.timedelta(days=900)) > 0
    db.commit()
    numbers = {}
    for q in db.execute(select(DataQuery).order_by(DataQuery.id)).scalars():
        numbers.setdefault(q.site_id, []).append(q.number)
    for site_numbers in numbers.values():
        assert site_numbers == list(range(1, len(site_numbers) + 1))
    # the API keeps the id of API.md and adds the number and what users are shown
    listed = world.api("GET", f"/queries?study_id={no.study_id}", "manager").get_json()
    assert {(q["number"], q["ref"]) for q in listed} >= {(1, "NO01-Q1"), (2, "NO01-Q2"), (3, "NO01-Q3")}
    assert all(isinstance(q["id"], int) for q in listed)
    one = world.api("GET", f"/queries/{answers[4]['id']}", "manager").get_json()
    assert one["id"] == answers[4]["id"] and one["number"] == 3 and one["ref"] == "NO01-Q3"
    closed = world.api("POST", f"/queries/{answers[4]['id']}/close", "manager", json={}).get_json()
    assert closed == {"id": answers[4]["id"], "status": "closed", "number": 3}


def test_pages_and_their_addresses_show_the_number_at_the_site_never_the_id(app, world, db, two_sites):
    at, no = two_sites["AT01"], two_sites["NO01"]
    for p in (no, no, no):  # three at the other site first: the AT01 query's id is not its number
        raise_(world, p, "Elsewhere?")
    q = raise_(world, at, "Date of consent?")
    qid = q["id"]
    assert q["number"] == 1 and qid > 3
    coordinator = web(app, "coordinator")
    pages = {url: coordinator.get(url) for url in ("/", "/queries?status=open", f"/participants/{at.study_id}",
                                                    "/queries/AT01-Q1")}
    for url, r in pages.items():
        assert r.status_code == 200, url
        body = r.get_data(as_text=True)
        assert "AT01-Q1" in body, url
        assert not re.search(rf"/queries/{qid}\b|Query {qid}\b|>{qid}</a>", body), url  # the id nowhere
    assert 'action="/queries/AT01-Q1/respond"' in pages["/queries/AT01-Q1"].get_data(as_text=True)
    # the form posts to the number's address, and the answer goes back to it
    r = coordinator.post("/queries/AT01-Q1/respond", data={"text": "From the signed form."})
    assert r.status_code == 302 and r.headers["Location"].endswith("/queries/AT01-Q1")
    assert db.get(DataQuery, qid).status == "answered"
    # an address by id (a notice written before queries were numbered) still opens it
    assert coordinator.get(f"/queries/{qid}").status_code == 200
    # another site's number, an unknown one and nonsense: the same 404
    missing = [coordinator.get(u) for u in ("/queries/NO01-Q1", "/queries/AT01-Q99", "/queries/ZZ99-Q1",
                                            "/queries/AT01-Q", "/queries/99999999999")]
    assert {r.status_code for r in missing} == {404}
    assert len({re.sub(rb'name="csrf_token" value="[^"]*"', b"", r.data) for r in missing}) == 1


def test_notifications_and_e_mails_name_the_query_by_its_number(app, world, db, two_sites, inbox):  # noqa: F811
    at, no = two_sites["AT01"], two_sites["NO01"]
    for _ in range(2):
        raise_(world, no, "Elsewhere?")
    q = raise_(world, at, "Date of consent?")
    [mail] = [m for m in inbox.wait(3) if m["To"] == "coordinator@example.org"]
    body = mail.get_payload(decode=True).decode()
    assert mail["Subject"] == f"Query AT01-Q1 on {at.study_id}"
    assert "Query AT01-Q1 on" in body and "https://trial.example.org/queries/AT01-Q1" in body
    assert f"/queries/{q['id']}" not in body
    [n] = world.api("GET", "/notifications", "coordinator").get_json()
    assert n["message"].startswith("Query AT01-Q1 on")
    home = web(app, "coordinator").get("/").get_data(as_text=True)
    assert "Query AT01-Q1 on" in home and f"/notifications/{n['ref']}/dismiss" in home
    assert not re.search(r"/notifications/\d+/dismiss", home)


def test_a_notification_is_dismissed_by_its_random_reference(app, world, db):
    notify(db, [world.users["coordinator"].id, world.users["assessor"].id], "Hello.")
    db.commit()
    notes = db.execute(select(Notification).order_by(Notification.id)).scalars().all()
    refs = [n.ref for n in notes]
    assert len(set(refs)) == 2 and all(len(r) >= 20 and not r.isdigit() for r in refs)
    mine = next(n for n in notes if n.user_id == world.users["coordinator"].id)
    theirs = next(n for n in notes if n.user_id == world.users["assessor"].id)
    c = web(app, "coordinator")
    c.get("/")
    for ref in (theirs.ref, "no-such-reference", str(theirs.id), str(mine.id)):  # ids name nothing any more
        assert c.post(f"/notifications/{ref}/dismiss", data={}).status_code == 404, ref
    other = world.api("POST", f"/notifications/{theirs.ref}/dismiss", "coordinator")
    unknown = world.api("POST", "/notifications/no-such-reference/dismiss", "coordinator")
    assert other.status_code == unknown.status_code == 404 and other.data == unknown.data
    assert c.post(f"/notifications/{mine.ref}/dismiss", data={}).status_code == 302
    db.expire_all()
    assert db.get(Notification, mine.id).read_at is not None and db.get(Notification, theirs.id).read_at is None


def test_a_notification_written_before_references_gets_one_when_listed(app, world, db):
    notify(db, [world.users["coordinator"].id], "Written before.")
    db.commit()
    db.execute(update(Notification).values(ref=None))  # as the migration left the older ones
    db.commit()
    [n] = world.api("GET", "/notifications", "coordinator").get_json()
    assert n["ref"] and world.api("GET", "/notifications", "coordinator").get_json()[0]["ref"] == n["ref"]  # kept
    assert world.api("POST", f"/notifications/{n['ref']}/dismiss", "coordinator").status_code == 200
    assert world.api("GET", "/notifications", "coordinator").get_json() == []


def test_an_assessor_sees_only_the_numbers_of_what_it_may_read(app, world, db, two_sites):
    """What a blinded assessor still learns (the report of issue 26 says so): the numbers of the
    queries it reads are per site, so the gaps between them count the other queries of its own site
    (those on sessions, events, adverse events and the coordinators' forms), never another site's."""
    at, no = two_sites["AT01"], two_sites["NO01"]
    for _ in range(5):
        raise_(world, no, "Elsewhere?")
    a = db.execute(select(Assessment.id).where(Assessment.participant_id == at.id)).scalar()
    r = world.api("POST", "/queries", "manager", json={"study_id": at.study_id, "text": "RRB?",
                                                       "on": {"kind": "assessment", "id": a, "field": "rrb"}})
    assert r.get_json()["number"] == 1  # the five at NO01 leave no trace in AT01's numbers
    page = web(app, "assessor").get("/queries?status=open").get_data(as_text=True)
    assert set(REF.findall(page)) == {"AT01-Q1"}
