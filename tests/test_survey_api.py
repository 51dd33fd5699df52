"""Parents' surveys over the API (issue 28): the coordinator's routes (send, list, resend, revoke) and
the parent's public JSON (GET and POST /api/v1/surveys/<token>): the lifecycle (sent, opened,
completed, a second submission 409, expired 410, revoked 410, unknown 404 alike for any token), the
values as entered with the parent's provenance in the audit trail, every attempt counted (also a
refused one) and 429 with Retry-After past the limits, nothing of the trial in the parent's answers
(a crawl), the invitation and a reminder at a real local SMTP server in the family's language, the
windows, the roles, a withdrawal revoking the link and stopping the reminders, and the
coordinator's correction of a value the parent entered."""
from __future__ import annotations

import datetime as dt
import email.header
import re
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func, select

from tests.helpers import backdate_randomization, randomized_before
from tests.test_datamanagement import inbox  # noqa: F401  (a real SMTP server, the outbox's relay)
from trial import settings
from trial.audit.models import AuditRecord
from trial.catalogue import in_language
from trial.consent.models import Survey, SurveyAttempt
from trial.participants.models import Assessment, Participant
from trial.protocol.service import current as current_protocol
from trial.surveys import service as surveys

TODAY = dt.date.today()
SEED = bytes(range(32))
SEND = {"visit": "month2", "instrument": "srs2", "language": "de"}


def randomized_days_ago(world, db, days: int, site: str = "AT01"):
    r = TODAY - dt.timedelta(days=days)
    p, _ = randomized_before(world, db, r, site)
    backdate_randomization(db, dt.datetime.combine(r, dt.time(10, 0)), p.id)
    return p


@pytest.fixture()
def child(world, db):
    """A child at AT01 randomized 60 days ago (its 2-month window is open today), and two more
    children at AT01 and one at NO01 (whose study ids must never reach the parent)."""
    world.open(SEED)
    p = randomized_days_ago(world, db, 60)
    others = [randomized_days_ago(world, db, 60), randomized_days_ago(world, db, 100),
              randomized_days_ago(world, db, 60, "NO01")]
    db.commit()
    p.others = others
    return p


def sent(world, p, who="coordinator", **kw):
    r = world.api("POST", f"/participants/{p.study_id}/surveys", who, json={**SEND, **kw})
    assert r.status_code == 201, r.get_data(as_text=True)
    return r.get_json()


def token_of(link: str) -> str:
    return urlsplit(link).path.rsplit("/", 1)[1]


def parent(world, method, token, json=None, addr="10.0.0.1"):
    c = world.app.test_client()
    return c.open(f"/api/v1/surveys/{token}", method=method, json=json, environ_base={"REMOTE_ADDR": addr})


def listed(world, p, who="coordinator"):
    r = world.api("GET", f"/participants/{p.study_id}/surveys", who)
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.get_json()


def subject_of(message) -> str:
    return str(email.header.make_header(email.header.decode_header(message["Subject"])))


def attempts(db, **where) -> int:
    db.expire_all()
    q = select(func.count()).select_from(SurveyAttempt)
    for k, v in where.items():
        q = q.where(getattr(SurveyAttempt, k) == v)
    return db.execute(q).scalar_one()


