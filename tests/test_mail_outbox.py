"""Mail that cannot fail silently (issue 27), against a real local SMTP server (aiosmtpd) that
refuses (451 to RCPT, 554 to DATA) and then accepts, on a committed database of its own (SQLite, or
PostgreSQL when the suite runs on it) so that the app, /readyz and the `trial` command in a
subprocess all see it: retries wait 1, 2, 4 ... minutes and nothing is tried before it is due; an
accepted e-mail is delivered exactly once, also with two senders at once; after the last attempt the
e-mail is a dead letter, kept, logged without its body and shown on the managers' and admins' home
pages, in /readyz and in `trial mail status`; `trial mail send` exits 2 while an SAE e-mail is
undelivered and 1 for other dead letters; `--retry-dead` queues them again; `trial audit anchor`
e-mails the head to the managers and only them; a relay that is down keeps the e-mail queued with
its error while the request that queued it is answered as usual."""
from __future__ import annotations

import asyncio
import datetime as dt
import email
import json
import logging
import socket
import threading
import time
from types import SimpleNamespace

import pytest
from sqlalchemy import select, update

from tests.conftest import FreshDatabase
from tests.helpers import CLI, PASSWORD, World
from tests.test_cli import Db, ok
from trial import create_app
from trial.auth import service as users
from trial.db import make_session_factory, utcnow
from trial.notify import service as outbox
from trial.notify.models import MailMessage
from trial.ops.service import figures

TERM = "Febrile seizure"  # in the SAE e-mail's body, never in a log line or `trial mail status`


def sae_body() -> dict:
    return {"term": TERM, "onset": (dt.date.today() - dt.timedelta(days=2)).isoformat(), "severity": "severe",
            "serious": True, "seriousness": ["hospitalisation"], "relatedness": "not_related",
            "expectedness": "expected", "outcome": "recovering", "description": "Admitted overnight."}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Relay:
    """A real SMTP server on a free local port that accepts (``mode = "accept"``), answers RCPT
    with 451 (``"rcpt"``) or DATA with 554 (``"data"``). ``tries`` counts the RCPTs (one per
    attempt), ``messages`` what it accepted; ``slow`` seconds of delay before accepting DATA."""

    def __init__(self, ssl_context=None):
        from aiosmtpd.controller import Controller
        self.mode, self.slow, self.tries, self.messages = "accept", 0.0, 0, []
        relay = self

        class Handler:
            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
                relay.tries += 1
                if relay.mode == "rcpt":
                    return "451 4.3.0 Mailbox temporarily unavailable, try again later"
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server, session, envelope):
                if relay.mode == "data":
                    return "554 5.6.0 Message refused by policy"
                if relay.slow:
                    await asyncio.sleep(relay.slow)
                relay.messages.append(email.message_from_bytes(envelope.content))
                return "250 OK"
        self.port = free_port()
        # with ``ssl_context``: implicit TLS from the first byte (what smtps:// expects)
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, ssl_context=ssl_context)
        self.controller.start()

    def wait(self, n: int, timeout: float = 10.0) -> list:
        end = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < end:
            time.sleep(0.02)
        return self.messages

    def stop(self):
        self.controller.stop()


@pytest.fixture()
def live(monkeypatch, tmp_path):
    """A committed database with the world's users (one manager), open randomization and one
    randomized child; an app on it, a session factory and the CLI (subprocess) on it."""
    monkeypatch.setenv("TRIAL_INSTANCE_PATH", str(tmp_path / "instance"))
    monkeypatch.setenv("TRIAL_MAIL_FROM", "trial@example.org")
    monkeypatch.setenv("TRIAL_BASE_URL", "https://trial.example.org")
    monkeypatch.setattr("trial.notify.service._relay_down_until", 0.0)
    fresh = FreshDatabase("mail")
    app = create_app({"ENGINE": fresh.engine, "TESTING": True, "WTF_CSRF_ENABLED": False, "SECRET_KEY": "test-secret"})
    factory = make_session_factory(fresh.engine)
    setup = factory()
    w = World(setup, app).setup()
    w.open()
    child = w.ready()
    w.randomize(child)
    setup.close()
    yield SimpleNamespace(world=w, app=app, factory=factory, engine=fresh.engine, study_id=child.study_id,
                          cli=Db(fresh, tmp_path / "instance"))
    fresh.drop()


