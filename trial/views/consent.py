"""Consents on the pages (issue 28): recording a consent or assent (coordinators of the site)."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, url_for
from flask_babel import gettext as _

from trial.consent import service
from trial.errors import DomainError
from trial.forms.consent import consent_form
from trial.http import actor, db, form_errors
from trial.participants.service import get_participant
from trial.protocol.service import current as current_protocol
from trial.scope import require_site_role

bp = Blueprint("consent", __name__)


@bp.route("/participants/<study_id>/consents/new", methods=["GET", "POST"])
def record(study_id: str):
    s = db()
    p = get_participant(s, actor(), study_id)
    require_site_role(s, actor(), p.site_id, "coordinator")
    docs = service.consent_section(current_protocol(s).content)["documents"]
    form = consent_form(docs, service.site_language(p.site))
    title = _("Consent for %(study_id)s", study_id=p.study_id)
    if form.validate_on_submit():
        doc = next((d for d in docs if d["key"] == form.document.data), None)
        keys = [o["key"] for o in doc.get("options", [])] if doc else []
        chosen = set(form.options.data or [])
        data = {"document": form.document.data, "version": doc["version"] if doc else None,
                "language": form.language.data, "signed_on": form.signed_on.data.isoformat(),
                "signer": form.signer.data,
                "options": {**{k: k in chosen for k in keys}, **{k: True for k in chosen if k not in keys}}}
        try:
            service.record_consent(s, actor(), p.study_id, data)
            s.commit()
            flash(_("Consent recorded."))
            return redirect(url_for("enrollment.participant", study_id=p.study_id))
        except DomainError as e:
            form_errors(form, e)
    return render_template("enrollment/form.html", form=form, title=title), 400 if form.is_submitted() else 200
