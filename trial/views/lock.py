"""Locks, bundles, unblinding and CONSORT pages."""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, current_app, render_template, request, url_for
from flask_babel import gettext as _

from trial.errors import ValidationError
from trial.exports import service as exports
from trial.forms import lock as forms
from trial.forms.mfa import code_of
from trial.http import actor, committed_build_status, db, post_and_return, say, start_bundle_build, watch_bundle_builds
from trial.interim import sharing
from trial.lock import service, unblinding
from trial.oversight import signoff
from trial.randomize.service import get_design
from trial.scope import is_blinded, require_role
from trial.sites.service import list_sites

bp = Blueprint("lock", __name__)


@bp.route("/locks", endpoint="locks")
def locks_page():
    s = db()
    watch_bundle_builds()
    waiting = unblinding.waiting_request(s)
    active = service.active_lock(s)
    lock_form = forms.LockForm()
    if active is not None and active.kind == "soft":  # under a soft lock only a hard lock can be signed
        lock_form.kind.choices = [c for c in lock_form.kind.choices if c[0] == "hard"]
    unsigned = signoff.unsigned_casebooks(s, check="read") if (active is None or active.kind == "soft") \
        and actor().has_role("manager") else []
    if not unsigned:  # the box is offered only when casebooks wait for their investigator
        del lock_form.accept_unsigned
    return render_template("lock/locks.html", locks=service.list_locks(s, actor()), active=active,
                           design=get_design(s), lock_form=lock_form, lift_form=forms.LiftForm(),
                           unblind_form=forms.UnblindForm(), blinded=is_blinded(s, actor()),
                           waiting=unblinding.as_dict(s, waiting) if waiting else None,
                           may_countersign=unblinding.may_countersign(actor(), waiting),
                           countersigner_role=unblinding.countersigner_role(s),
                           countersign_form=forms.CountersignUnblindingForm(),
                           withdraw_form=forms.WithdrawUnblindingForm(), addendum_form=forms.AddendumForm(),
                           addendum=service.open_addendum_of(s), unsigned=unsigned,
                           sharing=_sharing_state(s, active), sharing_form=forms.SharingForm())


def _sharing_state(s, active) -> dict | None:
    """The sharing bundle of the hard lock in force, once the trial is unblinded (its section)."""
    design = get_design(s)
    if active is None or active.kind != "hard" or design is None or design.unblinded_at is None:
        return None
    sharing.watch(s)
    s.commit()
    return sharing.status(s, actor(), active.id)


def _signed(form, action, done: str):
    return post_and_return(form, action, done, url_for("lock.locks"), _("Fill in every field of the signature."))


def _confirmed(form, refusal: str, role: str = "manager") -> None:
    """Lifting a lock and unblinding each need their box ticked, checked here as well as in the
    browser: a post without it changes nothing and says why. Who may not act learns that first."""
    require_role(db(), actor(), role)
    if not form.confirm.data:
        raise ValidationError(refusal, {"confirm": refusal})


@bp.route("/locks/new", methods=["POST"], endpoint="create")
def create():
    made = []

    def sign(f):
        made.append(service.create_lock(db(), actor(), f.kind.data, f.meaning.data, f.password.data,
                                        f.accept_open_queries.data, code=code_of(f),
                                        accept_unsigned=bool(f.accept_unsigned.data)))
    out = _signed(forms.LockForm(), sign, _("Signed and locked."))
    if made and made[0].kind == "hard" and committed_build_status(made[0].id) == "building":
        start_bundle_build(made[0].id)  # committed: the bundles are built now, in the background
    return out


@bp.route("/locks/<int:lock_id>/lift", methods=["POST"], endpoint="lift")
def lift(lock_id: int):
    def sign(f):
        _confirmed(f, _("The lock was not lifted: tick the box to confirm that lifting it reopens data entry."))
        service.lift_lock(db(), actor(), lock_id, f.reason.data, f.password.data, code_of(f))
    return _signed(forms.LiftForm(), sign, _("Lock lifted."))


