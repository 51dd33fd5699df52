"""Sites: created and edited by admins (service and admin web pages), every change audited; bad
input is refused with a clear message and changes nothing; GET /api/v1/sites for every role."""
from __future__ import annotations

import html

import pytest
from sqlalchemy import func, select

from tests.helpers import CLI, PASSWORD, ROLES
from trial.audit.models import AuditRecord
from trial.errors import Conflict, Forbidden, NotFound, ValidationError
from trial.sites import service as sites
from trial.sites.models import Site

NON_ADMINS = [r for r in ROLES if r != "admin"]


def state(db) -> tuple:
    """Every site's values and the audit trail length: compared before and after a refused change."""
    db.expire_all()
    rows = db.execute(select(Site).order_by(Site.code)).scalars().all()
    return (tuple((s.code, s.name, s.country, s.timezone, s.target, s.is_open) for s in rows),
            db.execute(select(func.count()).select_from(AuditRecord)).scalar_one())


def site_audit(db, code: str, action: str | None = None) -> list[AuditRecord]:
    q = select(AuditRecord).where(AuditRecord.entity == "site", AuditRecord.entity_id == code)
    if action:
        q = q.where(AuditRecord.action == action)
    return db.execute(q.order_by(AuditRecord.seq)).scalars().all()


def get_site(db, code: str) -> Site:
    db.expire_all()
    return db.execute(select(Site).where(Site.code == code)).scalar_one()


# --- service ------------------------------------------------------------------------------------

def test_create_site_is_audited(world):
    admin = world.users["admin"]
    site = sites.create_site(world.db, admin, {"code": "dk01", "name": " Aalborg ", "country": "dk",
                                               "timezone": "Europe/Copenhagen", "target": "30"})
    world.db.commit()
    assert (site.code, site.name, site.country, site.timezone, site.target, site.is_open) == (
        "DK01", "Aalborg", "DK", "Europe/Copenhagen", 30, True)

    recs = site_audit(world.db, "DK01")
    assert {r.field: (r.old, r.new) for r in recs} == {
        "code": (None, "DK01"), "name": (None, "Aalborg"), "country": (None, "DK"),
        "timezone": (None, "Europe/Copenhagen"), "target": (None, "30"), "is_open": (None, "true")}
    assert all(r.action == "create" and r.actor == admin.email and r.actor_id == admin.id for r in recs)


def test_create_site_defaults(world):
    site = sites.create_site(world.db, CLI, {"code": "SE01", "name": "Uppsala"})
    assert (site.country, site.timezone, site.target, site.is_open) == (None, "UTC", 0, True)


def test_update_site_audits_each_changed_field_with_the_reason(world):
    admin = world.users["admin"]
    sites.update_site(world.db, admin, "AT01", {"name": "Vienna General", "target": 55, "country": "AT",
                                                "timezone": "Europe/Vienna", "is_open": True},
                      reason="Recruitment target raised by the steering committee")
    world.db.commit()
    site = get_site(world.db, "AT01")
    assert (site.name, site.target, site.timezone) == ("Vienna General", 55, "Europe/Vienna")

    recs = site_audit(world.db, "AT01", "update")
    assert {r.field: (r.old, r.new) for r in recs} == {
        "name": ("Vienna", "Vienna General"), "target": ("40", "55"), "timezone": ("UTC", "Europe/Vienna")}
    assert all(r.reason == "Recruitment target raised by the steering committee" and r.actor == admin.email
               for r in recs)


def test_update_site_without_a_change_writes_no_audit_record(world):
    before = state(world.db)
    sites.update_site(world.db, world.users["admin"], "NO01", {"name": "Bergen", "target": 40}, reason="no-op")
    world.db.commit()
    assert state(world.db) == before


def test_closing_a_site_is_audited(world):
    sites.update_site(world.db, CLI, "NO01", {"is_open": False}, reason="Site closed to recruitment")
    world.db.commit()
    assert get_site(world.db, "NO01").is_open is False
    [rec] = site_audit(world.db, "NO01", "update")
    assert (rec.field, rec.old, rec.new, rec.reason) == ("is_open", "true", "false", "Site closed to recruitment")