@pytest.fixture()
def relay(monkeypatch):
    box = Relay()
    monkeypatch.setenv("TRIAL_SMTP_URL", f"smtp://127.0.0.1:{box.port}")
    yield box
    box.stop()


def letters(t) -> list[MailMessage]:
    """The outbox as committed (a short session of its own: on SQLite an open one would hold the write lock)."""
    with t.factory() as s:
        return list(s.execute(select(MailMessage).order_by(MailMessage.id)).scalars())


def send(t) -> tuple[int, int]:
    with t.factory() as s:
        return outbox.send_pending(s)


def wait_over(t) -> None:
    """Time passes: every waiting e-mail's next attempt is due (moved a second into the past)."""
    with t.factory() as s:
        s.execute(update(MailMessage).where(MailMessage.sent_at.is_(None), MailMessage.dead_at.is_(None))
                  .values(next_attempt_at=utcnow() - dt.timedelta(seconds=1)))
        s.commit()


def report_sae(t):
    r = t.world.api("POST", f"/participants/{t.study_id}/adverse-events", "coordinator", json=sae_body())
    assert r.status_code == 201, r.get_data(as_text=True)
    return r.get_json()


def home(t, who: str) -> str:
    c = t.app.test_client()
    assert c.post("/login", data={"email": f"{who}@example.org", "password": PASSWORD}).status_code == 302
    return " ".join(c.get("/").get_data(as_text=True).split())


# --- retries with backoff, delivered once --------------------------------------------------------

