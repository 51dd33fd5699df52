"""Writers for one table: CSV, SAS transport (v5) and Stata (.dta) files (trial.exports.statfiles:
the bytes pyreadstat writes, in a fraction of its time), and the data dictionary. Every writer is
deterministic for a given lock: the files' header stamps are the lock's time.

Every CSV the system writes is safe to open in a spreadsheet: a text cell that begins with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return would be read as a formula (CSV injection), so it
gets a leading apostrophe (OWASP's advice); numbers stay numbers (a variable's type decides, not
its first character). The SAS, Stata and ODM files keep the text as entered."""
from __future__ import annotations

import csv
import datetime as dt
import io

from trial.exports import statfiles
from trial.exports.dataset import MAX_LABEL, MAX_STATA_LABEL, Table, Var
from trial.exports.statfiles import Column

XPT_MAX_TEXT = 200  # SAS transport v5 character variables hold at most 200 bytes
FORMULA_START = frozenset("=+-@\t\r")  # what a spreadsheet may read as the start of a formula
NEUTRALISED = ("Text cells beginning with =, +, -, @, a tab or a carriage return (or with apostrophes and then one "
               "of those) have an apostrophe (') put before them in the CSV files, so that a spreadsheet does not "
               "run them as formulas (syntax/load.R takes it off again); the Stata, SAS and ODM files hold the text "
               "as entered.")


def spreadsheet_safe(value):
    """A text cell as a CSV file holds it: with an apostrophe before a leading ``=``, ``+``,
    ``-``, ``@``, tab or carriage return (OWASP's advice against CSV injection), and before
    apostrophes followed by one of those, so that taking the first apostrophe off any cell that
    begins with apostrophes and then one of those gives back the text as entered. Anything else
    (numbers, missing values) as it is."""
    if isinstance(value, str) and value.lstrip("'")[:1] in FORMULA_START:
        return "'" + value
    return value


def csv_bytes(header: list[str], rows) -> bytes:
    """A CSV file (UTF-8, a header row) of rows whose text cells are made spreadsheet-safe
    (numbers, which are not text, stay as they are)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows([spreadsheet_safe(v) for v in row] for row in rows)
    return buf.getvalue().encode("utf-8")


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else repr(v)
    return str(v)


def to_csv(table: Table) -> bytes:
    raw = io.BytesIO()
    buf = io.TextIOWrapper(raw, encoding="utf-8", newline="")  # encoded as it is written: the text is never held whole
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([v.name for v in table.vars])
    floats = [i for i, v in enumerate(table.vars) if v.type == "float"]
    texts = [i for i, v in enumerate(table.vars) if v.type == "str"]  # neutralised; numbers never are
    if floats or texts:  # the floats need formatting (12.0 is written 12); None is written empty by csv

        def written(row):
            row = list(row)
            for i in floats:
                if isinstance(row[i], float):
                    row[i] = _cell(row[i])
            for i in texts:
                row[i] = spreadsheet_safe(row[i])
            return row
        w.writerows(map(written, table.rows))
    else:
        w.writerows(table.rows)
    buf.flush()
    return raw.getvalue()


DICTIONARY_COLUMNS = ["table", "table_label", "name", "label", "type", "units", "allowed_values", "codes_in_dta_xpt",
                      "sas_format", "instrument", "visit", "primary_outcome", "source"]


def dictionary_csv(tables: list[Table]) -> bytes:
    """Every variable of every table: its whole label, its type, units, the values it takes and
    what they mean, the numbers the Stata and SAS files hold for them, where it comes from and
    whether it is the primary outcome."""
    return csv_bytes(DICTIONARY_COLUMNS, (
        [t.name, t.label, v.name, v.label, v.kind, v.units, v.codes.meanings() if v.codes is not None else v.allowed,
         v.codes.numbered() if v.codes is not None else "", sas_format(v), v.instrument, v.visit,
         "1" if v.primary else "", v.source] for t in tables for v in t.vars))


def visits_csv(content: dict) -> bytes:
    """The protocol's visits: target day after randomization and the window around it."""
    return csv_bytes(["visit", "label", "target_day", "window_before_days", "window_after_days", "earliest_day",
                      "latest_day", "primary", "allocation_guess", "instruments"], (
        [v["key"], v["label"], v["day"], v["window_before"], v["window_after"], v["day"] - v["window_before"],
         v["day"] + v["window_after"], int(bool(v["primary"])), int(bool(v["allocation_guess"])),
         "; ".join(i["key"] for i in content["instruments"] if v["key"] in i["visits"])] for v in content["visits"]))


SAS_FORMATS = {"date": "YYMMDD10.", "datetime": "E8601DT19."}
STATA_FORMATS = {"date": "%td", "datetime": "%tc"}


def sas_format(v: Var) -> str:
    if v.codes is not None:
        return v.codes.name + "."
    return SAS_FORMATS.get(v.type, "")


