"""An administrator's account work that ends in an e-mail to the user: a new account and a reset get
a one-time link to set a password (trial.auth.service, 24 hours), sent to the user's own address
through the outbox. The admin never sets the password, never sees the link (it is neither returned
nor shown, nor kept as an in-app notification), and so can never sign in as someone else.

The link needs a mail relay (``TRIAL_SMTP_URL``) and the system's address (``TRIAL_BASE_URL``):
without them the admin's request is refused and nothing changes; the operator at the server's
console can still run `trial user create --password-stdin` or `trial user reset-password`.
"""
from __future__ import annotations

from sqlalchemy.orm import Session

from trial import settings
from trial.auth import service as users
from trial.auth.models import PasswordReset, User
from trial.catalogue import N_, Msg, in_language
from trial.errors import Conflict
from trial.notify.models import MailMessage
from trial.notify.service import FOOTER, PENDING, smtp_url

NO_RELAY = N_("The link to set a password cannot reach the user: no mail relay (TRIAL_SMTP_URL) or no address of the "
              "system (TRIAL_BASE_URL) is configured. Ask the operator to configure them, or to run `trial user create` "
              "or `trial user reset-password` at the server's console.")
NEW_SUBJECT = N_("Your account in the trial system")
NEW_BODY = N_("%(admin)s created an account for you in the trial system (%(email)s). Set your password with this "
              "link, valid once until %(expires)s UTC:")
RESET_SUBJECT = N_("Set a new password for the trial system")
RESET_BODY = N_("%(admin)s reset the password of your account in the trial system (%(email)s): the old one no longer "
                "works. Set a new password with this link, valid once until %(expires)s UTC:")
NOT_YOU = N_("If you did not expect this message, tell the trial's manager. Nobody from the trial will ask you for "
             "this link or your password.")


def _check_relay() -> None:
    if not smtp_url() or not settings.current().base_url:
        raise Conflict(NO_RELAY)


def _mailer(db: Session, actor, new_account: bool):
    """The delivery of the link: one e-mail to the user, in the user's language, queued in this
    transaction (sent after the commit)."""
    def deliver(user: User, link: str, expires_at) -> None:
        lang = user.language
        body = Msg(NEW_BODY if new_account else RESET_BODY, admin=getattr(actor, "name", None) or str(actor),
                   email=user.email, expires=f"{expires_at:%Y-%m-%d %H:%M}")
        text = "\n\n".join((in_language(body, lang), link, in_language(NOT_YOU, lang), in_language(FOOTER, lang)))
        db.add(MailMessage(recipient=user.email, subject=in_language(NEW_SUBJECT if new_account else RESET_SUBJECT, lang),
                           body=text, kind="account", user_id=user.id))
        db.info[PENDING] = True
    return deliver


def send_password_link(db: Session, actor, user: User, new_account: bool = False) -> PasswordReset:
    """A one-time link for ``user``, e-mailed to the user only (an earlier open link ends)."""
    _check_relay()
    _, row = users.issue_password_reset(db, actor, user, deliver=_mailer(db, actor, new_account))
    return row


def invite(db: Session, actor, email: str, name: str, roles: list[tuple[str, str | None]]) -> User:
    """An admin's new account: no password anyone knows; the user sets one through the link e-mailed
    to them. Roles that see allocations or enter clinical data wait for a manager's countersignature."""
    _check_relay()
    user = users.create_user(db, actor, email, name, None, roles)
    send_password_link(db, actor, user, new_account=True)
    return user


def reset_password(db: Session, actor, user: User) -> PasswordReset:
    """An admin's reset: the password stops working, every session and token ends, and the user gets
    a link to set a new one (refused for the trial's last active manager)."""
    _check_relay()
    users.disable_password(db, actor, user)
    return send_password_link(db, actor, user)
