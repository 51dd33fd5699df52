"""Telling users: an in-app notification for each, and an e-mail when a relay is configured.

E-mails are queued in ``mail_outbox`` in the same transaction as the change they tell of, and
sent right after that transaction commits (trial.db calls the hook registered here); a relay that
is down leaves them queued for `trial mail send`. Nothing is e-mailed for a transaction that
rolls back."""
from __future__ import annotations

import logging
import secrets
import smtplib
import ssl
import time
from email.message import EmailMessage
from urllib.parse import parse_qs, unquote, urlsplit

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from trial import db as database
from trial import settings
from trial.auth.models import RoleAssignment, User
from trial.catalogue import N_, Msg, in_language
from trial.db import utcnow
from trial.errors import NotFound
from trial.notify.models import MailMessage, Notification

log = logging.getLogger(__name__)
PENDING = "trial.mail_pending"
SMTP_TIMEOUT = 5.0


def smtp_url() -> str | None:
    return settings.current().smtp_url


FOOTER = N_("This message was sent by the trial system; log in to read and act on it.")


def notify(db: Session, user_ids, message: str, subject: str | None = None, link: str | None = None) -> None:
    """In-app to each user (active ones); by e-mail too when a relay is configured. A composed
    message (trial.catalogue.Msg) is kept with its words, so that each user's page shows it in
    that user's language, and each e-mail is written in its recipient's language."""
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
                               body=body + (f"\n\n{absolute(link)}" if link else "") + "\n\n" + in_language(FOOTER, u.language)))
        db.info[PENDING] = True


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


def send_pending(db: Session, limit: int = 200) -> tuple[int, int]:
    """Send queued e-mails; returns (sent, failed). Each is marked in its own commit."""
    url = smtp_url()
    if not url:
        return 0, 0
    rows = db.execute(select(MailMessage).where(MailMessage.sent_at.is_(None), MailMessage.attempts < 20)
                      .order_by(MailMessage.id).limit(limit)).scalars().all()
    if not rows:
        return 0, 0
    parts, port, starttls = _relay(url)
    sender = settings.current().mail_from
    sent = failed = 0
    try:
        cls = smtplib.SMTP_SSL if parts.scheme == "smtps" else smtplib.SMTP
        with cls(parts.hostname, port, timeout=SMTP_TIMEOUT) as smtp:
            if starttls:
                smtp.starttls(context=ssl.create_default_context())
            if parts.username:
                smtp.login(unquote(parts.username), unquote(parts.password or ""))
            for m in rows:
                msg = EmailMessage()
                msg["From"], msg["To"], msg["Subject"] = sender, m.recipient, m.subject
                msg.set_content(m.body)
                m.attempts += 1
                try:
                    smtp.send_message(msg)
                    m.sent_at, m.last_error = utcnow(), None
                    sent += 1
                except smtplib.SMTPException as e:
                    m.last_error, failed = str(e)[:500], failed + 1
    except (OSError, smtplib.SMTPException) as e:
        for m in rows:
            if m.sent_at is None:
                m.attempts += 1
                m.last_error = f"relay unreachable: {e}"[:500]
        failed = len(rows) - sent
        log.warning("e-mail relay %s unreachable: %s", parts.hostname, e)
    db.info.pop(PENDING, None)
    db.commit()
    return sent, failed


RELAY_PAUSE = 60.0  # seconds a request does not try a relay that just failed (`trial mail send` still does)
_relay_down_until = 0.0


def _after_commit(db: Session) -> None:
    """Send what this transaction queued, unless the relay failed moments ago: a relay that is
    down must not make every request that notifies wait for its timeout."""
    global _relay_down_until
    if db.info.pop(PENDING, False) and time.monotonic() >= _relay_down_until:
        try:
            sent, failed = send_pending(db)
            if failed and not sent:
                _relay_down_until = time.monotonic() + RELAY_PAUSE
        except Exception:  # the change is committed; the mail stays queued for `trial mail send`
            log.exception("sending queued e-mail failed")
            db.rollback()
            _relay_down_until = time.monotonic() + RELAY_PAUSE


database.after_commit_hooks.append(_after_commit)