def _typed(table: Table, i: int, v: Var, values: list):
    """One variable's values for the Stata and SAS files: (text as UTF-8 bytes, or numbers as
    float64 with NaN missing; whether Stata stores them as a long). Coded keys become their
    numbers, dates days since 1960, datetimes milliseconds (Stata) or seconds (SAS) since 1960;
    missing is missing (the empty text in a text variable, the only missing text both formats
    have)."""
    import numpy as np  # deferred: NumPy only for a hard lock's SAS and Stata files (a cold path)
    n = len(values)
    if v.codes is not None and not v.codes.numeric:
        code = v.codes.code_of()
        try:
            return None, np.fromiter((np.nan if x is None else code[x] for x in values), np.float64, n), True
        except KeyError as e:
            raise ValueError(f"{table.name}.{v.name}: value {e.args[0]!r} is not in its code list {v.codes.name}") from None
    if v.type in ("date", "datetime"):
        unit = "D" if v.type == "date" else "s"
        stamps = np.array(values, dtype=f"datetime64[{unit}]")  # ISO texts, None as NaT
        count = (stamps - np.datetime64("1960-01-01", unit)).astype(np.int64).astype(np.float64)
        count[np.isnat(stamps)] = np.nan
        return None, count, v.type == "date"
    if v.type in ("int", "float"):
        return None, np.array(values, dtype=np.float64), v.type == "int"
    encoded: dict = {}  # a value met again (a child's id, a code) is encoded once and its bytes shared
    return [encoded.get(x) or encoded.setdefault(x, b"" if x is None else str(x).encode("utf-8")) for x in values], None, False


def columns(table: Table) -> tuple[list[Column], list[Column], dict[str, int]]:
    """The typed columns of one table for Stata and for SAS transport (text cut to 200 bytes, the
    v5 limit), with the number of values cut per variable."""
    stata, sas, truncated = [], [], {}
    for i, v in enumerate(table.vars):
        text, number, integer = _typed(table, i, v, [r[i] for r in table.rows])  # a column at a time (memory)
        stata.append(Column(v.name, _cut(v.label, MAX_STATA_LABEL), text=text,
                            number=number * 1000 if v.type == "datetime" else number,  # %tc counts milliseconds
                            integer=integer, stata_format=STATA_FORMATS.get(v.type, "") if v.codes is None else "",
                            value_labels=v.codes.value_labels() if v.codes is not None else {}))
        if text is not None and any(len(x) > XPT_MAX_TEXT for x in text):
            truncated[v.name] = sum(1 for x in text if len(x) > XPT_MAX_TEXT)
            text = [x[:XPT_MAX_TEXT].decode("utf-8", "ignore").encode("utf-8") for x in text]
        sas.append(Column(v.name, _cut(v.label, MAX_LABEL), text=text, number=number, sas_format=sas_format(v)))
    return stata, _widen_short_records(sas), truncated


def _widen_short_records(cols: list[Column]) -> list[Column]:
    """pandas.read_sas counts the observations of a transport file whose records are at most 80
    bytes by taking every blank 8-byte word of the last 80 bytes for padding, and so drops rows
    whose text ends in blanks. A text variable one record of which is padded with trailing
    blanks (which SAS does not keep: its text values are blank-padded to their length anyway)
    makes the record longer than 80 bytes, which pandas counts right. The file stays a standard
    v5 transport file."""
    texts = [c for c in cols if c.is_text]
    if not texts or len(cols[0]) == 0:
        return cols
    widths = {c.name: max(1, max(len(x) for x in c.text)) for c in texts}
    record = 8 * (len(cols) - len(texts)) + sum(widths.values())
    if record > 80:
        return cols
    last = texts[-1]
    first = last.text[0]
    last.text = [first + b" " * (81 - record + widths[last.name] - len(first))] + last.text[1:]
    return cols


def to_xpt(table: Table, when: dt.datetime, cols: list[Column] | None = None) -> tuple[bytes, dict[str, int]]:
    """The SAS transport (v5) file: labels cut to 40 characters (the dictionary has them whole),
    dates and datetimes with ISO formats, coded variables with their format's name (syntax/load.sas
    defines the formats), the header's stamps the lock's time."""
    truncated = {}
    if cols is None:
        _, cols, truncated = columns(table)
    return statfiles.to_xpt(cols, table.name.upper(), table.label, when.strftime("%d%b%y:%H:%M:%S").upper()), truncated


def _cut(label: str, n: int) -> str:
    return label if len(label) <= n else label[:n].rstrip()


def to_dta(table: Table, when: dt.datetime, cols: list[Column] | None = None) -> bytes:
    """The Stata file (release 119, Stata 15 and later): whole labels (up to Stata's 80
    characters), value labels on every coded variable, integers stored as integers, dates as %td
    and datetimes as %tc, the header's stamp the lock's time."""
    if cols is None:
        cols = columns(table)[0]
    return statfiles.to_dta(cols, table.label, when.strftime("%d %b %Y %H:%M"))
