"""The site archive (issue 29): one casebook per child, index.csv, the site's audit trail and a
manifest whose digests match the files; `trial archive site`; the manager's background job with its
progress, its zip and its failure; who may ask for and download an archive; audited."""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
import re
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.conftest import FreshDatabase
from tests.helpers import PASSWORD, World, backdate_randomization, randomized_before
from trial.audit.models import AuditRecord
from trial.db import make_session_factory, utcnow
from trial.errors import Conflict, NotFound, ValidationError
from trial.oversight import archive as archives
from trial.oversight.models import ArchiveJob
from trial.participants.models import Participant
from trial.sites.models import Site

SEED = bytes(range(32))
R = dt.date.today() - dt.timedelta(days=200)


def kids_at(world, db, n: int = 3, site: str = "AT01") -> list[Participant]:
    world.open(SEED)
    out = [randomized_before(world, db, R, site)[0] for _ in range(n)]
    out.append(world.enroll(site))  # one enrolled, not randomized
    backdate_randomization(db, dt.datetime.combine(R, dt.time(10, 0)))
    db.commit()
    return out


def check_folder(folder: Path, manifest: dict, study_ids: list[str]) -> None:
    """Every file's digest and size as the manifest says, the whole digest, the index complete."""
    on_disk = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert on_disk == [f["path"] for f in manifest["files"]]
    for f in manifest["files"]:
        data = (folder / f["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["size"], f["path"]
    lines = "".join(f"{f['sha256']}  {f['path']}\n" for f in sorted(manifest["files"], key=lambda f: f["path"]))
    assert hashlib.sha256(lines.encode()).hexdigest() == manifest["sha256"]
    # `sha256sum -c` checks the folder from the manifest's lines
    check = subprocess.run(["sha256sum", "-c", "-"], input=lines, cwd=folder, capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    with open(folder / "index.csv", encoding="utf-8") as f:
        index = list(csv.DictReader(f))
    assert [r["study_id"] for r in index] == sorted(study_ids)
    digests = {f["path"]: f["sha256"] for f in manifest["files"]}
    for r in index:
        assert r["file"] == f"casebooks/{r['study_id']}.pdf" and digests[r["file"]] == r["sha256"]
        info = subprocess.run(["pdfinfo", str(folder / r["file"])], capture_output=True, text=True, check=True).stdout
        assert re.search(rf"^Pages:\s+{r['pages']}$", info, re.MULTILINE), info
        assert r["status"] in (("Randomized", "Enrolled") if manifest["language"] == "en" else
                               ("Randomisiert", "Eingeschlossen", "Aufgenommen") if manifest["language"] == "de" else
                               (r["status"],)) and r["status"], r["status"]
    assert (folder / "audit-trail.csv").stat().st_size > 0 and (folder / "audit-trail.pdf").read_bytes()[:4] == b"%PDF"


def test_the_archive_of_a_site(world, db, tmp_path):
    kids = kids_at(world, db)
    world.enroll("NO01")  # another site's child is not in it
    seen = []
    manifest = archives.build_site(db, "at01", tmp_path / "a", "en", lambda done, total: seen.append((done, total)))
    assert manifest["site"] == "AT01" and manifest["participants"] == len(kids)
    assert seen[0] == (0, len(kids)) and seen[-1] == (len(kids), len(kids)) and len(seen) == len(kids) + 1
    check_folder(tmp_path / "a", manifest, [p.study_id for p in kids])
    on_disk = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert on_disk == manifest
    # private, as the bundle: folders 0700, files 0600
    for path in [tmp_path / "a", *(tmp_path / "a").rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
    # the full casebook (the investigator file): the arm is in it
    text = subprocess.run(["pdftotext", str(tmp_path / "a" / "casebooks" / f"{kids[0].study_id}.pdf"), "-"],
                          capture_output=True, text=True, check=True).stdout
    assert "Allocated arm" in text
    # the site's audit trail names the children, in words
    trail = (tmp_path / "a" / "audit-trail.csv").read_text(encoding="utf-8-sig")
    assert kids[0].study_id in trail and "Created" in trail


def test_the_archive_refuses_a_used_folder_an_unknown_site_and_language(world, db, tmp_path):
    kids_at(world, db, 1)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("keep me")
    with pytest.raises(Conflict):
        archives.build_site(db, "AT01", tmp_path / "used")
    assert os.listdir(tmp_path / "used") == ["x"]
    with pytest.raises(NotFound):
        archives.build_site(db, "ZZ99", tmp_path / "new")
    with pytest.raises(ValidationError):
        archives.build_site(db, "AT01", tmp_path / "new2", "xx")
    assert not (tmp_path / "new").exists() and not (tmp_path / "new2").exists()


def login(app, who: str):
    c = app.test_client()
    assert c.post("/login", data={"email": f"{who}@example.org", "password": PASSWORD}).status_code == 302
    return c


def test_the_managers_archive_job(world, db, app, tmp_path):
    kids = kids_at(world, db)
    app.instance_path = str(tmp_path / "instance")
    c = login(app, "manager")
    page = c.get("/sites/AT01/archives")
    assert page.status_code == 200
    assert "/sites/AT01/archives" in c.get("/dashboard/sites/AT01").get_data(as_text=True)
    r = c.post("/sites/AT01/archives", data={"language": "de"})
    assert r.status_code == 302
    db.expire_all()
    job = db.execute(select(ArchiveJob)).scalar_one()
    assert job.status == "ready", job.error
    assert job.done == job.total == len(kids) and job.language == "de" and job.requested_by_id == world.users["manager"].id
    assert job.started_at and job.finished_at and job.size == os.path.getsize(job.path)
    assert hashlib.sha256(Path(job.path).read_bytes()).hexdigest() == job.sha256
    page = c.get("/sites/AT01/archives").get_data(as_text=True)
    assert f"/archives/{job.id}.zip" in page and job.sha256 in page
    z = c.get(f"/archives/{job.id}.zip")
    assert z.status_code == 200 and z.mimetype == "application/zip"
    out = tmp_path / "unzipped"
    with zipfile.ZipFile(io.BytesIO(z.data)) as zf:
        zf.extractall(out)
    manifest = json.loads((out / "AT01" / "manifest.json").read_text())
    assert manifest["language"] == "de"
    check_folder(out / "AT01", manifest, [p.study_id for p in kids])
    # audited: who asked for which archive, and the archive made with its digest
    recs = db.execute(select(AuditRecord).where(AuditRecord.entity == "site", AuditRecord.entity_id == "AT01")).scalars().all()
    asked = [x for x in recs if x.action == "request_archive"]
    made = [x for x in recs if x.action == "archive" and x.field == "archive_sha256"]
    assert asked and asked[0].actor == "manager@example.org"
    assert made and made[0].new == manifest["sha256"]
    # the archive's record is the requesting manager's, with the manifest's and the zip's digests
    assert made[0].actor_id == world.users["manager"].id
    assert any(x.field == "zip_sha256" and x.new == job.sha256 for x in recs if x.action == "archive")
    assert stat.S_IMODE(os.stat(job.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(Path(job.path).parent).st_mode) == 0o700


def test_an_archive_job_that_fails_says_why(world, db, app, tmp_path):
    kids_at(world, db, 1)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the instance folder should be")
    app.instance_path = str(blocker)
    c = login(app, "manager")
    assert c.post("/sites/AT01/archives", data={"language": "en"}).status_code == 302
    db.expire_all()
    job = db.execute(select(ArchiveJob)).scalar_one()
    # a translatable category on the page, the exception's details only in the log
    assert job.status == "failed" and job.error == archives.NO_SPACE and "Errno" not in job.error
    page = c.get("/sites/AT01/archives").get_data(as_text=True)
    assert "could not be written to the instance folder" in page and "NotADirectoryError" not in page
    assert c.get(f"/archives/{job.id}.zip").status_code == 409
    assert c.get("/archives/999.zip").status_code == 404


def test_a_stale_job_is_failed(world, db):
    site = db.execute(select(Site).where(Site.code == "AT01")).scalar_one()
    job = ArchiveJob(site_id=site.id, language="en", status="building", heartbeat=utcnow() - dt.timedelta(hours=1))
    db.add(job)
    db.flush()
    archives.watch(db)
    db.expire_all()
    assert db.get(ArchiveJob, job.id).status == "failed"


def test_the_archive_routes_are_the_managers():
    from trial.policy import POLICY
    assert POLICY["closeout.archives_page"] == POLICY["closeout.archive_zip"] == ("manager",)


@pytest.mark.parametrize("who", ["coordinator", "monitor", "assessor", "statistician", "admin"])
def test_only_the_manager_asks_for_and_downloads_archives(world, db, app, tmp_path, who):
    kids_at(world, db, 1)
    app.instance_path = str(tmp_path / "instance")
    manager = login(app, "manager")
    manager.post("/sites/AT01/archives", data={"language": "en"})
    db.expire_all()
    job = db.execute(select(ArchiveJob)).scalar_one()
    c = login(app, who)
    assert c.get("/sites/AT01/archives").status_code == 403
    assert c.post("/sites/AT01/archives", data={"language": "en"}).status_code == 403
    assert c.get(f"/archives/{job.id}.zip").status_code == 403
    db.expire_all()
    assert len(db.execute(select(ArchiveJob)).scalars().all()) == 1


# --- the command line and the detached job, on a database of their own -------------------------------

@pytest.fixture(scope="module")
def own_db():
    from trial import create_app
    fresh = FreshDatabase("archive")
    db = make_session_factory(fresh.engine)()
    app = create_app({"ENGINE": fresh.engine, "SESSION_FACTORY": make_session_factory(fresh.engine), "TESTING": True,
                      "WTF_CSRF_ENABLED": False, "SECRET_KEY": "test-secret"})
    world = World(db, app).setup()
    kids = kids_at(world, db, 2)
    db.commit()
    yield fresh, db, kids
    db.close()
    fresh.drop()


def run(url: str, instance: Path, *args: str):
    env = dict(os.environ, TRIAL_DATABASE_URL=url, TRIAL_INSTANCE_PATH=str(instance))
    return subprocess.run([sys.executable, "-m", "trial.cli", *args], env=env, capture_output=True, text=True, timeout=300,
                          check=False)


def test_trial_archive_site(own_db, tmp_path):
    fresh, db, kids = own_db
    r = run(fresh.url, tmp_path / "instance", "archive", "site", "--site", "AT01", "--to", str(tmp_path / "out"),
            "--language", "he")
    assert r.returncode == 0, r.stderr
    assert f"{len(kids)}/{len(kids)} casebooks" in r.stderr  # progress on stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["sha256"] in r.stdout and manifest["language"] == "he"
    check_folder(tmp_path / "out", manifest, [p.study_id for p in kids])
    db.rollback()
    made = db.execute(select(AuditRecord).where(AuditRecord.entity == "site", AuditRecord.action == "archive",
                                                AuditRecord.field == "archive_sha256")).scalars().all()
    assert made and made[-1].new == manifest["sha256"] and made[-1].actor.startswith("cli:")
    db.commit()  # hold no transaction (on SQLite: no lock) while the command runs
    again = run(fresh.url, tmp_path / "instance", "archive", "site", "--site", "AT01", "--to", str(tmp_path / "out"))
    assert again.returncode != 0 and again.stderr.startswith("error: ") and "Traceback" not in again.stderr
    unknown = run(fresh.url, tmp_path / "instance", "archive", "site", "--site", "ZZ99", "--to", str(tmp_path / "o2"))
    assert unknown.returncode != 0 and "ZZ99" in unknown.stderr and "Traceback" not in unknown.stderr


def test_the_detached_worker_builds_a_job(own_db, tmp_path):
    fresh, db, kids = own_db
    site = db.execute(select(Site).where(Site.code == "AT01")).scalar_one()
    job = ArchiveJob(site_id=site.id, language="ko", status="queued")
    db.add(job)
    db.commit()
    archives.start_worker(fresh.url, tmp_path / "instance", job.id)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        db.rollback()
        db.expire_all()
        state = db.get(ArchiveJob, job.id)
        db.commit()
        if state.status in ("ready", "failed"):
            break
        time.sleep(0.5)
    assert state.status == "ready", (state.status, state.error, (tmp_path / "instance" / "worker.log").read_text())
    assert state.done == state.total == len(kids) and state.worker
    assert Path(state.path).parent == tmp_path / "instance" / "archives"
    # a job already taken is not built twice
    r = run(fresh.url, tmp_path / "instance", "archive", "run-job", str(job.id))
    assert r.returncode != 0 or "ready" in r.stdout


def test_the_archive_reads_one_consistent_snapshot(own_db, tmp_path):
    """On PostgreSQL the whole archive (the trail, every casebook, the index) is read in one
    REPEATABLE READ, READ ONLY transaction: a change committed meanwhile is in none of its files."""
    from sqlalchemy import text
    fresh, db, kids = own_db
    if db.get_bind().dialect.name != "postgresql":
        pytest.skip("SQLite reads one snapshot within its transaction")
    seen = []
    last_kid = max(kids, key=lambda k: k.study_id)
    dob, sid, pid = last_kid.date_of_birth, last_kid.study_id, last_kid.id
    db.commit()

    def progress(done, total):
        seen.append(tuple(db.execute(text("SELECT current_setting('transaction_isolation'), "
                                          "current_setting('transaction_read_only')")).one()))
        if done == 1:  # another connection changes the last child meanwhile, committed
            with make_session_factory(fresh.engine)() as other:
                other.execute(text("UPDATE participant SET date_of_birth = '2019-01-31' WHERE id = :i"), {"i": pid})
                other.commit()
    try:
        archives.build_site(db, "AT01", tmp_path / "snap", "en", progress)
        db.rollback()
        assert set(seen) == {("repeatable read", "on")}
        trail = (tmp_path / "snap" / "audit-trail.csv").read_text(encoding="utf-8-sig")
        last = subprocess.run(["pdftotext", str(tmp_path / "snap" / "casebooks" / f"{sid}.pdf"), "-"],
                              capture_output=True, text=True, check=True).stdout
        assert "2019-01-31" not in last and dob.isoformat() in last and trail
    finally:
        db.rollback()
        db.execute(text("UPDATE participant SET date_of_birth = :d WHERE id = :i"), {"d": dob, "i": pid})
        db.commit()


def test_a_job_the_watch_failed_stays_failed(world, db, session_factory, tmp_path):
    """The job's end is written only while it is still building: a job the watch failed meanwhile
    (its worker was taken for dead) is not flipped to ready, its zip is removed and no archive is
    recorded."""
    from sqlalchemy import update
    kids_at(world, db, 1)
    site = db.execute(select(Site).where(Site.code == "AT01")).scalar_one()
    job = ArchiveJob(site_id=site.id, language="en", status="queued", requested_by_id=world.users["manager"].id)
    db.add(job)
    db.commit()
    job_id, folder = job.id, tmp_path / "archives"

    def factory():  # once the zip is written (the build is over), the watch fails the job first
        if any(folder.glob("site-*.zip")):
            with session_factory() as s:
                s.execute(update(ArchiveJob).where(ArchiveJob.id == job_id).values(status="failed",
                                                                                   error=archives.STOPPED))
                s.commit()
        return session_factory()
    assert archives.run_job(factory, job_id, tmp_path) == "failed"
    db.expire_all()
    j = db.get(ArchiveJob, job_id)
    assert j.status == "failed" and j.error == archives.STOPPED and j.path is None
    assert not list(folder.glob("site-*.zip"))
    assert not db.execute(select(AuditRecord).where(AuditRecord.entity == "site", AuditRecord.action == "archive")).first()
