from flask_wtf import FlaskForm
from wtforms import DateField, SelectField, StringField, SubmitField
from wtforms.validators import DataRequired, Length

from trial.participants.models import EVENT_TYPES
from trial.status.service import DEVIATION_CATEGORIES


class EventForm(FlaskForm):
    type = SelectField("Event", choices=[(t, t.replace("_", " ")) for t in EVENT_TYPES])
    on = DateField("Date", validators=[DataRequired()])
    reason = StringField("Reason", validators=[DataRequired(), Length(max=500)])
    submit = SubmitField("Record event")


class DeviationForm(FlaskForm):
    category = SelectField("Category", choices=[(c, c.replace("_", " ")) for c in DEVIATION_CATEGORIES])
    on = DateField("Date", validators=[DataRequired()])
    description = StringField("Description", validators=[DataRequired(), Length(max=1000)])
    submit = SubmitField("Record deviation")
