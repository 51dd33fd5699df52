"""The locked dataset bundle of a hard lock: CSV, XPT and DTA per table, the data dictionary, the
ODM 1.3.2 snapshot, CONSORT and blinding reports, a README and a SHA-256 manifest, zipped with
fixed timestamps so that the same lock always gives the same bytes."""
from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import ctypes
import functools
import gc
import hashlib
import importlib
import io
import json
import multiprocessing
import os
import pickle
import queue
import re
import shutil
import signal
import tempfile
import textwrap
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy import text as sql
from sqlalchemy.orm import Session

from trial import analysis as analyses
from trial import settings
from trial.audit.service import seal_of
from trial.dataquality.service import shown_queries
from trial.db import is_sqlite, make_engine, make_session_factory, read_only_session
from trial.exports import drawing, formats, odm, syntax
from trial.exports.consort import consort
from trial.exports.dataset import (
    ANALYSIS_TABLES,
    DUMMY_LABEL,
    FREE_TEXT_WITHHELD,
    SESSION_TABLES,
    build_tables,
    rows_of,
    session_rows,
    session_tables,
)
from trial.exports.reports import bang_by_assessor, baseline_table, blinding_table, table_csv, trial_facts
from trial.exports.sapreport import failure_pdf, report_pdf
from trial.fidelity.service import delivered_by_arm
from trial.grants.review import last_review
from trial.participants.models import Participant
from trial.protocol.models import ProtocolVersion
from trial.safety.service import summary_by_arm
from trial.scope import CliActor
from trial.version import __version__

VARIANTS = ("unblinded", "blinded")


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@contextlib.contextmanager
def _collector_paused():
    """The build makes millions of tuples that live until its end and no reference cycles: the
    garbage collector, which would walk them again and again as they pile up, is paused."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


ZIP_LEVEL = 1  # zlib's fastest level: the bundle's text compresses 8 to 10 times even so, in a third of level 6's time
BLOCK = 1 << 20  # a streamed file goes into the zip in blocks of this size
PENDING = 64 << 20  # bytes given to a zip's thread and not yet written, at most (memory), before the build waits
HELPER_WAIT = 900  # seconds a build waits for its helper's next result before it gives up
BEAT = 10  # seconds between the heartbeats of a build that waits (a worker silent for two minutes is taken for dead)
FOLDER_PREFIX = "trial-bundle-"  # where earlier versions kept the helpers' files: /tmp/trial-bundle-<pid>-...
BUILD_PREFIX = "build-"  # a build's private folder: <instance folder>/tmp/build-<lock id>-<pid of the build>


@dataclass
class Hashed:
    """A file's content (bytes, or chunks) with its SHA-256, worked out by whoever wrote it."""
    chunks: object
    sha256: str


def _blocks(chunks):
    """Chunks joined into blocks of about BLOCK bytes (a compressor's and a hash's calls are then few)."""
    block: list[bytes] = []
    size = 0
    for chunk in chunks:
        block.append(chunk)
        size += len(chunk)
        if size >= BLOCK:
            yield b"".join(block)
            block, size = [], 0
    if block or size == 0:
        yield b"".join(block)


class _Zip:
    """Files go into the zip in the order they are given (fixed timestamps, read-only), hashed on
    the way. A thread of its own compresses them and a second one hashes them at the same time
    (zlib and hashlib let go of the interpreter meanwhile), so the build goes on making the next
    file. A file is given as bytes, as an iterable of byte chunks, as a Hashed file (chunks whose
    SHA-256 a helper worked out as it wrote them), or as a function returning one of these
    (called in that thread, when the file's turn comes: it may wait for a helper process)."""

    def __init__(self, lock, beat=None):
        self.beat = beat or (lambda: None)  # called every BEAT seconds while this waits (the worker's heartbeat)
        self.buf = io.BytesIO()
        self.z = zipfile.ZipFile(self.buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=ZIP_LEVEL)
        self.prefix = f"lock-{lock.id}/"
        self.stamp = max(lock.created_at.timetuple()[:6], (1980, 1, 1, 0, 0, 0))
        self.sums: dict[str, str] = {}
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.pending = 0
        self.written = threading.Condition()
        self.failure: BaseException | None = None
        self.hasher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bundle-hash")
        self.thread = threading.Thread(target=self._run, name="bundle-zip", daemon=True)
        self.thread.start()

    def _info(self, name: str) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(self.prefix + name, date_time=self.stamp)
        info.compress_type = zipfile.ZIP_DEFLATED
        # a ZipInfo does not take the archive's level: zipfile reads it from the entry (Python 3.13
        # names it compress_level, earlier versions _compresslevel)
        setattr(info, "compress_level" if hasattr(info, "compress_level") else "_compresslevel", ZIP_LEVEL)
        info.external_attr = 0o444 << 16
        return info

    def add(self, name: str, data) -> None:
        """Queue a file: bytes, an iterable of chunks, or a function returning either. Waits while
        more than PENDING bytes are queued and not yet written."""
        size = len(data) if isinstance(data, (bytes, bytearray)) else 0
        with self.written:
            while not self.written.wait_for(lambda: self.pending + size <= PENDING or self.pending == 0
                                            or self.failure is not None, timeout=BEAT):
                self.beat()
            self.pending += size
        self.queue.put((name, data))

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            name, data = item
            size = len(data) if isinstance(data, (bytes, bytearray)) else 0
            if self.failure is None:  # after a failure the rest is drained, not written
                try:
                    if callable(data):
                        data = data()
                    if isinstance(data, Hashed) and isinstance(data.chunks, (bytes, bytearray)):
                        self.z.writestr(self._info(name), data.chunks)
                        self.sums[name] = data.sha256
                    elif isinstance(data, (bytes, bytearray)):
                        sha = self.hasher.submit(_sha, data)
                        self.z.writestr(self._info(name), data)
                        self.sums[name] = sha.result()
                    else:
                        self._stream(name, data)
                except BaseException as e:  # noqa: BLE001  handed to the build's thread by close()
                    self.failure = e
            del data, item
            with self.written:
                self.pending -= size
                self.written.notify_all()

    def _stream(self, name: str, chunks) -> None:
        known = chunks.sha256 if isinstance(chunks, Hashed) else None
        h = hashlib.sha256()
        with self.z.open(self._info(name), "w", force_zip64=True) as f:
            for data in _blocks(chunks.chunks if known else chunks):
                hashed = None if known else self.hasher.submit(h.update, data)
                f.write(data)
                if hashed is not None:
                    hashed.result()
        self.sums[name] = known or h.hexdigest()

    def _finish(self) -> None:
        self.queue.put(None)
        while self.thread.is_alive():
            self.thread.join(BEAT)
            self.beat()
        self.hasher.shutdown()

    def discard(self) -> None:
        if self.failure is None:
            self.failure = RuntimeError("the build stopped")  # what is still queued is drained, not made
        self._finish()
        self.z.close()
        self.buf = io.BytesIO()

    def close(self) -> tuple[bytes, str]:
        self._finish()
        if self.failure is not None:
            raise self.failure
        manifest = "".join(f"{self.sums[n]}  {n}\n" for n in sorted(self.sums)).encode()
        self.z.writestr(self._info("manifest.sha256"), manifest)
        self.z.close()
        return self.buf.getvalue(), _sha(manifest)


