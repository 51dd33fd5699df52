"""Parents' surveys against a hostile review (issue 28): no live link in the outbox, no forged token,
no link outliving a final status event or the form's entry, the address limit only for unknown
links, nothing of a lock told to a parent, the staff's sight of a link audited and a staff browser
refused, answers that could not be saved told to the coordinators, one reminder for two runs at
once, the attempts purged, absolute links, a stale staff session, finite numbers and bounded text,
expiry at the site's midnight, and no re-consent due for a child whose participation ended."""
from __future__ import annotations

import datetime as dt
import hashlib
import threading
import time
import zoneinfo

import pytest
from sqlalchemy import func, select, text

from tests.conftest import FreshDatabase
from tests.helpers import CLI, PASSWORD, World, backdate_randomization, randomized_before
from tests.test_datamanagement import inbox  # noqa: F401  (a real SMTP server)
from trial import create_app
from trial.audit.models import AuditRecord
from trial.auth.models import User
from trial.catalogue import in_language
from trial.consent import service as consent
from trial.consent.models import Survey, SurveyAttempt
from trial.errors import ValidationError
from trial.notify.models import MailMessage, Notification
from trial.outcomes import service as outcomes
from trial.outcomes.models import NotDone
from trial.participants.models import Assessment, Participant, StatusEvent
from trial.sites.models import Site
from trial.status import service as status
from trial.surveys import service as surveys

TODAY = dt.date.today()
SEED = bytes(range(32))
SEND = {"visit": "month2", "instrument": "srs2", "language": "de"}
FORM = "application/x-www-form-urlencoded"


@pytest.fixture()
def child(world, db):
    """A child at AT01 randomized 60 days ago: its 2-month window is open today."""
    world.open(SEED)
    r = TODAY - dt.timedelta(days=60)
    p, _ = randomized_before(world, db, r)
    backdate_randomization(db, dt.datetime.combine(r, dt.time(10, 0)), p.id)
    return p


def send(db, p, **kw):
    s, token = surveys.send_survey(db, CLI, p.study_id, {**SEND, **kw})
    db.commit()
    return s, token


def parent(world, method, token, json=None, addr="10.0.0.1", client=None):
    c = client or world.app.test_client()
    return c.open(f"/api/v1/surveys/{token}", method=method, json=json, environ_base={"REMOTE_ADDR": addr})


def login(app, who):
    c = app.test_client()
    assert c.post("/login", data={"email": f"{who}@example.org", "password": PASSWORD}).status_code == 302
    return c


def staff_entry(db, p):
    outcomes.record_assessment(db, CLI, p.study_id, {"visit": "month2", "instrument": "srs2",
                                                     "performed_on": TODAY.isoformat(), "values": {"total_t": 58}})
    db.commit()


# --- 1. the outbox never holds a live link --------------------------------------------------------

def test_the_outbox_keeps_no_link_and_the_delivered_mail_has_the_working_one(world, db, child, inbox):  # noqa: F811
    r = world.api("POST", f"/participants/{child.study_id}/surveys", "coordinator",
                  json={**SEND, "email": "familie@example.org"})
    assert r.status_code == 201, r.get_json()
    out = r.get_json()
    token = out["link"].rsplit("/", 1)[1]
    assert out["emailed"] is True
    (mail,) = inbox.wait(1)
    assert f"https://trial.example.org/s/{token}" in mail.get_payload(decode=True).decode()
    db.execute(Survey.__table__.update().values(sent_at=surveys.utc_now() - dt.timedelta(days=4)))
    db.commit()
    assert surveys.send_reminders(db) == 1
    db.commit()
    assert f"/s/{token}" in inbox.wait(2)[1].get_payload(decode=True).decode()
    db.expire_all()
    rows = db.execute(select(MailMessage)).scalars().all()
    assert len(rows) == 2 and all(m.sent_at is not None for m in rows)
    for m in rows:
        assert token not in m.body and "/s/" not in m.body and surveys.LINK_MARK in m.body
        assert m.kind == f"survey:{out['id']}"
    assert parent(world, "GET", token).status_code == 200  # the delivered link works


