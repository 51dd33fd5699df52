"""The site archive for the investigator file at close-out: one casebook PDF per child (the full,
unblinded casebook), ``index.csv`` (study id, file, pages, sha256, status), the site's audit
trail (``audit-trail.csv`` and ``audit-trail.pdf``) and ``manifest.json`` with the SHA-256 of every
file and of the whole (the SHA-256 of the files' ``<sha256>  <path>`` lines, sorted by path, each
ending in a newline: `sha256sum`'s format, so ``sha256sum -c`` checks the files).

Made by `trial archive site --site C --to DIR`, or from the manager's page as a background job
(:class:`trial.oversight.models.ArchiveJob`: queued → building with its progress → ready with a zip
in the instance folder, or failed with the error), run by a detached `trial archive run-job ID`
(:func:`start_worker`) or inline (``TRIAL_LOCK_BUILDER=inline``, the tests). Every archive is
audited (who made which archive of which site when, and its manifest's digest), attributed to the
user who asked for it.

One consistent copy: on PostgreSQL the whole archive is read in one REPEATABLE READ, READ ONLY
transaction (the helper processes of a large site join its exported snapshot), so the casebooks,
the index and the audit trail show the same moment. Before it the casebook signatures' digests are
checked (:func:`trial.oversight.signoff.check_all`, a transaction of its own). The archive's
folders are private (0700) and its files 0600, as the bundle's. A job's failure is kept as a
translatable category (the page shows it in the reader's language; the details go to the log).
No Flask here.
"""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import logging
import multiprocessing
import os
import shutil
import time
import zipfile
from collections import defaultdict
from pathlib import Path

from sqlalchemy import Engine, select, text, update
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.auth.models import User
from trial.catalogue import LABELS, LANGUAGES, N_, Msg
from trial.db import is_sqlite, make_engine, utcnow
from trial.detached import spawn_detached
from trial.errors import Conflict, NotFound, ValidationError
from trial.oversight import auditexport, casebook, signoff
from trial.oversight.auditexport import Reader, Words
from trial.oversight.document import render
from trial.oversight.models import ArchiveJob
from trial.participants.models import Participant
from trial.participants.service import allocations_for, events_of, status_label
from trial.scope import CliActor, require_role
from trial.sites.models import Site

log = logging.getLogger("trial.oversight")
INDEX_HEADER = ("study_id", "file", "pages", "sha256", "status")
STALE = dt.timedelta(minutes=5)  # a building job whose worker has not reported for this long is taken for dead
# why a job failed, as the page says it (translated there); the details are in the log
STOPPED = N_("The archive's worker stopped reporting: the archive was not finished.")
NOT_STARTED = N_("The archive's worker could not be started (see the server's log).")
NO_SPACE = N_("The archive could not be written to the instance folder (no space or no permission; see the server's log).")
FAILED = N_("The archive could not be built because of an unexpected error (see the server's log).")
ERRORS = (STOPPED, NOT_STARTED, NO_SPACE, FAILED)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def whole_digest(files: list[dict]) -> str:
    """The archive's digest: SHA-256 of ``<sha256>  <path>\\n`` for each file, sorted by path."""
    text = "".join(f"{f['sha256']}  {f['path']}\n" for f in sorted(files, key=lambda f: f["path"]))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _site(db: Session, code: str) -> Site:
    site = db.execute(select(Site).where(Site.code == (code or "").upper())).scalar_one_or_none()
    if site is None:
        raise NotFound(Msg(N_("No site with the code %(code)s."), code=code or ""))
    return site