def test_the_lifecycle_over_http_with_the_values_as_entered_and_the_parents_provenance(world, db, child):
    out = sent(world, child, first_name="Anna")
    assert out["status"] == "sent" and out["link"].startswith("http://localhost/s/")  # (no TRIAL_BASE_URL: this host)
    assert set(out) >= {"id", "link", "expires_at", "status"}
    token = token_of(out["link"])
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    assert [s["status"] for s in listed(world, child)] == ["sent"] and "link" not in listed(world, child)[0]

    r = parent(world, "GET", token)
    assert r.status_code == 200
    assert r.headers["Cache-Control"] == "no-store" and r.headers["Referrer-Policy"] == "no-referrer"
    form = r.get_json()
    assert form["instrument"] == "srs2" and form["visit"] == "month2" and form["language"] == "de"
    assert form["instrument_label"] == "SRS-2 (Elternangabe)" and form["first_name"] == "Anna"
    assert form["visit_label"] and form["layout"] == "whole_form" and form["rtl"] is False
    assert [(f["key"], f["label"], f["min"], f["max"]) for f in form["fields"]] == [
        ("total_t", "SRS-2 Gesamt-T-Wert", 30, 90)]
    assert listed(world, child)[0]["status"] == "opened" and listed(world, child)[0]["opened_at"]

    r = parent(world, "POST", token, {"values": {"total_t": 200}})
    assert r.status_code == 400 and "values.total_t" in r.get_json()["error"]["fields"]
    assert r.headers["Referrer-Policy"] == "no-referrer" and r.headers["Cache-Control"] == "no-store"
    assert db.execute(select(Assessment).where(Assessment.participant_id == child.id,
                                               Assessment.instrument == "srs2")).first() is None
    r = parent(world, "POST", token, {"values": {"total_t": 63}})
    assert r.status_code == 201 and r.get_json() == {"status": "completed"}, r.get_data(as_text=True)
    db.expire_all()
    a = db.execute(select(Assessment).where(Assessment.participant_id == child.id, Assessment.visit == "month2",
                                            Assessment.instrument == "srs2")).scalar_one()
    assert a.values == {"total_t": 63} and a.performed_on == TODAY
    trail = db.execute(select(AuditRecord).where(AuditRecord.entity == "assessment",
                                                 AuditRecord.entity_id == str(a.id))).scalars().all()
    assert trail and {(t.actor, t.reason) for t in trail} == {(surveys.PROVENANCE, f"survey {out['id']}")}
    done = listed(world, child)[0]
    assert done["status"] == "completed" and done["completed_at"]

    again = parent(world, "POST", token, {"values": {"total_t": 64}})
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "already_submitted"
    assert parent(world, "GET", token).status_code == 409
    db.expire_all()
    assert db.get(Assessment, a.id).values == {"total_t": 63}
    # every attempt counted: the two GETs and three POSTs (the refused ones too)
    assert attempts(db, survey_id=out["id"]) == 5
    assert attempts(db, survey_id=out["id"], outcome="invalid") == 1
    assert attempts(db, survey_id=out["id"], outcome="ok") == 2


def test_expired_revoked_and_unknown_links(world, db, child):
    out = sent(world, child)
    token = token_of(out["link"])
    r = world.api("POST", f"/surveys/{out['id']}/revoke", "coordinator")
    assert r.status_code == 200 and r.get_json()["status"] == "revoked"
    for method, body in (("GET", None), ("POST", {"values": {"total_t": 60}})):
        r = parent(world, method, token, body)
        assert r.status_code == 410 and r.get_json()["error"]["code"] == "expired", method
    out2 = sent(world, child)
    db.execute(Survey.__table__.update().where(Survey.id == out2["id"]).values(expires_at=dt.datetime(2001, 1, 1)))
    db.commit()
    r = parent(world, "POST", token_of(out2["link"]), {"values": {"total_t": 60}})
    assert r.status_code == 410 and r.get_json()["error"]["code"] == "expired"
    assert [s["status"] for s in listed(world, child)] == ["expired", "revoked"]
    # unknown: the same answer whatever the token (well-formed, malformed, one letter off)
    bodies = set()
    off = token[:-1] + ("A" if token[-1] != "A" else "B")
    for t in (off, "x" * 43, "abc", "0" * 100, "-_" * 30):
        for method, body in (("GET", None), ("POST", {"values": {"total_t": 60}})):
            r = parent(world, method, t, body, addr="10.7.7.7")
            assert r.status_code == 404, (t, method)
            assert r.headers["Referrer-Policy"] == "no-referrer"
            bodies.add(r.get_data())
    assert len(bodies) == 1
    assert attempts(db, remote_addr="10.7.7.7", outcome="unknown") == 10  # each refusal counted (after its rollback)


def test_too_many_attempts_answer_429_with_retry_after(world, db, child, monkeypatch):
    monkeypatch.setenv("TRIAL_SURVEY_ADDRESS_LIMIT", "3")
    monkeypatch.setenv("TRIAL_SURVEY_LINK_LIMIT", "4")
    assert settings.current().survey_address_limit == 3  # (read again whenever a TRIAL_ variable changes)
    token = token_of(sent(world, child)["link"])
    for i in range(3):
        assert parent(world, "GET", f"{i}" * 43, addr="10.9.9.9").status_code == 404
    r = parent(world, "GET", "9" * 43, addr="10.9.9.9")  # the address is held for unknown links
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0 and r.get_json()["error"]["code"] == "rate_limited"
    # ... but never for a valid link (a school's or a mobile network's shared address): that one is held only by
    # its own count, four attempts in the hour, from any address
    assert parent(world, "GET", token, addr="10.9.9.9").status_code == 200
    for _ in range(3):
        assert parent(world, "GET", token, addr="10.1.1.1").status_code == 200
    r = parent(world, "POST", token, {"values": {"total_t": 60}}, addr="10.2.2.2")
    assert r.status_code == 429 and 0 < int(r.headers["Retry-After"]) <= 3600
    assert db.execute(select(Assessment).where(Assessment.participant_id == child.id,
                                               Assessment.instrument == "srs2")).first() is None


