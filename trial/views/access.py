"""The access review (a manager's page): every account with its roles, sites, two-factor enrolment
and last login, the unused ones flagged; deactivate from it, and sign the review."""
from __future__ import annotations

from flask import Blueprint, render_template, url_for
from flask_babel import gettext as _

from trial.errors import ValidationError
from trial.forms import access as forms
from trial.forms.mfa import code_of
from trial.grants import review
from trial.http import actor, db, post_and_return

bp = Blueprint("access", __name__)


@bp.route("/access-review", endpoint="review")
def review_page():
    s = db()
    rows = review.accounts(s, actor())
    return render_template("access/review.html", accounts=rows, inactive_days=review.INACTIVE_DAYS,
                           flagged=sum(a["inactive"] for a in rows), last=review.last_review(s),
                           form=forms.ReviewForm(), deactivate_form=forms.DeactivateForm())


@bp.route("/access-review/sign", methods=["POST"], endpoint="sign")
def sign():
    return post_and_return(forms.ReviewForm(),
                           lambda f: review.sign_review(db(), actor(), f.password.data, f.meaning.data, code_of(f)),
                           _("Access review signed."), url_for("access.review"), _("Fill in every field of the signature."))


@bp.route("/access-review/<int:user_id>/deactivate", methods=["POST"], endpoint="deactivate")
def deactivate(user_id: int):
    def act(f):
        if not f.confirm.data:
            refusal = _("The account was not deactivated: tick the box to confirm.")
            raise ValidationError(refusal, {"confirm": refusal})
        review.deactivate_account(db(), actor(), user_id)
    return post_and_return(forms.DeactivateForm(), act, _("Account deactivated: its sessions and API tokens have ended."),
                           url_for("access.review"))
