"""The weekly digest e-mail (trial.digest): to each site's coordinators and blinded assessors, the
visits coming due in the next seven days and the queries waiting for them, through the outbox to a
real local SMTP server; never an arm (every arm's label in every language and every arm's key are
absent from the assessor's and the coordinator's digest); one a week however often the checks run,
again the next week; none for a user who opted out (on the language page, audited), a deactivated
user, a therapist, a monitor or anyone else; none without something to tell, under a lock, or
without a relay; written through the translator of the recipient's language."""
from __future__ import annotations

import datetime as dt
import email.header
import re

import pytest
from babel.dates import format_date
from sqlalchemy import select

from tests.helpers import CLI, PASSWORD, backdate_randomization
from tests.test_datamanagement import cli_trial, inbox  # noqa: F401  (a real SMTP server, the outbox's relay)
from tests.test_lock import SEED, child
from trial.audit.models import AuditRecord
from trial.auth import service as users
from trial.auth.models import User
from trial.digest.service import queue_digests, week_of
from trial.notify.models import MailMessage
from trial.notify.service import send_pending
from trial.participants.models import Assessment
from trial.protocol.service import current as current_protocol
from trial.queries import service as queries
from trial.timeline import today

ON = today()
SUBJECT = "Weekly digest for the week of"


def randomized_days_ago(world, days: int, site: str = "AT01"):
    """A child randomized ``days`` ago (its month-2 window opens 47 days after randomization)."""
    p = child(world, site)
    world.randomize(p)
    backdate_randomization(world.db, dt.datetime.combine(ON - dt.timedelta(days=days), dt.time(10)), p.id)
    return p


@pytest.fixture()
def due(world, db):
    """AT01: a child whose month-2 window opened three days ago, one whose window opens in five
    days, one whose window opens in 17 days (not this week's); a query for the coordinator and
    one for the assessor (raised by the manager). NO01: nothing."""
    world.open(SEED)
    now, soon, later = (randomized_days_ago(world, n) for n in (50, 42, 30))
    manager = world.users["manager"]
    ados = db.execute(select(Assessment.id).where(Assessment.participant_id == now.id,
                                                  Assessment.instrument == "ados2")).scalar_one()
    queries.raise_query(db, manager, {"study_id": now.study_id, "on": {"kind": "participant"}, "text": "Consent date?"})
    queries.raise_query(db, manager, {"study_id": now.study_id, "on": {"kind": "assessment", "id": ados, "field": "rrb"},
                                      "text": "RRB of 4?"})
    db.commit()
    return {"now": now, "soon": soon, "later": later, "world": world}


def digests(db) -> dict[str, MailMessage]:
    rows = db.execute(select(MailMessage).where(MailMessage.subject.contains(SUBJECT))).scalars()
    return {m.recipient: m for m in rows}


def arm_words(db) -> tuple[list[str], list[str]]:
    """Every arm's label in every language of the protocol, and every arm's key."""
    arms = current_protocol(db).content["arms"]
    return [w for a in arms for w in (a["label"], *(a.get("labels") or {}).values())], [a["key"] for a in arms]


def assert_no_arm(words: tuple[list[str], list[str]], text: str) -> None:
    labels, keys = words
    assert labels and keys
    for label in labels:
        assert label.lower() not in text.lower(), label
    for key in keys:
        assert not re.search(rf"\b{re.escape(key)}\b", text, re.IGNORECASE), key


def body_of(message) -> str:
    return message.get_payload(decode=True).decode()


def subject_of(message) -> str:
    return str(email.header.make_header(email.header.decode_header(message["Subject"])))


def en(day: dt.date) -> str:
    return format_date(day, "medium", locale="en")