def test_the_client_address_is_the_one_behind_the_trusted_proxies(db, child, monkeypatch, engine, session_factory):
    from trial import create_app
    monkeypatch.setenv("TRIAL_SURVEY_ADDRESS_LIMIT", "2")
    app = create_app({"ENGINE": engine, "SESSION_FACTORY": session_factory, "TESTING": True, "SECRET_KEY": "test-secret",
                      "PROXIES": 1})
    c = app.test_client()
    for i in range(2):
        c.get(f"/api/v1/surveys/{i}{'x' * 42}", headers={"X-Forwarded-For": "203.0.113.9"})
    assert attempts(db, remote_addr="203.0.113.9", outcome="unknown") == 2
    r = c.get(f"/api/v1/surveys/{'y' * 43}", headers={"X-Forwarded-For": "203.0.113.9"})
    assert r.status_code == 429
    assert c.get(f"/api/v1/surveys/{'y' * 43}", headers={"X-Forwarded-For": "203.0.113.10"}).status_code == 404


def test_the_parents_answers_reveal_no_study_id_arm_or_other_form(world, db, child):
    """A crawl with the token: the JSON, the parent's page and every path of this site either links
    to, GET; no study id of any child, no arm key or label in any language, no other form's label."""
    token = token_of(sent(world, child, first_name="Anna")["link"])
    content = current_protocol(db).content
    ids = [p.study_id for p in db.execute(select(Participant)).scalars()]
    arms = [w for a in content["arms"] for w in (a["label"], *(a.get("labels") or {}).values())]
    arm_keys = [a["key"] for a in content["arms"]]
    forms = [w for i in content["instruments"] if i["key"] != "srs2"
             for w in (i["label"], *(i.get("labels") or {}).values())]
    assert len(ids) == 4 and arms and forms
    c = world.app.test_client()
    seen, todo, texts = set(), [f"/api/v1/surveys/{token}", surveys.link_path(token)], []
    while todo:
        path = todo.pop()
        if path in seen or len(seen) > 60:
            continue
        seen.add(path)
        r = c.get(path, environ_base={"REMOTE_ADDR": "10.3.3.3"})
        assert r.status_code in (200, 404), (path, r.status_code)
        text = r.get_data(as_text=True)
        texts.append((path, text))
        for link in re.findall(r"""(?:href|src|action)=["']([^"'#]+)""", text) + re.findall(r'"(/[^"\s]*)"', text):
            if link.startswith("/") and not link.startswith("//"):
                todo.append(link.split("?")[0])
    assert any(p.startswith("/api/v1/surveys/") for p, _ in texts)
    for path, text in texts:
        for sid in ids:
            assert sid not in text, (path, sid)
        for w in arms:
            assert w.lower() not in text.lower(), (path, w)
        for key in arm_keys + ["arm", "allocation", "study_id"]:  # as a key or a value (quoted), not an English word
            assert not re.search(rf"""["']{re.escape(key)}["']""", text), (path, key)
        for w in forms:
            assert w not in text, (path, w)
    form = parent(world, "GET", token, addr="10.3.3.4").get_json()
    assert set(form) == {"instrument", "visit", "fields", "language", "instrument_label", "visit_label", "first_name",
                         "layout", "expires_on", "rtl"}


