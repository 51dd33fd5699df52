"""Writers for one table: CSV, SAS transport (v5) and Stata (.dta) through pyreadstat, and the
data dictionary. Every writer is deterministic for a given lock: the timestamps pyreadstat puts
in file headers are replaced by the lock's time."""
from __future__ import annotations

import csv
import datetime as dt
import io
import os
import re
import tempfile

from trial.exports.dataset import Table

XPT_MAX_TEXT = 200  # SAS transport v5 character variables hold at most 200 bytes


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else repr(v)
    return str(v)


def to_csv(table: Table) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([v.name for v in table.vars])
    floats = [i for i, v in enumerate(table.vars) if v.type == "float"]
    if floats:  # only floats need formatting (12.0 is written 12); None is written empty by csv
        w.writerows([[_cell(v) for v in row] for row in table.rows])
    else:
        w.writerows(table.rows)
    return buf.getvalue().encode("utf-8")


def dictionary_csv(tables: list[Table]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["table", "table_label", "name", "label", "type", "units", "allowed_values", "source"])
    for t in tables:
        for v in t.vars:
            w.writerow([t.name, t.label, v.name, v.label, v.type, v.units, v.allowed, v.source])
    return buf.getvalue().encode("utf-8")


def _frame(table: Table, max_text: int | None = None):
    import pandas as pd  # deferred: pandas only for a hard lock's SAS and Stata files (a cold path)
    cols = {}
    truncated = {}
    for i, v in enumerate(table.vars):
        values = [r[i] for r in table.rows]
        if v.type in ("int", "float"):
            cols[v.name] = pd.Series([float(x) if x is not None else float("nan") for x in values], dtype="float64")
        else:
            text = ["" if x is None else str(x) for x in values]
            if max_text:
                n = sum(1 for x in text if len(x.encode("utf-8")) > max_text)
                if n:
                    truncated[v.name] = n
                    text = [x.encode("utf-8")[:max_text].decode("utf-8", "ignore") for x in text]
            cols[v.name] = pd.Series(text, dtype="object")
    return pd.DataFrame(cols), truncated


def _via_file(suffix: str, write) -> bytearray:
    fd, path = tempfile.mkstemp(suffix=suffix)
    os.close(fd)
    try:
        write(path)
        buf = bytearray(os.path.getsize(path))
        with open(path, "rb") as f:
            f.readinto(buf)
        return buf
    finally:
        os.unlink(path)


def _stamp(buf: bytearray, pattern: bytes, stamp: bytes, end: int) -> bytearray:
    """Overwrite header time stamps in place (same length), within buf[:end] only."""
    for m in re.finditer(pattern, bytes(buf[:end])):
        buf[m.start():m.end()] = stamp
    return buf


def frames(table: Table):
    """The pandas frames for Stata and for SAS transport (text cut to 200 bytes), built once."""
    df, _ = _frame(table)
    xdf, truncated = df, {}
    for v in table.vars:
        if v.type not in ("int", "float"):
            long = df[v.name].map(lambda x: len(x.encode("utf-8")) > XPT_MAX_TEXT)
            n = int(long.sum())
            if n:
                if xdf is df:
                    xdf = df.copy()
                truncated[v.name] = n
                xdf[v.name] = df[v.name].map(lambda x: x.encode("utf-8")[:XPT_MAX_TEXT].decode("utf-8", "ignore"))
    return df, xdf, truncated


def to_xpt(table: Table, when: dt.datetime, df=None) -> tuple[bytes, dict[str, int]]:
    import pyreadstat  # deferred: only when a bundle is built
    truncated = {}
    if df is None:
        df, truncated = _frame(table, XPT_MAX_TEXT)
    data = _via_file(".xpt", lambda p: pyreadstat.write_xport(df, p, file_format_version=5, table_name=table.name.upper(),
                                                              file_label=table.label,
                                                              column_labels=[v.label for v in table.vars]))
    # the creation/modification stamps live in the header records, before the observations
    end = data.find(b"HEADER RECORD*******OBS")
    end = len(data) if end < 0 else end
    stamp = when.strftime("%d%b%y:%H:%M:%S").upper().encode()
    return _stamp(data, rb"\d\d[A-Z]{3}\d\d:\d\d:\d\d:\d\d", stamp, end), truncated


def to_dta(table: Table, when: dt.datetime, df=None) -> bytes:
    import pyreadstat  # deferred: only when a bundle is built
    if df is None:
        df, _ = _frame(table)
    data = _via_file(".dta", lambda p: pyreadstat.write_dta(df, p, file_label=table.label,
                                                            column_labels=[v.label for v in table.vars]))
    stamp = b"<timestamp>\x11" + when.strftime("%d %b %Y %H:%M").encode() + b"</timestamp>"
    return _stamp(data, rb"<timestamp>\x11[^<]{17}</timestamp>", stamp, 512)  # the header holds the one stamp
