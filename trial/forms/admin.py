from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, HiddenField, IntegerField, StringField, SubmitField
from wtforms.validators import DataRequired, Length, NumberRange, Optional

from trial.catalogue import LANGUAGES


class UserForm(FlaskForm):
    email = EmailField(_l("E-mail"), validators=[DataRequired(), Length(max=254)])
    name = StringField(_l("Printed name"), validators=[DataRequired(), Length(max=200)])
    # no password: the user sets it through a one-time link sent to this e-mail address
    roles = StringField(_l("Roles"), validators=[DataRequired()],
                        description=_l("Comma-separated; site roles as role@SITE, e.g. coordinator@AT01, manager"))
    submit = SubmitField(_l("Create user"))


class UserEditForm(FlaskForm):
    name = StringField(_l("Printed name"), validators=[DataRequired(), Length(max=200)])
    roles = StringField(_l("Roles"), validators=[DataRequired()],
                        description=_l("Comma-separated; site roles as role@SITE, e.g. assessor@NO01"))
    active = BooleanField(_l("Active"))
    reset_password = BooleanField(_l("Reset the password: the current one stops working, every session ends, and the "
                                     "user gets a one-time link by e-mail to set a new one"))
    reason = StringField(_l("Reason for the change"), validators=[DataRequired(), Length(max=500)])
    submit = SubmitField(_l("Save"))


class SiteForm(FlaskForm):
    code = StringField(_l("Code"), validators=[DataRequired(), Length(min=4, max=4)], description=_l("e.g. AT01"))
    name = StringField(_l("Name"), validators=[DataRequired(), Length(max=200)])
    country = StringField(_l("Country (ISO code)"), validators=[Optional(), Length(min=2, max=2)])
    timezone = StringField(_l("Time zone"), default="UTC", validators=[DataRequired(), Length(max=64)])
    target = IntegerField(_l("Target enrollment"), default=0, validators=[NumberRange(min=0)])
    is_open = BooleanField(_l("Open for randomization"), default=True)
    languages = StringField(_l("Languages"), validators=[Optional(), Length(max=100)],
                            description=_l("The languages the site's families consent in, separated by commas, the "
                                           "default first, e.g. de, en (of %(allowed)s)",
                                           allowed=", ".join(f"{k} = {v}" for k, v in LANGUAGES.items())))
    reason = StringField(_l("Reason for the change"), validators=[Optional(), Length(max=500)])
    submit = SubmitField(_l("Save"))


class RevokeForm(FlaskForm):
    """Revoke one API token (its id), or every live token of the user (``all``)."""
    token_id = IntegerField(validators=[Optional(), NumberRange(min=1, max=2**31 - 1)], widget=HiddenField.widget)
    all = HiddenField()
    submit = SubmitField(_l("Revoke"))
