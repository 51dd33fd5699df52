from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import DateField, SelectField, StringField, SubmitField
from wtforms.validators import DataRequired, Length

from trial.catalogue import label
from trial.participants.models import EVENT_TYPES
from trial.status.service import DEVIATION_CATEGORIES


class EventForm(FlaskForm):
    type = SelectField(_l("Event"), choices=[(t, _l(label("event", t))) for t in EVENT_TYPES])
    on = DateField(_l("Date"), validators=[DataRequired()])
    reason = StringField(_l("Reason"), validators=[DataRequired(), Length(max=500)])
    submit = SubmitField(_l("Record event"))


class DeviationForm(FlaskForm):
    category = SelectField(_l("Category"), choices=[(c, _l(label("deviation", c))) for c in DEVIATION_CATEGORIES])
    on = DateField(_l("Date"), validators=[DataRequired()])
    description = StringField(_l("Description"), validators=[DataRequired(), Length(max=1000)])
    submit = SubmitField(_l("Record deviation"))
