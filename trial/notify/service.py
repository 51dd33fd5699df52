"""Telling users: an in-app notification for each, and an e-mail when a relay is configured.

E-mails are queued in ``mail_outbox`` in the same transaction as the change they tell of, and
sent right after that transaction commits (trial.db calls the hook registered here); a relay that
is down leaves them queued for `trial mail send`. Nothing is e-mailed for a transaction that
rolls back.

Each e-mail has a ``kind`` (``"sae"`` for the serious adverse events, ``"anchor"``, ...). A failed
attempt puts the next one off (1, 2, 4 ... minutes, at most an hour); after TRIAL_MAIL_ATTEMPTS
attempts the e-mail is a dead letter: kept, never deleted, logged as an error (the recipient's
domain and the kind, never the body) and shown to the managers and admins until an operator queues
it again (`trial mail status --retry-dead`). A message is claimed before it is sent (its next
attempt moved past the sending), so two senders at once never send it twice."""
from __future__ import annotations

import datetime as dt
import logging
import secrets
import smtplib
import ssl
import time
from email.message import EmailMessage
from urllib.parse import parse_qs, unquote, urlsplit

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from trial import db as database
from trial import settings
from trial.auth.models import RoleAssignment, User
from trial.catalogue import N_, Msg, in_language
from trial.db import utcnow
from trial.errors import NotFound
from trial.notify.models import MailMessage, Notification
from trial.scope import can_see_arm

log = logging.getLogger(__name__)
PENDING = "trial.mail_pending"
SMTP_TIMEOUT = 5.0
SAE = "sae"  # the kind of the e-mails about serious adverse events: `trial mail send` exits 2 while one is undelivered
# the kind of the e-mails that name a child's arm (the randomization confirmation, trial.randomize.confirmation):
# each leaves only while its recipient (user_id) is active and may know the arms of its site (site_id)
NAMES_ARM = "randomization"
NO_LONGER_UNBLINDED = "recipient may no longer know the arm"
BACKOFF_FIRST = dt.timedelta(minutes=1)  # the wait after the first failed attempt, doubled after each further one
BACKOFF_CAP = dt.timedelta(hours=1)  # ... up to this
CLAIM = dt.timedelta(minutes=15)  # a message being sent is not due for another sender meanwhile
# bodies completed only when sent: a kind "<prefix>:<id>" whose prefix is here has its body filled by
# FILLERS[prefix](db, message) -> the text to send, or None when it may no longer be sent (a dead letter
# with NOT_SENDABLE); the outbox never keeps what is filled in (a survey's link: trial.surveys)
FILLERS: dict = {}
NOT_SENDABLE = "no longer to be sent (what it carried no longer holds)"


def smtp_url() -> str | None:
    return settings.current().smtp_url


FOOTER = N_("This message was sent by the trial system; log in to read and act on it.")


def notify(db: Session, user_ids, message: str, subject: str | None = None, link: str | None = None,
           kind: str | None = None) -> None:
    """In-app to each user (active ones); by e-mail too when a relay is configured. A composed
    message (trial.catalogue.Msg) is kept with its words, so that each user's page shows it in
    that user's language, and each e-mail is written in its recipient's language. ``kind`` marks
    the e-mails (``"sae"``: `trial mail send` fails while one is undelivered)."""
    ids = sorted(set(user_ids))
    if not ids:
        return
    users = db.execute(select(User).where(User.id.in_(ids), User.active.is_(True))).scalars().all()
    words = message.words() if isinstance(message, Msg) else None
    for u in users:
        db.add(Notification(user_id=u.id, message=str(message)[:1000], words=words, link=link, ref=new_ref()))
    if smtp_url():
        for u in users:
            body = in_language(message, u.language)
            db.add(MailMessage(recipient=u.email, subject=in_language(subject or message, u.language)[:300],
                               body=body + (f"\n\n{absolute(link)}" if link else "") + "\n\n" + in_language(FOOTER, u.language),
                               kind=kind, user_id=u.id))
        db.info[PENDING] = True


