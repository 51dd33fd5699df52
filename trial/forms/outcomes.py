from flask_wtf import FlaskForm
from wtforms import DateField, IntegerField, StringField, SubmitField, TextAreaField
from wtforms.validators import DataRequired, InputRequired, Length, Optional


class BlindingBreakForm(FlaskForm):
    reported_on = DateField("Date", validators=[DataRequired()])
    description = TextAreaField("How was the blinding broken?", validators=[DataRequired(), Length(max=1000)])
    submit = SubmitField("Report")


def correction_form(instrument: dict, values: dict):
    class CorrectionForm(FlaskForm):
        pass
    for f in instrument["fields"]:
        setattr(CorrectionForm, f"v_{f['key']}", IntegerField(f["label"], default=values.get(f["key"]),
                                                               validators=[InputRequired() if f["required"] else Optional()]))
    CorrectionForm.reason = StringField("Reason for the correction", validators=[DataRequired(), Length(max=500)])
    CorrectionForm.submit = SubmitField("Save correction")
    return CorrectionForm()
