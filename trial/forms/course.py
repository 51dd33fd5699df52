from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    DateField,
    IntegerField,
    RadioField,
    SelectField,
    SelectMultipleField,
    StringField,
    SubmitField,
    TextAreaField,
)
from wtforms.validators import DataRequired, Length, NumberRange, Optional

from trial.catalogue import label
from trial.http import plabel


def session_form(techniques: list[str], correction: bool = False, data: dict | None = None, goals: list[str] | None = None,
                 video: bool = False):
    """A session: logged, or (``correction``) corrected with a required reason, prefilled with
    ``data`` (the session as recorded). ``goals``: the child's goals, offered as the ones the
    session worked on. ``video``: the family gave the consent option of video recording, so the
    form asks whether the session was recorded (issue 28)."""
    technique_choices = [(t, plabel("technique", t)) for t in techniques]
    goal_choices = [(g, plabel("goal", g)) for g in goals or []]

    class SessionForm(FlaskForm):
        held_on = DateField(_l("Date"), validators=[DataRequired()])
        attendance = SelectField(_l("Attendance"), choices=[(k, _l(label("attendance", k)))
                                                            for k in ("attended", "cancelled", "no_show")])
        minutes = IntegerField(_l("Minutes"), validators=[Optional(), NumberRange(min=0, max=240)],
                               description=_l("Required for an attended session; empty when it did not take place."))
        techniques = SelectMultipleField(_l("Techniques"), choices=technique_choices)
        present = SelectField(_l("Present"), validate_choice=False, choices=[("", "—"), ("child", _l("The child alone")),
                                                      ("child_and_parent", _l("The child with a parent"))])
        goals = SelectMultipleField(_l("Goals worked on"), choices=goal_choices, validate_choice=False,
                                    description=_l("The child's goals this session worked on (set after the first session)."))
        engagement = SelectField(_l("Child engagement"), choices=[("", "—")] + [(str(i), str(i)) for i in range(1, 6)])
        note = TextAreaField(_l("Short note"), validators=[Optional(), Length(max=1000)])
    if video and not correction:
        SessionForm.video_recorded = BooleanField(_l("Video-recorded"), description=_l(
            "The family consented to video recording; tick if this session was recorded (recorded sessions can be "
            "drawn for the fidelity ratings)."))
    if correction:
        SessionForm.reason = StringField(_l("Reason for the correction"), validators=[DataRequired(), Length(max=500)])
        SessionForm.submit = SubmitField(_l("Save correction"))
    else:
        SessionForm.submit = SubmitField(_l("Log session"))
    if data is not None:
        data = {**data, "engagement": str(data["engagement"]) if data.get("engagement") is not None else "",
                "present": data.get("present") or ""}
    return SessionForm(data=data)


def session_data(form) -> dict:
    """The session's fields as the service takes them."""
    return {"held_on": form.held_on.data, "attendance": form.attendance.data, "minutes": form.minutes.data,
            "techniques": form.techniques.data or [], "note": form.note.data or None,
            "engagement": int(form.engagement.data) if form.engagement.data else None,
            "present": form.present.data or None, "goals": form.goals.data or [],
            **({"video_recorded": bool(form.video_recorded.data)} if hasattr(form, "video_recorded") else {})}


class CounsellingForm(FlaskForm):
    held_on = DateField(_l("Date"), validators=[DataRequired()])
    attended = BooleanField(_l("Parents attended"), default=True)
    note = StringField(_l("Note"), validators=[Optional(), Length(max=1000)])
    submit = SubmitField(_l("Log counselling session"))


def goals_form(goals: list[tuple[str, str]]):
    """The child's goals after the first session: a description for each goal the therapist picks."""

    class GoalsForm(FlaskForm):
        submit = SubmitField(_l("Save goals"))
    for key, words in goals:
        setattr(GoalsForm, f"pick_{key}", BooleanField(words))
        setattr(GoalsForm, f"describe_{key}", StringField(_l("What it means for this child"),
                                                          validators=[Optional(), Length(max=500)]))
    return GoalsForm()


def goals_data(form, goals: list[str]) -> dict:
    return {"goals": [{"goal": g, "description": getattr(form, f"describe_{g}").data or None}
                      for g in goals if getattr(form, f"pick_{g}").data]}


class GoalRevisionForm(FlaskForm):
    description = StringField(_l("Description"), validators=[Optional(), Length(max=500)])
    active = BooleanField(_l("Still pursued"))
    reason = StringField(_l("Reason for the revision"), validators=[DataRequired(), Length(max=500)])
    submit = SubmitField(_l("Save revision"))


def rating_form(items: list[tuple[str, str]], low: int, high: int):
    """A fidelity rating: one radio group per item of the protocol's scale."""

    class RatingForm(FlaskForm):
        note = TextAreaField(_l("Note"), validators=[Optional(), Length(max=1000)])
        submit = SubmitField(_l("Save rating"))
    for key, words in items:
        setattr(RatingForm, f"item_{key}", RadioField(words, choices=[(str(i), str(i)) for i in range(low, high + 1)],
                                                      validators=[DataRequired()]))
    return RatingForm()


class CredentialForm(FlaskForm):
    kind = SelectField(_l("Credential"), choices=[])
    number = StringField(_l("Number"), validators=[DataRequired(), Length(max=64)])
    issuer = StringField(_l("Issuing body"), validators=[Optional(), Length(max=200)],
                         description=_l("Empty: the body the protocol names for this credential."))
    valid_from = DateField(_l("Valid from"), validators=[Optional()])
    valid_to = DateField(_l("Valid to"), validators=[DataRequired()])
    submit = SubmitField(_l("Record credential"))
