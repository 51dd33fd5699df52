"""The intervention as delivered over the API: therapists' credentials, children's goals and
treatment fidelity (draws, ratings, the report)."""
from __future__ import annotations

from flask import jsonify, request

from trial.api.routing import body, route
from trial.api.schemas import COUNT, ID, NS, SITE_QUERY, B, D, N, S, array, enum, err, obj, ok, text
from trial.auth.models import User
from trial.course import service as course
from trial.credentials import service as credentials
from trial.errors import NotFound, ValidationError
from trial.fidelity import service as fidelity
from trial.http import actor, db

CREDENTIAL = obj(["id", "kind", "number", "issuer", "valid_from", "valid_to", "state", "days_left"], id=ID, kind=S,
                 number=S, issuer=NS, valid_from=D, valid_to=D,
                 state=enum("valid", "expiring", "expired", "not_yet_valid", "revoked"), days_left={"type": "integer"})
THERAPIST = obj(["id", "email", "name", "sites", "credentials", "credentialed", "expires_on", "warning"], id=ID, email=S,
                name=S, sites=array(S), credentials=array(CREDENTIAL), credentialed=B,
                expires_on={**D, "nullable": True}, warning=B)
GOAL = obj(["id", "goal", "description", "active", "set_on"], id=ID, goal=S, description=NS, active=B, set_on=D)
DRAW = obj(["id", "therapist", "seed", "share", "population", "population_sha256", "size", "sample", "drawn_at"],
           id=ID, therapist=S, seed=S, share=N, population=array(ID), population_sha256=S, size=COUNT,
           sample=array(ID), drawn_at={"type": "string", "format": "date-time"})
THERAPIST_ROW = obj(["therapist", "site", "sampled", "rated", "adherent"], therapist=S, name=S, site=S, sampled=COUNT,
                    rated=COUNT, adherent=COUNT, mean_score={"type": "number", "nullable": True},
                    share_adherent={"type": "number", "nullable": True})
FIDELITY = obj(["sampled", "rated", "by_therapist"], sampled=COUNT, rated=COUNT, adherent=COUNT, threshold=N, share=N,
               by_therapist=array(THERAPIST_ROW),
               by_month=array(obj(["month", "rated", "adherent"], month=S, rated=COUNT, adherent=COUNT)))
DUE = obj(["session", "held_on", "study_id", "site"], session=ID, held_on=D, minutes={"type": "integer", "nullable": True},
          study_id=S, site=S, therapist={"type": "string", "nullable": True})


def _goal(g) -> dict:
    return {"id": g.id, "goal": g.goal, "description": g.description, "active": g.active, "set_on": g.set_on.isoformat()}


@route("/therapists", "GET", "Therapists with their credentials, and a warning 60 days before the last expires",
       "admin, manager; a coordinator for their sites", responses={200: ok("the therapists", array(THERAPIST))})
def therapists():
    return jsonify(credentials.therapists(db(), actor()))


@route("/therapists/<int:user_id>/credentials", "POST", "Record a therapist's credential", "admin",
       request_schema=obj(["kind", "number", "valid_to"], kind=S, number=text(64), valid_to=D, valid_from=D,
                          issuer=text(200, False)),
       responses={201: ok("recorded", CREDENTIAL), 400: err("bad input, naming the field"),
                  404: err("unknown user")})
def record_credential(user_id):
    u = db().get(User, user_id)
    if u is None:
        raise NotFound(f"No user {user_id}.")
    c = credentials.record(db(), actor(), u, body())
    db().commit()
    return jsonify(credentials.view(c, c.valid_from)), 201


@route("/credentials/<int:credential_id>/revoke", "POST", "Revoke a credential (reason required)", "admin",
       request_schema=obj(["reason"], reason=text(500)),
       responses={200: ok("revoked", obj(["id"], id=ID)), 400: err("no reason"), 404: err("unknown credential"),
                  409: err("already revoked")})
def revoke_credential(credential_id):
    c = credentials.revoke(db(), actor(), credential_id, body().get("reason"))
    db().commit()
    return jsonify({"id": c.id})