class _Helper:
    """A forked process that makes parts of the bundles meanwhile, on the machine's other core: it
    runs ``job(send, plain, *args)``, which sends each part as ``(key, value)`` when it is done
    (or ``("error", text)``). It never touches its parent's connection (a job that reads the
    database opens its own) and ends without tidying up objects it inherited (os._exit). Its
    answers are read by a thread started with ``listen`` once every process is forked (a process
    forked while a thread runs could inherit a lock held by it)."""

    def __init__(self, job, db: Session, lock, pv, *args, folder: Path, beat=None):
        ctx = multiprocessing.get_context("fork")
        self.beat = beat or (lambda: None)
        self.folder = tempfile.mkdtemp(prefix="helper-", dir=folder)  # (mode 0700, inside the build's private folder)
        self.conn, send = ctx.Pipe(duplex=False)
        plain = {"id": lock.id, "created_at": lock.created_at, "version": pv.version, "content": pv.content,
                 "url": _engine_of(db).url.render_as_string(hide_password=False), "folder": self.folder,
                 "parent": os.getpid(), "snapshot": db.info.get(SNAPSHOT_KEY)}
        self.proc = ctx.Process(target=_helper_main, args=(job, send, plain, *args), name=f"bundle helper {lock.id}",
                                daemon=True)
        self.proc.start()
        send.close()
        self.got: dict = {}
        self.ended: str | None = None
        self.cond = threading.Condition()
        self.reader: threading.Thread | None = None

    def take(self, key):
        """A part, read from the pipe by the build's own thread (before ``listen``)."""
        while key not in self.got:
            if not self._poll():
                raise RuntimeError(f"the bundles' helper process gave nothing for {HELPER_WAIT} s")
            try:
                got, value = self.conn.recv()
            except (EOFError, OSError):
                self.proc.join(5)
                raise RuntimeError(f"the bundles' helper process ended (exit code {self.proc.exitcode}) "
                                   f"before sending {key}") from None
            if got == "error":
                raise RuntimeError(f"the bundles' helper process failed: {value}")
            self.got[got] = value
        return self.got[key]

    def listen(self) -> None:
        self.reader = threading.Thread(target=self._read, name="bundle-helper-reader", daemon=True)
        self.reader.start()

    def _poll(self) -> bool:
        """Whether the helper has something to say (or has ended) within HELPER_WAIT seconds; the
        worker's heartbeat goes on meanwhile."""
        waited = 0.0
        while waited < HELPER_WAIT:
            if self.conn.poll(BEAT):
                return True
            waited += BEAT
            self.beat()
        return False

    def _read(self) -> None:
        why = None
        try:
            while why is None:
                try:
                    if not self._poll():
                        why = f"gave nothing for {HELPER_WAIT} s"
                        break
                    key, value = self.conn.recv()
                except (EOFError, OSError):
                    self.proc.join(5)
                    why = f"ended (exit code {self.proc.exitcode})"
                    break
                if key == "error":
                    why = f"failed: {value}"
                with self.cond:
                    self.got[key] = value
                    self.cond.notify_all()
        except BaseException as e:  # noqa: BLE001  whatever stops the reading, the waiting threads hear of it
            why = f"could not be read ({type(e).__name__}: {e})"
        finally:
            with self.cond:
                self.ended = why or "stopped"
                self.cond.notify_all()

    def result(self, key):
        """A part, when the helper has sent it (a zip's thread waits here for its turn)."""
        with self.cond:
            while not self.cond.wait_for(lambda: key in self.got or self.ended is not None, timeout=BEAT):
                self.beat()
            if key in self.got:
                return self.got[key]
            raise RuntimeError(f"the bundles' helper process {self.ended} before sending {key}")

    def whole(self, key) -> Hashed:
        """A file the helper wrote, read whole, with its SHA-256 (it goes into the zip as the same
        bytes made here would: whole, not streamed)."""
        path, sha = self.result(key)
        with open(path, "rb") as f:
            return Hashed(f.read(), sha)

    def file(self, key) -> Hashed:
        """A file the helper wrote, with its SHA-256 (read when its turn in the zip comes)."""
        path, sha = self.result(key)

        def chunks():
            with open(path, "rb") as f:
                while chunk := f.read(BLOCK):
                    yield chunk
        return Hashed(chunks(), sha)

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
        self.proc.join()
        if self.reader is not None:
            self.reader.join()

    def close(self) -> None:
        self.conn.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def _engine_of(db: Session):
    bind = db.get_bind()  # a connection, for a session bound to one (trial.db.read_only_session)
    return getattr(bind, "engine", bind)


