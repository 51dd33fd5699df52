"""Parents' surveys on the coordinator's pages (issue 28): the participant page's "Surveys" section
(labels, language, status in words, dates, reminders, expiry; nothing for other roles), the send
form (parent-answered instruments only, the site's first language by default) and the link and QR
code shown after sending, the printable QR code page (inline SVG, the link under it, print CSS, no
external asset), resend and revoke (POST with CSRF, asked first), the provenance of an assessment a
parent entered and the coordinator's correction of it with a reason."""
from __future__ import annotations

import datetime as dt
import re

import pytest
from sqlalchemy import func, select

from tests.helpers import PASSWORD, backdate_randomization, randomized_before
from trial.audit.models import AuditRecord
from trial.consent.models import Survey
from trial.participants.models import Assessment
from trial.surveys import service as surveys

TODAY = dt.date.today()
SEED = bytes(range(32))


def login(app, who):
    c = app.test_client()
    assert c.post("/login", data={"email": f"{who}@example.org", "password": PASSWORD}).status_code == 302
    return c


@pytest.fixture()
def child(world, db):
    world.open(SEED)
    r = TODAY - dt.timedelta(days=60)
    p, _ = randomized_before(world, db, r)
    backdate_randomization(db, dt.datetime.combine(r, dt.time(10, 0)), p.id)
    return p


FORM = {"instrument": "srs2", "visit": "month2", "language": "de", "email": "", "first_name": "Anna"}


def section(page: str) -> str:
    return page.split('id="surveys"')[1].split("</details>")[0] if 'id="surveys"' in page else ""


def send(c, p, **kw):
    r = c.post(f"/participants/{p.study_id}/surveys", data={**FORM, **kw})
    assert r.status_code == 302, r.get_data(as_text=True)[:3000]
    return r


def test_the_coordinator_sends_a_survey_and_sees_its_link_and_qr_code_once(app, world, db, child):
    c = login(app, "coordinator")
    page = c.get(f"/participants/{child.study_id}").get_data(as_text=True)
    part = section(page)
    assert "None sent." in part and "Send a survey" in part
    # the form: only the parents' instruments; the site's first language chosen
    form = part.split('id="send-survey"')[1]
    assert re.findall(r'<option[^>]*value="([^"]+)"', form.split('name="instrument"')[1].split("</select>")[0]) == ["srs2"]
    assert "ados2" not in form
    lang = form.split('name="language"')[1].split("</select>")[0]
    from trial.consent.service import site_language
    chosen = [tag for tag in re.findall(r"<option[^>]*>", lang) if "selected" in tag]
    assert len(chosen) == 1 and f'value="{site_language(child.site)}"' in chosen[0]
    r = send(c, child)
    assert "/qr" in r.headers["Location"]
    shown = c.get(r.headers["Location"]).get_data(as_text=True)
    s = db.execute(select(Survey)).scalar_one()
    token = surveys.token_for_reminder(s)
    assert f"/s/{token}" in shown and "<svg" in shown and "The survey was sent" in shown
    assert "survey-qr.css" in shown and 'src="http' not in shown and 'href="http' not in shown
    assert child.study_id not in shown.split('role="status"')[1]  # the printed part names no child
    css = c.get("/static/survey-qr.css").get_data(as_text=True)
    assert "@media print" in css
    # the section lists it in words: the form's and visit's labels, the language's name, the status
    part = section(c.get(f"/participants/{child.study_id}").get_data(as_text=True))
    row = part.split(f'id="survey-{s.id}"')[1].split("</tr>")[0]
    for w in ("SRS-2 (parent-reported)", "2 months", "Deutsch", "sent"):
        assert w in row, w
    assert "srs2" not in row.replace("surveys/", "") and "month2" not in row
    assert token not in part  # the list never shows the link itself; its QR code page does
    # the QR code page again, while it is outstanding, without the "sent" notice
    again = c.get(f"/surveys/{s.id}/qr").get_data(as_text=True)
    assert f"/s/{token}" in again and "The survey was sent" not in again


