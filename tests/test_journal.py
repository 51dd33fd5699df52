"""The allocation journal outside the database, randomization held after a restore, and `trial
randomization reconcile` (issue 27): every committed allocation appended as one line that names no
arm; a journal that cannot be written refuses randomization before a slot is taken, and a line that
cannot be appended after the commit leaves the allocation standing and refuses the next; a restored
database gives every child the slot and arm the site was told (replayed, or reserved for the child
entered again); conflicting lines change nothing. The backup is a real copy of a committed database
(SQLite's online backup API; PostgreSQL's CREATE DATABASE ... TEMPLATE), taken before the later
randomizations; the confirmation e-mail reaches a real local SMTP server."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import sqlite3
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import event, func, select, text

from tests.conftest import PG_URL, FreshDatabase, is_pg
from tests.helpers import CLI, PASSWORD, World
from tests.test_cli import ok, trial
from tests.test_datamanagement import Inbox
from trial import create_app
from trial import db as database
from trial.audit import service as audit
from trial.audit.models import AuditRecord
from trial.auth import service as users
from trial.catalogue import translator
from trial.db import make_engine, make_session_factory
from trial.enrollment import service as enrollment
from trial.errors import Conflict, Forbidden, ValidationError
from trial.notify.models import MailMessage
from trial.participants.models import Allocation, Participant
from trial.protocol.service import current
from trial.protocol.service import labels as protocol_labels
from trial.randomize import journal, journalfile
from trial.randomize import service as randomization
from trial.randomize.models import AllocationReservation, Stratum
from trial.scope import CliActor
from trial.trialstate.models import TrialState

SEED = bytes(range(32))
ARMS = ("low", "high", "usual")


@pytest.fixture()
def journal_file(tmp_path, monkeypatch):
    """TRIAL_ALLOCATION_JOURNAL in a folder of its own (mode 0700); the process's memory of lines it
    could not write starts empty."""
    folder = tmp_path / "journal"
    folder.mkdir(mode=0o700)
    path = folder / "allocations.jsonl"
    monkeypatch.setenv("TRIAL_ALLOCATION_JOURNAL", str(path))
    monkeypatch.setattr(journalfile, "_unwritten", [])
    monkeypatch.setattr(journalfile, "_last_error", None)
    return path


def lines_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def rand(world, p, who="coordinator", key=None):
    """Randomize through the API (``p``: a participant or its study id)."""
    study_id = p if isinstance(p, str) else p.study_id
    return world.api("POST", f"/participants/{study_id}/randomize", who,
                     headers={"Idempotency-Key": key} if key else None)


def digest_with(master: bytes, line: dict, arm: str) -> str:
    return journalfile.arm_digest(master, line["design"], line["study_id"], line["stratum"], line["seq"], arm)


def taken(db) -> tuple:
    """What an allocation changes: allocations, their audit records and every stratum's counter."""
    db.expire_all()
    return (db.execute(select(func.count()).select_from(Allocation)).scalar(),
            db.execute(select(func.count()).select_from(AuditRecord)).scalar(),
            tuple(db.execute(select(Stratum.key, Stratum.last_seq).order_by(Stratum.key)).all()))


# --- the line ----------------------------------------------------------------------------------

def test_every_allocation_appends_one_line_naming_its_slot_and_no_arm(world, db, journal_file):
    design = world.open(SEED)
    logged = world.screen("AT01", log_number="SCR-0042")
    p1 = enrollment.enroll(db, CLI, {"screening_id": logged.id, "consent_date": (dt.date.today() - dt.timedelta(days=25)).isoformat(),
                                     "date_of_birth": (dt.date.today() - dt.timedelta(days=5 * 365)).isoformat(), "sex": "male"})
    db.commit()
    world.baseline(p1)
    people = [p1, world.ready("AT01"), world.ready("NO01")]
    answers = [rand(world, p, "coordinator" if p.study_id.startswith("AT01") else "coordinator_no", f"k{i}")
               for i, p in enumerate(people)]
    assert [r.status_code for r in answers] == [201] * 3
    lines = lines_of(journal_file)
    assert len(lines) == 3
    assert stat.S_IMODE(journal_file.stat().st_mode) == 0o600
    db.expire_all()
    for p, line in zip(people, lines, strict=True):
        a = db.execute(select(Allocation).where(Allocation.participant_id == p.id)).scalar_one()
        st = db.get(Stratum, a.stratum_id)
        rec = db.execute(select(AuditRecord).where(AuditRecord.action == "randomize",
                                                   AuditRecord.entity_id == p.study_id)).scalar_one()
        assert set(line) == {"v", "study_id", "site", "stratum", "seq", "arm_digest", "at", "audit_seq", "design",
                             "screening_log_number"}
        assert line["v"] == 1 and line["study_id"] == p.study_id and line["site"] == p.study_id[:4]
        assert (line["stratum"], line["seq"]) == (st.key, a.seq)
        assert line["at"] == a.randomized_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert line["audit_seq"] == rec.seq and line["design"] == design.commitment
        assert line["arm_digest"] == digest_with(SEED, line, a.arm)
        assert a.arm not in json.dumps(line), "the line names no arm"
    assert lines[0]["screening_log_number"] == "SCR-0042" and lines[1]["screening_log_number"] is None
    # written by the first after-commit hook, before the mail hook (which may wait on a relay)
    assert database.after_commit_hooks[0] is journalfile._after_commit
    # a retry answered from the allocation made writes no line
    again = rand(world, p1, key="k0")
    assert again.status_code == 200 and len(lines_of(journal_file)) == 3


