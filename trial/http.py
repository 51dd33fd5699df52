"""Request plumbing shared by the web pages and the API: the request's database session, the
acting user (session cookie or bearer token), the access policy, the checks of raw request
values, error answers (pages and JSON), security headers, and the language of the pages (the
user's setting, else the browser's ``Accept-Language``, else English; the API speaks English)."""
from __future__ import annotations

import datetime as dt
import traceback
import zoneinfo
from pathlib import Path

from babel import dates as babel_dates
from flask import Flask, abort, current_app, flash, g, jsonify, redirect, render_template, request, url_for
from flask_babel import Babel, format_date, format_decimal, format_percent, get_locale, get_translations, gettext
from flask_login import LoginManager, current_user
from flask_wtf.csrf import CSRFError, CSRFProtect
from jinja2 import Undefined, pass_context
from markupsafe import Markup
from sqlalchemy.exc import SQLAlchemyError

from trial.auth import mfa
from trial.auth.service import load_session_user, user_for_token
from trial.catalogue import LANGUAGES, N_, RTL_LANGUAGES, Joined, Msg, label
from trial.db import is_sqlite, unavailable, utcnow
from trial.errors import DomainError, Unavailable, ValidationError
from trial.lock.models import DataLock
from trial.lock.service import banner as lock_banner
from trial.lock.service import build_not_started, build_now, build_status
from trial.lock.worker import start_or_fail, watch
from trial.migrate import head_revision, revision_of
from trial.paging import DEFAULT_PER_PAGE, MAX_PER_PAGE, PageRequest
from trial.policy import ANY, BEFORE_ENROLMENT, DMC_REACHES, NO_REFERRER, POLICY, PUBLIC, QUERY_PARAMS
from trial.protocol.service import current as current_protocol
from trial.protocol.service import labels as protocol_labels
from trial.protocol.service import localized
from trial.trialstate.service import lock_in_force
from trial.validation import CONTROL_MESSAGE, MAX_ID, as_msg, check_json_depth, has_control
from trial.version import __version__
from trial.websession import init_app as init_sessions

csrf = CSRFProtect()
babel = Babel()
login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.session_protection = "strong"
login_manager.login_message = N_("Please log in to access this page.")
login_manager.localize_callback = gettext
# the other names browsers give the UI's languages (Norwegian, old Hebrew, Portuguese without a country)
LANGUAGE_ALIASES = {"no": "nb", "nn": "nb", "iw": "he", "pt": "pt_BR"}

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# no page of the trial uses a camera, a microphone, the location or the like
PERMISSIONS = "camera=(), microphone=(), geolocation=(), payment=(), usb=()"


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
            header = request.headers.get("Authorization", "")
            token = header[7:].strip() if header.lower().startswith("bearer ") else ""
            g.actor = user_for_token(db(), token)
        else:
            g.actor = current_user if current_user.is_authenticated else None
    return g.actor


def api_error(status: int, code: str, message: str, fields: dict | None = None, retry_after: int | None = None):
    body: dict = {"error": {"code": code, "message": message, "fields": dict(fields or {})}}
    if status >= 500:  # the operator finds this request's log lines by it (trial.views.ops)
        body["request_id"] = g.get("request_id")
    resp = jsonify(body)
    resp.status_code = status
    if retry_after:
        resp.headers["Retry-After"] = str(retry_after)
    return resp


def is_page_error(e: DomainError) -> bool:
    """Not a problem with what was typed: no right to do it, nothing there, locked, or the database
    failed. Shown as an error page with its status, never as a form message."""
    return e.status in (401, 403, 404, 423) or e.status >= 500


def say(message: str | None, words: dict | None = None) -> str | None:
    """A message in the page's language: a service's composed message (trial.catalogue.Msg, or
    one stored with its ``words``) translated with its values, dates in the page's format; a
    fixed text when the catalogue has it; anything else (a user's own words) as it is."""
    if words:
        message = Msg.from_words(words, message)
    if isinstance(message, Msg):
        return message.translated(get_translations().gettext, day, plabel)
    return gettext(message) if message else message


