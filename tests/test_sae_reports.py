"""The reporting record of a serious adverse event: a manager acknowledges it only with its report
(to whom, when, the recipient's reference), which stops the 24-hour clock; further reports follow;
each bad field is named and nothing is saved; other roles are refused; a hard lock refuses it; the
web form takes the wall-clock time at the site and the page shows the report in the reader's
language and the site's time zone; the locked bundle carries the reports."""
from __future__ import annotations

import csv
import datetime as dt
import io
import re
import zipfile
import zoneinfo

import pytest
from sqlalchemy import func, select

from tests.helpers import CLI, PASSWORD
from tests.test_lock import SEED, R, backdate_all, child, iso
from trial.audit.models import AuditRecord
from trial.catalogue import translator
from trial.safety import service as safety
from trial.safety.models import AdverseEvent, AdverseEventReport
from trial.sites import service as sites
from trial.validation import parse_moment

VIENNA = zoneinfo.ZoneInfo("Europe/Vienna")
OTHER_ROLES = ("coordinator", "coordinator_no", "therapist", "assessor", "statistician", "monitor", "admin")
SAE = {"term": "Febrile seizure", "severity": "severe", "serious": True, "seriousness": ["hospitalisation"],
       "relatedness": "not_related", "outcome": "recovering"}


@pytest.fixture()
def sae(world, db):
    """A randomized child at AT01 (in Vienna's time zone) with a serious adverse event, its clock running."""
    sites.update_site(db, CLI, "AT01", {"timezone": "Europe/Vienna"}, reason="the site's own time zone")
    world.open(SEED)
    p = child(world)
    world.randomize(p, "sae")
    backdate_all(db)
    ae = safety.record(db, world.users["coordinator"], p.study_id, {**SAE, "onset": iso(R + dt.timedelta(days=30))})
    db.commit()
    return {"world": world, "p": p, "ae": ae.id}


def ok(r, status=201):
    assert r.status_code == status, (r.status_code, r.get_data(as_text=True))
    return r.get_json()


def z(moment: dt.datetime) -> str:
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def ago(**kw) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(**kw)


def report(**kw) -> dict:
    return {"reported_to": "ethics_committee", "reported_at": z(ago(hours=2)), "reference": "EC-2026-017", **kw}


def state(db) -> tuple:
    """What a refused request must leave as it was (a login is audited too: the adverse events' trail is counted)."""
    db.expire_all()
    return (db.execute(select(AdverseEvent.id, AdverseEvent.acknowledged_at, AdverseEvent.acknowledged_by_id)).all(),
            db.execute(select(func.count()).select_from(AdverseEventReport)).scalar(),
            db.execute(select(func.count()).select_from(AuditRecord).where(AuditRecord.entity == "adverse_event")).scalar())


def web(app, who: str, **headers):
    c = app.test_client()
    assert c.post("/login", data={"email": f"{who}@example.org", "password": PASSWORD}).status_code == 302
    c.environ_base.update({f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()})
    return c


def serious_event(world, p, term="Pneumonia") -> int:
    return ok(world.api("POST", f"/participants/{p.study_id}/adverse-events", "coordinator",
                        json={**SAE, "term": term, "onset": iso(R + dt.timedelta(days=40))}))["id"]