def test_the_digest_tells_no_arm_without_the_seed_and_each_arm_with_it(world, db, journal_file):
    world.open(SEED)
    for _ in range(4):
        assert rand(world, world.ready()).status_code == 201
    for line in lines_of(journal_file):
        fixed = f"{line['design']}|{line['stratum']}|{line['seq']}"
        texts = [f"{a}" for a in ARMS] + [f"journal|{line['design']}|{line['study_id']}|{fixed.split('|', 1)[1]}|{a}"
                                           for a in ARMS] + [f"{fixed}|{a}|{line['study_id']}" for a in ARMS]
        keys = [b"", line["design"].encode(), line["study_id"].encode(), bytes.fromhex(line["design"])]
        guesses = {hashlib.sha256(t.encode()).hexdigest() for t in texts}
        guesses |= {hmac.new(k, t.encode(), hashlib.sha256).hexdigest() for k in keys for t in texts}
        assert line["arm_digest"] not in guesses, "a guess without the seed found the arm"
        assert sum(digest_with(SEED, line, a) == line["arm_digest"] for a in ARMS) == 1


def _statements(engine, fn) -> list[str]:
    seen = []

    def count(conn, cursor, statement, *args):
        if not statement.lstrip().upper().startswith(("SAVEPOINT", "RELEASE", "ROLLBACK TO")):
            seen.append(statement)
    event.listen(engine, "before_cursor_execute", count)
    try:
        fn()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return seen


def test_the_hot_path_keeps_its_statements_with_the_journal_and_without_mail(world, db, engine, tmp_path, monkeypatch):
    world.open(SEED)
    world.randomize(world.ready())  # the process's caches (design, seed, protocol) filled
    first = world.ready()
    plain = _statements(engine, lambda: randomization.randomize(db, CLI, first.study_id))
    db.commit()
    monkeypatch.setattr(journalfile, "_unwritten", [])
    monkeypatch.setenv("TRIAL_ALLOCATION_JOURNAL", str(tmp_path / "allocations.jsonl"))
    p = world.ready()
    journalled = _statements(engine, lambda: randomization.randomize(db, CLI, p.study_id))
    db.commit()
    assert len(journalled) == len(plain) <= 9, journalled
    assert len(lines_of(tmp_path / "allocations.jsonl")) == 1


# --- a journal that cannot be written ----------------------------------------------------------

def test_a_journal_that_cannot_be_opened_refuses_before_a_slot_is_taken(world, db, tmp_path, monkeypatch):
    world.open(SEED)
    monkeypatch.setattr(journalfile, "_unwritten", [])
    p = world.ready()
    before = taken(db)
    for bad in (tmp_path / "not-mounted" / "allocations.jsonl", tmp_path):  # a missing folder; a folder, not a file
        monkeypatch.setenv("TRIAL_ALLOCATION_JOURNAL", str(bad))
        r = rand(world, p, key="one")
        assert r.status_code == 503, r.get_data(as_text=True)
        assert r.headers["Retry-After"] == "60"
        assert "allocation journal cannot be written" in r.get_json()["error"]["message"]
        assert "trial manager" in r.get_json()["error"]["message"]
        assert taken(db) == before, "nothing allocated, no slot taken"
    assert not (tmp_path / "not-mounted").exists(), "the journal's folder is never made on another volume"
    good = tmp_path / "allocations.jsonl"
    monkeypatch.setenv("TRIAL_ALLOCATION_JOURNAL", str(good))
    r = rand(world, p, key="one")
    assert r.status_code == 201
    assert lines_of(good)[0]["seq"] == 1, "the slot not taken then is the one taken now"


