"""Login, logout and password change (thin: the rules are in trial.auth.service)."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from flask_babel import refresh
from flask_login import logout_user

from trial.auth import service
from trial.catalogue import LANGUAGES
from trial.digest.service import DIGEST_ROLES
from trial.errors import DomainError
from trial.forms.auth import DigestForm, LanguageForm, LoginForm, LogoutForm, PasswordForm, ResetPasswordForm
from trial.http import actor, db, form_errors, say
from trial.views import mfa
from trial.websession import clock, known_device

bp = Blueprint("auth", __name__)


@bp.route("/login", methods=["GET", "POST"])
def login():
    form = LoginForm()
    error = None
    if form.validate_on_submit():
        s = db()
        try:
            user = service.authenticate(s, form.email.data, form.password.data, request.remote_addr,
                                        device=known_device(form.email.data))
        except DomainError as e:
            s.commit()  # keep the failed attempt: the throttle counts it
            error = say(e.message)
        else:
            s.commit()
            return mfa.after_first_factor(user, request.args.get("next", ""))  # the code step, or signed in
    return render_template("auth/login.html", form=form, error=error), (401 if error else 200)


@bp.route("/logout", methods=["POST"])
def logout():
    if LogoutForm().validate_on_submit():
        s = db()
        service.end_sessions(s, s.merge(actor()))
        s.commit()
        logout_user()
        session.clear()
        flash(_("You are logged out. Every session of your account has ended."))
        return redirect(url_for("auth.login"))
    return redirect(url_for("main.home"))


@bp.route("/password", methods=["GET", "POST"])
def password():
    form = PasswordForm()
    if form.validate_on_submit():
        s = db()
        user = s.merge(actor())
        try:
            service.change_password(s, user, form.current_password.data, form.new_password.data)
        except DomainError as e:
            form_errors(form, e)  # beside its field: a wrong current password, a weak or common new one
        else:
            s.commit()
            logout_user()
            session.clear()
            flash(_("Password changed. Every session has ended; log in with the new password."))
            return redirect(url_for("auth.login"))
    return render_template("auth/password.html", form=form, language_form=_language_form(url_for("auth.password"))), \
        400 if form.is_submitted() else 200


@bp.route("/reset-password/<token>", methods=["GET", "POST"])
def reset_password(token: str):
    """A one-time link from `trial user reset-password`: the user sets a new password, no login
    needed; a used, expired or replaced link is refused (410), an unknown one is 404."""
    s = db()
    try:
        service.password_reset_for(s, token)
    except DomainError as e:
        s.rollback()
        return render_template("auth/reset_password.html", form=None, error=say(e.message)), e.status if e.status == 404 else 410
    form = ResetPasswordForm()
    if form.validate_on_submit():
        try:
            service.complete_password_reset(s, token, form.new_password.data)
        except DomainError as e:
            form_errors(form, e)
        else:
            s.commit()
            logout_user()
            session.clear()
            flash(_("Your password is set. Log in with it."))
            return redirect(url_for("auth.login"))
    return render_template("auth/reset_password.html", form=form, error=None), 400 if form.is_submitted() else 200


def _language_form(back: str) -> LanguageForm:
    """The language choice, filled with the user's setting; after saving it the user comes back to ``back``."""
    form = LanguageForm(formdata=None)
    form.language.data = actor().language or ""
    form.next.data = back
    return form


@bp.route("/language", methods=["GET", "POST"])
def language():
    """The user's language of the pages (also on the password page); audited."""
    form = LanguageForm()
    if form.validate_on_submit():
        s = db()
        user = s.merge(actor())
        service.set_language(s, user, form.language.data or None)
        s.commit()
        refresh()  # the message below already in the new language
        flash(_("The pages are now shown in %(language)s.",
                language=LANGUAGES.get(user.language or "") or _("the browser's language")))
        back = form.next.data or ""
        return redirect(back if back.startswith("/") and not back.startswith("//") else url_for("auth.language"))
    if form.is_submitted():
        return render_template("auth/language.html", form=form, digest_form=_digest_form()), 400
    return render_template("auth/language.html", form=_language_form(url_for("auth.language")),
                           digest_form=_digest_form())


def _digest_form() -> DigestForm | None:
    """The weekly digest choice, filled with the user's setting: only for those it is sent to
    (coordinators and assessors at a site)."""
    if not actor().site_ids(*DIGEST_ROLES):
        return None
    form = DigestForm(formdata=None)
    form.weekly_digest.data = actor().weekly_digest
    return form


@bp.route("/digest", methods=["POST"])
def digest():
    """The user's choice of the weekly digest e-mail (on the language page); audited."""
    form = DigestForm()
    if form.validate_on_submit():
        s = db()
        user = s.merge(actor())
        service.set_weekly_digest(s, user, form.weekly_digest.data)
        s.commit()
        flash(_("You will get the weekly digest.") if user.weekly_digest else _("You will get no weekly digest."))
    return redirect(url_for("auth.language"))


@bp.route("/session/alive", methods=["GET", "POST"])
def keepalive():
    """The idle warning's (static/session.js) question, GET: how long this session has left (asking
    is no activity); and its "stay signed in", POST: activity, like any request (trial.websession)."""
    return clock()
