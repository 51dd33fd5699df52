"""Single sign-on with the institution's OpenID Connect provider (README "Single sign-on"): thin.

``/login/sso`` starts the authorization code flow with PKCE (S256), a state and a nonce, kept in the
session cookie; ``/login/sso/callback`` has Authlib check the state, exchange the code (with the
client's secret and the PKCE verifier), and check the ID token's signature against the provider's
published keys, its ``iss``, ``aud``, ``exp`` and the nonce. Who the verified claims sign in, whether
the provider's sign-in counts as two factors, and what is recorded, is trial.auth.sso's. Both answer
404 while single sign-on is not configured (TRIAL_OIDC_ISSUER, TRIAL_OIDC_CLIENT_ID and
TRIAL_OIDC_CLIENT_SECRET).

Logging out ends the local session as always (trial.views.auth); after a single sign-on, the login
page then offers a link to end the session at the provider too (its ``end_session_endpoint``), a link
rather than a redirect because the pages' Content-Security-Policy lets a form lead to this site only.
"""
from __future__ import annotations

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.common.urls import add_params_to_uri
from authlib.integrations.base_client import MismatchingStateError
from authlib.integrations.flask_client import OAuth
from flask import Blueprint, abort, current_app, g, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from flask_login import user_logged_out
from joserfc.errors import JoseError

from trial import settings
from trial.auth import sso
from trial.errors import DomainError
from trial.forms.auth import LoginForm
from trial.http import actor, db, say
from trial.views.mfa import after_first_factor

bp = Blueprint("sso", __name__)
CLIENT = "trial.sso"  # the app's Authlib client, when single sign-on is configured
SIGNED_IN_BY = "sso_issuer"  # in the session: the provider that signed this session in
END_AT_PROVIDER = "sso_end_session"  # in the session after logout: offer the provider's logout


def configured(app=None) -> bool:
    cfg = (app or current_app).config
    return bool(cfg.get("OIDC_ISSUER") and cfg.get("OIDC_CLIENT_ID") and cfg.get("OIDC_CLIENT_SECRET"))


@bp.record_once
def _register(state) -> None:
    """The Authlib client of the provider (its discovery document is read on first use)."""
    app = state.app
    user_logged_out.connect(_logged_out, app)
    if not configured(app):
        return
    client = OAuth(app).register(
        "institution", client_id=app.config["OIDC_CLIENT_ID"], client_secret=app.config["OIDC_CLIENT_SECRET"],
        server_metadata_url=sso.discovery_url(app.config["OIDC_ISSUER"]),
        client_kwargs={"scope": "openid email profile", "code_challenge_method": "S256", "default_timeout": 10})
    app.extensions[CLIENT] = client


def _client():
    if not configured():
        abort(404)
    return current_app.extensions[CLIENT]


def _callback_url() -> str:
    """The redirect URI registered at the provider: under TRIAL_BASE_URL when set (behind a proxy
    the request may not know the public address), else this request's address."""
    base = settings.current().base_url or ""
    path = url_for("sso.callback")
    return base.rstrip("/") + path if base else url_for("sso.callback", _external=True)


def _refused(message: str, status: int):
    """The login page with why single sign-on did not sign anyone in."""
    return render_template("auth/login.html", form=LoginForm(formdata=None), error=message), status


@bp.route("/login/sso")
def start():
    client = _client()
    if actor() is not None:
        return redirect(url_for("main.home"))
    nxt = request.args.get("next", "")
    session["sso_next"] = nxt if nxt.startswith("/") and not nxt.startswith("//") else ""
    try:
        problem = sso.provider_problem(client.load_server_metadata(), current_app.config["OIDC_ISSUER"])
    except (requests.RequestException, ValueError) as e:  # down, or no discovery document
        problem = f"the provider's discovery document cannot be read: {e}"
    if problem is None:
        return client.authorize_redirect(_callback_url())
    current_app.logger.error("single sign-on: %s", problem)
    return _refused(_("Your organisation's sign-in service cannot be used at the moment. Sign in with your e-mail "
                      "and password, or try again later."), 503)