def test_an_invitation_not_yet_sent_when_its_survey_is_revoked_never_leaves(world, db, child, inbox, monkeypatch):  # noqa: F811
    monkeypatch.setattr("trial.notify.service._relay_down_until", time.monotonic() + 600)  # queued, not sent yet
    s, token = send(db, child, email="familie@example.org")
    surveys.revoke_survey(db, CLI, s.id)
    db.commit()
    from trial.notify.service import send_pending
    assert send_pending(db) == (0, 1)
    assert inbox.wait(1, timeout=0.5) == []
    m = db.execute(select(MailMessage)).scalar_one()
    assert m.sent_at is None and m.dead_at is not None and token not in m.body


# --- 2. a token the key did not make opens nothing ----------------------------------------------

def test_a_token_hash_written_into_the_database_opens_nothing(world, db, child):
    s, _token = send(db, child)
    forged = "F" * 43
    db.execute(text("UPDATE survey SET token_hash = :h WHERE id = :i"),
               {"h": hashlib.sha256(forged.encode()).hexdigest(), "i": s.id})
    db.commit()
    assert parent(world, "GET", forged).status_code == 404
    assert world.app.test_client().get(f"/s/{forged}").status_code == 404
    db.execute(text("UPDATE survey SET token_nonce = NULL WHERE id = :i"), {"i": s.id})
    db.commit()
    assert parent(world, "GET", forged).status_code == 404


# --- 3. no link outlives a final status event or the form's entry --------------------------------

def test_a_final_status_event_revokes_the_links_in_its_transaction(world, db, child):
    s, token = send(db, child)
    status.record_event(db, CLI, child.study_id, {"type": "died", "on": TODAY.isoformat(), "reason": "sadly"})
    db.commit()
    db.refresh(s)
    assert s.status == "revoked"
    rec = db.execute(select(AuditRecord).where(AuditRecord.entity == "survey", AuditRecord.entity_id == str(s.id),
                                               AuditRecord.field == "status")).scalars().all()[-1]
    assert rec.new == "revoked" and rec.reason == "status event: died"
    assert parent(world, "GET", token).status_code == 410


def test_a_final_event_however_written_stops_the_link_the_reminders_and_a_resend(world, db, child, inbox):  # noqa: F811
    s, token = send(db, child, email="familie@example.org")
    db.add(StatusEvent(participant_id=child.id, type="withdrawn", on=TODAY, reason="by the family"))
    db.execute(Survey.__table__.update().values(sent_at=surveys.utc_now() - dt.timedelta(days=4)))
    db.commit()
    assert parent(world, "GET", token).status_code == 410
    assert surveys.send_reminders(db) == 0
    r = world.api("POST", f"/surveys/{s.id}/resend", "coordinator", json={})
    assert r.status_code == 409, r.get_json()


def test_the_staff_entering_the_form_revokes_its_link_and_the_parent_hears_it_is_answered(world, db, child):
    s, token = send(db, child)
    staff_entry(db, child)
    db.refresh(s)
    assert s.status == "revoked"
    assert db.execute(select(AuditRecord.reason).where(AuditRecord.entity == "survey",
                                                       AuditRecord.entity_id == str(s.id),
                                                       AuditRecord.field == "status")).scalars().all()[-1] == "form entered"
    r = parent(world, "POST", token, {"values": {"total_t": 60}})
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "already_submitted"
    assert r.get_json()["error"]["message"] == in_language(surveys.DONE, "en")
    assert world.app.test_client().get(f"/s/{token}").status_code == 409


def test_answers_arriving_after_the_staff_entered_the_form_answer_409_done(world, db, child):
    """The form entered while the link stayed open (written by SQL, past every service): 409, not 410."""
    _s, token = send(db, child)
    db.add(Assessment(participant_id=child.id, visit="month2", instrument="srs2", performed_on=TODAY,
                      values={"total_t": 58}, protocol_version=1))
    db.commit()
    r = parent(world, "POST", token, {"values": {"total_t": 60}})
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "already_submitted"


# --- 4. the address limit is for unknown links only; IPv6 by its /64 -----------------------------

def test_ipv6_addresses_are_held_by_their_64_and_a_valid_link_never_by_its_address(world, db, child, monkeypatch):
    monkeypatch.setenv("TRIAL_SURVEY_ADDRESS_LIMIT", "3")
    _s, token = send(db, child)
    for i in range(3):
        assert parent(world, "GET", f"{i}" * 43, addr=f"2001:db8:1:2::{i + 1}").status_code == 404
    assert parent(world, "GET", "7" * 43, addr="2001:db8:1:2:ffff::9").status_code == 429  # the same /64
    assert parent(world, "GET", "7" * 43, addr="2001:db8:1:3::1").status_code == 404  # another network
    assert parent(world, "GET", token, addr="2001:db8:1:2::1").status_code == 200
    assert surveys.address_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert surveys.address_key("::ffff:10.0.0.1") == "10.0.0.1"


