"""Admin pages. Thin: forms in, services do the work (and the audit)."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import ngettext

from trial.auth import service as users
from trial.auth.models import ROLES
from trial.catalogue import LANGUAGES
from trial.db import utcnow
from trial.errors import DomainError
from trial.forms.admin import RevokeForm, SiteForm, UserEditForm, UserForm
from trial.http import actor, db, form_errors, page_request
from trial.notify import accounts
from trial.protocol.service import versions
from trial.sites import service as sites

bp = Blueprint("admin", __name__, url_prefix="/admin")


def parse_roles(text: str) -> list[tuple[str, str | None]]:
    out = []
    for part in (text or "").replace(";", ",").split(","):
        part = part.strip()
        if part:
            role, _at, site = part.partition("@")
            out.append((role.strip().lower(), site.strip().upper() or None))
    return out


def _pending_note(user) -> str:
    n = len(users.pending_grants_of(db(), user))
    return " " + ngettext("%(num)d role grant waits for a manager's countersignature.",
                          "%(num)d role grants wait for a manager's countersignature.", n) if n else ""


@bp.route("/users", endpoint="users")
def users_page():
    s = db()
    search, role = request.args.get("q") or None, request.args.get("role") or None
    page = users.page_users(s, actor(), page_request(), search, role)
    page = page.map(lambda rows: [(u, users.current_roles_text(u, s), users.pending_grants_of(s, u)) for u in rows])
    return render_template("admin/users.html", page=page, search=search, role=role, roles=ROLES)


@bp.route("/users/new", methods=["GET", "POST"])
def user_new():
    form = UserForm()
    if form.validate_on_submit():
        try:
            u = accounts.invite(db(), actor(), form.email.data, form.name.data, parse_roles(form.roles.data))
            db().commit()
            flash(_("User %(email)s created: a link to set their password (valid 24 hours) was sent to that address.",
                    email=u.email) + _pending_note(u))
            return redirect(url_for("admin.users"))
        except DomainError as e:
            form_errors(form, e)
    return render_template("admin/user_form.html", form=form, title=_("New user")), 400 if form.is_submitted() else 200


@bp.route("/users/<int:user_id>", methods=["GET", "POST"])
def user_edit(user_id: int):
    s = db()
    user = users.get_user(s, actor(), user_id)
    form = UserEditForm(obj=user)
    if not form.is_submitted():
        form.roles.data = users.current_roles_text(user, s, with_pending=True)
    if form.validate_on_submit():
        try:
            users.update_user(s, actor(), user, name=form.name.data, active=form.active.data, reason=form.reason.data)
            users.set_roles(s, actor(), user, parse_roles(form.roles.data), reason=form.reason.data)
            if form.reset_password.data:
                accounts.reset_password(s, actor(), user)
            s.commit()
            flash(_("User %(email)s saved.", email=user.email) + _pending_note(user)
                  + (" " + _("Their password was reset: a link to set a new one (valid 24 hours) was sent to their "
                             "e-mail.") if form.reset_password.data else ""))
            return redirect(url_for("admin.user_edit", user_id=user.id))
        except DomainError as e:
            form_errors(form, e)
    return render_template("admin/user_form.html", form=form, title=_("Edit %(email)s", email=user.email), user=user,
                           tokens=users.tokens_of(s, actor(), user), pending_roles=users.pending_roles_text(user, s),
                           active_roles=users.current_roles_text(user, s), now=utcnow(),
                           revoke_form=RevokeForm()), 400 if form.is_submitted() else 200


@bp.route("/users/<int:user_id>/tokens/revoke", methods=["POST"], endpoint="revoke_tokens")
def revoke_tokens(user_id: int):
    s = db()
    user = users.get_user(s, actor(), user_id)
    form = RevokeForm()
    if form.validate_on_submit() and (form.token_id.data or form.all.data == "yes"):
        if form.token_id.data:
            users.revoke_token(s, actor(), user, form.token_id.data, "revoked by an administrator on the user page")
            n = 1
        else:
            n = users.revoke_tokens(s, actor(), user, "revoked by an administrator on the user page")
        s.commit()
        flash(ngettext("%(num)d API token of %(email)s revoked.", "%(num)d API tokens of %(email)s revoked.", n,
                       email=user.email))
    else:
        flash(_("Nothing was revoked: choose a token, or every token."), "error")
    return redirect(url_for("admin.user_edit", user_id=user.id))


@bp.route("/protocol", endpoint="protocol")
def protocol_page():
    return render_template("admin/protocol.html", versions=versions(db(), actor()))


@bp.route("/sites", endpoint="sites")
def sites_page():
    return render_template("admin/sites.html", sites=sites.list_sites(db()), language_names=LANGUAGES)


@bp.route("/sites/new", methods=["GET", "POST"])
def site_new():
    form = SiteForm()
    if form.validate_on_submit():
        try:
            site = sites.create_site(db(), actor(), form.data)
            db().commit()
            flash(_("Site %(code)s created.", code=site.code))
            return redirect(url_for("admin.sites"))
        except DomainError as e:
            form_errors(form, e)
    return render_template("admin/site_form.html", form=form, title=_("New site")), 400 if form.is_submitted() else 200


@bp.route("/sites/<code>", methods=["GET", "POST"])
def site_edit(code: str):
    s = db()
    site = sites.get_by_code(s, code)
    form = SiteForm(obj=site)
    form.code.data = site.code
    if not form.is_submitted():
        form.languages.data = ", ".join(site.languages or [])
    if form.validate_on_submit():
        try:
            data = {k: form.data[k] for k in ("name", "country", "timezone", "target", "is_open", "languages")}
            sites.update_site(s, actor(), site.code, data, reason=form.reason.data)
            s.commit()
            flash(_("Site %(code)s saved.", code=site.code))
            return redirect(url_for("admin.sites"))
        except DomainError as e:
            form_errors(form, e)
    return render_template("admin/site_form.html", form=form, title=_("Edit site %(code)s", code=site.code), site=site), 400 if form.is_submitted() else 200

