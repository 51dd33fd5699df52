from flask_wtf import FlaskForm
from wtforms import BooleanField, PasswordField, SelectField, StringField, SubmitField
from wtforms.validators import DataRequired, Length


class LockForm(FlaskForm):
    kind = SelectField("Lock", choices=[("soft", "Soft lock: freeze data entry"), ("hard", "Hard lock: freeze and build the locked datasets")])
    meaning = StringField("Meaning of your signature", validators=[DataRequired(), Length(max=500)],
                          default="I approve locking the trial database; the data are complete and final.")
    password = PasswordField("Your password (electronic signature)", validators=[DataRequired()])
    accept_open_queries = BooleanField("Sign the hard lock although queries are not closed (they are listed with "
                                       "the signature and in the bundle)")
    submit = SubmitField("Sign and lock")


class LiftForm(FlaskForm):
    reason = StringField("Reason for lifting the lock", validators=[DataRequired(), Length(max=500)])
    password = PasswordField("Your password (electronic signature)", validators=[DataRequired()])
    submit = SubmitField("Sign and lift")


class UnblindForm(FlaskForm):
    meaning = StringField("Meaning of your signature", validators=[DataRequired(), Length(max=500)],
                          default="I authorise unblinding of the trial after the final database lock.")
    password = PasswordField("Your password (electronic signature)", validators=[DataRequired()])
    submit = SubmitField("Sign and unblind")