def _die_with_parent(parent: int) -> None:
    """A helper ends with the build that forked it, even one killed by SIGKILL (Linux's
    PR_SET_PDEATHSIG): none goes on writing unblinded files after its build is gone."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: it ends when it next finds its pipe closed
        return
    if os.getppid() != parent:  # the build died before the call above
        os._exit(1)


def _helper_main(job, send, plain: dict, *args) -> None:
    try:
        _die_with_parent(plain["parent"])
        job(send, plain, *args)
    except BaseException as e:  # noqa: BLE001  reported to the build, which fails with it
        send.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        send.close()


def _other_job(send, plain: dict, variants: list[str]) -> None:
    """On a connection of the helper's own, while the build reads the other tables: the sessions'
    rows (the largest table: handed to the build, for the ODM snapshot), then their tables' files
    (CSV, Stata, SAS transport: into files, for the build's zip), then each variant's reports
    (they read the database, not the tables)."""
    engine = make_engine(plain["url"])
    try:
        with read_only_session(make_session_factory(engine)) as rdb:
            if plain.get("snapshot"):  # a data cut's build: the same snapshot as the build's (trial.interim.cuts)
                share_snapshot(rdb, plain["snapshot"])
            if "unblinded" in variants:
                participants = rows_of(rdb, select(Participant.id, Participant.study_id).order_by(Participant.study_id))
                rows, notes = session_rows(rdb, participants, {p.id: p.study_id for p in participants})
                path = os.path.join(plain["folder"], "session_rows.pickle")  # (a file: this process goes on at once)
                with open(path, "wb") as f:
                    pickle.dump((rows, notes), f, protocol=pickle.HIGHEST_PROTOCOL)
                send.send(("session_rows", path))
                for t in session_tables(plain["content"], rows, notes):
                    cut: dict = {}
                    for name, data in _table_files(t, plain["created_at"], cut):
                        send.send((("file", name), _written(plain["folder"], name, data)))
                        del data
                    send.send((("cut", t.name), cut))
                del rows, notes
            memo: dict = {}
            for v in variants:
                send.send((("reports", v), _report_files(rdb, plain["id"], plain["created_at"], plain["content"],
                                                          v == "blinded", memo)))
    finally:
        engine.dispose()


SNAPSHOT_KEY = "trial_snapshot"  # session.info: the exported PostgreSQL snapshot a build's helpers read too


def share_snapshot(db: Session, snapshot_id: str) -> None:
    """Begin this session's transaction in the snapshot another transaction exported (PostgreSQL's
    ``pg_export_snapshot``): a data cut's helper process then reads exactly what its build reads."""
    if not re.fullmatch(r"[0-9A-Fa-f-]+", snapshot_id or ""):
        raise ValueError(f"not a snapshot id: {snapshot_id!r}")
    db.execute(sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
    db.execute(sql(f"SET TRANSACTION SNAPSHOT '{snapshot_id}'"))


def _unpickled(path: str):
    with open(path, "rb") as f:
        return pickle.load(f)  # (a file this build's own helper wrote)


def _written(folder: str, name: str, data) -> tuple[str, str]:
    """A file written into a helper's folder: (its path, its SHA-256)."""
    path = os.path.join(folder, name.replace("/", "-"))
    with open(path, "wb") as f:
        f.write(data)
    return path, _sha(data)


def _data_job(send, plain: dict, tables: dict) -> None:
    """From the tables read: each variant's ODM snapshot (into a file)."""
    content = plain["content"]
    for v, ts in tables.items():
        path = os.path.join(plain["folder"], f"snapshot-{v}.xml")
        h = hashlib.sha256()
        with open(path, "wb") as f:
            for block in _blocks(_odm_chunks(content, ts, plain["id"], plain["created_at"], plain["version"], v == "blinded")):
                h.update(block)
                f.write(block)
        send.send((("odm", v), (path, h.hexdigest())))


def temp_root() -> Path:
    """Where builds keep their temporary files: ``tmp/`` in the instance folder (mode 0700)."""
    return settings.current().instance_path / "tmp"


def private_folder(lock_id: int) -> Path:
    """A new private folder (mode 0700) for one build's temporary files, unblinded data among them:
    ``<instance folder>/tmp/build-<lock id>-<pid>``, removed when the build ends, whether it failed
    or not, and by :func:`sweep_folders` when its process was killed. Never the system's temporary
    folder instead: when it cannot be made the build fails, saying why."""
    root = temp_root()
    folder = root / f"{BUILD_PREFIX}{lock_id}-{os.getpid()}"
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(PermissionError):  # (another user's folder: the build's own is private anyway)
            root.chmod(0o700)
        if folder.exists():  # an earlier build of this lock in a process of the same number: gone
            shutil.rmtree(folder)
        folder.mkdir(mode=0o700)
        folder.chmod(0o700)
    except OSError as e:
        raise RuntimeError(f"cannot create the build's private folder {folder} ({type(e).__name__}: "
                           f"{e.strerror or e}): the service user must be able to write the instance folder "
                           f"(TRIAL_INSTANCE_PATH) and its tmp/; a build's temporary files go nowhere else") from None
    return folder


def sweep_folders() -> list[str]:
    """Remove the temporary folders of builds whose process is gone (killed before it could tidy
    up: they hold unblinded data): those in the instance folder's tmp/, and those earlier versions
    left in the system's temporary folder. Returns the folders removed."""
    gone: list[str] = []
    if not Path("/proc/self").exists():  # (whether a process lives is read from /proc: Linux)
        return gone
    found: list[tuple[Path, str]] = []
    for root, prefix, pid_of in ((temp_root(), BUILD_PREFIX, lambda rest: rest.rsplit("-", 1)[-1]),
                                 (Path(tempfile.gettempdir()), FOLDER_PREFIX, lambda rest: rest.split("-")[0])):
        with contextlib.suppress(OSError):  # (a folder that cannot be read holds nothing to sweep here)
            found += [(path, pid_of(path.name[len(prefix):])) for path in root.glob(f"{prefix}*")]
    for path, pid in found:
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            gone.append(str(path))
    return gone


def can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


PRELOAD = ("numpy", "scipy.optimize", "scipy.stats", "reportlab.platypus", "reportlab.pdfgen.canvas", "trial.analysis.sap")
BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def preload() -> None:
    """Load the libraries a build uses (NumPy, SciPy, ReportLab), which the modules load only when
    they first need them: a worker loads them once before it forks its processes, which share
    them (a worker kept running has them loaded when a lock comes). The analysis' matrices are
    small: NumPy's BLAS runs in the calling thread, not in a pool of threads per process that
    spin between calls and take the cores the build's processes need (set before NumPy loads,
    unless the environment says otherwise)."""
    for name in BLAS_THREADS:
        os.environ.setdefault(name, "1")
    for name in PRELOAD:
        importlib.import_module(name)


def build_bundles(db: Session, lock, sig, variants=VARIANTS, progress=None, parallel: bool = False) -> dict[str, tuple[bytes, str, str]]:
    """The bundles of a hard lock (each variant asked for): each is (zip bytes, sha256 of the zip,
    sha256 of the manifest). ``progress`` is called with the share done (0..1) as the build goes
    (a worker reports it to the locks page). Serially, both variants come from one read of the
    database (the tables they share are made once). ``parallel`` (a worker's build, where the
    platform can fork) shares the work with two helper processes: one reads the sessions while
    this process reads the other tables, then writes the sessions' files and makes the reports;
    the other, forked once the tables are read, the ODM snapshots while this process writes the
    other tables' files; each zip is compressed by a thread of its own, which also runs the
    primary analysis when its turn comes. The same bytes either way."""
    with _collector_paused():
        return _Build(db, lock, sig, [v for v in VARIANTS if v in variants], progress or (lambda share: None),
                      parallel and can_fork() and not is_sqlite(_engine_of(db))).run()


def build_bundle(db: Session, lock, sig, blinded: bool, progress=None, parallel: bool = False) -> tuple[bytes, str, str]:
    """One variant's bundle (the same bytes as when built with the other)."""
    variant = "blinded" if blinded else "unblinded"
    return build_bundles(db, lock, sig, [variant], progress, parallel)[variant]


class _Build:
    """One build of a lock's bundles (the variants asked for), from one read of the database: the
    tables are read, then each variant's files go into its zip in a fixed order (the tables'
    files, the primary analysis, the loading scripts and the dictionary, the protocol, the ODM
    snapshot, the reports, the README). In parallel, a helper forked before anything is read
    reads the sessions meanwhile, then makes the reports; a second one, forked once the tables
    are read, the ODM snapshots."""

    def __init__(self, db: Session, lock, sig, variants: list[str], say, parallel: bool):
        self.db, self.lock, self.sig, self.variants, self.say, self.parallel = db, lock, sig, variants, say, parallel
        self.when = lock.created_at
        self.pv = db.query(ProtocolVersion).filter_by(version=lock.protocol_version).one()
        self.content = self.pv.content
        self.share = 0.0
        self.helpers: list[_Helper] = []
        self.zips: dict[str, _Zip] = {}
        self.report_memo: dict = {}  # what both variants' reports read (a serial build)
        self.written: dict[int, tuple] = {}  # the files of a table both variants hold: made once
        self.done = 0
        self.tables: dict[str, list] = {}
        self.other = self.data = None  # the helpers (in parallel)
        self.folder: Path | None = None  # the build's private folder (in parallel: the helpers' files)
        self.counts: dict[str, dict[str, int]] = {}
        self.uses: collections.Counter = collections.Counter()
        self.steps = 0

    def progress(self, share: float) -> None:
        self.share = share
        self.say(share)

    def beat(self) -> None:  # the same share again: the worker's heartbeat while the build waits
        self.say(self.share)

    def run(self) -> dict[str, tuple[bytes, str, str]]:
        if self.parallel:
            self.folder = private_folder(self.lock.id)
        try:
            if self.parallel:
                self.helpers.append(_Helper(_other_job, self.db, self.lock, self.pv, self.variants, folder=self.folder,
                                            beat=self.beat))
            self.tables = self._read_tables()
            self.other, self.data = (self.helpers + [None, None])[:2]
            self.zips = {v: _Zip(self.lock, self.beat) for v in self.variants}
            self.counts = {v: {t.name: len(t.rows) for t in ts} for v, ts in self.tables.items()}
            self.uses = collections.Counter(id(t) for ts in self.tables.values() for t in ts)  # 2: a table both hold
            self.steps = sum(len(ts) for ts in self.tables.values())
            for v in self.variants:
                self._add_variant(v)
            return self._close()
        except BaseException:
            for h in self.helpers:
                h.stop()  # first: a file waiting for a helper then fails at once
            for z in self.zips.values():
                z.discard()  # a refused build (e.g. CONSORT does not reconcile) leaves no half-open zip behind
            raise
        finally:
            for h in self.helpers:
                h.stop()
                h.close()
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)
            # the zips and the helpers call this build's heartbeat (a bound method): let go of them
            # now, so that their buffers are freed at once, not at the garbage collector's next pass
            self.zips, self.helpers, self.other, self.data = {}, [], None, None

    def _read_tables(self) -> dict[str, list]:
        """Each variant's tables (both from one read); in parallel, the second helper is forked
        once they are read, and the helpers' threads start (every process forked)."""
        lock = self.lock
        cache: dict = {"session_rows": lambda: _unpickled(self.helpers[0].take("session_rows"))} if self.parallel else {}
        tables = {v: build_tables(self.db, v == "blinded", cache, bytes.fromhex(lock.dummy_seed) if v == "blinded" else None)
                  for v in self.variants}
        self.progress(0.3)
        if self.parallel:  # the analyses and the ODM snapshots, from the tables read, by a second helper
            self.helpers.append(_Helper(_data_job, self.db, lock, self.pv, tables, folder=self.folder, beat=self.beat))
            for h in self.helpers:  # every process forked: the threads start now
                h.listen()
        return tables

    def _add_variant(self, v: str) -> None:
        """A variant's files, into its zip in the bundle's order."""
        blinded, out, ts = v == "blinded", self.zips[v], self.tables[v]
        truncated, from_helper = self._add_tables(out, ts)
        if self.content.get("analysis"):
            self._add_analysis(out, ts, blinded)
        self._add_loaders(out, v, ts)
        out.add("odm/snapshot.xml", (lambda v=v, data=self.data: data.file(("odm", v))) if self.data else
                _odm_chunks(self.content, ts, self.lock.id, self.when, self.pv.version, blinded))
        self._add_reports(out, v, blinded)
        self._add_readme(out, v, ts, truncated, from_helper)

    def _add_tables(self, out: _Zip, ts) -> tuple[dict[str, dict[str, int]], list[str]]:
        """Each table's files (CSV, Stata, SAS transport). Returns the values each transport file
        cut, and the tables whose files the other helper wrote (it tells what it cut)."""
        truncated: dict[str, dict[str, int]] = {}
        from_helper: list[str] = []
        for t in ts:
            self.uses[id(t)] -= 1
            if self.other is not None and t.name in SESSION_TABLES:
                from_helper.append(t.name)
                files, cut = self._helper_files(t), {}
            else:
                files, cut = self._files_of(t)
            for name, body in files:
                out.add(name, body)
            if self.parallel and not self.uses[id(t)] and t.name not in ANALYSIS_READS:
                t.rows = []  # the helper has its own copy of the rows: here they are done with (the analysis is to come)
            if cut:
                truncated[t.name] = cut
            self.done += 1
            self.progress(0.3 + 0.6 * self.done / self.steps)
        return truncated, from_helper

    def _files_of(self, t) -> tuple:
        """A table's files made here (one at a time), with what its transport file cut (filled as
        they are made); a table the other variant holds too keeps its files for it."""
        if id(t) in self.written:
            return self.written.pop(id(t))
        cut: dict = {}
        files = _table_files(t, self.when, cut)
        if self.uses[id(t)]:
            files = list(files)
            self.written[id(t)] = (files, cut)
        return files, cut

    def _helper_files(self, t) -> list:
        """A sessions' table's files, which the other helper writes (each read when its turn comes)."""
        other = self.other
        names = [_file_name(t, fmt) for fmt in ("csv", "dta", "xpt") if fmt != "xpt" or t.rows]
        return [(n, lambda n=n: other.whole(("file", n))) for n in names]

    def _add_analysis(self, out: _Zip, ts, blinded: bool) -> None:
        """The SAP's analyses' files (trial.analysis.sap, from the ADSL and the status events): run by
        the zip's thread when their turn comes (NumPy, SciPy, statsmodels, ReportLab; no database)."""
        content, title = self.content, f"{lock_name(self.lock.id)}, {self.when:%Y-%m-%d}"
        tables = {t.name: t for t in ts if t.name in ANALYSIS_READS}
        analysis = functools.cache(lambda tables=tables, blinded=blinded: _analysis_files(content, tables, blinded, title))
        for n, name in enumerate(ANALYSIS_FILES):
            out.add(name, lambda n=n, a=analysis: a()[n][1])

    def _add_loaders(self, out: _Zip, v: str, ts) -> None:
        """The scripts that load the tables (R, Stata, SAS, SPSS), the data dictionary and the protocol."""
        out.add("syntax/load.R", syntax.load_r(ts).encode())  # (the arm's levels: its code list's order)
        out.add("syntax/load.do", syntax.load_do(ts).encode())
        out.add("syntax/load.sas", syntax.load_sas(ts, self.counts[v]).encode())
        out.add("syntax/load.sps", syntax.load_sps(ts).encode())
        out.add("dictionary.csv", formats.dictionary_csv(ts))
        out.add("dictionary_visits.csv", formats.visits_csv(self.content))
        out.add("protocol.toml", self.pv.source.encode("utf-8"))  # byte for byte the version in force (its sha256 is in the README)

    def _add_reports(self, out: _Zip, v: str, blinded: bool) -> None:
        """The reports: made here (serially), or by the other helper (each read when its turn comes)."""
        other = self.other
        made = (lambda v=v: other.result(("reports", v))) if other else \
            _report_files(self.db, self.lock.id, self.when, self.content, blinded, self.report_memo)
        for n, name in enumerate(report_names(blinded)):
            out.add(name, (lambda n=n, m=made: m()[n][1]) if other else made[n][1])

    def _add_readme(self, out: _Zip, v: str, ts, truncated: dict, from_helper: list[str]) -> None:
        """The README, last: with what the transport files cut (those the helper wrote: when it has
        told)."""
        blinded, lock, other = v == "blinded", self.lock, self.other
        accepted = shown_queries(self.db, lock.accepted_open_queries, blinded)
        text = _readme(lock, self.sig, self.pv, blinded, ts, {}, self.counts[v], accepted, seal_of(self.db, seal_name(lock)),
                       last_review(self.db, before=self.sig.signed_at))

        def readme(text=text, truncated=truncated, from_helper=from_helper) -> bytes:
            """(in the zip's thread: plain values only, no database object)"""
            for name in from_helper:  # what the helper cut in the transport files it wrote
                if cut := other.result(("cut", name)):
                    truncated[name] = cut
            return (text + _truncated_text(truncated)).encode()
        out.add("README.txt", readme if from_helper else readme())

    def _close(self) -> dict[str, tuple[bytes, str, str]]:
        result = {}
        for v in self.variants:
            data_, manifest_sha = self.zips[v].close()
            result[v] = (data_, _sha(data_), manifest_sha)
        self.progress(0.99)
        return result


