"""The access review: the manager's signature over the accounts as reviewed, and deactivating one."""
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import BooleanField, PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, Length

from trial.forms.mfa import SigningForm, signature_code


class ReviewForm(SigningForm):
    meaning = StringField(_l("Meaning of your signature"), validators=[DataRequired(), Length(max=500)],
                          default=_l("I have reviewed every account listed: each holds only the roles and sites it "
                                     "needs, and the accounts that should no longer have access are deactivated."))
    password = PasswordField(_l("Your password (electronic signature)"), validators=[DataRequired()])
    code = signature_code()
    submit = SubmitField(_l("Sign the review"))


class DeactivateForm(FlaskForm):
    # required in the browser, and checked by the page (trial.views.access) too
    confirm = BooleanField(_l("Confirm"), render_kw={"required": True})
    submit = SubmitField(_l("Deactivate"))
