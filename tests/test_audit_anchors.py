"""The audit head anchored outside the database, and the data checked against the trail (issue 27).
The attacks are the issue's, made as whoever can write the database but lacks the audit key would:
the tail cut and an earlier (genuine) head row put back, the head row deleted, a hard lock's seals
deleted; each passes the plain `trial audit verify` and is caught by `--anchors`. A clinical value
changed by a plain UPDATE without its audit record is named by `--data` (table, id, field)."""
from __future__ import annotations

import datetime as dt
import json
import stat

import pytest
from sqlalchemy import select, text

from tests.conftest import FreshDatabase, is_pg
from tests.helpers import CLI, PASSWORD, World
from tests.test_cli import Db, ok, one_line_error
from trial.audit import anchors, replay
from trial.audit import service as audit
from trial.audit.models import AuditHead, AuditSeal
from trial.db import make_session_factory
from trial.outcomes import service as outcomes
from trial.participants.models import Assessment, Participant
from trial.status import service as status


@pytest.fixture()
def randomized(world, db):
    world.open()
    for _ in range(3):
        world.randomize(world.ready())
    return world


def _as_attacker(conn, sql: str, **params) -> None:
    """Plain SQL past the database's own refusals (PostgreSQL's triggers on the audit tables), as an
    attacker who can write the database would; SQLite has none on these tables."""
    if is_pg():
        conn.execute(text("SET session_replication_role = replica"))
    conn.execute(text(sql), params)
    if is_pg():
        conn.execute(text("SET session_replication_role = origin"))


def _old_head(conn):
    return conn.execute(select(AuditHead.seq, AuditHead.hash, AuditHead.mac)).one()


def _cut_back_to(conn, old) -> None:
    """The tail deleted and the earlier head row (its genuine MAC) put back."""
    _as_attacker(conn, "DELETE FROM audit_record WHERE seq > :n", n=old.seq)
    conn.execute(text("UPDATE audit_head SET seq = :n, hash = :h, mac = :m WHERE id = 1"),
                 {"n": old.seq, "h": old.hash, "m": old.mac})


# --- anchoring ---------------------------------------------------------------------------------

def test_anchor_appends_the_head_and_verify_anchors_passes(randomized, db, tmp_path):
    path = tmp_path / "offsite" / "anchors.jsonl"
    _, first = anchors.anchor(db, path)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    head = db.execute(select(AuditHead.seq, AuditHead.hash, AuditHead.mac)).one()
    assert (first["seq"], first["hash"], first["mac"]) == tuple(head)
    assert first["records"] == head.seq and first["seals"] == 0 and first["at"].endswith("Z")
    randomized.randomize(randomized.ready())  # the chain goes on: the old anchor still holds
    anchors.anchor(db, path)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 2 and lines[0] == first and lines[1]["seq"] > first["seq"]
    res = anchors.check_anchors(db, path)
    assert res.ok and res.anchors == 2, res
    assert audit.verify(db).ok


def test_a_tail_cut_with_an_earlier_head_put_back_falls_behind_the_anchor(randomized, db, tmp_path):
    conn = db.connection()
    old = _old_head(conn)
    randomized.randomize(randomized.ready())
    path = tmp_path / "anchors.jsonl"
    anchors.anchor(db, path)
    _cut_back_to(conn, old)
    db.expire_all()
    assert audit.verify(db).ok, "the attack passes the chain's own checks: only the anchor tells"
    res = anchors.check_anchors(db, path)
    assert not res.ok and len(res.problems) == 1
    assert "anchors.jsonl line 1" in res.problems[0] and "shorter" in res.problems[0], res


def test_an_earlier_head_put_back_over_a_whole_chain_is_behind_the_anchor(randomized, db, tmp_path):
    """The records kept (only the head moved back): the head is behind the anchor."""
    conn = db.connection()
    old = _old_head(conn)
    randomized.randomize(randomized.ready())
    path = tmp_path / "anchors.jsonl"
    anchors.anchor(db, path)
    conn.execute(text("UPDATE audit_head SET seq = :n, hash = :h, mac = :m WHERE id = 1"),
                 {"n": old.seq, "h": old.hash, "m": old.mac})
    db.expire_all()
    res = anchors.check_anchors(db, path)
    assert not res.ok and "line 1" in res.problems[0] and "behind the anchor" in res.problems[0], res


def test_the_head_row_deleted_is_detected(randomized, db, tmp_path):
    path = tmp_path / "anchors.jsonl"
    anchors.anchor(db, path)
    db.connection().execute(text("DELETE FROM audit_head"))
    db.expire_all()
    assert audit.verify(db).ok, "the attack passes the chain's own checks: only the anchor tells"
    res = anchors.check_anchors(db, path)
    assert not res.ok and "line 1" in res.problems[0] and "head row is missing" in res.problems[0], res