def _file_name(t, fmt: str) -> str:
    return f"analysis/{t.name}.{fmt}" if t.name in ANALYSIS_TABLES else f"{fmt}/{t.name}.{fmt}"


def _table_files(t, when, cut: dict):
    """A table's CSV, Stata and (when it has rows) SAS transport files, one at a time (a large
    table's files are not all held at once); the values the transport file cut at 200 bytes go
    into ``cut``."""
    yield _file_name(t, "csv"), formats.to_csv(t)
    stata, sas, truncated = formats.columns(t)
    cut.update(truncated)
    yield _file_name(t, "dta"), formats.to_dta(t, when, stata)
    del stata
    if t.rows:  # a transport file of no observations is valid, but pandas.read_sas cannot read it
        yield _file_name(t, "xpt"), formats.to_xpt(t, when, sas)[0]


ANALYSIS_FILES = ("analysis/primary.json", "analysis/primary.txt", "analysis/primary.py", "analysis/primary.R",
                  "analysis/results.json", "analysis/missingness.csv", "analysis/report.pdf",
                  "analysis/primary_data.csv")
ANALYSIS_READS = ("adsl", "events")  # the tables the analyses read (kept until they have run)


def _analysis_files(content: dict, tables: dict, blinded: bool, title: str) -> list[tuple[str, bytes]]:
    """The SAP run on this lock's tables: the primary analysis with the scripts that reproduce it,
    every analysis' entry (results.json), the missingness table and the report with its forest plot."""
    done = analyses.sap.lock_analysis(content, tables, blinded)  # (loaded now: trial/analysis/__init__.py)
    try:
        report = report_pdf(done.results, content, done.missingness, title)
    except Exception as e:  # noqa: BLE001  a one-page PDF says why; the bundle keeps every other file
        report = failure_pdf(title, f"{type(e).__name__}: {e}")
    files = (json.dumps(done.primary, indent=2).encode(), done.primary_text.encode(), done.primary_py.encode(),
             done.primary_r.encode(), json.dumps(done.results, indent=2).encode(), table_csv(done.missingness),
             report, table_csv(done.primary_data))
    return list(zip(ANALYSIS_FILES, files))


