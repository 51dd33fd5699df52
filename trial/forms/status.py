from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import DateField, RadioField, SelectField, StringField, SubmitField, TextAreaField
from wtforms.validators import DataRequired, Length, Optional

from trial.catalogue import label
from trial.consent.withdrawal import DATA_USES, SCOPES
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


class WithdrawalForm(FlaskForm):
    """A family's withdrawal of consent (issue 28), its scope and the use of the data collected in
    plain words."""
    on = DateField(_l("Withdrawn from (date)"), validators=[DataRequired()],
                   description=_l("The day the family told you; nothing is expected of them from this day on."))
    scope = RadioField(_l("What the family no longer wants"), validators=[DataRequired()],
                       choices=[(k, _l(label("withdrawal_scope", k))) for k in SCOPES],
                       description=_l("Stopping the therapy keeps the child in the assessments; stopping the assessments "
                                      "keeps the therapy; stopping everything ends the child's participation."))
    data_use = RadioField(_l("The data already collected"), validators=[DataRequired()], default="keep",
                          choices=[(k, _l(label("data_use", k))) for k in DATA_USES],
                          description=_l("Nothing is deleted now: the choice is recorded and passed on to the "
                                         "statistician."))
    text = TextAreaField(_l("Notes (optional)"), validators=[Optional(), Length(max=2000)])
    submit = SubmitField(_l("Record the withdrawal"))
