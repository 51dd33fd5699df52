"""The close-out documents (issue 29): a child's casebook PDF and its audit trail as CSV."""
from __future__ import annotations

from flask import Response

from trial.api.routing import err, media, route
from trial.catalogue import LANGUAGES
from trial.http import actor, db
from trial.oversight import auditexport, casebook


def _language() -> str:
    language = getattr(actor(), "language", None)
    return language if language in LANGUAGES else "en"


@route("/participants/<study_id>/casebook.pdf", "GET",
       "The child's casebook as a PDF in the caller's language: identifiers, consents, every form with its labels, "
       "values and units, forms not done with their reasons, every change (old and new value, who, when, why), "
       "queries with their threads, sign-offs; blinded readers get the blinded casebook (no arm, no sessions)",
       "the site roles that may read the child",
       responses={200: media("the casebook", "application/pdf"),
                  404: err("unknown participant, or a reader who may not read it (one answer for all)")})
def casebook_pdf(study_id):
    pdf = casebook.casebook_pdf(db(), actor(), study_id, _language())
    return Response(pdf, mimetype="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="casebook-{study_id.upper()}.pdf"'})


@route("/participants/<study_id>/audit.csv", "GET",
       "The child's audit trail as CSV, readable (labels, old → new, who, when in the site's time zone, why); "
       "records that reveal an allocation are withheld from blinded readers",
       "manager, investigator",
       responses={200: media("the audit trail", "text/csv"), 403: err("a role that does not read audit trails"),
                  404: err("unknown participant, or one the reader may not see")})
def participant_audit_csv(study_id):
    data = auditexport.participant_csv(db(), actor(), study_id, _language())
    return Response(data, mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="audit-{study_id.upper()}.csv"'})