@bp.route("/login/sso/callback")
def callback():
    client = _client()
    issuer = current_app.config["OIDC_ISSUER"]
    try:
        if request.args.get("iss", issuer) != issuer:  # RFC 9207: the answer of another provider (mix-up)
            raise MismatchingStateError()
        token = client.authorize_access_token(claims_options={"iss": {"essential": True, "value": issuer}})
        if not token.get("userinfo"):  # no ID token, or one nobody checked: never sign in on an access token alone
            raise JoseError("the provider's answer has no ID token")
        claims = _claims(client, token)
    except MismatchingStateError:
        current_app.logger.warning("single sign-on refused: the state does not match one this browser started")
        return _refused(_("This sign-in was not started here, has already been used or has expired. Start again "
                          "with \"Sign in with your organisation's account\"."), 400)
    except (AuthlibBaseError, JoseError, requests.RequestException, ValueError) as e:
        current_app.logger.warning("single sign-on refused: %s", e)
        return _refused(_("Your organisation's sign-in could not be completed or verified, so nobody was signed in. "
                          "Start again, or sign in with your e-mail and password."), 401)
    s = db()
    try:
        result = sso.sign_in(s, claims, issuer, request.remote_addr)
    except DomainError as e:
        s.commit()  # the refusal is recorded: a failed login, audited
        return _refused(say(e.message), e.status)
    s.commit()
    return _signed_in(result)


def _claims(client, token) -> dict:
    """The ID token's claims (checked by Authlib), with the e-mail from the UserInfo endpoint when
    the ID token does not carry it (trial.auth.sso.with_userinfo)."""
    claims = dict(token["userinfo"])
    if ("email" not in claims or "email_verified" not in claims) and \
            client.load_server_metadata().get("userinfo_endpoint"):
        claims = sso.with_userinfo(claims, client.userinfo(token=token))
    return claims


def _signed_in(result: sso.SsoLogin):
    """Hand the user over as the password login does (trial.views.mfa.after_first_factor): an
    enrolled user goes on to the code step unless the provider used a second factor; a user who
    must enrol goes to the enrolment page; everyone else is signed in."""
    nxt = session.pop("sso_next", "")
    response = after_first_factor(result.user, nxt, second_factor=result.second_factor)
    if session.get("_user_id"):  # signed in now, not waiting for a code
        session[SIGNED_IN_BY] = current_app.config["OIDC_ISSUER"]
    return response


def _logged_out(app, user=None, **_kw) -> None:
    """Flask-Login's signal at logout: remember (past the logout's clearing of the session, see
    _offer_provider_logout) that this session came from the provider."""
    if session.get(SIGNED_IN_BY):
        g.sso_logged_out = True


@bp.after_app_request
def _offer_provider_logout(response):
    if g.get("sso_logged_out"):
        session[END_AT_PROVIDER] = True
    return response


@bp.app_context_processor
def _links():
    return {"sso_links": _sso_links}


def _sso_links() -> dict:
    """For the login page: where "Sign in with your organisation's account" leads (None while single
    sign-on is not configured), and after a logout of a single sign-on session the provider's logout."""
    if not configured():
        return {"login": None, "logout": None}
    nxt = request.args.get("next", "")
    login = url_for("sso.start", next=nxt) if nxt.startswith("/") and not nxt.startswith("//") else url_for("sso.start")
    logout = None
    if session.pop(END_AT_PROVIDER, None):
        try:
            end = current_app.extensions[CLIENT].load_server_metadata().get("end_session_endpoint")
        except (requests.RequestException, ValueError):
            end = None
        logout = add_params_to_uri(end, {"client_id": current_app.config["OIDC_CLIENT_ID"]}) if end else None
    return {"login": login, "logout": logout}
