"""The investigator's casebook sign-offs over the API (API.md, "Oversight and close-out")."""
from __future__ import annotations

from flask import jsonify

from trial.api import answers as a
from trial.api import bodies as b
from trial.api.routing import body, err, ok, route
from trial.http import actor, db
from trial.oversight import signoff


def _moment(v):
    return v.isoformat(timespec="seconds") + "Z" if v is not None else None


def _view(v: dict) -> dict:
    out = {k: v[k] for k in ("milestone", "signed_by", "signed_by_name", "status", "meaning", "out_of_date")}
    out["milestone_label"] = str(v["milestone_label"])
    out["signed_at"] = _moment(v["signed_at"])
    if v["status"] == "invalidated":
        out["invalidated_by_change"] = v["invalidated_by_change"]  # English; the words for other languages
        out["invalidated_by_change_words"] = v.get("invalidated_by_change_words")
        out["invalidated_at"] = _moment(v["invalidated_at"])
    return out


@route("/participants/<study_id>/signoffs", "POST",
       "Sign a child's casebook at a milestone of the protocol (password and second factor)",
       "investigator of the site", body=b.SignoffBody,
       responses={201: ok("signed", a.Signoff), 400: err("bad input or credentials, naming the field"),
                  403: err("not the site's investigator"), 404: err("unknown participant"),
                  409: err("code not_reached: the milestone is not reached yet; or the casebook is already signed "
                           "for it"),
                  423: err("the database is locked")})
def sign_casebook(study_id):
    s = db()
    so = signoff.sign_casebook(s, actor(), study_id, body())
    s.commit()
    p = signoff.get_participant(s, actor(), study_id)
    return jsonify(_view(next(v for v in signoff.views(s, p) if v["signed_at"] == so.signed_at
                              and v["milestone"] == so.milestone))), 201


@route("/participants/<study_id>/signoffs", "GET", "The casebook's sign-offs, valid and invalidated",
       "coordinator, monitor, investigator of the site; manager",
       responses={200: ok("the sign-offs, oldest first", list[a.Signoff]),
                  403: err("a role that does not read them (blinded roles)"), 404: err("unknown participant")})
def list_signoffs(study_id):
    s = db()
    out = signoff.signoffs_of(s, actor(), study_id)
    return jsonify([_view(v) for v in out])
