"""Bad input gets 400 naming the field and changes nothing, never a 500: integers beyond the
schema's (and beyond 64 bits) in paths, queries and bodies; NUL and other control characters in
text; impossible and implausible dates; the admin's user form saved with a role the user already
holds. Every error body carries ``fields``."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from tests.helpers import CLI, PASSWORD
from trial.audit.models import AuditRecord
from trial.auth import service as users
from trial.auth.models import User
from trial.participants.models import Participant, Screening
from trial.timeline import today

HUGE = 2**70
BIG = 2**31  # one past the schema's integers


def state(db):
    db.expire_all()
    return tuple(db.execute(select(func.count()).select_from(m)).scalar() for m in (Screening, Participant, AuditRecord))


def bad(r, field):
    body = r.get_json()
    assert r.status_code == 400, (r.status_code, body)
    assert field in body["error"]["fields"], body
    assert field in body["error"]["message"] or body["error"]["message"]
    return body["error"]


def web(app, who):
    c = app.test_client()
    assert c.post("/login", data={"email": f"{who}@example.org", "password": PASSWORD}).status_code == 302
    return c


@pytest.mark.parametrize("value", [HUGE, BIG, -1, 0, 2**63])
def test_screening_id_out_of_range_is_400(world, db, value):
    before = state(db)
    r = world.api("POST", "/participants", "coordinator", json={"screening_id": value, "consent_date": "2026-11-01",
                                                                 "date_of_birth": "2021-06-01", "sex": "female"})
    bad(r, "screening_id")
    assert state(db) == before


@pytest.mark.parametrize("path,who,method,body", [
    (f"/assessments/{HUGE}/corrections", "assessor", "POST", {"values": {"rrb": 2}, "reason": "typo"}),
    (f"/assessments/{BIG}/corrections", "assessor", "POST", {"values": {"rrb": 2}, "reason": "typo"}),
    (f"/locks/{HUGE}/bundle.zip", "manager", "GET", None),
    (f"/locks/{HUGE}", "manager", "DELETE", {"reason": "x", "password": PASSWORD}),
    (f"/grants/{HUGE}/approve", "manager", "POST", {"password": PASSWORD, "meaning": "ok"}),
])
def test_path_ids_out_of_range_are_400_naming_the_parameter(world, db, path, who, method, body):
    before = state(db)
    r = world.api(method, path, who, json=body)
    err = r.get_json()["error"]
    assert r.status_code == 400 and set(err["fields"]) & {"assessment_id", "lock_id", "grant_id"}, (r.status_code, err)
    assert state(db) == before


def test_web_paths_and_queries_out_of_range_are_400(world, app):
    c = web(app, "assessor")
    r = c.get(f"/assessments/{HUGE}/correct")
    assert r.status_code == 400 and "assessment_id" in r.get_data(as_text=True)
    m = web(app, "manager")
    for q in (str(HUGE), "-3", "0", "abc", "9" * 400):
        r = m.get(f"/audit/?page={q}")
        assert r.status_code == 400 and "page" in r.get_data(as_text=True), q
    assert m.get("/audit/?page=2").status_code == 200


@pytest.mark.parametrize("text", ["cut\x00here", "bell\x07", "escape\x1b[31m", "del\x7f", "\ud800"])
def test_control_characters_in_text_are_400_naming_the_field(world, db, text):
    before = state(db)
    r = world.api("POST", "/screenings", "coordinator", json={"site": "AT01", "screened_on": today().isoformat(),
                                                              "answers": world.answers(), "other_reason": text})
    bad(r, "other_reason")
    assert state(db) == before


def test_control_characters_anywhere_in_a_body_are_named_by_their_path(world, db):
    r = world.api("POST", "/screenings", "coordinator", json={"site": "AT\x0001", "screened_on": today().isoformat(),
                                                              "answers": {**world.answers(), "x\x01": True}})
    fields = r.get_json()["error"]["fields"]
    assert r.status_code == 400 and "site" in fields and "answers.x\x01" in fields


def test_tabs_and_line_breaks_are_text_not_control(world, db):
    r = world.api("POST", "/screenings", "coordinator", json={"site": "AT01", "screened_on": today().isoformat(),
                                                              "answers": world.answers(),
                                                              "other_reason": "line one\nline two\tand a tab"})
    assert r.status_code == 201
    db.expire_all()
    assert db.get(Screening, r.get_json()["id"]).other_reason == "line one\nline two\tand a tab"


def test_web_forms_refuse_control_characters(world, app, db):
    c = web(app, "coordinator")
    before = state(db)
    answers = {f"c_{k}": "yes" if v else "no" for k, v in world.answers().items()}
    r = c.post("/screenings/new", data={"site": "AT01", "screened_on": today().isoformat(), **answers,
                                        "other_reason": "nul\x00byte"})
    assert r.status_code == 400 and "other_reason" in r.get_data(as_text=True)
    assert state(db) == before


def test_control_characters_in_query_and_path_are_400(world):
    r = world.api("GET", "/participants?site=AT%0001", "manager")
    assert r.status_code == 400 and "site" in r.get_json()["error"]["fields"]
    r = world.api("GET", "/participants/AT01%00-0001", "manager")
    assert r.status_code == 400 and "study_id" in r.get_json()["error"]["fields"]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_numbers_are_400(world, db, value):
    import json
    p = world.ready()
    body = json.dumps({"visit": "baseline", "instrument": "srs2", "performed_on": today().isoformat(),
                       "values": {"total_t": value}})  # NaN / Infinity: not JSON, but Python would read them
    r = world.app.test_client().post(f"/api/v1/participants/{p.study_id}/assessments", data=body,
                                     headers={**world.headers("coordinator"), "Content-Type": "application/json"})
    assert r.status_code == 400 and "values.total_t" in r.get_json()["error"]["fields"]


# --- dates --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value,why", [
    ("1900-01-01", "years ago"), ("2016-01-01", "years ago"), ("2999-01-01", "in the future"),
    ("2024-02-30", "not a date"), ("20240101", "not a date"), ("2024-W01-1", "not a date"), ("", "required"),
])
def test_implausible_screening_dates_are_400(world, db, value, why):
    before = state(db)
    r = world.api("POST", "/screenings", "coordinator", json={"site": "AT01", "screened_on": value,
                                                              "answers": world.answers()})
    assert why in bad(r, "screened_on")["fields"]["screened_on"]
    assert state(db) == before


def test_a_date_of_birth_outside_the_protocols_ages_is_400(world, db):
    sc = world.screen()
    before = state(db)
    for born in ("1896-05-01", (today() - dt.timedelta(days=365)).isoformat(), (today() + dt.timedelta(days=3)).isoformat()):
        r = world.api("POST", "/participants", "coordinator", json={"screening_id": sc.id, "consent_date": today().isoformat(),
                                                                     "date_of_birth": born, "sex": "male"})
        assert "months" in bad(r, "date_of_birth")["fields"]["date_of_birth"]
    assert state(db) == before


def test_a_consent_before_the_screening_is_400(world, db):
    """Earlier than the protocol's consent_before_screening_days (TIME-A: 30) before the screening."""
    sc = world.screen()
    r = world.api("POST", "/participants", "coordinator", json={
        "screening_id": sc.id, "consent_date": (sc.screened_on - dt.timedelta(days=31)).isoformat(),
        "date_of_birth": "2021-06-01", "sex": "male"})
    assert "before the screening" in bad(r, "consent_date")["fields"]["consent_date"]


