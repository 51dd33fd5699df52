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
from trial.db import make_engine, make_session_factory, utcnow
from trial.enrollment import service as enrollment
from trial.errors import Conflict, Forbidden, ValidationError
from trial.notify.models import MailMessage
from trial.participants.models import Allocation, Participant
from trial.protocol.service import current
from trial.protocol.service import labels as protocol_labels
from trial.randomize import journal, journalfile
from trial.randomize import service as randomization
from trial.randomize.models import AllocationJournalPending, AllocationReservation, Stratum
from trial.scope import CliActor
from trial.trialstate.models import TrialState

SEED = bytes(range(32))
ARMS = ("low", "high", "usual")


@pytest.fixture()
def journal_file(tmp_path, monkeypatch):
    """TRIAL_ALLOCATION_JOURNAL in a folder of its own (mode 0700); this process's next look at the
    pending lines and at the journal's last line is due at once."""
    folder = tmp_path / "journal"
    folder.mkdir(mode=0o700)
    path = folder / "allocations.jsonl"
    monkeypatch.setenv("TRIAL_ALLOCATION_JOURNAL", str(path))
    due_now(monkeypatch)
    return path


def due_now(monkeypatch):
    monkeypatch.setattr(journalfile, "_last_flush", float("-inf"))
    monkeypatch.setattr(journalfile, "_last_behind", float("-inf"))


def lines_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def rand(world, p, who="coordinator", key=None):
    """Randomize through the API (``p``: a participant or its study id)."""
    study_id = p if isinstance(p, str) else p.study_id
    return world.api("POST", f"/participants/{study_id}/randomize", who,
                     headers={"Idempotency-Key": key} if key else None)


def digest_with(master: bytes, line: dict, arm: str) -> str:
    return journalfile.arm_digest(master, line, arm)


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
                             "screening_log_number", "idempotency_key_sha256", "randomized_by"}
        assert line["v"] == 2 and line["study_id"] == p.study_id and line["site"] == p.study_id[:4]
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
    """The journal costs the hot path one statement: the line INSERTed into the outbox in the
    allocation's transaction (its DELETE runs after the COMMIT); the looks at the pending lines and
    at the journal's last line come at most every FLUSH_EVERY / BEHIND_EVERY seconds."""
    world.open(SEED)
    monkeypatch.setenv("TRIAL_ALLOCATION_JOURNAL", str(tmp_path / "allocations.jsonl"))
    due_now(monkeypatch)
    world.randomize(world.ready())  # the process's caches (design, seed, protocol) filled, the looks taken
    p = world.ready()
    journalled = _statements(engine, lambda: randomization.randomize(db, CLI, p.study_id))
    after = _statements(engine, db.commit)
    monkeypatch.delenv("TRIAL_ALLOCATION_JOURNAL")
    first = world.ready()
    plain = _statements(engine, lambda: randomization.randomize(db, CLI, first.study_id))
    db.commit()
    assert len(plain) <= 9, plain
    assert len(journalled) == len(plain) + 1, journalled
    assert [x for x in journalled if "allocation_journal_pending" in x] == [journalled[-1]]
    assert journalled[-1].lstrip().upper().startswith("INSERT")
    assert any(x.lstrip().upper().startswith("DELETE") and "allocation_journal_pending" in x for x in after)
    assert len(lines_of(tmp_path / "allocations.jsonl")) == 2
    assert db.execute(select(func.count()).select_from(AllocationJournalPending)).scalar() == 0


# --- a journal that cannot be written ----------------------------------------------------------

def test_a_journal_that_cannot_be_opened_refuses_before_a_slot_is_taken(world, db, tmp_path, monkeypatch):
    world.open(SEED)
    due_now(monkeypatch)
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


def pending(db) -> list[dict]:
    db.expire_all()
    try:
        return [x for x in db.execute(select(AllocationJournalPending.line).order_by(
            AllocationJournalPending.allocation_id)).scalars()]
    finally:
        db.commit()


def backdate_pending(db, seconds: int) -> None:
    db.execute(AllocationJournalPending.__table__.update().values(
        created_at=utcnow() - dt.timedelta(seconds=seconds)))
    db.commit()


@pytest.fixture()
def live(journal_file):
    """A committed trial in a database of its own (``/readyz`` reads through its own connections),
    randomization open, the journal set."""
    dep = Deployment("journal_live")
    dep.world.open(SEED)
    yield dep
    dep.drop()