def mail(db: Session, user_ids, subject, body, kind: str | None = None) -> int:
    """An e-mail only (no in-app notice) to each active user, in the user's language, when a relay
    is configured; sent after the commit. Returns how many were queued."""
    ids = sorted(set(user_ids))
    if not ids or not smtp_url():
        return 0
    users = db.execute(select(User).where(User.id.in_(ids), User.active.is_(True)).order_by(User.id)).scalars().all()
    for u in users:
        db.add(MailMessage(recipient=u.email, subject=in_language(subject, u.language)[:300],
                           body=in_language(body, u.language) + "\n\n" + in_language(FOOTER, u.language), kind=kind,
                           user_id=u.id))
    if users:
        db.info[PENDING] = True
    return len(users)


def absolute(link: str) -> str:
    """A link in an e-mail is absolute when TRIAL_BASE_URL says where the system is served."""
    base = (settings.current().base_url or "").rstrip("/")
    return base + link if base and link.startswith("/") else link


def users_with_role(db: Session, role: str, site_id: int | None = None) -> list[int]:
    q = select(RoleAssignment.user_id).where(RoleAssignment.role == role)
    if site_id is not None:
        q = q.where(RoleAssignment.site_id == site_id)
    return sorted(set(db.execute(q).scalars()))


def new_ref() -> str:
    """A notification's reference, what its dismiss link names: random (never the global
    sequence, whose gaps would tell a user how much happens elsewhere)."""
    return secrets.token_urlsafe(16)


def notifications_for(db: Session, actor, unread_only: bool = True) -> list[Notification]:
    """The user's notifications, newest first; one written before notifications had references
    is given one here (the caller commits it)."""
    q = select(Notification).where(Notification.user_id == actor.id).order_by(Notification.created_at.desc(),
                                                                             Notification.id.desc())
    if unread_only:
        q = q.where(Notification.read_at.is_(None))
    rows = list(db.execute(q.limit(50)).scalars())
    for n in rows:
        if n.ref is None:
            n.ref = new_ref()
    return rows


def settle(db: Session, link: str) -> int:
    """Dismiss, for everyone, the unread notifications that point at ``link`` once what they
    announced no longer waits (a query answered or closed): a notice must not say what is no
    longer true. Returns how many."""
    return db.execute(update(Notification).where(Notification.link == link, Notification.read_at.is_(None))
                      .values(read_at=utcnow()).execution_options(synchronize_session=False)).rowcount or 0


def dismiss(db: Session, actor, ref: str) -> Notification:
    """Mark one of the user's notifications read, named by its reference; anyone else's answers as
    one that does not exist."""
    n = db.execute(select(Notification).where(Notification.ref == ref)).scalar_one_or_none() if ref else None
    if n is None or n.user_id != getattr(actor, "id", None):
        raise NotFound(N_("No such notification of yours."))
    if n.read_at is None:
        n.read_at = utcnow()
    return n


# --- e-mail delivery -----------------------------------------------------------------------------

def _relay(url: str):
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps"):
        raise ValueError(f"TRIAL_SMTP_URL must start with smtp:// or smtps://, not {parts.scheme}://")
    port = parts.port or (465 if parts.scheme == "smtps" else 25)
    opts = parse_qs(parts.query)
    return parts, port, opts.get("starttls", ["0"])[0] in ("1", "true", "yes")


def backoff(attempts: int) -> dt.timedelta:
    """The wait after the ``attempts``-th failed attempt: 1, 2, 4 ... minutes, at most an hour."""
    return min(BACKOFF_FIRST * 2 ** min(max(attempts - 1, 0), 16), BACKOFF_CAP)


def _due(now: dt.datetime):
    return (MailMessage.sent_at.is_(None) & MailMessage.dead_at.is_(None)
            & (MailMessage.next_attempt_at.is_(None) | (MailMessage.next_attempt_at <= now)))


