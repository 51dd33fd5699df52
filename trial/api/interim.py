"""Data cuts, their open and closed reports and the data monitoring committee's recommendation over
the API (API.md "Interim looks and data sharing")."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Response, current_app, jsonify
from pydantic import Field

from trial.api.answers import Answer, Id, Moment, one_of
from trial.api.bodies import SIGNER, Body, Password, SignerCode, against
from trial.api.routing import body, err, media, ok, route
from trial.catalogue import LANGUAGES, N_
from trial.http import actor, db
from trial.interim import cuts
from trial.interim.worker import start_build
from trial.validation import Flag, Text, choice


class DataCutBody(Body):
    LEAD = N_("The data cut was not taken")
    label: Text(200, description="what the cut is for, e.g. \"First interim look\"")
    formal: Flag = Field(False, description="a formal interim look of the protocol's [interim] design, which spends "
                                            "alpha (default false: a practice or safety-only cut, no look)")


class RecommendationBody(Body):
    LEAD = N_("The recommendation was not recorded")
    decision: choice(*cuts.DECISIONS)
    text: Text(5000, description="the committee's recommendation in its words")
    password: Password = against(SIGNER)
    code: SignerCode = against(SIGNER, None)


CutStatus = one_of("building", "ready", "failed")


class DataCutAsked(Answer):
    id: Id
    status: CutStatus


class DataCutInfo(Answer):
    id: Id
    label: str
    created_at: Moment
    status: CutStatus
    progress: float | None = None
    sha256: str | None = None
    formal: bool | None = None
    information_fraction: float | None = None
    recommendations: list[dict[str, Any]] | None = None


class ClosedReport(Answer):
    information_fraction: float | None
    z: float | None
    boundary_z: float | None
    crossed: bool | None
    crossed_side: str | None = None
    analysis: dict[str, Any] = Field(default_factory=dict)


class RecommendationRecorded(Answer):
    id: Id
    data_cut: Id
    decision: one_of(*cuts.DECISIONS)
    signed_at: Moment


def _language() -> str:
    language = getattr(actor(), "language", None)
    return language if language in LANGUAGES else "en"


def start(cut_id: int) -> None:
    """Have a committed cut built (TRIAL_LOCK_BUILDER): inline here, else by a process of its own."""
    start_build(db(), actor(), cut_id, current_app.config.get("LOCK_BUILDER", "worker"),
                current_app.extensions["trial.engine"].url.render_as_string(hide_password=False),
                Path(current_app.instance_path))


@route("/data-cuts", "POST", "Take a data cut: a consistent snapshot of the live data (nothing locked), built in the "
       "background", "manager", body=DataCutBody,
       responses={202: ok("asked: being built", DataCutAsked), 400: err("bad input")})
def create_data_cut():
    data = body()
    cut = cuts.request_cut(db(), actor(), data.get("label"), data.get("formal"))
    db().commit()
    cut_id = cut.id
    start(cut_id)
    return jsonify({"id": cut_id, "status": cuts.cut_info(db(), actor(), cut_id)["status"]}), 202


@route("/data-cuts", "GET", "The data cuts, newest first", "manager, statistician, dmc",
       responses={200: ok("the cuts", list[DataCutInfo])})
def list_data_cuts():
    return jsonify(cuts.list_cuts(db(), actor()))


@route("/data-cuts/<int:cut_id>", "GET", "A data cut: its state while built (progress), its digest when ready, and the "
       "committee's recommendation (manager, dmc)", "manager, statistician, dmc",
       responses={200: ok("the cut", DataCutInfo), 404: err("unknown cut")})
def get_data_cut(cut_id):
    return jsonify(cuts.cut_info(db(), actor(), cut_id))


@route("/data-cuts/<int:cut_id>/open-report.pdf", "GET", "The open report (pooled over the arms): recruitment, "
       "retention, visit completeness, queries, SAE counts", "manager, statistician, dmc",
       responses={200: media("the report", "application/pdf"), 404: err("unknown cut"),
                  409: err("the cut is being built, or failed (cut_not_ready)")})
def open_report_pdf(cut_id):
    pdf = cuts.open_report_pdf(db(), actor(), cut_id, _language())
    return Response(pdf, mimetype="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="cut-{cut_id}-open-report.pdf"'})


@route("/data-cuts/<int:cut_id>/closed-report.pdf", "GET", "The closed report (by arm), with the interim primary "
       "analysis against the boundary: the data monitoring committee only (each opening audited)", "dmc",
       responses={200: media("the report", "application/pdf"), 403: err("not the data monitoring committee"),
                  404: err("unknown cut"), 409: err("the cut is being built, or failed (cut_not_ready)")})
def closed_report_pdf(cut_id):
    pdf = cuts.closed_report(db(), actor(), cut_id, "pdf", _language())
    db().commit()  # (the opening's audit record)
    return Response(pdf, mimetype="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="cut-{cut_id}-closed-report.pdf"'})


@route("/data-cuts/<int:cut_id>/closed-report.json", "GET", "The closed report's figures (by arm), with "
       "{information_fraction, z, boundary_z, crossed}: the data monitoring committee only (each opening audited)",
       "dmc", responses={200: ok("the figures", ClosedReport), 403: err("not the data monitoring committee"),
                         404: err("unknown cut"), 409: err("the cut is being built, or failed (cut_not_ready)")})
def closed_report_json(cut_id):
    data = cuts.closed_report(db(), actor(), cut_id, "json")
    db().commit()
    return jsonify(data)


@route("/data-cuts/<int:cut_id>/recommendation", "POST", "The committee's recommendation on a cut, e-signed (password "
       "and, when enrolled, the two-factor code); the manager reads it as text", "dmc", body=RecommendationBody,
       responses={201: ok("recorded", RecommendationRecorded),
                  400: err("bad input, or a wrong password or two-factor code: nothing recorded"),
                  404: err("unknown cut"),
                  409: err("the cut is not ready, or the member has not enrolled a second factor "
                           "(second_factor_needed)")})
def recommend(cut_id):
    data = body()
    rec = cuts.recommend(db(), actor(), cut_id, data.get("decision"), data.get("text"), data.get("password"),
                         data.get("code"))
    db().commit()
    return jsonify({"id": rec.id, "data_cut": rec.data_cut_id, "decision": rec.decision,
                    "signed_at": rec.signed_at.isoformat(timespec="seconds") + "Z"}), 201