@route("/participants/<study_id>/goals", "POST", "Set a child's individual goals after the first (assessment) session",
       "therapist of the site",
       request_schema=obj(["goals"], goals=array(obj(["goal"], goal=S, description=text(500, False))),
                          set_on={**D, "description": "the day the goals were set (default today); not before the "
                                                      "first attended session"}),
       responses={201: ok("the goals set", array(GOAL)), 400: err("bad input, naming the field"),
                  403: err("a blinded role"), 404: err("unknown participant"),
                  409: err("not in a music-therapy arm, no attended session yet, or the goal is set already")})
def set_goals(study_id):
    goals = course.set_goals(db(), actor(), study_id, body())
    db().commit()
    return jsonify([_goal(g) for g in goals]), 201


@route("/goals/<int:goal_id>/revisions", "POST", "Revise a goal: its description, or no longer pursued (reason required)",
       "therapist of the site",
       request_schema=obj(["reason"], description={**text(500, False), "nullable": True}, active=B, reason=text(500)),
       responses={200: ok("the goal as revised", GOAL), 400: err("bad input or no change"), 404: err("unknown goal")})
def revise_goal(goal_id):
    g = course.revise_goal(db(), actor(), goal_id, body())
    db().commit()
    return jsonify(_goal(g))


@route("/fidelity/draws", "POST", "Draw the sessions to rate from each therapist's sessions not yet in a draw (seeded, audited)",
       "manager", request_schema=obj([], therapist={**S, "description": "a therapist's e-mail: draw only theirs"}),
       responses={201: ok("the draws made (none when no session is new)", array(DRAW)),
                  404: err("unknown therapist"), 409: err("no fidelity scale in the protocol")})
def draw_fidelity():
    data = body()
    email = data.get("therapist", "")
    if not isinstance(email, str):
        raise ValidationError("therapist must be a therapist's e-mail", {"therapist": "must be text (an e-mail)"})
    who = fidelity.therapist_by_email(db(), email) if email else None
    made = fidelity.draw(db(), actor(), who)
    db().commit()
    return jsonify([d for d in fidelity.draws(db(), actor()) if d["id"] in {m.id for m in made}]), 201


@route("/fidelity/draws", "GET", "Every fidelity draw with its seed, population and sample, to derive again", "manager",
       responses={200: ok("the draws", array(DRAW))})
def list_fidelity_draws():
    return jsonify(fidelity.draws(db(), actor()))


@route("/fidelity/due", "GET", "The sampled sessions this therapist may rate (not their own)", "therapist, manager",
       responses={200: ok("the sessions to rate", array(DUE))})
def fidelity_due():
    return jsonify(fidelity.due(db(), actor()))


@route("/sessions/<int:session_id>/fidelity", "POST", "Rate a sampled session on the protocol's fidelity scale",
       "a credentialed therapist who did not lead the session",
       request_schema=obj(["scores"], scores={"type": "object", "additionalProperties": {"type": "integer"}},
                          note=text(1000, False)),
       responses={201: ok("rated", obj(["id", "mean", "adherent"], id=ID, mean=N, adherent=B)),
                  400: err("bad input, naming the item"), 403: err("the therapist led the session, or not a therapist"),
                  404: err("unknown session"), 409: err("not sampled, rated already, or no valid credential")})
def rate_fidelity(session_id):
    r = fidelity.rate(db(), actor(), session_id, body())
    db().commit()
    return jsonify({"id": r.id, "mean": r.mean, "adherent": r.adherent}), 201


@route("/fidelity", "GET", "Treatment fidelity: sessions sampled, rated and adherent, by therapist and site and by month",
       "manager", params=SITE_QUERY, responses={200: ok("the report", FIDELITY)})
def fidelity_report():
    return jsonify(fidelity.report(db(), actor(), request.args.get("site")))


@route("/intervention-delivered", "GET", "CONSORT 2025: the intervention as delivered, per arm (in-course sessions, "
       "minutes, technique categories, goals, fidelity)", "manager",
       responses={200: ok("the table", obj(["arms", "columns", "rows", "definition"], arms=array(S), columns=array(S),
                                            rows=array(array(S)), definition=S))})
def intervention_delivered():
    return jsonify(fidelity.delivered_by_arm(db(), actor()))
