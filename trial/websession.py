"""The life of a web session, wired in by trial.http: it ends after ``IDLE_MINUTES`` without a
request (TRIAL_IDLE_MINUTES) and ``SESSION_HOURS`` after its login however active it was
(TRIAL_SESSION_HOURS: an absolute lifetime that does not slide); its next request goes to the login
page with a message, and the audit trail records it (trial.auth.service.session_expired). Both
moments are kept in the signed session cookie, so a copy of an old cookie is as dead as the
original. The page warns a minute before the end (static/session.js, which asks ``auth.keepalive``
how long is left: :func:`clock`) and offers to stay signed in (a POST there).

Every login (password, second factor, single sign-on: whatever calls ``login_user``) starts the
clocks and marks the browser as a known device of the account (trial.auth.devices): its cookie lets
the owner in while the account is throttled elsewhere. The login view asks :func:`known_device`."""
from __future__ import annotations

import time
from collections.abc import Callable

from flask import Flask, after_this_request, current_app, flash, jsonify, redirect, request, session, url_for
from flask_babel import gettext
from flask_login import current_user, logout_user, user_logged_in

from trial.auth import devices
from trial.auth.service import session_expired

LOGIN_AT, SEEN = "_login_at", "_seen"
KEEPALIVE = "auth.keepalive"
WARN_SECONDS = 60  # as base.html's data-warn


def init_app(app: Flask, db: Callable) -> None:
    """Check every page request's session before the access policy (``db``: the request's
    database session, for the audit record); start the clocks at every login."""
    app.before_request(lambda: _check(db))
    user_logged_in.connect(_logged_in, app)


def _limits() -> tuple[float, float]:
    cfg = current_app.config
    return float(cfg.get("IDLE_MINUTES", 30)) * 60, float(cfg.get("SESSION_HOURS", 12)) * 3600


def _logged_in(sender, user, **extra) -> None:
    """A new session (the login view cleared the old one: a new session id): its clocks start now,
    and the browser is remembered as a known device of the account."""
    session[LOGIN_AT] = session[SEEN] = time.time()
    value = devices.remember(current_app.secret_key, request.cookies.get(devices.COOKIE), user.email)

    @after_this_request
    def _set_device(resp):
        resp.set_cookie(devices.COOKIE, value, max_age=devices.DAYS * 86400, path="/login", httponly=True,
                        secure=bool(current_app.config.get("SESSION_COOKIE_SECURE")), samesite="Strict")
        return resp


def known_device(email: str | None) -> str | None:
    """The id of this browser's known-device cookie when it names ``email``'s account."""
    return devices.device_for(current_app.secret_key, request.cookies.get(devices.COOKIE), email)


def left(now: float | None = None) -> tuple[float, float]:
    """Seconds until the idle end and until the absolute end of this request's session."""
    now = time.time() if now is None else now
    idle, lifetime = _limits()
    login_at, seen = session.get(LOGIN_AT), session.get(SEEN)
    if not isinstance(login_at, (int, float)) or not isinstance(seen, (int, float)):
        return 0.0, 0.0  # a session from before the clocks: ended
    return seen + idle - now, login_at + lifetime - now


def clock() -> dict:
    """What the page's warning needs: the idle limit, the seconds left (idle and absolute) and
    how long before the end it warns."""
    idle_left, absolute_left = left()
    return {"idle": round(_limits()[0]), "idle_left": max(0, round(idle_left)),
            "absolute_left": max(0, round(absolute_left)), "warn": WARN_SECONDS}


def _check(db: Callable):
    # a parent's survey page is no staff page: a stale staff session in the same browser (a shared
    # tablet) must not send the parent to the staff login
    if request.endpoint in (None, "static") or request.path.startswith("/api/") or "_user_id" not in session \
            or request.endpoint.startswith("survey_parent."):
        return None
    now = time.time()
    idle_left, absolute_left = left(now)
    if idle_left > 0 and absolute_left > 0:
        if not (request.endpoint == KEEPALIVE and request.method == "GET"):  # asking is no activity
            session[SEEN] = now
        return None
    return _end(db, idle=idle_left <= 0)


def _end(db: Callable, idle: bool):
    """End this session: audited as the user's (when it still belongs to one), then to the login
    page with the reason; the page asked for comes back after the login."""
    idle_s, lifetime_s = _limits()
    if idle:
        reason = f"idle for {idle_s / 60:g} minutes"
        message = gettext("You were signed out after %(n)s minutes without activity. Log in again.", n=f"{idle_s / 60:g}")
    else:
        reason = f"{lifetime_s / 3600:g} hours after the login"
        message = gettext("You were signed out: a session lasts at most %(n)s hours. Log in again.",
                          n=f"{lifetime_s / 3600:g}")
    if current_user.is_authenticated:
        s = db()
        session_expired(s, s.merge(current_user._get_current_object()), reason)
        s.commit()
    logout_user()
    session.clear()
    flash(message)
    if request.endpoint == "auth.login":
        return None
    if request.endpoint == KEEPALIVE:
        return jsonify({"signed_in": False, "login": url_for("auth.login")}), 401
    back = request.full_path.rstrip("?") if request.method == "GET" else None
    return redirect(url_for("auth.login", next=back))