def test_a_line_that_cannot_be_appended_after_the_commit_leaves_the_allocation_and_refuses_the_next(
        world, db, client, tmp_path, monkeypatch, caplog):
    world.open(SEED)
    monkeypatch.setattr(journalfile, "_unwritten", [])
    monkeypatch.setattr(journalfile, "_last_error", None)
    monkeypatch.setenv("TRIAL_ALLOCATION_JOURNAL", "/dev/full")  # opens for appending; every write: disk full
    a, b = world.ready(), world.ready()
    assert client.get("/readyz").get_json()["checks"]["journal"] == "ok"
    with caplog.at_level(logging.ERROR, logger="trial.randomize.journal"):
        first = rand(world, a, key="a")
    assert first.status_code == 201, "the allocation is committed: it stands"
    arm = first.get_json()["arm"]
    db.expire_all()
    assert db.execute(select(Allocation.arm).where(Allocation.participant_id == a.id)).scalar_one() == arm
    logged = [r.getMessage() for r in caplog.records if r.name == "trial.randomize.journal"]
    assert len(logged) == 1 and a.study_id in logged[0] and "No space left on device" in logged[0]
    line = json.loads(logged[0].split("The line: ", 1)[1])
    assert line["study_id"] == a.study_id and arm not in logged[0].replace(line["arm_digest"], "")
    before = taken(db)
    refused = rand(world, b, key="b")
    assert refused.status_code == 503 and "allocation journal" in refused.get_json()["error"]["message"]
    assert taken(db) == before
    ready = client.get("/readyz")
    assert ready.status_code == 503
    why = ready.get_json()["checks"]["journal"]
    assert "1 committed allocation(s) could not be appended to /dev/full" in why and "No space left" in why
    assert rand(world, a, key="a").status_code == 200, "a retry is answered from the allocation made"
    # the journal writable again: the kept line is appended first, then the next allocation's
    good = tmp_path / "allocations.jsonl"
    monkeypatch.setenv("TRIAL_ALLOCATION_JOURNAL", str(good))
    assert rand(world, b, key="b").status_code == 201
    assert [x["study_id"] for x in lines_of(good)] == [a.study_id, b.study_id]
    assert lines_of(good)[0] == line
    assert client.get("/readyz").get_json()["checks"]["journal"] == "ok"


def test_readyz_has_no_journal_check_without_the_setting(client, monkeypatch):
    monkeypatch.delenv("TRIAL_ALLOCATION_JOURNAL", raising=False)
    assert "journal" not in client.get("/readyz").get_json()["checks"]


def test_a_rolled_back_allocation_writes_no_line(world, db, journal_file):
    world.open(SEED)
    p = world.ready()
    randomization.randomize(db, CLI, p.study_id)
    db.rollback()
    world.randomize(world.ready())
    assert [x["study_id"] for x in lines_of(journal_file)] != [p.study_id]
    assert len(lines_of(journal_file)) == 1


# --- concurrency -------------------------------------------------------------------------------

def test_concurrent_randomizations_each_append_their_own_line(tmp_path, monkeypatch):
    """Real threads through the whole stack against a committed database (PostgreSQL when the suite
    runs on it): N allocations, N lines, N distinct slots, each line its allocation's."""
    n = 24
    journal_path = tmp_path / "allocations.jsonl"
    monkeypatch.setenv("TRIAL_ALLOCATION_JOURNAL", str(journal_path))
    monkeypatch.setattr(journalfile, "_unwritten", [])
    fresh = FreshDatabase("journal_threads")
    try:
        app = create_app({"DATABASE_URL": fresh.url, "ENGINE": fresh.engine, "TESTING": True, "SECRET_KEY": "t"})
        s = make_session_factory(fresh.engine)()
        w = World(s, app).setup()
        w.open(SEED)
        people = [w.ready("AT01") for _ in range(n)]
        s.commit()
        barrier = threading.Barrier(n)

        def go(i):
            barrier.wait()
            return rand(w, people[i], key=f"t{i}")
        with ThreadPoolExecutor(max_workers=n) as pool:
            answers = list(pool.map(go, range(n)))
        assert [r.status_code for r in answers] == [201] * n
        lines = lines_of(journal_path)
        assert len(lines) == n and len({x["study_id"] for x in lines}) == n
        assert sorted(x["seq"] for x in lines) == list(range(1, n + 1))
        s.expire_all()
        allocs = {a.study_id: a for a in s.execute(select(Allocation)).scalars()}
        for x in lines:
            a = allocs[x["study_id"]]
            assert x["seq"] == a.seq and x["arm_digest"] == digest_with(SEED, x, a.arm)
        assert len({x["audit_seq"] for x in lines}) == n
        s.close()
    finally:
        fresh.drop()


# --- a backup, later randomizations, a restore ---------------------------------------------------

