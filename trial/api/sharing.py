"""The de-identified sharing bundle of a locked, unblinded trial over the API (API.md "Interim looks
and data sharing")."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Response, current_app, jsonify

from trial.api.answers import Answer, Id, Moment, one_of
from trial.api.routing import err, media, ok, route
from trial.http import actor, db
from trial.interim import sharing

SharingState = one_of("building", "ready", "failed")


class SharingAsked(Answer):
    id: Id
    lock_id: Id
    status: SharingState


class SharingInfo(Answer):
    lock_id: Id
    id: Id | None
    status: SharingState | None
    progress: float | None
    created_at: Moment | None = None
    finished_at: Moment | None = None
    sha256: str | None = None
    disclosure: dict[str, Any] | None = None


def start(bundle_id: int) -> None:
    """Have a committed request built (TRIAL_LOCK_BUILDER): inline here, else by a process of its own."""
    sharing.start_build(db(), actor(), bundle_id, current_app.config.get("LOCK_BUILDER", "worker"),
                        current_app.extensions["trial.engine"].url.render_as_string(hide_password=False),
                        Path(current_app.instance_path))


@route("/locks/<int:lock_id>/sharing", "POST", "Ask for the de-identified sharing bundle of the hard lock in force, "
       "after the unblinding: built in the background (no identifiers, no calendar dates, no free text, pseudonymous "
       "sites, a disclosure report)", "manager",
       responses={202: ok("asked: being built", SharingAsked), 404: err("no hard lock with that id"),
                  409: err("the trial is not unblinded (not_unblinded), the lock is not in force, its unblinded bundle "
                           "is not built, or a sharing bundle is being built (sharing_not_ready)")})
def request_sharing(lock_id):
    sb = sharing.request_sharing(db(), actor(), lock_id)
    db().commit()
    bundle_id = sb.id
    start(bundle_id)
    return jsonify({"id": bundle_id, "lock_id": lock_id, "status": sharing.status(db(), actor(), lock_id)["status"]}), 202


@route("/locks/<int:lock_id>/sharing", "GET", "The state of the lock's newest sharing bundle (status, progress, digest, "
       "the disclosure report's summary)", "manager, statistician",
       responses={200: ok("the state", SharingInfo), 404: err("no hard lock with that id")})
def sharing_status(lock_id):
    sharing.watch(db())
    db().commit()
    return jsonify(sharing.status(db(), actor(), lock_id))


@route("/locks/<int:lock_id>/sharing.zip", "GET", "The de-identified sharing bundle (each download audited)",
       "manager, statistician",
       responses={200: {**media("the bundle", "application/zip"), "headers": {
           "X-Content-SHA256": {"schema": {"type": "string"}, "description": "SHA-256 of the zip"}}},
           404: err("no hard lock with that id, or no sharing bundle asked for"),
           409: err("the trial is not unblinded (not_unblinded), or the bundle is being built or failed "
                    "(sharing_not_ready)")})
def sharing_zip(lock_id):
    sb = sharing.get_zip(db(), actor(), lock_id)
    content, sha = sb.content, sb.sha256
    db().commit()  # (the download's audit record)
    return Response(content, mimetype="application/zip", headers={
        "Content-Disposition": f'attachment; filename="lock-{lock_id}-sharing.zip"', "X-Content-SHA256": sha})


@route("/locks/<int:lock_id>/sharing-review.csv", "GET", "The children of the sharing bundle whose combination of "
       "site, sex and age band has k below 3 (pid, site, sex, age band, k), for the manager's review before the "
       "bundle is shared; never in the bundle itself (each download audited)", "manager",
       responses={200: media("the list", "text/csv"), 404: err("no hard lock with that id, or no sharing bundle asked for"),
                  409: err("the trial is not unblinded (not_unblinded), or the bundle is being built or failed "
                           "(sharing_not_ready)")})
def sharing_review(lock_id):
    data = sharing.review_csv(db(), actor(), lock_id)
    db().commit()  # (the download's audit record)
    return Response(data, mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="lock-{lock_id}-disclosure-review.csv"'})