def test_the_section_in_german_and_a_refusal_on_the_form(app, world, db, child):
    c = login(app, "coordinator")
    c.environ_base["HTTP_ACCEPT_LANGUAGE"] = "de"
    send(c, child)
    part = section(c.get(f"/participants/{child.study_id}").get_data(as_text=True))
    assert "SRS-2 (Elternangabe)" in part and "Deutsch" in part
    r = c.post(f"/participants/{child.study_id}/surveys", data={**FORM, "visit": "month5"})
    assert r.status_code == 400 and db.execute(select(func.count()).select_from(Survey)).scalar_one() == 1
    r = c.post(f"/participants/{child.study_id}/surveys", data=FORM)  # one link of a form at a time
    assert r.status_code == 400 and "ist bereits versendet" in r.get_data(as_text=True) or \
        "resend or revoke it" in r.get_data(as_text=True)


def test_resend_and_revoke_ask_first_then_act(app, world, db, child):
    c = login(app, "coordinator")
    send(c, child)
    s = db.execute(select(Survey)).scalar_one()
    old = surveys.token_for_reminder(s)
    r = c.post(f"/surveys/{s.id}/resend")  # the first press asks
    assert r.status_code == 200 and "Send a new link" in r.get_data(as_text=True) and 'name="confirmed"' in r.get_data(as_text=True)
    db.expire_all()
    assert surveys.token_for_reminder(db.get(Survey, s.id)) == old
    r = c.post(f"/surveys/{s.id}/resend", data={"confirmed": "1"})
    assert r.status_code == 302 and "/qr" in r.headers["Location"]
    db.expire_all()
    new = surveys.token_for_reminder(db.get(Survey, s.id))
    assert new != old and f"/s/{new}" in c.get(r.headers["Location"]).get_data(as_text=True)
    r = c.post(f"/surveys/{s.id}/revoke")
    assert r.status_code == 200 and "Revoke the link" in r.get_data(as_text=True)
    db.expire_all()
    assert db.get(Survey, s.id).status == "sent"
    r = c.post(f"/surveys/{s.id}/revoke", data={"confirmed": "1"})
    assert r.status_code == 302
    db.expire_all()
    assert db.get(Survey, s.id).status == "revoked"
    part = section(c.get(f"/participants/{child.study_id}").get_data(as_text=True))
    assert "revoked" in part and f"/surveys/{s.id}/qr" not in part  # no QR code, resend or revoke any more
    assert c.get(f"/surveys/{s.id}/qr").status_code == 302  # back to the page, saying why


def test_the_forms_need_the_csrf_token(world, db, child, engine, session_factory):
    from trial import create_app
    app = create_app({"ENGINE": engine, "SESSION_FACTORY": session_factory, "TESTING": True,
                      "SECRET_KEY": "test-secret"})  # CSRF on
    c = app.test_client()
    page = c.get("/login").get_data(as_text=True)
    tok = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1)
    assert c.post("/login", data={"email": "coordinator@example.org", "password": PASSWORD,
                                  "csrf_token": tok}).status_code == 302
    r = c.post(f"/participants/{child.study_id}/surveys", data=FORM)
    assert r.status_code == 400 and db.execute(select(func.count()).select_from(Survey)).scalar_one() == 0
    page = c.get(f"/participants/{child.study_id}").get_data(as_text=True)
    tok = re.search(r'id="send-survey".*?name="csrf_token"[^>]*value="([^"]+)"', page, re.DOTALL).group(1)
    assert c.post(f"/participants/{child.study_id}/surveys", data={**FORM, "csrf_token": tok}).status_code == 302
    s = db.execute(select(Survey)).scalar_one()
    assert c.post(f"/surveys/{s.id}/revoke", data={"confirmed": "1"}).status_code in (200, 400)
    db.expire_all()
    assert db.get(Survey, s.id).status == "sent"  # without the token nothing is revoked


