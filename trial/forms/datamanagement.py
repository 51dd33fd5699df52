from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    DateField,
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

from trial.safety.models import EXPECTEDNESS, OUTCOMES, RELATEDNESS, SERIOUSNESS, SEVERITIES


def _choices(values):
    return [(v, v.replace("_", " ")) for v in values]


class RaiseQueryForm(FlaskForm):
    kind = HiddenField()
    target_id = HiddenField()
    field = StringField("Field (optional)", validators=[Optional(), Length(max=64)])
    text = TextAreaField("Query", validators=[DataRequired(), Length(max=2000)])
    submit = SubmitField("Raise the query")


def respond_form(fields: list[dict] | None = None, values: dict | None = None):
    """An answer; for a query on an entered assessment, the values may be corrected with it."""
    class RespondForm(FlaskForm):
        text = TextAreaField("Answer", validators=[DataRequired(), Length(max=2000)])
    for f in fields or []:
        setattr(RespondForm, f"v_{f['key']}", IntegerField(f"{f['label']} (corrected value, optional)",
                                                           default=(values or {}).get(f["key"]), validators=[Optional()]))
    RespondForm.correct = BooleanField("Correct the values above with this answer")
    RespondForm.submit = SubmitField("Answer")
    return RespondForm()


class QueryStateForm(FlaskForm):
    text = StringField("Note (optional)", validators=[Optional(), Length(max=2000)])
    submit = SubmitField("Save")


class AdverseEventForm(FlaskForm):
    term = StringField("Adverse event (term)", validators=[DataRequired(), Length(max=200)])
    onset = DateField("Onset", validators=[DataRequired()])
    severity = SelectField("Severity", choices=_choices(SEVERITIES))
    serious = BooleanField("Serious")
    seriousness = SelectMultipleField("Seriousness criteria (for a serious event)", choices=_choices(SERIOUSNESS),
                                      option_widget=CheckboxInput(), widget=ListWidget(prefix_label=False))
    relatedness = SelectField("Relatedness to the intervention", choices=_choices(RELATEDNESS))
    expectedness = SelectField("Expectedness", choices=[("", "not assessed")] + _choices(EXPECTEDNESS))
    outcome = SelectField("Outcome", choices=_choices(OUTCOMES))
    resolved_on = DateField("Resolved on (the date of death for a fatal outcome)", validators=[Optional()])
    description = TextAreaField("Description", validators=[Optional(), Length(max=4000)])
    submit = SubmitField("Record the adverse event")


class FollowUpForm(FlaskForm):
    on = DateField("Date", validators=[DataRequired()])
    outcome = SelectField("Outcome", choices=_choices(OUTCOMES))
    resolved_on = DateField("Resolved on (the date of death for a fatal outcome)", validators=[Optional()])
    text = TextAreaField("Follow-up", validators=[DataRequired(), Length(max=4000)])
    submit = SubmitField("Record the follow-up")


class AcknowledgeForm(FlaskForm):
    submit = SubmitField("Acknowledge: the event is reported")


class VerifyForm(FlaskForm):
    kind = HiddenField(validators=[DataRequired()])
    target_id = HiddenField()
    submit = SubmitField("Mark verified")


class DismissForm(FlaskForm):
    submit = SubmitField("Dismiss")
