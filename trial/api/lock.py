"""Locks, bundles, unblinding, CONSORT and reports over the API."""
from __future__ import annotations

from flask import Response, jsonify, request

from trial.api import body, route
from trial.exports import service as exports
from trial.lock import service as locks
from trial.web import actor, db

S, I = {"type": "string"}, {"type": "integer"}
ERR = {"$ref": "#/components/schemas/Error"}
SITE = [{"name": "site", "in": "query", "required": False, "schema": S}]


def _err(d):
    return {"description": d, "schema": ERR}


@route("/locks", "POST", "Sign a soft or hard lock (a hard lock builds the locked dataset bundles)", "manager",
       request_schema={"type": "object", "required": ["kind", "meaning", "password"], "properties": {
           "kind": {"type": "string", "enum": ["soft", "hard"]}, "meaning": S, "password": S}},
       responses={201: {"description": "locked", "schema": {"type": "object", "properties": {
           "id": I, "kind": S, "created_at": {"type": "string", "format": "date-time"}}}},
           400: _err("bad input or wrong password"), 409: _err("a lock is already in force")})
def create_lock():
    data = body()
    lock = locks.create_lock(db(), actor(), data.get("kind"), data.get("meaning"), data.get("password"))
    db().commit()
    return jsonify({"id": lock.id, "kind": lock.kind, "version": lock.version,
                    "created_at": lock.created_at.isoformat(timespec="seconds") + "Z"}), 201


@route("/locks/<int:lock_id>", "DELETE", "Lift a lock (reason and signature); a hard lock's snapshot stays", "manager",
       request_schema={"type": "object", "required": ["reason", "password"], "properties": {"reason": S, "password": S}},
       responses={200: "lifted", 400: _err("bad input or wrong password"), 404: _err("unknown lock"), 409: _err("not in force")})
def lift_lock(lock_id):
    data = body()
    lock = locks.lift_lock(db(), actor(), lock_id, data.get("reason"), data.get("password"))
    db().commit()
    return jsonify({"id": lock.id, "kind": lock.kind, "lifted_at": lock.lifted_at.isoformat(timespec="seconds") + "Z"})


@route("/locks", "GET", "Locks and the checksums of their bundles", "manager, statistician",
       responses={200: {"description": "locks", "schema": {"type": "array", "items": {"type": "object", "properties": {
           "id": I, "kind": S, "created_at": S, "signed_by": S, "manifest_sha256": S}}}}})
def list_locks():
    return jsonify(locks.list_locks(db(), actor()))


@route("/locks/<int:lock_id>/bundle.zip", "GET", "The locked dataset bundle (blinded until unblinding for statisticians)",
       "manager, statistician", responses={200: "application/zip", 404: _err("no hard lock with that id")})
def bundle(lock_id):
    b = locks.get_bundle(db(), actor(), lock_id)
    return Response(b.content, mimetype="application/zip", headers={
        "Content-Disposition": f'attachment; filename="lock-{lock_id}-{b.variant}.zip"', "X-Content-SHA256": b.sha256})


@route("/unblinding", "POST", "Unblind the trial (signed; only after a hard lock); reveals the seed", "manager",
       request_schema={"type": "object", "required": ["meaning", "password"], "properties": {"meaning": S, "password": S}},
       responses={201: "unblinded", 400: _err("bad input or wrong password"), 409: _err("no hard lock, or already unblinded")})
def unblinding():
    data = body()
    design = locks.unblind(db(), actor(), data.get("meaning"), data.get("password"))
    db().commit()
    return jsonify({"unblinded_at": design.unblinded_at.isoformat(timespec="seconds") + "Z",
                    "commitment": design.commitment}), 201


@route("/consort", "GET", "CONSORT counts (arm keys when unblinded, arm codes when blinded)", "manager, statistician",
       params=SITE, responses={200: "the counts of API.md", 404: _err("unknown site"), 500: _err("the counts do not reconcile")})
def consort():
    out = exports.consort_counts(db(), actor(), request.args.get("site"))
    db().commit()
    return jsonify(out)


@route("/consort.svg", "GET", "The CONSORT flow diagram as SVG", "manager, statistician", params=SITE,
       responses={200: "image/svg+xml"})
def consort_svg():
    svg = exports.consort_svg(db(), actor(), request.args.get("site"))
    return Response(svg, mimetype="image/svg+xml")


@route("/consort.pdf", "GET", "The CONSORT flow diagram and the baseline table as PDF", "manager, statistician", params=SITE,
       responses={200: "application/pdf"})
def consort_pdf():
    return Response(exports.consort_pdf(db(), actor(), request.args.get("site")), mimetype="application/pdf",
                    headers={"Content-Disposition": 'inline; filename="consort.pdf"'})


@route("/reports/baseline.csv", "GET", "Baseline characteristics by arm (Table 1) as CSV", "manager, statistician",
       responses={200: "text/csv"})
def baseline_csv():
    return Response(exports.baseline_csv(db(), actor()), mimetype="text/csv")


@route("/reports/summary", "GET", "Recruitment and follow-up dates, primary-outcome data per visit, sessions delivered "
       "per arm (unblinded), and the Bang blinding index per arm", "manager, statistician")
def summary():
    return jsonify(exports.summary(db(), actor()))