def form_errors(form, e: DomainError) -> None:
    """Show a service's refusal on the form: the message, and each named field's reason. An error
    of the page (see :func:`is_page_error`) propagates."""
    if is_page_error(e):
        raise e
    db().rollback()
    unplaced = {}
    for name, why in e.fields.items():
        key = name.split(".")[-1]
        field = getattr(form, key, None) or getattr(form, f"c_{key}", None) or getattr(form, f"v_{key}", None)
        if field is not None and hasattr(field, "errors"):
            field.errors = list(field.errors) + [say(why)]
        else:
            unplaced[name] = why
    if e.lead and not unplaced:  # every reason is beside its field (and in the form's summary)
        flash(say(e.lead), "error")
    elif e.lead:
        flash(f"{say(e.lead)}: " + "; ".join(f"{say(e.labels.get(k, k))} {say(v)}" for k, v in unplaced.items()), "error")
    else:
        flash(say(e.message), "error")


def _check_request_values():
    """Path and query values are checked before any view sees them: an id beyond the schema's
    integers or a control character (a NUL the database would refuse or cut) is a 400 naming the
    parameter, never a 500. Form fields are checked the same way."""
    bad: dict[str, str] = {}
    for name, value in (request.view_args or {}).items():
        if isinstance(value, int) and not 1 <= value <= MAX_ID:
            bad[name] = Msg(N_("must be a whole number from %(lo)s to %(hi)s"), lo=1, hi=MAX_ID)
        elif isinstance(value, str) and has_control(value):
            bad[name] = CONTROL_MESSAGE
    for name, value in request.args.items(multi=True):
        if has_control(name) or has_control(value):
            bad[name if not has_control(name) else "query"] = CONTROL_MESSAGE
    if request.method == "POST" and not is_api():
        for name, value in request.form.items(multi=True):
            if has_control(value) and name not in ("password", "current_password", "new_password"):
                bad[name] = CONTROL_MESSAGE
    if bad:
        reasons = Joined(Msg(N_("%(field)s %(reason)s"), field=k, reason=as_msg(v)) for k, v in bad.items())
        raise ValidationError(Msg(N_("The request was not accepted: %(reasons)s"), reasons=reasons), bad)


def check_query(endpoint: str) -> None:
    """Refuse query parameters an API operation does not declare."""
    allowed = QUERY_PARAMS.get(endpoint)
    if allowed is None:
        return
    unknown = sorted(set(request.args) - allowed)
    if unknown:
        reasons = {name: N_("is not a parameter of this operation") for name in unknown}
        raise ValidationError(Msg(N_("Unknown query parameter: %(names)s."), names=", ".join(unknown)), reasons)


def commit_or_flash(action, done: str) -> bool:
    """Run ``action()`` and commit, flashing ``done``; a refusal rolls back and is flashed (a page
    error, 403 or 404, propagates). True when it was saved."""
    try:
        action()
        db().commit()
        flash(done)
        return True
    except DomainError as e:
        db().rollback()
        if is_page_error(e):
            raise
        flash(say(e.message), "error")
        return False


def post_and_return(form, action, done: str, back: str, incomplete: str | None = N_("Fill in every field.")):
    """A form posted from a list or record page (locks, grants, queries, adverse events): run
    ``action(form)`` and commit, flash the outcome, go back to ``back``. A refusal of the form is
    flashed (``incomplete``, unless None); a page error propagates."""
    if form.validate_on_submit():
        commit_or_flash(lambda: action(form), done)
    elif incomplete:
        flash(say(incomplete), "error")
    return redirect(back)


def page_request() -> PageRequest:
    """``page``, ``per_page`` (at most 200) and ``sort`` of a list request; bad values are a 400
    naming the parameter."""
    return PageRequest(int_arg("page", 1), int_arg("per_page", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE),
                       request.args.get("sort") or None)


def page_url(_external: bool = False, **changes) -> str:
    """This page's address with some query parameters changed (None removes one); a page link
    or a sort link keeps the reader's filters."""
    args = request.args.to_dict()
    for k, v in changes.items():
        if v is None or v == "":
            args.pop(k, None)
        else:
            args[k] = str(v)
    return url_for(request.endpoint, _external=_external, **(request.view_args or {}), **args)