def _odm_chunks(content: dict, tables, lock_id: int, when, version: int, blinded: bool):
    return odm.snapshot_chunks(content, {t.name: t for t in tables if t.name not in ANALYSIS_TABLES}, lock_id, when,
                               version, blinded)


def report_names(blinded: bool) -> list[str]:
    names = ["reports/consort.json", "reports/blinding_index.csv", "reports/baseline_table.csv",
             "reports/baseline_table.pdf", "reports/trial_facts.json"]
    return names + ([] if blinded else ["reports/ae_summary.csv", "reports/intervention_delivered.csv",
                                        "reports/blinding_by_assessor.csv"])


def _report_files(db: Session, lock_id: int, created_at, content: dict, blinded: bool,
                  memo: dict | None = None) -> list[tuple[str, bytes]]:
    """CONSORT, the blinding indexes, Table 1, the trial's facts and, unblinded, the adverse events
    with their exposure-adjusted rates, the intervention as delivered by arm and the blinding index
    per assessor (in the order of report_names). ``memo`` keeps what
    both variants' reports read, for the other's."""
    out = [("reports/consort.json", json.dumps(consort(db, CliActor(), blinded=blinded, memo=memo), indent=2,
                                               sort_keys=False).encode())]
    out.append(("reports/blinding_index.csv", table_csv(blinding_table(db, blinded, memo))))
    table1 = baseline_table(db, blinded, memo)
    out.append(("reports/baseline_table.csv", table_csv(table1)))
    out.append(("reports/baseline_table.pdf", drawing.table_pdf(
        f"Table 1. Baseline characteristics{' (pooled over the arms: blinded)' if blinded else ' by arm'}", table1,
        f"{content['trial']['name']}; {lock_name(lock_id)}, {created_at:%Y-%m-%d}.")))
    out.append(("reports/trial_facts.json", json.dumps(trial_facts(db, blinded, memo), indent=2).encode()))
    if not blinded:  # adverse events by arm: for unblinded readers only
        summary = summary_by_arm(db, until=created_at.date())  # the lock's day caps the exposure
        cols = list(summary[0]) if summary else ["arm"]
        out.append(("reports/ae_summary.csv", table_csv({"columns": cols, "rows": [[r[k] for k in cols] for r in summary]})))
        out.append(("reports/intervention_delivered.csv", table_csv(delivered_by_arm(db, CliActor()))))
        out.append(("reports/blinding_by_assessor.csv", table_csv(bang_by_assessor(db, memo))))
    if [n for n, _ in out] != report_names(blinded):
        raise RuntimeError("the reports are not the ones report_names lists")
    return out