def committed(db, fn):
    try:
        return fn(db)
    finally:
        db.commit()  # (SQLite: end the read, which would hold the database against the app's requests)


def test_a_line_that_cannot_be_appended_after_the_commit_stays_pending_and_is_appended_later(
        live, journal_file, monkeypatch, caplog):
    """The journal replaced by a folder between the check and the append (as a disk that fills
    then): the allocation stands, its line stays in the database's outbox; the next randomization
    is refused while the file cannot be written, /readyz says so once the line is a minute old, and
    the line is appended first once the journal can be written again."""
    world, db, client = live.world, live.db, live.app.test_client()
    a, b = world.ready().study_id, world.ready().study_id  # (strings: no lazy load holds SQLite's lock)
    assert client.get("/readyz").get_json()["checks"]["journal"] == "ok"
    aside = journal_file.with_name("aside")

    def fill_the_disk(session):
        journal_file.touch()
        journal_file.rename(aside)
        journal_file.mkdir()
    monkeypatch.setattr(database, "after_commit_hooks", [fill_the_disk] + list(database.after_commit_hooks))
    with caplog.at_level(logging.ERROR, logger="trial.randomize.journal"):
        first = rand(world, a, key="a")
    monkeypatch.setattr(database, "after_commit_hooks", database.after_commit_hooks[1:])
    assert first.status_code == 201, "the allocation is committed: it stands"
    arm = first.get_json()["arm"]
    logged = [r.getMessage() for r in caplog.records if r.name == "trial.randomize.journal"]
    assert len(logged) == 1 and a in logged[0] and "stays pending" in logged[0]
    line = json.loads(logged[0].split("The line: ", 1)[1])
    assert line["study_id"] == a and arm not in logged[0].replace(line["arm_digest"], "")
    assert pending(db) == [line], "kept in the database, not in this process"
    before = committed(db, taken)
    refused = rand(world, b, key="b")
    assert refused.status_code == 503 and "allocation journal" in refused.get_json()["error"]["message"]
    assert committed(db, taken) == before
    why = client.get("/readyz").get_json()["checks"]["journal"]
    assert "is not a regular file" in why
    journal_file.rmdir()
    aside.rename(journal_file)
    assert client.get("/readyz").get_json()["checks"]["journal"] == "ok", "a line younger than a minute is its owner's"
    backdate_pending(db, 120)
    due_now(monkeypatch)  # (this process looks at the pending lines every FLUSH_EVERY seconds)
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert "1 committed allocation(s) are not in the allocation journal yet" in ready.get_json()["checks"]["journal"]
    assert rand(world, b, key="b").status_code == 201
    assert [x["study_id"] for x in lines_of(journal_file)] == [a, b]
    assert lines_of(journal_file)[0] == line
    assert pending(db) == []
    assert client.get("/readyz").get_json()["checks"]["journal"] == "ok"


