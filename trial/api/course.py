"""Course, status events, deviations, corrections, blinding reports and visit lists over the API."""
from __future__ import annotations

from flask import jsonify, request

from trial.api import answers as a
from trial.api import bodies as b
from trial.api.params import SITE_QUERY, enum_param
from trial.api.routing import body, err, ok, route
from trial.consent import service as consent
from trial.course import service as course
from trial.http import actor, db
from trial.notify.service import notifications_for
from trial.outcomes import service as outcomes
from trial.participants.service import get_participant
from trial.status import service as status


def created(model=a.Recorded) -> dict:
    return {201: ok("recorded", model), 400: err("bad input, naming the field"),
            404: err("unknown participant"), 409: err("not allowed in the participant's state")}


def _created(obj, **extra):
    db().commit()
    return jsonify({"id": obj.id, **extra}), 201


@route("/participants/<study_id>/sessions", "POST", "Log a music-therapy session (an attended one with its minutes)",
       "therapist of the site",
       body=b.SessionBody,
       responses={**created(a.SessionRecorded),
                  409: err("not allowed in the participant's state; code credential: the therapist holds no "
                           "credential valid on held_on")})
def log_session(study_id):
    s = course.log_session(db(), actor(), study_id, body())
    warn = consent.reconsent_warning(db(), s.participant_id)
    return _created(s, outside_course=s.outside_course, **({"warning": warn} if warn else {}))


@route("/sessions/<int:session_id>/corrections", "POST", "Correct a logged music-therapy session (reason required)",
       "therapist of the site",
       body=b.SessionCorrectionBody,
       responses={200: ok("corrected: the session as it now stands", a.Session),
                  400: err("bad input or no change, naming the field"),
                  404: err("unknown session, or one the caller may not know of"),
                  409: err("another session on that day, or a day on or after the child stopped the intervention")})
def correct_session(session_id):
    s = course.correct_session(db(), actor(), session_id, body())
    db().commit()
    return jsonify(course.session_view(s))


@route("/participants/<study_id>/course", "GET", "Sessions, dose and counselling of one child (unblinded roles)",
       "coordinator, therapist of the site; manager",
       responses={200: ok("the course", a.Course), 404: err("unknown or not randomized participant")})
def participant_course(study_id):
    return jsonify(course.participant_course(db(), actor(), study_id))


@route("/participants/<study_id>/counselling", "POST", "Log a parent-counselling session (every arm)", "coordinator of the site",
       body=b.CounsellingBody, responses=created(a.CounsellingRecorded))
def log_counselling(study_id):
    c = course.log_counselling(db(), actor(), study_id, body())
    return _created(c, number=c.number)


@route("/participants/<study_id>/events", "POST", "Record a status event", "coordinator of the site",
       body=b.StatusEventBody, responses=created())
def create_event(study_id):
    return _created(status.record_event(db(), actor(), study_id, body()))


@route("/participants/<study_id>/consent-withdrawals", "POST",
       "Record a withdrawal of consent with its scope (all: also the withdrawn status event)",
       "coordinator of the site; manager", body=b.WithdrawalBody,
       responses={**created(), 409: err("the child is already withdrawn or deceased, or has a withdrawal of that scope")})
def withdraw_consent(study_id):
    return _created(status.record_withdrawal(db(), actor(), study_id, body()))


@route("/participants/<study_id>/deviations", "POST", "Record a protocol deviation", "coordinator of the site",
       body=b.DeviationBody, responses=created())
def create_deviation(study_id):
    return _created(status.record_deviation(db(), actor(), study_id, body()))


@route("/participants/<study_id>/blinding-breaks", "POST", "Report that the assessor's blinding was broken",
       "assessor of the site", body=b.BlindingBreakBody, responses=created())
def report_blinding_break(study_id):
    return _created(outcomes.report_blinding_break(db(), actor(), study_id, body()))


@route("/assessments/<int:assessment_id>/corrections", "POST", "Correct an assessment's values (reason required)",
       "assessor (blinded instruments) or coordinator (others) of the site",
       body=b.AssessmentCorrectionBody,
       responses={200: ok("corrected", a.AssessmentCorrected),
                  400: err("bad input, naming the field"), 404: err("unknown assessment"),
                  409: err("not allowed in the participant's state")})
def correct_assessment(assessment_id):
    a = outcomes.correct_assessment(db(), actor(), assessment_id, body())
    db().commit()
    return jsonify({"id": a.id, "values": a.values})


@route("/participants/<study_id>/visits", "GET", "The visit schedule with windows and status (arm-independent)",
       "coordinator, assessor of the site; manager",
       responses={200: ok("the schedule", a.Schedule),
                  404: err("unknown participant")})
def participant_visits(study_id):
    s = db()
    p = get_participant(s, actor(), study_id)
    out = {"study_id": p.study_id, "visits": outcomes.schedule(s, actor(), [p])[p.id]}
    warn = outcomes.blinding_warning(s, actor(), p.id)
    if warn:
        out["warning"] = warn
    return jsonify(out)


@route("/visits", "GET", "Due, overdue or out-of-window visits", "coordinator, assessor (own sites); manager",
       params=[enum_param("kind", ("due", "overdue", "out_of_window", "week"),
                          "week: due now or opening within the next seven days")] + SITE_QUERY,
       responses={200: ok("visits", list[a.WorklistItem]), 404: err("unknown site")})
def visits():
    rows = outcomes.worklist(db(), actor(), request.args.get("kind", "due"), request.args.get("site"))
    db().commit()  # the missing-form checks the worklist ran
    return jsonify(rows)


@route("/adherence", "GET", "Dose received by arm (unblinded roles)", "manager; coordinator, therapist (own sites)",
       params=SITE_QUERY,
       responses={200: ok("dose by arm", list[a.Adherence]), 404: err("unknown site")})
def adherence():
    return jsonify(course.adherence_by_arm(db(), actor(), request.args.get("site")))


@route("/notifications", "GET", "The caller's unread notifications", "anyone",
       responses={200: ok("notifications", list[a.Notification])})
def notifications():
    rows = [{"ref": n.ref, "message": n.message, "created_at": n.created_at.isoformat() + "Z"}
            for n in notifications_for(db(), actor())]
    db().commit()  # the references given to notifications written before they had one
    return jsonify(rows)
