"""Course, status events, deviations, corrections, blinding reports and visit lists over the API."""
from __future__ import annotations

from flask import jsonify, request

from trial.api.routing import body, route
from trial.api.schemas import (
    COUNT,
    DT,
    ID,
    ND,
    NI,
    NS,
    SITE_QUERY,
    VISIT,
    WORKLIST_ITEM,
    B,
    D,
    S,
    array,
    enum,
    err,
    obj,
    ok,
    text,
)
from trial.course import service as course
from trial.course.models import ATTENDANCE, PRESENT
from trial.http import actor, db
from trial.notify.service import notifications_for
from trial.outcomes import service as outcomes
from trial.participants.service import get_participant
from trial.status import service as status


def created(**extra) -> dict:
    return {201: ok("recorded", obj(["id", *extra], id=ID, **extra)), 400: err("bad input, naming the field"),
            404: err("unknown participant"), 409: err("not allowed in the participant's state")}


PRESENT_SCHEMA = {**enum(*PRESENT), "description": "who took part: the child alone, or with a parent"}
SESSION = obj(["id", "held_on", "attendance", "minutes", "techniques", "engagement", "note", "outside_course",
               "present", "goals"],
              id=ID, held_on=D, attendance=enum("attended", "cancelled", "no_show"), minutes=NI, techniques=array(S),
              engagement=NI, note=NS, outside_course=B, present={**PRESENT_SCHEMA, "nullable": True}, goals=array(S))
GOAL = obj(["id", "goal", "description", "active", "set_on", "sessions"], id=ID, goal=S, description=NS, active=B,
           set_on=D, sessions=COUNT)
DOSE = obj(["planned", "attended", "logged", "dose", "course_start", "course_end"], planned=NI, attended=NI, logged=NI,
           dose={"type": "number", "nullable": True}, course_start=D, course_end=D)
ADHERENCE = obj(["arm", "label", "participants", "sessions_attended", "mean_dose", "received_minimum"], arm=S, label=S,
                participants=COUNT, sessions_attended=COUNT, mean_dose={"type": "number", "nullable": True},
                received_minimum=NI)
COURSE = obj(["study_id", "arm", "sessions", "counselling"], study_id=S, arm=S, sessions=array(SESSION),
             counselling=array(obj(["number", "held_on", "attended"], number=ID, held_on=D, attended=B)), dose=DOSE,
             goals=array(GOAL))


MINUTES = {"type": "integer", "minimum": 0, "maximum": 240}
ENGAGEMENT = {"type": "integer", "minimum": 1, "maximum": 5}


def _created(obj, **extra):
    db().commit()
    return jsonify({"id": obj.id, **extra}), 201


@route("/participants/<study_id>/sessions", "POST", "Log a music-therapy session (an attended one with its minutes)",
       "therapist of the site",
       request_schema=obj(["held_on", "attendance"], held_on=D, attendance=enum(*ATTENDANCE), minutes=MINUTES,
                          techniques={**array(S), "description": "keys of the protocol's techniques"},
                          engagement=ENGAGEMENT, note=text(1000, False), present=PRESENT_SCHEMA,
                          goals={**array(S), "description": "keys of the child's goals the session worked on"}),
       responses={**created(outside_course=B),
                  409: err("not allowed in the participant's state; code credential: the therapist holds no "
                           "credential valid on held_on")})
def log_session(study_id):
    s = course.log_session(db(), actor(), study_id, body())
    return _created(s, outside_course=s.outside_course)


SESSION_CORRECTION = {**obj(["reason"], held_on=D, attendance=enum(*ATTENDANCE), minutes={**MINUTES, "nullable": True},
                            techniques=array(S), engagement={**ENGAGEMENT, "nullable": True},
                            note={**text(1000, False), "nullable": True}, present={**PRESENT_SCHEMA, "nullable": True},
                            goals=array(S), reason=text(500)),
                      "additionalProperties": False,
                      "description": "the fields to change (the others stay as recorded; null empties minutes, "
                                     "engagement or note) and the reason. The session as corrected must be valid: "
                                     "an attended session has minutes, one that did not take place has none."}


@route("/sessions/<int:session_id>/corrections", "POST", "Correct a logged music-therapy session (reason required)",
       "therapist of the site",
       request_schema=SESSION_CORRECTION,
       responses={200: ok("corrected: the session as it now stands", SESSION),
                  400: err("bad input or no change, naming the field"),
                  404: err("unknown session, or one the caller may not know of"),
                  409: err("another session on that day, or a day on or after the child stopped the intervention")})
