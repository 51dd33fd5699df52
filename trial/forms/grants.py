from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, Length


class CountersignForm(FlaskForm):
    meaning = StringField("Meaning of your signature", validators=[DataRequired(), Length(max=500)],
                          default="I countersign this role grant: I have checked that this person should hold this role.")
    password = PasswordField("Your password (electronic signature)", validators=[DataRequired()])
    submit = SubmitField("Countersign")


class RejectForm(FlaskForm):
    reason = StringField("Reason for rejecting", validators=[DataRequired(), Length(max=500)])
    submit = SubmitField("Reject")
