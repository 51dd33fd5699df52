"""The locked dataset bundle of a hard lock: CSV, XPT and DTA per table, the data dictionary, the
ODM 1.3.2 snapshot, CONSORT and blinding reports, a README and a SHA-256 manifest, zipped with
fixed timestamps so that the same lock always gives the same bytes."""
from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib
import io
import json
import multiprocessing
import os
import queue
import shutil
import tempfile
import threading
import zipfile

from sqlalchemy.orm import Session

from trial.analysis.service import primary_analysis
from trial.audit.service import seal_of
from trial.db import make_engine, make_session_factory, read_only_session
from trial.dataquality.service import shown_queries
from trial.exports import drawing, formats, odm, syntax
from trial.exports.consort import consort
from trial.exports.dataset import ANALYSIS_TABLES, DUMMY_LABEL, FREE_TEXT_WITHHELD, build_tables
from trial.exports.reports import bang_index, baseline_table, table_csv, trial_facts
from trial.fidelity.service import delivered_by_arm
from trial.protocol.models import ProtocolVersion
from trial.safety.service import summary_by_arm
from trial.scope import CliActor
from trial.version import __version__

VARIANTS = ("unblinded", "blinded")


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def build_bundles(db: Session, lock, sig) -> dict[str, tuple[bytes, str, str]]:
    """Both variants, from one read of the database."""
    cache: dict = {}
    return {v: build_bundle(db, lock, sig, blinded=(v == "blinded"), cache=cache) for v in VARIANTS}


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
PENDING = 48 << 20  # bytes given to the zip's thread and not yet written, at most (memory), before the build waits
HELPER_WAIT = 900  # seconds a build waits for its helper's next result before it gives up


class _Zip:
    """Files go into the zip in the order they are given (fixed timestamps, read-only), hashed on
    the way. A thread of its own compresses and hashes them (zlib and hashlib let go of the
    interpreter meanwhile), so the build goes on making the next file. A file is given as bytes,
    as an iterable of byte chunks, or as a function returning either (called in that thread,
    when the file's turn comes: it may wait for a helper process)."""

    def __init__(self, lock):
        self.buf = io.BytesIO()
        self.z = zipfile.ZipFile(self.buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=ZIP_LEVEL)
        self.prefix = f"lock-{lock.id}/"
        self.stamp = max(lock.created_at.timetuple()[:6], (1980, 1, 1, 0, 0, 0))
        self.sums: dict[str, str] = {}
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.pending = 0
        self.written = threading.Condition()
        self.failure: BaseException | None = None
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
            self.written.wait_for(lambda: self.pending + size <= PENDING or self.pending == 0 or self.failure is not None)
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
                    if isinstance(data, (bytes, bytearray)):
                        self.z.writestr(self._info(name), data)
                        self.sums[name] = _sha(data)
                    else:
                        self._stream(name, data)
                except BaseException as e:  # noqa: BLE001  handed to the build's thread by close()
                    self.failure = e
            del data, item
            with self.written:
                self.pending -= size
                self.written.notify_all()

    def _stream(self, name: str, chunks) -> None:
        h = hashlib.sha256()
        with self.z.open(self._info(name), "w", force_zip64=True) as f:
            block: list[bytes] = []
            size = 0
            for chunk in chunks:
                block.append(chunk)
                size += len(chunk)
                if size >= BLOCK:
                    data = b"".join(block)
                    h.update(data)
                    f.write(data)
                    block, size = [], 0
            data = b"".join(block)
            h.update(data)
            f.write(data)
        self.sums[name] = h.hexdigest()

    def _finish(self) -> None:
        self.queue.put(None)
        self.thread.join()

    def discard(self) -> None:
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
    """A forked process that makes, from the tables already read, the parts of a bundle that need
    nothing else of the build: the primary analysis, the ODM snapshot (into a temporary file) and,
    on a connection of its own, the reports. The two processes then share the work on two cores
    without reading the database twice. It answers each part as it is done (or the error that
    stopped it); it never touches its parent's connection, and ends without tidying up objects it
    inherited (os._exit)."""

    def __init__(self, db: Session, lock, pv, tables, blinded: bool):
        ctx = multiprocessing.get_context("fork")
        self.folder = tempfile.mkdtemp(prefix="trial-bundle-")
        self.conn, send = ctx.Pipe(duplex=False)
        plain = {"id": lock.id, "created_at": lock.created_at, "version": pv.version, "content": pv.content,
                 "url": _engine_of(db).url.render_as_string(hide_password=False)}
        self.proc = ctx.Process(target=_helper_main, args=(send, plain, tables, blinded, self.folder),
                                name=f"bundle helper {lock.id}", daemon=True)
        self.proc.start()
        send.close()
        self.got: dict = {}

    def result(self, kind: str):
        while kind not in self.got:
            if not self.conn.poll(HELPER_WAIT):
                raise RuntimeError(f"the bundle's helper process gave no {kind} in {HELPER_WAIT} s")
            try:
                got, value = self.conn.recv()
            except EOFError:
                self.proc.join(5)
                raise RuntimeError(f"the bundle's helper process ended before its {kind} "
                                   f"(exit code {self.proc.exitcode})") from None
            if got == "error":
                raise RuntimeError(f"the bundle's helper process failed: {value}")
            self.got[got] = value
        return self.got[kind]

    def file(self, kind: str):
        """The chunks of a file the helper wrote (read when its turn in the zip comes)."""
        with open(self.result(kind), "rb") as f:
            while chunk := f.read(BLOCK):
                yield chunk

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
        self.proc.join()

    def close(self) -> None:
        self.conn.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def _engine_of(db: Session):
    bind = db.get_bind()  # a connection, for a session bound to one (trial.db.read_only_session)
    return getattr(bind, "engine", bind)