def test_acknowledging_needs_the_report_each_bad_field_is_named_and_the_clock_runs_on(sae, db):
    w, ae = sae["world"], sae["ae"]
    before = state(db)
    naive = ago(hours=2).replace(tzinfo=None, microsecond=0).isoformat()
    cases = [
        ({}, {"reported_to", "reported_at", "reference"}),
        ({"reported_to": "the EC", "reported_at": naive, "reference": "  "}, {"reported_to", "reported_at", "reference"}),
        (report(reported_at="2026-02-30T10:00:00Z"), {"reported_at"}),
        (report(reported_at=z(ago(hours=-3))), {"reported_at"}),                       # in the future
        (report(reported_at=f"{iso(R + dt.timedelta(days=29))}T12:00:00Z"), {"reported_at"}),  # before the onset
        (report(reference="X" * 81), {"reference"}),
        (report(reported_at=1767225600), {"reported_at"}),
    ]
    for body, fields in cases:
        r = w.api("POST", f"/adverse-events/{ae}/acknowledge", "manager", json=body)
        assert r.status_code == 400, (body, r.get_data(as_text=True))
        e = r.get_json()["error"]
        assert set(e["fields"]) == fields, (body, e)
        assert state(db) == before, body
    future = w.api("POST", f"/adverse-events/{ae}/acknowledge", "manager", json=report(reported_at=z(ago(hours=-3))))
    assert "is in the future" in future.get_json()["error"]["fields"]["reported_at"]
    assert "offset from UTC" in w.api("POST", f"/adverse-events/{ae}/acknowledge", "manager",
                                      json=report(reported_at=naive)).get_json()["error"]["fields"]["reported_at"]
    # the clock still runs and the event still waits for the manager
    view = ok(w.api("GET", f"/adverse-events/{ae}", "manager"), 200)
    assert view["clock"].startswith("report due in") and view["acknowledged_at"] is None and view["reports"] == []
    assert [a.id for a in safety.waiting_for_acknowledgement(db, w.users["manager"])] == [ae]


def test_the_report_acknowledges_stops_the_clock_and_is_listed(sae, db):
    w, ae = sae["world"], sae["ae"]
    seq = db.execute(select(func.max(AuditRecord.seq))).scalar()
    at = ago(hours=3).replace(microsecond=0)
    sent = at.astimezone(dt.timezone(dt.timedelta(hours=1))).isoformat()  # with an offset: kept in UTC
    acked = ok(w.api("POST", f"/adverse-events/{ae}/acknowledge", "manager",
                     json=report(reported_at=sent, reference="EK-1234/2026")), 200)
    assert acked["report"] | {"id": 0} == {"id": 0, "reported_to": "ethics_committee", "reported_at": z(at),
                                           "reference": "EK-1234/2026", "recorded_by": "manager@example.org",
                                           "recorded_at": acked["acknowledged_at"]}
    view = ok(w.api("GET", f"/adverse-events/{ae}", "coordinator"), 200)  # the site reads it too
    assert view["clock"] is None and view["acknowledged_at"] == acked["acknowledged_at"] and view["report_due"]
    assert view["reports"] == [acked["report"]]
    assert safety.waiting_for_acknowledgement(db, w.users["manager"]) == []
    db.expire_all()
    assert db.get(AdverseEvent, ae).acknowledged_by_id == w.users["manager"].id
    # one audit record of the acknowledgement with its report, in the same transaction
    recs = db.execute(select(AuditRecord).where(AuditRecord.seq > seq).order_by(AuditRecord.seq)).scalars().all()
    assert {(r.action, r.entity, r.entity_id) for r in recs} == {("acknowledge", "adverse_event", str(ae))}
    assert len({r.at for r in recs}) == 1 and all(r.reveals_allocation for r in recs)
    assert {r.field: r.new for r in recs}.items() >= {"reported_to": "ethics_committee", "reference": "EK-1234/2026"}.items()
    assert w.api("POST", f"/adverse-events/{ae}/acknowledge", "manager", json=report()).status_code == 409


