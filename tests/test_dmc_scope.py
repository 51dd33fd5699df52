"""The data monitoring committee's scope: a dmc user reaches the data cuts' list, their open and
closed reports and its own recommendation form (and its own account), and nothing else. Every
route the app registers is called as a dmc user, on the web and over the API, with every method:
only its own answer 2xx; every other one is refused (403; the home page sends it to the cuts)."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.helpers import PASSWORD
from tests.test_interim import add_dmc, code_of, simulate, take_cut, web_login
from trial.participants.models import Assessment
from trial.policy import DMC_REACHES, POLICY, PUBLIC

ACCOUNT = {"auth.logout", "auth.password", "auth.language", "auth.keepalive", "mfa.enrol", "api.me", "static"}
OWN = DMC_REACHES - ACCOUNT


@pytest.fixture()
def dmc_world(world):
    add_dmc(world)
    world.open()
    kids, _ = simulate(world, 6, -2.0)
    cut_id = take_cut(world)
    aid = world.db.execute(select(Assessment.id).limit(1)).scalar()
    world.db.commit()
    ctx = {"study_id": kids[0].study_id, "assessment_id": aid, "cut_id": cut_id, "user_id": world.users["manager"].id,
           "code": "AT01", "instrument": "ados2", "token": "no-such-link", "filename": "app.css"}
    return world, cut_id, ctx


def _url(rule, ctx) -> str:
    values = {a: ctx.get(a, 1) for a in rule.arguments}
    return rule.build(values, append_unknown=False)[1]


def _bodies(endpoint: str, cut_id: int, member=None) -> dict:
    """A recommendation's body: signed with the member's password and a current code (the API's the
    current step's, the page's the next one's: each code is taken once; the sign-in took the last one)."""
    if endpoint == "api.recommend":
        return {"decision": "continue", "text": "Continue as planned.", "password": PASSWORD, "code": code_of(member, 0)}
    if endpoint == "interim.recommend":
        return {"decision": "continue", "text": "Continue as planned.", "password": PASSWORD, "code": code_of(member, 1)}
    return {}


def test_the_dmc_reaches_its_own_routes_and_nothing_else(dmc_world):
    world, cut_id, ctx = dmc_world
    app = world.app
    member = world.users["dmc"]
    web = web_login(world, "dmc", -1)
    answers: dict[tuple[str, str], int] = {}
    rules = sorted(app.url_map.iter_rules(), key=lambda r: (r.endpoint == "auth.logout", r.endpoint))
    for rule in rules:
        if POLICY.get(rule.endpoint) == PUBLIC:
            continue  # public to anyone (the login page, a parent's survey link, the liveness check)
        url = _url(rule, ctx)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            if rule.endpoint == "auth.logout":
                continue  # (its own; it would end the crawl's session)
            if url.startswith("/api/"):
                r = world.api(method, url[len("/api/v1"):], "dmc", json=_bodies(rule.endpoint, cut_id, member)
                              if method in ("POST", "PUT", "PATCH") else None)
            elif method == "GET":
                r = web.get(url)
            else:
                r = web.open(url, method=method, data=_bodies(rule.endpoint, cut_id, member))
            answers[(rule.endpoint, method)] = r.status_code
    assert len(answers) > 150, len(answers)
    reached = {k for k, status in answers.items() if 200 <= status < 300}
    assert {e for e, _ in reached} <= DMC_REACHES, sorted(reached)
    others = {k: s for k, s in answers.items() if k[0] not in DMC_REACHES}
    wrong = {k: s for k, s in others.items() if s != 403 and k != ("main.home", "GET")}
    assert not wrong, wrong
    assert answers[("main.home", "GET")] == 302
    # and its own answer
    for endpoint in ("api.list_data_cuts", "api.get_data_cut", "api.open_report_pdf", "api.closed_report_pdf",
                     "api.closed_report_json", "interim.cuts", "interim.open_report", "interim.closed_report",
                     "interim.recommendation"):
        assert answers[(endpoint, "GET")] == 200, endpoint
    assert answers[("api.recommend", "POST")] == 201
    assert answers[("interim.recommend", "POST")] == 302  # signed, back to the list
    from sqlalchemy import func

    from trial.interim.models import DmcRecommendation
    assert world.db.execute(select(func.count()).select_from(DmcRecommendation)).scalar() == 2  # both signed
    assert OWN <= {e for e, _ in answers}  # every route of its own was called


def test_the_dmc_home_page_is_its_list_of_cuts(dmc_world):
    world, cut_id, _ = dmc_world
    web = web_login(world, "dmc")
    home = web.get("/")
    assert home.status_code == 302 and home.headers["Location"].endswith("/data-cuts")
    page = web.get("/data-cuts")
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert "First interim look" in body and f"/data-cuts/{cut_id}/closed-report.pdf" in body
    for leak in ("AT01-0", "NO01-0", "/participants", "/audit"):
        assert leak not in body, leak


def test_no_other_role_sees_the_closed_report_link(dmc_world):
    world, cut_id, _ = dmc_world
    for role in ("manager", "statistician"):
        web = world.app.test_client()
        assert web.post("/login", data={"email": f"{role}@example.org", "password": PASSWORD}).status_code == 302
        body = web.get("/data-cuts").get_data(as_text=True)
        assert "open-report.pdf" in body and "closed-report" not in body
        assert web.get(f"/data-cuts/{cut_id}/closed-report.pdf").status_code == 403
        assert web.get(f"/data-cuts/{cut_id}/recommendation").status_code == 403