BAD_SITES = {
    "bad-code": ({"code": "A1"}, ValidationError, "code", "two letters and two digits"),
    "digits-code": ({"code": "1234"}, ValidationError, "code", "two letters and two digits"),
    "long-code": ({"code": "ATX01"}, ValidationError, "code", "two letters and two digits"),
    "bad-country": ({"country": "AUT"}, ValidationError, "country", "two-letter ISO 3166"),
    "digit-country": ({"country": "A1"}, ValidationError, "country", "two-letter ISO 3166"),
    "unknown-timezone": ({"timezone": "Mars/Olympus"}, ValidationError, "timezone", "unknown time zone 'Mars/Olympus'"),
    "path-timezone": ({"timezone": "../etc/passwd"}, ValidationError, "timezone", "unknown time zone"),
    "negative-target": ({"target": -1}, ValidationError, "target", "0 or more"),
    "text-target": ({"target": "many"}, ValidationError, "target", "whole number"),
    "blank-name": ({"name": "   "}, ValidationError, "name", "required"),
    "long-name": ({"name": "x" * 201}, ValidationError, "name", "at most 200"),
    "duplicate-code": ({"code": "at01"}, Conflict, "code", "already exists"),
}


@pytest.mark.parametrize("case", list(BAD_SITES))
def test_create_site_rejects_bad_input(world, case):
    overrides, error, field, fragment = BAD_SITES[case]
    data = {"code": "DK01", "name": "Aalborg", "country": "DK", "timezone": "Europe/Copenhagen", "target": 30}
    data.update(overrides)
    before = state(world.db)
    with pytest.raises(error) as exc:
        sites.create_site(world.db, world.users["admin"], data)
    assert fragment in exc.value.fields[field]
    assert fragment in exc.value.message
    world.db.rollback()
    assert state(world.db) == before


@pytest.mark.parametrize("tz", ["America", "Europe"])
def test_a_time_zone_directory_is_an_unknown_time_zone(world, tz):
    before = state(world.db)
    with pytest.raises(ValidationError) as exc:
        sites.create_site(world.db, CLI, {"code": "DK01", "name": "Aalborg", "timezone": tz})
    assert "timezone" in exc.value.fields
    world.db.rollback()
    assert state(world.db) == before


@pytest.mark.parametrize("case", [c for c in BAD_SITES if "code" not in BAD_SITES[c][0]])
def test_update_site_rejects_bad_input(world, case):
    overrides, error, field, fragment = BAD_SITES[case]
    data = {"name": "Vienna General", "target": 55}
    data.update(overrides)
    before = state(world.db)
    with pytest.raises(error) as exc:
        sites.update_site(world.db, world.users["admin"], "AT01", data, reason="test")
    assert fragment in exc.value.fields[field]
    world.db.rollback()
    assert state(world.db) == before


def test_update_of_an_unknown_site(world):
    with pytest.raises(NotFound, match="ZZ99"):
        sites.update_site(world.db, CLI, "ZZ99", {"name": "Nowhere"})


@pytest.mark.parametrize("who", NON_ADMINS)
def test_only_admins_create_and_edit_sites(world, who):
    before = state(world.db)
    with pytest.raises(Forbidden):
        sites.create_site(world.db, world.users[who], {"code": "DK01", "name": "Aalborg"})
    with pytest.raises(Forbidden):
        sites.update_site(world.db, world.users[who], "AT01", {"name": "Hijacked"})
    world.db.rollback()
    assert state(world.db) == before


# --- admin web pages ----------------------------------------------------------------------------

def login(client, who: str) -> None:
    r = client.post("/login", data={"email": f"{who}@example.org", "password": PASSWORD})
    assert r.status_code == 302, r.get_data(as_text=True)


def page_text(r) -> str:
    return html.unescape(r.get_data(as_text=True))


SITE_FORM = {"code": "DK01", "name": "Aalborg", "country": "DK", "timezone": "Europe/Copenhagen", "target": "30",
             "is_open": "y"}