def test_the_digest_arrives_at_a_local_smtp_server_names_the_visits_due_and_no_arm(due, db, inbox):
    now, soon, later = due["now"], due["soon"], due["later"]
    assert queue_digests(db, ON) == 2
    db.commit()
    assert send_pending(db)[1] == 0
    mails = {m["To"]: m for m in inbox.wait(2) if subject_of(m).startswith(SUBJECT)}
    # the AT01 coordinator and assessor; not the therapist, the monitor, the manager, the
    # statistician or the admin, nor the NO01 coordinator (nothing to tell there)
    assert set(mails) == {"coordinator@example.org", "assessor@example.org"}
    for who, waiting in (("coordinator", 1), ("assessor", 1)):
        m = mails[f"{who}@example.org"]
        text = body_of(m)
        assert m["From"] == "trial@example.org" and subject_of(m) == f"{SUBJECT} {en(week_of(ON))}"
        assert f"- {now.study_id}: 2 months, window {en(ON - dt.timedelta(days=3))} to {en(ON + dt.timedelta(days=25))}" in text
        assert f"- {soon.study_id}: 2 months, window {en(ON + dt.timedelta(days=5))} to {en(ON + dt.timedelta(days=33))}" in text
        assert later.study_id not in text  # its window opens in 17 days
        assert "AT01 (Vienna)" in text and "NO01" not in text
        assert f"Queries waiting for your answer: {waiting}" in text
        assert "https://trial.example.org/visits?kind=week&site=AT01" in text
        assert "https://trial.example.org/queries?status=open&mine=1&site=AT01" in text
        assert 'untick "Send me the weekly digest"' in text
        assert_no_arm(arm_words(db), text + subject_of(m))
    db.expire_all()
    marked = {u.email: u.digest_week for u in db.execute(select(User)).scalars()}
    assert marked["coordinator@example.org"] == marked["assessor@example.org"] == week_of(ON)
    assert {e for e, w in marked.items() if w is not None} == {"coordinator@example.org", "assessor@example.org"}


def test_one_digest_a_week_however_often_the_checks_run_and_again_the_next_week(due, db, inbox):
    assert queue_digests(db, ON) == 2
    db.commit()
    monday = week_of(ON)
    for day in (ON, monday, monday + dt.timedelta(days=6)):  # the same week: the same day again, its first and last
        assert queue_digests(db, day) == 0
    db.commit()
    assert len(db.execute(select(MailMessage).where(MailMessage.subject.startswith(SUBJECT))).all()) == 2
    assert queue_digests(db, monday + dt.timedelta(days=7)) == 2  # next week
    db.commit()
    assert len(db.execute(select(MailMessage).where(MailMessage.subject.startswith(SUBJECT))).all()) == 4
    db.expire_all()
    assert db.get(User, due["world"].users["assessor"].id).digest_week == monday + dt.timedelta(days=7)


def test_nothing_to_tell_sends_nothing_and_leaves_the_week_open_for_a_later_run(due, db, inbox):
    w = due["world"]
    coordinator_no = w.users["coordinator_no"]
    assert queue_digests(db, ON) == 2 and "coordinator_no@example.org" not in digests(db)
    db.expire_all()
    assert db.get(User, coordinator_no.id).digest_week is None
    db.commit()
    p = randomized_days_ago(w, 48, "NO01")  # a visit at NO01 comes due later the same week
    assert queue_digests(db, ON) == 1
    db.commit()
    text = digests(db)["coordinator_no@example.org"].body
    assert p.study_id in text and "NO01 (Bergen)" in text and "AT01" not in text
    assert "Queries waiting for your answer: 0" in text
    assert_no_arm(arm_words(db), text)


def test_an_opted_out_or_deactivated_user_gets_none(due, db, inbox):
    w = due["world"]
    assert users.set_weekly_digest(db, w.users["coordinator"], False) is True
    assert users.set_weekly_digest(db, w.users["coordinator"], False) is False  # no change, nothing audited
    assert users.deactivate(db, CLI, w.users["assessor"], "left the trial")
    db.commit()
    assert queue_digests(db, ON) == 0 and digests(db) == {}
    rec = db.execute(select(AuditRecord).where(AuditRecord.entity == "user", AuditRecord.field == "weekly_digest")).scalars().all()
    assert [(r.entity_id, r.old, r.new, r.actor) for r in rec] == [("coordinator@example.org", "true", "false",
                                                                   "coordinator@example.org")]
    # back in: the coordinator's digest comes with the next run of the same week
    users.set_weekly_digest(db, w.users["coordinator"], True)
    db.commit()
    assert queue_digests(db, ON) == 1 and set(digests(db)) == {"coordinator@example.org"}


def test_no_digest_under_a_lock_or_without_a_relay(due, db, inbox, monkeypatch):
    w = due["world"]
    monkeypatch.delenv("TRIAL_SMTP_URL")
    assert queue_digests(db, ON) == 0
    monkeypatch.setenv("TRIAL_SMTP_URL", f"smtp://127.0.0.1:{inbox.port}")
    r = w.api("POST", "/locks", "manager", json={"kind": "soft", "meaning": "Interim look.", "password": PASSWORD,
                                                 "accept_open_queries": True})
    assert r.status_code == 201, r.get_data(as_text=True)
    db.expire_all()
    assert queue_digests(db, ON) == 0
    assert digests(db) == {} and all(u.digest_week is None for u in db.execute(select(User)).scalars())


