"""The locked dataset bundle of a hard lock: CSV, XPT and DTA per table, the data dictionary, the
ODM 1.3.2 snapshot, CONSORT and blinding reports, a README and a SHA-256 manifest, zipped with
fixed timestamps so that the same lock always gives the same bytes."""
from __future__ import annotations

import gc
import hashlib
import io
import json
import zipfile

from sqlalchemy.orm import Session

from trial.analysis.service import primary_analysis
from trial.audit.service import seal_of
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
    """Both variants, from one read of the database. The garbage collector is paused: the build
    makes millions of short-lived tuples and no cycles."""
    cache: dict = {}
    gc.disable()
    try:
        return {v: build_bundle(db, lock, sig, blinded=(v == "blinded"), cache=cache) for v in VARIANTS}
    finally:
        gc.enable()


class _Zip:
    """Files go into the zip as they are made (fixed timestamps, read-only), hashed on the way, so
    no more than one table's files is held in memory."""

    def __init__(self, lock):
        self.buf = io.BytesIO()
        self.z = zipfile.ZipFile(self.buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1)
        self.prefix = f"lock-{lock.id}/"
        self.stamp = max(lock.created_at.timetuple()[:6], (1980, 1, 1, 0, 0, 0))
        self.sums: dict[str, str] = {}

    def add(self, name: str, data: bytes) -> None:
        info = zipfile.ZipInfo(self.prefix + name, date_time=self.stamp)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o444 << 16
        self.z.writestr(info, data)
        self.sums[name] = _sha(data)

    def add_stream(self, name: str, chunks) -> None:
        """A large file (the ODM snapshot) written as it is made, hashed on the way."""
        info = zipfile.ZipInfo(self.prefix + name, date_time=self.stamp)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o444 << 16
        h = hashlib.sha256()
        with self.z.open(info, "w", force_zip64=True) as f:
            for chunk in chunks:
                h.update(chunk)
                f.write(chunk)
        self.sums[name] = h.hexdigest()

    def discard(self) -> None:
        self.z.close()
        self.buf = io.BytesIO()

    def close(self) -> tuple[bytes, str]:
        manifest = "".join(f"{self.sums[n]}  {n}\n" for n in sorted(self.sums)).encode()
        self.add("manifest.sha256", manifest)
        self.z.close()
        return self.buf.getvalue(), _sha(manifest)


def build_bundle(db: Session, lock, sig, blinded: bool, cache: dict | None = None, progress=None) -> tuple[bytes, str, str]:
    """Return (zip bytes, sha256 of the zip, sha256 of the manifest). ``progress`` is called with
    the share done (0..1) as the build goes (a worker reports it to the locks page)."""
    say = progress or (lambda share: None)
    when = lock.created_at
    pv = db.query(ProtocolVersion).filter_by(version=lock.protocol_version).one()
    content = pv.content
    dummy_seed = bytes.fromhex(lock.dummy_seed) if blinded else None
    tables = build_tables(db, blinded, cache, dummy_seed)
    steps = len(tables) + 4  # each table's files, the analysis, the syntax and dictionary, the ODM, the reports
    say(1 / steps)
    out = _Zip(lock)
    try:
        truncated: dict[str, dict[str, int]] = {}
        counts = {t.name: len(t.rows) for t in tables}
        for i, t in enumerate(tables):
            where = ("analysis/{name}.{fmt}" if t.name in ANALYSIS_TABLES else "{fmt}/{name}.{fmt}").format
            out.add(where(name=t.name, fmt="csv"), formats.to_csv(t))
            df, xdf, cut = formats.frames(t)
            out.add(where(name=t.name, fmt="dta"), formats.to_dta(t, when, df))
            if t.rows:  # a transport file of no observations is valid, but pandas.read_sas cannot read it
                out.add(where(name=t.name, fmt="xpt"), formats.to_xpt(t, when, xdf)[0])
            if cut:
                truncated[t.name] = cut
            del df, xdf
            say((i + 2) / steps)
        if content.get("analysis"):
            _analysis_files(out, content, next(t for t in tables if t.name == "adsl"), blinded)
        say((len(tables) + 1) / steps)
        reference = (content.get("analysis") or {}).get("reference_arm")
        out.add("syntax/load.R", syntax.load_r(tables, reference).encode())
        out.add("syntax/load.do", syntax.load_do(tables, reference).encode())
        out.add("syntax/load.sas", syntax.load_sas(tables, counts).encode())
        out.add("syntax/load.sps", syntax.load_sps(tables).encode())
        out.add("dictionary.csv", formats.dictionary_csv(tables))
        out.add("dictionary_visits.csv", formats.visits_csv(content))
        out.add("protocol.toml", pv.source.encode("utf-8"))  # byte for byte the version in force (its sha256 is in the README)
        say((len(tables) + 2) / steps)
        out.add_stream("odm/snapshot.xml", odm.snapshot_chunks(content, {t.name: t for t in tables if t.name not in ANALYSIS_TABLES},
                                                               lock.id, when, pv.version, blinded))
        say((len(tables) + 3) / steps)
        c = consort(db, CliActor(), blinded=blinded)
        out.add("reports/consort.json", json.dumps(c, indent=2, sort_keys=False).encode())
        bi = bang_index(db, blinded)
        cols = list(bi[0]) if bi else ["arm", "n", "unsure", "bang_index"]
        out.add("reports/blinding_index.csv", table_csv({"columns": cols, "rows": [
            [r[k] if r[k] is not None else "" for k in cols] for r in bi]}))
        table1 = baseline_table(db, blinded)
        out.add("reports/baseline_table.csv", table_csv(table1))
        out.add("reports/baseline_table.pdf", drawing.table_pdf(
            f"Table 1. Baseline characteristics{' (pooled over the arms: blinded)' if blinded else ' by arm'}", table1,
            f"{pv.content['trial']['name']}; hard lock {lock.id}, {lock.created_at:%Y-%m-%d}."))
        out.add("reports/trial_facts.json", json.dumps(trial_facts(db, blinded), indent=2).encode())
        if not blinded:  # adverse events by arm: for unblinded readers only
            summary = summary_by_arm(db)
            cols = list(summary[0]) if summary else ["arm"]
            out.add("reports/ae_summary.csv", table_csv({"columns": cols, "rows": [[r[k] for k in cols] for r in summary]}))
            out.add("reports/intervention_delivered.csv", table_csv(delivered_by_arm(db, CliActor())))
        accepted = shown_queries(db, lock.accepted_open_queries, blinded)
        out.add("README.txt", _readme(lock, sig, pv, blinded, tables, truncated, counts, accepted,
                                        seal_of(db, seal_name(lock))).encode())
        data, manifest_sha = out.close()
    except BaseException:
        out.discard()  # a refused build (e.g. CONSORT does not reconcile) leaves no half-open zip behind
        raise
    return data, _sha(data), manifest_sha


def _analysis_files(out: _Zip, content: dict, adsl, blinded: bool) -> None:
    """The protocol's primary analysis on this lock's ADSL, with the scripts that reproduce it."""
    result, summary, py, r = primary_analysis(content, adsl, blinded)
    out.add("analysis/primary.json", json.dumps(result, indent=2).encode())
    out.add("analysis/primary.txt", summary.encode())
    out.add("analysis/primary.py", py.encode())
    out.add("analysis/primary.R", r.encode())


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