def test_admin_lists_sites_and_sees_the_form(world, client):
    login(client, "admin")
    r = client.get("/admin/sites")
    assert r.status_code == 200
    body = page_text(r)
    assert "AT01" in body and "Vienna" in body and "NO01" in body and "Bergen" in body
    assert 'href="/admin/sites/new"' in body
    r = client.get("/admin/sites/new")
    assert r.status_code == 200 and 'name="code"' in page_text(r)
    r = client.get("/admin/sites/AT01")
    assert r.status_code == 200 and 'value="Vienna"' in page_text(r)


def test_admin_creates_a_site_on_the_web(world, client):
    login(client, "admin")
    r = client.post("/admin/sites/new", data=SITE_FORM)
    assert r.status_code == 302 and r.headers["Location"].endswith("/admin/sites")
    site = get_site(world.db, "DK01")
    assert (site.name, site.country, site.timezone, site.target, site.is_open) == (
        "Aalborg", "DK", "Europe/Copenhagen", 30, True)
    recs = site_audit(world.db, "DK01", "create")
    assert {r.field for r in recs} == {"code", "name", "country", "timezone", "target", "is_open"}
    assert all(r.actor == "admin@example.org" for r in recs)
    assert "Site DK01 created" in page_text(client.get("/admin/sites"))


