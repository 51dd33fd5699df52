"""Request plumbing shared by every blueprint: the database session, the acting user, the access
policy, error pages and security headers."""
from __future__ import annotations

from flask import Flask, abort, current_app, g, jsonify, redirect, render_template, request, url_for
from flask_login import LoginManager, current_user
from flask_wtf.csrf import CSRFError, CSRFProtect

from trial.errors import DomainError
from trial.policy import ANY, POLICY, PUBLIC

csrf = CSRFProtect()
login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.session_protection = "strong"

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def db():
    """The request's session (one per request, closed at teardown)."""
    if "db" not in g:
        g.db = current_app.extensions["trial.sessions"]()
    return g.db


def is_api() -> bool:
    return request.path.startswith("/api/")


def actor():
    """The authenticated user of this request (bearer token for the API, session for the web)."""
    if "actor" not in g:
        if is_api():
            from trial.auth.service import user_for_token
            header = request.headers.get("Authorization", "")
            token = header[7:].strip() if header.lower().startswith("bearer ") else ""
            g.actor = user_for_token(db(), token)
        else:
            g.actor = current_user if current_user.is_authenticated else None
    return g.actor


def api_error(status: int, code: str, message: str, fields: dict | None = None):
    body = {"error": {"code": code, "message": message}}
    if fields:
        body["error"]["fields"] = fields
    return jsonify(body), status


def form_errors(form, e: DomainError) -> None:
    """Show a service's refusal on the form: the message, and each named field's reason. A 403 or
    404 is not a form problem and propagates."""
    from flask import flash
    if e.status in (401, 403, 404, 423):
        raise e
    db().rollback()
    for name, why in e.fields.items():
        key = name.split(".")[-1]
        field = getattr(form, key, None) or getattr(form, f"c_{key}", None) or getattr(form, f"v_{key}", None)
        if field is not None and hasattr(field, "errors"):
            field.errors = list(field.errors) + [why]
    flash(e.message, "error")


def _enforce_policy():
    endpoint = request.endpoint
    if endpoint is None:
        return None  # 404 / 405 handled by the error handlers
    policy = POLICY.get(endpoint)
    if policy is None:
        current_app.logger.error("route %s has no access policy; refused", endpoint)
        abort(403)
    if policy == PUBLIC:
        return None
    user = actor()
    if user is None:
        if is_api():
            return api_error(401, "unauthorized", "A valid bearer token is required.")
        return login_manager.unauthorized()
    if not is_api() and user.must_change_password and endpoint not in ("auth.password", "auth.logout"):
        return redirect(url_for("auth.password"))
    if policy != ANY and not user.has_role(*policy):
        abort(403)
    return None


def _security_headers(resp):
    resp.headers.setdefault("Content-Security-Policy", CSP)
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    if current_app.config.get("SESSION_COOKIE_SECURE"):
        resp.headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
    if request.endpoint != "static":
        resp.headers.setdefault("Cache-Control", "no-store")
    return resp


def _teardown(exc):
    session = g.pop("db", None)
    if session is not None:
        try:
            session.rollback()
        finally:
            session.close()


def _error(status: int, message: str):
    if is_api():
        codes = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 409: "conflict", 413: "too_large", 423: "locked", 500: "server_error"}
        return api_error(status, codes.get(status, "error"), message)
    return render_template("error.html", status=status, message=message), status


def init_app(app: Flask) -> None:
    from trial.auth.service import load_session_user

    csrf.init_app(app)
    login_manager.init_app(app)

    @login_manager.user_loader
    def _load(user_id: str):
        return load_session_user(db(), user_id)

    app.before_request(_enforce_policy)
    app.after_request(_security_headers)
    app.teardown_appcontext(_teardown)

    @app.errorhandler(DomainError)
    def _domain(e: DomainError):
        db().rollback()
        if is_api():
            return api_error(e.status, e.code, e.message, e.fields)
        return render_template("error.html", status=e.status, message=e.message), e.status

    @app.errorhandler(CSRFError)
    def _csrf(e):
        return _error(400, "The form expired or was not sent from this site; reload the page and try again.")

    for status, message in ((400, "The request was not understood."), (403, "Your role does not allow this."),
                            (404, "Not found."), (405, "Method not allowed."), (413, "The request is too large."),
                            (500, "Internal error; nothing was changed.")):
        app.register_error_handler(status, lambda e, s=status, m=message: _error(s, m))

    @app.context_processor
    def _ctx():
        from trial import __version__
        return {"actor": actor() if request else None, "version": __version__}

    from trial.admin.views import bp as admin_bp
    from trial.api import bp as api_bp
    from trial.audit.views import bp as audit_bp
    from trial.auth.views import bp as auth_bp
    from trial.enrollment.views import bp as enrollment_bp
    from trial.main import bp as main_bp

    from trial.course.views import bp as course_bp
    from trial.dashboard.views import bp as dashboard_bp
    from trial.lock.views import bp as lock_bp
    from trial.outcomes.views import bp as outcomes_bp
    from trial.status.views import bp as status_bp
    for bp in (auth_bp, main_bp, admin_bp, audit_bp, enrollment_bp, course_bp, status_bp, outcomes_bp, dashboard_bp, lock_bp):
        app.register_blueprint(bp)
    csrf.exempt(api_bp)
    app.register_blueprint(api_bp)