@bp.route("/unblinding", methods=["POST"], endpoint="unblind")
def unblind():
    def sign(f):
        _confirmed(f, _("The trial was not unblinded: tick the box to confirm that unblinding cannot be taken back."))
        unblinding.request_unblinding(db(), actor(), f.meaning.data, f.password.data, code_of(f))
    return _signed(forms.UnblindForm(), sign,
                   _("Signed: the unblinding awaits the countersignature of a second person; the trial is not "
                     "unblinded yet."))


@bp.route("/unblinding/<int:request_id>/countersign", methods=["POST"], endpoint="countersign_unblinding")
def countersign_unblinding(request_id: int):
    def sign(f):
        _confirmed(f, _("The trial was not unblinded: tick the box to confirm that unblinding cannot be taken back."),
                   unblinding.countersigner_role(db()))
        unblinding.countersign(db(), actor(), request_id, f.meaning.data, f.password.data, code_of(f))
    return _signed(forms.CountersignUnblindingForm(), sign, _("Countersigned: the trial is unblinded."))


@bp.route("/unblinding/<int:request_id>/withdraw", methods=["POST"], endpoint="withdraw_unblinding")
def withdraw_unblinding(request_id: int):
    return post_and_return(forms.WithdrawUnblindingForm(),
                           lambda f: unblinding.withdraw(db(), actor(), request_id, f.reason.data),
                           _("The request to unblind is withdrawn."), url_for("lock.locks"))


@bp.route("/locks/<int:lock_id>/addendum", methods=["POST"], endpoint="addendum")
def addendum(lock_id: int):
    def sign(f):
        _confirmed(f, _("The addendum was not opened: tick the box to confirm that it reopens data entry."))
        unblinding.open_addendum(db(), actor(), lock_id, f.reason.data, f.password.data, code_of(f))
    return _signed(forms.AddendumForm(), sign,
                   _("Addendum opened: data entry is open for the corrections; sign a hard lock to close it."))


@bp.route("/locks/<int:lock_id>/bundle.zip", endpoint="bundle")
def bundle(lock_id: int):
    watch_bundle_builds()
    b = service.get_bundle(db(), actor(), lock_id)
    return Response(b.content, mimetype="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="lock-{lock_id}-{b.variant}.zip"'})


@bp.route("/locks/<int:lock_id>/sharing", methods=["POST"], endpoint="request_sharing")
def request_sharing(lock_id: int):
    made = []
    out = post_and_return(forms.SharingForm(), lambda f: made.append(sharing.request_sharing(db(), actor(), lock_id).id),
                          _("The de-identified sharing bundle is being made."), url_for("lock.locks"))
    if made:  # committed: built now, in the background (inline in the tests)
        sharing.start_build(db(), actor(), made[0], current_app.config.get("LOCK_BUILDER", "worker"),
                            current_app.extensions["trial.engine"].url.render_as_string(hide_password=False),
                            Path(current_app.instance_path))
    return out


@bp.route("/locks/<int:lock_id>/sharing.zip", endpoint="sharing_zip")
def sharing_zip(lock_id: int):
    sb = sharing.get_zip(db(), actor(), lock_id)
    content = sb.content
    db().commit()  # (the download's audit record)
    return Response(content, mimetype="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="lock-{lock_id}-sharing.zip"'})


@bp.route("/locks/<int:lock_id>/sharing-review.csv", endpoint="sharing_review")
def sharing_review(lock_id: int):
    """The children of the rarest combinations of site, sex and age band, for the manager's review
    before the bundle is shared (the page points to it; never in the bundle itself)."""
    data = sharing.review_csv(db(), actor(), lock_id)
    db().commit()  # (the download's audit record)
    return Response(data, mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="lock-{lock_id}-disclosure_review.csv"'})


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
