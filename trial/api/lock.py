"""Locks, bundles, unblinding, CONSORT and reports over the API."""
from __future__ import annotations

from flask import Response, jsonify, request

from trial.api import answers as a
from trial.api import bodies as b
from trial.api.params import SITE_QUERY
from trial.api.routing import body, err, media, ok, route
from trial.exports import service as exports
from trial.http import actor, committed_build_status, db, start_bundle_build, watch_bundle_builds
from trial.lock import service as locks
from trial.lock import unblinding as unblinding_service
from trial.randomize.service import get_design

SITE = SITE_QUERY
@route("/locks", "POST", "Sign a soft or hard lock (a hard lock's bundles are then built in the background)", "manager",
       body=b.LockBody,
       responses={201: ok("locked", a.Locked),
                  400: err("bad input, or a wrong password or two-factor code"),
                  409: err("a lock is already in force, or queries are open (open_queries: their ids in fields)")})
def create_lock():
    data = body()
    lock = locks.create_lock(db(), actor(), data.get("kind"), data.get("meaning"), data.get("password"),
                             data.get("accept_open_queries", False), code=data.get("code"),
                             accept_unsigned=data.get("accept_unsigned", False))
    db().commit()
    if lock.kind == "hard":
        start_bundle_build(lock.id)
    return jsonify({"id": lock.id, "kind": lock.kind, "version": lock.version,
                    "created_at": lock.created_at.isoformat(timespec="seconds") + "Z",
                    "status": committed_build_status(lock.id) if lock.kind == "hard" else None}), 201


@route("/locks/<int:lock_id>", "GET", "A lock, with its bundles' state while they are built (status, progress)",
       "manager, statistician", responses={200: ok("the lock", a.LockInfo), 404: err("unknown lock")})
def get_lock(lock_id):
    watch_bundle_builds()
    return jsonify(locks.lock_info(db(), actor(), lock_id))


@route("/locks/<int:lock_id>", "DELETE", "Lift a lock (reason and signature); a hard lock's snapshot stays", "manager",
       body=b.LockLiftBody,
       responses={200: ok("lifted", a.Lifted),
                  400: err("bad input, or a wrong password or two-factor code"), 404: err("unknown lock"),
                  409: err("not in force; a hard lock after the unblinding (unblinded: open an addendum instead)")})
def lift_lock(lock_id):
    data = body()
    lock = locks.lift_lock(db(), actor(), lock_id, data.get("reason"), data.get("password"), data.get("code"))
    db().commit()
    return jsonify({"id": lock.id, "kind": lock.kind, "lifted_at": lock.lifted_at.isoformat(timespec="seconds") + "Z"})


@route("/locks", "GET", "Locks and the checksums of their bundles", "manager, statistician",
       responses={200: ok("locks", list[a.LockInfo])})
def list_locks():
    watch_bundle_builds()
    return jsonify(locks.list_locks(db(), actor()))


@route("/locks/<int:lock_id>/bundle.zip", "GET", "The locked dataset bundle (blinded until unblinding for statisticians)",
       "manager, statistician", responses={200: {**media("the bundle", "application/zip"), "headers": {
           "X-Content-SHA256": {"schema": {"type": "string"}, "description": "SHA-256 of the zip"}}}, 404: err("no hard lock with that id"),
           409: err("the bundle is still being built, or its build failed (bundle_not_ready)")})
def bundle(lock_id):
    watch_bundle_builds()
    b = locks.get_bundle(db(), actor(), lock_id)
    return Response(b.content, mimetype="application/zip", headers={
        "Content-Disposition": f'attachment; filename="lock-{lock_id}-{b.variant}.zip"', "X-Content-SHA256": b.sha256})


@route("/unblinding", "POST", "Ask to unblind the trial (signed; only under a hard lock): the trial is unblinded only "
       "when a user of the protocol's countersigner role countersigns", "manager",
       body=b.SignatureBody,
       responses={202: ok("asked: waits for the countersignature", a.UnblindingAsked),
                  400: err("bad input, or a wrong password or two-factor code"),
                  409: err("no hard lock, already unblinded, or a request waits already")})
def unblinding():
    data = body()
    req = unblinding_service.request_unblinding(db(), actor(), data.get("meaning"), data.get("password"),
                                               data.get("code"))
    db().commit()
    return jsonify({"id": req.id, "status": req.status, "countersigner_role": req.countersigner_role}), 202


@route("/unblinding", "GET", "The unblinding requests, newest first", "manager, the countersigner role (statistician)",
       responses={200: ok("the requests", list[a.UnblindingRequestInfo])})
def list_unblinding():
    return jsonify(unblinding_service.list_requests(db(), actor()))


@route("/unblinding/<int:request_id>/countersign", "POST", "Countersign an unblinding request (signed; never by the "
       "one who asked): the seed is revealed and the trial unblinded", "the protocol's countersigner role (statistician)",
       body=b.SignatureBody,
       responses={201: ok("unblinded", a.UnblindingCountersigned),
                  400: err("bad input, or a wrong password or two-factor code"),
                  403: err("not the countersigner role, or the one who asked"), 404: err("unknown request"),
                  409: err("not waiting, or the hard lock is no longer in force")})
def countersign_unblinding(request_id):
    data = body()
    req = unblinding_service.countersign(db(), actor(), request_id, data.get("meaning"), data.get("password"),
                                         data.get("code"))
    db().commit()
    design = get_design(db())
    return jsonify({"id": req.id, "status": req.status,
                    "unblinded_at": design.unblinded_at.isoformat(timespec="seconds") + "Z",
                    "commitment": design.commitment}), 201


@route("/unblinding/<int:request_id>/withdraw", "POST", "Withdraw an unblinding request that waits (with a reason)",
       "manager", body=b.UnblindingWithdrawalBody,
       responses={200: ok("withdrawn", a.UnblindingWithdrawn), 400: err("bad input"), 404: err("unknown request"),
                  409: err("not waiting")})
def withdraw_unblinding(request_id):
    req = unblinding_service.withdraw(db(), actor(), request_id, body().get("reason"))
    db().commit()
    return jsonify({"id": req.id, "status": req.status})


@route("/locks/<int:lock_id>/addendum", "POST", "After the unblinding: open an addendum to the hard lock in force "
       "(signed, with a reason) to correct data; the next hard lock closes it with its own bundles", "manager",
       body=b.AddendumBody,
       responses={201: ok("opened: data entry is open again", a.AddendumOpened),
                  400: err("bad input, or a wrong password or two-factor code"),
                  404: err("no hard lock with that id"), 409: err("not in force, or the trial is not unblinded")})
def open_addendum(lock_id):
    data = body()
    addendum = unblinding_service.open_addendum(db(), actor(), lock_id, data.get("reason"), data.get("password"),
                                                data.get("code"))
    db().commit()
    return jsonify({"id": addendum.id, "kind": addendum.kind, "parent_lock_id": addendum.parent_lock_id,
                    "created_at": addendum.created_at.isoformat(timespec="seconds") + "Z"}), 201


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