def test_a_line_left_by_a_process_killed_after_its_commit_is_appended_by_a_retry_or_by_another(
        world, db, journal_file, monkeypatch, tmp_path):
    """No after-commit hook runs (a process killed between the COMMIT and the append, or a COMMIT
    whose outcome was unknown to the client): the line is in the outbox. A retry with the same
    Idempotency-Key appends it (at any age); otherwise the next look of any process appends lines
    older than a few seconds, and `trial checks run` does."""
    world.open(SEED)
    a, b, c = world.ready(), world.ready(), world.ready()
    hooks = list(database.after_commit_hooks)
    monkeypatch.setattr(database, "after_commit_hooks", [h for h in hooks if h is not journalfile._after_commit])
    assert rand(world, a, key="ka").status_code == 201
    assert rand(world, b, key="kb").status_code == 201
    monkeypatch.setattr(database, "after_commit_hooks", hooks)
    assert lines_of(journal_file) == [] and [x["study_id"] for x in pending(db)] == [a.study_id, b.study_id]
    again = rand(world, a, key="ka")
    assert again.status_code == 200
    assert [x["study_id"] for x in lines_of(journal_file)] == [a.study_id], "the retry's line appended"
    assert [x["study_id"] for x in pending(db)] == [b.study_id]
    due_now(monkeypatch)
    assert rand(world, c, key="kc").status_code == 201
    assert [x["study_id"] for x in lines_of(journal_file)] == [a.study_id, c.study_id], "b is too young: its owner's"
    backdate_pending(db, 60)
    due_now(monkeypatch)
    assert rand(world, world.ready(), key="kd").status_code == 201
    assert [x["study_id"] for x in lines_of(journal_file)][:3] == [a.study_id, c.study_id, b.study_id]
    assert pending(db) == []
    # appending the same line twice is harmless: reconcile reads it once
    journal_file.write_text(journal_file.read_text() + journal_file.read_text().splitlines()[0] + "\n")
    report = journal.reconcile(db, CLI, [journal_file], dry_run=True)
    db.rollback()
    assert report.ok and report.duplicates == 1 and len(report.present) == 4


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
    due_now(monkeypatch)
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
    database with the journal on: C randomized by its coordinator through the API with the
    Idempotency-Key "c-key" (the backup has C, not its allocation), D (AT01) and
    E (NO01) screened, enrolled and randomized (the backup has neither). Then the backup restored,
    randomization held."""
    journal_path = tmp_path / "journal" / "allocations.jsonl"
    journal_path.parent.mkdir(mode=0o700)
    monkeypatch.setenv("TRIAL_ALLOCATION_JOURNAL", str(journal_path))
    due_now(monkeypatch)
    live = Deployment("journal_drill")
    w = live.world
    w.open(SEED)
    a, b = screened(w, "AT01", "A-1"), screened(w, "AT01", "B-1")
    w.randomize(a)
    w.randomize(b)
    c = screened(w, "AT01", "C-1")
    url = live.backup()
    assert rand(w, c.study_id, key="c-key").status_code == 201  # (by the coordinator, with a key)
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
    assert not report.ok and len(report.conflicts) == 5, report.conflicts
    text_ = "\n".join(report.conflicts)
    assert f"held by {ids['a']}" in text_ and "another arm" in text_ and "another randomization" in text_
    assert "not JSON" in text_
    # C's own slot (3) is journalled by no line now, though D's (4) is: a hole
    assert "stratum site=AT01 slot 3: no journal line" in text_ and "a journal is missing or cut" in text_
    assert _facts(r.db) == before
    r.db.close()
    instance = drill["tmp"] / "instance"
    run = trial(r.url, instance, "randomization", "reconcile", "--journal", str(bad))
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.count("CONFLICT: ") == 5 and "error: not reconciled: 5 conflict(s)" in run.stderr
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


# --- the file: whole lines or none ----------------------------------------------------------------

SHORT_WRITE = r"""
import json, os, resource, signal, sys
from pathlib import Path
from trial.audit.anchors import append_line
path = Path(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit: the write is cut short, then EFBIG
size = path.stat().st_size
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 40, resource.RLIM_INFINITY))
try:
    append_line(path, {"study_id": "AT01-0009", "padding": "x" * 200}, make_folder=False)
except OSError as e:
    print("refused", e.errno, os.path.getsize(path))
else:
    print("written")