def _helper_main(send, plain: dict, tables, blinded: bool, folder: str) -> None:
    try:
        content = plain["content"]
        if content.get("analysis"):
            send.send(("analysis", _analysis_files(content, next(t for t in tables if t.name == "adsl"), blinded)))
        path = os.path.join(folder, "snapshot.xml")
        with open(path, "wb") as f:
            for chunk in _odm_chunks(content, tables, plain["id"], plain["created_at"], plain["version"], blinded):
                f.write(chunk)
        send.send(("odm", path))
        engine = make_engine(plain["url"])  # a connection of its own: the parent's is never touched here
        try:
            with read_only_session(make_session_factory(engine)) as rdb:
                send.send(("reports", _report_files(rdb, plain["id"], plain["created_at"], content, blinded)))
        finally:
            engine.dispose()
    except BaseException as e:  # noqa: BLE001  reported to the build, which fails with it
        send.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        send.close()


def can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


PRELOAD = ("numpy", "scipy.optimize", "reportlab.platypus", "reportlab.pdfgen.canvas")


def preload() -> None:
    """Load the libraries a build uses (NumPy, SciPy, ReportLab), which the modules load
    only when they first need them: a worker loads them once before it forks its processes, and
    each build's helper, which share them."""
    for name in PRELOAD:
        importlib.import_module(name)


def build_bundle(db: Session, lock, sig, blinded: bool, cache: dict | None = None, progress=None,
                 parallel: bool = False) -> tuple[bytes, str, str]:
    """Return (zip bytes, sha256 of the zip, sha256 of the manifest). ``progress`` is called with
    the share done (0..1) as the build goes (a worker reports it to the locks page). ``parallel``
    (a worker's build, where the platform can fork) makes the analysis, the ODM snapshot and the
    reports in a helper process meanwhile: the same bytes, in less time."""
    with _collector_paused():
        return _build(db, lock, sig, blinded, cache, progress, parallel and can_fork())


