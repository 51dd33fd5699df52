"""The home page: what the logged-in user can do next."""
from __future__ import annotations

from flask import Blueprint, render_template

from trial.dashboard.service import home_summary
from trial.grants.service import count_pending
from trial.http import actor, db
from trial.outcomes.service import notifications_for

bp = Blueprint("main", __name__)


@bp.route("/")
def home():
    return render_template("main/home.html", summary=home_summary(db(), actor()),
                           notifications=notifications_for(db(), actor()), grants_waiting=count_pending(db(), actor()))
