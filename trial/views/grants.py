"""Pending role grants: managers countersign or reject them; admins see what they asked for."""
from __future__ import annotations

from flask import Blueprint, render_template, url_for
from flask_babel import gettext as _

from trial.forms import grants as forms
from trial.forms.mfa import code_of
from trial.grants import service
from trial.http import actor, db, post_and_return

bp = Blueprint("grants", __name__)


@bp.route("/grants", endpoint="list")
def grants_page():
    s = db()
    return render_template("grants/list.html", pending=service.list_grants(s, actor(), "pending"),
                           decided=[g for g in service.list_grants(s, actor(), None) if g["status"] != "pending"][:50],
                           sign_form=forms.CountersignForm(), reject_form=forms.RejectForm())


def _decide(form, action, done: str):
    return post_and_return(form, action, done, url_for("grants.list"))


@bp.route("/grants/<int:grant_id>/approve", methods=["POST"], endpoint="approve")
def approve(grant_id: int):
    return _decide(forms.CountersignForm(),
                   lambda f: service.approve(db(), actor(), grant_id, f.password.data, f.meaning.data, code_of(f)),
                   _("Countersigned: the role takes effect at the user's next login."))


@bp.route("/grants/<int:grant_id>/reject", methods=["POST"], endpoint="reject")
def reject(grant_id: int):
    return _decide(forms.RejectForm(), lambda f: service.reject(db(), actor(), grant_id, f.reason.data),
                   _("Rejected."))