class Deployment:
    """A committed trial in a database of its own, copied as a backup would copy it."""

    def __init__(self, label: str):
        self.fresh = FreshDatabase(label)
        self.copies: list[tuple[str, object]] = []
        self.app = create_app({"DATABASE_URL": self.fresh.url, "ENGINE": self.fresh.engine, "TESTING": True,
                               "SECRET_KEY": "t"})
        self.db = make_session_factory(self.fresh.engine)()
        self.world = World(self.db, self.app).setup()

    def backup(self) -> str:
        """A consistent copy of the committed database: its URL."""
        self.db.close()
        name = f"{self.fresh.name}_copy{len(self.copies)}"
        if is_pg():
            self.fresh.engine.dispose()
            with self.fresh.admin.connect() as c:
                c.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{self.fresh.name}"'))
            url = f"{PG_URL.rsplit('/', 1)[0]}/{name}"
        else:
            path = Path(self.fresh.engine.url.database)
            copy = path.with_name(name + ".db")
            with sqlite3.connect(path) as src, sqlite3.connect(copy) as dst:
                src.backup(dst)
            url = f"sqlite:///{copy}"
        self.copies.append((name, url))
        return url

    def drop(self) -> None:
        self.db.close()
        for name, url in self.copies:
            if is_pg():
                with self.fresh.admin.connect() as c:
                    c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            else:
                Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)
        self.fresh.drop()


class Restored:
    """The backup restored: an app and a session on the copy, the same users; randomization held as
    `trial backup restore` leaves it."""

    def __init__(self, url: str, world: World):
        self.url = url
        self.engine = make_engine(url)
        self.app = create_app({"DATABASE_URL": url, "ENGINE": self.engine, "TESTING": True, "SECRET_KEY": "t"})
        self.db = make_session_factory(self.engine)()
        self.world = World(self.db, self.app)
        self.world.users, self.world.tokens = world.users, world.tokens
        journal.hold_randomization(self.db, CliActor(email="cli:restore"), "restored from the backup taken before")
        self.db.commit()

    def close(self) -> None:
        self.db.close()
        self.engine.dispose()


def screened(world, site: str, log_number: str):
    sc = world.screen(site, log_number=log_number)
    p = enrollment.enroll(world.db, CLI, {"screening_id": sc.id,
                                          "consent_date": (dt.date.today() - dt.timedelta(days=25)).isoformat(),
                                          "date_of_birth": (dt.date.today() - dt.timedelta(days=5 * 365)).isoformat(),
                                          "sex": "female"})
    world.db.commit()
    world.baseline(p)
    return p


@pytest.fixture()
def drill(tmp_path, monkeypatch):
    """Before the backup: A and B randomized, C enrolled and ready (AT01). After it, on the live
    database with the journal on: C randomized (the backup has C, not its allocation), D (AT01) and
    E (NO01) screened, enrolled and randomized (the backup has neither). Then the backup restored,
    randomization held."""
    journal_path = tmp_path / "journal" / "allocations.jsonl"
    journal_path.parent.mkdir(mode=0o700)
    monkeypatch.setenv("TRIAL_ALLOCATION_JOURNAL", str(journal_path))
    monkeypatch.setattr(journalfile, "_unwritten", [])
    live = Deployment("journal_drill")
    w = live.world
    w.open(SEED)
    a, b = screened(w, "AT01", "A-1"), screened(w, "AT01", "B-1")
    w.randomize(a)
    w.randomize(b)
    c = screened(w, "AT01", "C-1")
    url = live.backup()
    w.randomize(c)
    d = screened(w, "AT01", "D-1")
    w.randomize(d)
    e = screened(w, "NO01", "E-1")
    w.randomize(e)
    w.db.expire_all()
    told = {x.study_id: (x.seq, x.arm, x.randomized_at) for x in w.db.execute(select(Allocation)).scalars()}
    restored = Restored(url, w)
    yield {"live": live, "restored": restored, "journal": journal_path, "told": told,
           "ids": {k: p.study_id for k, p in zip("abcde", (a, b, c, d, e), strict=True)}, "tmp": tmp_path}
    restored.close()
    live.drop()


def _facts(db) -> dict:
    """What the restored database holds (the read's transaction ended: SQLite's BEGIN IMMEDIATE would
    hold the write lock against the app's requests)."""
    db.expire_all()
    try:
        return {"allocations": {x.study_id: (x.seq, x.arm) for x in db.execute(select(Allocation)).scalars()},
                "reservations": db.execute(select(func.count()).select_from(AllocationReservation)).scalar(),
                "audit": db.execute(select(func.count()).select_from(AuditRecord)).scalar(),
                "strata": dict(db.execute(select(Stratum.key, Stratum.last_seq)).all()),
                "hold": db.execute(select(TrialState.randomization_hold)).scalar()}
    finally:
        db.commit()


