"""The intervention as delivered over the API: therapists' credentials, children's goals and
treatment fidelity (draws, ratings, the report)."""
from __future__ import annotations

from flask import jsonify, request

from trial.api import answers as a
from trial.api import bodies as b
from trial.api.params import SITE_QUERY
from trial.api.routing import body, err, ok, route
from trial.auth.models import User
from trial.catalogue import N_, Msg
from trial.course import service as course
from trial.credentials import service as credentials
from trial.errors import NotFound
from trial.fidelity import service as fidelity
from trial.http import actor, db

def _goal(g) -> dict:
    return {"id": g.id, "goal": g.goal, "description": g.description, "active": g.active, "set_on": g.set_on.isoformat()}


@route("/therapists", "GET", "Therapists with their credentials, and a warning 60 days before the last expires",
       "admin, manager; a coordinator for their sites", responses={200: ok("the therapists", list[a.Therapist])})
def therapists():
    return jsonify(credentials.therapists(db(), actor()))


@route("/therapists/<int:user_id>/credentials", "POST", "Record a therapist's credential", "admin",
       body=b.CredentialBody,
       responses={201: ok("recorded", a.Credential), 400: err("bad input, naming the field"),
                  404: err("unknown user")})
def record_credential(user_id):
    u = db().get(User, user_id)
    if u is None:
        raise NotFound(Msg(N_("No user %(id)s."), id=user_id))
    c = credentials.record(db(), actor(), u, body())
    db().commit()
    return jsonify(credentials.view(c, c.valid_from)), 201


@route("/credentials/<int:credential_id>/revoke", "POST", "Revoke a credential (reason required)", "admin",
       body=b.RevocationBody,
       responses={200: ok("revoked", a.Recorded), 400: err("no reason"), 404: err("unknown credential"),
                  409: err("already revoked")})
def revoke_credential(credential_id):
    c = credentials.revoke(db(), actor(), credential_id, body().get("reason"))
    db().commit()
    return jsonify({"id": c.id})


@route("/participants/<study_id>/goals", "POST", "Set a child's individual goals after the first (assessment) session",
       "therapist of the site",
       body=b.GoalsBody,
       responses={201: ok("the goals set", list[a.Goal]), 400: err("bad input, naming the field"),
                  403: err("a blinded role"), 404: err("unknown participant"),
                  409: err("not in a music-therapy arm, no attended session yet, or the goal is set already")})
def set_goals(study_id):
    goals = course.set_goals(db(), actor(), study_id, body())
    db().commit()
    return jsonify([_goal(g) for g in goals]), 201


@route("/goals/<int:goal_id>/revisions", "POST", "Revise a goal: its description, or no longer pursued (reason required)",
       "therapist of the site",
       body=b.GoalRevisionBody,
       responses={200: ok("the goal as revised", a.Goal), 400: err("bad input or no change"), 404: err("unknown goal")})
def revise_goal(goal_id):
    g = course.revise_goal(db(), actor(), goal_id, body())
    db().commit()
    return jsonify(_goal(g))


@route("/fidelity/draws", "POST", "Draw the sessions to rate from each therapist's sessions not yet in a draw (seeded, audited)",
       "manager", body=b.FidelityDrawBody,
       responses={201: ok("the draws made (none when no session is new)", list[a.Draw]),
                  404: err("unknown therapist"), 409: err("no fidelity scale in the protocol")})
def draw_fidelity():
    email = (body().get("therapist") or "").strip()  # text or null (the declared body)
    who = fidelity.therapist_by_email(db(), email) if email else None
    made = fidelity.draw(db(), actor(), who)
    db().commit()
    return jsonify([d for d in fidelity.draws(db(), actor()) if d["id"] in {m.id for m in made}]), 201


@route("/fidelity/draws", "GET", "Every fidelity draw with its seed, population and sample, to derive again", "manager",
       responses={200: ok("the draws", list[a.Draw])})
def list_fidelity_draws():
    return jsonify(fidelity.draws(db(), actor()))


@route("/fidelity/due", "GET", "The sampled sessions this therapist may rate (not their own)", "therapist, manager",
       responses={200: ok("the sessions to rate", list[a.FidelityDue])})
def fidelity_due():
    return jsonify(fidelity.due(db(), actor()))


@route("/sessions/<int:session_id>/fidelity", "POST", "Rate a sampled session on the protocol's fidelity scale",
       "a credentialed therapist who did not lead the session",
       body=b.FidelityRatingBody,
       responses={201: ok("rated", a.Rated),
                  400: err("bad input, naming the item"), 403: err("the therapist led the session, or not a therapist"),
                  404: err("unknown session"), 409: err("not sampled, rated already, or no valid credential")})
def rate_fidelity(session_id):
    r = fidelity.rate(db(), actor(), session_id, body())
    db().commit()
    return jsonify({"id": r.id, "mean": r.mean, "adherent": r.adherent}), 201


@route("/fidelity", "GET", "Treatment fidelity: sessions sampled, rated and adherent, by therapist and site and by month",
       "manager", params=SITE_QUERY, responses={200: ok("the report", a.Fidelity)})
def fidelity_report():
    return jsonify(fidelity.report(db(), actor(), request.args.get("site")))


@route("/intervention-delivered", "GET", "CONSORT 2025: the intervention as delivered, per arm (in-course sessions, "
       "minutes, technique categories, goals, fidelity)", "manager",
       responses={200: ok("the table", a.DeliveredTable)})
def intervention_delivered():
    return jsonify(fidelity.delivered_by_arm(db(), actor()))
