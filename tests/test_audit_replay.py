"""`trial audit verify --data` over every audited table (issue 27): the trail replayed against the
rows. A trial is built once through the services, with a row in every covered table (the course,
events, deviations, adverse events with follow-ups and reports, queries and their answers, checks,
verification marks, fidelity, accounts, grants, tokens, credentials, sites, signatures, locks and
their bundles, the unblinding, an addendum, an access review); it matches its trail. Then, each
test in a transaction rolled back afterwards, whoever can write the database does what the
services would have audited, with plain SQL: one field updated, a row inserted, a row deleted;
each is named by table, id and field ("*" and why for a whole row). What the services themselves
delete, with the trail's record of it (a role ended, a grant withdrawn), is not reported; neither
is a row deleted together with a ``delete`` record."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.orm import sessionmaker

from tests.conftest import FreshDatabase, is_pg
from tests.helpers import CLI, PASSWORD, World
from tests.test_cli import Db, ok, one_line_error
from tests.test_journal import drill, rand, screened  # noqa: F401  (drill: a fixture, a restore lacking allocations)
from tests.test_lock import FIDELITY_SCORES, MEANING, SAE_REPORT, SEED, R, child, iso
from trial.audit import replay
from trial.audit import service as audit
from trial.auth import service as users
from trial.consent import service as consent
from trial.consent import withdrawal
from trial.course import service as course
from trial.credentials import service as credentials
from trial.db import Base, TrialSession
from trial.fidelity import service as fidelity
from trial.grants import review
from trial.grants import service as grants
from trial.lock import service as locks
from trial.lock import unblinding
from trial.monitoring import service as monitoring
from trial.outcomes import service as outcomes
from trial.participants.models import Assessment
from trial.queries import service as queries
from trial.randomize import journal
from trial.randomize import service as randomization
from trial.safety import service as safety
from trial.sites import service as sites
from trial.status import service as status

# the tables this issue added to the replay (the seven of its first version have their tests in
# tests/test_audit_anchors.py), and those whose rows the replay names by something else than an id
NEW_TABLES = ("deviation", "blinding_break", "counselling_session", "child_goal", "adverse_event_follow_up",
              "adverse_event_report", "data_query", "data_query_message", "source_verification", "fidelity_draw",
              "fidelity_rating", "site", "protocol_version", "randomization_design", "data_lock", "lock_bundle",
              "unblinding_request", "trial_state", "signature", "access_review", "credential", "user_account",
              "role_assignment", "role_grant", "api_token")
SPECS = {s.table: s for s in replay.TABLES}
AFTER_A_RESTORE = ("allocation_reservation",)  # rows only a reconciled restore has (its own test, below)


def day(n: int) -> str:
    return iso(R + dt.timedelta(days=n))


def _build(db) -> dict:
    """A small trial with a row in every covered table, written through the services only."""
    w = World(db, None).setup()
    w.open(SEED)
    kids = {name: child(w) for name in ("usual", "high", "high2", "low")}
    for p in kids.values():  # randomized on day R (the trail records the time: no backdating by SQL)
        randomization.randomize(db, CLI, p.study_id, at=dt.datetime.combine(R, dt.time(10, 0)))
    db.commit()
    u = w.users
    m, c, t, a, mon, st, adm = (u[k] for k in ("manager", "coordinator", "therapist", "assessor", "monitor",
                                               "statistician", "admin"))
    usual, hi, other = kids["usual"], kids["high"], kids["low"]  # their arms, by the fixed seed (tests/test_lock.py)
    # the course: sessions, goals set, given up and taken up again, parent counselling with a note
    for n in (3, 10, 17, 24):
        course.log_session(db, t, hi.study_id, {"held_on": day(n), "attendance": "attended", "minutes": 30,
                                                "techniques": ["songs"]})
    goal = course.set_goals(db, t, hi.study_id, {"goals": [{"goal": "turn_taking", "description": "waits a turn"}]})[0]
    course.revise_goal(db, t, goal.id, {"active": False, "reason": "reached"})
    course.set_goals(db, t, hi.study_id, {"goals": [{"goal": "turn_taking", "description": "waits two turns"}]})
    course.log_counselling(db, c, usual.study_id, {"held_on": day(12), "note": "the parents asked about school"})
    # events, a deviation, a blinding break
    status.record_deviation(db, c, usual.study_id, {"on": day(20), "category": "visit_out_of_window",
                                                    "description": "the month-2 visit was late"})
    outcomes.report_blinding_break(db, a, usual.study_id, {"description": "the parent mentioned the sessions"})
    # adverse events: one followed up to recovery; one acknowledged with its report, reported onwards,
    # followed up without a change and then fatally (its criterion death added, the child's death recorded)
    sae = {"severity": "severe", "serious": True, "seriousness": ["hospitalisation"], "relatedness": "not_related",
           "outcome": "recovering"}
    ae = safety.record(db, c, usual.study_id, {**sae, "term": "Febrile seizure", "onset": day(40)})
    safety.follow_up(db, c, ae.id, {"on": day(42), "outcome": "recovered", "resolved_on": day(42), "text": "home again"})
    ae2 = safety.record(db, c, other.study_id, {**sae, "term": "Pneumonia", "onset": day(45)})
    safety.acknowledge(db, m, ae2.id, SAE_REPORT)
    safety.report(db, m, ae2.id, {"reported_to": "authority", "reported_at": f"{day(48)}T11:15:00Z",
                                  "reference": "BASG-SAE-0042"})
    safety.follow_up(db, c, ae2.id, {"on": day(50), "outcome": "recovering", "text": "still in hospital"})
    safety.follow_up(db, c, ae2.id, {"on": day(55), "outcome": "fatal", "resolved_on": day(55), "text": "died"})
    # queries: answered, closed, reopened; one answered with a correction; the system's checks, one
    # closed by the system when its form was entered
    aid = db.execute(select(Assessment.id).where(Assessment.participant_id == usual.id,
                                                 Assessment.visit == "baseline")).scalar_one()
    q1 = queries.raise_query(db, m, {"study_id": usual.study_id, "on": {"kind": "participant"},
                                     "text": "Please confirm the consent date."})
    queries.respond(db, c, q1.id, {"text": "Confirmed against the signed form."})
    queries.close(db, m, q1.id, {"text": "Thank you."})
    queries.reopen(db, m, q1.id, {"text": "The scan shows another date."})
    q2 = queries.raise_query(db, m, {"study_id": usual.study_id, "on": {"kind": "assessment", "id": aid, "field": "rrb"},
                                     "text": "RRB looks high."})
    queries.respond(db, a, q2.id, {"text": "A typo.", "correction": {"values": {"rrb": 3}}})
    outcomes.check_missing_forms(db, [usual, hi])
    outcomes.record_assessment(db, a, usual.study_id, {"visit": "month5", "instrument": "ados2",
                                                       "performed_on": day(152),
                                                       "values": {"social_affect": 9, "rrb": 3, "css": 5},
                                                       "allocation_guess": "unsure", "guess_confidence": 1})
    # verification marks: one standing, one cleared by a correction
    monitoring.verify(db, mon, usual.study_id, {"on": {"kind": "participant"}})
    monitoring.verify(db, mon, usual.study_id, {"on": {"kind": "assessment", "id": aid}})
    outcomes.correct_assessment(db, a, aid, {"values": {"social_affect": 11}, "reason": "re-scored"})
    # fidelity: a draw, one session rated by a second credentialed therapist
    (draw,) = fidelity.draw(db, m)
    rater = users.create_user(db, CLI, "therapist2@example.org", "Tove", PASSWORD, [("therapist", "AT01")])
    w.credential(rater, kind="HCPC")
    fidelity.rate(db, rater, fidelity.derive(draw.seed, draw.population, draw.size)[0],
                  {"scores": FIDELITY_SCORES, "note": "attuned"})
    # accounts: an admin's new user waits for grants, one countersigned, one rejected; a role ended
    # (its row deleted) and a grant withdrawn through set_roles; renamed, a token issued and revoked,
    # deactivated (its other token revoked); an idle account; a user's own choices
    newbie = users.create_user(db, adm, "newbie@example.org", "New Bie", None, [("coordinator", "AT01"),
                                                                               ("monitor", "NO01")])
    pending = {g.role: g for g in users.pending_grants_of(db, newbie)}
    grants.approve(db, m, pending["coordinator"].id, PASSWORD, "I countersign the coordinator role.")
    grants.reject(db, m, pending["monitor"].id, "not needed at Bergen")
    users.set_roles(db, adm, newbie, [("monitor", "NO01")], reason="moved to monitoring")
    users.set_roles(db, adm, newbie, [("statistician", None)], reason="moved to the statistics team")
    users.update_user(db, adm, newbie, name="Newbie Two", reason="married")
    users.issue_token(db, CLI, newbie)
    users.update_user(db, adm, newbie, active=False, reason="left the trial")
    token = db.execute(text("SELECT id FROM api_token WHERE user_id = :u"), {"u": t.id}).scalar()
    users.revoke_token(db, adm, t, token, "laptop lost")
    users.create_user(db, CLI, "idle@example.org", "Idle", PASSWORD, [("monitor", "NO01")])
    users.set_language(db, c, "de")
    users.set_weekly_digest(db, c, False)
    cred = db.execute(text("SELECT id FROM credential WHERE user_id = :u"), {"u": rater.id}).scalar()
    credentials.revoke(db, adm, cred, "registration lapsed")
    sites.create_site(db, CLI, {"code": "DE01", "name": "Berlin", "country": "DE", "target": 10, "languages": ["de"]})
    sites.update_site(db, adm, "NO01", {"name": "Bergen sykehus", "target": 30, "languages": ["nb", "en"]},
                      reason="renamed")
    # consent (issue 28): a guardian's consent besides the parents' of enrollment; a withdrawal
    consent.record_consent(db, c, kids["high2"].study_id, {
        "document": "parental_consent", "version": "1", "language": "de", "signed_on": day(-1), "signer": "guardian",
        "options": {"video_recording": False, "future_contact": True}})
    withdrawal.withdraw_consent(db, c, kids["high2"].study_id, {"on": day(30), "scope": "intervention",
                                                                "data_use": "keep"})
    review.sign_review(db, m, PASSWORD, "I reviewed who has access to what.")
    db.commit()
    # locks: a soft lock lifted; a hard lock (queries accepted open) with its bundles; the unblinding,
    # asked and countersigned; an addendum that lifts the hard lock
    soft = locks.create_lock(db, m, "soft", "Frozen for the interim look.", PASSWORD)
    locks.lift_lock(db, m, soft.id, "The interim look is done.", PASSWORD)
    hard = locks.create_lock(db, m, "hard", MEANING, PASSWORD, accept_open_queries=True)
    db.commit()
    locks.build_now(db, CLI, hard)
    db.commit()
    req = unblinding.request_unblinding(db, m, "I authorise unblinding after the final lock.", PASSWORD)
    unblinding.countersign(db, st, req.id, "I checked the lock and countersign.", PASSWORD)
    unblinding.open_addendum(db, m, hard.id, "A transcription error found after the unblinding.", PASSWORD)
    db.commit()
    return {"soft": soft.id, "hard": hard.id, "newbie": newbie.id, "coordinator": c.id, "manager": m.id}


@pytest.fixture(scope="module")
def built():
    fresh = FreshDatabase("replay")
    try:
        db = sessionmaker(bind=fresh.engine, class_=TrialSession, expire_on_commit=False)()
        made = _build(db)
        db.close()
        yield fresh, made
    finally:
        fresh.drop()


@pytest.fixture()
def trial(built):
    """The built trial in a transaction rolled back after the test: (session, connection, ids)."""
    fresh, made = built
    conn = fresh.engine.connect()
    trans = conn.begin()
    s = sessionmaker(bind=conn, class_=TrialSession, join_transaction_mode="create_savepoint",
                     expire_on_commit=False)()
    try:
        yield s, conn, made
    finally:
        s.close()
        trans.rollback()
        conn.close()


def _attacker(conn) -> None:
    """Whoever can write the database, past its foreign keys (a row others refer to deleted): on
    PostgreSQL as the replication role does, on SQLite with the checks deferred to a commit that
    never comes (the test's transaction is rolled back)."""
    conn.execute(text("SET LOCAL session_replication_role = replica" if is_pg() else "PRAGMA defer_foreign_keys = ON"))


def _t(name: str):
    return Base.metadata.tables[name]


def _row(conn, table: str, where=None):
    t = _t(table)
    q = select(t).order_by(*t.primary_key.columns)
    if where is not None:
        q = q.where(where(t))
    row = conn.execute(q.limit(1)).first()
    assert row is not None, f"the built trial has no {table} row" + (" of that kind" if where is not None else "")
    return row


def _pk(table: str, row):
    t = _t(table)
    return [c == getattr(row, c.name) for c in t.primary_key.columns]


def _key(table: str, row) -> str:
    return SPECS[table].key_of(row) if hasattr(SPECS[table], "key_of") else str(row.id)


def _found(db) -> set[tuple[str, str, str]]:
    db.expire_all()
    return {(d.table, d.id, d.field) for d in replay.compare(db)}


def _email(conn, user_id) -> str:
    return conn.execute(text("SELECT email FROM user_account WHERE id = :i"), {"i": user_id}).scalar()


def _site(conn, site_id) -> str:
    return conn.execute(text("SELECT code FROM site WHERE id = :i"), {"i": site_id}).scalar()


def _label(conn, row) -> str:
    return f"{row.role}@{_site(conn, row.site_id)}" if row.site_id else row.role


# --- a clean trial ---------------------------------------------------------------------------------

def test_the_whole_trial_matches_its_trail_with_a_row_in_every_covered_table(trial):
    db, conn, _made = trial
    for spec in replay.TABLES:
        if spec.table not in AFTER_A_RESTORE:
            assert conn.execute(select(_t(spec.table)).limit(1)).first() is not None, f"no {spec.table} row to compare"
    assert set(NEW_TABLES) <= set(SPECS)
    assert replay.compare(db) == []
    assert audit.verify(db).ok


def test_what_the_services_delete_with_their_record_is_not_reported(trial):
    """The new user's coordinator role (countersigned) was ended by set_roles: its row is gone and
    the trail's ``roles`` says so; its grants were approved, rejected, asked again and withdrawn."""
    db, conn, made = trial
    assert conn.execute(text("SELECT count(*) FROM role_assignment WHERE user_id = :u"), {"u": made["newbie"]}).scalar() == 0
    states = conn.execute(text("SELECT status FROM role_grant WHERE user_id = :u ORDER BY id"), {"u": made["newbie"]}).scalars().all()
    assert states == ["approved", "rejected", "withdrawn", "pending"]
    assert replay.compare(db) == []


def test_a_row_deleted_with_its_delete_record_is_not_reported_and_one_put_back_is(trial):
    """The replay honours a ``delete`` record (written by the audit service, in the same
    transaction as the DELETE); a row put back after it is named."""
    db, conn, _made = trial
    t = _t("deviation")
    row = _row(conn, "deviation")
    conn.execute(delete(t).where(t.c.id == row.id))
    audit.record(db, CLI, "delete", "deviation", row.id, {"description": (row.description, None)},
                 reason="entered for the wrong child")
    db.flush()
    assert replay.compare(db) == []
    conn.execute(insert(t).values(**row._mapping))
    assert _found(db) == {("deviation", str(row.id), "*")}
    assert "deletion" in str(replay.compare(db)[0])
    # its id used again by a new row created with its records (SQLite may give a deleted row's id again)
    audit.created(db, CLI, "deviation", row.id, {"participant": db.execute(text(
        "SELECT study_id FROM participant WHERE id = :p"), {"p": row.participant_id}).scalar(), "on": row.on,
        "category": row.category, "description": row.description})
    db.flush()
    assert replay.compare(db) == []


# --- an UPDATE without its record ---------------------------------------------------------------------

def _accounts_renamed(row) -> dict:
    accounts = [dict(a) for a in row.accounts]
    accounts[0]["name"] = "Somebody Else"
    return {"accounts": accounts}


# table, which row (None: the first), the change, the field named
UPDATES = [
    ("deviation", None, lambda r: {"description": "no deviation after all"}, "description"),
    ("blinding_break", None, lambda r: {"reported_on": r.reported_on - dt.timedelta(days=1)}, "reported_on"),
    ("counselling_session", None, lambda r: {"note": "nothing was said"}, "note"),
    ("counselling_session", None, lambda r: {"attended": False}, "attended"),
    ("child_goal", None, lambda r: {"active": False}, "active"),
    ("adverse_event", lambda t: t.c.outcome == "fatal", lambda r: {"seriousness": ["hospitalisation"]}, "seriousness"),
    ("adverse_event_follow_up", None, lambda r: {"text": "nothing happened"}, "text"),
    ("adverse_event_report", None, lambda r: {"reference": "EC-0000"}, "reference"),
    ("data_query", None, lambda r: {"status": "closed"}, "status"),
    ("data_query", None, lambda r: {"target_id": 999}, "on"),
    ("data_query_message", lambda t: t.c.action == "response", lambda r: {"text": "Not confirmed."}, "text"),
    ("source_verification", lambda t: t.c.cleared_at.is_(None), lambda r: {"current_key": None}, "verified"),
    ("source_verification", lambda t: t.c.cleared_at.is_not(None), lambda r: {"cleared_at": None,
                                                                               "current_key": "assessment:1"}, "verified"),
    ("fidelity_draw", None, lambda r: {"seed": "f" * 64}, "seed"),
    ("fidelity_rating", None, lambda r: {"mean": 1.5}, "mean"),
    ("site", lambda t: t.c.code == "AT01", lambda r: {"timezone": "Europe/Oslo"}, "timezone"),
    ("site", lambda t: t.c.code == "NO01", lambda r: {"languages": ["en"]}, "languages"),
    ("consent", lambda t: t.c.signer == "guardian", lambda r: {"options": {"video_recording": True,
                                                                           "future_contact": True}}, "options"),
    ("consent", None, lambda r: {"signed_on": r.signed_on - dt.timedelta(days=1)}, "signed_on"),
    ("consent_withdrawal", None, lambda r: {"scope": "all"}, "scope"),
    ("protocol_version", None, lambda r: {"source": r.source + "\n# edited"}, "source"),
    ("randomization_design", None, lambda r: {"commitment": "0" * 64}, "commitment"),
    ("data_lock", lambda t: t.c.kind == "soft", lambda r: {"lift_reason": "never lifted"}, "lift_reason"),
    ("data_lock", lambda t: t.c.kind == "hard", lambda r: {"lifted_at": None}, "lifted_at"),
    ("lock_bundle", lambda t: t.c.variant == "blinded", lambda r: {"content": b"PK\x05\x06" + bytes(18)}, "content"),
    ("unblinding_request", None, lambda r: {"status": "withdrawn"}, "status"),
    ("trial_state", None, lambda r: {"unblinded_at": None}, "unblinded_at"),
    ("signature", None, lambda r: {"meaning": "I approve nothing."}, "meaning"),
    ("access_review", None, _accounts_renamed, "accounts_sha256"),
    ("credential", lambda t: t.c.revoked_at.is_(None), lambda r: {"valid_to": r.valid_to + dt.timedelta(days=3650)},
     "valid_to"),
    ("user_account", lambda t: t.c.email == "newbie@example.org", lambda r: {"active": True}, "active"),
    ("role_grant", lambda t: t.c.status == "rejected", lambda r: {"status": "pending"}, "status"),
    ("api_token", lambda t: t.c.revoked_at.is_not(None), lambda r: {"revoked_at": None}, "revoked"),
    ("api_token", None, lambda r: {"expires_at": r.expires_at + dt.timedelta(days=3650)}, "expires_at"),
    # the moments the trail records since the hostile review of issue 27
    ("allocation", None, lambda r: {"randomized_at": r.randomized_at - dt.timedelta(hours=1)}, "randomized_at"),
    ("allocation", None, lambda r: {"randomized_at": r.randomized_at + dt.timedelta(microseconds=1)}, "randomized_at"),
    ("participant", None, lambda r: {"enrolled_at": r.enrolled_at - dt.timedelta(days=2)}, "enrolled_at"),
    ("trial_state", None, lambda r: {"randomization_hold": "held by hand", "randomization_hold_at": None},
     "randomization_hold"),
]


@pytest.mark.parametrize("table,where,change,field", UPDATES,
                         ids=[f"{u[0]}.{u[3]}" for u in UPDATES])
def test_a_plain_update_of_one_field_is_named_by_table_id_and_field(trial, table, where, change, field):
    db, conn, _made = trial
    row = _row(conn, table, where)
    conn.execute(update(_t(table)).where(*_pk(table, row)).values(**change(row)))
    assert _found(db) == {(table, _key(table, row), field)}


def test_the_trial_state_names_a_lock_put_back_in_force(trial):
    """The addendum lifted the hard lock: setting it in force again by SQL is named."""
    db, conn, made = trial
    conn.execute(text("UPDATE trial_state SET active_lock_id = :h"), {"h": made["hard"]})
    row = _row(conn, "trial_state")
    assert _found(db) == {("trial_state", str(row.id), "active_lock_id")}


def test_a_hold_lifted_or_moved_by_sql_is_named_and_one_set_and_cleared_by_the_services_is_not(trial):
    """The randomization hold after a restore (action ``restore``) keeps randomization closed until
    reconciled (action ``reconcile``): lifting it with a plain UPDATE, to randomize without
    reconciling, or changing its time, is named field by field."""
    from trial.randomize import journalfile
    db, conn, _made = trial
    journalfile.hold_randomization(db, CLI, "restored from a backup taken at noon")
    db.flush()
    assert _found(db) == set()
    row = _row(conn, "trial_state")
    assert row.randomization_hold == "restored from a backup taken at noon" and row.randomization_hold_at is not None
    conn.execute(text("UPDATE trial_state SET randomization_hold_at = :t"),
                 {"t": row.randomization_hold_at - dt.timedelta(days=1)})
    assert _found(db) == {("trial_state", str(row.id), "randomization_hold_at")}
    conn.execute(text("UPDATE trial_state SET randomization_hold = NULL, randomization_hold_at = NULL"))
    assert _found(db) == {("trial_state", str(row.id), "randomization_hold"),
                          ("trial_state", str(row.id), "randomization_hold_at")}
    # cleared the audited way (as `trial randomization reconcile --none-lost` does): nothing named
    conn.execute(update(_t("trial_state")).values(randomization_hold=row.randomization_hold,
                                                  randomization_hold_at=row.randomization_hold_at))
    assert _found(db) == set()
    journal.reconcile(db, CLI, [], none_lost=True, operator="Olga Operator", operator_statement="no allocation since")
    db.flush()
    assert _row(conn, "trial_state").randomization_hold is None and _found(db) == set()
    # and held again by SQL, without its record: named
    conn.execute(text("UPDATE trial_state SET randomization_hold = 'held', randomization_hold_at = :t"),
                 {"t": row.randomization_hold_at})
    assert _found(db) == {("trial_state", str(row.id), "randomization_hold"),
                          ("trial_state", str(row.id), "randomization_hold_at")}


def test_the_randomize_and_enrolment_records_carry_their_times(trial):
    """What the replay compares them with: the allocation's record gives ``randomized_at``, the
    participant's creation ``enrolled_at``, exactly as the rows hold them."""
    import json
    db, conn, _made = trial
    a = _row(conn, "allocation")
    [rec] = db.execute(select(audit.AuditRecord).where(audit.AuditRecord.entity == "allocation",
                                                        audit.AuditRecord.entity_id == a.study_id)).scalars().all()
    assert json.loads(rec.new)["randomized_at"] == a.randomized_at.isoformat()
    p = _row(conn, "participant")
    [enrolled] = db.execute(select(audit.AuditRecord).where(
        audit.AuditRecord.entity == "participant", audit.AuditRecord.entity_id == p.study_id,
        audit.AuditRecord.field == "enrolled_at")).scalars().all()
    assert enrolled.action == "create" and enrolled.new == p.enrolled_at.isoformat()


def test_a_role_changed_by_sql_is_a_role_without_a_record_and_a_role_gone(trial):
    db, conn, made = trial
    row = _row(conn, "role_assignment", lambda t: t.c.user_id == made["coordinator"])
    email, label = _email(conn, row.user_id), _label(conn, row)
    conn.execute(text("UPDATE role_assignment SET role = 'manager', site_id = NULL WHERE id = :i"), {"i": row.id})
    assert _found(db) == {("role_assignment", str(row.id), "*"), ("role_assignment", f"{email} {label}", "*")}
    assert f"manager of {email}" in str(replay.compare(db)[0])


def test_a_session_slipped_into_a_fidelity_sample_is_named_on_its_draw(trial):
    db, conn, _made = trial
    draw = _row(conn, "fidelity_draw")
    conn.execute(insert(_t("fidelity_sample")).values(session_id=_other_session_not_sampled(conn), draw_id=draw.id))
    assert _found(db) == {("fidelity_draw", str(draw.id), "sample")}


def _other_session_not_sampled(conn) -> int:
    return conn.execute(text("SELECT id FROM therapy_session WHERE id NOT IN (SELECT session_id FROM fidelity_sample) "
                             "ORDER BY id LIMIT 1")).scalar()


def test_an_assessment_moved_to_another_child_is_named(trial):
    db, conn, _made = trial
    a = _row(conn, "assessment", lambda t: t.c.visit == "month5")
    other = conn.execute(text("SELECT id FROM participant WHERE id <> :p ORDER BY id LIMIT 1"),
                         {"p": a.participant_id}).scalar()
    conn.execute(text("UPDATE assessment SET participant_id = :o WHERE id = :i"), {"o": other, "i": a.id})
    assert _found(db) == {("assessment", str(a.id), "participant")}


# --- an INSERT without its record ------------------------------------------------------------------

def _other_session(conn) -> int:
    return conn.execute(text("SELECT id FROM therapy_session WHERE id NOT IN (SELECT session_id FROM fidelity_rating) "
                             "ORDER BY id LIMIT 1")).scalar()


# table, which row is copied (None: the first), what the copy changes (its unique columns)
INSERTS = [
    ("deviation", None, lambda c, r: {}),
    ("blinding_break", None, lambda c, r: {}),
    ("counselling_session", None, lambda c, r: {"number": r.number + 10}),
    ("child_goal", None, lambda c, r: {"goal": "joint_attention"}),
    ("adverse_event_follow_up", None, lambda c, r: {}),
    ("adverse_event_report", None, lambda c, r: {"reference": "EC-9999"}),
    ("data_query", None, lambda c, r: {"number": r.number + 100, "open_key": None}),
    ("data_query_message", None, lambda c, r: {}),
    ("source_verification", None, lambda c, r: {"current_key": None}),
    ("fidelity_draw", None, lambda c, r: {}),
    ("fidelity_rating", None, lambda c, r: {"session_id": _other_session(c)}),
    ("site", None, lambda c, r: {"code": "XX99"}),
    ("consent", None, lambda c, r: {"version": "0"}),
    ("consent_withdrawal", None, lambda c, r: {}),
    ("protocol_version", None, lambda c, r: {"version": 99}),
    ("randomization_design", None, lambda c, r: {}),
    ("data_lock", lambda t: t.c.kind == "hard", lambda c, r: {}),
    ("lock_bundle", None, lambda c, r: {"lock_id": c.execute(text("SELECT id FROM data_lock WHERE kind = 'soft'")).scalar()}),
    ("unblinding_request", None, lambda c, r: {}),
    ("signature", None, lambda c, r: {}),
    ("access_review", None, lambda c, r: {}),
    ("credential", None, lambda c, r: {}),
    ("user_account", None, lambda c, r: {"email": "intruder@example.org"}),
    ("role_assignment", None, lambda c, r: {"role": "admin", "site_id": None}),
    ("role_grant", None, lambda c, r: {}),
    ("api_token", None, lambda c, r: {"prefix": "trl_intrude", "token_hash": "0" * 64}),
]


@pytest.mark.parametrize("table,where,change", INSERTS, ids=[i[0] for i in INSERTS])
def test_an_insert_without_a_record_is_named_no_creation_record(trial, table, where, change):
    db, conn, _made = trial
    _attacker(conn)
    row = _row(conn, table, where)
    t = _t(table)
    values = {k: v for k, v in row._mapping.items() if k != "id"}
    values.update(change(conn, row))
    new = conn.execute(insert(t).values(**values))
    got = conn.execute(select(t).where(t.c.id == new.inserted_primary_key[0])).one()
    key = str(got.id) if table in ("role_assignment", "role_grant", "data_query_message") else _key(table, got)
    assert _found(db) == {(table, key, "*")}
    assert "no creation record" in str(replay.compare(db)[0])


# --- a DELETE without its record -------------------------------------------------------------------

# table, which row (None: the first); the site deleted holds nothing else
DELETES = [
    ("deviation", None), ("blinding_break", None), ("counselling_session", None), ("child_goal", None),
    ("adverse_event_follow_up", None), ("adverse_event_report", None), ("data_query", None),
    ("source_verification", None), ("fidelity_draw", None), ("fidelity_rating", None),
    ("site", lambda t: t.c.code == "DE01"), ("protocol_version", None), ("randomization_design", None),
    ("data_lock", lambda t: t.c.kind == "soft"), ("lock_bundle", None), ("unblinding_request", None),
    ("signature", None), ("access_review", None), ("credential", None), ("api_token", None),
    ("consent_withdrawal", None),
]


@pytest.mark.parametrize("table,where", DELETES, ids=[d[0] for d in DELETES])
def test_a_delete_without_a_record_is_named_row_missing(trial, table, where):
    db, conn, _made = trial
    _attacker(conn)
    row = _row(conn, table, where)
    conn.execute(delete(_t(table)).where(*_pk(table, row)))
    assert _found(db) == {(table, _key(table, row), "*")}
    assert "row missing" in str(replay.compare(db)[0])


def test_an_account_deleted_with_its_role_is_named_with_the_role(trial):
    db, conn, _made = trial
    _attacker(conn)
    user = _row(conn, "user_account", lambda t: t.c.email == "idle@example.org")
    ra = _row(conn, "role_assignment", lambda t: t.c.user_id == user.id)
    conn.execute(delete(_t("role_assignment")).where(_t("role_assignment").c.user_id == user.id))
    conn.execute(delete(_t("user_account")).where(_t("user_account").c.id == user.id))
    assert _found(db) == {("user_account", "idle@example.org", "*"), ("role_assignment", f"idle@example.org {_label(conn, ra)}", "*")}


def test_a_role_a_grant_and_a_query_message_deleted_are_named_by_what_they_were(trial):
    db, conn, made = trial
    _attacker(conn)
    ra = _row(conn, "role_assignment", lambda t: t.c.user_id == made["coordinator"])
    grant = _row(conn, "role_grant", lambda t: t.c.status == "approved")
    msg = conn.execute(text("SELECT * FROM data_query_message ORDER BY id DESC LIMIT 1")).one()
    steps = conn.execute(text("SELECT count(*) FROM data_query_message WHERE query_id = :q"), {"q": msg.query_id}).scalar()
    for table, row in (("role_assignment", ra), ("role_grant", grant), ("data_query_message", msg)):
        conn.execute(delete(_t(table)).where(*_pk(table, row)))
    assert _found(db) == {("role_assignment", f"{_email(conn, ra.user_id)} {_label(conn, ra)}", "*"),
                          ("role_grant", f"{_email(conn, grant.user_id)} {_label(conn, grant)} #1", "*"),
                          ("data_query_message", f"query {msg.query_id} step {steps}", "*")}


# --- a restore reconciled from the allocation journal ---------------------------------------------------

def test_a_reconciled_restore_matches_its_trail_and_a_changed_reservation_is_named(drill):  # noqa: F811
    """The journal's restore drill (tests/test_journal.py): C's allocation replayed (a ``reconcile``
    record), D's and E's slots reserved, D entered again and randomized into its slot: the restored
    database matches its trail. Then E's reserved arm, and its reservation's row, changed by SQL."""
    r, ids = drill["restored"], drill["ids"]
    db = r.db
    journal.reconcile(db, CLI, [drill["journal"]])
    db.commit()
    assert replay.compare(db) == []
    d = screened(r.world, "AT01", "D-1")
    assert rand(r.world, d, key="d-again").status_code == 201
    db.expire_all()
    assert replay.compare(db) == []
    db.commit()
    with r.engine.begin() as conn:
        conn.execute(text("UPDATE allocation_reservation SET arm = CASE WHEN arm = 'low' THEN 'high' ELSE 'low' END "
                          "WHERE study_id = :s"), {"s": ids["e"]})
        conn.execute(text("UPDATE allocation_reservation SET used_at = NULL WHERE study_id = :s"), {"s": ids["d"]})
    db.expire_all()
    assert _found(db) == {("allocation_reservation", ids["e"], "arm"), ("allocation_reservation", ids["d"], "used_at")}
    db.commit()


# --- the demo, at the command line ---------------------------------------------------------------------

def test_the_demo_verifies_clean_and_the_command_names_an_update_an_insert_and_a_delete(tmp_path):
    """`trial demo` into a fresh database: `trial audit verify --data` passes (no false alarm on the
    demo's 13,600 records); after a counselling note updated, a deviation inserted and a follow-up
    deleted by SQL, it fails naming all three."""
    fresh = FreshDatabase("replay_demo")
    try:
        d = Db(fresh, tmp_path)
        ok(d.run("demo"))
        assert "every clinical row matches its trail" in ok(d.run("audit", "verify", "--data")).stdout
        with fresh.engine.begin() as conn:
            note = conn.execute(text("SELECT id FROM counselling_session ORDER BY id LIMIT 1")).scalar()
            conn.execute(text("UPDATE counselling_session SET note = 'said nothing' WHERE id = :i"), {"i": note})
            ev = _row(conn, "status_event")
            new = conn.execute(insert(_t("deviation")).values(participant_id=ev.participant_id, on=ev.on,
                                                              category="other", description="inserted by SQL"))
            dev = new.inserted_primary_key[0]
            fu = conn.execute(text("SELECT id FROM adverse_event_follow_up ORDER BY id LIMIT 1")).scalar()
            conn.execute(text("DELETE FROM adverse_event_follow_up WHERE id = :i"), {"i": fu})
        one_line_error(d.run("audit", "verify", "--data"), "in 3 places",
                              f"counselling_session {note} note: differs",
                              f"deviation {dev} *: no creation record", f"adverse_event_follow_up {fu} *: row missing")
    finally:
        fresh.drop()


def test_the_replay_reads_in_batches(trial, monkeypatch):
    """With batches of two rows and records (yield_per), the result is the same: nothing depends
    on reading a table or a trail at once."""
    db, conn, _made = trial
    monkeypatch.setattr(replay, "BATCH", 2)
    assert replay.compare(db) == []
    conn.execute(text("UPDATE deviation SET description = 'changed'"))
    assert {d.table for d in replay.compare(db)} == {"deviation"}

