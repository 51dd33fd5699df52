from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import BooleanField, PasswordField, SelectField, StringField, SubmitField
from wtforms.validators import DataRequired, Length

from trial.forms.mfa import SigningForm, signature_code


class LockForm(SigningForm):
    kind = SelectField(_l("Lock"), choices=[("soft", _l("Soft lock: freeze data entry")),
                                            ("hard", _l("Hard lock: freeze and build the locked datasets"))])
    meaning = StringField(_l("Meaning of your signature"), validators=[DataRequired(), Length(max=500)],
                          default=_l("I approve this lock of the trial database."))
    password = PasswordField(_l("Your password (electronic signature)"), validators=[DataRequired()])
    code = signature_code()
    accept_open_queries = BooleanField(_l("Sign the hard lock although queries are not closed (they are listed with "
                                          "the signature and in the bundle)"))
    # shown only while casebooks wait for their investigator's signature (trial.views.lock)
    accept_unsigned = BooleanField(_l("Sign the hard lock although casebooks wait for their investigator's signature "
                                      "(recorded with the signature and in the bundle's README)"))
    submit = SubmitField(_l("Sign and lock"))


class LiftForm(SigningForm):
    reason = StringField(_l("Reason for lifting the lock"), validators=[DataRequired(), Length(max=500)])
    password = PasswordField(_l("Your password (electronic signature)"), validators=[DataRequired()])
    code = signature_code()
    # required in the browser, and checked by the page (trial.views.lock) after the role check: a
    # user who may not lift learns that, not that a box is missing
    confirm = BooleanField(_l("I understand that lifting the lock reopens data entry at every site."),
                           render_kw={"required": True})
    submit = SubmitField(_l("Sign and lift"))


class UnblindForm(SigningForm):
    meaning = StringField(_l("Meaning of your signature"), validators=[DataRequired(), Length(max=500)],
                          default=_l("I authorise unblinding of the trial after the final database lock."))
    password = PasswordField(_l("Your password (electronic signature)"), validators=[DataRequired()])
    code = signature_code()
    confirm = BooleanField(_l("I understand that unblinding reveals every child's arm and cannot be taken back."),
                           render_kw={"required": True})
    # the manager's signature asks; the trial is unblinded when the second person countersigns
    submit = SubmitField(_l("Sign and ask to unblind"))


class CountersignUnblindingForm(SigningForm):
    meaning = StringField(_l("Meaning of your signature"), validators=[DataRequired(), Length(max=500)],
                          default=_l("I countersign the unblinding of the trial after the final database lock."))
    password = PasswordField(_l("Your password (electronic signature)"), validators=[DataRequired()])
    code = signature_code()
    confirm = BooleanField(_l("I understand that countersigning unblinds the trial now: every child's arm is revealed, "
                              "and it cannot be taken back."), render_kw={"required": True})
    submit = SubmitField(_l("Countersign and unblind"))


class WithdrawUnblindingForm(FlaskForm):
    reason = StringField(_l("Reason for withdrawing the request"), validators=[DataRequired(), Length(max=500)])
    submit = SubmitField(_l("Withdraw the request"))


class AddendumForm(SigningForm):
    reason = StringField(_l("What must be corrected, and why"), validators=[DataRequired(), Length(max=500)])
    password = PasswordField(_l("Your password (electronic signature)"), validators=[DataRequired()])
    code = signature_code()
    confirm = BooleanField(_l("I understand that the addendum reopens data entry at every site after the unblinding, "
                              "until a new hard lock closes it."), render_kw={"required": True})
    submit = SubmitField(_l("Sign and open the addendum"))


class SharingForm(FlaskForm):
    """Ask for the de-identified sharing bundle of the hard lock in force (after the unblinding)."""
    submit = SubmitField(_l("Make the de-identified sharing bundle"))