@pytest.mark.parametrize("overrides, fragment", [
    ({"code": "1234"}, "two letters and two digits"),
    ({"code": "A1"}, "must be exactly 4 characters"),
    ({"country": "A1"}, "two-letter ISO 3166"),
    ({"country": "AUT"}, "must be exactly 2 characters"),
    ({"timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
    ({"target": "-1"}, "at least 0"),
    ({"target": "many"}, "Not a valid integer"),
    ({"name": ""}, "This field is required"),
    ({"code": "AT01"}, "A site with code AT01 already exists"),
], ids=["digits-code", "short-code", "bad-country", "long-country", "unknown-timezone", "negative-target",
        "text-target", "blank-name", "duplicate-code"])
def test_web_site_form_rejects_bad_input(world, client, overrides, fragment):
    login(client, "admin")
    before = state(world.db)
    r = client.post("/admin/sites/new", data={**SITE_FORM, **overrides})
    assert r.status_code == 400
    assert fragment in page_text(r)
    assert state(world.db) == before


def test_admin_edits_a_site_on_the_web_with_a_reason(world, client):
    login(client, "admin")
    r = client.post("/admin/sites/AT01", data={"code": "AT01", "name": "Vienna General", "country": "AT",
                                               "timezone": "Europe/Vienna", "target": "50", "is_open": "y",
                                               "reason": "Hospital merger"})
    assert r.status_code == 302, page_text(r)
    site = get_site(world.db, "AT01")
    assert (site.name, site.timezone, site.target, site.is_open) == ("Vienna General", "Europe/Vienna", 50, True)
    recs = site_audit(world.db, "AT01", "update")
    assert {r.field: (r.old, r.new) for r in recs} == {
        "name": ("Vienna", "Vienna General"), "timezone": ("UTC", "Europe/Vienna"), "target": ("40", "50")}
    assert all(r.reason == "Hospital merger" and r.actor == "admin@example.org" for r in recs)


def test_the_site_code_cannot_be_changed_on_the_edit_page(world, client):
    login(client, "admin")
    r = client.post("/admin/sites/AT01", data={"code": "XX99", "name": "Vienna", "country": "AT",
                                               "timezone": "UTC", "target": "40", "is_open": "y", "reason": "x"})
    assert r.status_code == 302
    world.db.expire_all()
    assert world.db.execute(select(Site.code).order_by(Site.code)).scalars().all() == ["AT01", "NO01"]


@pytest.mark.parametrize("overrides, fragment", [
    ({"timezone": "Mars/Olympus"}, "unknown time zone"),
    ({"target": "-5"}, "at least 0"),
    ({"country": "A1"}, "two-letter ISO 3166"),
    ({"name": ""}, "This field is required"),
], ids=["unknown-timezone", "negative-target", "bad-country", "blank-name"])
def test_web_site_edit_rejects_bad_input(world, client, overrides, fragment):
    login(client, "admin")
    before = state(world.db)
    data = {"code": "AT01", "name": "Vienna General", "country": "AT", "timezone": "UTC", "target": "40",
            "is_open": "y", "reason": "test", **overrides}
    r = client.post("/admin/sites/AT01", data=data)
    assert r.status_code == 400
    assert fragment in page_text(r)
    assert state(world.db) == before


def test_web_edit_of_an_unknown_site_is_404(world, client):
    login(client, "admin")
    assert client.get("/admin/sites/ZZ99").status_code == 404


@pytest.mark.parametrize("who", NON_ADMINS)
def test_non_admins_get_403_on_the_site_pages(world, client, who):
    login(client, who)
    before = state(world.db)
    for path in ("/admin/sites", "/admin/sites/new", "/admin/sites/AT01"):
        r = client.get(path)
        assert r.status_code == 403, path
        body = page_text(r)
        assert 'name="code"' not in body and "<form" not in body.split("<main", 1)[1]  # only the logout form
    assert client.post("/admin/sites/new", data=SITE_FORM).status_code == 403
    assert client.post("/admin/sites/AT01", data={**SITE_FORM, "code": "AT01", "name": "Hijacked",
                                                  "reason": "x"}).status_code == 403
    assert state(world.db) == before
    home = client.get("/")
    assert home.status_code == 200 and "/admin/sites" not in page_text(home)


def test_anonymous_users_are_sent_to_the_login_page(world, client):
    for path in ("/admin/sites", "/admin/sites/new", "/admin/sites/AT01"):
        r = client.get(path)
        assert r.status_code == 302 and "/login" in r.headers["Location"]


# --- GET /api/v1/sites --------------------------------------------------------------------------

@pytest.mark.parametrize("who", list(ROLES))
def test_api_sites_for_every_role(world, who):
    r = world.api("GET", "/sites", who)
    assert r.status_code == 200
    body = r.get_json()
    assert [{k: s[k] for k in ("code", "name", "country", "target")} for s in body] == [
        {"code": "AT01", "name": "Vienna", "country": "AT", "target": 40},
        {"code": "NO01", "name": "Bergen", "country": "NO", "target": 40}]


def test_api_sites_shows_changes(world):
    sites.create_site(world.db, CLI, {"code": "DK01", "name": "Aalborg", "target": 12})
    sites.update_site(world.db, CLI, "NO01", {"target": 44}, reason="more funding")
    world.db.commit()
    body = world.api("GET", "/sites", "coordinator").get_json()
    assert [(s["code"], s["country"], s["target"]) for s in body] == [("AT01", "AT", 40), ("DK01", None, 12),
                                                                        ("NO01", "NO", 44)]


def test_api_sites_needs_a_token(world):
    r = world.api("GET", "/sites", None)
    assert r.status_code == 401
    assert r.get_json()["error"]["code"] == "unauthorized"



# --- a site's languages (issue 28) ---------------------------------------------------------------

@pytest.mark.parametrize("given, fragment", [
    (["de", "sv"], "'sv': not a language of the system (one of en, de, it, nb, pt_BR, ko, he)"),
    ("de, xx", "'xx': not a language of the system"),
    (["de", "en", "de"], "de given more than once"),
    ([], "must be a list of languages, the default first"),
    ("de", None), (7, "must be a list of languages"), ([1], "must be a list of languages"),
], ids=["unknown", "unknown-in-text", "twice", "empty", "one", "number", "not-codes"])
def test_site_languages_are_checked_against_the_systems_languages(world, given, fragment):
    before = state(world.db)
    if fragment is None:
        sites.update_site(world.db, CLI, "AT01", {"languages": given}, reason="test")
        assert get_site(world.db, "AT01").languages == ["de"]
        return
    with pytest.raises(ValidationError) as exc:
        sites.update_site(world.db, CLI, "AT01", {"languages": given}, reason="test")
    assert fragment in exc.value.fields["languages"]
    world.db.rollback()
    assert state(world.db) == before and get_site(world.db, "AT01").languages is None


def test_site_languages_are_stored_in_order_and_audited(world):
    site = sites.create_site(world.db, CLI, {"code": "CH01", "name": "Zürich", "languages": "de, it, pt-BR"})
    world.db.commit()
    assert get_site(world.db, "CH01").languages == ["de", "it", "pt_BR"]
    assert {r.field: r.new for r in site_audit(world.db, "CH01", "create")}["languages"] == '["de","it","pt_BR"]'
    sites.update_site(world.db, world.users["admin"], site.code, {"languages": ["it", "de"]}, reason="Ticino families")
    world.db.commit()
    [rec] = site_audit(world.db, "CH01", "update")
    assert (rec.field, rec.old, rec.new, rec.reason) == ("languages", '["de","it","pt_BR"]', '["it","de"]',
                                                          "Ticino families")


def test_admin_edits_a_sites_languages_on_the_web(world, client):
    sites.update_site(world.db, CLI, "AT01", {"languages": ["de", "en"]})
    world.db.commit()
    login(client, "admin")
    r = client.get("/admin/sites/AT01")
    assert 'name="languages"' in page_text(r) and 'value="de, en"' in page_text(r)
    assert '<span lang="de">Deutsch</span>, <span lang="en">English</span>' in page_text(client.get("/admin/sites"))
    assert "pt_BR = Português (Brasil)" in page_text(r)
    r = client.post("/admin/sites/AT01", data={"code": "AT01", "name": "Vienna", "country": "AT", "timezone": "UTC",
                                               "target": "40", "is_open": "y", "languages": "en, de, he",
                                               "reason": "Families from Israel"})
    assert r.status_code == 302, page_text(r)
    assert get_site(world.db, "AT01").languages == ["en", "de", "he"]
    [rec] = [r for r in site_audit(world.db, "AT01", "update") if r.reason == "Families from Israel"]
    assert (rec.field, rec.old, rec.new) == ("languages", '["de","en"]', '["en","de","he"]')
    r = client.post("/admin/sites/new", data={**SITE_FORM, "languages": "nb"})
    assert r.status_code == 302 and get_site(world.db, "DK01").languages == ["nb"]


def test_web_site_form_refuses_an_unknown_language_in_the_readers_language(world, client):
    login(client, "admin")
    before = state(world.db)
    r = client.post("/admin/sites/AT01", data={"code": "AT01", "name": "Vienna", "country": "AT", "timezone": "UTC",
                                               "target": "40", "is_open": "y", "languages": "de, sv", "reason": "x"})
    assert r.status_code == 400
    body = page_text(r)
    assert "'sv': not a language of the system (one of en, de, it, nb, pt_BR, ko, he)" in body
    assert 'aria-invalid="true"' in body.split('name="languages"')[0].rsplit("<input", 1)[1] + body.split(
        'name="languages"')[1].split(">")[0]
    assert state(world.db) == before and get_site(world.db, "AT01").languages is None
    r = client.post("/admin/sites/new", data={**SITE_FORM, "languages": "xx"})
    assert r.status_code == 400 and "'xx': not a language of the system" in page_text(r)
    assert state(world.db) == before


def test_api_sites_carry_their_languages(world):
    sites.update_site(world.db, CLI, "NO01", {"languages": ["nb", "en"]})
    world.db.commit()
    body = world.api("GET", "/sites", "assessor").get_json()
    assert {s["code"]: s["languages"] for s in body} == {"AT01": [], "NO01": ["nb", "en"]}


def test_the_consent_form_defaults_to_the_first_language_the_admin_set(world, client):
    """The admin's edit reaches the consent form: its language preselected is the site's first."""
    import datetime as dt
    sc = world.screen()
    r = world.api("POST", "/participants", "coordinator", json={
        "screening_id": sc.id, "date_of_birth": (dt.date.today() - dt.timedelta(days=5 * 365)).isoformat(),
        "sex": "female", "consent_date": dt.date.today().isoformat()})
    assert r.status_code == 201, r.get_json()
    sid = r.get_json()["study_id"]
    login(client, "admin")
    r = client.post("/admin/sites/AT01", data={"code": "AT01", "name": "Vienna", "country": "AT", "timezone": "UTC",
                                               "target": "40", "is_open": "y", "languages": "he, de",
                                               "reason": "families from Israel"})
    assert r.status_code == 302
    client.post("/logout")
    login(client, "coordinator")
    body = page_text(client.get(f"/participants/{sid}/consents/new"))
    assert '<option selected value="he">' in body or '<option value="he" selected>' in body, body