def test_a_hard_lock_anchors_itself_and_its_seals_deleted_are_detected(randomized, db, tmp_path, monkeypatch):
    path = tmp_path / "anchors" / "trial.jsonl"
    monkeypatch.setenv("TRIAL_AUDIT_ANCHORS", str(path))
    r = randomized.api("POST", "/locks", "manager", json={"kind": "hard", "meaning": "Final lock.",
                                                          "password": PASSWORD})
    assert r.status_code == 201, r.get_data(as_text=True)
    db.expire_all()
    seal = db.execute(select(AuditSeal)).scalar_one()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["seals"] == 1 and lines[0]["seq"] >= seal.seq, lines
    assert anchors.check_anchors(db, path).ok
    _as_attacker(db.connection(), "DELETE FROM audit_seal")
    db.expire_all()
    assert audit.verify(db).ok, "without its seal the chain's own checks pass"
    res = anchors.check_anchors(db, path)
    assert not res.ok and "trial.jsonl line 1" in res.problems[0] and "lost its seal" in res.problems[0], res


def test_an_anchor_line_not_written_under_the_key_is_refused(randomized, db, tmp_path):
    path = tmp_path / "anchors.jsonl"
    anchors.anchor(db, path)
    line = json.loads(path.read_text())
    path.write_text(path.read_text() + json.dumps({**line, "mac": "0" * 64}) + "\nnot json\n")
    res = anchors.check_anchors(db, path)
    assert [p.split(":")[0] for p in res.problems] == ["anchors.jsonl line 2", "anchors.jsonl line 3"], res
    assert "MAC" in res.problems[0]
    assert not anchors.check_anchors(db, tmp_path / "none.jsonl").ok


# --- the data against the trail ------------------------------------------------------------------

def _set_values(conn, assessment_id: int, values: dict) -> None:
    cast = "CAST(:v AS json)" if is_pg() else ":v"
    conn.execute(text(f'UPDATE assessment SET "values" = {cast} WHERE id = :id'), {"v": json.dumps(values),
                                                                                   "id": assessment_id})


def test_a_clean_database_matches_its_trail_corrections_included(randomized, db):
    a = db.execute(select(Assessment).order_by(Assessment.id)).scalars().first()
    outcomes.correct_assessment(db, CLI, a.id, {"values": {"rrb": 5}, "reason": "transcription error"})
    p = db.get(Participant, a.participant_id)
    status.record_event(db, CLI, p.study_id, {"type": "lost_to_follow_up", "on": dt.date.today().isoformat(),
                                              "reason": "moved away"})
    db.commit()
    assert replay.compare(db) == []


def test_a_score_and_a_date_of_birth_updated_without_a_record_are_named(randomized, db):
    a = db.execute(select(Assessment).order_by(Assessment.id)).scalars().first()
    p = db.get(Participant, a.participant_id)
    conn = db.connection()
    _set_values(conn, a.id, {**a.values, "social_affect": a.values["social_affect"] + 3})
    conn.execute(text("UPDATE participant SET date_of_birth = :d WHERE id = :id"),
                 {"d": p.date_of_birth - dt.timedelta(days=400), "id": p.id})
    db.expire_all()
    found = {(d.table, d.id, d.field) for d in replay.compare(db)}
    assert found == {("assessment", str(a.id), "values.social_affect"), ("participant", p.study_id, "date_of_birth")}


# --- the command line ------------------------------------------------------------------------------

def _committed_world(fresh: FreshDatabase):
    """A committed world with two children randomized, and the head row as it stood before the second."""
    s = make_session_factory(fresh.engine)()
    w = World(s, None).setup()
    w.open()
    w.randomize(w.ready())
    with fresh.engine.connect() as conn:
        old = _old_head(conn)
    w.randomize(w.ready())
    return w, old


def test_cli_anchor_and_verify_with_anchors_and_data(tmp_path):
    fresh = FreshDatabase("anchors")
    try:
        w, old = _committed_world(fresh)
        d = Db(fresh, tmp_path)
        path = tmp_path / "offsite" / "anchors.jsonl"
        assert "anchored" in ok(d.run("audit", "anchor", "--to", str(path))).stdout
        out = ok(d.run("audit", "verify", "--anchors", str(path), "--data")).stdout
        assert "1 anchors hold" in out and "matches its trail" in out
        one_line_error(d.run("audit", "anchor"), "TRIAL_AUDIT_ANCHORS")
        study_id = w.db.execute(select(Participant.study_id).order_by(Participant.id)).scalars().first()
        w.db.close()
        with fresh.engine.begin() as conn:
            conn.execute(text("UPDATE participant SET sex = 'male' WHERE study_id = :s"), {"s": study_id})
        one_line_error(d.run("audit", "verify", "--data"), f"participant {study_id} sex")
        with fresh.engine.begin() as conn:
            _cut_back_to(conn, old)
        one_line_error(d.run("audit", "verify", "--anchors", str(path)), "anchors.jsonl line 1")
    finally:
        fresh.drop()