def test_the_digest_is_written_in_the_recipients_language(due, db, inbox, monkeypatch):
    """Through the translator of the user's language (a stand-in catalogue marks each text; the
    German catalogue's words come with the central translation round), with the protocol's visit
    label and the days in that language."""
    w = due["world"]
    assessor = db.get(User, w.users["assessor"].id)
    assessor.language = "de"
    db.commit()
    monkeypatch.setattr("trial.catalogue.translator", lambda language: lambda s: f"[{language or 'en'}]{s}")
    assert queue_digests(db, ON) == 2
    mails = digests(db)
    de, en_ = mails["assessor@example.org"], mails["coordinator@example.org"]
    assert de.subject == f"[de]{SUBJECT} {format_date(week_of(ON), 'medium', locale='de')}"
    opens = format_date(ON - dt.timedelta(days=3), "medium", locale="de")
    assert f"[de]- {due['now'].study_id}: 2 Monate, window {opens}" in de.body
    assert "[de]Queries waiting for your answer: 1" in de.body and "[en]" not in de.body
    assert en_.subject.startswith(f"[en]{SUBJECT}") and "[de]" not in en_.body and ": 2 months, window" in en_.body
    assert_no_arm(arm_words(db), de.body)


def test_the_choice_is_on_the_language_page_for_coordinators_and_assessors_and_audited(due, app, db):
    c = app.test_client()
    c.post("/login", data={"email": "assessor@example.org", "password": PASSWORD})
    page = c.get("/language").get_data(as_text=True)
    assert "Send me the weekly digest" in page and 'action="/digest"' in page
    assert re.search(r'<input[^>]*checked[^>]*name="weekly_digest"|<input[^>]*name="weekly_digest"[^>]*checked', page)
    r = c.post("/digest", data={})  # unticked
    assert r.status_code == 302 and r.headers["Location"].endswith("/language")
    db.expire_all()
    assessor = db.get(User, due["world"].users["assessor"].id)
    assert assessor.weekly_digest is False
    assert "You will get no weekly digest." in c.get("/language").get_data(as_text=True)
    assert not re.search(r'<input[^>]*name="weekly_digest"[^>]*checked', c.get("/language").get_data(as_text=True))
    rec = db.execute(select(AuditRecord).where(AuditRecord.field == "weekly_digest")).scalars().all()
    assert [(r.actor, r.old, r.new) for r in rec] == [("assessor@example.org", "true", "false")]
    c.post("/digest", data={"weekly_digest": "y"})
    db.expire_all()
    assert db.get(User, assessor.id).weekly_digest is True
    # a therapist or a monitor is sent no digest: no choice shown
    for who in ("therapist", "monitor"):
        t = app.test_client()
        t.post("/login", data={"email": f"{who}@example.org", "password": PASSWORD})
        assert "weekly digest" not in t.get("/language").get_data(as_text=True)


def test_trial_checks_run_queues_the_digest_before_sending_the_outbox(tmp_path, inbox):
    from tests.test_cli import ok as cli_ok
    with cli_trial(tmp_path, "digest") as (d, s, _, p):
        backdate_randomization(s, dt.datetime.combine(ON - dt.timedelta(days=50), dt.time(10)))
        study_id, words = p.study_id, arm_words(s)
        s.close()
        out = cli_ok(d.run("checks", "run", "--on", ON.isoformat())).stdout
        assert "2 weekly digests queued" in out and "e-mails sent" in out
        mails = [m for m in inbox.wait(2) if subject_of(m).startswith(SUBJECT)]
        assert sorted(m["To"] for m in mails) == ["assessor@example.org", "coordinator@example.org"]
        for m in mails:
            assert f"- {study_id}: 2 months, window" in body_of(m)
            assert_no_arm(words, body_of(m))
        assert "0 weekly digests queued" in cli_ok(d.run("checks", "run", "--on", ON.isoformat())).stdout
        assert "2 weekly digests queued" in cli_ok(d.run("checks", "run", "--on", (ON + dt.timedelta(days=7)).isoformat())).stdout
        assert d.count("mail_outbox", f"subject LIKE '{SUBJECT}%' AND sent_at IS NOT NULL") == 4
        assert "queue this week's digest e-mail" in " ".join(cli_ok(d.run("checks", "run", "--help")).stdout.split())
