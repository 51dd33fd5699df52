"""Known devices (OWASP's device cookie): a browser that signed in to an account carries a cookie,
signed with the app's secret key (itsdangerous), that names the accounts it signed in to (at most
MAX_ACCOUNTS, the latest first: a shared workstation) and a random id of the device. With it, a
login of one of those accounts is throttled as that device's own (trial.auth.service): an attack
on the account or from the same address elsewhere never keeps the owner out. The cookie proves
only that this browser once knew the password; the password is checked as always.

No Flask here: the web layer (trial.websession) reads and sets the cookie and passes the secret."""
from __future__ import annotations

import secrets

from itsdangerous import BadData, URLSafeTimedSerializer

COOKIE = "trial_device"
DAYS = 180
MAX_ACCOUNTS = 5
_SALT = "trial.auth.device"


def _serializer(secret: str | bytes) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret, salt=_SALT)


def read(secret: str | bytes, value: str | None) -> tuple[str | None, tuple[str, ...]]:
    """The device id and the accounts (e-mails) a cookie names; (None, ()) for a missing, forged,
    malformed or expired one."""
    if not value or len(value) > 4096:
        return None, ()
    try:
        data = _serializer(secret).loads(value, max_age=DAYS * 86400)
    except BadData:
        return None, ()
    device, emails = (data.get("d"), data.get("a")) if isinstance(data, dict) else (None, None)
    if not isinstance(device, str) or not isinstance(emails, list) or not all(isinstance(e, str) for e in emails):
        return None, ()
    return device, tuple(emails)


def device_for(secret: str | bytes, value: str | None, email: str | None) -> str | None:
    """The device id when the cookie names ``email``'s account, else None."""
    device, emails = read(secret, value)
    email = (email or "").strip().lower()
    return device if email and email in emails else None


def remember(secret: str | bytes, value: str | None, email: str) -> str:
    """The cookie's new value after a successful login of ``email`` on this device: the same device
    id (a new one for a new device), the account first."""
    device, emails = read(secret, value)
    email = email.strip().lower()
    accounts = [email] + [e for e in emails if e != email]
    return _serializer(secret).dumps({"d": device or secrets.token_hex(8), "a": accounts[:MAX_ACCOUNTS]})