# --- 5. the API tells a parent nothing of a lock ------------------------------------------------

def test_under_a_lock_the_api_names_neither_the_lock_nor_its_signer(world, db, child):
    _s, token = send(db, child)
    r = world.api("POST", "/locks", "manager", json={"kind": "hard", "meaning": "I approve the data as final.",
                                                     "password": PASSWORD, "accept_open_queries": True,
                                                     "accept_unsigned": True})
    assert r.status_code == 201, r.get_data(as_text=True)
    r = parent(world, "POST", token, {"values": {"total_t": 61}})
    assert r.status_code == 423
    body = r.get_data(as_text=True)
    assert r.get_json()["error"]["message"] == in_language(surveys.LOCKED, "en")
    assert "Manager" not in body and "manager@" not in body and "lock " not in body.lower()


# --- 6. provenance: who saw a live link; a staff browser never answers ---------------------------

def test_every_view_of_the_link_page_is_audited(app, world, db, child):
    s, _token = send(db, child)
    c = login(app, "coordinator")
    for _ in range(2):
        assert c.get(f"/surveys/{s.id}/qr").status_code == 200
    db.expire_all()
    views = db.execute(select(AuditRecord).where(AuditRecord.action == "view_link", AuditRecord.entity == "survey",
                                                 AuditRecord.entity_id == str(s.id))).scalars().all()
    assert len(views) == 2 and {v.actor for v in views} == {"coordinator@example.org"}


def test_a_browser_signed_in_as_staff_cannot_answer_as_the_parent(app, world, db, child):
    _s, token = send(db, child)
    c = login(app, "coordinator")
    r = c.post(f"/s/{token}", data={"v-total_t": "61"}, content_type=FORM)
    page = r.get_data(as_text=True).lower()
    assert r.status_code == 403 and ("sign out" in page or "melden sie sich" in page), page
    r = parent(world, "POST", token, {"values": {"total_t": 61}}, client=c)
    assert r.status_code == 403 and "sign out" in r.get_json()["error"]["message"]
    assert db.execute(select(func.count()).select_from(Assessment).where(Assessment.participant_id == child.id,
                                                                         Assessment.visit == "month2")).scalar() == 0
    assert parent(world, "POST", token, {"values": {"total_t": 61}}).status_code == 201  # the family's own browser


# --- 7. answers that could not be saved are recorded and told to the coordinators ------------------

def test_answers_refused_for_the_childs_state_are_recorded_and_told_to_the_coordinators(world, db, child):
    s, token = send(db, child)
    db.add(NotDone(participant_id=child.id, visit="month2", instrument="srs2", reason="refused"))
    db.commit()
    r = parent(world, "POST", token, {"values": {"total_t": 61}})
    assert r.status_code == 410 and child.study_id not in r.get_data(as_text=True)
    db.expire_all()
    rec = db.execute(select(AuditRecord).where(AuditRecord.action == "answers_refused",
                                               AuditRecord.entity_id == str(s.id))).scalar_one()
    assert rec.actor == surveys.PROVENANCE and rec.reason.startswith(f"survey {s.id}: not saved:")
    coordinator = db.execute(select(User).where(User.email == "coordinator@example.org")).scalar_one()
    notes = db.execute(select(Notification).where(Notification.user_id == coordinator.id)).scalars().all()
    assert any(child.study_id in n.message and "could not be saved" in n.message for n in notes)
    other = db.execute(select(User).where(User.email == "coordinator_no@example.org")).scalar_one_or_none()
    if other is not None:  # another site's coordinator hears nothing
        assert not db.execute(select(Notification).where(Notification.user_id == other.id)).scalars().all()


# --- 8. two reminder runs at once queue one reminder ---------------------------------------------