def int_arg(name: str, default: int, lo: int = 1, hi: int = 1_000_000) -> int:
    """A whole-number query parameter within [lo, hi]; anything else is a 400 naming it."""
    raw = request.args.get(name)
    if raw in (None, ""):
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise ValidationError(Msg(N_("%(name)s must be a whole number from %(lo)s to %(hi)s."), name=name, lo=lo, hi=hi),
                              {name: Msg(N_("a whole number from %(lo)s to %(hi)s"), lo=lo, hi=hi)})
    return int(raw)


def _must_enrol() -> bool:
    """A signed-in user of a role in TRIAL_MFA_ROLES who has not enrolled in two-factor sign-in
    reaches nothing but BEFORE_ENROLMENT (a password to be changed is changed first: that ends
    the session, and the next login comes here). API tokens are never asked for a code."""
    user = actor()
    return user is not None and not user.must_change_password and mfa.must_enrol(user)


def _enforce_policy():
    endpoint = request.endpoint
    if endpoint is None:
        return None  # 404 / 405 handled by the error handlers
    policy = POLICY.get(endpoint)
    if policy is None:
        current_app.logger.error("route %s has no access policy; refused", endpoint)
        abort(403)
    if endpoint not in BEFORE_ENROLMENT and not is_api() and _must_enrol():
        return redirect(url_for("mfa.enrol"))
    if endpoint != "static":
        _check_request_values()
        if is_api():
            check_query(endpoint)
            check_json_depth(request.get_data(cache=True))  # every operation's, whether it reads a body or not
    if policy == PUBLIC:
        return None
    user = actor()
    if user is None:
        if is_api():
            return api_error(401, "unauthorized", "A valid bearer token is required.")
        return login_manager.unauthorized()
    if not is_api() and user.must_change_password and endpoint not in ("auth.password", "auth.logout", "auth.language"):
        return redirect(url_for("auth.password"))
    if user.has_role("dmc") and endpoint not in DMC_REACHES:  # the committee reaches its own routes only
        if endpoint == "main.home":
            return redirect(url_for("interim.cuts"))
        abort(403)
    if policy != ANY and not user.has_role(*policy):
        abort(403)
    return None


def start_bundle_build(lock_id: int) -> None:
    """After a hard lock commits, have its bundles built (config LOCK_BUILDER): ``worker`` starts
    `trial worker --until-idle` as a process of its own (detached: it outlives the request and
    builds both variants in parallel), ``inline`` builds them here and now, ``external`` leaves
    them to a running `trial worker`. The state is in the database, so any app server reports it.
    The lock has committed: nothing here turns its answer into an error. A worker that cannot be
    started (the instance folder not writable) or an inline build that fails leaves the builds
    failed with the reason, in the log too; one nobody picks up is started again
    (:func:`watch_bundle_builds`)."""
    mode = current_app.config.get("LOCK_BUILDER", "worker")
    try:
        if mode == "inline":
            try:
                build_now(db(), actor(), db().get(DataLock, lock_id))
                db().commit()
            except Exception as e:  # (the lock stands: the build's failure is its state)
                current_app.logger.exception("the inline build of lock %s failed", lock_id)
                db().rollback()
                build_not_started(db(), lock_id, f"{type(e).__name__}: {e}", "the build failed")
                db().commit()
        elif mode == "worker":
            start_or_fail(db(), lock_id, _engine_url(), Path(current_app.instance_path))
    except SQLAlchemyError:  # the database went away after the commit: the builds wait, and are watched
        current_app.logger.exception("the state of lock %s's builds could not be recorded", lock_id)


def _engine_url() -> str:
    return current_app.extensions["trial.engine"].url.render_as_string(hide_password=False)


def watch_bundle_builds() -> None:
    """Before a lock's state is shown: a build nobody picked up within a minute is queued again and
    a worker started for it (TRIAL_LOCK_BUILDER=worker; with ``external`` the running worker is
    woken), once; a minute later still unclaimed, failed (trial.lock.worker.watch)."""
    watch(db(), current_app.config.get("LOCK_BUILDER", "worker") == "worker", _engine_url(),
          Path(current_app.instance_path))


def committed_build_status(lock_id: int) -> str | None:
    """The state of a lock's builds just after it committed, for its answer; "building" when the
    database cannot say (the lock stands whatever happens after its commit)."""
    try:
        return build_status(db(), lock_id)["status"]
    except SQLAlchemyError:
        current_app.logger.exception("the state of lock %s's builds could not be read", lock_id)
        db().rollback()
        return "building"


