from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import DateField, IntegerField, StringField, SubmitField, TextAreaField
from wtforms.validators import DataRequired, InputRequired, Length, Optional


class BlindingBreakForm(FlaskForm):
    reported_on = DateField(_l("Date"), validators=[DataRequired()])
    description = TextAreaField(_l("How was the blinding broken?"), validators=[DataRequired(), Length(max=1000)])
    submit = SubmitField(_l("Report"))


def correction_form(instrument: dict, values: dict):
    """``instrument`` with its field labels in the page's language."""
    class CorrectionForm(FlaskForm):
        pass
    for f in instrument["fields"]:
        setattr(CorrectionForm, f"v_{f['key']}", IntegerField(f["label"], default=values.get(f["key"]),
                                                               validators=[InputRequired() if f["required"] else Optional()]))
    CorrectionForm.reason = StringField(_l("Reason for the correction"), validators=[DataRequired(), Length(max=500)])
    CorrectionForm.submit = SubmitField(_l("Save correction"))
    return CorrectionForm()