def _build(db: Session, lock, sig, blinded: bool, cache: dict | None, progress, parallel: bool) -> tuple[bytes, str, str]:
    say = progress or (lambda share: None)
    when = lock.created_at
    pv = db.query(ProtocolVersion).filter_by(version=lock.protocol_version).one()
    content = pv.content
    dummy_seed = bytes.fromhex(lock.dummy_seed) if blinded else None
    tables = build_tables(db, blinded, cache, dummy_seed)
    steps = len(tables) + 2  # each table's files, the rest, the zip's end
    say(1 / steps)
    helper = _Helper(db, lock, pv, tables, blinded) if parallel else None  # forked before the zip's thread starts
    out = _Zip(lock)
    try:
        truncated: dict[str, dict[str, int]] = {}
        counts = {t.name: len(t.rows) for t in tables}
        for i, t in enumerate(tables):
            where = ("analysis/{name}.{fmt}" if t.name in ANALYSIS_TABLES else "{fmt}/{name}.{fmt}").format
            out.add(where(name=t.name, fmt="csv"), formats.to_csv(t))
            stata, sas, cut = formats.columns(t)
            out.add(where(name=t.name, fmt="dta"), formats.to_dta(t, when, stata))
            if t.rows:  # a transport file of no observations is valid, but pandas.read_sas cannot read it
                out.add(where(name=t.name, fmt="xpt"), formats.to_xpt(t, when, sas)[0])
            if cut:
                truncated[t.name] = cut
            del stata, sas
            if helper is not None:  # the helper has the rows it needs (its own copy): here they are done with
                t.rows = []
            say((i + 2) / steps)
        if content.get("analysis"):
            files = (lambda: helper.result("analysis")) if helper else \
                _analysis_files(content, next(t for t in tables if t.name == "adsl"), blinded)
            for n, name in enumerate(ANALYSIS_FILES):
                out.add(name, (lambda n=n: files()[n][1]) if helper else files[n][1])
        reference = (content.get("analysis") or {}).get("reference_arm")
        out.add("syntax/load.R", syntax.load_r(tables, reference).encode())
        out.add("syntax/load.do", syntax.load_do(tables, reference).encode())
        out.add("syntax/load.sas", syntax.load_sas(tables, counts).encode())
        out.add("syntax/load.sps", syntax.load_sps(tables).encode())
        out.add("dictionary.csv", formats.dictionary_csv(tables))
        out.add("dictionary_visits.csv", formats.visits_csv(content))
        out.add("protocol.toml", pv.source.encode("utf-8"))  # byte for byte the version in force (its sha256 is in the README)
        out.add("odm/snapshot.xml", (lambda: helper.file("odm")) if helper else
                _odm_chunks(content, tables, lock.id, when, pv.version, blinded))
        reports = (lambda: helper.result("reports")) if helper else _report_files(db, lock.id, when, content, blinded)
        for n, name in enumerate(report_names(blinded)):
            out.add(name, (lambda n=n: reports()[n][1]) if helper else reports[n][1])
        accepted = shown_queries(db, lock.accepted_open_queries, blinded)
        out.add("README.txt", _readme(lock, sig, pv, blinded, tables, truncated, counts, accepted,
                                        seal_of(db, seal_name(lock))).encode())
        data, manifest_sha = out.close()
        say((steps - 1) / steps)
    except BaseException:
        if helper is not None:
            helper.stop()  # first: a file waiting for the helper then fails at once
        out.discard()  # a refused build (e.g. CONSORT does not reconcile) leaves no half-open zip behind
        raise
    finally:
        if helper is not None:
            helper.stop()
            helper.close()
    return data, _sha(data), manifest_sha


ANALYSIS_FILES = ("analysis/primary.json", "analysis/primary.txt", "analysis/primary.py", "analysis/primary.R")


def _analysis_files(content: dict, adsl, blinded: bool) -> list[tuple[str, bytes]]:
    """The protocol's primary analysis on this lock's ADSL, with the scripts that reproduce it."""
    result, summary, py, r = primary_analysis(content, adsl, blinded)
    return list(zip(ANALYSIS_FILES, (json.dumps(result, indent=2).encode(), summary.encode(), py.encode(), r.encode())))


def _odm_chunks(content: dict, tables, lock_id: int, when, version: int, blinded: bool):
    return odm.snapshot_chunks(content, {t.name: t for t in tables if t.name not in ANALYSIS_TABLES}, lock_id, when,
                               version, blinded)


def report_names(blinded: bool) -> list[str]:
    names = ["reports/consort.json", "reports/blinding_index.csv", "reports/baseline_table.csv",
             "reports/baseline_table.pdf", "reports/trial_facts.json"]
    return names + ([] if blinded else ["reports/ae_summary.csv", "reports/intervention_delivered.csv"])


def _report_files(db: Session, lock_id: int, created_at, content: dict, blinded: bool) -> list[tuple[str, bytes]]:
    """CONSORT, the blinding index, Table 1, the trial's facts and, unblinded, the adverse events
    and the intervention as delivered by arm (in the order of report_names)."""
    out = [("reports/consort.json", json.dumps(consort(db, CliActor(), blinded=blinded), indent=2, sort_keys=False).encode())]
    bi = bang_index(db, blinded)
    cols = list(bi[0]) if bi else ["arm", "n", "unsure", "bang_index"]
    out.append(("reports/blinding_index.csv", table_csv({"columns": cols, "rows": [
        [r[k] if r[k] is not None else "" for k in cols] for r in bi]})))
    table1 = baseline_table(db, blinded)
    out.append(("reports/baseline_table.csv", table_csv(table1)))
    out.append(("reports/baseline_table.pdf", drawing.table_pdf(
        f"Table 1. Baseline characteristics{' (pooled over the arms: blinded)' if blinded else ' by arm'}", table1,
        f"{content['trial']['name']}; hard lock {lock_id}, {created_at:%Y-%m-%d}.")))
    out.append(("reports/trial_facts.json", json.dumps(trial_facts(db, blinded), indent=2).encode()))
    if not blinded:  # adverse events by arm: for unblinded readers only
        summary = summary_by_arm(db)
        cols = list(summary[0]) if summary else ["arm"]
        out.append(("reports/ae_summary.csv", table_csv({"columns": cols, "rows": [[r[k] for k in cols] for r in summary]})))
        out.append(("reports/intervention_delivered.csv", table_csv(delivered_by_arm(db, CliActor()))))
    if [n for n, _ in out] != report_names(blinded):
        raise RuntimeError("the reports are not the ones report_names lists")
    return out