def _claim(db: Session, limit: int) -> list[MailMessage]:
    """The due messages (oldest first), claimed in a transaction of their own: their next attempt
    is moved past the sending, so another sender (the app's other workers, `trial mail send`)
    skips them; one that dies while sending leaves them due again after CLAIM. No transaction
    stays open while the relay is talked to."""
    now = utcnow()
    ids = db.execute(select(MailMessage.id).where(_due(now)).order_by(MailMessage.id).limit(limit)).scalars().all()
    if ids:
        ids = db.execute(update(MailMessage).where(MailMessage.id.in_(ids), _due(now))
                         .values(next_attempt_at=now + CLAIM).returning(MailMessage.id)
                         .execution_options(synchronize_session=False)).scalars().all()
    rows = (db.execute(select(MailMessage).where(MailMessage.id.in_(ids)).order_by(MailMessage.id)
                       .execution_options(populate_existing=True)).scalars().all() if ids else [])
    db.commit()
    return rows


def _describe(e: Exception) -> tuple[str, str]:
    """What a failure is: the text kept with the message (the relay's answer) and a short form for
    the log (the SMTP code or the class of error: a relay's answer may quote the address)."""
    if isinstance(e, smtplib.SMTPRecipientsRefused) and e.recipients:
        code, answer = next(iter(e.recipients.values()))
        return f"recipient refused: {code} {_text(answer)}", f"SMTP {code}"
    if isinstance(e, smtplib.SMTPResponseException):
        return f"{e.smtp_code} {_text(e.smtp_error)}", f"SMTP {e.smtp_code}"
    if isinstance(e, smtplib.SMTPException):
        return str(e) or type(e).__name__, type(e).__name__
    return f"relay unreachable: {e}", f"relay unreachable ({type(e).__name__})"


def _text(answer) -> str:
    return answer.decode("utf-8", "replace") if isinstance(answer, bytes) else str(answer)


def _domain(address: str) -> str:
    return address.rpartition("@")[2] or "?"


def send_pending(db: Session, limit: int = 200) -> tuple[int, int]:
    """Send the queued e-mails that are due; returns (sent, failed). A failed one waits
    :func:`backoff` before its next attempt and becomes a dead letter after TRIAL_MAIL_ATTEMPTS;
    one that names an arm its recipient may no longer know is a dead letter at once, not sent
    (:func:`_withhold`; counted as failed). Commits (the claim, then the outcome)."""
    sent, failed, withheld = _send(db, limit)
    return sent, failed + withheld


def _send(db: Session, limit: int) -> tuple[int, int, int]:
    """:func:`send_pending`: (sent, failed at the relay, withheld)."""
    url = smtp_url()
    db.info.pop(PENDING, None)
    if not url:
        return 0, 0, 0
    rows = _claim(db, limit)
    if not rows:
        return 0, 0, 0
    now = utcnow()
    withheld = _withhold(db, rows, now)
    rows = [m for m in rows if m not in withheld]
    bodies, unfilled = _fill(db, rows, now)
    withheld += unfilled
    rows = [m for m in rows if m.id in bodies]
    outcome = _deliver(rows, url, bodies) if rows else {}
    now, most = utcnow(), settings.current().mail_attempts
    for m in rows:
        _record(m, outcome[m.id], now, most)
    db.commit()
    sent = sum(1 for m in rows if outcome[m.id] is None)
    return sent, len(rows) - sent, len(withheld)


