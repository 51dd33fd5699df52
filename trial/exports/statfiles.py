"""SAS transport (v5) and Stata (release 119) files, written a column at a time with NumPy.

The files are byte for byte the ones pyreadstat (ReadStat) writes from the same typed columns
(tests/test_statfiles.py compares them, table by table, with pyreadstat's), in a small part of its
time: ReadStat is handed its values one cell at a time, and at 10,000 children the sessions table
alone (370,000 rows) took it 1.9 s in each format, the better part of a locked bundle's build.

A column is a text column (UTF-8 bytes, missing as the empty text, as both formats keep it) or a
numeric one (float64, NaN missing), stored by Stata as a 4-byte ``long`` when it holds integers
(codes, days, counts) and as a ``double`` otherwise; SAS transport holds every number as an
8-byte IBM hexadecimal float. References: the SAS Institute's TS-140 ("The record layout of a
data set in SAS transport (XPORT) format") and Stata's ``help dta`` (format 119).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the module loads NumPy only when it writes
    import numpy as np

STATA_MAX_STR = 2044          # wider text is a Stata strL (as ReadStat does it)
STATA_MISSING_LONG = 2147483621
STATA_MAX_LONG = 2147483620  # the largest long Stata holds (above it, its missing values)
STATA_MIN_LONG = -2147483647
STATA_MISSING_DOUBLE = 0x7FE0000000000000  # 2 ** 1023, Stata's "."
STATA_LIMIT_DOUBLE = 2.0 ** 1023  # Stata's doubles are smaller in magnitude (above: its missing codes)
XPT_RECORD = 80
MAP_SIZE = len(b"<map>") + 14 * 8 + len(b"</map>")


@dataclass
class Column:
    """One variable's values and metadata. ``text`` for a text variable (UTF-8, b"" when missing);
    else ``number`` (float64, NaN when missing), ``integer`` when Stata stores it as a long."""
    name: str
    label: str
    text: list[bytes] | None = None
    number: np.ndarray | None = None
    integer: bool = False
    stata_format: str = ""      # "%td", "%tc"; empty: Stata's default for the type
    sas_format: str = ""        # "YYMMDD10.", "ARM."; empty: none
    value_labels: dict[int, str] = field(default_factory=dict)  # Stata value labels

    @property
    def is_text(self) -> bool:
        return self.text is not None

    def __len__(self) -> int:
        return len(self.text) if self.text is not None else len(self.number)


def _numpy():
    """NumPy, loaded the first time a file is written (a bundle's build: a cold path)."""
    import numpy  # deferred: NumPy only when a bundle is built

    return numpy


def _fixed(values: list[bytes], width: int, pad: bytes):
    """The values as one fixed-width NumPy bytes array, padded with NULs (Stata) or blanks (SAS)."""
    np = _numpy()
    width = max(width, 1)
    if pad != b"\0":
        padded: dict[bytes, bytes] = {}  # a value met again (a child's id, a code) is padded once
        values = [padded.get(v) or padded.setdefault(v, v.ljust(width, pad)) for v in values]
    return np.array(values, dtype=f"S{width}")


class _Records:
    """A file's records, made straight in the file's buffer (a large table's are not held twice):
    their NumPy dtype, how many, and the function that fills them."""

    def __init__(self, dtype, count: int, fill):
        self.dtype, self.count, self.fill = dtype, count, fill

    def __len__(self) -> int:
        return self.dtype.itemsize * self.count


def _joined(parts) -> bytearray:
    """The parts as one buffer, records filled in place."""
    np = _numpy()
    out = bytearray(sum(len(p) for p in parts))
    at = 0
    for p in parts:
        if isinstance(p, _Records):
            if p.count:
                p.fill(np.frombuffer(out, dtype=p.dtype, count=p.count, offset=at))
        else:
            out[at:at + len(p)] = p
        at += len(p)
    return out


# --- Stata 119 -------------------------------------------------------------------------------------

def _stata_type(c: Column) -> tuple[int, int]:
    """(type code, bytes in a record): str# 1..2044, strL 32768, long 65528, double 65526."""
    if c.is_text:
        width = max((len(v) for v in c.text), default=0)
        return (32768, 8) if width > STATA_MAX_STR else (max(width, 1), max(width, 1))
    return (65528, 4) if c.integer else (65526, 8)


def _nul(text: str, size: int) -> bytes:
    raw = text.encode("utf-8")[:size - 1]
    return raw + b"\0" * (size - len(raw))


class _Parts:
    """A file's parts in order, with the offset at which each tagged one begins (Stata's map)."""

    def __init__(self):
        self.parts: list = []
        self.offsets: dict[str, int] = {}
        self.size = 0

    def put(self, data, tag: str | None = None) -> None:
        if tag:
            self.offsets[tag] = self.size
        self.parts.append(data)
        self.size += len(data)


DTA_MAP_ORDER = ("stata_data", "map", "variable_types", "varnames", "sortlist", "formats", "value_label_names",
                 "variable_labels", "characteristics", "data", "strls", "value_labels", "stata_data_close")


def to_dta(columns: list[Column], label: str, timestamp: str) -> bytes:
    """A Stata 119 file (``timestamp`` as Stata writes it: '07 Dec 2026 00:20')."""
    n = len(columns[0]) if columns else 0
    types = [_stata_type(c) for c in columns]
    out = _Parts()
    out.put(b"<stata_dta>", "stata_data")
    out.put(_dta_header(len(columns), n, label, timestamp))
    map_at = len(out.parts)
    out.put(b"\0" * MAP_SIZE, "map")  # filled in below, once every offset is known
    labelled = {}  # the variables with value labels: the name of each one's table
    for c in columns:
        if c.value_labels:
            labelled[c.name] = f"{c.name}{len(labelled)}"
    _dta_descriptors(out, columns, types, labelled)
    refs, strls = _strls(columns, types, n)
    _check_stata_numbers(columns, types)
    out.put(b"<data>", "data")
    out.put(_dta_records(columns, types, refs, n))
    out.put(b"</data>")
    out.put(b"<strls>" + b"".join(strls) + b"</strls>", "strls")
    out.put(b"<value_labels>" + b"".join(_value_label_table(c, labelled[c.name]) for c in columns if c.name in labelled)
            + b"</value_labels>", "value_labels")
    out.put(b"</stata_dta>", "stata_data_close")
    out.parts[map_at] = b"<map>" + struct.pack("<14Q", *(out.offsets[t] for t in DTA_MAP_ORDER), out.size) + b"</map>"
    return _joined(out.parts)


def _dta_header(k: int, n: int, label: str, timestamp: str) -> bytes:
    lab = label.encode("utf-8")
    ts = timestamp.encode("ascii")
    return (b"<header><release>119</release><byteorder>LSF</byteorder><K>" + struct.pack("<I", k) + b"</K><N>"
            + struct.pack("<Q", n) + b"</N><label>" + struct.pack("<H", len(lab)) + lab + b"</label><timestamp>"
            + struct.pack("<B", len(ts)) + ts + b"</timestamp></header>")


def _dta_descriptors(out: _Parts, columns: list[Column], types: list[tuple[int, int]], labelled: dict[str, str]) -> None:
    """The variables' types, names, sort order, formats, value-label names and labels, and the
    (empty) characteristics."""
    k = len(columns)
    out.put(b"<variable_types>" + b"".join(struct.pack("<H", t) for t, _ in types) + b"</variable_types>", "variable_types")
    out.put(b"<varnames>" + b"".join(_nul(c.name, 129) for c in columns) + b"</varnames>", "varnames")
    out.put(b"<sortlist>" + b"\0" * (4 * (k + 1)) + b"</sortlist>", "sortlist")
    out.put(b"<formats>" + b"".join(_nul(c.stata_format or ("%-9s" if c.is_text else "%12.0g" if c.integer else "%10.0g"), 57)
                                    for c in columns) + b"</formats>", "formats")
    out.put(b"<value_label_names>" + b"".join(_nul(labelled.get(c.name, ""), 129) for c in columns)
            + b"</value_label_names>", "value_label_names")
    out.put(b"<variable_labels>" + b"".join(_nul(c.label, 321) for c in columns) + b"</variable_labels>", "variable_labels")
    out.put(b"<characteristics></characteristics>", "characteristics")


def _strls(columns: list[Column], types: list[tuple[int, int]], n: int) -> tuple[dict, list[bytes]]:
    """strL values: each a (variable, observation) reference to a GSO blob, written row by row; a
    value met before, in any strL variable, refers to the blob written for it then (as ReadStat).
    Returns (each strL variable's references, the blobs)."""
    np = _numpy()
    long_text = [i for i, (t, _) in enumerate(types) if t == 32768]
    refs = {i: np.empty(n, dtype="<u8") for i in long_text}
    seen: dict[bytes, int] = {}
    strls: list[bytes] = []
    for o in range(1, n + 1):
        for i in long_text:
            v = columns[i].text[o - 1]
            ref = seen.get(v)
            if ref is None:
                ref = seen[v] = (i + 1) | (o << 24)  # v in 3 bytes, o in 5 (release 119)
                strls.append(b"GSO" + struct.pack("<IQBI", i + 1, o, 0x82, len(v) + 1) + v + b"\0")
            refs[i][o - 1] = ref
    return refs, strls


def _check_stata_numbers(columns: list[Column], types: list[tuple[int, int]]) -> None:
    """What Stata cannot hold is refused, never wrapped or cut."""
    np = _numpy()
    for c, (t, _) in zip(columns, types):
        if c.is_text:
            continue
        x = c.number[~np.isnan(c.number)]
        if t == 65528 and np.any((x > STATA_MAX_LONG) | (x < STATA_MIN_LONG)):
            raise ValueError(f"{c.name}: a number beyond what a Stata long holds ({STATA_MIN_LONG} to {STATA_MAX_LONG})")
        if t == 65528 and np.any(x != np.floor(x)):
            raise ValueError(f"{c.name}: a number with a fraction in a whole-number (long) variable")
        if t == 65526 and np.any(np.abs(x) >= STATA_LIMIT_DOUBLE):
            raise ValueError(f"{c.name}: a number beyond what a Stata double holds (its magnitude below 2^1023, "
                             "about 8.988e307: above are Stata's missing codes)")


def _dta_records(columns: list[Column], types: list[tuple[int, int]], refs: dict, n: int) -> _Records:
    """The observations, a column at a time: text (fixed width, or a strL's reference), longs and
    doubles with Stata's missing values."""
    np = _numpy()

    def fill(record) -> None:
        for i, (c, (t, w)) in enumerate(zip(columns, types)):
            f = f"f{i}"
            if t == 32768:
                record[f] = refs[i]
            elif c.is_text:
                record[f] = _fixed(c.text, w, b"\0")
            elif t == 65528:
                x = c.number
                record[f] = np.where(np.isnan(x), STATA_MISSING_LONG, np.nan_to_num(x)).astype("<i4")
            else:
                x = c.number
                record[f] = np.where(np.isnan(x), np.uint64(STATA_MISSING_DOUBLE), x.astype("<f8").view("<u8"))
    dtype = np.dtype([(f"f{i}", f"S{w}" if c.is_text and t != 32768 else "<i4" if t == 65528 else "<u8")
                      for i, (c, (t, w)) in enumerate(zip(columns, types))])
    return _Records(dtype, n, fill)


def _value_label_table(c: Column, name: str) -> bytes:
    """A variable's value labels as the table ``name``."""
    items = sorted(c.value_labels.items())
    texts = [m.encode("utf-8") + b"\0" for _, m in items]
    offs, at = [], 0
    for t in texts:
        offs.append(at)
        at += len(t)
    body = (struct.pack("<II", len(items), at) + struct.pack(f"<{len(items)}I", *offs)
            + struct.pack(f"<{len(items)}i", *(v for v, _ in items)) + b"".join(texts))
    return b"<lbl>" + struct.pack("<I", len(body)) + _nul(name, 129) + b"\0\0\0" + body + b"</lbl>"


# --- SAS transport v5 ------------------------------------------------------------------------------

def _ibm(x):
    """IEEE doubles as 8-byte IBM hexadecimal floats (big-endian), exactly (53 bits fit in 56);
    missing (NaN) as SAS's ".", a 0x2E byte and seven zeros."""
    np = _numpy()
    x = np.asarray(x, dtype=np.float64)
    bits = x.view(np.uint64)
    missing = np.isnan(x)
    zero = (x == 0) | missing
    exp = ((bits >> np.uint64(52)) & np.uint64(0x7FF)).astype(np.int64) - 1023
    mant = (bits & np.uint64(0xFFFFFFFFFFFFF)) | np.uint64(1 << 52)
    shift = np.mod(exp, 4)
    ibm_exp = (exp - shift) // 4 + 65
    # IBM's range is 16^-65 to 16^63; below 16^-65 ReadStat writes 0, and from about 16^62 on it
    # writes infinity: such a value is refused (no trial value comes near either end)
    if np.any(~zero & ((ibm_exp < 0) | (ibm_exp > 126) | (((bits >> np.uint64(52)) & np.uint64(0x7FF)) == 0))):
        raise ValueError("a number is outside what SAS transport (IBM floating point) can hold")
    frac = mant << shift.astype(np.uint64)
    sign = (bits >> np.uint64(63)) << np.uint64(63)
    out = sign | (np.clip(ibm_exp, 0, 127).astype(np.uint64) << np.uint64(56)) | frac
    out = np.where(zero, np.uint64(0), out)
    out = np.where(missing, np.uint64(0x2E) << np.uint64(56), out)
    return out.astype(">u8")


def _blank(text: str, size: int) -> bytes:
    raw = text.encode("utf-8")[:size]
    return raw + b" " * (size - len(raw))


def _header(kind: str, tail: str = "0" * 30) -> bytes:
    return f"HEADER RECORD*******{kind:<8}HEADER RECORD!!!!!!!{tail}  ".encode("ascii")


def _pad(data: bytes) -> bytes:
    return data + b" " * (-len(data) % XPT_RECORD)


def _sas_format(fmt: str) -> tuple[str, int, int]:
    """'YYMMDD10.' -> ('YYMMDD', 10, 0); 'ARM.' -> ('ARM', 0, 0); '$CHAR5.' -> ('$CHAR', 5, 0)."""
    if not fmt:
        return "", 0, 0
    body = fmt.removesuffix(".")
    digits = len(body)
    while digits and (body[digits - 1].isdigit() or body[digits - 1] == "."):
        digits -= 1
    name, rest = body[:digits], body[digits:]
    width, _, decimals = rest.partition(".")
    return name, int(width or 0), int(decimals or 0)


def to_xpt(columns: list[Column], table_name: str, label: str, stamp: str) -> bytes:
    """A SAS transport v5 file of one data set (``stamp`` as SAS writes it: '07DEC26:00:20:23')."""
    np = _numpy()
    n = len(columns[0]) if columns else 0
    widths = [max(1, max((len(v) for v in c.text), default=0)) if c.is_text else 8 for c in columns]
    st = stamp.encode("ascii")
    out = [_header("LIBRARY"),
           b"SAS     SAS     SASLIB  6.06    bsd4.2  " + b" " * 24 + st,
           st + b" " * 64,
           _header("MEMBER", "0" * 17 + "160000000" + "0140"),
           _header("DSCRPTR"),
           b"SAS     " + _blank(table_name, 8) + b"SASDATA 6.06    bsd4.2  " + b" " * 24 + st,
           st + b" " * 16 + _blank(label, 40) + b" " * 8,
           _header("NAMESTR", f"000000{len(columns):04d}" + "0" * 20)]
    names, pos = [], 0
    for i, (c, w) in enumerate(zip(columns, widths), 1):
        fname, fwidth, fdec = _sas_format(c.sas_format)
        names.append(struct.pack(">hhhh", 2 if c.is_text else 1, 0, w, i) + _blank(c.name, 8) + _blank(c.label, 40)
                     + _blank(fname, 8) + struct.pack(">hhhh", fwidth, fdec, 0 if c.is_text else 1, 0)
                     + b" " * 8 + struct.pack(">hhi", 0, 0, pos) + b"\0" * 52)
        pos += w
    out.append(_pad(b"".join(names)))
    out.append(_header("OBS"))

    def fill(record) -> None:
        for i, (c, w) in enumerate(zip(columns, widths)):
            record[f"f{i}"] = _fixed(c.text, w, b" ") if c.is_text else _ibm(c.number).view("S8")
    dtype = np.dtype([(f"f{i}", f"S{w}") for i, w in enumerate(widths)])
    out.append(_Records(dtype, n, fill))
    out.append(b" " * (-(dtype.itemsize * n) % XPT_RECORD))  # the last record padded with blanks
    return _joined(out)
