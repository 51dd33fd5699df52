"""Forms built from the protocol (criteria, instruments)."""
from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import BooleanField, DateField, IntegerField, RadioField, SelectField, StringField, SubmitField
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange, Optional

from trial.outcomes.service import CONFIDENCE_CHOICES, GUESS_CHOICES, GUESS_LABELS


def screening_form(criteria: list[dict], sites: list[tuple[str, str]]):
    class ScreeningForm(FlaskForm):
        site = SelectField("Site", choices=sites, validators=[DataRequired()])
        screened_on = DateField("Screened on", validators=[DataRequired()])
    for c in criteria:
        setattr(ScreeningForm, f"c_{c['key']}", RadioField(c["question"], choices=[("yes", "Yes"), ("no", "No")],
                                                           validators=[InputRequired()]))
    ScreeningForm.declined = BooleanField("Family declined to take part")
    ScreeningForm.other_reason = StringField("Other reason not to enrol (optional)", validators=[Optional(), Length(max=500)])
    ScreeningForm.submit = SubmitField("Record screening")
    return ScreeningForm()


def enroll_form(factors: list[dict]):
    class EnrollForm(FlaskForm):
        consent_date = DateField("Consent date", validators=[DataRequired()])
        date_of_birth = DateField("Date of birth", validators=[DataRequired()])
        sex = SelectField("Sex", choices=[("female", "Female"), ("male", "Male")])
    for f in factors:
        if f["key"] != "site":
            setattr(EnrollForm, f"s_{f['key']}", SelectField(f.get("label", f["key"]), choices=[(x, x) for x in f["levels"]]))
    EnrollForm.submit = SubmitField("Enrol")
    return EnrollForm()


def assessment_form(instrument: dict, visits: list[tuple[str, str]], with_guess: bool):
    class AssessmentForm(FlaskForm):
        visit = SelectField("Visit", choices=visits)
        performed_on = DateField("Performed on", validators=[DataRequired()])
    for f in instrument["fields"]:
        label = f"{f['label']} ({f['min']}–{f['max']})" if f.get("min") is not None else f["label"]
        v = [InputRequired()] if f["required"] else [Optional()]
        if f.get("min") is not None:
            v.append(NumberRange(min=f["min"], max=f["max"]))
        setattr(AssessmentForm, f"v_{f['key']}", IntegerField(label, validators=v))
    if with_guess:  # only at the visits where the protocol takes the assessor's guess
        AssessmentForm.allocation_guess = SelectField(GUESS_LABELS["allocation_guess"],
                                                      choices=[("", "—")] + list(GUESS_CHOICES.items()),
                                                      description="Which arm do you think the child is in?")
        AssessmentForm.guess_confidence = SelectField(GUESS_LABELS["guess_confidence"],
                                                      choices=[("", "—")] + [(str(k), v) for k, v in CONFIDENCE_CHOICES.items()],
                                                      description="Required with a guess.")
    AssessmentForm.confirm_window = BooleanField("The date is outside the visit's window: save it anyway "
                                                 "(it is recorded as a deviation and a query asks the site to confirm it)")
    AssessmentForm.submit = SubmitField("Save assessment")
    return AssessmentForm()


class RandomizeForm(FlaskForm):
    confirm = BooleanField("I confirm the child is eligible, has consented, and should be randomized now. "
                           "The allocation is final.", validators=[DataRequired()])
    idempotency_key = StringField(validators=[Optional(), Length(max=200)])
    submit = SubmitField("Randomize")