def test_the_invitation_and_a_reminder_arrive_in_the_familys_language(world, db, child, inbox):  # noqa: F811
    out = sent(world, child, email="familie@example.org", first_name="Anna")
    token = token_of(out["link"])
    (invite,) = inbox.wait(1)
    assert invite["To"] == "familie@example.org"
    body = invite.get_payload(decode=True).decode()
    assert subject_of(invite) == in_language(surveys.INVITE_SUBJECT, "de")
    assert f"https://trial.example.org/s/{token}" in body and "SRS-2 (Elternangabe)" in body and "Anna" in body
    assert child.study_id not in body and "SRS-2 (parent-reported)" not in body
    # no reminder before the protocol's first reminder day (3 days after sending); then one
    assert surveys.send_reminders(db) == 0
    db.execute(Survey.__table__.update().where(Survey.id == out["id"])
               .values(sent_at=surveys.utc_now() - dt.timedelta(days=3, minutes=1)))
    db.commit()
    assert surveys.send_reminders(db) == 1
    db.commit()
    assert surveys.send_reminders(db) == 0  # the next one is due on day 7
    mails = inbox.wait(2)
    assert len(mails) == 2
    reminder = mails[1]
    rbody = reminder.get_payload(decode=True).decode()
    assert f"https://trial.example.org/s/{token}" in rbody and "SRS-2 (Elternangabe)" in rbody
    assert subject_of(reminder) == in_language(surveys.REMINDER_SUBJECT, "de")
    assert listed(world, child)[0]["reminders_sent"] == 1
    # answered: no more reminders
    assert parent(world, "POST", token, {"values": {"total_t": 55}}).status_code == 201
    db.execute(Survey.__table__.update().where(Survey.id == out["id"])
               .values(sent_at=surveys.utc_now() - dt.timedelta(days=8)))
    db.commit()
    assert surveys.send_reminders(db) == 0


def test_resend_gives_a_new_link_the_old_one_stops(world, db, child, inbox):  # noqa: F811
    out = sent(world, child, email="familie@example.org")
    old = token_of(out["link"])
    r = world.api("POST", f"/surveys/{out['id']}/resend", "coordinator", json={"email": "other@example.org"})
    assert r.status_code == 200, r.get_data(as_text=True)
    new = token_of(r.get_json()["link"])
    assert new != old and parent(world, "GET", old).status_code == 404 and parent(world, "GET", new).status_code == 200
    mails = inbox.wait(2)
    assert [m["To"] for m in mails] == ["familie@example.org", "other@example.org"]
    r = world.api("POST", f"/surveys/{out['id']}/resend", "coordinator", json={"email": "not an address"})
    assert r.status_code == 400 and "email" in r.get_json()["error"]["fields"]


@pytest.mark.parametrize("days, visit, why", [(30, "month2", "opens on"), (100, "month2", "closed on"),
                                              (60, "baseline", "takes no data now")])
def test_a_survey_is_sent_only_while_its_window_is_open(world, db, days, visit, why):
    world.open(SEED)
    p = randomized_days_ago(world, db, days)
    db.commit()
    r = world.api("POST", f"/participants/{p.study_id}/surveys", "coordinator", json={**SEND, "visit": visit})
    assert r.status_code == 409 and why in r.get_json()["error"]["message"], r.get_data(as_text=True)
    assert db.execute(select(func.count()).select_from(Survey)).scalar_one() == 0


def test_the_baseline_survey_before_randomization_and_bad_bodies(world, db):
    world.open(SEED)
    p = world.ready()
    r = world.api("POST", f"/participants/{p.study_id}/surveys", "coordinator",
                  json={"visit": "baseline", "instrument": "srs2"})
    from trial.consent.service import site_language
    assert r.status_code == 201 and r.get_json()["language"] == site_language(p.site)  # the site's first by default
    r = world.api("POST", f"/participants/{p.study_id}/surveys", "coordinator",
                  json={"visit": "month1", "instrument": "ados2", "language": "xx", "email": "nope"})
    assert r.status_code == 400 and set(r.get_json()["error"]["fields"]) == {"visit", "instrument", "language", "email"}


@pytest.mark.parametrize("who", ["assessor", "therapist", "statistician", "admin"])
def test_other_roles_are_refused_and_see_nothing(world, db, child, who):
    out = sent(world, child)
    for method, path, body in (("POST", f"/participants/{child.study_id}/surveys", SEND),
                               ("GET", f"/participants/{child.study_id}/surveys", None),
                               ("POST", f"/surveys/{out['id']}/revoke", None),
                               ("POST", f"/surveys/{out['id']}/resend", {})):
        r = world.api(method, path, who, json=body)
        assert r.status_code == 403, (who, path, r.status_code)
        assert "link" not in r.get_data(as_text=True) and "srs2" not in r.get_data(as_text=True)
    assert db.execute(select(func.count()).select_from(Survey)).scalar_one() == 1


