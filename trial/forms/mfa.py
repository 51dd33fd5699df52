"""Two-factor sign-in: the code of an authenticator app (or a recovery code) at enrolment, at the
second step of a login and beside the password of an e-signature."""
from flask_babel import lazy_gettext as _l
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import StringField, SubmitField
from wtforms.validators import DataRequired, Length

from trial.auth import mfa

CODE_INPUT = {"autocomplete": "one-time-code", "inputmode": "numeric", "autocapitalize": "off", "spellcheck": "false"}


def code_field(label, description=None) -> StringField:
    return StringField(label, validators=[DataRequired(), Length(max=40)], description=description,
                       render_kw=CODE_INPUT)


class EnrolForm(FlaskForm):
    code = code_field(_l("Code from your authenticator app"),
                      _l("The six digits the app shows for this account now."))
    submit = SubmitField(_l("Turn on two-factor sign-in"))


class CodeForm(FlaskForm):
    code = code_field(_l("Code from your authenticator app"),
                      _l("The six digits the app shows now, or one of your recovery codes."))
    submit = SubmitField(_l("Continue"))


def signature_code() -> StringField:
    """A signing form's ``code``, after its password: shown only to a user enrolled in two-factor
    sign-in (:class:`SigningForm` removes it for the others; the service asks for it only from the
    enrolled, and names it when it is missing or wrong)."""
    return StringField(_l("Code from your authenticator app (electronic signature)"),
                       validators=[Length(max=40)], render_kw=CODE_INPUT)


class SigningForm(FlaskForm):
    """A form with an electronic signature: its ``code`` (:func:`signature_code`, declared after
    the password) is on the form only for a signer enrolled in two-factor sign-in."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "code" in self and not mfa.is_enrolled(current_user):
            del self["code"]


def code_of(form) -> str | None:
    """What was typed in the form's code field (None: the field is not on the form)."""
    return form.code.data if "code" in form else None