"""


def test_a_short_write_is_cut_back_and_a_cut_line_gets_its_own_line(tmp_path):
    """A real short write (the file size limit of a child process: the kernel writes what fits and
    the next write fails, as a nearly full disk does): the file is cut back to its size before and
    the error raised; a file ending in a cut line gets a newline before the next line."""
    import subprocess
    import sys
    path = tmp_path / "allocations.jsonl"
    path.write_text('{"study_id": "AT01-0001"}\n')
    before = path.read_bytes()
    run = subprocess.run([sys.executable, "-c", SHORT_WRITE, str(path)], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parent.parent, check=False)
    assert run.stdout.split()[:1] == ["refused"], run.stdout + run.stderr
    assert int(run.stdout.split()[2]) == len(before) and path.read_bytes() == before, "cut back: no part of a line"
    path.write_bytes(before + b'{"arm_digest": "ab')  # a line cut by a crash (power lost mid-write)
    journalfile.append_line(path, {"study_id": "AT01-0002"}, make_folder=False)
    assert path.read_text().splitlines() == ['{"study_id": "AT01-0001"}', '{"arm_digest": "ab',
                                             '{"study_id": "AT01-0002"}']


def test_a_device_or_a_nearly_full_folder_is_no_journal(world, db, client, monkeypatch, tmp_path):
    world.open(SEED)
    due_now(monkeypatch)
    p = world.ready().study_id
    before = taken(db)
    monkeypatch.setenv("TRIAL_ALLOCATION_JOURNAL", "/dev/null")  # opens and writes, keeps nothing
    refused = rand(world, p, key="p")
    assert refused.status_code == 503 and "allocation journal cannot be written" in refused.get_json()["error"]["message"]
    assert "/dev/null is not a regular file" in client.get("/readyz").get_json()["checks"]["journal"]
    assert taken(db) == before
    folder = tmp_path / "journal"
    folder.mkdir()
    monkeypatch.setenv("TRIAL_ALLOCATION_JOURNAL", str(folder / "allocations.jsonl"))
    free = __import__("shutil").disk_usage(folder).free
    monkeypatch.setattr(journalfile, "MIN_FREE", free + (1 << 30))  # the floor above what the volume has free
    refused = rand(world, p, key="p")
    assert refused.status_code == 503 and taken(db) == before
    assert "bytes free (under" in client.get("/readyz").get_json()["checks"]["journal"]
    monkeypatch.setattr(journalfile, "MIN_FREE", 1 << 20)
    assert rand(world, p, key="p").status_code == 201


# --- reconcile: what a journal cannot prove -----------------------------------------------------------

def test_an_empty_journal_a_device_or_a_hole_proves_nothing(drill):
    r, ids, tmp = drill["restored"], drill["ids"], drill["tmp"]
    before = _facts(r.db)
    empty = tmp / "empty.jsonl"
    empty.write_text("")
    for given, why in (([empty], "hold no allocation line"), ([Path("/dev/null")], "not a regular file"),
                       ([tmp], "not a regular file")):
        report = journal.reconcile(r.db, CLI, given)
        r.db.rollback()
        assert not report.ok and any(why in c for c in report.conflicts), report.conflicts
        assert _facts(r.db) == before, "still held: nothing changed"
    # C's line lost (a journal cut, or one app server's journal not given): D's slot 4 of AT01 is
    # journalled, C's slot 3 (past the restored counter, 2) has no line: a hole
    lines = [x for x in lines_of(drill["journal"]) if x["study_id"] != ids["c"]]
    cut = tmp / "cut.jsonl"
    cut.write_text("".join(json.dumps(x) + "\n" for x in lines))
    report = journal.reconcile(r.db, CLI, [cut])
    r.db.rollback()
    assert report.conflicts == [("stratum site=AT01 slot 3: no journal line, allocation or reservation for it "
                                 "although later slots are journalled: a journal is missing or cut")]
    assert _facts(r.db) == before
    run = trial(r.url, tmp / "instance", "randomization", "reconcile", "--journal", str(empty))
    assert run.returncode == 1 and "--none-lost" in run.stderr and "Traceback" not in run.stderr


def test_lines_glued_by_a_cut_are_split_and_a_cut_fragment_whole_elsewhere_is_a_warning(drill):
    r, ids, tmp = drill["restored"], drill["ids"], drill["tmp"]
    text_ = drill["journal"].read_text().splitlines()
    d_text = next(x for x in text_ if f'"{ids["d"]}"' in x)
    # app server 1's journal: D's line cut by a crash, the next line glued to it (an old writer);
    # app server 2's journal has D's line whole
    glued = tmp / "app1.jsonl"
    glued.write_text("\n".join(x if x != d_text else d_text[:120] + text_[-1] for x in text_[:-1]) + "\n")
    whole = tmp / "app2.jsonl"
    whole.write_text(d_text + "\n")
    report = journal.reconcile(r.db, CLI, [glued, whole], dry_run=True)
    r.db.rollback()
    assert report.ok, report.conflicts
    assert len(report.warnings) == 1 and ids["d"] in report.warnings[0] and "cut short" in report.warnings[0]
    assert report.lines == 5 and {x.study_id for x in report.reserved} == {ids["d"], ids["e"]}
    # without the whole line elsewhere the fragment is a conflict (and D's slot a hole)
    report = journal.reconcile(r.db, CLI, [glued], dry_run=True)
    r.db.rollback()
    assert any("cut short by a crash, and its allocation is whole in no journal" in c for c in report.conflicts)


def test_every_field_of_a_line_is_covered_by_its_digest(drill):
    r, ids, tmp = drill["restored"], drill["ids"], drill["tmp"]
    before = _facts(r.db)
    for change in ({"at": "2020-01-01T00:00:00Z"}, {"screening_log_number": "X-9"}, {"site": "NO01"},
                   {"randomized_by": 99}, {"idempotency_key_sha256": "0" * 64}):
        lines = [({**x, **change} if x["study_id"] == ids["d"] else x) for x in lines_of(drill["journal"])]
        bad = tmp / "changed.jsonl"
        bad.write_text("".join(json.dumps(x) + "\n" for x in lines))
        report = journal.reconcile(r.db, CLI, [bad])
        r.db.rollback()
        assert not report.ok and any(ids["d"] in c or "no arm gives the line's digest" in c for c in report.conflicts), \
            (change, report.conflicts)
        assert any("no arm gives the line's digest" in c for c in report.conflicts), (change, report.conflicts)
        assert _facts(r.db) == before
    old = tmp / "v1.jsonl"
    old.write_text("".join(json.dumps({**x, "v": 1}) + "\n" for x in lines_of(drill["journal"])))
    report = journal.reconcile(r.db, CLI, [old])
    r.db.rollback()
    assert not report.ok and "journal line version 1, this system reads 2" in report.conflicts[0]


def test_a_replayed_allocation_keeps_who_randomized_it_and_answers_a_retry_with_its_key(drill):
    r, ids, told = drill["restored"], drill["ids"], drill["told"]
    c_line = next(x for x in lines_of(drill["journal"]) if x["study_id"] == ids["c"])
    coordinator = r.world.users["coordinator"]
    assert c_line["randomized_by"] == coordinator.id
    assert c_line["idempotency_key_sha256"] == hashlib.sha256(b"c-key").hexdigest() and "c-key" not in json.dumps(c_line)
    journal.reconcile(r.db, CLI, [drill["journal"]])
    r.db.commit()
    a = r.db.execute(select(Allocation).where(Allocation.study_id == ids["c"])).scalar_one()
    assert a.randomized_by_id == coordinator.id and a.idempotency_key == "sha256:" + c_line["idempotency_key_sha256"]
    r.db.commit()
    retry = rand(r.world, ids["c"], key="c-key")
    assert retry.status_code == 200 and retry.get_json()["arm"] == told[ids["c"]][1]
    other = rand(r.world, ids["c"], key="another")
    assert other.status_code == 409 and "never re-randomized" in other.get_json()["error"]["message"]


def test_reconcile_moves_each_sites_study_id_counter_past_the_journals(drill):
    """A site's counter behind the journals (a PITR restores the counter of its moment): moved past
    the highest study id of the site in the journals, replayed or present ones included."""
    r, ids = drill["restored"], drill["ids"]
    r.db.execute(text("UPDATE site_sequence SET last_number = 1"))
    r.db.commit()
    journal.reconcile(r.db, CLI, [drill["journal"]])
    r.db.commit()
    numbers = dict(r.db.execute(text("SELECT site.code, site_sequence.last_number FROM site_sequence "
                                     "JOIN site ON site.id = site_sequence.site_id")).all())
    r.db.commit()
    assert numbers == {"AT01": int(ids["d"][-4:]), "NO01": int(ids["e"][-4:])}


def test_a_reservation_written_into_the_database_is_refused(drill):
    """A database writer without the keys changes a reservation's arm (to choose the next child's
    arm): the journal line's digest, recomputed with the seed, does not give that arm: refused."""
    r, ids, told = drill["restored"], drill["ids"], drill["told"]
    journal.reconcile(r.db, CLI, [drill["journal"]])
    r.db.commit()
    res = r.db.execute(select(AllocationReservation).where(AllocationReservation.study_id == ids["d"])).scalar_one()
    res.arm = next(a for a in ARMS if a != told[ids["d"]][1])
    r.db.commit()
    d = screened(r.world, "AT01", "D-1").study_id
    before = _facts(r.db)
    answer = rand(r.world, d, key="d")
    assert answer.status_code == 409
    assert "does not match the allocation journal's line" in answer.get_json()["error"]["message"]
    assert _facts(r.db) == before
    res = r.db.execute(select(AllocationReservation).where(AllocationReservation.study_id == ids["d"])).scalar_one()
    res.arm = told[ids["d"]][1]
    r.db.commit()
    got = rand(r.world, d, key="d")
    assert got.status_code == 201 and got.get_json()["arm"] == told[ids["d"]][1]