def lock_name(lock_id) -> str:
    """What the bundle was made of: "hard lock 3", or "data cut 5" for a data cut's (trial.interim.cuts
    gives its cut the id "cut5": it is no lock)."""
    if isinstance(lock_id, str) and lock_id.startswith("cut"):
        return f"data cut {lock_id[3:]}"
    return f"hard lock {lock_id}"


def seal_name(lock) -> str:
    """What the audit seal taken at a hard lock is called (and how its bundle finds it)."""
    return f"hard lock {lock.id} (version {lock.version})"


def _accepted_text(accepted: list[int], blinded: bool) -> str:
    if blinded:
        return ("Signed with queries not closed, accepted by the signer. Of those, the ones in this dataset: "
                + (", ".join(map(str, accepted)) if accepted else "none") + " (see queries.csv).")
    return (f"Signed with {len(accepted)} queries not closed, accepted by the signer: "
            f"{', '.join(map(str, accepted))} (see queries.csv).")


def _readme(lock, sig, pv, blinded: bool, tables, truncated, counts, accepted: list[int], seal=None,
            review: dict | None = None) -> str:
    lines = _readme_head(lock, sig, pv, blinded, accepted) + [_review_text(review), _randomization_errors_text(tables), ""]
    if blinded:
        lines += _dummy_text(lock)
    elif seal is not None:  # the chain's size follows the sessions logged: unblinded readers only
        lines += [f"Audit chain sealed at signing: record {seal.seq}, hash {seal.hash}", ""]
    lines += _contents_text(blinded)
    lines += [f"{t.name:<9} {t.label} ({counts[t.name]} rows)" for t in tables]
    return "\n".join(lines) + "\n" + _truncated_text(truncated)