def lock_notice() -> str | None:
    """The message of the lock in force for the banner on every page of a logged-in user (None
    while the database is open), read once per request. A page about a database failure does not
    ask the database again."""
    if "lock_notice" not in g:
        g.lock_notice = None
        if actor() is not None:
            try:
                g.lock_notice = lock_in_force(db()) and lock_banner(db())  # in words the page translates
            except SQLAlchemyError:
                current_app.logger.warning("the lock in force could not be read for the banner", exc_info=True)
    return g.lock_notice


def select_locale() -> str:
    """The language of this request's pages: the user's own setting, else the best match of the
    browser's ``Accept-Language``, else English. The API always speaks English (its messages are
    part of its contract)."""
    if not request or is_api():
        return "en"
    if g.get("page_language") in LANGUAGES:  # a page in its reader's language whoever asks (a parent's survey)
        return g.page_language
    chosen = None
    try:
        chosen = getattr(actor(), "language", None)
    except SQLAlchemyError:  # the database is down: the error page is still in the browser's language
        pass
    if chosen in LANGUAGES:
        return chosen
    best = request.accept_languages.best_match(list(LANGUAGES) + list(LANGUAGE_ALIASES))
    return LANGUAGE_ALIASES.get(best, best) if best else "en"


def locale_code() -> str:
    """The catalogue's name of the page's language (``pt_BR``)."""
    locale = get_locale() if request else None
    return str(locale) if locale else "en"


def html_lang() -> str:
    """The page's language as a BCP 47 tag (``pt-BR``)."""
    return locale_code().replace("_", "-")


def html_dir() -> str:
    """``rtl`` for a language written right to left (Hebrew), else ``ltr``."""
    locale = get_locale() if request else None
    rtl = locale is not None and (locale.language in RTL_LANGUAGES or locale.character_order == "right-to-left")
    return "rtl" if rtl else "ltr"


def _page_context() -> dict:
    """What every page's layout needs: the lock banner and ``writable`` (false while a lock holds:
    the data-entry links and buttons are not shown; the write routes answer 423 anyway), and the
    page's language and writing direction."""
    notice = lock_notice() if request and not is_api() else None
    return {"lock_notice": notice, "writable": notice is None, "html_lang": html_lang(), "html_dir": html_dir()}


def tlabel(kind: str, key: str | None) -> str:
    """The system's word for one of its keys (trial.catalogue) in the page's language."""
    text = label(kind, key)
    return gettext(text) if text else ""


def _bound_gettext(translations) -> dict:
    """The templates' ``_``/``gettext``/``ngettext`` and ``label`` bound to this request's
    catalogue, looked up once per page rather than once per string (Flask-Babel's own callables
    find the request's locale and catalogue again at every call: a grid of 50 rows spent most of
    its time there). Same semantics as Jinja's new-style gettext: the text is marked safe when
    autoescaping and its ``%(name)s`` placeholders are filled (and escaped) from the arguments."""
    @pass_context
    def _gettext(__context, __string, **variables):
        rv = translations.gettext(__string)
        if __context.eval_ctx.autoescape:
            rv = Markup(rv)
        return rv % variables

    @pass_context
    def _ngettext(__context, __singular, __plural, __num, **variables):
        variables.setdefault("num", __num)
        rv = translations.ngettext(__singular, __plural, __num)
        if __context.eval_ctx.autoescape:
            rv = Markup(rv)
        return rv % variables

    def _label(kind: str, key: str | None) -> str:
        text = label(kind, key)
        return translations.gettext(text) if text else ""
    return {"gettext": _gettext, "ngettext": _ngettext, "label": _label}


def protocol_labels_here() -> dict[str, dict[str, str]]:
    """The protocol's words for its keys in the page's language (English where it gives none), from
    the version in force, read once per request."""
    code = locale_code()
    cached = g.get("protocol_labels")
    if cached is None or cached[0] != code:
        cached = g.protocol_labels = (code, protocol_labels(current_protocol(db()).content, code))
    return cached[1]


def plabel(kind: str, key: str | None) -> str:
    """The protocol's word for one of its keys (arm, visit, instrument, "instrument.field",
    criterion, factor, technique) in the page's language, English the fallback."""
    if key is None:
        return ""
    return protocol_labels_here().get(kind, {}).get(key, key)


