"""The investigator's casebook sign-off: the worklist of casebooks waiting for a signature and the
signing form (trial.oversight.signoff)."""
from __future__ import annotations

from flask import Blueprint, render_template, request, url_for
from flask_babel import gettext as _

from trial.forms import signoffs as forms
from trial.http import actor, db, page_request, post_and_return
from trial.oversight import signoff

bp = Blueprint("signoffs", __name__)


@bp.route("/signoffs", endpoint="worklist")
def worklist():
    s = db()
    page = signoff.worklist_page(s, actor(), page_request())
    return render_template("signoffs/worklist.html", page=page, form_for=_form_for)


def _form_for(milestone: str, back: str = ""):
    return forms.SignoffForm(milestone=milestone, back=back, formdata=None)


@bp.route("/participants/<study_id>/signoffs/sign", methods=["POST"], endpoint="sign")
def sign(study_id: str):
    def act(f):
        signoff.sign_casebook(db(), actor(), study_id, {"milestone": f.milestone.data, "meaning": f.meaning.data,
                                                       "password": f.password.data,
                                                       "code": f.code.data if "code" in f else None})
    back = request.form.get("back") == "worklist"  # (where the form was: only these two pages)
    return post_and_return(forms.SignoffForm(), act, _("The casebook of %(study_id)s is signed.", study_id=study_id.upper()),
                           url_for("signoffs.worklist") if back else url_for("enrollment.participant", study_id=study_id),
                           _("Fill in every field of the signature."))


def section(s, who, p) -> dict | None:
    """The participant page's sign-off section: the casebook's signatures (valid and invalidated,
    with the change that invalidated them) for those who read them; for the site's investigator
    also the milestones reached and waiting, each with its signing form. None: not shown."""
    if not signoff.milestones(s) or not signoff.may_read(s, who, p):
        return None
    rows = signoff.views(s, p)  # (read-only: a signature out of date is shown as such, nothing written)
    signer = signoff.is_investigator_of(who, p.site_id)
    waiting = [w for w in signoff.waiting(s, [p.site_id]) if w["study_id"] == p.study_id] if signer else []
    return {"rows": rows, "waiting": waiting, "form_for": _form_for}
