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


def session_form(techniques: list[str], correction: bool = False, data: dict | None = None):
    """A session: logged, or (``correction``) corrected with a required reason, prefilled with
    ``data`` (the session as recorded)."""
    technique_choices = [(t, t.replace("_", " ")) for t in techniques]

    class SessionForm(FlaskForm):
        held_on = DateField("Date", validators=[DataRequired()])
        attendance = SelectField("Attendance", choices=[("attended", "Attended"), ("cancelled", "Cancelled"), ("no_show", "No show")])
        minutes = IntegerField("Minutes", validators=[Optional(), NumberRange(min=0, max=240)],
                               description="Required for an attended session; empty when it did not take place.")
        techniques = SelectMultipleField("Techniques", choices=technique_choices)
        engagement = SelectField("Child engagement", choices=[("", "—")] + [(str(i), str(i)) for i in range(1, 6)])
        note = TextAreaField("Short note", validators=[Optional(), Length(max=1000)])
    if correction:
        SessionForm.reason = StringField("Reason for the correction", validators=[DataRequired(), Length(max=500)])
        SessionForm.submit = SubmitField("Save correction")
    else:
        SessionForm.submit = SubmitField("Log session")
    if data is not None:
        data = {**data, "engagement": str(data["engagement"]) if data.get("engagement") is not None else ""}
    return SessionForm(data=data)


def session_data(form) -> dict:
    """The session's fields as the service takes them."""
    return {"held_on": form.held_on.data, "attendance": form.attendance.data, "minutes": form.minutes.data,
            "techniques": form.techniques.data or [], "note": form.note.data or None,
            "engagement": int(form.engagement.data) if form.engagement.data else None}


class CounsellingForm(FlaskForm):
    held_on = DateField("Date", validators=[DataRequired()])
    attended = BooleanField("Parents attended", default=True)
    note = StringField("Note", validators=[Optional(), Length(max=1000)])
    submit = SubmitField("Log counselling session")
