from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import BooleanField, PasswordField, SelectField, StringField, SubmitField, TextAreaField
from wtforms.validators import DataRequired, Length

from trial.forms.mfa import SigningForm, signature_code


class DataCutForm(FlaskForm):
    label = StringField(_l("What the cut is for"), validators=[DataRequired(), Length(max=200)],
                        default=_l("Interim look"))
    formal = BooleanField(_l("A formal interim look of the protocol (it spends alpha); leave unticked for a practice "
                             "or safety-only cut"), default=False)
    submit = SubmitField(_l("Take a data cut"))


class RecommendationForm(SigningForm):
    decision = SelectField(_l("Recommendation"), choices=[
        ("continue", _l("Continue the trial unchanged")), ("modify", _l("Continue with modifications")),
        ("stop_benefit", _l("Stop: benefit shown")), ("stop_harm", _l("Stop: harm")),
        ("stop_futility", _l("Stop: futility"))])
    text = TextAreaField(_l("The committee's recommendation, in its words"), validators=[DataRequired(), Length(max=5000)])
    password = PasswordField(_l("Your password (electronic signature)"), validators=[DataRequired()])
    code = signature_code()
    submit = SubmitField(_l("Sign the recommendation"))
