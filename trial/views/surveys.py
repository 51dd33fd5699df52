"""Parents' surveys on the coordinator's pages (issue 28): the participant page's section (its
context from :func:`section`), sending one (then its link and QR code are shown), resending and
revoking (each asks first), and the printable QR code page of an outstanding survey's link (the
link re-derived from its nonce: trial.surveys.service.token_for_reminder)."""
from __future__ import annotations

import io

import segno
from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_babel import force_locale
from flask_babel import gettext as _
from markupsafe import Markup

from trial.catalogue import RTL_LANGUAGES, Label
from trial.consent import service as consent
from trial.errors import DomainError
from trial.forms.surveys import ConfirmForm, survey_form
from trial.http import actor, day, db, form_errors, is_page_error, plabel, say
from trial.participants.service import get_participant
from trial.protocol.service import current as current_protocol
from trial.scope import require_site_role
from trial.surveys import service

bp = Blueprint("surveys", __name__)


def _form(s, p):
    content = current_protocol(s).content
    return survey_form(service.parent_instruments(content), content["visits"], consent.site_language(p.site))


def section(s, user, p, roles_here: set[str]) -> dict:
    """The participant page's surveys: the list for its readers (coordinator, monitor, manager),
    the form for the site's coordinator; nothing for any other role."""
    if not roles_here & set(consent.READERS):
        return {"shown": False, "rows": [], "form": None, "may_send": False}
    content = current_protocol(s).content
    may_send = "coordinator" in roles_here and bool(service.parent_instruments(content))
    return {"shown": True, "rows": service.survey_views(s, user, p.study_id), "form": _form(s, p) if may_send else None,
            "may_send": may_send}


def qr_svg(link: str) -> Markup:
    """The link as a QR code, an inline SVG (no external asset), scalable to the printed page."""
    out = io.BytesIO()
    segno.make(link, error="m").save(out, kind="svg", scale=1, border=4, xmldecl=False, svgns=True,
                                     title=_("QR code of the questionnaire's link"), svgclass="qr", lineclass=None,
                                     omitsize=True)
    return Markup(out.getvalue().decode())


@bp.route("/participants/<study_id>/surveys", methods=["POST"])
def send(study_id: str):
    s = db()
    p = get_participant(s, actor(), study_id)
    require_site_role(s, actor(), p.site_id, *service.SENDERS)
    form = _form(s, p)
    title = _("Send a survey for %(study_id)s", study_id=p.study_id)
    if form.validate_on_submit():
        data = {"instrument": form.instrument.data, "visit": form.visit.data, "language": form.language.data,
                "email": form.email.data or None, "first_name": form.first_name.data or None}
        try:
            sv, _token = service.send_survey(s, actor(), p.study_id, data)
            s.commit()
            return redirect(url_for("surveys.qr", survey_id=sv.id, sent=1))
        except DomainError as e:
            form_errors(form, e)
    return render_template("enrollment/form.html", form=form, title=title), 400


def _expires_on(sv, p):
    return next(v["expires_on"] for v in service.survey_views(db(), actor(), p.study_id) if v["id"] == sv.id)


def _confirm(survey_id: int, what: str):
    """Resend or revoke, once the coordinator confirmed on the page this first press shows."""
    s = db()
    sv, p = service.get_survey(s, actor(), survey_id)
    require_site_role(s, actor(), p.site_id, *service.SENDERS)
    form = ConfirmForm()
    if request.form.get("confirmed") != "1" or not form.validate_on_submit():
        return render_template("surveys/confirm.html", form=form, survey=sv, p=p, what=what,
                               action=url_for(f"surveys.{what}", survey_id=survey_id))
    try:
        if what == "revoke":
            service.revoke_survey(s, actor(), survey_id)
            s.commit()
            flash(_("The link of %(form)s at %(visit)s was revoked: it no longer works.",
                    form=plabel("instrument", sv.instrument), visit=plabel("visit", sv.visit)))
        else:
            service.resend_survey(s, actor(), survey_id)
            s.commit()
            return redirect(url_for("surveys.qr", survey_id=survey_id, sent=1))
    except DomainError as e:
        s.rollback()
        if is_page_error(e):
            raise
        flash(say(e.message), "error")
    return redirect(url_for("enrollment.participant", study_id=p.study_id) + "#surveys")


@bp.route("/surveys/<int:survey_id>/resend", methods=["POST"])
def resend(survey_id: int):
    return _confirm(survey_id, "resend")


@bp.route("/surveys/<int:survey_id>/revoke", methods=["POST"])
def revoke(survey_id: int):
    return _confirm(survey_id, "revoke")


@bp.route("/surveys/<int:survey_id>/qr")
def qr(survey_id: int):
    """The printable page the coordinator hands to the parent: the QR code and the link under it."""
    s = db()
    try:
        sv, p, token = service.outstanding_link(s, actor(), survey_id)
    except DomainError as e:
        if is_page_error(e):
            raise
        flash(say(e.message), "error")
        sv, p = service.get_survey(s, actor(), survey_id)
        return redirect(url_for("enrollment.participant", study_id=p.study_id) + "#surveys")
    s.commit()  # (who saw the live link: audited by outstanding_link)
    link = service.link_of(token)
    if link.startswith("/"):  # no TRIAL_BASE_URL: the address this page was reached at
        link = request.host_url.rstrip("/") + link
    expires_on = _expires_on(sv, p)
    return render_template("surveys/link.html", survey=sv, p=p, link=link, qr=qr_svg(link),
                           just_sent=request.args.get("sent") == "1", expires_on=expires_on,
                           printed=_printed(s, sv, expires_on))


def _printed(s, sv, expires_on) -> dict:
    """What the printed page tells the family, in the survey's language (the coordinator's own notes
    around it stay in the coordinator's)."""
    content = current_protocol(s).content
    ins = service._instrument(content, sv.instrument) or {"key": sv.instrument, "label": sv.instrument}
    with force_locale(sv.language):
        return {"lang": sv.language.replace("_", "-"), "rtl": sv.language in RTL_LANGUAGES,
                "form": service.say_in(Label("instrument", ins["key"], ins["label"]), content, sv.language),
                "ask": _("Please answer this questionnaire on your phone or computer: scan the code or type the link."),
                "until": _("The link works until %(day)s.", day=day(expires_on))}