def test_another_sites_coordinator_gets_404_and_readers_only_read(world, db, child):
    out = sent(world, child)
    for method, path, body in (("POST", f"/participants/{child.study_id}/surveys", SEND),
                               ("GET", f"/participants/{child.study_id}/surveys", None),
                               ("POST", f"/surveys/{out['id']}/revoke", None),
                               ("POST", f"/surveys/{out['id']}/resend", {})):
        assert world.api(method, path, "coordinator_no", json=body).status_code == 404, path
        assert world.api(method, path, None, json=body).status_code == 401, path
    assert world.api("POST", "/surveys/999999/revoke", "coordinator").status_code == 404
    for who in ("monitor", "manager"):
        assert [s["id"] for s in listed(world, child, who)] == [out["id"]]
        assert world.api("POST", f"/surveys/{out['id']}/revoke", who).status_code == 403


def test_a_withdrawal_from_the_follow_up_revokes_the_link_and_stops_the_reminders(world, db, child, inbox):  # noqa: F811
    out = sent(world, child, email="familie@example.org")
    token = token_of(out["link"])
    inbox.wait(1)
    r = world.api("POST", f"/participants/{child.study_id}/consent-withdrawals", "coordinator",
                  json={"on": TODAY.isoformat(), "scope": "follow_up", "data_use": "keep"})
    assert r.status_code == 201, r.get_data(as_text=True)
    assert listed(world, child)[0]["status"] == "revoked"
    assert parent(world, "GET", token).status_code == 410
    db.execute(Survey.__table__.update().where(Survey.id == out["id"])
               .values(sent_at=surveys.utc_now() - dt.timedelta(days=8)))
    db.commit()
    assert surveys.send_reminders(db) == 0
    r = world.api("POST", f"/participants/{child.study_id}/surveys", "coordinator", json=SEND)
    assert r.status_code == 409
    assert len(inbox.messages) == 1


def test_the_coordinator_corrects_a_value_the_parent_entered_with_a_reason(world, db, child):
    token = token_of(sent(world, child)["link"])
    assert parent(world, "POST", token, {"values": {"total_t": 58}}).status_code == 201
    db.expire_all()
    a = db.execute(select(Assessment).where(Assessment.participant_id == child.id,
                                            Assessment.instrument == "srs2")).scalar_one()
    r = world.api("POST", f"/assessments/{a.id}/corrections", "coordinator", json={"values": {"total_t": 68}})
    assert r.status_code == 400 and "reason" in r.get_json()["error"]["fields"]
    r = world.api("POST", f"/assessments/{a.id}/corrections", "coordinator",
                  json={"values": {"total_t": 68}, "reason": "the parent phoned: 68, a typing slip"})
    assert r.status_code in (200, 201), r.get_data(as_text=True)
    db.expire_all()
    assert db.get(Assessment, a.id).values == {"total_t": 68}
    trail = db.execute(select(AuditRecord).where(AuditRecord.entity == "assessment", AuditRecord.entity_id == str(a.id))
                       .order_by(AuditRecord.seq)).scalars().all()
    assert trail[0].actor == surveys.PROVENANCE and trail[-1].actor == "coordinator@example.org"
    assert trail[-1].reason == "the parent phoned: 68, a typing slip"
    assert db.execute(select(Survey.assessment_id)).scalar_one() == a.id


def test_trial_checks_run_queues_the_reminders_due_and_says_how_many(tmp_path, inbox, monkeypatch):  # noqa: F811
    from tests.test_cli import ok as cli_ok
    monkeypatch.setenv("TRIAL_SECRET_KEY", "a-secret-key-the-cli-shares-with-this-test-0123456789")
    from tests.test_datamanagement import cli_trial
    with cli_trial(tmp_path, "surveys") as (d, s, w, p):
        backdate_randomization(s, dt.datetime.combine(TODAY - dt.timedelta(days=60), dt.time(10)))
        _sv, token = surveys.send_survey(s, w.users["coordinator"], p.study_id, {**SEND, "email": "familie@example.org"})
        s.commit()
        s.execute(Survey.__table__.update().values(sent_at=surveys.utc_now() - dt.timedelta(days=4)))
        s.commit()
        s.close()
        out = cli_ok(d.run("checks", "run")).stdout
        assert "1 survey reminders queued" in out
        mails = [m for m in inbox.wait(1) if m["To"] == "familie@example.org"]
        assert mails and f"/s/{token}" in mails[-1].get_payload(decode=True).decode()
        assert subject_of(mails[-1]) == in_language(surveys.REMINDER_SUBJECT, "de")
        assert "0 survey reminders queued" in cli_ok(d.run("checks", "run")).stdout  # the next one on day 7
        help_text = " ".join(cli_ok(d.run("checks", "run", "--help")).stdout.split())
        assert "queue the reminders due for the parents' surveys" in help_text
