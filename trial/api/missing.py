"""Missing data with reasons (forms recorded as not done) and randomization errors over the API
(API.md, "Oversight and close-out")."""
from __future__ import annotations

from flask import jsonify

from trial.api import answers as a
from trial.api import bodies as b
from trial.api.routing import body, err, ok, route
from trial.http import actor, db
from trial.outcomes import notdone, retraction
from trial.randomize import errors as randomization_errors


@route("/participants/<study_id>/not-done", "POST",
       "Record a form as not done, with the protocol's reason: closes its missing-form query with that reason",
       "assessor of the site (blinded instruments) or coordinator of the site (others)",
       body=b.NotDoneBody,
       responses={201: ok("recorded", a.NotDoneRecorded), 400: err("bad input, naming the field"),
                  403: err("a role that does not enter that form"), 404: err("unknown participant"),
                  409: err("the form is entered or already not done, or not due for the child"),
                  423: err("the database is locked")})
def record_not_done(study_id):
    s = db()
    nd = notdone.record_not_done(s, actor(), study_id, body())
    s.commit()
    return jsonify(notdone.as_dict(nd, study_id.upper())), 201


@route("/participants/<study_id>/not-done/<int:not_done_id>/retract", "POST",
       "Retract a form's record as not done, made by mistake, with a reason: audited; the casebook signatures "
       "covering it are invalidated and the form's missing-form query is reopened",
       "assessor of the site (blinded instruments) or coordinator of the site (others)",
       body=b.RetractionBody,
       responses={200: ok("retracted: the record as it was", a.NotDoneRecorded), 400: err("no reason"),
                  403: err("a role that does not enter that form"), 404: err("unknown participant or record"),
                  423: err("the database is locked")})
def retract_not_done(study_id, not_done_id):
    s = db()
    out = retraction.retract_not_done(s, actor(), study_id, not_done_id, body())
    s.commit()
    return jsonify(out)


@route("/participants/<study_id>/randomization-errors/<int:error_id>/retract", "POST",
       "Retract a randomization error recorded by mistake, with a reason (audited)", "manager",
       body=b.RetractionBody,
       responses={200: ok("retracted: the record as it was", a.RandomizationErrorRecord), 400: err("no reason"),
                  403: err("not the manager"), 404: err("unknown participant or record"),
                  423: err("the database is locked")})
def retract_randomization_error(study_id, error_id):
    s = db()
    out = randomization_errors.retract_error(s, actor(), study_id, error_id, body())
    s.commit()
    return jsonify(out)


@route("/participants/<study_id>/randomization-errors", "POST",
       "Record a randomization error; the allocation never changes (intention to treat)", "manager",
       body=b.RandomizationErrorBody,
       responses={201: ok("recorded", a.RandomizationErrorRecord), 400: err("bad input, naming the field"),
                  403: err("not the manager"), 404: err("unknown participant"), 409: err("the child is not randomized"),
                  423: err("the database is locked")})
def record_randomization_error(study_id):
    s = db()
    e = randomization_errors.record_error(s, actor(), study_id, body())
    s.commit()
    return jsonify(randomization_errors.as_dict(e, study_id.upper(), getattr(actor(), "name", None))), 201


@route("/randomization-errors", "GET", "Every randomization error recorded", "manager, statistician",
       responses={200: ok("the errors", list[a.RandomizationErrorRecord]), 403: err("another role")})
def list_randomization_errors():
    s = db()
    rows, shown = randomization_errors.listing(s, actor()), randomization_errors.text_shown(s, actor())
    return jsonify([randomization_errors.as_dict(e, sid, by, shown) for e, sid, by in rows])