def test_two_reminder_runs_at_once_queue_one_reminder(inbox):  # noqa: F811
    fresh = FreshDatabase("survey_reminders")
    try:
        app = create_app({"DATABASE_URL": fresh.url, "ENGINE": fresh.engine, "TESTING": True, "SECRET_KEY": "t"})
        factory = app.extensions["trial.sessions"]
        s0 = factory()
        w = World(s0, app).setup()
        w.open(SEED)
        r = TODAY - dt.timedelta(days=60)
        p, _ = randomized_before(w, s0, r)
        backdate_randomization(s0, dt.datetime.combine(r, dt.time(10, 0)), p.id)
        sv, _token = surveys.send_survey(s0, CLI, p.study_id, {**SEND, "email": "familie@example.org"})
        s0.commit()
        s0.execute(Survey.__table__.update().values(sent_at=surveys.utc_now() - dt.timedelta(days=4)))
        s0.commit()
        start, done = threading.Barrier(2), threading.Barrier(2)
        counts = []

        def run():
            s = factory()
            try:
                start.wait()
                n = surveys.send_reminders(s)
                try:  # the first to count waits a moment for the other, which waits for its row
                    done.wait(timeout=2)
                except threading.BrokenBarrierError:
                    pass
                s.commit()
                counts.append(n)
            finally:
                s.close()
        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(counts) == [0, 1]
        s0.expire_all()
        assert s0.execute(select(Survey.reminders_sent)).scalar_one() == 1
        assert s0.execute(select(func.count()).select_from(MailMessage).where(MailMessage.kind == f"survey:{sv.id}")
                          ).scalar_one() == 2  # the invitation, one reminder
        s0.close()
    finally:
        fresh.drop()


# --- 9. the attempts do not grow forever ---------------------------------------------------------

def test_old_attempts_are_purged_and_a_limited_one_is_not_kept(world, db, child):
    _s, token = send(db, child)
    old = surveys.utc_now() - surveys.ATTEMPTS_KEPT - dt.timedelta(minutes=1)
    db.add_all([SurveyAttempt(remote_addr="10.0.0.9", at=old, outcome="unknown") for _ in range(3)])
    surveys.note_attempt(db, token, "10.0.0.9", "ok")
    surveys.note_attempt(db, token, "10.0.0.9", "limited")
    db.commit()
    assert db.execute(select(func.count()).select_from(SurveyAttempt)).scalar() == 4
    assert surveys.purge_attempts(db) == 3
    db.commit()
    assert db.execute(select(SurveyAttempt.outcome)).scalars().all() == ["ok"]
    from trial.cli.checks import checks_run
    assert "older than the rate limits' longest window" in " ".join(checks_run.help.split())


# --- 10. absolute links; an e-mail only when it can be sent and work ------------------------------

def test_an_email_needs_the_base_url_and_the_qr_page_uses_this_host(app, world, db, child, inbox, monkeypatch):  # noqa: F811
    monkeypatch.delenv("TRIAL_BASE_URL")
    r = world.api("POST", f"/participants/{child.study_id}/surveys", "coordinator",
                  json={**SEND, "email": "familie@example.org"})
    assert r.status_code == 400 and "TRIAL_BASE_URL" in r.get_json()["error"]["fields"]["email"]
    assert db.execute(select(func.count()).select_from(Survey)).scalar() == 0
    r = world.api("POST", f"/participants/{child.study_id}/surveys", "coordinator", json=SEND)
    assert r.status_code == 201 and r.get_json()["link"].startswith("http://localhost/s/")
    assert r.get_json()["emailed"] is False
    page = login(app, "coordinator").get(f"/surveys/{r.get_json()['id']}/qr").get_data(as_text=True)
    assert "http://localhost/s/" in page
    monkeypatch.delenv("TRIAL_SMTP_URL")
    monkeypatch.setenv("TRIAL_BASE_URL", "https://trial.example.org")
    r = world.api("POST", f"/surveys/{r.get_json()['id']}/resend", "coordinator", json={"email": "familie@example.org"})
    assert r.status_code == 400 and "e-mail" in r.get_json()["error"]["fields"]["email"]


# --- 12. a stale staff session does not send the parent to the staff login ------------------------

def test_a_stale_staff_session_leaves_the_parents_page_alone(app, world, db, child):
    _s, token = send(db, child)
    c = login(app, "coordinator")
    with c.session_transaction() as sess:
        sess["_login_at"] = sess["_seen"] = time.time() - 3 * 24 * 3600
    r = c.get(f"/s/{token}")
    assert r.status_code == 200 and "/login" not in r.headers.get("Location", "")
    assert c.get("/").status_code == 302  # (the staff pages still end the stale session)


# --- 13. finite numbers, bounded text ------------------------------------------------------------