def test_the_restore_drill_every_child_keeps_the_arm_it_was_told(drill):
    r, told, ids = drill["restored"], drill["told"], drill["ids"]
    db = r.db
    assert set(_facts(db)["allocations"]) == {ids["a"], ids["b"]}, "the backup lacks C's allocation, D and E"
    # held: no child is randomized, and none enrolled (it would take a lost child's study id), until reconciled
    c = db.execute(select(Participant).where(Participant.study_id == ids["c"])).scalar_one()
    db.commit()
    refused = rand(r.world, c, key="c")
    assert refused.status_code == 409
    msg = refused.get_json()["error"]["message"]
    assert "restored from a backup on " + dt.date.today().isoformat() in msg and "trial randomization reconcile" in msg
    with pytest.raises(Conflict, match="Enrollment is closed until the allocation journal is reconciled"):
        r.world.enroll("AT01")
    db.rollback()
    # a dry run reports and changes nothing
    before = _facts(db)
    report = journal.reconcile(db, CLI, [drill["journal"]], dry_run=True)
    db.rollback()
    assert report.ok and sorted(report.present) == sorted([ids["a"], ids["b"]])
    assert report.replayed == [ids["c"]]
    assert [(x.study_id, x.site, x.screening_log_number) for x in report.reserved] == [
        (ids["d"], "AT01", "D-1"), (ids["e"], "NO01", "E-1")]
    assert _facts(db) == before
    # reconciled
    report = journal.reconcile(db, CLI, [drill["journal"]])
    db.commit()
    assert report.ok and report.hold_cleared
    after = _facts(db)
    assert after["hold"] is None
    assert after["allocations"][ids["c"]] == told[ids["c"]][:2], "C: the same slot and the same arm"
    c_alloc = db.execute(select(Allocation).where(Allocation.study_id == ids["c"])).scalar_one()
    assert c_alloc.randomized_at == told[ids["c"]][2].replace(microsecond=0), "the journal's time, to the second"
    c_id = db.execute(select(Participant.id).where(Participant.study_id == ids["c"])).scalar_one()
    assert db.execute(text("SELECT count(*) FROM planned_visit WHERE participant_id = :p"), {"p": c_id}).scalar() > 0
    rec = db.execute(select(AuditRecord).where(AuditRecord.action == "reconcile",
                                               AuditRecord.entity == "allocation")).scalar_one()
    assert rec.entity_id == ids["c"] and rec.reveals_allocation
    held = db.execute(select(AuditRecord).where(AuditRecord.action == "reconcile", AuditRecord.entity == "trial_state",
                                                AuditRecord.field == "randomization_hold")).scalar_one()
    assert "present 2, replayed 1, reserved 2" in held.reason
    res = {x.study_id: x for x in db.execute(select(AllocationReservation)).scalars()}
    assert set(res) == {ids["d"], ids["e"]}
    for k in "de":
        assert (res[ids[k]].seq, res[ids[k]].arm) == told[ids[k]][:2] and res[ids[k]].used_at is None
    assert after["strata"]["site=AT01"] == 4 and after["strata"]["site=NO01"] == 1
    numbers = dict(db.execute(text("SELECT site.code, site_sequence.last_number FROM site_sequence "
                                   "JOIN site ON site.id = site_sequence.site_id")).all())
    assert numbers == {"AT01": int(ids["d"][-4:]), "NO01": int(ids["e"][-4:])}, "no new child takes D's or E's study id"
    # D entered again by its site: the same log number gives its study id, randomizing it its arm
    entries_before = len(lines_of(drill["journal"]))
    d = screened(r.world, "AT01", "D-1")
    assert d.study_id == ids["d"]
    got = rand(r.world, d, key="d-again")
    assert got.status_code == 201 and got.get_json()["arm"] == told[ids["d"]][1]
    db.expire_all()
    d_alloc = db.execute(select(Allocation).where(Allocation.study_id == ids["d"])).scalar_one()
    assert (d_alloc.seq, d_alloc.arm) == told[ids["d"]][:2]
    assert d_alloc.randomized_at == told[ids["d"]][2].replace(microsecond=0)
    assert db.get(AllocationReservation, res[ids["d"]].id).used_at is not None
    new_lines = lines_of(drill["journal"])[entries_before:]
    assert [(x["study_id"], x["seq"]) for x in new_lines] == [(ids["d"], told[ids["d"]][0])], "journalled again"
    assert db.execute(select(func.count()).select_from(AuditRecord).where(
        AuditRecord.action == "use", AuditRecord.entity == "allocation_reservation")).scalar() == 1
    # a new child takes neither a reserved study id nor a reserved slot, and gets the arm the original
    # system gives the same next child
    f = r.world.ready("AT01")
    assert f.study_id not in (ids["d"], ids["e"])
    newcomer = rand(r.world, f, key="f")
    assert newcomer.status_code == 201
    live = drill["live"].world
    twin = live.ready("AT01")
    assert rand(live, twin, key="twin").get_json()["arm"] == newcomer.get_json()["arm"]
    g = r.world.ready("AT01")
    assert g.study_id not in (ids["d"], ids["e"])
    assert audit.verify(db).ok
    assert randomization.verify(db, CLI, seed=SEED).ok, randomization.verify(db, CLI, seed=SEED).problems
    # reconciling again finds everything present (E still reserved) and changes nothing
    again = journal.reconcile(db, CLI, [drill["journal"]], dry_run=True)
    db.rollback()
    assert again.ok and not again.replayed and not again.reserved


