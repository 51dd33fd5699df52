"""The parent's side of a survey (issue 28): the page a family opens from its link, ``/s/<token>``.

The link is the credential: no login, no session cookie, no CSRF token (the form posts back to its
own link). The page is in the survey's language whatever the browser or a signed-in user prefers,
has its own small template, style sheet and script (templates/survey/, static/survey.css,
static/survey.js: a phone on a mobile network loads nothing of the staff pages), and shows nothing
of the trial beyond the questionnaire's name, the visit, the child's first name if the coordinator
gave one and the last day the link works. With JavaScript the answers are kept as a draft on the
device (never sent before the parent submits) and a "one question at a time" instrument steps
through its questions; without it the whole form is shown and posted here.

Every attempt is counted for the rate limit (trial.surveys.service), a refusal's too."""
from __future__ import annotations

import calendar

from flask import Blueprint, g, make_response, redirect, render_template, request, session, url_for
from flask_babel import gettext, refresh

from trial.catalogue import LANGUAGES, N_
from trial.consent.models import Survey
from trial.errors import DomainError
from trial.http import LANGUAGE_ALIASES, csrf, day, db, say
from trial.surveys import service as surveys

bp = Blueprint("survey_parent", __name__)
csrf.exempt(bp)  # the link is the credential; the form posts to that very link

# nothing but this server's own files; no inline script or style, no frames, posts only here
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
TITLES = {404: N_("Link not found"), 409: N_("Already answered"), 410: N_("Link no longer valid"),
          423: N_("Please try again later"), 429: N_("Please wait")}
LOCKED = surveys.LOCKED


@bp.after_request
def _headers(resp):
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Referrer-Policy"] = "no-referrer"  # the token is in the path: never in a Referer
    resp.headers["X-Robots-Tag"] = "noindex, nofollow"
    resp.headers["Content-Security-Policy"] = CSP
    return resp


def _speak(language: str | None) -> None:
    """This request's pages in ``language`` (trial.http.select_locale honours it)."""
    g.page_language = language if language in LANGUAGES else "en"
    refresh()


def _browser_language() -> str:
    """The first of the browser's languages that is one of ours (``it-IT`` is Italian), else English."""
    for tag, _q in request.accept_languages:  # (best first)
        tag = tag.replace("-", "_")
        for code in (tag, tag.split("_")[0]):
            code = next((c for c in LANGUAGES if c.lower() == code.lower()), LANGUAGE_ALIASES.get(code.lower()))
            if code:
                return code
    return "en"


def _survey_language(token: str) -> str:
    """The survey's language for a refusal, when the link is a survey's; else the browser's (an
    unknown link learns nothing)."""
    s = db()
    if surveys.TOKEN_RE.match(token):
        lang = s.query(Survey.language).filter(Survey.token_hash == surveys.token_hash(token)).scalar()
        if lang:
            return lang
    return _browser_language()


def _refused(token: str, e: DomainError):
    """A friendly page for a refusal, the attempt counted (after the rollback of what was tried)."""
    s = db()
    s.rollback()
    surveys.after_refusal(s, token, request.remote_addr, e)
    s.commit()
    status = e.status if e.status in TITLES else 410
    _speak(_browser_language() if status == 404 else _survey_language(token))
    message = LOCKED if status == 423 else e.message
    # unknown, answered, expired or revoked: the draft kept on this device for the link goes (not while held or
    # locked: the parent tries again later)
    resp = make_response(render_template("survey/message.html", title=TITLES[status], message=say(message),
                                         done=False, forget=status in (404, 409, 410)), status)
    if status == 429 and getattr(e, "retry_after", None):
        resp.headers["Retry-After"] = str(e.retry_after)
    return resp


def _typed(field: dict, raw: str | None):
    """A form's text as the value of its field (a wrong one is passed on as it is: the service
    names what is wrong with it)."""
    raw = (raw or "").strip()
    if raw == "":
        return None
    t = field["type"]
    try:
        if t == "integer":
            return int(raw)
        if t == "number":
            return float(raw.replace(",", "."))
    except ValueError:
        return raw
    if t == "boolean":
        return {"yes": True, "no": False}.get(raw, raw)
    return raw