def protocol_content() -> dict:
    """The protocol in force with its labels in the page's language, for showing (a copy: the
    rules are read from ``current_protocol(db()).content``)."""
    code = locale_code()
    cached = g.get("protocol_localized")
    if cached is None or cached[0] != code:
        cached = g.protocol_localized = (code, localized(current_protocol(db()).content, code))
    return cached[1]


def day(value) -> str:
    """A calendar day (a date, or its ISO text) in the page's language, by Babel's locale data. A
    site-local day stays that day: dates are never moved to another time zone."""
    if not value:  # None, "", or a value the page does not have (Undefined)
        return ""
    if isinstance(value, str):
        try:
            value = dt.date.fromisoformat(value[:10])
        except ValueError:
            return value
    if isinstance(value, dt.datetime):
        value = value.date()
    seen = g.get("days_shown")  # a page shows the same days again and again (a grid: hundreds)
    if seen is None:
        seen = g.days_shown = {}
    key = (value, str(get_locale()))  # (an e-mail made within a request may be in its reader's language)
    if key not in seen:
        seen[key] = format_date(value, format="medium", rebase=False)
    return seen[key]


def sae_clock(ae: dict) -> str:
    """The 24-hour reporting clock of a serious adverse event (its view), in the page's language;
    empty once acknowledged or for an event that is not serious."""
    if not ae.get("clock") or not ae.get("report_due"):
        return ""
    left = dt.datetime.fromisoformat(ae["report_due"].rstrip("Z")) - utcnow()
    hours, minutes = divmod(int(abs(left.total_seconds())) // 60, 60)
    mm = str(minutes).zfill(2)
    if left.total_seconds() <= 0:
        return gettext("report overdue by %(hours)s h %(minutes)s min", hours=hours, minutes=mm)
    return gettext("report due in %(hours)s h %(minutes)s min", hours=hours, minutes=mm)


def number(value) -> str:
    """A number in the page's language (digit grouping, decimal sign)."""
    return "" if value is None or isinstance(value, Undefined) else format_decimal(value)


def stamp(value, utc: bool = True) -> str:
    """A moment the system recorded (a UTC datetime, or its ISO text, "Z" or not) in the page's
    language, by Babel's locale data, in UTC as it was stored, "UTC" after it unless the column
    says so already (``utc=False``)."""
    if not value or isinstance(value, Undefined):
        return ""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.rstrip("Z"))
        except ValueError:
            return value
    if not isinstance(value, dt.datetime):
        return day(value)
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    text = babel_dates.format_datetime(value, format="medium", tzinfo=dt.UTC, locale=get_locale())
    return f"{text} UTC" if utc else text


def at_site(value, tz: str | None) -> str:
    """A moment the system holds in UTC (a datetime, or its ISO text) as the wall-clock time at a
    site, in the page's language, the zone named with its offset: a time typed at the site reads
    back as it was typed."""
    if not value or isinstance(value, Undefined):
        return ""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.rstrip("Z"))
    zone = zoneinfo.ZoneInfo(tz or "UTC")
    local = (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).astimezone(zone)
    minutes = int((local.utcoffset() or dt.timedelta(0)).total_seconds()) // 60
    offset = f"UTC{'+' if minutes >= 0 else '-'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    text = babel_dates.format_datetime(local, format="medium", tzinfo=zone, locale=get_locale())
    return gettext("%(moment)s (time zone %(zone)s, %(offset)s)", moment=text, zone=tz or "UTC", offset=offset)


def percent(value) -> str:
    """A share (0.5) as a percentage in the page's language; a dash when there is none."""
    return "—" if value is None or isinstance(value, Undefined) else format_percent(value)


def _security_headers(resp):
    resp.headers.setdefault("Content-Security-Policy", CSP)
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["X-Frame-Options"] = "DENY"
    # same-origin, not no-referrer: over TLS Flask-WTF checks that a form was posted from this site by its
    # Referer, which a browser told "no-referrer" never sends (every login behind the TLS proxy would answer
    # "the form expired"); to any other site still nothing is sent
    # (a page or answer with a credential in its path, trial.policy.NO_REFERRER: no-referrer)
    resp.headers.setdefault("Referrer-Policy", "no-referrer" if request.endpoint in NO_REFERRER else "same-origin")
    resp.headers["Permissions-Policy"] = PERMISSIONS
    resp.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    if request.is_secure or current_app.config.get("SESSION_COOKIE_SECURE"):  # served over TLS (production is)
        resp.headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
    if request.endpoint != "static":
        resp.headers.setdefault("Cache-Control", "no-store")
        if not is_api() and resp.mimetype == "text/html":
            resp.headers["Content-Language"] = html_lang()
            resp.vary.add("Accept-Language")
    return resp


