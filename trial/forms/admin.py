from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, HiddenField, IntegerField, PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, Length, NumberRange, Optional


class UserForm(FlaskForm):
    email = EmailField("E-mail", validators=[DataRequired(), Length(max=254)])
    name = StringField("Printed name", validators=[DataRequired(), Length(max=200)])
    password = PasswordField("Initial password", validators=[DataRequired(), Length(min=10, max=1000)])
    roles = StringField("Roles", validators=[DataRequired()],
                        description="Comma-separated; site roles as role@SITE, e.g. coordinator@AT01, manager")
    submit = SubmitField("Create user")


class UserEditForm(FlaskForm):
    name = StringField("Printed name", validators=[DataRequired(), Length(max=200)])
    roles = StringField("Roles", validators=[DataRequired()],
                        description="Comma-separated; site roles as role@SITE, e.g. assessor@NO01")
    active = BooleanField("Active")
    new_password = PasswordField("Reset password (optional; the user must change it)",
                                 validators=[Optional(), Length(min=10, max=1000)])
    reason = StringField("Reason for the change", validators=[DataRequired(), Length(max=500)])
    submit = SubmitField("Save")


class SiteForm(FlaskForm):
    code = StringField("Code", validators=[DataRequired(), Length(min=4, max=4)], description="e.g. AT01")
    name = StringField("Name", validators=[DataRequired(), Length(max=200)])
    country = StringField("Country (ISO code)", validators=[Optional(), Length(min=2, max=2)])
    timezone = StringField("Time zone", default="UTC", validators=[DataRequired(), Length(max=64)])
    target = IntegerField("Target enrollment", default=0, validators=[NumberRange(min=0)])
    is_open = BooleanField("Open for randomization", default=True)
    reason = StringField("Reason for the change", validators=[Optional(), Length(max=500)])
    submit = SubmitField("Save")


class RevokeForm(FlaskForm):
    """Revoke one API token (its id), or every live token of the user (``all``)."""
    token_id = IntegerField(validators=[Optional(), NumberRange(min=1, max=2**31 - 1)], widget=HiddenField.widget)
    all = HiddenField()
    submit = SubmitField("Revoke")
