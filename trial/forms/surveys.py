"""The coordinator's form to send a parents' survey (issue 28)."""
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import EmailField, HiddenField, SelectField, StringField, SubmitField
from wtforms.validators import Length, Optional

from trial.catalogue import LANGUAGES
from trial.http import plabel


def survey_form(instruments: list[dict], visits: list[dict], default_language: str):
    """The instrument (only those the parents answer), the visit (those at which one of them is
    collected), the family's language (the site's first by default), an e-mail address for the
    invitation and the reminders (optional) and the child's first name to greet the parent with
    (optional)."""
    keys = {v for i in instruments for v in i["visits"]}

    class SurveyForm(FlaskForm):
        instrument = SelectField(_l("Questionnaire"), choices=[(i["key"], plabel("instrument", i["key"]))
                                                               for i in instruments])
        visit = SelectField(_l("Visit"), choices=[(v["key"], plabel("visit", v["key"])) for v in visits
                                                  if v["key"] in keys])
        language = SelectField(_l("The family's language"), choices=list(LANGUAGES.items()), default=default_language)
        email = EmailField(_l("The family's e-mail address (optional)"), validators=[Optional(), Length(max=254)],
                           description=_l("The invitation and the reminders are sent there; without one, give the "
                                          "family the link or its QR code."))
        first_name = StringField(_l("The child's first name (optional)"), validators=[Optional(), Length(max=100)],
                                 description=_l("Shown to the parent on the questionnaire; nothing else about the "
                                                "child is."))
        submit = SubmitField(_l("Send the survey"))
    return SurveyForm()


class ConfirmForm(FlaskForm):
    """The second step of a resend or revoke (no script needed: the first press asks)."""
    confirmed = HiddenField(default="1")
    submit = SubmitField(_l("Yes, go ahead"))
