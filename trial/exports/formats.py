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

from trial.exports.dataset import MAX_LABEL, MAX_STATA_LABEL, Table, Var

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


DICTIONARY_COLUMNS = ["table", "table_label", "name", "label", "type", "units", "allowed_values", "codes_in_dta_xpt",
                      "sas_format", "instrument", "visit", "primary_outcome", "source"]


def dictionary_csv(tables: list[Table]) -> bytes:
    """Every variable of every table: its whole label, its type, units, the values it takes and
    what they mean, the numbers the Stata and SAS files hold for them, where it comes from and
    whether it is the primary outcome."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(DICTIONARY_COLUMNS)
    for t in tables:
        for v in t.vars:
            allowed = v.codes.meanings() if v.codes is not None else v.allowed
            w.writerow([t.name, t.label, v.name, v.label, v.kind, v.units, allowed,
                        v.codes.numbered() if v.codes is not None else "", sas_format(v), v.instrument, v.visit,
                        "1" if v.primary else "", v.source])
    return buf.getvalue().encode("utf-8")


def visits_csv(content: dict) -> bytes:
    """The protocol's visits: target day after randomization and the window around it."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["visit", "label", "target_day", "window_before_days", "window_after_days", "earliest_day", "latest_day",
                "primary", "allocation_guess", "instruments"])
    for v in content["visits"]:
        w.writerow([v["key"], v["label"], v["day"], v["window_before"], v["window_after"], v["day"] - v["window_before"],
                    v["day"] + v["window_after"], int(bool(v["primary"])), int(bool(v["allocation_guess"])),
                    "; ".join(i["key"] for i in content["instruments"] if v["key"] in i["visits"])])
    return buf.getvalue().encode("utf-8")


EPOCH = dt.date(1960, 1, 1)               # SAS dates and Stata %td count days from here
EPOCH_DT = dt.datetime(1960, 1, 1)
SAS_FORMATS = {"date": "YYMMDD10.", "datetime": "E8601DT19."}
STATA_FORMATS = {"date": "%td", "datetime": "%tc"}


def sas_format(v: Var) -> str:
    if v.codes is not None:
        return v.codes.name + "."
    return SAS_FORMATS.get(v.type, "")


def _days(x: str | None):
    return None if x is None else (dt.date.fromisoformat(x) - EPOCH).days


def _seconds(x: str | None):
    return None if x is None else (dt.datetime.fromisoformat(x) - EPOCH_DT).total_seconds()


def _typed_column(table: Table, i: int, v: Var):
    """(values for Stata, values for SAS, pandas dtype for Stata) of one variable: coded keys as
    their numbers, dates as days since 1960, datetimes in ms (Stata) and s (SAS) since 1960,
    missing as missing (never an empty text, except in a text variable, whose only missing value
    in both formats is the empty text)."""
    values = [r[i] for r in table.rows]
    if v.codes is not None and not v.codes.numeric:
        code = v.codes.code_of()
        try:
            values = [None if x is None else code[x] for x in values]
        except KeyError as e:
            raise ValueError(f"{table.name}.{v.name}: value {e.args[0]!r} is not in its code list {v.codes.name}") from None
        return values, values, "Int32"
    if v.type == "date":
        days = [_days(x) for x in values]
        return days, days, "Int32"
    if v.type == "datetime":
        secs = [_seconds(x) for x in values]
        return [None if x is None else x * 1000 for x in secs], secs, "float64"
    if v.type == "int":
        return values, values, "Int32"
    if v.type == "float":
        return values, values, "float64"
    return None, None, "str"


def _frame(table: Table, max_text: int | None = None):
    """The typed frames of one table for Stata and for SAS transport (text cut to ``max_text``
    bytes in the second), with the number of values cut per variable."""
    import pandas as pd  # deferred: pandas only for a hard lock's SAS and Stata files (a cold path)
    dta, xpt, truncated = {}, {}, {}
    for i, v in enumerate(table.vars):
        stata, sas, dtype = _typed_column(table, i, v)
        if dtype == "str":
            text = ["" if r[i] is None else str(r[i]) for r in table.rows]
            dta[v.name] = pd.Series(text, dtype="object")
            cut = text
            if max_text:
                n = sum(1 for x in text if len(x.encode("utf-8")) > max_text)
                if n:
                    truncated[v.name] = n
                    cut = [x.encode("utf-8")[:max_text].decode("utf-8", "ignore") for x in text]
            xpt[v.name] = pd.Series(cut, dtype="object")
        else:
            dta[v.name] = pd.Series(stata, dtype=dtype)
            xpt[v.name] = pd.Series([float("nan") if x is None else float(x) for x in sas], dtype="float64")
    return pd.DataFrame(dta), pd.DataFrame(xpt), truncated


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
    """The typed pandas frames for Stata and for SAS transport (text cut to 200 bytes), built once."""
    dta, xpt, truncated = _frame(table, XPT_MAX_TEXT)
    return dta, _widen_short_records(table, xpt), truncated


