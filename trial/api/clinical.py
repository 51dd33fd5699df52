"""Screening, enrollment, assessments and randomization over the API."""
from __future__ import annotations

from flask import Response, jsonify, request
from sqlalchemy.exc import IntegrityError

from trial.api import answers as a
from trial.api import bodies as b
from trial.api.params import SITE_QUERY, enum_param, text_param
from trial.api.routing import body, err, media, ok, route
from trial.catalogue import LANGUAGES, N_, Msg
from trial.consent import service as consent
from trial.enrollment import service as enrollment
from trial.errors import ValidationError
from trial.http import actor, db, page_request, page_url
from trial.outcomes import service as outcomes
from trial.paging import ordered, sort_key
from trial.participants import service as participants
from trial.participants.models import Participant
from trial.randomize import confirmation
from trial.randomize import service as randomization


@route("/screenings", "POST", "Record a screening; the outcome is computed from the protocol's criteria", "coordinator of the site",
       body=b.ScreeningBody,
       responses={201: ok("recorded", a.ScreeningResult), 400: err("bad input"), 404: err("unknown site")})
def create_screening():
    s = db()
    sc = enrollment.record_screening(s, actor(), body())
    s.commit()
    return jsonify({"id": sc.id, "outcome": sc.outcome, "failed_criteria": sc.failed_criteria}), 201


@route("/participants", "POST", "Enroll a participant from an eligible screening", "coordinator of the site",
       body=b.EnrollmentBody,
       responses={201: ok("enrolled", a.Enrolled),
                  400: err("bad input"), 404: err("unknown screening"), 409: err("screening not eligible or already enrolled")})
def create_participant():
    s = db()
    p = enrollment.enroll(s, actor(), body())
    s.commit()
    site = p.site.code
    return jsonify({"study_id": p.study_id, "site": site, "status": "enrolled"}), 201


PAGE_QUERY = [
    {"name": "page", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
     "description": "a page of the list (with X-Total-Count and Link headers); without it, the whole list"},
    {"name": "per_page", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 200},
     "description": "participants per page (default 50, at most 200)"},
    text_param("q", "part of a study id"),
    enum_param("status", participants.STATUSES),
    text_param("arm", "an arm key; only for roles that may see the allocation", against="the caller's role"),
    text_param("sort", "study_id, site, status, consent_date, sex, randomized_on (arm for unblinded roles); - in front "
               "reverses", against="the caller's role"),
]


@route("/participants", "GET", "Participants as the caller's role may see them", "by role and site",
       params=SITE_QUERY + PAGE_QUERY,
       responses={200: ok("participants", list[a.Participant]), 400: err("bad page, filter or sort"),
                  403: err("a site you do not work at"), 404: err("unknown site")})
def list_participants():
    s = db()
    filters = {"site_code": request.args.get("site") or None, "search": request.args.get("q") or None,
               "status": request.args.get("status") or None, "arm": request.args.get("arm") or None}
    for name in ("page", "per_page"):
        if request.args.get(name, None) == "":  # the API takes a number or no parameter, never an empty one
            raise ValidationError(Msg(N_("%(name)s must be a whole number; leave it out for the whole list."), name=name),
                                  {name: N_("a whole number")})
    if "page" not in request.args:
        req = page_request()
        allowed = participants.participant_sorts(s, actor())
        sort = sort_key(req.sort, allowed, "study_id")
        stmt = ordered(participants.participant_query(s, actor(), **filters), sort, allowed, Participant.id)
        return jsonify(participants.participant_views(s, actor(), list(s.execute(stmt).scalars())))
    page = participants.page_participants(s, actor(), page_request(), **filters)
    resp = jsonify(participants.participant_views(s, actor(), page.items))
    resp.headers["X-Total-Count"] = str(page.total)
    links = []
    if page.has_next:
        links.append(f'<{page_url(_external=True, page=page.page + 1)}>; rel="next"')
    if page.has_prev:
        links.append(f'<{page_url(_external=True, page=page.page - 1)}>; rel="prev"')
    links += [f'<{page_url(_external=True, page=1)}>; rel="first"', f'<{page_url(_external=True, page=page.pages)}>; rel="last"']
    resp.headers["Link"] = ", ".join(links)
    return resp


@route("/participants/<study_id>", "GET", "One participant as the caller's role may see it", "by role and site",
       responses={200: ok("participant", a.Participant), 404: err("unknown participant")})
