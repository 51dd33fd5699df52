from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import BooleanField, PasswordField, SelectField, StringField, SubmitField
from wtforms.validators import DataRequired, Length


class LockForm(FlaskForm):
    kind = SelectField(_l("Lock"), choices=[("soft", _l("Soft lock: freeze data entry")),
                                            ("hard", _l("Hard lock: freeze and build the locked datasets"))])
    meaning = StringField(_l("Meaning of your signature"), validators=[DataRequired(), Length(max=500)],
                          default=_l("I approve locking the trial database; the data are complete and final."))
    password = PasswordField(_l("Your password (electronic signature)"), validators=[DataRequired()])
    accept_open_queries = BooleanField(_l("Sign the hard lock although queries are not closed (they are listed with "
                                          "the signature and in the bundle)"))
    submit = SubmitField(_l("Sign and lock"))


class LiftForm(FlaskForm):
    reason = StringField(_l("Reason for lifting the lock"), validators=[DataRequired(), Length(max=500)])
    password = PasswordField(_l("Your password (electronic signature)"), validators=[DataRequired()])
    # required in the browser, and checked by the page (trial.views.lock) after the role check: a
    # user who may not lift learns that, not that a box is missing
    confirm = BooleanField(_l("I understand that lifting the lock reopens data entry at every site."),
                           render_kw={"required": True})
    submit = SubmitField(_l("Sign and lift"))


class UnblindForm(FlaskForm):
    meaning = StringField(_l("Meaning of your signature"), validators=[DataRequired(), Length(max=500)],
                          default=_l("I authorise unblinding of the trial after the final database lock."))
    password = PasswordField(_l("Your password (electronic signature)"), validators=[DataRequired()])
    confirm = BooleanField(_l("I understand that unblinding reveals every child's arm and cannot be taken back."),
                           render_kw={"required": True})
    submit = SubmitField(_l("Sign and unblind"))