def seal_name(lock) -> str:
    """What the audit seal taken at a hard lock is called (and how its bundle finds it)."""
    return f"hard lock {lock.id} (version {lock.version})"


def _accepted_text(accepted: list[int], blinded: bool) -> str:
    if blinded:
        return ("Signed with queries not closed, accepted by the signer. Of those, the ones in this dataset: "
                + (", ".join(map(str, accepted)) if accepted else "none") + " (see queries.csv).")
    return (f"Signed with {len(accepted)} queries not closed, accepted by the signer: "
            f"{', '.join(map(str, accepted))} (see queries.csv).")


def _readme(lock, sig, pv, blinded: bool, tables, truncated, counts, accepted: list[int], seal=None) -> str:
    lines = [
        "Locked dataset bundle",
        "=====================",
        f"Trial: {pv.content['trial']['name']}",
        f"Lock: {lock.id} (hard lock version {lock.version})",
        f"Signed by: {sig.printed_name} <{sig.email}> at {sig.signed_at:%Y-%m-%d %H:%M:%S} UTC",
        f"Meaning of the signature: {sig.meaning}",
        _accepted_text(accepted, blinded) if lock.accepted_open_queries else "Every query was closed when the lock was signed.",
        f"Protocol version: {pv.version} (amendment {pv.content['trial']['amendment']}, sha256 {pv.sha256})",
        f"Software: trial {__version__}",
        f"Variant: {'BLINDED: a DUMMY allocation (armcd), no session data, no intervention events' if blinded else 'UNBLINDED: the real allocation, arms by key and label, sessions included'}",
        "",
    ]
    if blinded:
        lines += [
            "THE ALLOCATION IN THIS BUNDLE IS A DUMMY",
            "---------------------------------------",
            "armcd (in particip, alloc and guesses) is not the trial's allocation. The codes were drawn",
            "at random in the protocol's ratio, independently of the real allocation, so that the whole",
            "analysis can be written and run on these data; its results say nothing about the arms.",
            f"Dummy allocation seed: {lock.dummy_seed}",
            f"Derivation: HMAC-SHA256 stream with label '{DUMMY_LABEL}' (trial.exports.dataset.dummy_allocation).",
            "Reports (CONSORT, Table 1, blinding index, facts) are pooled over the arms. The real",
            "allocation is in the unblinded bundle of this lock, released after the signed unblinding.",
            f"Free text written by unblinded staff (reasons of status events, descriptions of deviations) reads {FREE_TEXT_WITHHELD!r}.",
            "",
        ]
    elif seal is not None:  # the chain's size follows the sessions logged: unblinded readers only
        lines += [f"Audit chain sealed at signing: record {seal.seq}, hash {seal.hash}", ""]
    lines += [
        "Contents",
        "--------",
        "csv/      one CSV per table (UTF-8, header row; dates ISO 8601; empty = missing)",
        "xpt/      SAS transport v5 (names <= 8 characters, labels <= 40; dates as ISO text)",
        "dta/      Stata 15 (.dta)",
        "odm/      CDISC ODM 1.3.2 Snapshot (snapshot.xml)",
        f"reports/  CONSORT counts, baseline table, Bang blinding index, recruitment/follow-up facts ({'pooled over the arms' if blinded else 'by arm'})",
        "dictionary.csv   every variable: table, name, label, type, units, allowed values, source",
        "manifest.sha256  SHA-256 of every file (check with: sha256sum -c manifest.sha256)",
        "",
        "Tables",
        "------",
    ]
    lines += [f"{t.name:<9} {t.label} ({counts[t.name]} rows)" for t in tables]
    if truncated:
        lines += ["", "SAS transport v5 holds at most 200 bytes per text value; truncated in xpt/ only (full text in csv/ and dta/):"]
        lines += [f"  {t}.{v}: {n} values" for t, cols in sorted(truncated.items()) for v, n in sorted(cols.items())]
    return "\n".join(lines) + "\n"