def build_site(db: Session, site_code: str, to: Path, language: str = "en", progress=None,
               now: dt.datetime | None = None) -> dict:
    """Write the site's archive into the folder ``to`` (made if missing; it must be empty) and
    return its manifest. ``progress(done, total)`` is called after each child."""
    if language not in LANGUAGES:
        raise ValidationError(Msg(N_("%(field)s must be one of: %(allowed)s."), field="language",
                                  allowed=", ".join(LANGUAGES)), {"language": N_("unknown language")})
    to = Path(to)
    if to.exists() and any(to.iterdir()):
        raise Conflict(Msg(N_("%(folder)s is not empty: an archive goes into a new or empty folder."), folder=str(to)))
    snapshot = _begin_snapshot(db)
    site = _site(db, site_code)
    to.mkdir(mode=0o700, parents=True, exist_ok=True)
    to.chmod(0o700)
    (to / "casebooks").mkdir(mode=0o700, exist_ok=True)
    (to / "casebooks").chmod(0o700)
    now = now or utcnow()
    actor = CliActor(email="archive")
    kids = list(db.execute(select(Participant).where(Participant.site_id == site.id)
                           .order_by(Participant.study_id)).scalars())
    total = len(kids)
    if progress:
        progress(0, total)
    w = Words(db, language, site.timezone)
    trail, by_child = _trail(db, actor, site, kids, w, getattr(progress, "beat", None))  # (a job's heartbeat)
    status = _statuses(db, kids)
    files, index = [], []
    work = {"site": site, "words": w, "by_child": by_child, "names": casebook._names(db), "language": language,
            "now": now, "to": to}
    for n, (sid, name, pages, digest, size) in enumerate(_casebooks(db, [p.study_id for p in kids], work, snapshot), 1):
        files.append({"path": name, "sha256": digest, "size": size})
        index.append((sid, name, pages, digest, w.t(LABELS["status"].get(status[sid], status[sid]))))
        if progress:
            progress(n, total)
    _write_rest(to, site, index, trail, w, now, files)
    manifest = {"site": site.code, "site_name": site.name, "language": language, "participants": total,
                "created_at": now.isoformat(timespec="seconds") + "Z", "files": sorted(files, key=lambda f: f["path"]),
                "sha256": whole_digest(files),
                "sha256_of": "the lines '<sha256>  <path>' of the files, sorted by path, each ending in a newline"}
    _private_write(to / "manifest.json", (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return manifest


def _begin_snapshot(db: Session) -> str | None:
    """PostgreSQL: the archive's one REPEATABLE READ, READ ONLY transaction (what was pending in the
    session is committed first), its snapshot exported for the helper processes. None elsewhere
    (SQLite reads one snapshot within its transaction)."""
    if db.get_bind().dialect.name != "postgresql" or not isinstance(db.bind, Engine):
        return None  # (a session joined to its caller's transaction: that transaction is the snapshot)
    if db.in_transaction():
        db.commit()
    db.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    db.execute(text("SET TRANSACTION READ ONLY"))
    return db.execute(text("SELECT pg_export_snapshot()")).scalar()


def _private_write(path: Path, data: bytes) -> None:
    """A file only the service user reads (0600), as the bundle's."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _statuses(db: Session, kids: list[Participant]) -> dict[str, str]:
    allocs = allocations_for(db, [p.id for p in kids])
    events = events_of(db, [p.id for p in kids])
    return {p.study_id: status_label(p.id in allocs, events.get(p.id, [])) for p in kids}


def _trail(db: Session, actor, site: Site, kids: list[Participant], w: Words, beat=None) -> tuple[list[dict], dict]:
    """The site's whole audit trail in words, and each child's part of it (``beat()`` between its
    steps: the job's heartbeat, a large site's trail takes a while)."""
    beat = beat or (lambda: None)
    scope = auditexport.scopes(db, actor, kids, Reader(True, True, True))
    scope[("site", site.code)] = 0
    beat()
    recs = auditexport.records(db, actor, scope, True)
    beat()
    trail = auditexport.rows(db, recs, scope, w)
    beat()
    by_child: dict[str, list[dict]] = defaultdict(list)
    for r in trail:
        if r["study_id"]:
            by_child[r["study_id"]].append(r)
    return trail, by_child


def _write_rest(to: Path, site: Site, index: list, trail: list[dict], w: Words, now: dt.datetime, files: list[dict]) -> None:
    """index.csv and the site's audit trail (CSV, PDF)."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\r\n")
    out.writerow(INDEX_HEADER)
    out.writerows(index)
    _write(to, "index.csv", buf.getvalue().encode("utf-8"), files)
    _write(to, "audit-trail.csv", auditexport.to_csv(trail, w), files)
    pdf, _, _ = auditexport.to_pdf(w.t(N_("Audit trail")), f"{site.code} {site.name}", trail, w, now, with_child=True)
    _write(to, "audit-trail.pdf", pdf, files)


# --- the casebooks, in this process or (a large site on PostgreSQL) in helper processes --------------

PARALLEL_FROM = 100  # children: fewer are drawn here; more by helper processes, one per core (at most two)
CHUNK = 10
_CHILD_WORK: dict = {}  # in a helper process only: its job's work (given by the pool's initializer)


def _one(db: Session, study_id: str, w: dict) -> tuple[str, str, int, str, int]:
    cb = casebook.casebook(db, CliActor(email="archive"), study_id, w["language"], w["now"],
                           prefetched=(w["site"], w["words"], w["by_child"].get(study_id, []), w["names"]))
    pdf, pages = render(cb.document)
    name = f"casebooks/{study_id}.pdf"
    _private_write(w["to"] / name, pdf)
    return study_id, name, pages, hashlib.sha256(pdf).hexdigest(), len(pdf)


def _casebooks(db: Session, study_ids: list[str], work: dict, snapshot: str | None):
    """Each child's casebook written, (study id, file, pages, sha256, size) in the children's order.
    A large site on PostgreSQL: helper processes (forked, given this job's ``work``), each reading in
    the archive's snapshot (``snapshot``, exported at its start)."""
    processes = min(2, os.cpu_count() or 1)
    if len(study_ids) < PARALLEL_FROM or processes < 2 or snapshot is None \
            or "fork" not in multiprocessing.get_all_start_methods():
        for n, sid in enumerate(study_ids, 1):
            yield _one(db, sid, work)
            if n % 200 == 0:
                db.expunge_all()  # (the session holds no more than a few hundred children's rows)
        return
    url = db.get_bind().url.render_as_string(hide_password=False)
    chunks = [(url, snapshot, study_ids[i:i + CHUNK]) for i in range(0, len(study_ids), CHUNK)]
    with multiprocessing.get_context("fork").Pool(processes, initializer=_init_child, initargs=(work,)) as pool:
        for done in pool.imap(_chunk, chunks):
            yield from done


def _init_child(work: dict) -> None:
    _CHILD_WORK.clear()
    _CHILD_WORK.update(work)


def _chunk(args) -> list[tuple]:
    url, snapshot, study_ids = args
    engine = _ENGINES.get(url)
    if engine is None:
        engine = _ENGINES[url] = make_engine(url)
    with Session(engine) as db:
        db.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        db.execute(text(f"SET TRANSACTION SNAPSHOT '{_quoted(snapshot)}'"))  # (it takes no parameter)
        out = [_one(db, sid, _CHILD_WORK) for sid in study_ids]
        db.rollback()
    return out


_ENGINES: dict = {}


def _quoted(snapshot: str) -> str:
    if not all(c.isalnum() or c == "-" for c in snapshot):
        raise ValueError("unexpected snapshot name")
    return snapshot


def _write(to: Path, name: str, data: bytes, files: list[dict]) -> None:
    _private_write(to / name, data)
    files.append({"path": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})


def record_made(db: Session, actor, site_code: str, manifest: dict, where: str, zip_sha256: str | None = None) -> None:
    """The audit record of an archive: who made (asked for) which site's archive when, with its
    manifest's digest (and the zip's)."""
    changes = {"archive": (None, where), "archive_sha256": (None, manifest["sha256"]),
               "participants": (None, manifest["participants"])}
    if zip_sha256:
        changes["zip_sha256"] = (None, zip_sha256)
    audit.record(db, actor, "archive", "site", site_code, changes, reason="site archive for the investigator file")


def check_signatures(db: Session, site_code: str) -> int:
    """Before an archive: the digest check of the site's casebook signatures (invalidating those
    whose data changed around the audit trail), committed, so the archive prints their status."""
    n = signoff.check_all(db, [_site(db, site_code).id])
    db.commit()
    return n


# --- the background job ---------------------------------------------------------------------------

def request_archive(db: Session, actor, site_code: str, language: str) -> ArchiveJob:
    """Queue a site's archive (the manager); audited. Building it is the caller's next step
    (:func:`start_worker`, or :func:`run_job` inline)."""
    require_role(db, actor, "manager")
    site = _site(db, site_code)
    if language not in LANGUAGES:
        language = "en"
    job = ArchiveJob(site_id=site.id, requested_by_id=getattr(actor, "id", None), language=language, status="queued")
    db.add(job)
    db.flush()
    audit.record(db, actor, "request_archive", "site", site.code, {"archive_job": (None, job.id), "language": (None, language)},
                 reason="site archive for the investigator file")
    return job


def jobs_of(db: Session, actor, site_code: str) -> list[ArchiveJob]:
    require_role(db, actor, "manager")
    site = _site(db, site_code)
    return list(db.execute(select(ArchiveJob).where(ArchiveJob.site_id == site.id).order_by(ArchiveJob.id.desc())).scalars())


def ready_job(db: Session, actor, job_id: int) -> ArchiveJob:
    """A finished archive for the manager to download (404 unknown; 409 not ready)."""
    require_role(db, actor, "manager")
    job = db.get(ArchiveJob, job_id)
    if job is None:
        raise NotFound(N_("No such archive."))
    if job.status != "ready" or not job.path or not os.path.exists(job.path):
        raise Conflict(N_("The archive is not ready."))
    return job


def watch(db: Session) -> None:
    """A job whose worker stopped reporting (or that nobody took) is failed with the reason."""
    cut = utcnow() - STALE
    db.execute(update(ArchiveJob).where(ArchiveJob.status.in_(("queued", "building")),
                                        ((ArchiveJob.heartbeat.is_not(None)) & (ArchiveJob.heartbeat < cut)) |
                                        ((ArchiveJob.heartbeat.is_(None)) & (ArchiveJob.created_at < cut)))
               .values(status="failed", error=STOPPED, finished_at=utcnow()))


def run_job(session_factory, job_id: int, instance: Path, worker: str = "inline") -> str:
    """Build a queued job's archive into ``instance``/archives as a zip; its state, progress and
    end in the database (each in its own committed transaction). Returns the final status. The
    end is written only while the job is still building (a job the watch failed stays failed)."""
    with session_factory() as db:
        taken = db.execute(update(ArchiveJob).where(ArchiveJob.id == job_id, ArchiveJob.status == "queued")
                           .values(status="building", worker=worker[:100], started_at=utcnow(), heartbeat=utcnow())).rowcount
        db.commit()
        job = db.get(ArchiveJob, job_id)
        if not taken:
            return job.status if job else "unknown"
        code, language, requested_by = db.get(Site, job.site_id).code, job.language, job.requested_by_id
    folder = Path(instance) / "archives"
    work = folder / f"archive-{job_id}.tmp"
    target = None
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)
        shutil.rmtree(work, ignore_errors=True)
        with session_factory() as db:
            check_signatures(db, code)
            manifest = build_site(db, code, work, language, _reporter(session_factory, db, job_id))
            db.rollback()
        target = _zip(work, folder / f"site-{code}-archive-{job_id}.zip", code, manifest)
        with session_factory() as db:
            digest = _sha256(target)
            done = db.execute(update(ArchiveJob).where(ArchiveJob.id == job_id, ArchiveJob.status == "building")
                              .values(status="ready", path=str(target), sha256=digest, size=target.stat().st_size,
                                      finished_at=utcnow(), heartbeat=utcnow(), done=manifest["participants"],
                                      total=manifest["participants"])).rowcount
            if not done:  # the watch failed it meanwhile: it stays failed, its zip goes
                db.rollback()
                target.unlink(missing_ok=True)
                job = db.get(ArchiveJob, job_id)
                return job.status if job else "unknown"
            who = db.get(User, requested_by) if requested_by else None
            record_made(db, who if who is not None else f"archive job {job_id}", code, manifest, target.name, digest)
            db.commit()
        return "ready"
    except Exception as e:
        log.exception("site archive %s failed", job_id)
        shutil.rmtree(work, ignore_errors=True)
        if target is not None:
            target.unlink(missing_ok=True)
        with session_factory() as db:
            db.execute(update(ArchiveJob).where(ArchiveJob.id == job_id, ArchiveJob.status == "building")
                       .values(status="failed", error=NO_SPACE if isinstance(e, OSError) else FAILED,
                               finished_at=utcnow()))
            db.commit()
        return "failed"


def _zip(work: Path, target: Path, code: str, manifest: dict) -> Path:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # (private, as the files in it)
    os.close(fd)
    os.chmod(target, 0o600)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
        for f in manifest["files"]:
            z.write(work / f["path"], f"{code}/{f['path']}")
        z.write(work / "manifest.json", f"{code}/manifest.json")
    shutil.rmtree(work, ignore_errors=True)
    return target


def _reporter(session_factory, building: Session, job_id: int):
    """The job's progress (done of total, and the heartbeat), at most twice a second."""
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if done not in (0, total) and time.monotonic() - last[0] < 0.5:
            return
        last[0] = time.monotonic()
        values = {"done": done, "total": total, "heartbeat": utcnow()}
        if is_sqlite(building.get_bind()):  # one writer at a time: the build's own session reports (and commits)
            building.execute(update(ArchiveJob).where(ArchiveJob.id == job_id).values(**values))
            building.commit()
            return
        with session_factory() as s:  # elsewhere the build reads one snapshot; its progress is another transaction's
            s.execute(update(ArchiveJob).where(ArchiveJob.id == job_id).values(**values))
            s.commit()

    def beat() -> None:
        """The heartbeat alone (during the audit trail's long steps), at most twice a second."""
        if time.monotonic() - last[0] < 0.5:
            return
        last[0] = time.monotonic()
        if is_sqlite(building.get_bind()):
            building.execute(update(ArchiveJob).where(ArchiveJob.id == job_id).values(heartbeat=utcnow()))
            building.commit()
            return
        with session_factory() as s:
            s.execute(update(ArchiveJob).where(ArchiveJob.id == job_id, ArchiveJob.status == "building")
                      .values(heartbeat=utcnow()))
            s.commit()
    progress.beat = beat
    return progress


def start_worker(url: str, instance: Path, job_id: int) -> None:
    """Start `trial archive run-job ID` as a detached process (it outlives the request), its output
    appended to ``instance``/worker.log. Raises OSError when it cannot be started."""
    spawn_detached(["-m", "trial.cli", "archive", "run-job", str(job_id)], url, instance,
                   {"TRIAL_INSTANCE_PATH": str(instance)})


def not_started(db: Session, job_id: int, why: str) -> None:
    """The worker could not be started: failed, saying so (``why``, the details, goes to the log)."""
    log.error("the archive worker for job %s could not be started: %s", job_id, why)
    db.execute(update(ArchiveJob).where(ArchiveJob.id == job_id, ArchiveJob.status == "queued")
               .values(status="failed", error=NOT_STARTED, finished_at=utcnow()))
