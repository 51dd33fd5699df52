"""The role x route matrix, built from the app's URL map: every route has a declared policy, and
every role outside a route's policy gets 403 and sees nothing."""
from __future__ import annotations

import re

import pytest

from tests.helpers import PASSWORD
from trial.policy import ANY, DMC_REACHES, POLICY, PUBLIC

ROLE_USERS = ["coordinator", "therapist", "assessor", "statistician", "monitor", "investigator", "manager", "admin",
              "dmc"]


def _routes(app):
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield rule, method


def test_every_route_has_a_policy(app):
    endpoints = {r.endpoint for r in app.url_map.iter_rules()}
    missing = sorted(endpoints - set(POLICY))
    assert not missing, f"routes without an access policy in trial/policy.py: {missing}"
    stale = sorted(set(POLICY) - endpoints)
    assert not stale, f"policies for routes that do not exist: {stale}"


def test_route_without_policy_is_refused(app, world):
    app.add_url_rule("/sneaky", "sneaky", lambda: "secret")
    c = app.test_client()
    c.post("/login", data={"email": "manager@example.org", "password": PASSWORD})
    r = c.get("/sneaky")
    assert r.status_code == 403 and b"secret" not in r.data


def _fill(rule, ctx, who: str = "assessor") -> str:
    # each role is sent to the instrument it enters (the blinded ADOS for assessors)
    values = {"study_id": ctx["study_id"], "user_id": ctx["user_id"], "code": "AT01",
              "instrument": "srs2" if who == "coordinator" else "ados2",
              "screening_id": ctx["screening_id"], "filename": "style.css", "id": 1,
              "assessment_id": ctx["assessments"]["srs2" if who == "coordinator" else "ados2"], "lock_id": 1,
              "grant_id": 1, "query_id": 1, "ae_id": 1, "notification_id": 1, "ref": "no-such-ref", "session_id": 1, "goal_id": 1,
              "credential_id": 1, "token": "no-such-link", "request_id": 1,
              "survey_id": 1, "cut_id": 1, "language": "de", "job_id": 1,
              "not_done_id": 1, "error_id": 1}
    return rule.build({a: values[a] for a in rule.arguments}, append_unknown=False)[1]


@pytest.fixture()
def matrix_ctx(world):
    import datetime as dt

    from tests.helpers import CLI
    from trial.auth import service as users
    from trial.outcomes.service import record_assessment
    from trial.participants.models import Assessment
    inv = users.create_user(world.db, CLI, "investigator@example.org", "Ivo", PASSWORD, [("investigator", "AT01")])
    world.users["investigator"], world.tokens["investigator"] = inv, users.issue_token(world.db, CLI, inv)
    dmc = users.create_user(world.db, CLI, "dmc@example.org", "Dr Committee", PASSWORD, [("dmc", None)])
    world.users["dmc"], world.tokens["dmc"] = dmc, users.issue_token(world.db, CLI, dmc)
    world.open()
    p = world.ready()
    record_assessment(world.db, CLI, p.study_id, {"visit": "baseline", "instrument": "srs2", "values": {"total_t": 60},
                                                  "performed_on": (dt.date.today() - dt.timedelta(days=20)).isoformat()})
    world.randomize(p, "k1")
    sc = world.screen()
    ids = {a.instrument: a.id for a in world.db.query(Assessment).filter_by(participant_id=p.id)}
    return {"study_id": p.study_id, "user_id": world.users["assessor"].id, "screening_id": sc.id, "assessments": ids}


def _web_client(app, who):
    c = app.test_client()
    r = c.post("/login", data={"email": f"{who}@example.org", "password": PASSWORD})
    assert r.status_code == 302, f"login of {who} failed"
    return c


def _allowed(endpoint: str, policy, who: str) -> bool:
    if who == "dmc" and policy != PUBLIC:  # the committee reaches its own routes only, ANY ones included
        return endpoint in DMC_REACHES and (policy == ANY or "dmc" in policy)
    return policy in (PUBLIC, ANY) or who in policy


def test_role_route_matrix(app, world, matrix_ctx):
    clients = {who: _web_client(app, who) for who in ROLE_USERS}
    checked = 0
    for rule, method in _routes(app):
        if rule.endpoint in ("auth.logout", "auth.password"):
            continue  # ANY; exercised in test_auth (they end the session)
        policy = POLICY[rule.endpoint]
        for who in ROLE_USERS:
            url = _fill(rule, matrix_ctx, who)
            api = url.startswith("/api/")
            if api:
                r = world.api(method, url[len("/api/v1"):], who, json={})
            else:
                r = clients[who].open(url, method=method, data={})
            if who == "dmc" and rule.endpoint == "main.home":  # its home page is the list of cuts
                assert r.status_code == 302 and "/data-cuts" in r.headers["Location"], r.status_code
                checked += 1
                continue
            if _allowed(rule.endpoint, policy, who):
                assert r.status_code != 403, f"{who} refused on {method} {url} ({rule.endpoint})"
            else:
                assert r.status_code == 403, f"{who} got {r.status_code} on {method} {url}, expected 403"
                body = r.get_data(as_text=True)
                assert matrix_ctx["study_id"] not in body and '"arm"' not in body
            checked += 1
        # anonymous
        r = app.test_client().open(url, method=method)
        if policy == PUBLIC:
            assert r.status_code not in (401, 403)
        elif api:
            assert r.status_code == 401 and r.get_json()["error"]["code"] == "unauthorized"
        else:
            assert r.status_code == 302 and "/login" in r.headers["Location"]
    assert checked > 100


def test_forbidden_api_error_has_contract_shape(world):
    r = world.api("POST", "/participants/AT01-0001/randomize", "assessor")
    assert r.status_code == 403
    err = r.get_json()["error"]
    assert err["code"] == "forbidden" and err["message"]


def test_unknown_api_route_is_json_404(world):
    r = world.api("GET", "/nothing-here", "manager")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"


def test_csrf_refused_on_every_state_changing_form(engine, session_factory, world):
    from trial import create_app
    app = create_app({"ENGINE": engine, "SESSION_FACTORY": session_factory, "TESTING": True, "SECRET_KEY": "t"})
    from sqlalchemy import func, select

    from trial.audit.models import AuditRecord
    # (a parent's survey form posts to its own link, the credential, with no session and no token:
    # tests/test_survey_parent_page.py)
    posts = [(rule, m) for rule, m in _routes(app) if m in ("POST", "PUT", "PATCH", "DELETE")
             and not rule.rule.startswith("/api/") and rule.endpoint != "survey_parent.form"]
    assert posts, "no state-changing forms found"
    c = app.test_client()
    page = c.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    # the login form itself refuses a post without the token
    r = c.post("/login", data={"email": "admin@example.org", "password": PASSWORD})
    assert r.status_code == 400
    r = c.post("/login", data={"email": "admin@example.org", "password": PASSWORD, "csrf_token": token})
    assert r.status_code == 302
    s = session_factory()
    before = s.execute(select(func.count()).select_from(AuditRecord)).scalar()
    ctx = {"study_id": "AT01-0001", "user_id": world.users["coordinator"].id, "screening_id": 1,
           "assessments": {"srs2": 1, "ados2": 1}}
    for rule, method in posts:
        url = _fill(rule, ctx)
        r = c.open(url, method=method, data={"name": "x", "reason": "y", "confirm": "y"})
        assert r.status_code == 400, f"{method} {url} accepted a form without a CSRF token ({r.status_code})"
    assert s.execute(select(func.count()).select_from(AuditRecord)).scalar() == before
    s.close()
