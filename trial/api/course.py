"""Course, status events, deviations, corrections, blinding reports and visit lists over the API."""
from __future__ import annotations

from flask import jsonify, request

from trial.api import body, route
from trial.course import service as course
from trial.enrollment.service import get_participant
from trial.outcomes import service as outcomes
from trial.status import service as status
from trial.web import actor, db

S, I, B, D = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}, {"type": "string", "format": "date"}
ERR = {"$ref": "#/components/schemas/Error"}
CREATED = {201: {"description": "recorded", "schema": {"type": "object", "properties": {"id": I}}},
           400: {"description": "bad input, naming the field", "schema": ERR},
           404: {"description": "unknown participant", "schema": ERR},
           409: {"description": "not allowed in the participant's state", "schema": ERR}}


def _created(obj, **extra):
    db().commit()
    return jsonify({"id": obj.id, **extra}), 201


@route("/participants/<study_id>/sessions", "POST", "Log a music-therapy session", "therapist of the site",
       request_schema={"type": "object", "required": ["held_on", "attendance"], "properties": {
           "held_on": D, "attendance": {"type": "string", "enum": ["attended", "cancelled", "no_show"]},
           "minutes": I, "techniques": {"type": "array", "items": S}, "engagement": I, "note": S}},
       responses=CREATED)
def log_session(study_id):
    s = course.log_session(db(), actor(), study_id, body())
    return _created(s, outside_course=s.outside_course)


@route("/participants/<study_id>/course", "GET", "Sessions, dose and counselling of one child (unblinded roles)",
       "coordinator, therapist of the site; manager")
def participant_course(study_id):
    return jsonify(course.participant_course(db(), actor(), study_id))


@route("/participants/<study_id>/counselling", "POST", "Log a parent-counselling session (every arm)", "coordinator of the site",
       request_schema={"type": "object", "required": ["held_on"], "properties": {"held_on": D, "attended": B, "note": S}},
       responses=CREATED)
def log_counselling(study_id):
    c = course.log_counselling(db(), actor(), study_id, body())
    return _created(c, number=c.number)


@route("/participants/<study_id>/events", "POST", "Record a status event", "coordinator of the site",
       request_schema={"type": "object", "required": ["type", "on", "reason"], "properties": {
           "type": {"type": "string", "enum": ["withdrawn", "lost_to_follow_up", "discontinued_intervention",
                                               "not_received", "died"]}, "on": D, "reason": S}},
       responses=CREATED)
def create_event(study_id):
    return _created(status.record_event(db(), actor(), study_id, body()))


@route("/participants/<study_id>/deviations", "POST", "Record a protocol deviation", "coordinator of the site",
       request_schema={"type": "object", "required": ["on", "category", "description"], "properties": {
           "on": D, "category": {"type": "string", "enum": list(status.DEVIATION_CATEGORIES)}, "description": S}},
       responses=CREATED)
def create_deviation(study_id):
    return _created(status.record_deviation(db(), actor(), study_id, body()))


@route("/participants/<study_id>/blinding-breaks", "POST", "Report that the assessor's blinding was broken",
       "assessor of the site", request_schema={"type": "object", "required": ["description"], "properties": {
           "reported_on": D, "description": S}}, responses=CREATED)
def report_blinding_break(study_id):
    return _created(outcomes.report_blinding_break(db(), actor(), study_id, body()))


@route("/assessments/<int:assessment_id>/corrections", "POST", "Correct an assessment's values (reason required)",
       "assessor (blinded instruments) or coordinator (others) of the site",
       request_schema={"type": "object", "required": ["values", "reason"], "properties": {
           "values": {"type": "object"}, "reason": S}},
       responses={200: "corrected", 400: {"description": "bad input", "schema": ERR}, 404: {"description": "unknown", "schema": ERR}})
def correct_assessment(assessment_id):
    a = outcomes.correct_assessment(db(), actor(), assessment_id, body())
    db().commit()
    return jsonify({"id": a.id, "values": a.values})


@route("/participants/<study_id>/visits", "GET", "The visit schedule with windows and status (arm-independent)",
       "coordinator, assessor of the site; manager")
def participant_visits(study_id):
    s = db()
    p = get_participant(s, actor(), study_id)
    out = {"study_id": p.study_id, "visits": outcomes.schedule(s, actor(), [p])[p.id]}
    warn = outcomes.blinding_warning(s, actor(), p.id)
    if warn:
        out["warning"] = warn
    return jsonify(out)


@route("/visits", "GET", "Due, overdue or out-of-window visits", "coordinator, assessor (own sites); manager",
       params=[{"name": "kind", "in": "query", "required": False, "schema": {"type": "string", "enum": ["due", "overdue", "out_of_window"]}},
               {"name": "site", "in": "query", "required": False, "schema": S}])
def visits():
    return jsonify(outcomes.worklist(db(), actor(), request.args.get("kind", "due"), request.args.get("site")))


@route("/adherence", "GET", "Dose received by arm (unblinded roles)", "manager; coordinator, therapist (own sites)",
       params=[{"name": "site", "in": "query", "required": False, "schema": S}])
def adherence():
    return jsonify(course.adherence_by_arm(db(), actor(), request.args.get("site")))


@route("/notifications", "GET", "The caller's unread notifications", "anyone")
def notifications():
    return jsonify([{"id": n.id, "message": n.message, "created_at": n.created_at.isoformat() + "Z"}
                    for n in outcomes.notifications_for(db(), actor())])
