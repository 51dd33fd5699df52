"""The close-out documents' pages (issue 29): a child's casebook PDF, the audit trail of a child or a
site as CSV and PDF, and the site archive the manager asks for (a background job) and downloads."""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, current_app, flash, redirect, render_template, request, send_file, url_for
from flask_babel import gettext as _

from trial.catalogue import LANGUAGES
from trial.http import actor, db, locale_code
from trial.oversight import archive as archives
from trial.oversight import auditexport, casebook
from trial.sites.models import Site

bp = Blueprint("closeout", __name__)


def _file(data: bytes, mimetype: str, name: str, inline: bool = True) -> Response:
    return Response(data, mimetype=mimetype,
                    headers={"Content-Disposition": f'{"inline" if inline else "attachment"}; filename="{name}"'})


@bp.route("/participants/<study_id>/casebook.pdf")
def casebook_pdf(study_id: str):
    """The child's casebook in the page's language (the blinded one for a blinded reader); the 404
    of an unknown child for anyone who may not read it."""
    pdf = casebook.casebook_pdf(db(), actor(), study_id, locale_code())
    return _file(pdf, "application/pdf", f"casebook-{study_id.upper()}.pdf")


@bp.route("/participants/<study_id>/audit.csv")
def participant_audit_csv(study_id: str):
    return _file(auditexport.participant_csv(db(), actor(), study_id, locale_code()), "text/csv",
                 f"audit-{study_id.upper()}.csv", inline=False)


@bp.route("/participants/<study_id>/audit.pdf")
def participant_audit_pdf(study_id: str):
    return _file(auditexport.participant_pdf(db(), actor(), study_id, locale_code()), "application/pdf",
                 f"audit-{study_id.upper()}.pdf")


@bp.route("/sites/<code>/audit.csv")
def site_audit_csv(code: str):
    return _file(auditexport.site_csv(db(), actor(), code, locale_code()), "text/csv", f"audit-site-{code.upper()}.csv",
                 inline=False)


@bp.route("/sites/<code>/audit.pdf")
def site_audit_pdf(code: str):
    return _file(auditexport.site_pdf(db(), actor(), code, locale_code()), "application/pdf",
                 f"audit-site-{code.upper()}.pdf")


@bp.route("/sites/<code>/archives", methods=["GET", "POST"])
def archives_page(code: str):
    """The site's archives (the manager): ask for a new one, follow its progress, download it."""
    s = db()
    if request.method == "POST":
        language = request.form.get("language") or locale_code()
        job = archives.request_archive(s, actor(), code, language if language in LANGUAGES else "en")
        s.commit()
        _start(job.id)
        flash(_("The site archive is being built."))
        return redirect(url_for("closeout.archives_page", code=code.upper()))
    archives.watch(s)
    s.commit()
    jobs = archives.jobs_of(s, actor(), code)
    site = s.query(Site).filter(Site.code == code.upper()).one()
    return render_template("closeout/archives.html", site=site, jobs=jobs, languages=LANGUAGES,
                           language=locale_code(), building=any(j.status in ("queued", "building") for j in jobs))


def _start(job_id: int) -> None:
    """Build the archive: inline (TRIAL_LOCK_BUILDER=inline, the tests) or in a detached process."""
    instance = Path(current_app.instance_path)
    if current_app.config.get("LOCK_BUILDER", "worker") == "inline":
        archives.run_job(current_app.extensions["trial.sessions"], job_id, instance)
        return
    try:
        url = current_app.extensions["trial.engine"].url.render_as_string(hide_password=False)
        archives.start_worker(url, instance, job_id)
    except OSError as e:
        current_app.logger.error("the archive worker for job %s could not be started: %s", job_id, e)
        db().rollback()
        archives.not_started(db(), job_id, f"{type(e).__name__}: {e}")
        db().commit()


@bp.route("/archives/<int:job_id>.zip")
def archive_zip(job_id: int):
    job = archives.ready_job(db(), actor(), job_id)
    return send_file(job.path, mimetype="application/zip", as_attachment=True, download_name=Path(job.path).name)