def _withhold(db: Session, rows: list[MailMessage], now: dt.datetime) -> list[MailMessage]:
    """The messages naming an arm (kind :data:`NAMES_ARM`) whose recipient may no longer know it,
    checked at each attempt, not only when queued: the account is gone or deactivated, or no
    longer may see the arms of the message's site (``trial.scope.can_see_arm``: made an assessor
    there, an admin, or without the role). Each becomes a dead letter with the reason as its last
    error, its body never logged; the relay is not asked."""
    withheld = []
    for m in rows:
        if m.kind != NAMES_ARM:
            continue
        user = db.get(User, m.user_id) if m.user_id is not None else None
        if user is not None and user.active and m.site_id is not None and can_see_arm(db, user, m.site_id):
            continue
        m.attempts = (m.attempts or 0) + 1
        m.last_error, m.dead_at, m.next_attempt_at = NO_LONGER_UNBLINDED, now, None
        log.warning("e-mail %s (kind %s) not sent, a dead letter: its recipient may no longer know the arm",
                    m.id, m.kind)
        withheld.append(m)
    return withheld


def _fill(db: Session, rows: list[MailMessage], now: dt.datetime) -> tuple[dict[int, str], list[MailMessage]]:
    """Each message's body as sent (:data:`FILLERS`), and those that may no longer be sent (dead
    letters at once). A message whose filler is not loaded in this process is left for another
    sender (due again, unclaimed)."""
    bodies: dict[int, str] = {}
    dropped = []
    for m in rows:
        prefix = (m.kind or "").partition(":")[0] if ":" in (m.kind or "") else None
        if prefix is None:
            bodies[m.id] = m.body
            continue
        if prefix not in FILLERS:
            m.next_attempt_at = None
            continue
        body = FILLERS[prefix](db, m)
        if body is None:
            m.attempts = (m.attempts or 0) + 1
            m.last_error, m.dead_at, m.next_attempt_at = NOT_SENDABLE, now, None
            dropped.append(m)
        else:
            bodies[m.id] = body
    return bodies, dropped


def _deliver(rows: list[MailMessage], url: str, bodies: dict[int, str] | None = None) -> dict[int, tuple[str, str] | None]:
    """Hand each message to the relay in one SMTP session: id -> None (accepted) or (the error
    kept with the message, its short form for the log)."""
    parts, port, starttls = _relay(url)
    sender = settings.current().mail_from
    outcome: dict[int, tuple[str, str] | None] = {}
    try:
        # smtps:// and starttls verify the relay's certificate and name against the system's
        # certificate authorities (SSL_CERT_FILE adds a private one): the messages name children and,
        # for randomization confirmations, arms
        if parts.scheme == "smtps":
            opened = smtplib.SMTP_SSL(parts.hostname, port, timeout=SMTP_TIMEOUT, context=ssl.create_default_context())
        else:
            opened = smtplib.SMTP(parts.hostname, port, timeout=SMTP_TIMEOUT)
        with opened as smtp:
            if starttls:
                smtp.starttls(context=ssl.create_default_context())
            if parts.username:
                smtp.login(unquote(parts.username), unquote(parts.password or ""))
            for m in rows:
                msg = EmailMessage()
                msg["From"], msg["To"], msg["Subject"] = sender, m.recipient, m.subject
                msg.set_content((bodies or {}).get(m.id, m.body))
                try:
                    smtp.send_message(msg)
                    outcome[m.id] = None
                except smtplib.SMTPException as e:
                    outcome[m.id] = _describe(e)
    except (OSError, smtplib.SMTPException) as e:  # the relay unreachable, or the session broken off
        for m in rows:
            outcome.setdefault(m.id, _describe(e))
        if not any(v is None for v in outcome.values()):
            log.warning("e-mail relay %s unreachable or refusing: %s", parts.hostname, type(e).__name__)
    return outcome


def _record(m: MailMessage, result: tuple[str, str] | None, now: dt.datetime, most: int) -> None:
    """One attempt's outcome: sent; or its error and the next attempt after the backoff; or, after
    the last attempt, a dead letter (kept; logged with the recipient's domain and the kind only)."""
    m.attempts = (m.attempts or 0) + 1
    if result is None:
        m.sent_at, m.last_error, m.next_attempt_at = now, None, None
        return
    m.last_error = result[0][:500]
    if m.attempts < most:
        m.next_attempt_at = now + backoff(m.attempts)
        return
    m.dead_at, m.next_attempt_at = now, None
    log.error("e-mail %s (kind %s) to a recipient at %s given up after %d attempts, a dead letter (%s): "
              "see `trial mail status`", m.id, m.kind or "other", _domain(m.recipient), m.attempts, result[1])