def test_further_reports_follow_the_acknowledgement_only(sae, db):
    w, ae, p = sae["world"], sae["ae"], sae["p"]
    before = state(db)
    assert w.api("POST", f"/adverse-events/{ae}/reports", "manager", json=report()).status_code == 409  # not acknowledged
    assert state(db) == before
    mild = ok(w.api("POST", f"/participants/{p.study_id}/adverse-events", "coordinator",
                    json={**SAE, "serious": False, "seriousness": [], "severity": "mild",
                          "onset": iso(R + dt.timedelta(days=31))}))["id"]
    before = state(db)
    for path in (f"/adverse-events/{mild}/acknowledge", f"/adverse-events/{mild}/reports"):
        assert w.api("POST", path, "manager", json=report()).status_code == 409, path
    assert state(db) == before
    ok(w.api("POST", f"/adverse-events/{ae}/acknowledge", "manager", json=report()), 200)
    seq = db.execute(select(func.max(AuditRecord.seq))).scalar()
    later = ok(w.api("POST", f"/adverse-events/{ae}/reports", "manager",
                     json=report(reported_to="authority", reference="BASG-0042", reported_at=z(ago(minutes=30)))))
    assert later["reported_to"] == "authority" and later["recorded_by"] == "manager@example.org"
    r = w.api("POST", f"/adverse-events/{ae}/reports", "manager", json=report(reported_to="authority", reference=""))
    assert r.status_code == 400 and set(r.get_json()["error"]["fields"]) == {"reference"}
    dup = w.api("POST", f"/adverse-events/{ae}/reports", "manager", json=report(reported_to="authority", reference="BASG-0042"))
    assert dup.status_code == 409 and "recorded already" in dup.get_json()["error"]["message"]
    view = ok(w.api("GET", f"/adverse-events/{ae}", "manager"), 200)
    assert [(x["reported_to"], x["reference"]) for x in view["reports"]] == [("ethics_committee", "EC-2026-017"),
                                                                           ("authority", "BASG-0042")]
    recs = db.execute(select(AuditRecord).where(AuditRecord.seq > seq)).scalars().all()
    assert {(x.action, x.entity, x.entity_id) for x in recs} == {("report", "adverse_event", str(ae))}


def test_only_a_manager_reports_and_an_assessor_sees_nothing_of_it(sae, app, db):
    w, ae = sae["world"], sae["ae"]
    before = state(db)
    for who in OTHER_ROLES:
        for path in (f"/adverse-events/{ae}/acknowledge", f"/adverse-events/{ae}/reports"):
            assert w.api("POST", path, who, json=report()).status_code == 403, (who, path)
    for who in ("coordinator", "monitor"):
        c = web(app, who)
        for path in (f"/adverse-events/{ae}/acknowledge", f"/adverse-events/{ae}/reports"):
            assert c.post(path, data={"reported_to": "sponsor", "reported_at": "2026-01-01T10:00",
                                      "reference": "S-1"}).status_code == 403, (who, path)
    assert state(db) == before
    ok(w.api("POST", f"/adverse-events/{ae}/acknowledge", "manager", json=report(reference="EC-SECRET-77")), 200)
    r = w.api("GET", f"/adverse-events/{ae}", "assessor")
    assert r.status_code == 403 and "EC-SECRET-77" not in r.get_data(as_text=True)
    page = web(app, "assessor").get(f"/adverse-events/{ae}")
    assert page.status_code == 403 and "EC-SECRET-77" not in page.get_data(as_text=True)
    assert w.api("GET", f"/adverse-events/{ae}", "coordinator_no").status_code in (403, 404)  # another site's event
    coordinator_page = web(app, "coordinator").get(f"/adverse-events/{ae}").get_data(as_text=True)
    assert "EC-SECRET-77" in coordinator_page and "/reports" not in coordinator_page  # read, never a form


def test_a_hard_lock_refuses_the_report(sae, app, db):
    w, ae = sae["world"], sae["ae"]
    second = serious_event(w, sae["p"])
    ok(w.api("POST", f"/adverse-events/{second}/acknowledge", "manager", json=report()), 200)
    ok(w.api("POST", "/locks", "manager", json={"kind": "hard", "meaning": "Final lock.", "password": PASSWORD,
                                                 "accept_open_queries": True}))
    before = state(db)
    for path, status in ((f"/adverse-events/{ae}/acknowledge", 423), (f"/adverse-events/{second}/reports", 423)):
        r = w.api("POST", path, "manager", json=report(reported_to="sponsor", reference="SP-9"))
        assert r.status_code == status and r.get_json()["error"]["code"] == "locked", path
    c = web(app, "manager")
    form = {"reported_to": "sponsor", "reported_at": f"{iso(R + dt.timedelta(days=35))}T10:00", "reference": "SP-9"}
    for path in (f"/adverse-events/{ae}/acknowledge", f"/adverse-events/{second}/reports"):
        assert c.post(path, data=form).status_code == 423, path
    assert state(db) == before