def test_none_lost_works_before_randomization_was_ever_opened(world, db):
    journal.hold_randomization(db, CliActor(email="cli:restore"), "restored")
    db.commit()
    report = journal.reconcile(db, CLI, [], none_lost=True, operator="Ada", operator_statement="never opened")
    db.commit()
    assert report.hold_cleared
    assert db.execute(select(TrialState.randomization_hold)).scalar() is None
    rec = db.execute(select(AuditRecord).where(AuditRecord.action == "reconcile",
                                               AuditRecord.field == "randomization_hold")).scalar_one()
    assert "Ada signed that no allocation was lost" in rec.reason


# --- a database behind the journal ----------------------------------------------------------------

def test_a_database_behind_the_journal_is_held(live, journal_file, monkeypatch):
    """The last allocation's rows deleted as a restore from an older copy (a PITR, a snapshot, a
    promoted replica) would leave them: /readyz says the database is behind, the next randomization
    holds randomization (audited, naming the study id) and is refused, and enrollment with it."""
    w, db, client = live.world, live.db, live.app.test_client()
    a, b, c = (w.ready().study_id for _ in range(3))
    assert rand(w, a, key="a").status_code == 201
    assert rand(w, b, key="b").status_code == 201
    assert client.get("/readyz").get_json()["checks"]["journal"] == "ok"
    if is_pg():
        db.execute(text("SET session_replication_role = replica"))
    pid = db.execute(select(Participant.id).where(Participant.study_id == b)).scalar_one()
    alloc = db.execute(select(Allocation.id).where(Allocation.study_id == b)).scalar_one()
    db.execute(text("DELETE FROM allocation_journal_pending WHERE allocation_id = :a"), {"a": alloc})
    db.execute(text("DELETE FROM planned_visit WHERE participant_id = :p"), {"p": pid})
    db.execute(text("DELETE FROM allocation WHERE id = :a"), {"a": alloc})
    db.execute(text("UPDATE stratum SET last_seq = last_seq - 1 WHERE key = 'site=AT01'"))
    if is_pg():
        db.execute(text("SET session_replication_role = origin"))
    db.commit()
    why = client.get("/readyz").get_json()["checks"]["journal"]
    assert "the database is behind the allocation journal" in why and b in why
    due_now(monkeypatch)
    refused = rand(w, c, key="c")
    assert refused.status_code == 409 and "behind the allocation journal" in refused.get_json()["error"]["message"]
    db.expire_all()
    hold = db.execute(select(TrialState.randomization_hold)).scalar()
    assert hold and b in hold
    rec = db.execute(select(AuditRecord).where(AuditRecord.action == "restore",
                                               AuditRecord.field == "randomization_hold")).scalar_one()
    assert b in rec.reason
    assert db.execute(select(func.count()).select_from(Allocation).where(Allocation.study_id == c)).scalar() == 0
    db.commit()
    assert rand(w, c, key="c").status_code == 409, "held until reconciled"
    with pytest.raises(Conflict, match="Enrollment is closed"):
        w.enroll("AT01")
    db.rollback()
    # reconciled from the journal: B replayed into its slot, randomization open again
    report = journal.reconcile(db, CLI, [journal_file])
    db.commit()
    assert report.ok and report.replayed == [b] and report.hold_cleared
    assert client.get("/readyz").get_json()["checks"]["journal"] == "ok"
    due_now(monkeypatch)
    assert rand(w, c, key="c").status_code == 201