def test_several_journals_merge_and_identical_lines_count_once(drill):
    r, ids = drill["restored"], drill["ids"]
    lines = drill["journal"].read_text().splitlines()
    one, two = drill["tmp"] / "app1.jsonl", drill["tmp"] / "app2.jsonl"
    one.write_text("\n".join(lines[::2]) + "\n")
    two.write_text("\n".join(lines[1::2] + lines[:1]) + "\n")  # the first line in both
    report = journal.reconcile(r.db, CLI, [one, two])
    r.db.commit()
    assert report.ok and report.duplicates == 1 and report.lines == len(lines)
    assert report.replayed == [ids["c"]] and len(report.reserved) == 2


def test_conflicting_lines_change_nothing_and_the_cli_exits_non_zero(drill):
    r, ids, told = drill["restored"], drill["ids"], drill["told"]
    lines = lines_of(drill["journal"])
    bad = drill["tmp"] / "tampered.jsonl"
    c_line = next(x for x in lines if x["study_id"] == ids["c"])
    moved = {**c_line, "seq": told[ids["a"]][0]}  # C's line claims A's slot
    a_line = next(x for x in lines if x["study_id"] == ids["a"])
    other_arm = next(arm for arm in ARMS if arm != told[ids["a"]][1])
    switched = {**a_line, "arm_digest": digest_with(SEED, a_line, other_arm)}  # A's arm otherwise
    foreign = {**lines[-1], "design": "0" * 64}
    bad.write_text("".join(json.dumps(x) + "\n" for x in lines if x["study_id"] not in (ids["c"], ids["a"]))
                   + json.dumps(moved) + "\n" + json.dumps(switched) + "\n" + json.dumps(foreign) + "\n{not json\n")
    before = _facts(r.db)
    report = journal.reconcile(r.db, CLI, [bad])
    r.db.rollback()
    assert not report.ok and len(report.conflicts) == 4, report.conflicts
    text_ = "\n".join(report.conflicts)
    assert f"held by {ids['a']}" in text_ and "another arm" in text_ and "another randomization" in text_
    assert "not JSON" in text_
    assert _facts(r.db) == before
    r.db.close()
    instance = drill["tmp"] / "instance"
    run = trial(r.url, instance, "randomization", "reconcile", "--journal", str(bad))
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.count("CONFLICT: ") == 4 and "error: not reconciled: 4 conflict(s)" in run.stderr
    assert _facts(r.db) == before and before["hold"] is not None
    # the true journal through the command line: reconciled, exit 0
    run = ok(trial(r.url, instance, "randomization", "reconcile", "--journal", str(drill["journal"])))
    assert "reconciled: randomization is open again" in run.stdout
    assert f"{ids['d']}  site AT01  screening log number D-1" in run.stdout
    assert _facts(r.db)["allocations"][ids["c"]] == told[ids["c"]][:2]


def test_a_study_id_taken_by_another_child_on_the_restored_database_is_a_conflict(drill):
    """A child enrolled on the restored database before the hold (it took D's study id, the next
    number there) is not D: reconciling refuses D's line rather than give that child D's arm."""
    r, ids = drill["restored"], drill["ids"]
    r.db.execute(text("UPDATE trial_state SET randomization_hold = NULL"))
    r.db.commit()
    other = screened(r.world, "AT01", "OTHER-1")
    assert other.study_id == ids["d"]
    journal.hold_randomization(r.db, CLI, "restored again")
    r.db.commit()
    before = _facts(r.db)
    report = journal.reconcile(r.db, CLI, [drill["journal"]])
    r.db.rollback()
    assert not report.ok and len(report.conflicts) == 1
    assert f"{ids['d']} in the database is another child" in report.conflicts[0]
    assert _facts(r.db) == before


