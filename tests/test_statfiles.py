"""The SAS transport and Stata writers (trial.exports.statfiles) write byte for byte the files
pyreadstat writes from the same values: every table of both bundles of a locked trial, and tables
made to reach the formats' corners (long text as Stata strL, repeated and empty values, text cut
at SAS's 200 bytes, non-ASCII, missing everything, dates and datetimes, no rows). The reference
below is the pandas + pyreadstat path the bundles used before, kept here as the yardstick."""
from __future__ import annotations

import datetime as dt
import os
import random
import re
import tempfile

import pytest

from tests.test_exports import constructed, hard_lock  # noqa: F401  (constructed: a fixture)
from trial.exports import formats
from trial.exports.dataset import YESNO, Codes, Table, Var

WHEN = dt.datetime(2026, 3, 4, 5, 6, 7)


# --- the reference: pandas frames written by pyreadstat ------------------------------------------

def _reference_frames(table: Table):
    import pandas as pd
    dta, xpt, truncated = {}, {}, {}
    for i, v in enumerate(table.vars):
        values = [r[i] for r in table.rows]
        if v.codes is not None and not v.codes.numeric:
            code = v.codes.code_of()
            values = [None if x is None else code[x] for x in values]
            stata, sas, dtype = values, values, "Int32"
        elif v.type == "date":
            days = [None if x is None else (dt.date.fromisoformat(x) - dt.date(1960, 1, 1)).days for x in values]
            stata, sas, dtype = days, days, "Int32"
        elif v.type == "datetime":
            secs = [None if x is None else (dt.datetime.fromisoformat(x) - dt.datetime(1960, 1, 1)).total_seconds()
                    for x in values]
            stata, sas, dtype = [None if x is None else x * 1000 for x in secs], secs, "float64"
        elif v.type in ("int", "float"):
            stata, sas, dtype = values, values, "Int32" if v.type == "int" else "float64"
        else:
            text = ["" if x is None else str(x) for x in values]
            dta[v.name] = pd.Series(text, dtype="object")
            n = sum(1 for x in text if len(x.encode("utf-8")) > formats.XPT_MAX_TEXT)
            if n:
                truncated[v.name] = n
                text = [x.encode("utf-8")[:formats.XPT_MAX_TEXT].decode("utf-8", "ignore") for x in text]
            xpt[v.name] = pd.Series(text, dtype="object")
            continue
        dta[v.name] = pd.Series(stata, dtype=dtype)
        xpt[v.name] = pd.Series([float("nan") if x is None else float(x) for x in sas], dtype="float64")
    xpt = pd.DataFrame(xpt)
    texts = [n for n in xpt.columns if xpt[n].dtype == object]
    if texts and len(xpt):  # the pandas.read_sas work-around (formats._widen_short_records)
        widths = {n: max(1, int(xpt[n].map(lambda x: len(x.encode("utf-8"))).max())) for n in texts}
        record = 8 * (len(xpt.columns) - len(texts)) + sum(widths.values())
        if record <= 80:
            name, first = texts[-1], xpt[texts[-1]].iloc[0]
            xpt.loc[xpt.index[0], name] = first + " " * (81 - record + widths[name] - len(first.encode("utf-8")))
    return pd.DataFrame(dta), xpt, truncated


def _via_file(suffix, write) -> bytes:
    fd, path = tempfile.mkstemp(suffix=suffix)
    os.close(fd)
    try:
        write(path)
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def reference_dta(table: Table) -> bytes:
    import pyreadstat
    df, _, _ = _reference_frames(table)
    data = _via_file(".dta", lambda p: pyreadstat.write_dta(
        df, p, file_label=table.label, column_labels=[formats._cut(v.label, 80) for v in table.vars],
        variable_format={v.name: formats.STATA_FORMATS[v.type] for v in table.vars if v.type in formats.STATA_FORMATS} or None,
        variable_value_labels={v.name: v.codes.value_labels() for v in table.vars if v.codes is not None} or None))
    stamp = b"<timestamp>\x11" + WHEN.strftime("%d %b %Y %H:%M").encode() + b"</timestamp>"
    return re.sub(rb"<timestamp>\x11[^<]{17}</timestamp>", stamp, data, count=1)


def reference_xpt(table: Table) -> tuple[bytes, dict]:
    import pyreadstat
    _, df, truncated = _reference_frames(table)
    fmts = {v.name: formats.sas_format(v) for v in table.vars if formats.sas_format(v)}
    data = _via_file(".xpt", lambda p: pyreadstat.write_xport(
        df, p, file_format_version=5, table_name=table.name.upper(), file_label=table.label,
        column_labels=[formats._cut(v.label, 40) for v in table.vars], variable_format=fmts or None))
    end = data.find(b"HEADER RECORD*******OBS")
    stamp = WHEN.strftime("%d%b%y:%H:%M:%S").upper().encode()
    return re.sub(rb"\d\d[A-Z]{3}\d\d:\d\d:\d\d:\d\d", stamp, data[:end]) + data[end:], truncated


def assert_same_as_pyreadstat(table: Table) -> None:
    assert formats.to_dta(table, WHEN) == reference_dta(table), f"{table.name}: the Stata file differs from pyreadstat's"
    if table.rows:
        mine, cut = formats.to_xpt(table, WHEN)
        ref, ref_cut = reference_xpt(table)
        assert mine == ref, f"{table.name}: the transport file differs from pyreadstat's"
        assert cut == ref_cut