def test_the_web_form_takes_the_sites_wall_clock_and_the_german_page_shows_the_recipients_word(sae, app, db):
    ae = sae["ae"]
    c = web(app, "manager", **{"Accept-Language": "de"})
    page = c.get(f"/adverse-events/{ae}").get_data(as_text=True)
    assert f'action="/adverse-events/{ae}/acknowledge"' in page and "Europe/Vienna" in page  # the zone of the form
    # a refused form: the page again (400), each reason beside its field, nothing saved
    before = state(db)
    r = c.post(f"/adverse-events/{ae}/acknowledge", data={"reported_to": "", "reported_at": "", "reference": ""})
    assert r.status_code == 400 and r.get_data(as_text=True).count('class="error"') >= 3
    tomorrow = dt.datetime.now(VIENNA) + dt.timedelta(days=1)
    r = c.post(f"/adverse-events/{ae}/acknowledge",
               data={"reported_to": "sponsor", "reported_at": tomorrow.strftime("%Y-%m-%dT%H:%M"), "reference": "S-1"})
    assert r.status_code == 400 and f"{tomorrow:%Y-%m-%d %H:%M} (Europe/Vienna)" in r.get_data(as_text=True)  # the future
    assert state(db) == before
    # the time typed is the site's (Vienna's) wall clock; it is kept in UTC
    local = (dt.datetime.now(VIENNA) - dt.timedelta(days=2)).replace(hour=9, minute=45, second=0, microsecond=0)
    r = c.post(f"/adverse-events/{ae}/acknowledge",
               data={"reported_to": "ethics_committee", "reported_at": local.strftime("%Y-%m-%dT%H:%M"), "reference": "EK-7"})
    assert r.status_code == 302, r.get_data(as_text=True)
    db.expire_all()
    (rep,) = db.get(AdverseEvent, ae).reports
    assert rep.reported_at == local.astimezone(dt.UTC).replace(tzinfo=None) != local.replace(tzinfo=None)
    assert db.get(AdverseEvent, ae).acknowledged_at is not None
    # the German page: the recipient by its word, the time in German and in the site's zone
    page = c.get(f"/adverse-events/{ae}").get_data(as_text=True)
    text = re.sub(r'value="[^"]*"', "", page)
    de = translator("de")
    assert '<html lang="de"' in page and de("Ethics committee") in text and "ethics_committee" not in text
    assert local.strftime("%d.%m.%Y") in text and "09:45" in text and "Zeitzone Europe/Vienna" in text
    assert f'action="/adverse-events/{ae}/reports"' in page  # and now the form for a further report
    r = c.post(f"/adverse-events/{ae}/reports", data={"reported_to": "authority", "reference": "BASG-1",
                                                      "reported_at": local.strftime("%Y-%m-%dT%H:%M")})
    assert r.status_code == 302
    db.expire_all()
    assert [x.reported_to for x in db.get(AdverseEvent, ae).reports] == ["ethics_committee", "authority"]


def test_a_time_the_clocks_skipped_or_without_its_offset_is_refused():
    errors: dict = {}
    assert parse_moment(dt.datetime(2026, 3, 29, 2, 30), "at", errors, "Europe/Vienna") is None  # summer time began
    assert "does not exist" in errors["at"]
    assert parse_moment(dt.datetime(2026, 1, 10, 9, 45), "at", {}, "Europe/Vienna") == dt.datetime(2026, 1, 10, 8, 45)
    assert parse_moment("2026-01-10T09:45:00+01:00", "at", {}) == dt.datetime(2026, 1, 10, 8, 45)
    for bad in ("2026-01-10T09:45:00", "2026-01-10 09:45:00Z", "2026-01-10T09:45Z", "0001-01-01T00:00:00+01:00",
                "2026-01-10T09:45:00Z\n", "２０２６-01-10T09:45:00Z"):
        errors = {}
        assert parse_moment(bad, "at", errors) is None and "at" in errors, bad