def test_all_present_changes_nothing_but_the_hold(drill):
    """Reconciling the backup taken after the last allocation: every line present."""
    live = drill["live"]
    url = live.backup()
    restored = Restored(url, live.world)
    try:
        before = _facts(restored.db)
        report = journal.reconcile(restored.db, CLI, [drill["journal"]])
        restored.db.commit()
        assert report.ok and len(report.present) == 5 and not report.replayed and not report.reserved
        after = _facts(restored.db)
        assert after["hold"] is None and before["hold"] is not None
        assert {k: v for k, v in after.items() if k not in ("hold", "audit")} == \
            {k: v for k, v in before.items() if k not in ("hold", "audit")}
        assert after["audit"] == before["audit"] + 2  # the hold and its time cleared, audited
        assert rand(restored.world, restored.world.ready(), key="next").status_code == 201
    finally:
        restored.close()


def test_none_lost_is_signed_audited_and_refused_with_a_journal(drill):
    r = drill["restored"]
    with pytest.raises(ValidationError):
        journal.reconcile(r.db, CLI, [drill["journal"]], none_lost=True, operator="Ada", operator_statement="x")
    r.db.rollback()
    with pytest.raises(ValidationError):
        journal.reconcile(r.db, CLI, [], none_lost=True, operator="Ada", operator_statement="  ")
    r.db.rollback()
    with pytest.raises(Forbidden):
        journal.reconcile(r.db, r.world.users["manager"], [], none_lost=True, operator="Ada", operator_statement="x")
    r.db.rollback()
    before = _facts(r.db)
    journal.reconcile(r.db, CLI, [], none_lost=True, dry_run=True, operator="Ada", operator_statement="none made")
    r.db.rollback()
    assert _facts(r.db) == before
    r.db.close()
    instance = drill["tmp"] / "instance"
    refused = trial(r.url, instance, "randomization", "reconcile", "--none-lost", "--journal", str(drill["journal"]),
                    "--operator", "Ada", "--statement", "none")
    assert refused.returncode == 1 and refused.stderr.startswith("error: ") and "not both" in refused.stderr
    statement = "I, Ada Lovelace, checked the app servers: no randomization was made after the backup."
    run = ok(trial(r.url, instance, "randomization", "reconcile", "--none-lost", "--operator", "Ada Lovelace",
                   stdin=statement + "\n"))
    assert "randomization is open again" in run.stdout
    r.db.expire_all()
    rec = r.db.execute(select(AuditRecord).where(AuditRecord.action == "reconcile",
                                                 AuditRecord.field == "randomization_hold")).scalar_one()
    assert rec.reason == f"Ada Lovelace signed that no allocation was lost after the restore: {statement}"
    assert rec.new is None and _facts(r.db)["hold"] is None
    assert audit.verify(r.db).ok
    r.db.commit()
    again = trial(r.url, instance, "randomization", "reconcile", "--none-lost", "--operator", "Ada", "--statement", "x")
    assert again.returncode == 1 and "not held" in again.stderr


def test_a_reserved_child_entered_with_other_strata_is_refused(drill):
    """A child re-entered so that its strata give another stratum than the one it was randomized in:
    refused naming both (the site corrects the strata); nothing allocated."""
    r, ids = drill["restored"], drill["ids"]
    journal.reconcile(r.db, CLI, [drill["journal"]])
    r.db.commit()
    # a reservation of AT01 whose stratum is NO01's (as if the strata had been entered otherwise)
    no01 = r.db.execute(select(Stratum.id).where(Stratum.key == "site=NO01")).scalar_one()
    res = r.db.execute(select(AllocationReservation).where(AllocationReservation.study_id == ids["d"])).scalar_one()
    res.stratum_id, res.seq = no01, 50
    r.db.commit()
    d = screened(r.world, "AT01", "D-1").study_id  # (read now: _facts expires the session's objects)
    before = _facts(r.db)
    answer = rand(r.world, d, key="d")
    assert answer.status_code == 409 and "site=NO01" in answer.get_json()["error"]["message"]
    assert _facts(r.db) == before


# --- minimization --------------------------------------------------------------------------------

