from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import DateField, IntegerField, SelectField, StringField, SubmitField, TextAreaField
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


class NotDoneForm(FlaskForm):
    """A form recorded as not done: the visit, the instrument and the protocol's reason (choices set
    by the view, in the page's language), and the text a reason may need."""
    visit = SelectField(_l("Visit"), validators=[DataRequired()])
    instrument = SelectField(_l("Instrument"), validators=[DataRequired()])
    reason = SelectField(_l("Reason"), validators=[DataRequired()])
    text = TextAreaField(_l("Text (required for some reasons)"), validators=[Optional(), Length(max=1000)])
    submit = SubmitField(_l("Record as not done"))


class RandomizationErrorForm(FlaskForm):
    """A randomization error (the manager's page; choices set by the view)."""
    study_id = StringField(_l("Study ID"), validators=[DataRequired(), Length(max=40)])
    kind = SelectField(_l("Kind"), validators=[DataRequired()])
    field = SelectField(_l("Stratification factor (wrong stratum only)"), validators=[Optional()])
    correct_value = SelectField(_l("Correct value (wrong stratum only)"), validators=[Optional()])
    text = TextAreaField(_l("What happened"), validators=[DataRequired(), Length(max=2000)])
    submit = SubmitField(_l("Record the error"))