def test_the_locked_bundle_holds_the_reports(sae, db):
    w, ae = sae["world"], sae["ae"]
    at = ago(days=1).replace(microsecond=0)
    ok(w.api("POST", f"/adverse-events/{ae}/acknowledge", "manager", json=report(reported_at=z(at))), 200)
    ok(w.api("POST", f"/adverse-events/{ae}/reports", "manager", json=report(reported_to="authority", reference="B-2")))
    lock_id = ok(w.api("POST", "/locks", "manager", json={"kind": "hard", "meaning": "Final lock.", "password": PASSWORD,
                                                          "accept_open_queries": True}))["id"]
    with zipfile.ZipFile(io.BytesIO(w.api("GET", f"/locks/{lock_id}/bundle.zip", "manager").data)) as zf:
        files = {n.split("/", 1)[1]: zf.read(n) for n in zf.namelist()}
    rows = list(csv.DictReader(io.StringIO(files["csv/aerep.csv"].decode())))
    assert [(r["aeid"], r["repno"], r["repto"], r["repref"], r["recby"]) for r in rows] == [
        (str(ae), "1", "ethics_committee", "EC-2026-017", "manager@example.org"),
        (str(ae), "2", "authority", "B-2", "manager@example.org")]
    assert rows[0]["repdtm"] == at.strftime("%Y-%m-%dT%H:%M:%S")
    head = next(csv.reader(io.StringIO(files["csv/ae.csv"].decode())))
    assert head[-2:] == ["reptdtm", "ackdtm"]  # the adverse events' columns as they were
    with zipfile.ZipFile(io.BytesIO(w.api("GET", f"/locks/{lock_id}/bundle.zip", "statistician").data)) as zf:
        assert not any("aerep" in n for n in zf.namelist())  # an AE can tell the arm


@pytest.mark.parametrize("recorded_hours_ago,reported_hours_ago,says", [
    (3, 1, "First reported 2 h 00 min after the event was recorded: within the 24 hours."),
    (30, 1, "First reported 5 h 00 min after the 24-hour limit."),
])
def test_the_page_says_whether_the_first_report_kept_the_24_hours(sae, app, db, recorded_hours_ago, reported_hours_ago,
                                                                   says):
    w, ae = sae["world"], sae["ae"]
    event = db.get(AdverseEvent, ae)
    recorded = ago(hours=recorded_hours_ago).replace(microsecond=0, tzinfo=None)  # stored as naive UTC
    event.reported_at, event.report_due = recorded, recorded + dt.timedelta(hours=24)
    db.commit()
    sent = ago(hours=reported_hours_ago).replace(microsecond=0)
    ok(w.api("POST", f"/adverse-events/{ae}/acknowledge", "manager", json=report(reported_at=z(sent))), 200)
    page = web(app, "manager").get(f"/adverse-events/{ae}").get_data(as_text=True)
    assert says in page


def test_the_notices_of_a_serious_event_go_once_it_is_reported(sae, db):
    from trial.notify.models import Notification
    w, ae = sae["world"], sae["ae"]

    def waiting():
        return db.execute(select(func.count()).select_from(Notification).where(
            Notification.link == f"/adverse-events/{ae}", Notification.read_at.is_(None))).scalar()
    assert waiting() >= 1  # every manager was told at once
    ok(w.api("POST", f"/adverse-events/{ae}/acknowledge", "manager", json=report()), 200)
    db.expire_all()
    assert waiting() == 0