# --- the bundles of a locked trial ---------------------------------------------------------------

def test_every_table_of_both_bundles_is_written_as_pyreadstat_writes_it(locked_tables):
    for variant, tables in locked_tables.items():
        assert len(tables) > 10, variant
        for t in tables:
            assert_same_as_pyreadstat(t)


@pytest.fixture()
def locked_tables(constructed, db):
    """The tables of both variants of the constructed trial of tests/test_exports.py (sessions,
    assessments, events, deviations, every CONSORT path), hard-locked."""
    from trial.exports.dataset import build_tables
    from trial.lock.models import DataLock
    lock = db.get(DataLock, hard_lock(constructed["world"]))
    return {"unblinded": build_tables(db, False), "blinded": build_tables(db, True, None, bytes.fromhex(lock.dummy_seed))}


# --- the formats' corners --------------------------------------------------------------------------

def _vars():
    return [Var("studyid", "Study ID", "str"), Var("note", "A note " + "with a label longer than forty characters", "str"),
            Var("empty", "Never filled", "str"), Var("arm", "Arm", "str", codes=Codes("ARM", (("low", "Low"), ("high", "High")))),
            Var("flag", "Flag", "int", codes=YESNO), Var("n", "A count", "int"), Var("x", "A measure", "float"),
            Var("day", "A date", "date"), Var("at", "A moment", "datetime")]


def test_the_formats_corners_are_written_as_pyreadstat_writes_them():
    rng = random.Random(3)
    long_text = "é" * 1100  # 2200 bytes: a Stata strL, cut in the transport file
    rows = []
    for i in range(60):
        rows.append((f"AT01-{i:04d}",
                     rng.choice([None, "", "short", "two\nlines", long_text, long_text, "x" * 2044, "y" * 2045]),
                     None, rng.choice(["low", "high", None]), rng.choice([0, 1, None]),
                     rng.choice([0, -3, 2147483620, -2147483647, None]),
                     rng.choice([0.1, -2.5, 1e10, 123456789.125, 0.0, -0.0, None, 1 / 3, 1e-78, -1e74]),
                     rng.choice(["1960-01-01", "1959-12-31", "2026-02-28", "2400-12-31", None]),
                     rng.choice(["2026-01-02T03:04:05", "1960-01-01T00:00:00", None])))
    assert_same_as_pyreadstat(Table("corners", "Corners", _vars(), rows))
    # runs of equal long values share one Stata blob; two strL variables interleave theirs
    twice = [Var("a", "A", "str"), Var("b", "B", "str")]
    assert_same_as_pyreadstat(Table("strls", "Long texts", twice, [("q", "z" * 2500), ("y" * 3000, "z" * 2500),
                                                                      ("y" * 3000, ""), ("", "é" * 1500)]))
    # no rows; every value missing; one row; only numbers
    assert_same_as_pyreadstat(Table("none", "No rows", _vars(), []))
    assert_same_as_pyreadstat(Table("missing", "All missing", _vars(), [(None,) * 9] * 3))
    assert_same_as_pyreadstat(Table("one", "One row", _vars(), [rows[0]]))
    assert_same_as_pyreadstat(Table("nums", "Numbers", [Var("n", "N", "int"), Var("x", "X", "float")],
                                    [(i, i / 7) for i in range(500)]))


def test_a_number_sas_transport_cannot_hold_is_refused_not_written_wrong():
    """(pyreadstat writes 1e300 as the largest IBM number, read back as infinity, and 5e-300 as 0.)"""
    for x in (1e300, -1e300, 5e-300):
        t = Table("big", "Big", [Var("x", "X", "float")], [(x,)])
        with pytest.raises(ValueError, match="SAS transport"):
            formats.to_xpt(t, WHEN)
        assert formats.to_dta(t, WHEN) == reference_dta(t), "Stata holds it"


def test_an_integer_beyond_a_stata_long_is_refused_not_wrapped():
    for n in (2147483621, -2147483648):
        with pytest.raises(ValueError, match="Stata long"):
            formats.to_dta(Table("big", "Big", [Var("n", "N", "int")], [(n,)]), WHEN)
    edge = Table("ok", "OK", [Var("n", "N", "int")], [(2147483620,), (-2147483647,)])
    assert formats.to_dta(edge, WHEN) == reference_dta(edge)


def test_a_fraction_in_a_whole_number_variable_is_refused_not_cut():
    with pytest.raises(ValueError, match="fraction"):
        formats.to_dta(Table("frac", "Frac", [Var("n", "N", "int")], [(1,), (2.5,)]), WHEN)


def test_a_double_stata_would_read_as_missing_is_refused():
    """(2^1023 and above are Stata's missing codes: written as they are they would read as '.')"""
    for x in (2.0 ** 1023, -2.0 ** 1023, float("inf"), float("-inf")):
        with pytest.raises(ValueError, match="Stata double"):
            formats.to_dta(Table("big", "Big", [Var("x", "X", "float")], [(x,)]), WHEN)
    edge = Table("ok", "OK", [Var("x", "X", "float")], [(8.98e307,), (-8.98e307,)])
    assert formats.to_dta(edge, WHEN) == reference_dta(edge)
