"""The investigator's casebook sign-off: the worklist of casebooks waiting for a signature and the
signing form (trial.oversight.signoff)."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_babel import gettext as _

from trial.errors import DomainError
from trial.forms import signoffs as forms
from trial.http import actor, db, is_page_error, page_request, say
from trial.oversight import signoff

bp = Blueprint("signoffs", __name__)


@bp.route("/signoffs", endpoint="worklist")
def worklist():
    s = db()
    page = signoff.worklist_page(s, actor(), page_request())
    return render_template("signoffs/worklist.html", page=page, form_for=_form_for)


def _form_for(milestone: str, back: str = ""):
    return forms.SignoffForm(milestone=milestone, back=back, formdata=None)


# a refused signature's message, kept for the signing form of the participant page it returns to
REFUSAL = "signoff_refusal"


@bp.route("/participants/<study_id>/signoffs/sign", methods=["POST"], endpoint="sign")
def sign(study_id: str):
    """Sign, and back where the form was; a refusal (a wrong password or code, a field left out)
    returns to the signing form on the participant page (its anchor), the message beside the form."""
    f = forms.SignoffForm()
    refused = _sign(f, study_id) if f.validate_on_submit() else _("Fill in every field of the signature.")
    milestone = f.milestone.data or ""
    if refused is None:
        flash(_("The casebook of %(study_id)s is signed.", study_id=study_id.upper()))
        back = request.form.get("back") == "worklist"  # (where the form was: only these two pages)
        return redirect(url_for("signoffs.worklist") if back else url_for("enrollment.participant", study_id=study_id))
    session[REFUSAL] = {"study_id": study_id.upper(), "milestone": milestone, "message": refused}
    return redirect(url_for("enrollment.participant", study_id=study_id, _anchor=f"sign-{milestone}"))


def _sign(f, study_id: str) -> str | None:
    """Sign the casebook and commit: None when signed, else the refusal's words (rolled back; a
    page error, 403 or 404, propagates)."""
    try:
        signoff.sign_casebook(db(), actor(), study_id, {"milestone": f.milestone.data, "meaning": f.meaning.data,
                                                       "password": f.password.data,
                                                       "code": f.code.data if "code" in f else None})
        db().commit()
        return None
    except DomainError as e:
        db().rollback()
        if is_page_error(e):
            raise
        return say(e.message)


def _refusal(p, waiting: list[dict]) -> dict | None:
    """The refusal of a signature of this child's casebook, once: beside its form when the form is
    shown, else flashed at the top of the page."""
    got = session.get(REFUSAL)
    if not got or got.get("study_id") != p.study_id:
        return None
    session.pop(REFUSAL)
    if any(w["milestone"] == got.get("milestone") for w in waiting):
        return got
    flash(got.get("message") or "", "error")
    return None


def section(s, who, p) -> dict | None:
    """The participant page's sign-off section: the casebook's signatures (valid and invalidated,
    with the change that invalidated them) for those who read them; for the site's investigator
    also the milestones reached and waiting, each with its signing form. None: not shown."""
    if not signoff.milestones(s) or not signoff.may_read(s, who, p):
        return None
    rows = signoff.views(s, p)  # (read-only: a signature out of date is shown as such, nothing written)
    signer = signoff.is_investigator_of(who, p.site_id)
    waiting = [w for w in signoff.waiting(s, [p.site_id]) if w["study_id"] == p.study_id] if signer else []
    return {"rows": rows, "waiting": waiting, "form_for": _form_for, "refusal": _refusal(p, waiting)}
