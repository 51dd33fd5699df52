from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    DateField,
    DateTimeLocalField,
    HiddenField,
    IntegerField,
    SelectField,
    SelectMultipleField,
    StringField,
    SubmitField,
    TextAreaField,
)
from wtforms.validators import DataRequired, Length, Optional
from wtforms.widgets import CheckboxInput, ListWidget

from trial.catalogue import label
from trial.safety.models import EXPECTEDNESS, OUTCOMES, RELATEDNESS, REPORTED_TO, SERIOUSNESS, SEVERITIES


def _choices(kind: str, values):
    """(key, word) pairs, the words from trial.catalogue in the page's language."""
    return [(v, _l(label(kind, v))) for v in values]


def _unasked(kind: str, values):
    """The choices with an empty first one: the form asks, nothing is chosen for the user."""
    return [("", "—")] + _choices(kind, values)


class RaiseQueryForm(FlaskForm):
    kind = HiddenField()
    target_id = HiddenField()
    # the form's fields by their labels (an assessment's: the instrument's, in the page's language);
    # the choices are set by the view for the record queried
    field = SelectField(_l("Field (optional)"), choices=[("", "—")], default="", validate_choice=True)
    text = TextAreaField(_l("Query"), validators=[DataRequired(), Length(max=2000)])
    submit = SubmitField(_l("Raise the query"))


def respond_form(fields: list[dict] | None = None, values: dict | None = None):
    """An answer; for a query on an entered assessment, the values may be corrected with it
    (``fields`` with their labels in the page's language)."""
    class RespondForm(FlaskForm):
        text = TextAreaField(_l("Answer"), validators=[DataRequired(), Length(max=2000)])
    for f in fields or []:
        setattr(RespondForm, f"v_{f['key']}", IntegerField(_l("%(field)s (corrected value, optional)", field=f["label"]),
                                                           default=(values or {}).get(f["key"]), validators=[Optional()]))
    RespondForm.correct = BooleanField(_l("Correct the values above with this answer"))
    RespondForm.submit = SubmitField(_l("Answer"))
    return RespondForm()


class QueryStateForm(FlaskForm):
    text = StringField(_l("Note (optional)"), validators=[Optional(), Length(max=2000)])
    submit = SubmitField(_l("Save"))


class CloseQueryForm(QueryStateForm):
    submit = SubmitField(_l("Close the query"))


class ReopenQueryForm(QueryStateForm):
    text = StringField(_l("What is still missing (optional)"), validators=[Optional(), Length(max=2000)])
    submit = SubmitField(_l("Reopen the query"))


class AdverseEventForm(FlaskForm):
    term = StringField(_l("Adverse event (term)"), validators=[DataRequired(), Length(max=200)])
    onset = DateField(_l("Onset"), validators=[DataRequired()])
    # nothing preselected (severity, relatedness, outcome): a first choice left as it was would be
    # recorded as the coordinator's judgement without being asked
    severity = SelectField(_l("Severity"), choices=_unasked("severity", SEVERITIES), validators=[DataRequired()])
    serious = BooleanField(_l("Serious"))
    seriousness = SelectMultipleField(_l("Seriousness criteria (for a serious event)"),
                                      choices=_choices("seriousness", SERIOUSNESS),
                                      option_widget=CheckboxInput(), widget=ListWidget(prefix_label=False))
    relatedness = SelectField(_l("Relatedness to the intervention"), choices=_unasked("relatedness", RELATEDNESS),
                              validators=[DataRequired()])
    expectedness = SelectField(_l("Expectedness"),
                               choices=[("", _l("Not assessed"))] + _choices("expectedness", EXPECTEDNESS))
    outcome = SelectField(_l("Outcome"), choices=_unasked("ae_outcome", OUTCOMES), validators=[DataRequired()])
    resolved_on = DateField(_l("Resolved on (the date of death for a fatal outcome)"), validators=[Optional()])
    description = TextAreaField(_l("Description"), validators=[Optional(), Length(max=4000)])
    submit = SubmitField(_l("Record the adverse event"))


class FollowUpForm(FlaskForm):
    on = DateField(_l("Date"), validators=[DataRequired()])
    outcome = SelectField(_l("Outcome"), choices=_unasked("ae_outcome", OUTCOMES), validators=[DataRequired()])
    resolved_on = DateField(_l("Resolved on (the date of death for a fatal outcome)"), validators=[Optional()])
    text = TextAreaField(_l("Follow-up"), validators=[DataRequired(), Length(max=4000)])
    submit = SubmitField(_l("Record the follow-up"))


class SaeReportForm(FlaskForm):
    """A serious adverse event reported onwards: to whom, when (the date and time at the site, in
    its time zone: the view names it), the recipient's reference."""
    reported_to = SelectField(_l("Reported to"), choices=[("", "—")] + _choices("reported_to", REPORTED_TO),
                              validators=[DataRequired()])
    reported_at = DateTimeLocalField(_l("Reported at"), format=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"],
                                     validators=[DataRequired()])
    reference = StringField(_l("Reference number"), validators=[DataRequired(), Length(max=80)])
    submit = SubmitField(_l("Record the report"))


class AcknowledgeForm(SaeReportForm):
    """The first report, which acknowledges the event and stops its 24-hour clock."""
    submit = SubmitField(_l("Acknowledge: the event is reported"))


class VerifyForm(FlaskForm):
    kind = HiddenField(validators=[DataRequired()])
    target_id = HiddenField()
    submit = SubmitField(_l("Mark verified"))


class DismissForm(FlaskForm):
    submit = SubmitField(_l("Dismiss"))
