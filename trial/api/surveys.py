"""Parents' surveys over the API (issue 28): the coordinator sends, lists, resends and revokes them;
the parent's link opens and answers its questionnaire without an account (``/surveys/<token>``:
public, no CSRF, never cached, no Referer sent on). Every attempt at a link is counted for the rate
limit, also when it was refused (its transaction rolled back first)."""
from __future__ import annotations

from flask import jsonify, request, session

from trial.api import answers as a
from trial.api import bodies as b
from trial.api.routing import body, err, ok, route
from trial.catalogue import RTL_LANGUAGES, Label
from trial.errors import DomainError, Forbidden, Locked
from trial.http import actor, db
from trial.protocol.service import current as current_protocol
from trial.surveys import service as surveys

PARENT_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer", "minimum": 1}}}


def _link(token: str) -> str:
    """The link, absolute: under TRIAL_BASE_URL, else this request's own address."""
    link = surveys.link_of(token)
    return request.host_url.rstrip("/") + link if link.startswith("/") else link


@route("/participants/<study_id>/surveys", "POST", "Send a questionnaire the parents answer as a survey (the link "
       "is in the answer only)", "coordinator of the site", body=b.SurveyBody,
       responses={201: ok("sent", a.SurveyRecord), 400: err("bad input, naming the field"),
                  404: err("unknown participant"),
                  409: err("the visit's window is not open, the form is recorded, a link of it is out, a consent is "
                           "due or the follow-up was withdrawn")})
def send_survey(study_id):
    s = db()
    sv, token = surveys.send_survey(s, actor(), study_id, body())
    s.commit()
    return jsonify(surveys.as_dict(sv, _link(token))), 201


@route("/participants/<study_id>/surveys", "GET", "A participant's surveys, newest first", "coordinator, monitor, manager",
       responses={200: ok("surveys", list[a.SurveyRecord]), 403: err("a role that does not read surveys"),
                  404: err("unknown participant")})
def list_surveys(study_id):
    return jsonify([surveys.as_dict(sv) for sv in surveys.surveys_of(db(), actor(), study_id)])


@route("/surveys/<int:survey_id>/revoke", "POST", "Revoke a survey's link", "coordinator of the site",
       responses={200: ok("revoked", a.SurveyRecord), 404: err("unknown survey"), 409: err("already answered")})
def revoke_survey(survey_id):
    s = db()
    sv = surveys.revoke_survey(s, actor(), survey_id)
    s.commit()
    return jsonify(surveys.as_dict(sv))


@route("/surveys/<int:survey_id>/resend", "POST", "A new link for an outstanding survey (the old one stops working), "
       "e-mailed again when it has an address", "coordinator of the site", body=b.SurveyResendBody,
       responses={200: ok("sent again", a.SurveyRecord), 400: err("bad e-mail address"), 404: err("unknown survey"),
                  409: err("answered, revoked or expired: send a new one")})
def resend_survey(survey_id):
    s = db()
    sv, token = surveys.resend_survey(s, actor(), survey_id, body())
    s.commit()
    return jsonify(surveys.as_dict(sv, _link(token)))


# --- the parent's side: no account, the link is the credential ----------------------------------

def _parent(resp):
    resp.headers.update(PARENT_HEADERS)
    return resp


def _attempt(work):
    """Run ``work(session, token, addr)`` and commit with the attempt counted; a refusal is rolled
    back, its attempt counted and committed, then answered by the app's error handler."""
    s, token, addr = db(), request.view_args["token"], request.remote_addr  # behind TRIAL_PROXIES: ProxyFix's
    try:
        out = work(s, token, addr)
        surveys.note_attempt(s, token, addr, surveys.outcome_of(None))
        s.commit()
        return out
    except DomainError as e:
        s.rollback()
        surveys.after_refusal(s, token, addr, e)
        s.commit()
        if isinstance(e, Locked):  # the parent learns nothing of the lock (who signed it, which)
            raise Locked(surveys.LOCKED) from None
        raise


def form_view(s, view: dict) -> dict:
    """The parent's questionnaire as JSON: labels as text in the survey's language."""
    content, lang = current_protocol(s).content, view["language"]
    fields = []
    for f in view["fields"]:
        out = {**f, "label": surveys.say_in(f["label"], content, lang)}
        if f.get("choices"):
            out["choices"] = [{"key": c["key"], "label": surveys.say_in(c["label"], content, lang)} for c in f["choices"]]
        fields.append(out)
    ins, visit = view["instrument"], view["visit"]
    return {"instrument": ins["key"], "visit": visit["key"], "fields": fields, "language": lang,
            "instrument_label": surveys.say_in(Label("instrument", ins["key"], ins["label"]), content, lang),
            "visit_label": surveys.say_in(Label("visit", visit["key"], visit["label"]), content, lang),
            "first_name": view["first_name"], "layout": view["layout"], "expires_on": view["expires_on"].isoformat(),
            "rtl": lang in RTL_LANGUAGES}


PARENT_ERRORS = {404: err("unknown link (the same answer for any)"), 409: err("already answered (already_submitted)"),
                 410: err("expired, revoked or no longer answerable (expired)"),
                 429: {**err("too many attempts from this address or at this link"), "headers": RETRY_AFTER}}


@route("/surveys/<token>", "GET", "The parent's questionnaire (the link's token is the credential)", "public",
       responses={200: ok("the questionnaire", a.SurveyForm), **PARENT_ERRORS})
def survey_form(token):
    return _parent(jsonify(_attempt(lambda s, t, addr: form_view(s, surveys.open_survey(s, t, addr)))))


@route("/surveys/<token>", "POST", "The parent's answers: they become the visit's assessment", "public",
       body=b.SurveyAnswersBody,
       responses={201: ok("saved", a.SurveyDone), 400: err("bad values, naming each field (values.<field>)"),
                  403: err("a staff member is signed in in this browser: sign out to answer as the parent"),
                  **PARENT_ERRORS})
def submit_survey(token):
    if "_user_id" in session:  # a staff member's browser: never answers in the family's place
        raise Forbidden(surveys.STAFF_SIGNED_IN)

    def work(s, t, addr):
        values = body()["values"]
        surveys.submit_survey(s, t, values, addr)
    _attempt(work)
    return _parent(jsonify({"status": "completed"})), 201