def randomized_as_if_killed_after_commit(w, db, monkeypatch) -> str:
    """A child randomized through the API by a process that died between the COMMIT and the
    journal's append (the hook left out for that request): its line is left pending, 30 s old."""
    a = w.ready().study_id
    hooks = list(database.after_commit_hooks)
    monkeypatch.setattr(database, "after_commit_hooks", [h for h in hooks if h is not journalfile._after_commit])
    assert rand(w, a, key="a").status_code == 201
    monkeypatch.setattr(database, "after_commit_hooks", hooks)
    backdate_pending(db, 30)
    return a


def test_trial_checks_run_appends_the_lines_left_pending(live, journal_file, monkeypatch):
    w, db = live.world, live.db
    a = randomized_as_if_killed_after_commit(w, db, monkeypatch)
    assert lines_of(journal_file) == []
    db.close()
    run = ok(trial(live.fresh.url, journal_file.parent.parent / "instance", "checks", "run"))
    assert "appended 1 pending allocation journal line(s)" in run.stdout
    assert [x["study_id"] for x in lines_of(journal_file)] == [a]
    assert pending(live.db) == []


def test_minimization_verify_counts_a_reservation_as_randomization_did_and_names_what_it_cannot(world, db):
    """Minimization counted a reserved slot for its site only while it was outstanding; verify
    re-derives an allocation made then the same way (ok), and names one it still cannot re-derive
    as "allocated while a reservation was outstanding" rather than a plain mismatch."""
    from trial.protocol.service import DEFAULT_PROTOCOL, load_text
    from trial.randomize import minimization
    load_text(db, CLI, DEFAULT_PROTOCOL.read_text().replace('method = "permuted_blocks"', 'method = "minimization"'))
    db.commit()
    design_row = world.open(SEED)
    for _ in range(3):
        world.randomize(world.ready("AT01"))
    child = world.ready("AT01")
    db.execute(text("UPDATE participant SET study_id = 'AT01-0099' WHERE id = :p"), {"p": child.id})
    db.commit()
    db.expire_all()
    design = randomization.get_design(db).design
    factors = [f["key"] for f in design["factors"]]
    prior = [(a.arm, randomization._levels(factors, "AT01", pp.strata)) for a, pp in db.execute(
        select(Allocation, Participant).join(Participant).order_by(Allocation.seq))]
    m = design["minimization"]
    arm, _ = minimization.choose([(a["key"], a["weight"]) for a in design["arms"]], factors,
                                 randomization._levels(factors, "AT01", child.strata), prior, m["probability"],
                                 m["imbalance"], *minimization.draws(SEED, 4))
    then = utcnow() - dt.timedelta(hours=1)
    line = journalfile.line(SEED, design_row.commitment, study_id="AT01-0099", site="AT01", stratum="minimization",
                            seq=4, arm=arm, at=then, audit_seq=1, screening_log_number=None)
    stratum = db.execute(select(Stratum).where(Stratum.key == "minimization")).scalar_one()
    site = db.execute(text("SELECT id FROM site WHERE code = 'AT01'")).scalar()
    db.add(AllocationReservation(study_id="AT01-0099", site_id=site, stratum_id=stratum.id, seq=4, arm=arm,
                                 randomized_at=then.replace(microsecond=0), journal_line=line,
                                 created_at=utcnow() - dt.timedelta(minutes=1)))
    stratum.last_seq = 4
    db.commit()
    fifth = world.randomize(world.ready("AT01")).allocation  # slot 5, the reservation outstanding
    assert fifth.seq == 5
    reserved = randomization.randomize(db, CLI, "AT01-0099")  # the reserved child entered again
    db.commit()
    assert (reserved.allocation.seq, reserved.allocation.arm) == (4, arm)
    check = randomization.verify(db, CLI, seed=SEED)
    assert check.ok, check.problems
    wrong = next(a for a in ARMS if a != fifth.arm)
    db.execute(text("UPDATE allocation SET arm = :a WHERE seq = 5"), {"a": wrong})
    db.commit()
    check = randomization.verify(db, CLI, seed=SEED)
    assert not check.ok and len(check.problems) == 1
    assert "(slot 5) was allocated while a reservation was outstanding (slot(s) 4)" in check.problems[0]


def test_a_starting_server_appends_the_lines_left_pending_and_holds_a_database_behind(live, journal_file, monkeypatch):
    """What serving_app runs at start (trial.app): a line a killed process left pending is appended;
    then, the journal's last allocation missing from the database, randomization is held."""
    w, db = live.world, live.db
    a = randomized_as_if_killed_after_commit(w, db, monkeypatch)
    journalfile.at_start(live.fresh.engine)
    assert [x["study_id"] for x in lines_of(journal_file)] == [a] and pending(db) == []
    assert db.execute(select(TrialState.randomization_hold)).scalar() is None
    db.commit()
    other = json.loads(json.dumps(lines_of(journal_file)[0]))
    other.update(study_id="AT01-0777", seq=2)  # a later allocation the database lacks (restored from before it)
    journalfile.append_line(journal_file, other, make_folder=False)
    journalfile.at_start(live.fresh.engine)
    db.expire_all()
    hold = db.execute(select(TrialState.randomization_hold)).scalar()
    db.commit()
    assert hold and "AT01-0777" in hold and "behind the allocation journal" in hold
