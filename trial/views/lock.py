"""Locks, bundles, unblinding and CONSORT pages."""
from __future__ import annotations

from flask import Blueprint, Response, render_template, request, url_for
from flask_babel import gettext as _

from trial.errors import ValidationError
from trial.exports import service as exports
from trial.forms import lock as forms
from trial.http import actor, db, post_and_return, say, start_bundle_build
from trial.lock import service
from trial.randomize.service import get_design
from trial.scope import is_blinded, require_role
from trial.sites.service import list_sites

bp = Blueprint("lock", __name__)


@bp.route("/locks", endpoint="locks")
def locks_page():
    s = db()
    return render_template("lock/locks.html", locks=service.list_locks(s, actor()), active=service.active_lock(s),
                           design=get_design(s), lock_form=forms.LockForm(), lift_form=forms.LiftForm(),
                           unblind_form=forms.UnblindForm(), blinded=is_blinded(s, actor()))


def _signed(form, action, done: str):
    return post_and_return(form, action, done, url_for("lock.locks"), _("Fill in every field of the signature."))


def _confirmed(form, refusal: str) -> None:
    """Lifting a lock and unblinding each need their box ticked, checked here as well as in the
    browser: a post without it changes nothing and says why. Who may not act learns that first."""
    require_role(db(), actor(), "manager")
    if not form.confirm.data:
        raise ValidationError(refusal, {"confirm": refusal})


@bp.route("/locks/new", methods=["POST"], endpoint="create")
def create():
    made = []

    def sign(f):
        made.append(service.create_lock(db(), actor(), f.kind.data, f.meaning.data, f.password.data,
                                        f.accept_open_queries.data))
    out = _signed(forms.LockForm(), sign, _("Signed and locked."))
    if made and made[0].kind == "hard" and service.build_status(db(), made[0].id)["status"] == "building":
        start_bundle_build(made[0].id)  # committed: the bundles are built now, in the background
    return out


@bp.route("/locks/<int:lock_id>/lift", methods=["POST"], endpoint="lift")
def lift(lock_id: int):
    def sign(f):
        _confirmed(f, _("The lock was not lifted: tick the box to confirm that lifting it reopens data entry."))
        service.lift_lock(db(), actor(), lock_id, f.reason.data, f.password.data)
    return _signed(forms.LiftForm(), sign, _("Lock lifted."))


@bp.route("/unblinding", methods=["POST"], endpoint="unblind")
def unblind():
    def sign(f):
        _confirmed(f, _("The trial was not unblinded: tick the box to confirm that unblinding cannot be taken back."))
        service.unblind(db(), actor(), f.meaning.data, f.password.data)
    return _signed(forms.UnblindForm(), sign, _("The trial is unblinded."))


@bp.route("/locks/<int:lock_id>/bundle.zip", endpoint="bundle")
def bundle(lock_id: int):
    b = service.get_bundle(db(), actor(), lock_id)
    return Response(b.content, mimetype="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="lock-{lock_id}-{b.variant}.zip"'})


@bp.route("/consort", endpoint="consort")
def consort():
    s = db()
    site = request.args.get("site") or None
    counts = exports.consort_counts(s, actor(), site)
    s.commit()
    return render_template("lock/consort.html", counts=counts, site=site, sites=list_sites(s),
                           summary=exports.summary(s, actor()))


@bp.route("/consort.svg", endpoint="consort_svg")
def consort_svg():
    return Response(exports.consort_svg(db(), actor(), request.args.get("site") or None, say=say), mimetype="image/svg+xml")


@bp.route("/consort.pdf", endpoint="consort_pdf")
def consort_pdf():
    return Response(exports.consort_pdf(db(), actor(), request.args.get("site") or None), mimetype="application/pdf")


@bp.route("/reports/baseline.csv", endpoint="baseline_csv")
def baseline_csv():
    return Response(exports.baseline_csv(db(), actor()), mimetype="text/csv",
                    headers={"Content-Disposition": 'attachment; filename="baseline_table.csv"'})