def _randomization_errors_text(tables) -> str:
    """How many randomization errors were recorded, of which kinds (the randerr table): the
    allocation of each child is kept (intention to treat) and the analysis uses the corrected strata."""
    t = next((t for t in tables if t.name == "randerr"), None)
    rows = t.rows if t is not None else []
    if not rows:
        return "Randomization errors: none recorded."
    kinds = collections.Counter(r[1] for r in rows)
    words = {"wrong_stratum": "wrong stratum", "ineligible": "ineligible child randomized",
             "randomized_twice": "randomized twice"}
    return (f"Randomization errors: {len(rows)} recorded ("
            + ", ".join(f"{words.get(k, k)}: {n}" for k, n in sorted(kinds.items())) + "; see randerr). "
            "Every child keeps the allocation (intention to treat); ADSL carries each stratification factor as "
            "randomized (site, s_*) and as corrected (c_*), and the primary analysis adjusts for the corrected strata.")


def _review_text(review: dict | None) -> str:
    """The last access review signed before the lock (trial.grants.review), or that there was none."""
    if review is None:
        return "Access review: none was signed before this lock."
    return (f"Access review: the last before this lock was signed by {review['printed_name']} <{review['email']}> at "
            f"{review['signed_at']:%Y-%m-%d %H:%M:%S} UTC ({review['accounts']} accounts, {review['inactive']} "
            "flagged unused).")


def _readme_head(lock, sig, pv, blinded: bool, accepted: list[int]) -> list[str]:
    """The README's first part: the trial, the lock and its signature, the protocol, the software
    and the variant."""
    variant = ("BLINDED: a DUMMY allocation (arm holds dummy codes), no session data, no intervention events" if blinded else
               "UNBLINDED: the real allocation, arms by key and label, sessions included")
    return [
        *(["Dataset bundle of a data cut", "============================", f"Trial: {pv.content['trial']['name']}",
            f"Data cut: {lock_name(lock.id)[9:]} (a snapshot of the live data: nothing was locked)"]
          if getattr(lock, "kind", "hard") == "cut" else
          ["Locked dataset bundle", "=====================", f"Trial: {pv.content['trial']['name']}",
           f"Lock: {lock.id} (hard lock version {lock.version})"]),
        *_addendum_text(lock),
        f"Signed by: {sig.printed_name} <{sig.email}> at {sig.signed_at:%Y-%m-%d %H:%M:%S} UTC",
        f"Meaning of the signature: {sig.meaning}",
        _accepted_text(accepted, blinded) if lock.accepted_open_queries else "Every query was closed when the lock was signed.",
        *_unsigned_text(lock, blinded),
        f"Protocol version: {pv.version} (amendment {pv.content['trial']['amendment']}, sha256 {pv.sha256})",
        f"Software: trial {__version__}",
        f"Variant: {variant}",
        "",
    ]


def _unsigned_text(lock, blinded: bool = False) -> list[str]:
    """A hard lock signed while casebooks waited for their investigator's signature says so: the
    unblinded README names them, the blinded one counts them (which casebooks wait follows the
    sessions and adverse events they cover)."""
    unsigned = getattr(lock, "accepted_unsigned", None) or []
    if not unsigned:
        return []
    if blinded:
        return [(f"Casebooks not signed by their investigator: the lock was signed accepting {len(unsigned)} "
                 "casebooks that waited for their site investigator's signature.")]
    return [(f"Casebooks not signed by their investigator: the lock was signed accepting {len(unsigned)} casebooks "
             f"that waited for their site investigator's signature ({', '.join(unsigned)}).")]


def _addendum_text(lock) -> list[str]:
    """A hard lock that closes an addendum (signed after the unblinding) names the lock it corrects."""
    if not getattr(lock, "parent_lock_id", None):
        return []
    return [f"Addendum lock: it closes an addendum opened after the unblinding to correct the data of hard lock "
            f"{lock.parent_lock_id} (its parent); the changes made since are in the audit trail, and the bundles of "
            f"lock {lock.parent_lock_id} stay as they were signed."]


