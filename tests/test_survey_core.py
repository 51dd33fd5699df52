"""Parents' surveys, the service (issue 28): send, open, submit as the visit's assessment with the
parent's provenance, the refusals of the parent's side (unknown 404, answered 409, expired or revoked
410), the reminders' link, the rate limits, a withdrawal revoking the links."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from tests.helpers import CLI, backdate_randomization, randomized_before
from trial.audit.models import AuditRecord
from trial.consent import withdrawal
from trial.errors import Conflict, NotFound, ValidationError
from trial.participants.models import Assessment
from trial.surveys import service as surveys

TODAY = dt.date.today()
SEED = bytes(range(32))


@pytest.fixture()
def child(world, db):
    """A child at AT01 randomized 60 days ago: its 2-month window is open today."""
    world.open(SEED)
    r = TODAY - dt.timedelta(days=60)
    p, _ = randomized_before(world, db, r)
    backdate_randomization(db, dt.datetime.combine(r, dt.time(10, 0)), p.id)
    return p


def send(db, p, **kw):
    s, token = surveys.send_survey(db, CLI, p.study_id, {"visit": "month2", "instrument": "srs2", "language": "de", **kw})
    db.commit()
    return s, token


def test_a_survey_is_answered_once_and_becomes_the_assessment_with_the_parents_provenance(world, db, child):
    s, token = send(db, child, first_name="Anna")
    assert s.status == "sent" and len(token) == 43 and s.token_hash == surveys.token_hash(token)
    assert token not in (s.token_hash, s.token_nonce)
    view = surveys.open_survey(db, token, "10.0.0.1")
    db.commit()
    assert view["first_name"] == "Anna" and view["language"] == "de" and [f["key"] for f in view["fields"]] == ["total_t"]
    assert s.status == "opened"
    with pytest.raises(ValidationError) as e:
        surveys.submit_survey(db, token, {"total_t": 200}, "10.0.0.1")
    assert "values.total_t" in e.value.fields
    db.rollback()
    surveys.submit_survey(db, token, {"total_t": 61}, "10.0.0.1")
    db.commit()
    a = db.execute(select(Assessment).where(Assessment.participant_id == child.id, Assessment.visit == "month2",
                                            Assessment.instrument == "srs2")).scalar_one()
    assert a.values == {"total_t": 61} and a.entered_by_id is None
    rec = db.execute(select(AuditRecord).where(AuditRecord.entity == "assessment", AuditRecord.entity_id == str(a.id))
                     ).scalars().first()
    assert rec.actor == surveys.PROVENANCE and rec.reason == f"survey {s.id}"
    db.refresh(s)
    assert s.status == "completed" and s.assessment_id == a.id
    with pytest.raises(surveys.AlreadySubmitted):
        surveys.submit_survey(db, token, {"total_t": 62}, "10.0.0.1")
    db.rollback()
    with pytest.raises(NotFound):
        surveys.open_survey(db, "x" * 43, "10.0.0.1")


def test_revoked_expired_and_withdrawn_links_are_gone(world, db, child):
    s, token = send(db, child)
    with pytest.raises(Conflict):  # one link of a form at a time
        send(db, child)
    db.rollback()
    surveys.revoke_survey(db, CLI, s.id)
    db.commit()
    with pytest.raises(surveys.SurveyGone):
        surveys.open_survey(db, token, None)
    db.rollback()
    s2, token2 = send(db, child)
    s2.expires_at = dt.datetime(2000, 1, 1)
    db.commit()
    assert surveys.status_of(s2) == "expired"
    with pytest.raises(surveys.SurveyGone):
        surveys.submit_survey(db, token2, {"total_t": 60}, None)
    db.rollback()
    s3, _token3 = send(db, child)
    withdrawal.withdraw_consent(db, CLI, child.study_id, {"on": TODAY.isoformat(), "scope": "follow_up",
                                                          "data_use": "keep"})
    db.commit()
    db.refresh(s3)
    assert s3.status == "revoked"


def test_resend_replaces_the_link_and_the_reminder_repeats_the_current_one(world, db, child):
    s, token = send(db, child)
    assert surveys.token_for_reminder(s) == token
    s, token2 = surveys.resend_survey(db, CLI, s.id)
    db.commit()
    assert token2 != token and surveys.token_for_reminder(s) == token2
    with pytest.raises(NotFound):
        surveys.open_survey(db, token, None)


def test_an_address_trying_unknown_links_is_held(world, db, child, monkeypatch):
    monkeypatch.setenv("TRIAL_SURVEY_ADDRESS_LIMIT", "3")
    from trial import settings
    assert settings.current().survey_address_limit == 3  # (settings are read again whenever a TRIAL_ variable changes)
    _s, token = send(db, child)
    for i in range(3):
        with pytest.raises(NotFound):
            surveys.open_survey(db, f"{i}" * 43, "10.9.9.9")
        db.rollback()
        surveys.note_attempt(db, f"{i}" * 43, "10.9.9.9", "unknown")
        db.commit()
    with pytest.raises(surveys.TooManyAttempts):
        surveys.open_survey(db, "z" * 43, "10.9.9.9")
    db.rollback()
    surveys.open_survey(db, token, "10.9.9.9")  # a valid link is never held by its address (a shared NAT)
    db.commit()
    with pytest.raises(NotFound):
        surveys.open_survey(db, "z" * 43, "10.1.1.1")  # another address is not held
    db.rollback()