def test_minimization_counts_a_reserved_slot_for_its_site(world, db):
    from trial.protocol.service import DEFAULT_PROTOCOL, load_text
    from trial.randomize import minimization
    load_text(db, CLI, DEFAULT_PROTOCOL.read_text().replace('method = "permuted_blocks"', 'method = "minimization"'))
    db.commit()
    world.open(SEED)
    for _ in range(3):
        world.randomize(world.ready("AT01"))
    stratum = db.execute(select(Stratum).where(Stratum.key == "minimization")).scalar_one()
    site = db.execute(text("SELECT id FROM site WHERE code = 'AT01'")).scalar()
    db.add(AllocationReservation(study_id="AT01-0099", site_id=site, stratum_id=stratum.id, seq=4, arm="high",
                                 randomized_at=dt.datetime(2026, 1, 1), journal_line={}, created_at=dt.datetime(2026, 1, 1)))
    stratum.last_seq = 4
    db.commit()
    p = world.ready("AT01")
    got = world.randomize(p)
    assert got.allocation.seq == 5
    design = randomization.get_design(db).design
    factors = [f["key"] for f in design["factors"]]
    prior = [(a.arm, randomization._levels(factors, "AT01", pp.strata)) for a, pp in db.execute(
        select(Allocation, Participant).join(Participant).where(Allocation.seq < 5).order_by(Allocation.seq))]
    u_pick, u_tie = minimization.draws(SEED, 5)
    m = design["minimization"]
    arms = [(a["key"], a["weight"]) for a in design["arms"]]
    levels = randomization._levels(factors, "AT01", p.strata)
    with_it = minimization.choose(arms, factors, levels, prior + [("high", {"site": "AT01"})], m["probability"],
                                  m["imbalance"], u_pick, u_tie)
    without = minimization.choose(arms, factors, levels, prior, m["probability"], m["imbalance"], u_pick, u_tie)
    assert with_it[1]["scores"] != without[1]["scores"]
    assert got.allocation.details["scores"] == with_it[1]["scores"]


# --- the confirmation e-mail ---------------------------------------------------------------------

@pytest.fixture()
def inbox(monkeypatch):
    box = Inbox()
    monkeypatch.setenv("TRIAL_SMTP_URL", f"smtp://127.0.0.1:{box.port}")
    monkeypatch.setenv("TRIAL_MAIL_FROM", "trial@example.org")
    monkeypatch.setenv("TRIAL_BASE_URL", "https://trial.example.org")
    monkeypatch.setattr("trial.notify.service._relay_down_until", 0.0)
    yield box
    box.stop()


def test_the_confirmation_e_mail_reaches_the_sites_coordinators_in_their_language_and_no_blinded_role(
        world, db, inbox):
    world.open(SEED)
    coordinator = world.users["coordinator"]
    coordinator.language = "de"
    made = {email: users.create_user(db, CLI, email, email.split("@")[0].title(), PASSWORD, [("coordinator", "AT01")])
            for email in ("coassessor@example.org", "coadmin@example.org", "gone@example.org", "second@example.org")}
    made["gone@example.org"].active = False
    db.commit()
    # the accounts service refuses a coordinator who also assesses at the site or administers; such a
    # combination slipped in by plain SQL still gets no arm by e-mail
    at01 = db.execute(text("SELECT id FROM site WHERE code = 'AT01'")).scalar()
    for email, role, site in (("coassessor@example.org", "assessor", at01), ("coadmin@example.org", "admin", None)):
        db.execute(text("INSERT INTO role_assignment (user_id, role, site_id) VALUES (:u, :r, :s)"),
                   {"u": made[email].id, "r": role, "s": site})
    db.commit()
    db.expire_all()
    p = world.ready("AT01")
    r = rand(world, p, key="mail")
    assert r.status_code == 201
    arm = r.get_json()["arm"]
    inbox.wait(2)
    assert sorted(m["To"] for m in inbox.messages) == ["coordinator@example.org", "second@example.org"]
    german = inbox.to("coordinator@example.org")[0]
    body = german.get_payload(decode=True).decode()
    content = current(db).content
    assert p.study_id in german["Subject"] and p.study_id in body
    assert f"Studien-ID: {p.study_id}" in body and "Zugeteilter Arm: " + protocol_labels(content, "de")["arm"][arm] in body
    assert translator("de")("Randomized at") + ": " in body and translator("de")("Randomized by") + ": Coordinator" in body
    assert f"https://trial.example.org/participants/{p.study_id}" in body
    english = inbox.to("second@example.org")[0].get_payload(decode=True).decode()
    assert f"Study ID: {p.study_id}" in english and "Allocated arm: " + protocol_labels(content, "en")["arm"][arm] in english
    assert "Randomized by: Coordinator" in english
    db.expire_all()
    kinds = db.execute(select(MailMessage.kind, MailMessage.sent_at)).all()
    assert len(kinds) == 2 and all(k == "randomization" and sent is not None for k, sent in kinds)
    # blinded roles of the site get nothing, however else they are named
    assert not any(m["To"] in ("coassessor@example.org", "coadmin@example.org", "assessor@example.org")
                   for m in inbox.messages)


def test_no_confirmation_e_mail_without_a_relay(world, db, monkeypatch):
    monkeypatch.delenv("TRIAL_SMTP_URL", raising=False)
    world.open(SEED)
    assert rand(world, world.ready(), key="quiet").status_code == 201
    assert db.execute(select(func.count()).select_from(MailMessage)).scalar() == 0
