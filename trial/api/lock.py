"""Locks, bundles, unblinding, CONSORT and reports over the API."""
from __future__ import annotations

from flask import Response, jsonify, request

from trial.api import answers as a
from trial.api import bodies as b
from trial.api.params import SITE_QUERY
from trial.api.routing import body, err, media, ok, route
from trial.exports import service as exports
from trial.http import actor, db, start_bundle_build
from trial.lock import service as locks

SITE = SITE_QUERY
@route("/locks", "POST", "Sign a soft or hard lock (a hard lock's bundles are then built in the background)", "manager",
       body=b.LockBody,
       responses={201: ok("locked", a.Locked),
                  400: err("bad input or wrong password"),
                  409: err("a lock is already in force, or queries are open (open_queries: their ids in fields)")})
def create_lock():
    data = body()
    lock = locks.create_lock(db(), actor(), data.get("kind"), data.get("meaning"), data.get("password"),
                             data.get("accept_open_queries", False))
    db().commit()
    if lock.kind == "hard":
        start_bundle_build(lock.id)
    return jsonify({"id": lock.id, "kind": lock.kind, "version": lock.version,
                    "created_at": lock.created_at.isoformat(timespec="seconds") + "Z",
                    "status": locks.build_status(db(), lock.id)["status"]}), 201


@route("/locks/<int:lock_id>", "GET", "A lock, with its bundles' state while they are built (status, progress)",
       "manager, statistician", responses={200: ok("the lock", a.LockInfo), 404: err("unknown lock")})
def get_lock(lock_id):
    return jsonify(locks.lock_info(db(), actor(), lock_id))


@route("/locks/<int:lock_id>", "DELETE", "Lift a lock (reason and signature); a hard lock's snapshot stays", "manager",
       body=b.LockLiftBody,
       responses={200: ok("lifted", a.Lifted),
                  400: err("bad input or wrong password"), 404: err("unknown lock"), 409: err("not in force")})
def lift_lock(lock_id):
    data = body()
    lock = locks.lift_lock(db(), actor(), lock_id, data.get("reason"), data.get("password"))
    db().commit()
    return jsonify({"id": lock.id, "kind": lock.kind, "lifted_at": lock.lifted_at.isoformat(timespec="seconds") + "Z"})


@route("/locks", "GET", "Locks and the checksums of their bundles", "manager, statistician",
       responses={200: ok("locks", list[a.LockInfo])})
def list_locks():
    return jsonify(locks.list_locks(db(), actor()))


@route("/locks/<int:lock_id>/bundle.zip", "GET", "The locked dataset bundle (blinded until unblinding for statisticians)",
       "manager, statistician", responses={200: {**media("the bundle", "application/zip"), "headers": {
           "X-Content-SHA256": {"schema": {"type": "string"}, "description": "SHA-256 of the zip"}}}, 404: err("no hard lock with that id"),
           409: err("the bundle is still being built, or its build failed (bundle_not_ready)")})
def bundle(lock_id):
    b = locks.get_bundle(db(), actor(), lock_id)
    return Response(b.content, mimetype="application/zip", headers={
        "Content-Disposition": f'attachment; filename="lock-{lock_id}-{b.variant}.zip"', "X-Content-SHA256": b.sha256})


@route("/unblinding", "POST", "Unblind the trial (signed; only after a hard lock); reveals the seed", "manager",
       body=b.SignatureBody,
       responses={201: ok("unblinded", a.Unblinded),
                  400: err("bad input or wrong password"), 409: err("no hard lock, or already unblinded")})
def unblinding():
    data = body()
    design = locks.unblind(db(), actor(), data.get("meaning"), data.get("password"))
    db().commit()
    return jsonify({"unblinded_at": design.unblinded_at.isoformat(timespec="seconds") + "Z",
                    "commitment": design.commitment}), 201


@route("/consort", "GET", "CONSORT counts (arm keys when unblinded, arm codes when blinded)", "manager, statistician",
       params=SITE, responses={200: ok("the counts of API.md", a.Consort), 404: err("unknown site"),
                               500: err("the counts do not reconcile (consort_inconsistent)")})
def consort():
    out = exports.consort_counts(db(), actor(), request.args.get("site"))
    db().commit()
    return jsonify(out)


@route("/consort.svg", "GET", "The CONSORT flow diagram as SVG", "manager, statistician", params=SITE,
       responses={200: media("the diagram", "image/svg+xml"), 404: err("unknown site")})
def consort_svg():
    svg = exports.consort_svg(db(), actor(), request.args.get("site"))
    return Response(svg, mimetype="image/svg+xml")


@route("/consort.pdf", "GET", "The CONSORT flow diagram and the baseline table as PDF", "manager, statistician", params=SITE,
       responses={200: media("the diagram and Table 1", "application/pdf"), 404: err("unknown site")})
def consort_pdf():
    return Response(exports.consort_pdf(db(), actor(), request.args.get("site")), mimetype="application/pdf",
                    headers={"Content-Disposition": 'inline; filename="consort.pdf"'})


@route("/reports/baseline.csv", "GET", "Baseline characteristics by arm (Table 1) as CSV", "manager, statistician",
       responses={200: media("Table 1", "text/csv")})
def baseline_csv():
    return Response(exports.baseline_csv(db(), actor()), mimetype="text/csv")


@route("/reports/summary", "GET", "Recruitment and follow-up dates, primary-outcome data per visit, sessions delivered "
       "per arm (unblinded), and the Bang blinding index per arm", "manager, statistician",
       responses={200: ok("the summary", a.Summary)})
def summary():
    return jsonify(exports.summary(db(), actor()))
