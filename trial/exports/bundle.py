"""The locked dataset bundle of a hard lock: CSV, XPT and DTA per table, the data dictionary, the
ODM 1.3.2 snapshot, CONSORT and blinding reports, a README and a SHA-256 manifest, zipped with
fixed timestamps so that the same lock always gives the same bytes."""
from __future__ import annotations

import hashlib
import io
import json
import zipfile

from sqlalchemy.orm import Session

from trial import __version__
from trial.exports import formats, odm
from trial.exports.dataset import arm_codes, build_tables
from trial.protocol.models import ProtocolVersion

VARIANTS = ("unblinded", "blinded")


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def build_bundles(db: Session, lock, sig) -> dict[str, tuple[bytes, str, str]]:
    return {v: build_bundle(db, lock, sig, blinded=(v == "blinded")) for v in VARIANTS}


def build_bundle(db: Session, lock, sig, blinded: bool) -> tuple[bytes, str, str]:
    """Return (zip bytes, sha256 of the zip, sha256 of the manifest)."""
    from trial.exports.consort import consort
    from trial.exports.reports import bang_index, baseline_table, table_csv, trial_facts
    from trial.auth.scope import CliActor
    when = lock.created_at
    pv = db.query(ProtocolVersion).filter_by(version=lock.protocol_version).one()
    content = pv.content
    tables = build_tables(db, blinded)
    files: dict[str, bytes] = {}
    truncated: dict[str, dict[str, int]] = {}
    for t in tables:
        files[f"csv/{t.name}.csv"] = formats.to_csv(t)
        files[f"xpt/{t.name}.xpt"], cut = formats.to_xpt(t, when)
        if cut:
            truncated[t.name] = cut
        files[f"dta/{t.name}.dta"] = formats.to_dta(t, when)
    files["dictionary.csv"] = formats.dictionary_csv(tables)
    files["odm/snapshot.xml"] = odm.snapshot(content, {t.name: t for t in tables}, lock.id, when, pv.version, blinded)
    names = arm_codes(db) if blinded else {a["key"]: a["key"] for a in content["arms"]}
    c = consort(db, CliActor(), blinded=blinded)
    files["reports/consort.json"] = json.dumps(c, indent=2, sort_keys=False).encode()
    bi = bang_index(db, names)
    files["reports/blinding_index.csv"] = table_csv({"columns": ["arm", "n", "correct", "incorrect", "unsure", "bang_index"],
                                                     "rows": [[r[k] if r[k] is not None else "" for k in
                                                               ("arm", "n", "correct", "incorrect", "unsure", "bang_index")] for r in bi]})
    files["reports/baseline_table.csv"] = table_csv(baseline_table(db, names))
    files["reports/trial_facts.json"] = json.dumps(trial_facts(db, names, blinded), indent=2).encode()
    files["README.txt"] = _readme(lock, sig, pv, blinded, tables, truncated).encode()
    manifest = "".join(f"{_sha(files[n])}  {n}\n" for n in sorted(files)).encode()
    files["manifest.sha256"] = manifest
    buf = io.BytesIO()
    stamp = when.timetuple()[:6]
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for name in sorted(files):
            info = zipfile.ZipInfo(f"lock-{lock.id}/{name}", date_time=max(stamp, (1980, 1, 1, 0, 0, 0)))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o444 << 16
            z.writestr(info, files[name])
    data = buf.getvalue()
    return data, _sha(data), _sha(manifest)


def _readme(lock, sig, pv, blinded: bool, tables, truncated) -> str:
    lines = [
        "Locked dataset bundle",
        "=====================",
        f"Trial: {pv.content['trial']['name']}",
        f"Lock: {lock.id} (hard lock version {lock.version})",
        f"Signed by: {sig.printed_name} <{sig.email}> at {sig.signed_at:%Y-%m-%d %H:%M:%S} UTC",
        f"Meaning of the signature: {sig.meaning}",
        f"Protocol version: {pv.version} (amendment {pv.content['trial']['amendment']}, sha256 {pv.sha256})",
        f"Software: trial {__version__}",
        f"Variant: {'BLINDED: arms appear only as codes (armcd); session data and intervention events are left out' if blinded else 'UNBLINDED: arms by key and label, sessions included'}",
        "",
        "Contents",
        "--------",
        "csv/      one CSV per table (UTF-8, header row; dates ISO 8601; empty = missing)",
        "xpt/      SAS transport v5 (names <= 8 characters, labels <= 40; dates as ISO text)",
        "dta/      Stata 15 (.dta)",
        "odm/      CDISC ODM 1.3.2 Snapshot (snapshot.xml)",
        "reports/  CONSORT counts, baseline table by arm, Bang blinding index, recruitment/follow-up facts",
        "dictionary.csv   every variable: table, name, label, type, units, allowed values, source",
        "manifest.sha256  SHA-256 of every file (check with: sha256sum -c manifest.sha256)",
        "",
        "Tables",
        "------",
    ]
    lines += [f"{t.name:<9} {t.label} ({len(t.rows)} rows)" for t in tables]
    if truncated:
        lines += ["", "SAS transport v5 holds at most 200 bytes per text value; truncated in xpt/ only (full text in csv/ and dta/):"]
        lines += [f"  {t}.{v}: {n} values" for t, cols in sorted(truncated.items()) for v, n in sorted(cols.items())]
    return "\n".join(lines) + "\n"
