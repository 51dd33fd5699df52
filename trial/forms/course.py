from flask_babel import lazy_gettext as _l
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

from trial.catalogue import label
from trial.http import plabel


def session_form(techniques: list[str], correction: bool = False, data: dict | None = None):
    """A session: logged, or (``correction``) corrected with a required reason, prefilled with
    ``data`` (the session as recorded)."""
    technique_choices = [(t, plabel("technique", t)) for t in techniques]

    class SessionForm(FlaskForm):
        held_on = DateField(_l("Date"), validators=[DataRequired()])
        attendance = SelectField(_l("Attendance"), choices=[(k, _l(label("attendance", k)))
                                                            for k in ("attended", "cancelled", "no_show")])
        minutes = IntegerField(_l("Minutes"), validators=[Optional(), NumberRange(min=0, max=240)],
                               description=_l("Required for an attended session; empty when it did not take place."))
        techniques = SelectMultipleField(_l("Techniques"), choices=technique_choices)
        engagement = SelectField(_l("Child engagement"), choices=[("", "—")] + [(str(i), str(i)) for i in range(1, 6)])
        note = TextAreaField(_l("Short note"), validators=[Optional(), Length(max=1000)])
    if correction:
        SessionForm.reason = StringField(_l("Reason for the correction"), validators=[DataRequired(), Length(max=500)])
        SessionForm.submit = SubmitField(_l("Save correction"))
    else:
        SessionForm.submit = SubmitField(_l("Log session"))
    if data is not None:
        data = {**data, "engagement": str(data["engagement"]) if data.get("engagement") is not None else ""}
    return SessionForm(data=data)


def session_data(form) -> dict:
    """The session's fields as the service takes them."""
    return {"held_on": form.held_on.data, "attendance": form.attendance.data, "minutes": form.minutes.data,
            "techniques": form.techniques.data or [], "note": form.note.data or None,
            "engagement": int(form.engagement.data) if form.engagement.data else None}


class CounsellingForm(FlaskForm):
    held_on = DateField(_l("Date"), validators=[DataRequired()])
    attended = BooleanField(_l("Parents attended"), default=True)
    note = StringField(_l("Note"), validators=[Optional(), Length(max=1000)])
    submit = SubmitField(_l("Log counselling session"))