def _widen_short_records(table: Table, xpt):
    """pandas.read_sas counts the observations of a transport file whose records are at most 80
    bytes by taking every blank 8-byte word of the last 80 bytes for padding, and so drops rows
    whose text ends in blanks. A text variable one record of which is padded with trailing
    blanks (which SAS does not keep: its text values are blank-padded to their length anyway)
    makes the record longer than 80 bytes, which pandas counts right. The file stays a standard
    v5 transport file."""
    texts = [n for n in xpt.columns if xpt[n].dtype == object]
    if not texts or len(xpt) == 0:
        return xpt
    widths = {n: max(1, int(xpt[n].map(lambda x: len(x.encode("utf-8"))).max())) for n in texts}
    record = 8 * (len(xpt.columns) - len(texts)) + sum(widths.values())
    if record > 80:
        return xpt
    name = texts[-1]
    xpt = xpt.copy()
    first = xpt[name].iloc[0]
    xpt.loc[xpt.index[0], name] = first + " " * (81 - record + widths[name] - len(first.encode("utf-8")))
    return xpt


def to_xpt(table: Table, when: dt.datetime, df=None) -> tuple[bytes, dict[str, int]]:
    """The SAS transport (v5) file: labels cut to 40 characters (the dictionary has them whole),
    dates and datetimes with ISO formats, coded variables with their format's name (syntax/load.sas
    defines the formats)."""
    import pyreadstat  # deferred: only when a bundle is built
    truncated = {}
    if df is None:
        _, df, truncated = _frame(table, XPT_MAX_TEXT)
        df = _widen_short_records(table, df)
    fmts = {v.name: sas_format(v) for v in table.vars if sas_format(v)}
    data = _via_file(".xpt", lambda p: pyreadstat.write_xport(df, p, file_format_version=5, table_name=table.name.upper(),
                                                              file_label=table.label,
                                                              column_labels=[_cut(v.label, MAX_LABEL) for v in table.vars],
                                                              variable_format=fmts or None))
    # the creation/modification stamps live in the header records, before the observations
    end = data.find(b"HEADER RECORD*******OBS")
    end = len(data) if end < 0 else end
    stamp = when.strftime("%d%b%y:%H:%M:%S").upper().encode()
    return _stamp(data, rb"\d\d[A-Z]{3}\d\d:\d\d:\d\d:\d\d", stamp, end), truncated


def _cut(label: str, n: int) -> str:
    return label if len(label) <= n else label[:n].rstrip()


def to_dta(table: Table, when: dt.datetime, df=None) -> bytes:
    """The Stata 15 file: whole labels (up to Stata's 80 characters), value labels on every coded
    variable, integers stored as integers, dates as %td and datetimes as %tc."""
    import pyreadstat  # deferred: only when a bundle is built
    if df is None:
        df, _, _ = _frame(table)
    fmts = {v.name: STATA_FORMATS[v.type] for v in table.vars if v.type in STATA_FORMATS}
    value_labels = {v.name: v.codes.value_labels() for v in table.vars if v.codes is not None}
    data = _via_file(".dta", lambda p: pyreadstat.write_dta(df, p, file_label=table.label,
                                                            column_labels=[_cut(v.label, MAX_STATA_LABEL) for v in table.vars],
                                                            variable_format=fmts or None,
                                                            variable_value_labels=value_labels or None))
    stamp = b"<timestamp>\x11" + when.strftime("%d %b %Y %H:%M").encode() + b"</timestamp>"
    return _stamp(data, rb"<timestamp>\x11[^<]{17}</timestamp>", stamp, 512)  # the header holds the one stamp