# --- the outbox as the operator and the managers see it -------------------------------------------

def _count(db: Session, *where) -> int:
    return db.execute(select(func.count()).select_from(MailMessage).where(*where)).scalar_one()


def dead_letters(db: Session) -> dict:
    """How many e-mails were given up, all and those about serious adverse events (the home
    pages' notice): ``{"total": n, "sae": m}``."""
    dead = MailMessage.dead_at.is_not(None) & MailMessage.sent_at.is_(None)
    return {"total": _count(db, dead), "sae": _count(db, dead, MailMessage.kind == SAE)}


def undelivered_sae(db: Session) -> int:
    """E-mails about serious adverse events not delivered yet, waiting or given up."""
    return _count(db, MailMessage.sent_at.is_(None), MailMessage.kind == SAE)


def outbox_status(db: Session) -> dict:
    """The outbox for `trial mail status`: waiting (and of them due now), dead letters by kind, the
    oldest unsent, and each dead letter's recipient, subject, attempts and last error (never the
    body)."""
    now = utcnow()
    waiting = MailMessage.sent_at.is_(None) & MailMessage.dead_at.is_(None)
    dead = MailMessage.sent_at.is_(None) & MailMessage.dead_at.is_not(None)
    by_kind: dict[str, int] = {}
    for kind, n in db.execute(select(MailMessage.kind, func.count()).where(dead).group_by(MailMessage.kind)).all():
        kind = (kind or "other").partition(":")[0]  # ("survey:<id>": one kind)
        by_kind[kind] = by_kind.get(kind, 0) + n
    oldest = db.execute(select(MailMessage).where(MailMessage.sent_at.is_(None))
                        .order_by(MailMessage.created_at, MailMessage.id).limit(1)).scalar_one_or_none()
    letters = db.execute(select(MailMessage).where(dead).order_by(MailMessage.id)).scalars().all()
    return {"pending": _count(db, waiting), "due": _count(db, _due(now)), "dead": by_kind,
            "oldest": oldest, "dead_letters": letters, "now": now}


def retry_dead(db: Session) -> int:
    """Queue every dead letter again, due at once with its attempts counted afresh (an operator
    fixed the relay). Operational, not clinical: logged, not audited. Returns how many."""
    n = db.execute(update(MailMessage).where(MailMessage.sent_at.is_(None), MailMessage.dead_at.is_not(None))
                   .values(dead_at=None, next_attempt_at=None, attempts=0)
                   .execution_options(synchronize_session=False)).rowcount or 0
    if n:
        log.warning("%d dead letter(s) queued again by the operator (`trial mail status --retry-dead`)", n)
    return n


RELAY_PAUSE = 60.0  # seconds a request does not try a relay that just failed (`trial mail send` still does)
_relay_down_until = 0.0


def _after_commit(db: Session) -> None:
    """Send what this transaction queued, unless the relay failed moments ago: a relay that is
    down must not make every request that notifies wait for its timeout."""
    global _relay_down_until
    if db.info.pop(PENDING, False) and time.monotonic() >= _relay_down_until:
        try:
            sent, failed, _withheld = _send(db, 200)
            if failed and not sent:  # (the relay failed; a message withheld is no sign of that)
                _relay_down_until = time.monotonic() + RELAY_PAUSE
        except Exception:  # the change is committed; the mail stays queued for `trial mail send`
            log.exception("sending queued e-mail failed")
            db.rollback()
            _relay_down_until = time.monotonic() + RELAY_PAUSE


database.after_commit_hooks.append(_after_commit)