def _teardown(exc):
    session = g.pop("db", None)
    if session is not None:
        try:
            session.rollback()
        except SQLAlchemyError:  # the connection is gone: nothing to roll back
            current_app.logger.warning("rollback at the end of a request failed", exc_info=True)
        finally:
            session.close()


CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
         409: "conflict", 413: "too_large", 423: "locked", 500: "server_error", 503: "unavailable"}


def _error(status: int, message: str, code: str | None = None, fields: dict | None = None, retry_after: int | None = None):
    if is_api():
        return api_error(status, code or CODES.get(status, "error"), message, fields, retry_after)
    if status >= 500:
        g.lock_notice = None  # the database may be what failed: the error page does not ask it again
    request_id = g.get("request_id") if status >= 500 else None
    resp = current_app.make_response((render_template("error.html", status=status, message=say(message),
                                                      request_id=request_id), status))
    if retry_after:
        resp.headers["Retry-After"] = str(retry_after)
    return resp


def _committed_in_this_request() -> bool:
    s = g.get("db")
    return bool(s is not None and s.info.get("committed"))


def _internal_error(e):
    """A 500 says that nothing was changed only when that is known: no commit in this request."""
    if _committed_in_this_request():
        message = N_("Internal error. Part of this request may have been saved: check before repeating it.")
    else:
        message = N_("Internal error; nothing was changed.")
    return _error(500, message)


def _database_error(e: SQLAlchemyError):
    """The database is down, full, read-only or busy: 503 with Retry-After and what class of
    problem it is; the schema is behind the code (downgraded, or a restore of an older backup
    under a running app): 503 naming `trial db upgrade`. Anything else is a programming error (500).
    The log line names the error's class and SQLSTATE (and, by its context, the request id), never
    its text: a database's message can quote the row (PostgreSQL's "Key (...)=(...) already
    exists"), and the statement's values are an arm, a study id or a clinical value."""
    err = unavailable(e) or _schema_behind()
    if err is None:
        current_app.logger.error("database error: %s", _error_class(e), extra=_error_fields(e))
        return _internal_error(e)
    current_app.logger.warning("database unavailable (%s): %s", err.kind, _error_class(e), extra=_error_fields(e))
    return _error(503, err.message, err.code, {}, err.retry_after)


def _database_cause(e: BaseException | None) -> SQLAlchemyError | None:
    """The database error an exception is or was raised from (its chain of causes), if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, SQLAlchemyError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _error_class(e: BaseException) -> str:
    """``IntegrityError (SQLSTATE 23505)``: what failed, without a word of the error's text."""
    state = _sqlstate(e)
    return f"{type(e).__name__} (SQLSTATE {state})" if state else type(e).__name__


def _sqlstate(e: BaseException) -> str | None:
    orig = getattr(e, "orig", None)
    return getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)


def _error_fields(e: BaseException) -> dict:
    """The log fields of an error whose text may carry data: its classes, its SQLSTATE (or
    SQLite's error name) and where it was raised (the frames' files, lines and code, no values)."""
    driver = type(getattr(e, "orig", None))
    return {"error": type(e).__name__, "sqlstate": _sqlstate(e), "stack": "".join(traceback.format_tb(e.__traceback__)),
            "driver_error": None if driver is type(None) else f"{driver.__module__}.{driver.__qualname__}"}


def _log_exception(exc_info) -> None:
    """Flask's line for an exception no handler answered, without the request's path (it can
    carry a study id: the URL rule instead) and, for a database error anywhere in its causes,
    without its text (:func:`_database_error`)."""
    rule = request.url_rule.rule if request and request.url_rule is not None else "unmatched"
    where = f"{rule} [{request.method if request else '-'}]"
    cause = _database_cause(exc_info[1])
    if cause is None:
        current_app.logger.error("Exception on %s", where, exc_info=exc_info)
    else:
        current_app.logger.error("Exception on %s: %s, from %s", where, type(exc_info[1]).__name__,
                                 _error_class(cause), extra=_error_fields(cause))


