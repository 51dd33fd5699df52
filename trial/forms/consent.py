from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import DateField, SelectField, SelectMultipleField, SubmitField
from wtforms.validators import DataRequired

from trial.catalogue import LANGUAGES
from trial.http import plabel


def consent_form(documents: list[dict], default_language: str):
    """A consent (or a child's assent) obtained: the document (its current version), the language
    it was read in (the site's first by default), the day, who signed, and the options given (each
    document's own; the options of another document than the one chosen are refused)."""
    option_choices = [(o["key"], f"{plabel('consent_document', d['key'])}: {plabel('consent_option', o['key'])}")
                      for d in documents for o in d.get("options", [])]

    class ConsentForm(FlaskForm):
        document = SelectField(_l("Document"), choices=[
            (d["key"], _l("%(document)s (version %(version)s)", document=plabel("consent_document", d["key"]),
                          version=d["version"])) for d in documents])
        language = SelectField(_l("Language"), choices=list(LANGUAGES.items()), default=default_language)
        signed_on = DateField(_l("Signed on"), validators=[DataRequired()])
        signer = SelectField(_l("Signed by"), choices=[("parent", _l("Parent")), ("guardian", _l("Guardian")),
                                                       ("child", _l("Child (assent)"))])
        options = SelectMultipleField(_l("Options given"), choices=option_choices,
                                      description=_l("Tick each option the family agreed to; an option left unticked "
                                                     "was declined."))
        submit = SubmitField(_l("Record consent"))
    return ConsentForm()