def correct_session(session_id):
    s = course.correct_session(db(), actor(), session_id, body())
    db().commit()
    return jsonify(course.session_view(s))


@route("/participants/<study_id>/course", "GET", "Sessions, dose and counselling of one child (unblinded roles)",
       "coordinator, therapist of the site; manager",
       responses={200: ok("the course", COURSE), 404: err("unknown or not randomized participant")})
def participant_course(study_id):
    return jsonify(course.participant_course(db(), actor(), study_id))


@route("/participants/<study_id>/counselling", "POST", "Log a parent-counselling session (every arm)", "coordinator of the site",
       request_schema=obj(["held_on"], held_on=D, attended=B, note=text(1000, False)),
       responses=created(number=ID))
def log_counselling(study_id):
    c = course.log_counselling(db(), actor(), study_id, body())
    return _created(c, number=c.number)


@route("/participants/<study_id>/events", "POST", "Record a status event", "coordinator of the site",
       request_schema=obj(["type", "on", "reason"], type=enum("withdrawn", "lost_to_follow_up", "discontinued_intervention",
                                                              "not_received", "died"), on=D, reason=text(500)),
       responses=created())
def create_event(study_id):
    return _created(status.record_event(db(), actor(), study_id, body()))


@route("/participants/<study_id>/deviations", "POST", "Record a protocol deviation", "coordinator of the site",
       request_schema=obj(["on", "category", "description"], on=D, category=enum(*status.DEVIATION_CATEGORIES),
                          description=text(2000)),
       responses=created())
def create_deviation(study_id):
    return _created(status.record_deviation(db(), actor(), study_id, body()))


@route("/participants/<study_id>/blinding-breaks", "POST", "Report that the assessor's blinding was broken",
       "assessor of the site", request_schema=obj(["description"], reported_on={**ND, "description": "default: today at the site"},
                                                  description=text(1000)),
       responses=created())
def report_blinding_break(study_id):
    return _created(outcomes.report_blinding_break(db(), actor(), study_id, body()))


@route("/assessments/<int:assessment_id>/corrections", "POST", "Correct an assessment's values (reason required)",
       "assessor (blinded instruments) or coordinator (others) of the site",
       request_schema=obj(["values", "reason"], values={"type": "object"}, reason=text(500)),
       responses={200: ok("corrected", obj(["id", "values"], id=ID, values={"type": "object"})),
                  400: err("bad input, naming the field"), 404: err("unknown assessment"),
                  409: err("not allowed in the participant's state")})
def correct_assessment(assessment_id):
    a = outcomes.correct_assessment(db(), actor(), assessment_id, body())
    db().commit()
    return jsonify({"id": a.id, "values": a.values})


@route("/participants/<study_id>/visits", "GET", "The visit schedule with windows and status (arm-independent)",
       "coordinator, assessor of the site; manager",
       responses={200: ok("the schedule", obj(["study_id", "visits"], study_id=S, visits=array(VISIT), warning=S)),
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
       params=[{"name": "kind", "in": "query", "required": False, "schema": enum("due", "overdue", "out_of_window")}] + SITE_QUERY,
       responses={200: ok("visits", array(WORKLIST_ITEM)), 404: err("unknown site")})
def visits():
    rows = outcomes.worklist(db(), actor(), request.args.get("kind", "due"), request.args.get("site"))
    db().commit()  # the missing-form checks the worklist ran
    return jsonify(rows)


@route("/adherence", "GET", "Dose received by arm (unblinded roles)", "manager; coordinator, therapist (own sites)",
       params=SITE_QUERY,
       responses={200: ok("dose by arm", array(ADHERENCE)), 404: err("unknown site")})
def adherence():
    return jsonify(course.adherence_by_arm(db(), actor(), request.args.get("site")))


@route("/notifications", "GET", "The caller's unread notifications", "anyone",
       responses={200: ok("notifications", array(obj(["id", "message", "created_at"], id=ID, message=S, created_at=DT)))})
def notifications():
    return jsonify([{"id": n.id, "message": n.message, "created_at": n.created_at.isoformat() + "Z"}
                    for n in notifications_for(db(), actor())])
