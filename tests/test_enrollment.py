"""Screening log and enrollment, over the API: outcomes, validation, study IDs, site scoping."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from trial.participants.models import Participant, Screening
from trial.participants.service import age_in_months

TODAY = dt.date.today()


def screening(world, **kw):
    body = {"site": "AT01", "screened_on": (TODAY - dt.timedelta(days=10)).isoformat(), "answers": world.answers()}
    body.update(kw)
    return world.api("POST", "/screenings", "coordinator", json=body)


def counts(db):
    return (db.execute(select(func.count()).select_from(Screening)).scalar(),
            db.execute(select(func.count()).select_from(Participant)).scalar())


def test_eligible_screening(world):
    r = screening(world)
    assert r.status_code == 201 and r.get_json()["outcome"] == "eligible"


@pytest.mark.parametrize("override,outcome", [
    ({"answers": {"asd_diagnosis": False}}, "not_eligible"),
    ({"answers": {"recent_music_therapy": True}}, "not_eligible"),
    ({"declined": True}, "declined"),
    ({"other_reason": "family moving abroad"}, "other"),
])
def test_screening_outcomes(world, override, outcome):
    body = {}
    if "answers" in override:
        body["answers"] = world.answers(**override["answers"])
    else:
        body.update(override)
    r = screening(world, **body)
    assert r.status_code == 201 and r.get_json()["outcome"] == outcome


def test_failed_criterion_wins_over_declined(world):
    r = screening(world, answers=world.answers(asd_diagnosis=False), declined=True)
    assert r.get_json()["outcome"] == "not_eligible"


@pytest.mark.parametrize("body,field", [
    ({"answers": {"asd_diagnosis": True}}, "answers.age_in_range"),
    ({"answers": "yes"}, "answers"),
    ({"screened_on": "2026-13-01"}, "screened_on"),
    ({"screened_on": (TODAY + dt.timedelta(days=3)).isoformat()}, "screened_on"),
    ({"declined": "no"}, "declined"),
])
def test_bad_screening_input_names_the_field_and_saves_nothing(world, db, body, field):
    before = counts(db)
    r = screening(world, **body)
    assert r.status_code == 400
    assert field in r.get_json()["error"]["fields"]
    assert counts(db) == before


def test_unknown_criterion_is_refused(world):
    r = screening(world, answers=world.answers(favourite_colour=True))
    assert r.status_code == 400 and "answers.favourite_colour" in r.get_json()["error"]["fields"]


def test_other_sites_coordinator_cannot_screen_or_enroll(world, db):
    before = counts(db)
    r = world.api("POST", "/screenings", "coordinator_no", json={"site": "AT01", "screened_on": TODAY.isoformat(),
                                                                 "answers": world.answers()})
    assert r.status_code == 403 and counts(db) == before
    sc = world.screen("AT01")
    r = world.api("POST", "/participants", "coordinator_no", json=enroll_body(sc.id))
    assert r.status_code == 404 and r.get_json()["error"]["message"] == "No such screening."  # as for an unknown one
    assert db.execute(select(func.count()).select_from(Participant)).scalar() == 0


def enroll_body(screening_id, **kw):
    body = {"screening_id": screening_id, "consent_date": (TODAY - dt.timedelta(days=5)).isoformat(),
            "date_of_birth": (TODAY - dt.timedelta(days=5 * 365)).isoformat(), "sex": "male"}
    body.update(kw)
    return body


def test_enrollment_gives_site_study_ids(world):
    ids = []
    for _ in range(3):
        sc = world.screen("AT01")
        r = world.api("POST", "/participants", "coordinator", json=enroll_body(sc.id))
        assert r.status_code == 201
        assert r.get_json()["status"] == "enrolled" and r.get_json()["site"] == "AT01"
        ids.append(r.get_json()["study_id"])
    assert ids == ["AT01-0001", "AT01-0002", "AT01-0003"]
    sc = world.screen("NO01")
    r = world.api("POST", "/participants", "coordinator_no", json=enroll_body(sc.id))
    assert r.get_json()["study_id"] == "NO01-0001"


@pytest.mark.parametrize("kw,field", [
    ({"consent_date": None}, "consent_date"),
    ({"date_of_birth": (TODAY - dt.timedelta(days=2 * 365)).isoformat()}, "date_of_birth"),
    ({"date_of_birth": (TODAY - dt.timedelta(days=9 * 365)).isoformat()}, "date_of_birth"),
    ({"sex": "x"}, "sex"),
    ({"consent_date": (TODAY + dt.timedelta(days=1)).isoformat()}, "consent_date"),
    ({"consent_date": (TODAY - dt.timedelta(days=400)).isoformat()}, "consent_date"),
    ({"strata": {"weight": "heavy"}}, "strata.weight"),
])
def test_bad_enrollment_input_names_the_field_and_enrolls_nobody(world, db, kw, field):
    sc = world.screen()
    r = world.api("POST", "/participants", "coordinator", json=enroll_body(sc.id, **kw))
    assert r.status_code == 400, r.get_json()
    assert field in r.get_json()["error"]["fields"]
    assert db.execute(select(func.count()).select_from(Participant)).scalar() == 0


def test_only_an_eligible_unused_screening_can_be_enrolled(world, db):
    sc = world.screen(declined=True)
    r = world.api("POST", "/participants", "coordinator", json=enroll_body(sc.id))
    assert r.status_code == 409 and "has the outcome Declined" in r.get_json()["error"]["message"]
    sc = world.screen()
    assert world.api("POST", "/participants", "coordinator", json=enroll_body(sc.id)).status_code == 201
    r = world.api("POST", "/participants", "coordinator", json=enroll_body(sc.id))
    assert r.status_code == 409 and "already been enrolled" in r.get_json()["error"]["message"]
    assert world.api("POST", "/participants", "coordinator", json=enroll_body(99999)).status_code == 404


@pytest.mark.parametrize("born,on,months", [
    ("2020-01-31", "2024-01-30", 47), ("2020-01-31", "2024-01-31", 48), ("2020-02-29", "2024-02-28", 47),
    ("2020-02-29", "2024-02-29", 48), ("2019-12-15", "2026-11-14", 82), ("2019-12-15", "2026-11-15", 83),
])
def test_age_in_months(born, on, months):
    assert age_in_months(dt.date.fromisoformat(born), dt.date.fromisoformat(on)) == months


def test_participant_list_is_scoped_by_site(world):
    world.enroll("AT01")
    world.enroll("NO01")
    at = [p["study_id"] for p in world.api("GET", "/participants", "coordinator").get_json()]
    assert at == ["AT01-0001"]
    other, unknown = (world.api("GET", f"/participants/{s}", "coordinator") for s in ("NO01-0001", "NO01-0002"))
    assert other.status_code == unknown.status_code == 404 and other.data == unknown.data  # an existence oracle
    assert world.api("GET", "/participants?site=NO01", "coordinator").status_code == 403  # the sites are public
    both = [p["study_id"] for p in world.api("GET", "/participants", "manager").get_json()]
    assert both == ["AT01-0001", "NO01-0001"]
    assert world.api("GET", "/participants/ZZ01-0001", "manager").status_code == 404


def test_web_screen_and_enroll(world, app, db):
    from tests.helpers import PASSWORD
    c = app.test_client()
    c.post("/login", data={"email": "coordinator@example.org", "password": PASSWORD})
    form = {"site": "AT01", "screened_on": (TODAY - dt.timedelta(days=3)).isoformat()}
    form.update({f"c_{k}": "yes" if v else "no" for k, v in world.answers().items()})
    r = c.post("/screenings/new", data=form)
    assert r.status_code == 302 and "/enroll" in r.headers["Location"]
    r = c.post(r.headers["Location"], data={"consent_date": (TODAY - dt.timedelta(days=1)).isoformat(),
                                           "date_of_birth": "2099-01-01", "sex": "female"})
    assert r.status_code == 400 and "the protocol requires 48 to 83 months" in r.get_data(as_text=True)
    assert db.execute(select(func.count()).select_from(Participant)).scalar() == 0
    r = c.post(r.request.path, data={"consent_date": (TODAY - dt.timedelta(days=1)).isoformat(),
                                     "date_of_birth": (TODAY - dt.timedelta(days=5 * 365)).isoformat(), "sex": "female"})
    assert r.status_code == 302 and r.headers["Location"].endswith("/participants/AT01-0001")
    page = c.get("/participants/AT01-0001").get_data(as_text=True)
    assert "Not ready" in page and "baseline" in page


def test_consent_may_precede_the_screening_within_the_protocols_limit(world, db):
    """Families often consent first: TIME-A allows a consent up to 30 days before the screening
    (eligibility.consent_before_screening_days); earlier is refused naming the field."""
    sc = world.screen("AT01")  # screened 30 days ago
    before = db.execute(select(func.count()).select_from(Participant)).scalar()
    r = world.api("POST", "/participants", "coordinator", json=enroll_body(sc.id, consent_date=(
        TODAY - dt.timedelta(days=61)).isoformat()))
    assert r.status_code == 400 and set(r.get_json()["error"]["fields"]) == {"consent_date"}
    assert "before the screening" in r.get_json()["error"]["fields"]["consent_date"]
    assert db.execute(select(func.count()).select_from(Participant)).scalar() == before
    r = world.api("POST", "/participants", "coordinator", json=enroll_body(sc.id, consent_date=(
        TODAY - dt.timedelta(days=50)).isoformat()))
    assert r.status_code == 201, r.get_json()


def test_the_enrolment_form_preselects_no_sex(world, app, db):
    from tests.helpers import PASSWORD
    sc = world.screen("AT01")
    c = app.test_client()
    c.post("/login", data={"email": "coordinator@example.org", "password": PASSWORD})
    page = c.get(f"/screenings/{sc.id}/enroll").get_data(as_text=True)
    assert '<option value="">—</option><option value="female">' in page and "selected" not in page.split('name="sex"')[1].split("</select>")[0]
    r = c.post(f"/screenings/{sc.id}/enroll", data={"consent_date": TODAY.isoformat(),
                                                    "date_of_birth": (TODAY - dt.timedelta(days=5 * 365)).isoformat()})
    assert r.status_code == 400 and db.execute(select(func.count()).select_from(Participant)).scalar() == 0


def test_a_screening_carries_the_sites_own_log_number_once(world, db):
    from trial.participants.models import Screening
    r = world.api("POST", "/screenings", "coordinator", json={
        "site": "AT01", "log_number": "SL-2026-041", "screened_on": TODAY.isoformat(), "answers": world.answers()})
    assert r.status_code == 201, r.get_json()
    assert db.get(Screening, r.get_json()["id"]).log_number == "SL-2026-041"
    before = db.execute(select(func.count()).select_from(Screening)).scalar()
    again = world.api("POST", "/screenings", "coordinator", json={
        "site": "AT01", "log_number": "SL-2026-041", "screened_on": TODAY.isoformat(), "answers": world.answers()})
    assert again.status_code == 400 and "already in this site's screening log" in again.get_json()["error"]["fields"]["log_number"]
    assert db.execute(select(func.count()).select_from(Screening)).scalar() == before
    # another site may use the same number; no number is fine at every site, any number of times
    assert world.api("POST", "/screenings", "coordinator_no", json={
        "site": "NO01", "log_number": "SL-2026-041", "screened_on": TODAY.isoformat(),
        "answers": world.answers()}).status_code == 201
    for _ in range(2):
        assert world.api("POST", "/screenings", "coordinator", json={
            "site": "AT01", "screened_on": TODAY.isoformat(), "answers": world.answers()}).status_code == 201


def test_the_log_numbers_index_refuses_what_the_check_did_not_see(world, db, monkeypatch):
    """Two coordinators typing the same number at once both pass the service's check; the unique
    index refuses the second, as the same 400 naming the field, and nothing is saved."""
    from trial.enrollment import service as enrollment
    from trial.participants.models import Screening
    ok = world.api("POST", "/screenings", "coordinator", json={
        "site": "AT01", "log_number": "SL-7", "screened_on": TODAY.isoformat(), "answers": world.answers()})
    assert ok.status_code == 201
    monkeypatch.setattr(enrollment, "_log_number", lambda db, site, value, errors: value)  # the check saw nothing
    before = db.execute(select(func.count()).select_from(Screening)).scalar()
    r = world.api("POST", "/screenings", "coordinator", json={
        "site": "AT01", "log_number": "SL-7", "screened_on": TODAY.isoformat(), "answers": world.answers()})
    assert r.status_code == 400 and set(r.get_json()["error"]["fields"]) == {"log_number"}
    assert db.execute(select(func.count()).select_from(Screening)).scalar() == before


def test_the_bundles_screening_log_carries_the_sites_log_number(world, db):
    from trial.exports.dataset import screening_table
    from trial.protocol.service import current
    from trial.sites.models import Site
    world.api("POST", "/screenings", "coordinator", json={
        "site": "AT01", "log_number": "SL-2026-077", "screened_on": TODAY.isoformat(), "answers": world.answers()})
    world.api("POST", "/screenings", "coordinator", json={
        "site": "AT01", "screened_on": TODAY.isoformat(), "answers": world.answers()})
    sites = {s.id: s.code for s in db.execute(select(Site)).scalars()}
    table = screening_table(current(db).content, sites, [], lambda _name, stmt: db.execute(stmt).all())
    column = [v.name for v in table.vars].index("lognum")
    assert sorted((r[column] or "") for r in table.rows) == ["", "SL-2026-077"]
