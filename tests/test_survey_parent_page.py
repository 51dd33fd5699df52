"""The parent's survey page (issue 28): /s/<token> in the survey's language (German; Hebrew right to
left), nothing of the trial beyond the questionnaire, the visit, the child's first name and the
last day; the form posted without JavaScript becomes the visit's assessment under the parent's
provenance; the refusals as friendly pages (unknown 404 in the browser's language, answered 409,
expired or revoked 410, too many attempts 429), every attempt counted; the headers (no cache, no
referrer, no index, a strict CSP) and no cookie."""
from __future__ import annotations

import datetime as dt
import re

import pytest
from sqlalchemy import func, select

from tests.helpers import CLI, PASSWORD, backdate_randomization, randomized_before
from trial.audit.models import AuditRecord
from trial.consent.models import Survey, SurveyAttempt
from trial.participants.models import Assessment
from trial.protocol.service import current
from trial.sites.models import Site
from trial.surveys import service as surveys

TODAY = dt.date.today()
SEED = bytes(range(32))
FORM = "application/x-www-form-urlencoded"


@pytest.fixture()
def child(world, db):
    """A child at AT01 randomized 60 days ago: its 2-month window is open today."""
    world.open(SEED)
    r = TODAY - dt.timedelta(days=60)
    p, arm = randomized_before(world, db, r)
    backdate_randomization(db, dt.datetime.combine(r, dt.time(10, 0)), p.id)
    p.arm_key = arm
    return p


def send(db, p, language="de", **kw):
    s, token = surveys.send_survey(db, CLI, p.study_id, {"visit": "month2", "instrument": "srs2",
                                                          "language": language, **kw})
    db.commit()
    return s, token


def attempts(db, outcome=None):
    q = select(func.count()).select_from(SurveyAttempt)
    if outcome:
        q = q.where(SurveyAttempt.outcome == outcome)
    return db.execute(q).scalar()