def _schema_behind() -> Unavailable | None:
    """After a database error no availability explains: is the schema older than the code? (The
    app checked it at its start; a database migrated down or restored since is told apart from a
    programming error here, so the user reads 503 and the operator the reason, not a bare 500.)"""
    try:
        if "db" in g:
            g.db.rollback()  # (on SQLite the request's transaction holds the write lock)
        engine = current_app.extensions["trial.engine"]
        with engine.connect() as conn:
            conn.connection.info["trial_read_only"] = is_sqlite(engine)  # (a deferred transaction: trial.db)
            try:
                current, head = revision_of(conn), head_revision()
            finally:
                conn.connection.info.pop("trial_read_only", None)
    except SQLAlchemyError:
        return None
    if current == head:
        return None
    current_app.logger.error("the database schema is at revision %s, this code needs %s: run `trial db upgrade`",
                             current or "none", head)
    return Unavailable(Msg(N_("%(what)s. Nothing was changed; try again later."),
                           what=Msg(N_("The database schema is older than this version of the application needs (the "
                                       "operator runs `trial db upgrade`)"))), 120, "not_migrated")


def init_app(app: Flask) -> None:
    """The request plumbing on an app: CSRF, logins, the access policy, error answers, headers.
    The blueprints are registered by the app factory (trial.app)."""
    csrf.init_app(app)
    login_manager.init_app(app)
    babel.init_app(app, locale_selector=select_locale)
    app.jinja_env.filters.update(day=day, stamp=stamp, number=number, percent=percent, say=say, at_site=at_site)

    @login_manager.user_loader
    def _load(user_id: str):
        return load_session_user(db(), user_id)

    init_sessions(app, db)  # an idle or too old session ends before the access policy looks at it
    mfa.required_roles()  # an unknown role in TRIAL_MFA_ROLES: refuse to start (ConfigError)
    app.before_request(_enforce_policy)
    app.after_request(_security_headers)
    app.teardown_appcontext(_teardown)
    app.log_exception = _log_exception  # (the path and a database error's text stay out of the log)
    _register_error_answers(app)
    _register_page_context(app)


def _register_error_answers(app: Flask) -> None:
    """The error answers: a refusal of the services (its transaction rolled back first), an
    expired form, a database error, an internal error, and the HTTP errors in the reader's words."""
    @app.errorhandler(DomainError)
    def _domain(e: DomainError):
        try:
            db().rollback()
        except SQLAlchemyError:
            pass
        if e.status >= 500:  # the server's fault (a key that is not the database's, say): the operator's to read
            current_app.logger.error("%s: %s", e.code, e.message)
        return _error(e.status, e.message, e.code, e.fields, e.retry_after)

    @app.errorhandler(CSRFError)
    def _csrf(e):
        return _error(400, N_("The form expired or was not sent from this site; reload the page and try again."))

    app.register_error_handler(SQLAlchemyError, _database_error)
    app.register_error_handler(500, _internal_error)
    for status, message in ((400, N_("The request was not understood.")), (403, N_("Your role does not allow this.")),
                            (404, N_("Not found.")), (405, N_("Method not allowed.")),
                            (413, N_("The request is too large."))):
        app.register_error_handler(status, _http_error(status, message))


def _http_error(status: int, message: str):
    """The handler of an HTTP error: its answer with the message (a 405 says which methods are allowed)."""
    def handler(e):
        resp = _error(status, message)
        if status == 405 and getattr(e, "valid_methods", None):
            resp.headers["Allow"] = ", ".join(sorted(e.valid_methods))
        return resp
    return handler


def _register_page_context(app: Flask) -> None:
    """What every template sees: the page's context, the reader, the version, the labels and the
    translations bound to this request's catalogue."""
    app.context_processor(_page_context)

    @app.context_processor
    def _ctx():
        return {"actor": actor() if request else None, "version": __version__, "page_url": page_url,
                "label": tlabel, "plabel": plabel, "sae_clock": sae_clock,
                "protocol_here": lambda content: localized(content, locale_code()),
                **(_bound_gettext(get_translations()) if request else {})}
