"""Queries, adverse events and source verification over the API (API.md, "Data management")."""
from __future__ import annotations

from flask import jsonify, request

from trial.api import answers as a
from trial.api import bodies as b
from trial.api.params import SITE_QUERY, enum_param, text_param
from trial.api.routing import body, err, ok, route
from trial.catalogue import N_
from trial.dataquality.models import QUERY_STATES
from trial.errors import ValidationError
from trial.http import actor, db
from trial.monitoring import service as monitoring
from trial.notify.service import dismiss
from trial.queries import service as queries
from trial.safety import service as safety

@route("/queries", "POST", "Raise a query on a record (or one field of it)", "manager; monitor of the site",
       body=b.QueryBody,
       responses={201: ok("raised", a.QueryState), 400: err("bad input, naming the field"),
                  404: err("unknown participant or record")})
def raise_query():
    q = queries.raise_query(db(), actor(), body())
    db().commit()
    return jsonify({"id": q.id, "status": q.status, "number": q.number}), 201


@route("/queries", "GET", "Queries as the caller may see them (an assessor: only on what assessors enter)",
       "by role and site",
       params=SITE_QUERY + [enum_param("status", QUERY_STATES),
                            text_param("study_id", "a participant's study id", against="the trial's records")],
       responses={200: ok("queries", list[a.Query]), 404: err("unknown site")})
def list_queries():
    s = db()
    return jsonify(queries.views(s, queries.listing(s, actor(), request.args.get("site"), request.args.get("status"),
                                                     request.args.get("study_id"))))


@route("/queries/<int:query_id>", "GET", "One query with its thread", "by role and site",
       responses={200: ok("the query", a.Query), 404: err("unknown query")})
def get_query(query_id):
    s = db()
    return jsonify(queries.views(s, [queries.get(s, actor(), query_id)])[0])


@route("/queries/<int:query_id>/responses", "POST", "Answer a query (optionally correcting the assessment it is on)",
       "the site's role that enters that data",
       body=b.QueryResponseBody,
       responses={201: ok("answered", a.QueryState), 400: err("bad input"), 404: err("unknown query"),
                  409: err("the query is closed")})
def respond_query(query_id):
    msg = queries.respond(db(), actor(), query_id, body())
    db().commit()
    return jsonify({"id": msg.query_id, "status": "answered", "number": msg.query.number}), 201


def _optional_body() -> dict:
    if not request.get_data():
        return {}
    return body()


@route("/queries/<int:query_id>/close", "POST", "Close a query", "manager; monitor of the site",
       body=b.QueryNoteBody,
       responses={200: ok("closed", a.QueryState), 404: err("unknown query"), 409: err("already closed")})
def close_query(query_id):
    q = queries.close(db(), actor(), query_id, _optional_body())
    db().commit()
    return jsonify({"id": q.id, "status": q.status, "number": q.number})


@route("/queries/<int:query_id>/reopen", "POST", "Reopen a closed query", "manager; monitor of the site",
       body=b.QueryNoteBody,
       responses={200: ok("reopened", a.QueryState), 404: err("unknown query"), 409: err("not closed")})
def reopen_query(query_id):
    q = queries.reopen(db(), actor(), query_id, _optional_body())
    db().commit()
    return jsonify({"id": q.id, "status": q.status, "number": q.number})


@route("/participants/<study_id>/adverse-events", "POST", "Record an adverse event", "coordinator of the site",
       body=b.AdverseEventBody,
       responses={201: ok("recorded", a.AdverseEventRecorded),
                  400: err("bad input, naming the field"), 404: err("unknown participant"),
                  409: err("not allowed in the participant's state (withdrawn, a death on another date)")})
def create_adverse_event(study_id):
    ae = safety.record(db(), actor(), study_id, body())
    db().commit()
    out = {"id": ae.id, "serious": ae.serious}
    if ae.report_due:
        out["report_due"] = ae.report_due.isoformat(timespec="seconds") + "Z"
    return jsonify(out), 201


@route("/adverse-events/<int:ae_id>/follow-ups", "POST", "Record a follow-up of an adverse event", "coordinator of the site",
       body=b.FollowUpBody,
       responses={201: ok("recorded", a.Recorded), 400: err("bad input, naming the field"),
                  404: err("unknown adverse event"), 409: err("already resolved, or a death on another date")})
def follow_up_adverse_event(ae_id):
    fu = safety.follow_up(db(), actor(), ae_id, body())
    db().commit()
    return jsonify({"id": fu.id}), 201


@route("/adverse-events/<int:ae_id>/acknowledge", "POST", "Acknowledge a serious adverse event with its first report "
       "(to whom, when, the reference): stops its 24-hour clock", "manager", body=b.SaeReportBody,
       responses={200: ok("acknowledged", a.Acknowledged), 400: err("bad input, naming each field"),
                  404: err("unknown adverse event"), 409: err("not serious, or acknowledged already")})
def acknowledge_adverse_event(ae_id):
    s = db()
    ae = safety.acknowledge(s, actor(), ae_id, body())
    s.commit()
    return jsonify({"id": ae.id, "acknowledged_at": ae.acknowledged_at.isoformat(timespec="seconds") + "Z",
                    "report": safety.report_view(s, ae.reports[0])})


@route("/adverse-events/<int:ae_id>/reports", "POST", "Record a further report of an acknowledged serious adverse event",
       "manager", body=b.SaeReportBody,
       responses={201: ok("recorded", a.SaeReport), 400: err("bad input, naming each field"),
                  404: err("unknown adverse event"),
                  409: err("not serious, not acknowledged yet, or this report is recorded already")})
def report_adverse_event(ae_id):
    s = db()
    rep = safety.report(s, actor(), ae_id, body())
    s.commit()
    return jsonify(safety.report_view(s, rep)), 201


def _serious_arg() -> bool | None:
    raw = request.args.get("serious")
    if raw is None:
        return None
    if raw not in ("true", "false"):
        raise ValidationError(N_("serious must be true or false."), {"serious": N_("true or false")})
    return raw == "true"


@route("/adverse-events", "GET", "Adverse events, by site and seriousness", "coordinator, monitor (own sites); manager",
       params=SITE_QUERY + [enum_param("serious", ("true", "false"))],
       responses={200: ok("adverse events", list[a.AdverseEvent]), 404: err("unknown site")})
def list_adverse_events():
    s = db()
    return jsonify(safety.views(s, safety.listing(s, actor(), request.args.get("site"), _serious_arg())))


@route("/adverse-events/<int:ae_id>", "GET", "One adverse event with its follow-ups", "coordinator, monitor (own sites); manager",
       responses={200: ok("the adverse event", a.AdverseEvent), 404: err("unknown adverse event")})
def get_adverse_event(ae_id):
    s = db()
    return jsonify(safety.views(s, [safety.get(s, actor(), ae_id)])[0])


@route("/participants/<study_id>/verifications", "POST", "Mark a record source-verified", "monitor of the site",
       body=b.VerificationBody,
       responses={201: ok("verified", a.Recorded), 400: err("bad input"), 404: err("unknown record"),
                  409: err("already verified")})
def verify_record(study_id):
    v = monitoring.verify(db(), actor(), study_id, body())
    db().commit()
    return jsonify({"id": v.id}), 201


@route("/notifications/<ref>/dismiss", "POST", "Dismiss one of your notifications (by its random reference)", "anyone",
       responses={200: ok("dismissed", a.Dismissed), 404: err("not one of yours")})
def dismiss_notification(ref):
    n = dismiss(db(), actor(), ref)
    db().commit()
    return jsonify({"ref": n.ref})