def assert_private(r):
    """The headers of every answer of these pages: nothing cached, no referrer, not indexed, only
    this server's files, no cookie."""
    h = r.headers
    assert h["Cache-Control"] == "no-store"
    assert h["Referrer-Policy"] == "no-referrer"
    assert "noindex" in h["X-Robots-Tag"]
    csp = h["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "style-src 'self'" in csp
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp and "form-action 'self'" in csp
    assert "Set-Cookie" not in h


def secrets_of(db, p) -> list[str]:
    """What the page must never show: the study id, the arm (key and label), the site."""
    site = db.get(Site, p.site_id)
    arms = [a for a in current(db).content["arms"] if a["key"] == p.arm_key]
    out = [p.study_id, site.code, site.name, p.arm_key]
    for a in arms:
        out += [a["label"], *a.get("labels", {}).values()]
    return out


def test_the_page_is_in_the_surveys_language_and_shows_nothing_of_the_trial(world, db, client, child):
    s, token = send(db, child, first_name="Anna")
    r = client.get(f"/s/{token}", headers={"Accept-Language": "he, en;q=0.5"})  # the browser's is not the survey's
    assert r.status_code == 200
    page = r.get_data(as_text=True)
    assert '<html lang="de" dir="ltr">' in page and r.headers["Content-Language"] == "de"
    assert "SRS-2 (Elternangabe)" in page and "SRS-2 Gesamt-T-Wert" in page
    assert re.search(r'<label class="label" for="f-total_t">SRS-2 Gesamt-T-Wert', page)  # bound to its input
    assert 'id="f-total_t" name="v-total_t"' in page
    assert "T-Wert" in page and "T-score" not in page and "30" in page and "90" in page  # units in German, min/max as a hint
    assert "Anna" in page
    ins_visit = next(v for v in current(db).content["visits"] if v["key"] == "month2")
    assert ins_visit.get("labels", {}).get("de", ins_visit["label"]) in page
    assert "survey.css" in page and "survey.js" in page and "style.css" not in page and "session.js" not in page
    assert "<nav" not in page and 'href="/' not in page.replace('href="/static/', "")  # no link into the app
    everything = page + "\n".join(f"{k}: {v}" for k, v in r.headers.items())
    for secret in secrets_of(db, child):
        assert secret not in everything, secret
    assert token not in r.headers.get("Location", "")
    assert_private(r)
    db.refresh(s)
    assert s.status == "opened" and attempts(db, "ok") == 1
    for asset in ("/static/survey.css", "/static/survey.js"):
        assert client.get(asset).status_code == 200


def test_hebrew_is_right_to_left(world, db, client, child):
    _, token = send(db, child, language="he")
    r = client.get(f"/s/{token}", headers={"Accept-Language": "de"})
    page = r.get_data(as_text=True)
    assert r.status_code == 200 and '<html lang="he" dir="rtl">' in page
    assert "ציון T כולל של SRS-2" in page and "SRS-2 (דיווח הורים)" in page
    assert_private(r)


def test_the_form_posted_without_javascript_becomes_the_assessment_with_the_parents_provenance(world, db, client, child):
    s, token = send(db, child)
    client.get(f"/s/{token}")
    r = client.post(f"/s/{token}", data={"v-total_t": "61"}, content_type=FORM)
    assert r.status_code == 302 and r.headers["Location"].endswith("/s/done/de")
    assert token not in r.headers["Location"]
    assert_private(r)
    a = db.execute(select(Assessment).where(Assessment.participant_id == child.id, Assessment.visit == "month2",
                                            Assessment.instrument == "srs2")).scalar_one()
    assert a.values == {"total_t": 61} and a.entered_by_id is None
    rec = db.execute(select(AuditRecord).where(AuditRecord.entity == "assessment", AuditRecord.entity_id == str(a.id))
                     ).scalars().first()
    assert rec.actor == surveys.PROVENANCE == "parent (survey)" and rec.reason == f"survey {s.id}"
    db.refresh(s)
    assert s.status == "completed" and s.assessment_id == a.id
    assert attempts(db, "ok") == 2
    thanks = client.get("/s/done/de")
    assert thanks.status_code == 200 and '<html lang="de"' in thanks.get_data(as_text=True)
    assert_private(thanks)
    # the second time: answered (409), a friendly page in the survey's language; nothing changed
    again = client.post(f"/s/{token}", data={"v-total_t": "70"}, content_type=FORM)
    assert again.status_code == 409 and '<html lang="de"' in again.get_data(as_text=True)
    assert client.get(f"/s/{token}").status_code == 409
    db.refresh(a)
    assert a.values == {"total_t": 61}
    assert_private(again)


def test_wrong_answers_are_shown_beside_their_field_and_summarized_and_nothing_is_saved(world, db, client, child):
    s, token = send(db, child)
    client.get(f"/s/{token}")
    for value, status in (("200", 400), ("", 400), ("sechzig", 400)):
        r = client.post(f"/s/{token}", data={"v-total_t": value}, content_type=FORM)
        page = r.get_data(as_text=True)
        assert r.status_code == status, value
        assert 'id="summary"' in page and 'href="#f-total_t"' in page and "autofocus" in page
        assert 'id="e-total_t"' in page and 'aria-invalid="true"' in page
        assert f'value="{value}"' in page  # what was typed stays
        assert '<html lang="de"' in page
        assert_private(r)
    assert "30" in page
    assert db.execute(select(func.count()).select_from(Assessment).where(
        Assessment.participant_id == child.id, Assessment.instrument == "srs2", Assessment.visit == "month2")).scalar() == 0
    assert attempts(db, "invalid") == 3 and attempts(db, "ok") == 1
    # a post that is not a form: refused, nothing looked at
    n = attempts(db)
    r = client.post(f"/s/{token}", json={"values": {"total_t": 61}})
    assert r.status_code == 415 and attempts(db) == n
    assert_private(r)
    r = client.post(f"/s/{token}", data="v-total_t=61", content_type="text/plain")
    assert r.status_code == 415
    db.refresh(s)
    assert s.status == "opened"


def test_refusals_are_friendly_pages_with_their_status(world, db, client, child, monkeypatch):
    # unknown: 404, in the browser's language among the seven; the same page whatever exists
    r = client.get("/s/" + "x" * 43, headers={"Accept-Language": "it-IT, en;q=0.5"})
    assert r.status_code == 404 and '<html lang="it"' in r.get_data(as_text=True)
    assert_private(r)
    r2 = client.get("/s/short", headers={"Accept-Language": "it"})
    assert r2.status_code == 404 and r2.get_data() == r.get_data()
    assert attempts(db, "unknown") == 2
    # revoked: 410 in the survey's language (not the browser's)
    s, token = send(db, child, language="he")
    surveys.revoke_survey(db, CLI, s.id)
    db.commit()
    r = client.get(f"/s/{token}", headers={"Accept-Language": "it"})
    assert r.status_code == 410 and '<html lang="he" dir="rtl"' in r.get_data(as_text=True)
    assert_private(r)
    assert client.post(f"/s/{token}", data={"v-total_t": "61"}, content_type=FORM).status_code == 410
    # expired: 410
    s2, token2 = send(db, child, language="nb")
    s2.expires_at = dt.datetime(2000, 1, 1)
    db.commit()
    r = client.get(f"/s/{token2}")
    assert r.status_code == 410 and '<html lang="nb"' in r.get_data(as_text=True)
    assert attempts(db, "gone") == 3
    # too many attempts on one link: 429 with Retry-After, in the survey's language
    monkeypatch.setenv("TRIAL_SURVEY_LINK_LIMIT", "3")
    from trial import settings
    assert settings.current().survey_link_limit == 3  # (settings are read again whenever a TRIAL_ variable changes)
    s3, token3 = send(db, child, language="pt_BR")
    for _ in range(3):
        assert client.get(f"/s/{token3}").status_code == 200
    r = client.get(f"/s/{token3}")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    assert '<html lang="pt-BR"' in r.get_data(as_text=True)
    assert_private(r)
    r = client.post(f"/s/{token3}", data={"v-total_t": "61"}, content_type=FORM)
    assert r.status_code == 429
    assert db.execute(select(Survey.status).where(Survey.id == s3.id)).scalar() == "opened"


def test_under_a_hard_lock_the_answers_are_refused_with_a_page_that_names_no_lock(world, db, client, child):
    s, token = send(db, child)
    assert client.get(f"/s/{token}").status_code == 200
    r = world.api("POST", "/locks", "manager", json={"kind": "hard", "meaning": "I approve the data as final.",
                                                     "password": PASSWORD, "accept_open_queries": True,
                                                     "accept_unsigned": True})
    assert r.status_code == 201, r.get_data(as_text=True)
    audit = db.execute(select(func.count()).select_from(AuditRecord)).scalar()
    r = client.post(f"/s/{token}", data={"v-total_t": "61"}, content_type=FORM)
    page = r.get_data(as_text=True)
    assert r.status_code == 423 and '<html lang="de"' in page
    assert "locked" not in page and "Manager" not in page  # (the staff's banner names the lock and its signer)
    assert_private(r)
    db.expire_all()
    assert db.execute(select(func.count()).select_from(AuditRecord)).scalar() == audit
    assert db.execute(select(func.count()).select_from(Assessment).where(Assessment.participant_id == child.id,
                                                                         Assessment.visit == "month2")).scalar() == 0
    assert db.execute(select(Survey.status).where(Survey.id == s.id)).scalar() == "opened"
    assert attempts(db, "gone") == 1
