"""Login, logout and password change (thin: the rules are in trial.auth.service)."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_login import login_user, logout_user

from trial.auth import service
from trial.errors import DomainError
from trial.forms.auth import LoginForm, LogoutForm, PasswordForm
from trial.http import actor, db

bp = Blueprint("auth", __name__)


@bp.route("/login", methods=["GET", "POST"])
def login():
    form = LoginForm()
    error = None
    if form.validate_on_submit():
        s = db()
        try:
            user = service.authenticate(s, form.email.data, form.password.data, request.remote_addr)
        except DomainError as e:
            s.commit()  # keep the failed attempt: the throttle counts it
            error = e.message
        else:
            s.commit()
            session.clear()
            login_user(user)
            nxt = request.args.get("next", "")
            return redirect(nxt if nxt.startswith("/") and not nxt.startswith("//") else url_for("main.home"))
    return render_template("auth/login.html", form=form, error=error), (401 if error else 200)


@bp.route("/logout", methods=["POST"])
def logout():
    if LogoutForm().validate_on_submit():
        s = db()
        service.end_sessions(s, s.merge(actor()))
        s.commit()
        logout_user()
        session.clear()
        flash("You are logged out. Every session of your account has ended.")
        return redirect(url_for("auth.login"))
    return redirect(url_for("main.home"))


@bp.route("/password", methods=["GET", "POST"])
def password():
    form = PasswordForm()
    if form.validate_on_submit():
        s = db()
        user = s.merge(actor())
        service.change_password(s, user, form.current_password.data, form.new_password.data)
        s.commit()
        logout_user()
        session.clear()
        flash("Password changed. Every session has ended; log in with the new password.")
        return redirect(url_for("auth.login"))
    return render_template("auth/password.html", form=form)