def test_the_waits_between_attempts_double_from_a_minute_up_to_an_hour():
    assert [outbox.backoff(n) / dt.timedelta(minutes=1) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert outbox.backoff(500) == dt.timedelta(hours=1)


def test_a_refusing_relay_is_tried_again_after_growing_waits_and_the_e_mail_delivered_once(live, relay):
    relay.mode = "rcpt"
    before = utcnow()
    report_sae(live)  # sent after the commit: refused
    after = utcnow()
    [m] = letters(live)
    assert (m.kind, m.attempts, m.sent_at, m.dead_at) == ("sae", 1, None, None)
    assert "451" in m.last_error and relay.tries == 1 and relay.messages == []
    assert before + dt.timedelta(minutes=1) <= m.next_attempt_at <= after + dt.timedelta(minutes=1)
    assert send(live) == (0, 0) and relay.tries == 1  # not tried again before it is due

    for mode, code, attempts, wait in (("data", "554", 2, 2), ("rcpt", "451", 3, 4), ("data", "554", 4, 8)):
        wait_over(live)
        relay.mode = mode
        before = utcnow()
        assert send(live) == (0, 1)
        after = utcnow()
        [m] = letters(live)
        assert m.attempts == attempts and code in m.last_error and relay.tries == attempts
        assert before + dt.timedelta(minutes=wait) <= m.next_attempt_at <= after + dt.timedelta(minutes=wait)
        assert send(live) == (0, 0) and relay.tries == attempts  # the wait grew; nothing before it is over

    wait_over(live)
    relay.mode = "accept"
    assert send(live) == (1, 0)
    [m] = letters(live)
    assert m.sent_at is not None and (m.attempts, m.last_error, m.next_attempt_at, m.dead_at) == (5, None, None, None)
    [got] = relay.messages
    assert got["To"] == "manager@example.org" and got["Subject"] == f"SAE at AT01: {live.study_id}"
    assert TERM in got.get_payload(decode=True).decode()
    wait_over(live)
    assert send(live) == (0, 0) and len(relay.messages) == 1  # exactly once


def test_two_senders_at_once_send_each_e_mail_once(live, relay, monkeypatch):
    w = live.world
    monkeypatch.setattr("trial.notify.service._relay_down_until", time.monotonic() + 3600)  # queue without sending
    with live.factory() as s:
        ids = [w.users[k].id for k in ("manager", "admin", "coordinator")]
        assert outbox.mail(s, ids, "Three", "Three e-mails, each to be sent once.") == 3
        s.commit()
    assert len(letters(live)) == 3 and relay.tries == 0
    relay.slow = 0.3  # the first sender is still talking to the relay when the second looks
    start, results = threading.Barrier(2), []

    def sender():
        start.wait()
        results.append(send(live))
    threads = [threading.Thread(target=sender) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert sum(r[0] for r in results) == 3 and sum(r[1] for r in results) == 0, results
    assert sorted(m["To"] for m in relay.messages) == ["admin@example.org", "coordinator@example.org",
                                                        "manager@example.org"]
    assert all(m.sent_at is not None and m.attempts == 1 for m in letters(live))


# --- the dead letter ---------------------------------------------------------------------------

def test_after_the_last_attempt_a_dead_letter_is_kept_logged_and_shown_until_queued_again(live, relay, monkeypatch,
                                                                                            caplog):
    monkeypatch.setenv("TRIAL_MAIL_ATTEMPTS", "3")
    relay.mode = "data"
    report_sae(live)
    with caplog.at_level(logging.ERROR, logger="trial.notify.service"):
        for _ in range(2):
            wait_over(live)
            assert send(live) == (0, 1)
    [m] = letters(live)
    assert m.attempts == 3 and m.dead_at is not None and m.next_attempt_at is None and m.sent_at is None
    assert "554" in m.last_error and m.body  # kept, body and all
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "example.org" in line and "sae" in line and "dead letter" in line and "SMTP 554" in line
    assert "manager@" not in line and TERM not in line and live.study_id not in line
    wait_over(live)
    assert send(live) == (0, 0) and relay.tries == 3  # a dead letter is not tried again

    # the managers' and the admin's home pages; nobody else's
    notice = "1 e-mail could not be delivered (1 about serious adverse events)."
    for who in ("manager", "admin"):
        page = home(live, who)
        assert notice in page and "trial mail status --retry-dead" in page, who
    assert "could not be delivered" not in home(live, "coordinator")
    # /readyz, and the metrics' pending count leaves it out
    r = live.app.test_client().get("/readyz")
    assert r.status_code == 503
    mail = r.get_json()["checks"]["mail"]
    assert "1 e-mail(s) given up" in mail and "1 about serious adverse events" in mail and "trial mail status" in mail
    assert figures(live.engine)["mail_pending"] == 0

    # `trial mail status`: the dead letter's recipient, subject and last error, never its body
    out = ok(live.cli.run("mail", "status")).stdout
    assert "waiting: 0 (0 due now)" in out and "dead letters: 1 sae" in out
    assert "manager@example.org" in out and f"SAE at AT01: {live.study_id}" in out and "554" in out
    assert TERM not in out and "3 attempts" in out
    # `trial mail send` exits 2 while the SAE e-mail is undelivered
    r = live.cli.run("mail", "send")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r
    assert "0 sent" in r.stdout and "1 dead letters" in r.stdout
    assert "1 e-mail(s) about serious adverse events undelivered" in r.stderr
    assert relay.tries == 3

    # the relay repaired: the operator queues it again and sends it, once
    relay.mode = "accept"
    out = ok(live.cli.run("mail", "status", "--retry-dead")).stdout
    assert "1 dead letter(s) queued again" in out and "waiting: 1 (1 due now)" in out and "dead letters: none" in out
    [m] = letters(live)
    assert (m.dead_at, m.attempts, m.next_attempt_at, m.sent_at) == (None, 0, None, None)
    assert "1 sent, 0 failed, 0 still queued, 0 dead letters" in ok(live.cli.run("mail", "send")).stdout
    assert [x["To"] for x in relay.messages] == ["manager@example.org"]
    assert "0 sent" in ok(live.cli.run("mail", "send")).stdout and len(relay.messages) == 1
    assert "could not be delivered" not in home(live, "manager")
    assert live.app.test_client().get("/readyz").status_code == 200


def test_mail_send_exits_1_for_dead_letters_of_other_kinds_and_its_help_names_the_codes(live, relay, monkeypatch):
    help_ = ok(live.cli.run("mail", "send", "--help")).stdout
    assert "2 while an e-mail about a serious adverse event" in " ".join(help_.split())
    assert "1 while dead letters exist" in " ".join(help_.split())
    monkeypatch.setenv("TRIAL_MAIL_ATTEMPTS", "3")
    relay.mode = "rcpt"
    with live.factory() as s:
        outbox.mail(s, [live.world.users["coordinator"].id], "Your queries", "Two queries wait for you.")
        s.commit()  # the first attempt, refused
    wait_over(live)
    r = ok(live.cli.run("mail", "send"))  # the second, refused: still waiting, not a failure of the run
    assert "0 sent, 1 failed, 1 still queued, 0 dead letters" in r.stdout
    wait_over(live)
    r = live.cli.run("mail", "send")  # the third and last
    assert r.returncode == 1 and "1 dead letter(s)" in r.stderr and "retry-dead" in r.stderr, r
    [m] = letters(live)
    assert m.kind is None and m.dead_at is not None and m.attempts == 3
    assert "dead letters: 1 other" in ok(live.cli.run("mail", "status")).stdout
    page = home(live, "manager")
    assert "1 e-mail could not be delivered." in page and "serious adverse events" not in page.split("could not")[1][:40]


def test_mail_status_and_send_without_a_relay_configured(live, monkeypatch):
    monkeypatch.delenv("TRIAL_SMTP_URL", raising=False)
    r = live.cli.run("mail", "send")
    assert r.returncode == 1 and r.stderr.startswith("error: TRIAL_SMTP_URL is not set")
    out = ok(live.cli.run("mail", "status")).stdout
    assert "waiting: 0 (0 due now)" in out and "dead letters: none" in out
    assert ok(live.cli.run("mail", "status", "--retry-dead")).stdout.startswith("0 dead letter(s) queued again")


# --- the audit head to the managers --------------------------------------------------------------

def test_audit_anchor_e_mails_the_head_line_to_the_managers_and_only_them(live, relay, tmp_path, monkeypatch):
    with live.factory() as s:
        users.create_user(s, CLI, "manager2@example.org", "Second Manager", PASSWORD, [("manager", None)])
        gone = users.create_user(s, CLI, "manager3@example.org", "Former Manager", PASSWORD, [("manager", None)])
        users.deactivate(s, CLI, gone, "left the trial")
        s.commit()
    path = tmp_path / "offsite" / "anchors.jsonl"
    out = ok(live.cli.run("audit", "anchor", "--to", str(path))).stdout
    assert "its e-mail to 2 managers queued" in out
    got = relay.wait(2)
    time.sleep(0.2)  # (anything more would arrive with them)
    assert sorted(m["To"] for m in relay.messages) == ["manager2@example.org", "manager@example.org"]
    line = json.loads(path.read_text().splitlines()[-1])
    for m in got:
        assert m["Subject"] == f"Audit trail anchored: record {line['seq']}"
        body = m.get_payload(decode=True).decode()
        assert json.dumps(line, sort_keys=True) in body and "trial audit verify --anchors" in body
    sent = letters(live)
    assert {m.kind for m in sent} == {"anchor"} and all(m.sent_at is not None for m in sent)
    # without a relay the anchor is written and nothing is queued
    monkeypatch.delenv("TRIAL_SMTP_URL")
    r = ok(live.cli.run("audit", "anchor", "--to", str(path)))
    assert "e-mail" not in r.stdout and len(letters(live)) == 2 and len(path.read_text().splitlines()) == 2


# --- a relay that is down ------------------------------------------------------------------------

def test_a_relay_that_is_down_keeps_the_e_mail_queued_with_its_error_and_the_request_answered(live, monkeypatch):
    monkeypatch.setenv("TRIAL_SMTP_URL", f"smtp://127.0.0.1:{free_port()}")  # nothing listens there
    body = report_sae(live)
    assert body["serious"] is True and body["report_due"]
    notes = live.world.api("GET", "/notifications", "manager").get_json()
    assert any(live.study_id in n["message"] for n in notes)  # told in the app all the same
    [m] = letters(live)
    assert m.sent_at is None and m.dead_at is None and m.attempts == 1 and m.kind == "sae"
    assert m.last_error.startswith("relay unreachable") and m.next_attempt_at > utcnow()
    out = ok(live.cli.run("mail", "status")).stdout
    assert "waiting: 1 (0 due now)" in out and "oldest unsent" in out and "sae" in out
    r = live.cli.run("mail", "send")  # not due yet: nothing tried, and still exit 2 (an SAE e-mail undelivered)
    assert r.returncode == 2 and "0 sent, 0 failed, 1 still queued" in r.stdout, r
    assert live.app.test_client().get("/readyz").status_code == 200  # under an hour: not stuck yet
    with live.factory() as s:
        s.execute(update(MailMessage).values(created_at=utcnow() - dt.timedelta(hours=2)))
        s.commit()
    r = live.app.test_client().get("/readyz")
    assert r.status_code == 503 and "unsent for over an hour" in r.get_json()["checks"]["mail"]


# --- smtps:// verifies the relay's certificate ---------------------------------------------------

def self_signed(folder) -> tuple[str, str]:
    """A self-signed certificate for the name localhost (not for 127.0.0.1) and its key (PEM files in ``folder``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "relay.crt", folder / "relay.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


@pytest.fixture()
def tls_relay(monkeypatch, tmp_path):
    import ssl
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    box = Relay(ssl_context=context)
    box.cert = cert
    monkeypatch.setenv("TRIAL_SMTP_URL", f"smtps://localhost:{box.port}")
    yield box
    box.stop()


def test_smtps_refuses_a_relay_whose_certificate_is_not_trusted_and_sends_once_it_is(live, tls_relay, monkeypatch):
    monkeypatch.setattr("trial.notify.service._relay_down_until", time.monotonic() + 3600)  # queue without sending
    with live.factory() as s:
        assert outbox.mail(s, [live.world.users["manager"].id], "Over TLS", "Sent only to the real relay.") == 1
        s.commit()
    # a self-signed certificate nobody trusts: nothing is handed over, the e-mail waits with the reason
    assert send(live) == (0, 1)
    [m] = letters(live)
    assert m.sent_at is None and m.attempts == 1 and "CERTIFICATE_VERIFY_FAILED" in m.last_error
    assert tls_relay.tries == 0 and tls_relay.messages == []
    # the operator trusts the relay's certificate (the system's store, here SSL_CERT_FILE): sent
    monkeypatch.setenv("SSL_CERT_FILE", tls_relay.cert)
    wait_over(live)
    assert send(live) == (1, 0)
    [got] = tls_relay.wait(1)
    assert got["To"] == "manager@example.org" and got["Subject"] == "Over TLS"
    # trusted, but not the name the URL asks for: refused again (the name is checked too)
    monkeypatch.setenv("TRIAL_SMTP_URL", f"smtps://127.0.0.1:{tls_relay.port}")
    with live.factory() as s:
        assert outbox.mail(s, [live.world.users["manager"].id], "Wrong name", "Not to be sent.") == 1
        s.commit()
    assert send(live) == (0, 1)
    assert "CERTIFICATE_VERIFY_FAILED" in letters(live)[-1].last_error and len(tls_relay.messages) == 1


# --- an arm is e-mailed only to whoever may still know it when the message leaves ----------------

@pytest.mark.parametrize("change", ["made_assessor", "deactivated", "moved_to_another_site"])
def test_a_confirmation_queued_for_a_coordinator_who_lost_the_arm_before_the_relay_came_back_is_not_sent(
        live, relay, change, caplog):
    w = live.world
    with live.factory() as s:
        site = w.users["coordinator"].roles[0].site_id
        other = users.create_user(s, CLI, "coordinator2@example.org", "Second Coordinator", PASSWORD,
                                  [("coordinator", "AT01")])
        s.commit()
        other_id, kept_id = other.id, w.users["coordinator"].id
    child = w.ready()
    relay.mode = "rcpt"  # the relay is down while the child is randomized: both confirmations wait
    r = w.api("POST", f"/participants/{child.study_id}/randomize", "coordinator", headers={"Idempotency-Key": "k-m"})
    assert r.status_code == 201, r.get_data(as_text=True)
    queued = [m for m in letters(live) if m.kind == "randomization"]
    assert sorted((m.user_id, m.site_id, m.recipient) for m in queued) == [
        (kept_id, site, "coordinator@example.org"), (other_id, site, "coordinator2@example.org")]
    assert all(m.sent_at is None and m.attempts == 1 for m in queued)
    with live.factory() as s:  # meanwhile the second coordinator may no longer know the arm
        second = s.get(users.User, other_id)
        if change == "made_assessor":
            users.set_roles(s, CLI, second, [("assessor", "AT01")], reason="now assesses at AT01")
        elif change == "moved_to_another_site":
            users.set_roles(s, CLI, second, [("coordinator", "NO01")], reason="now coordinates at NO01")
        else:
            users.update_user(s, CLI, second, active=False, reason="left the hospital")
        s.commit()
    relay.mode = "accept"
    wait_over(live)
    with caplog.at_level(logging.WARNING, logger="trial.notify.service"):
        assert send(live) == (1, 1)
    [got] = relay.wait(1)
    assert got["To"] == "coordinator@example.org" and child.study_id in got["Subject"]
    time.sleep(0.2)
    assert len(relay.messages) == 1  # nothing for the second coordinator
    by_user = {m.user_id: m for m in letters(live) if m.kind == "randomization"}
    assert by_user[kept_id].sent_at is not None
    withheld = by_user[other_id]
    assert withheld.sent_at is None and withheld.dead_at is not None and withheld.next_attempt_at is None
    assert withheld.last_error == "recipient may no longer know the arm"
    [line] = [r_.getMessage() for r_ in caplog.records if r_.name == "trial.notify.service"]
    assert f"e-mail {withheld.id}" in line and "may no longer know the arm" in line
    assert withheld.body not in caplog.text and child.study_id not in caplog.text
    # a dead letter like any other (the operator sees it); queued again, it is checked again and withheld again
    out = live.cli.run("mail", "status").stdout
    assert "recipient may no longer know the arm" in out and withheld.body not in out
    with live.factory() as s:
        assert outbox.retry_dead(s) == 1
        s.commit()
    assert send(live) == (0, 1) and len(relay.messages) == 1
    again = {m.user_id: m for m in letters(live) if m.kind == "randomization"}[other_id]
    assert again.dead_at is not None and again.sent_at is None and again.last_error == "recipient may no longer know the arm"


def test_a_confirmation_still_leaves_for_a_coordinator_who_may_still_know_the_arm(live, relay):
    """The check passes for whoever may still know the arm: a coordinator who also became the
    site's therapist (an unblinded role) still gets it; so do e-mails of other kinds, which carry
    their user but no arm (a deactivated user's SAE e-mail is not this check's business)."""
    w = live.world
    with live.factory() as s:
        users.set_roles(s, CLI, s.get(users.User, w.users["coordinator"].id),
                        [("coordinator", "AT01"), ("therapist", "AT01")], reason="also treats")
        s.commit()
    child = w.ready()
    relay.mode = "rcpt"
    assert w.api("POST", f"/participants/{child.study_id}/randomize", "coordinator").status_code == 201
    relay.mode = "accept"
    wait_over(live)
    assert send(live) == (1, 0)
    [m] = [m for m in letters(live) if m.kind == "randomization"]
    assert m.sent_at is not None and m.user_id == w.users["coordinator"].id
    with live.factory() as s:
        assert outbox.mail(s, [w.users["manager"].id], "Other", "No arm here.") == 1
        s.commit()
    assert letters(live)[-1].user_id == w.users["manager"].id