def test_session_and_event_dates_ten_years_back_are_refused(world, db):
    p = world.ready()
    r = world.api("POST", f"/participants/{p.study_id}/events", "coordinator",
                  json={"type": "withdrawn", "on": "2001-01-01", "reason": "x"})
    assert "years ago" in bad(r, "on")["fields"]["on"]


# --- the admin's user form -------------------------------------------------------------------------------

def test_saving_the_user_form_with_roles_already_held_works_and_deactivates(world, app, db):
    u = world.users["assessor"]
    c = web(app, "admin")
    r = c.post(f"/admin/users/{u.id}", data={"name": "Assessor", "roles": "assessor@AT01", "reason": "left the trial"})
    assert r.status_code == 302, r.get_data(as_text=True)
    db.expire_all()
    u = db.get(User, u.id)
    assert not u.active and u.role_names() == {"assessor"}
    # the same form again, reactivating: still no 500, the role kept once
    r = c.post(f"/admin/users/{u.id}", data={"name": "Assessor", "roles": "assessor@AT01, assessor@AT01",
                                             "active": "y", "reason": "back"})
    assert r.status_code == 302
    db.expire_all()
    assert db.get(User, u.id).active and len(db.get(User, u.id).roles) == 1


def test_set_roles_keeps_held_roles_and_adds_new_ones(world, db):
    u = world.users["assessor"]
    users.set_roles(db, CLI, u, [("assessor", "AT01"), ("assessor", "NO01")], reason="second site")
    db.commit()
    db.expire_all()
    assert sorted((r.role, r.site_id is not None) for r in db.get(User, u.id).roles) == [("assessor", True)] * 2


def test_every_error_body_has_fields(world, app):
    for r in (world.api("GET", "/participants/NOPE", "manager"), world.api("GET", "/me", None),
              world.api("POST", "/screenings", "assessor", json={}), world.api("GET", "/nowhere", "manager"),
              world.api("POST", "/screenings", "coordinator", json=[1, 2])):
        err = r.get_json()["error"]
        assert isinstance(err["fields"], dict) and err["code"] and err["message"], err