def _words(item: dict, language: str) -> str:
    """The protocol's word for ``item`` in the survey's language (``pt_BR``, else ``pt``), else English
    (as trial.protocol.service.labels; from the open survey's own instrument and visit: no other read)."""
    words = item.get("labels") or {}
    return next((words[c] for c in (language, language.split("_")[0]) if words.get(c)), None) or item.get("label") \
        or item["key"]


def _page(token: str, view: dict, entered: dict | None = None, errors: dict | None = None, status: int = 200):
    language = view["language"]
    _speak(language)
    ins, visit = view["instrument"], view["visit"]
    declared = {f["key"]: f for f in ins["fields"]}
    fields = []
    for f in view["fields"]:
        key = f["key"]
        fields.append({**f, "label": _words(declared[key], language) if key in declared else str(f["label"]),
                       "options": ([("yes", gettext("Yes")), ("no", gettext("No"))] if f["type"] == "boolean" else
                                   [(c["key"], str(c["label"])) for c in f.get("choices") or []]),
                       "value": (entered or {}).get(key, ""),
                       "error": say((errors or {}).get(f"values.{key}"))})
    unplaced = [say(v) for k, v in (errors or {}).items() if k.split(".", 1)[-1] not in {f["key"] for f in fields}]
    return render_template(
        "survey/page.html", token=token, fields=fields, unplaced=unplaced, has_errors=bool(errors),
        form_name=_words(ins, language), visit_name=_words(visit, language),
        first_name=view["first_name"], expires_on=day(view["expires_on"]), layout=view["layout"],
        expires_ms=calendar.timegm(view["survey"].expires_at.timetuple()) * 1000,
        action=url_for("survey_parent.form", token=token)), status


@bp.route("/s/<token>", methods=["GET", "POST"])
def form(token: str):
    """GET: the questionnaire. POST (the form itself, without JavaScript or with it): the answers
    become the visit's assessment; then the thank-you page. 404 / 409 / 410 / 429 as friendly pages."""
    if request.method == "POST" and request.mimetype not in FORM_TYPES:
        _speak(_browser_language())
        return render_template("survey/message.html", title=N_("Please try again later"),
                               message=say(N_("The request was not understood.")), done=False), 415
    if request.method == "POST" and "_user_id" in session:  # a staff member's browser: never the family's answers
        _speak(_survey_language(token))
        return render_template("survey/message.html", title=N_("Please sign out first"),
                               message=say(surveys.STAFF_SIGNED_IN), done=False), 403
    s = db()
    addr = request.remote_addr
    try:
        view = surveys.open_survey(s, token, addr)
    except DomainError as e:
        return _refused(token, e)
    if request.method == "GET":
        surveys.note_attempt(s, token, addr, surveys.outcome_of(None))
        s.commit()
        return _page(token, view)
    entered = {f["key"]: request.form.get(f"v-{f['key']}", "") for f in view["fields"]}
    values = {k: v for k, v in ((f["key"], _typed(f, entered[f["key"]])) for f in view["fields"]) if v is not None}
    language = view["language"]
    try:
        surveys.submit_survey(s, token, values, addr)
    except DomainError as e:
        if e.status != 400:
            return _refused(token, e)
        s.rollback()
        surveys.note_attempt(s, token, addr, surveys.outcome_of(e))
        s.commit()
        return _page(token, view, entered, e.fields or {"values": e.message}, 400)
    surveys.note_attempt(s, token, addr, surveys.outcome_of(None))
    s.commit()
    return redirect(url_for("survey_parent.done", language=language))


@bp.route("/s/done/<language>")
def done(language: str):
    """The thank-you page (after a submission: nothing of the survey in its address)."""
    _speak(language if language in LANGUAGES else _browser_language())
    return render_template("survey/message.html", title=N_("Thank you"), done=True,
                           message=say(N_("Your answers have been saved. You can close this page now.")))