def get_participant(study_id):
    s = db()
    p = participants.get_participant(s, actor(), study_id)
    return jsonify(participants.participant_views(s, actor(), [p])[0])


@route("/participants/<study_id>/assessments", "POST", "Record an assessment of a protocol instrument",
       "assessor of the site (blinded instruments) or coordinator of the site (others)",
       body=b.AssessmentBody,
       responses={201: ok("recorded", a.AssessmentRecorded),
                  400: err("bad input, naming the field"), 404: err("unknown participant"),
                  409: err("already recorded or not allowed now"), 423: err("the database is locked")})
def create_assessment(study_id):
    s = db()
    a = outcomes.record_assessment(s, actor(), study_id, body())
    s.commit()
    out = {"id": a.id, "out_of_window": a.out_of_window}
    warn = " ".join(w for w in (outcomes.blinding_warning(s, actor(), a.participant_id),
                                consent.reconsent_warning(s, a.participant_id)) if w)
    if warn:
        out["warning"] = warn
    return jsonify(out), 201


@route("/participants/<study_id>/consents", "POST", "Record a consent (or a child's assent) of a protocol document",
       "coordinator of the site", body=b.ConsentBody,
       responses={201: ok("recorded", a.ConsentRecord), 400: err("bad input, naming the field"),
                  404: err("unknown participant"), 409: err("that document, version and signer is already recorded")})
def create_consent(study_id):
    s = db()
    c = consent.record_consent(s, actor(), study_id, body())
    s.commit()
    return jsonify(consent.as_dict(c, study_id.upper())), 201


@route("/participants/<study_id>/consents", "GET", "A participant's consents and assents",
       "coordinator or monitor of the site; manager",
       responses={200: ok("consents", list[a.ConsentRecord]), 403: err("a role that does not read consents"),
                  404: err("unknown participant")})
def list_consents(study_id):
    s = db()
    return jsonify([consent.as_dict(c, study_id.upper()) for c in consent.consents_of(s, actor(), study_id)])


@route("/consents/due", "GET", "Re-consents due after an amendment and assents due at the child's age",
       "coordinator or monitor (their sites); manager", params=SITE_QUERY,
       responses={200: ok("due", list[a.ConsentDue]), 403: err("a role that does not read consents")})
def consents_due():
    s = db()
    rows = consent.consents_due(s, actor(), request.args.get("site") or None)
    return jsonify([{**r, "due_since": r["due_since"].isoformat()} for r in rows])


@route("/participants/<study_id>/randomize", "POST", "Randomize a ready participant (concealed, irrevocable)", "coordinator of the site",
       params=[{"name": "Idempotency-Key", "in": "header", "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                "description": "a retried request with the same key returns the same allocation (200); "
                               "after a 503 outcome_unknown, retry with the same key"}],
       responses={201: ok("allocated", a.Randomized),
                  200: ok("the same Idempotency-Key again: the same allocation", a.Randomized),
                  400: err("an empty Idempotency-Key, or one longer than 200 characters"),
                  404: err("unknown participant"), 409: err("not ready, or already randomized"),
                  423: err("the database is locked")})
def randomize(study_id):
    key = request.headers.get("Idempotency-Key")
    for attempt in range(3):
        s = db()
        try:
            res = randomization.randomize(s, actor(), study_id, key)
            body_ = res.body()
            s.commit()
            return jsonify(body_), 201 if res.created else 200
        except IntegrityError:  # a backstop constraint fired: re-read and answer from the committed state
            s.rollback()
    raise RuntimeError("randomization kept conflicting")


@route("/participants/<study_id>/randomization.pdf", "GET",
       "The randomization confirmation for the child's file (study id, site, strata, date and time in the site's time "
       "zone, arm, who randomized, the allocation's verification digest), in the caller's language",
       "the roles that may see the allocation at the child's site",
       responses={200: media("the confirmation", "application/pdf"),
                  404: err("unknown participant, not randomized yet, or a reader who may not see its allocation "
                           "(one answer for all)")})
def randomization_pdf(study_id):
    user = actor()
    language = getattr(user, "language", None)
    pdf = confirmation.confirmation_pdf(db(), user, study_id, language if language in LANGUAGES else "en")
    return Response(pdf, mimetype="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="randomization-{study_id.upper()}.pdf"'})
