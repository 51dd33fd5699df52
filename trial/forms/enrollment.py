"""Forms built from the protocol (criteria, instruments), with its words in the page's language."""
from __future__ import annotations

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import BooleanField, DateField, IntegerField, RadioField, SelectField, StringField, SubmitField
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange, Optional

from trial.catalogue import N_, label
from trial.outcomes.service import CONFIDENCE_CHOICES, GUESS_CHOICES, GUESS_LABELS

# The outcome service's words for the allocation guess, marked here for the catalogue: they are
# translated where the form shows them (tests/test_i18n.py checks that this list follows the service).
GUESS_WORDS = (N_("Allocation guess"), N_("Confidence in the guess"), N_("Music therapy"), N_("Usual care"),
               N_("Unsure"), N_("1 (pure guess)"), N_("5 (certain)"))


def screening_form(criteria: list[dict], sites: list[tuple[str, str]]):
    """``criteria`` as :func:`trial.http.protocol_content` gives them (questions in the page's language)."""
    class ScreeningForm(FlaskForm):
        site = SelectField(_l("Site"), choices=sites, validators=[DataRequired()])
        log_number = StringField(_l("Screening-log number (optional)"), validators=[Optional(), Length(max=40)],
                                 description=_l("The number in your site's own screening log, if it keeps one."))
        screened_on = DateField(_l("Screened on"), validators=[DataRequired()])
    for c in criteria:
        setattr(ScreeningForm, f"c_{c['key']}", RadioField(c["question"], choices=[("yes", _l("Yes")), ("no", _l("No"))],
                                                           validators=[InputRequired()]))
    ScreeningForm.declined = BooleanField(_l("Family declined to take part"))
    ScreeningForm.other_reason = StringField(_l("Other reason not to enrol (optional)"),
                                             validators=[Optional(), Length(max=500)])
    ScreeningForm.submit = SubmitField(_l("Record screening"))
    return ScreeningForm()


def enroll_form(factors: list[dict]):
    class EnrollForm(FlaskForm):
        consent_date = DateField(_l("Consent date"), validators=[DataRequired()])
        date_of_birth = DateField(_l("Date of birth"), validators=[DataRequired()])
        # nothing preselected: a sex left as the first choice would be recorded without being asked
        sex = SelectField(_l("Sex"), choices=[("", "—")] + [(k, _l(label("sex", k))) for k in ("female", "male")],
                          validators=[InputRequired()])
    for f in factors:
        if f["key"] != "site":
            setattr(EnrollForm, f"s_{f['key']}", SelectField(f.get("label", f["key"]), choices=[(x, x) for x in f["levels"]]))
    EnrollForm.submit = SubmitField(_l("Enrol"))
    return EnrollForm()


def assessment_form(instrument: dict, visits: list[tuple[str, str]], with_guess: bool):
    """``instrument`` and ``visits`` with their labels in the page's language."""
    class AssessmentForm(FlaskForm):
        visit = SelectField(_l("Visit"), choices=visits)
        performed_on = DateField(_l("Performed on"), validators=[DataRequired()])
    for f in instrument["fields"]:
        # the range isolated left to right (U+2066 … U+2069), so that a right-to-left page shows 0–20, not 20–0
        label_ = f"{f['label']} (\u2066{f['min']}–{f['max']}\u2069)" if f.get("min") is not None else f["label"]
        v = [InputRequired()] if f["required"] else [Optional()]
        if f.get("min") is not None:
            v.append(NumberRange(min=f["min"], max=f["max"]))
        setattr(AssessmentForm, f"v_{f['key']}", IntegerField(label_, validators=v))
    if with_guess:  # only at the visits where the protocol takes the assessor's guess
        AssessmentForm.allocation_guess = SelectField(_l(GUESS_LABELS["allocation_guess"]),
                                                      choices=[("", "—")] + [(k, _l(v)) for k, v in GUESS_CHOICES.items()],
                                                      description=_l("Which arm do you think the child is in?"))
        AssessmentForm.guess_confidence = SelectField(_l(GUESS_LABELS["guess_confidence"]),
                                                      choices=[("", "—")] + [(str(k), _l(v)) for k, v in CONFIDENCE_CHOICES.items()],
                                                      description=_l("How sure are you of the guess? (optional)"))
    AssessmentForm.confirm_values = BooleanField(_l("A value is outside the range the protocol expects: save it "
                                                    "anyway (a query asks the site to confirm it)"))
    AssessmentForm.confirm_window = BooleanField(_l("The date is outside the visit's window: save it anyway "
                                                    "(it is recorded as a deviation and a query asks the site to confirm it)"))
    AssessmentForm.submit = SubmitField(_l("Save assessment"))
    return AssessmentForm()


class RandomizeForm(FlaskForm):
    confirm = BooleanField(_l("I confirm the child is eligible, has consented, and should be randomized now. "
                              "The allocation is final."), validators=[DataRequired()])
    idempotency_key = StringField(validators=[Optional(), Length(max=200)])
    submit = SubmitField(_l("Randomize"))
