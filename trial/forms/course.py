from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    DateField,
    IntegerField,
    SelectField,
    SelectMultipleField,
    StringField,
    SubmitField,
    TextAreaField,
)
from wtforms.validators import DataRequired, Length, NumberRange, Optional


def session_form(techniques: list[str]):
    technique_choices = [(t, t.replace("_", " ")) for t in techniques]

    class SessionForm(FlaskForm):
        held_on = DateField("Date", validators=[DataRequired()])
        attendance = SelectField("Attendance", choices=[("attended", "Attended"), ("cancelled", "Cancelled"), ("no_show", "No show")])
        minutes = IntegerField("Minutes", validators=[Optional(), NumberRange(min=0, max=240)])
        techniques = SelectMultipleField("Techniques", choices=technique_choices)
        engagement = SelectField("Child engagement", choices=[("", "—")] + [(str(i), str(i)) for i in range(1, 6)])
        note = TextAreaField("Short note", validators=[Optional(), Length(max=1000)])
        submit = SubmitField("Log session")
    return SessionForm()


class CounsellingForm(FlaskForm):
    held_on = DateField("Date", validators=[DataRequired()])
    attended = BooleanField("Parents attended", default=True)
    note = StringField("Note", validators=[Optional(), Length(max=1000)])
    submit = SubmitField("Log counselling session")