def test_non_finite_numbers_and_endless_text_are_refused():
    ins = {"key": "x", "fields": [{"key": "n", "label": "N", "type": "number", "required": False},
                                  {"key": "t", "label": "T", "type": "text", "required": False}]}
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValidationError) as e:
            outcomes.validate_values(ins, {"n": bad})
        assert "values.n" in e.value.fields or "n" in e.value.fields
    with pytest.raises(ValidationError) as e:
        outcomes.validate_values(ins, {"t": "a" * (outcomes.TEXT_MAX + 1)})
    assert outcomes.validate_values(ins, {"n": 1.5, "t": "a" * outcomes.TEXT_MAX}) == {"n": 1.5,
                                                                                    "t": "a" * outcomes.TEXT_MAX}


def test_a_parent_posting_nan_saves_nothing(world, db, child):
    _s, token = send(db, child)
    r = world.app.test_client().open(f"/api/v1/surveys/{token}", method="POST", data='{"values": {"total_t": NaN}}',
                                     content_type="application/json")
    assert r.status_code == 400
    assert db.execute(select(func.count()).select_from(Assessment).where(Assessment.visit == "month2")).scalar() == 0


# --- 16. expiry at the site's midnight ------------------------------------------------------------

@pytest.mark.parametrize("tz", ["Asia/Seoul", "America/Sao_Paulo"])
def test_a_link_expires_at_midnight_at_the_site(world, db, child, tz):
    db.execute(Site.__table__.update().where(Site.id == child.site_id).values(timezone=tz))
    db.commit()
    db.expire_all()
    s, _token = send(db, db.get(Participant, child.id))
    closes = surveys.survey_window(db, db.get(Participant, child.id),
                                   next(v for v in surveys.current_protocol(db).content["visits"]
                                        if v["key"] == "month2"))[1]
    midnight = dt.datetime.combine(closes + dt.timedelta(days=1), dt.time(), zoneinfo.ZoneInfo(tz))
    utc = midnight.astimezone(dt.UTC).replace(tzinfo=None)
    assert s.expires_at == utc and utc.time() != dt.time()  # (not UTC's midnight)
    assert surveys.status_of(s, utc - dt.timedelta(minutes=1)) == "sent"
    assert surveys.status_of(s, utc) == "expired"
    assert surveys.as_dict(s)["expires_at"] == utc.isoformat() + "Z"


# --- 17. no consent due once the participation ended ----------------------------------------------

def test_no_reconsent_is_due_for_a_child_whose_follow_up_ended_or_who_finished(world, db):
    from tests.test_consent import TOML, amend, new_document
    world.open(SEED)
    kids = [randomized_before(world, db, TODAY - dt.timedelta(days=61))[0] for _ in range(3)]
    stays, withdrew, finished = kids
    db.commit()
    r = world.api("POST", f"/participants/{withdrew.study_id}/consent-withdrawals", "coordinator",
                  json={"on": (TODAY - dt.timedelta(days=5)).isoformat(), "scope": "follow_up", "data_use": "keep"})
    assert r.status_code == 201, r.get_json()
    db.add(Assessment(participant_id=finished.id, visit="month12", instrument="srs2", performed_on=TODAY,
                      values={"total_t": 50}, protocol_version=1))
    db.commit()
    amend(db, TOML + new_document("data_protection", required=True, reconsent=True),
          effective_from=TODAY - dt.timedelta(days=31))
    db.expire_all()
    due = consent.due_for(db, [db.get(Participant, p.id) for p in kids])
    assert [d["study_id"] for d in due] == [stays.study_id]


# --- 11. the printed page speaks the family's language ---------------------------------------------

def test_the_printed_qr_page_is_in_the_familys_language(app, world, db, child):
    from flask_babel import force_locale

    from trial.http import day
    s, _token = send(db, child)  # in German
    page = login(app, "coordinator").get(f"/surveys/{s.id}/qr").get_data(as_text=True)
    printed = page.split('<div class="printed"')[1].split("</div>")[0]
    assert 'lang="de"' in printed and "SRS-2 (Elternangabe)" in printed and "SRS-2 (parent-reported)" not in printed
    last = surveys.local_date(s.expires_at - dt.timedelta(seconds=1), db.get(Site, child.site_id).timezone)
    with app.test_request_context():
        with force_locale("de"):
            german = day(last)
            ask = in_language("Please answer this questionnaire on your phone or computer: scan the code or type "
                              "the link.", "de")
        with force_locale("en"):
            english = day(last)
    assert german != english and german in printed and english not in printed and ask in printed
    assert "Back to" in page  # (the coordinator's own notes stay in the coordinator's language)
