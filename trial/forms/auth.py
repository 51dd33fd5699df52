from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, HiddenField, PasswordField, SelectField, SubmitField
from wtforms.validators import DataRequired, Length

from trial.catalogue import LANGUAGES

NEW_PASSWORD_HINT = _l("At least 12 characters, any you like; not a common password, nor your e-mail address or "
                       "name. A few unrelated words make a good one.")


class LoginForm(FlaskForm):
    email = EmailField(_l("E-mail"), validators=[DataRequired(), Length(max=254)])
    password = PasswordField(_l("Password"), validators=[DataRequired(), Length(max=1000)])
    submit = SubmitField(_l("Log in"))


class PasswordForm(FlaskForm):
    current_password = PasswordField(_l("Current password"), validators=[DataRequired()])
    new_password = PasswordField(_l("New password"), validators=[DataRequired(), Length(max=1000)], description=NEW_PASSWORD_HINT)
    submit = SubmitField(_l("Change password"))


class ResetPasswordForm(FlaskForm):
    """The new password set through a one-time link (the same rules as a password change)."""
    new_password = PasswordField(_l("New password"), validators=[DataRequired(), Length(max=1000)], description=NEW_PASSWORD_HINT)
    submit = SubmitField(_l("Set the password"))


class LanguageForm(FlaskForm):
    """The user's language of the web pages; each language is named in its own words."""
    language = SelectField(_l("Language of the pages"),
                           choices=[("", _l("The browser's language"))] + list(LANGUAGES.items()),
                           description=_l("Without a choice here, the pages follow the language your browser asks for, "
                                          "else English."))
    next = HiddenField()
    submit = SubmitField(_l("Save the language"))


class DigestForm(FlaskForm):
    """The user's choice of the weekly digest e-mail (coordinators and assessors)."""
    weekly_digest = BooleanField(_l("Send me the weekly digest"),
                                 description=_l("Once a week, an e-mail of the visits coming due at your sites in the "
                                                "next seven days and of the queries waiting for your answer."))
    submit = SubmitField(_l("Save the digest choice"))


class LogoutForm(FlaskForm):
    submit = SubmitField(_l("Log out"))
