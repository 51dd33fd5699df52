from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, Length

from trial.forms.mfa import SigningForm, signature_code


class CountersignForm(SigningForm):
    meaning = StringField(_l("Meaning of your signature"), validators=[DataRequired(), Length(max=500)],
                          default=_l("I countersign this role grant: I have checked that this person should hold this role."))
    password = PasswordField(_l("Your password (electronic signature)"), validators=[DataRequired()])
    code = signature_code()
    submit = SubmitField(_l("Countersign"))


class RejectForm(FlaskForm):
    reason = StringField(_l("Reason for rejecting"), validators=[DataRequired(), Length(max=500)])
    submit = SubmitField(_l("Reject"))
