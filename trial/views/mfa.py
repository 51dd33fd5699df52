"""Two-factor sign-in's pages (thin: the rules are in trial.auth.mfa): the code step of a login
(``/login/code``) and the enrolment (``/account/mfa``).

Between the password and the code nobody is signed in: the session holds only who gave the right
password, with the time (PENDING_SECONDS to give the code) and where to go next. ``login_user``
(which starts the session's clocks and remembers the browser as a known device, trial.websession)
runs only after the code."""
from __future__ import annotations

import time

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from flask_login import login_user

from trial.auth import mfa
from trial.auth.service import load_session_user
from trial.errors import DomainError
from trial.forms.mfa import CodeForm, EnrolForm
from trial.http import actor, db, form_errors, say
from trial.protocol.service import current as current_protocol
from trial.websession import known_device

bp = Blueprint("mfa", __name__)

PENDING = "_mfa_pending"  # {"user": "id:session token", "at": epoch seconds, "next": a path on this site}
PENDING_SECONDS = 300
ENROLLING = "_mfa_enrolling"  # the secret the enrolment page shows, sealed for the account (trial.auth.mfa.seal)


def _safe(nxt: str | None) -> str:
    return nxt if nxt and nxt.startswith("/") and not nxt.startswith("//") else ""


def after_first_factor(user, nxt: str | None = None, second_factor: bool = False):
    """The answer to a login whose first factor (the password, or single sign-on) succeeded and was
    committed: an enrolled user is asked for a code, unless ``second_factor`` (a provider that used
    one); everyone else is signed in, and a user who must enrol is taken to the enrolment page."""
    session.clear()  # a new session: nothing of the one before the login carries over
    if mfa.is_enrolled(user) and not second_factor:
        session[PENDING] = {"user": user.get_id(), "at": time.time(), "next": _safe(nxt)}
        return redirect(url_for("mfa.code"))
    login_user(user)
    if mfa.must_enrol(user) and not user.must_change_password:
        return redirect(url_for("mfa.enrol"))
    return redirect(_safe(nxt) or url_for("main.home"))


def _pending():
    """The user waiting to give a code, and where to go next; None when no login waits (or it took
    longer than PENDING_SECONDS, or the account's sessions ended meanwhile)."""
    held = session.get(PENDING)
    if not isinstance(held, dict) or not isinstance(held.get("at"), (int, float)) or \
            time.time() - held["at"] > PENDING_SECONDS:
        return None
    user = load_session_user(db(), str(held.get("user")))
    return (user, held.get("next") or "") if user is not None and mfa.is_enrolled(user) else None


@bp.route("/login/code", methods=["GET", "POST"], endpoint="code")
def code():
    """The second step of a login: the code of the authenticator app or a recovery code. Wrong
    codes count against the login throttle like wrong passwords."""
    pending = _pending()
    if pending is None:
        session.pop(PENDING, None)
        flash(_("Log in with your e-mail and password first (the code must follow within %(n)s minutes).",
                n=PENDING_SECONDS // 60))
        return redirect(url_for("auth.login"))
    user, nxt = pending
    form, error = CodeForm(), None
    if form.validate_on_submit():
        s = db()
        try:
            how = mfa.sign_in(s, user, form.code.data, request.remote_addr, known_device(user.email))
        except DomainError as e:
            s.commit()  # keep the failed attempt: the throttle counts it
            error = say(e.message)
        else:
            s.commit()
            session.clear()
            login_user(user)
            if how == "recovery":
                flash(_("You signed in with a recovery code; it cannot be used again. %(n)s are left.",
                        n=mfa.recovery_codes_left(s, user)))
            return redirect(nxt or url_for("main.home"))
    status = 401 if error else 400 if form.is_submitted() else 200
    return render_template("auth/mfa_code.html", form=form, error=error), status


def _issuer() -> str:
    """How the authenticator app names the account's issuer: the trial (its protocol's key)."""
    return str(current_protocol(db()).content.get("trial", {}).get("key", "trial")).upper()


@bp.route("/account/mfa", methods=["GET", "POST"], endpoint="enrol")
def enrol():
    """Enrolment: a QR code and the secret as text; a correct code turns it on and shows the ten
    recovery codes, once. An enrolled user sees when, and how many recovery codes are left."""
    s = db()
    user = s.merge(actor())  # the account itself (actor() is a proxy of it)
    if mfa.is_enrolled(user):
        return render_template("auth/mfa_enrolled.html", left=mfa.recovery_codes_left(s, user))
    sealed = session.get(ENROLLING)
    if mfa.unseal(user.id, sealed) is None:  # a first visit (or another account's, or an old key's)
        sealed = session[ENROLLING] = mfa.new_secret(user)
    form = EnrolForm()
    if form.validate_on_submit():
        try:
            codes = mfa.enrol(s, user, sealed, form.code.data)
        except DomainError as e:
            form_errors(form, e)
        else:
            s.commit()
            session.clear()  # a new session with the new session token: every other session has ended
            login_user(user)
            return render_template("auth/mfa_codes.html", codes=codes)
    return render_template("auth/mfa_enrol.html", form=form, required=mfa.must_enrol(user),
                           **mfa.enrolment(user, sealed, _issuer())), 400 if form.is_submitted() else 200