def _dummy_text(lock) -> list[str]:
    """A blinded README's warning that its allocation is a dummy, and how it was drawn."""
    return [
        "THE ALLOCATION IN THIS BUNDLE IS A DUMMY",
        "---------------------------------------",
        "arm (in particip, alloc, guesses and analysis/adsl) is not the trial's allocation: it holds",
        "dummy codes (A, B, ...) drawn at random in the protocol's ratio, independently of the real allocation,",
        "so that the whole analysis can be written and run on these data; its results say nothing about",
        "the arms. The variable has the same name, type and level order as in the unblinded bundle: each",
        "code takes the place of the arm of its weight (level 1, Stata and SAS code 1: the code standing",
        "for the reference arm), so a program written on this bundle runs unchanged on the unblinded one",
        "(analysis/primary.R and primary.py do). alloc has no list slot: a blinded reader does not",
        "need it (this is no secrecy claim: randdtm orders the allocations).",
        f"Dummy allocation seed: {lock.dummy_seed}",
        f"Derivation: HMAC-SHA256 stream with label '{DUMMY_LABEL}' (trial.exports.dataset.dummy_allocation).",
        "Reports (CONSORT, Table 1, blinding index, facts) are pooled over the arms. The real",
        "allocation is in the unblinded bundle of this lock, released after the signed unblinding.",
        (f"Free text written by unblinded staff (reasons of status events, descriptions of deviations, the texts of "
         f"forms not done and of randomization errors) reads {FREE_TEXT_WITHHELD!r}."),
        "",
    ]


def _contents_text(blinded: bool) -> list[str]:
    """What the bundle's folders and files hold, and the heading of the list of tables."""
    return [
        "Contents",
        "--------",
        "csv/      one CSV per table (UTF-8, header row; dates ISO 8601; empty = missing)",
        *textwrap.wrap(formats.NEUTRALISED, 92, initial_indent="          ", subsequent_indent="          "),
        "xpt/      SAS transport v5 (names <= 8 characters, labels <= 40); a date is a number of days since",
        "          1960-01-01 with the format YYMMDD10., a datetime a number of seconds since 1960-01-01",
        "          00:00:00 UTC with E8601DT19.; coded text is its code 1, 2, ... with the format of its",
        "          code list (syntax/load.sas defines them)",
        "dta/      Stata 15 (.dta): a date is days since 1960-01-01 (%td), a datetime milliseconds since",
        "          1960-01-01 00:00:00 UTC (%tc); coded text is its code 1, 2, ... with value labels",
        "Dates: a date (type date in dictionary.csv) is a calendar day at the site: randdt (particip,",
        "          adsl) and enroldt (particip) the site's day of the moment of randomization and of",
        "          enrolment; a datetime is a moment in UTC (alloc.randdtm: the moment of randomization)",
        "Arm: arm, its levels (R) and codes (Stata, SAS, SPSS) the reference arm first, then the others",
        "          in the protocol's order; level 1 is the base of i.arm (syntax/load.do)",
        "odm/      CDISC ODM 1.3.2 Snapshot (snapshot.xml)",
        "analysis/ adsl (CSV, XPT, DTA): the analysis dataset; primary.json, primary.txt: the primary analysis,",
        "          primary.py and primary.R reproduce it from primary_data.csv: the values the model fitted (studyid,",
        "          visit, arm, y as analysed: the estimand's strategies applied, the adjustment factors)",
        "          results.json: every analysis of the statistical analysis plan (SAP version, SHA-256 of the analysis",
        "          code: the same in the blinded and the unblinded bundle while the code is unchanged)",
        "          report.pdf: those results with a forest plot; missingness.csv: missing outcomes by visit, arm, reason,",
        "          counted in the data as recorded (before the estimand's strategies for intercurrent events)",
        f"reports/  CONSORT counts, baseline table, Bang blinding index, recruitment/follow-up facts ({'pooled over the arms' if blinded else 'by arm'})",
        *(["          blinding_index.csv: the assessors' guesses pooled over the arms per visit and no index (Bang's and",
           "          James' need the real arm: on the dummy allocation they would measure only chance)"] if blinded else
          ["          blinding_index.csv: Bang's index per arm and visit (index = bang; -1 to 1, 0 = as by chance) and",
           "          James' over the arms per visit (index = james; 0 = unblinded, 0.5 = as by chance, 1 = blinded);",
           "          blinding_by_assessor.csv: Bang's index of each assessor (code R + user id) per arm, the visits",
           "          pooled (n counts guesses: a child guessed at two visits counts twice; the CI assumes the",
           "          guesses independent);",
           "          ae_summary.csv: adverse events by arm, with exposure in child-months (randomization to the",
           "          earliest of the course's end, the child's exit and the lock's day) and sessions attended, and",
           "          rates per 100 child-months (exact Poisson 95% CI) and per 100 sessions attended"]),
        "dictionary.csv   every variable: table, name, label, type, units, allowed values, source",
        "manifest.sha256  SHA-256 of every file (check with: sha256sum -c manifest.sha256)",
        "",
        "Tables",
        "------",
    ]


def _truncated_text(truncated: dict[str, dict[str, int]]) -> str:
    """The README's last part: the text values the transport files cut, if any."""
    if not truncated:
        return ""
    lines = ["", "SAS transport v5 holds at most 200 bytes per text value; truncated in xpt/ only (full text in csv/ and dta/):"]
    lines += [f"  {t}.{v}: {n} values" for t, cols in sorted(truncated.items()) for v, n in sorted(cols.items())]
    return "\n".join(lines) + "\n"