@pytest.mark.parametrize("who", ["assessor", "therapist", "statistician"])
def test_other_roles_see_no_survey_and_are_refused(app, world, db, child, who):
    surveys.send_survey(db, world.users["coordinator"], child.study_id,
                        {"visit": "month2", "instrument": "srs2", "language": "de"})
    db.commit()
    s = db.execute(select(Survey)).scalar_one()
    c = login(app, who)
    page = c.get(f"/participants/{child.study_id}")
    assert 'id="surveys"' not in page.get_data(as_text=True)
    for path in (f"/surveys/{s.id}/qr",):
        assert c.get(path).status_code == 403
    for path in (f"/participants/{child.study_id}/surveys", f"/surveys/{s.id}/resend", f"/surveys/{s.id}/revoke"):
        assert c.post(path, data={**FORM, "confirmed": "1"}).status_code == 403, path
    db.expire_all()
    assert db.get(Survey, s.id).status == "sent"


def test_monitors_and_managers_read_and_another_sites_coordinator_gets_404(app, world, db, child):
    surveys.send_survey(db, world.users["coordinator"], child.study_id,
                        {"visit": "month2", "instrument": "srs2", "language": "de"})
    db.commit()
    s = db.execute(select(Survey)).scalar_one()
    token = surveys.token_for_reminder(s)
    for who in ("monitor", "manager"):
        c = login(app, who)
        part = section(c.get(f"/participants/{child.study_id}").get_data(as_text=True))
        assert "SRS-2 (parent-reported)" in part and "Send a survey" not in part and "Revoke" not in part
        assert token not in part
        assert c.get(f"/surveys/{s.id}/qr").status_code == 403
        assert c.post(f"/surveys/{s.id}/revoke", data={"confirmed": "1"}).status_code == 403
    c = login(app, "coordinator_no")
    assert c.get(f"/participants/{child.study_id}").status_code == 404
    for path in (f"/surveys/{s.id}/qr",):
        assert c.get(path).status_code == 404
    for path in (f"/participants/{child.study_id}/surveys", f"/surveys/{s.id}/resend", f"/surveys/{s.id}/revoke"):
        assert c.post(path, data={**FORM, "confirmed": "1"}).status_code == 404, path
    db.expire_all()
    assert db.get(Survey, s.id).status == "sent"


def test_an_answered_survey_shows_its_provenance_and_the_coordinator_corrects_it(app, world, db, child):
    _s, token = surveys.send_survey(db, world.users["coordinator"], child.study_id,
                                    {"visit": "month2", "instrument": "srs2", "language": "de"})
    db.commit()
    surveys.submit_survey(db, token, {"total_t": 58}, "10.0.0.1")
    db.commit()
    a = db.execute(select(Assessment).where(Assessment.instrument == "srs2")).scalar_one()
    c = login(app, "coordinator")
    page = c.get(f"/participants/{child.study_id}").get_data(as_text=True)
    row = page.split(f'id="assessment-{a.id}"')[1].split("</tr>")[0]
    assert "answered by the parent through a survey" in row and "58" in row
    other = page.split('id="assessment-')[1].split("</tr>")[0]  # the staff's ADOS-2 at baseline
    assert "through a survey" not in other
    part = section(page)
    assert "completed" in part
    # the correction, as for any form: a reason is required
    r = c.post(f"/assessments/{a.id}/correct", data={"v_total_t": "68", "reason": ""})
    assert r.status_code == 400
    r = c.post(f"/assessments/{a.id}/correct", data={"v_total_t": "68", "reason": "the parent phoned: a typing slip"})
    assert r.status_code == 302, r.get_data(as_text=True)[:2000]
    db.expire_all()
    assert db.get(Assessment, a.id).values == {"total_t": 68}
    trail = db.execute(select(AuditRecord).where(AuditRecord.entity == "assessment", AuditRecord.entity_id == str(a.id))
                       .order_by(AuditRecord.seq)).scalars().all()
    assert trail[0].actor == surveys.PROVENANCE and trail[-1].actor == "coordinator@example.org"
    assert trail[-1].reason == "the parent phoned: a typing slip"
    # in German the provenance is still said (the catalogue's word once translated; never a key)
    c.environ_base["HTTP_ACCEPT_LANGUAGE"] = "de"
    row = c.get(f"/participants/{child.study_id}").get_data(as_text=True).split(f'id="assessment-{a.id}"')[1]
    assert 'class="muted provenance"' in row.split("</tr>")[0]
