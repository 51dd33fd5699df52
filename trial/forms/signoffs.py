from flask_babel import lazy_gettext as _l
from wtforms import HiddenField, PasswordField, SubmitField, TextAreaField
from wtforms.validators import DataRequired, Length

from trial.forms.mfa import SigningForm, signature_code


class SignoffForm(SigningForm):
    """The investigator's signature of a casebook at a milestone (trial.oversight.signoff)."""
    milestone = HiddenField(validators=[DataRequired()])
    back = HiddenField()  # "worklist": back to the worklist after signing (else the participant's page)
    # (a text area: the whole default text shows; a one-line field cut it off)
    meaning = TextAreaField(_l("Meaning of your signature"), validators=[DataRequired(), Length(max=500)],
                            render_kw={"rows": 4},
                          default=_l("I have reviewed this casebook and confirm that its data are complete, accurate "
                                     "and attributable, as the investigator responsible for this participant at this "
                                     "site."))
    password = PasswordField(_l("Your password (electronic signature)"), validators=[DataRequired()])
    code = signature_code()
    submit = SubmitField(_l("Sign the casebook"))
