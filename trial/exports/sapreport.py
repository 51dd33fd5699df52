"""The report of the statistical analysis plan as the lock executed it (``analysis/report.pdf`` in
both bundles of a lock): A4, English, drawn with ReportLab from ``analysis/results.json``, the
protocol and the missingness table (no database, no Flask).

The pages:

1. the SAP: its version, the SHA-256 digest of the analysis code (the same in the blinded and the
   unblinded bundle of a lock, so that a reader sees the code was fixed before unblinding), the
   estimand (population, variable, summary measure, each intercurrent event with its strategy: the
   primary entry's ``estimand``, else the protocol's ``[analysis.estimand]``), the degrees of
   freedom, the multiplicity procedure and alpha;
2. a forest plot: one row per analysis (label, n, estimate [CI], p, p adjusted where given), the
   point and its confidence interval on an axis shared by the analyses of one outcome, with a zero
   line; the axis is labelled with the outcome and the direction ("favours <intervention>" on the
   side of benefit: trial.analysis.service.benefit_of, sap_settings' ``benefit``). The secondary outcomes
   are on scales of their own and the dose-response slope is per session attended, so each has a
   panel (an axis) of its own. A row without an estimate shows its note instead of a bar; the
   tipping point, whose estimate is a delta and not an effect, says it in words. A CI far wider
   than the others' (a weak instrument) is cut at the axis's end, with an arrow;
3. every entry with its method, software, SE, degrees of freedom and note;
4. the missing outcome data (by visit, arm and reason).

Every page has a running header (the trial's name, the lock and, blinded, "BLINDED: dummy
allocation") and "Page n of N". Protocol labels in Hebrew or Korean render: DejaVu Sans (Latin and
Hebrew) and a Korean font for text with Hangul, the fonts of the randomization confirmation
(trial.randomize.confirmation.fonts); Hebrew is laid out right to left line by line (:func:`shown`).
The bytes are deterministic (ReportLab's invariant mode).
"""
from __future__ import annotations

import functools
import io
import math
import re
import statistics
import textwrap
import unicodedata
from dataclasses import dataclass, replace
from xml.sax.saxutils import escape

from trial.analysis.service import benefit_of
from trial.randomize.confirmation import MIRROR, fonts, reportlab, visual

BLINDED_MARK = "BLINDED: dummy allocation"
TEXT_ONLY = ("tipping_point",)  # an estimate that is no effect (a delta): said in words, not drawn
MARGIN, TOP, BOTTOM = 40, 64, 46
GREY = (0.35, 0.35, 0.35)
MAX_LINES = 10  # a label or note longer than this is cut (a row must fit on a page)

DF_WORDS = {"wald": "Wald (normal distribution)", "satterthwaite": "Satterthwaite (as lmerTest)",
            "kenward_roger": "Kenward-Roger (as pbkrtest)"}
MULTIPLICITY_WORDS = {"hierarchy": "fixed hierarchy: the primary outcome first, then the secondary outcomes in the "
                                   "protocol's order, each tested at alpha until the first not significant",
                      "holm": "Holm's step-down procedure over the secondary outcomes planned (m = their number)"}
EVENT_WORDS = {"discontinued_intervention": "Discontinued intervention", "withdrawal": "Withdrawal",
               "not_received": "Intervention not received", "death": "Death"}
STRATEGY_WORDS = {"treatment_policy": "Treatment policy", "hypothetical": "Hypothetical",
                  "while_on_treatment": "While on treatment", "composite": "Composite"}


def report_pdf(results: dict, content: dict, missingness: dict, title: str) -> bytes:
    """The report as PDF bytes. ``results`` is analysis/results.json, ``content`` the protocol in
    force at the lock, ``missingness`` the missingness table ({columns, rows}) and ``title`` names
    the lock (e.g. "hard lock 3, 2026-12-08"); a blinded ``results`` (``blinded`` true) marks every
    page."""
    rl = reportlab()  # (ReportLab: loaded when the first PDF is drawn)
    p = rl.platypus
    st = _Styles()
    width = rl.pagesizes.A4[0] - 2 * MARGIN
    trial = (content.get("trial") or {}).get("name", "")
    buf = io.BytesIO()
    doc = p.SimpleDocTemplate(buf, pagesize=rl.pagesizes.A4, leftMargin=MARGIN, rightMargin=MARGIN, topMargin=TOP,
                              bottomMargin=BOTTOM, title=f"Statistical analysis report: {title}",
                              author="TIME-A trial system", subject=trial, invariant=1)
    story = (_sap_page(results, content, title, st, width) + [p.PageBreak()] + _forest(results, content, st)
             + [p.PageBreak()] + _entries(results, st, width) + [p.PageBreak()]
             + _missing(missingness, bool(results.get("blinded")), st, width))
    header = functools.partial(_decorate, st=st, trial=trial, lock=title, blinded=bool(results.get("blinded")))
    doc.build(story, canvasmaker=functools.partial(_numbered_canvas(), decorate=header))
    return buf.getvalue()


def failure_pdf(title: str, why: str) -> bytes:
    """A one-page PDF saying the report could not be made, and why (the bundle keeps its other files)."""
    rl = reportlab()  # (ReportLab: loaded when the first PDF is drawn)
    buf = io.BytesIO()
    cv = rl.canvas.Canvas(buf, pagesize=rl.pagesizes.A4, invariant=1)
    cv.setTitle(f"Statistical analysis report: {title}")
    top = rl.pagesizes.A4[1] - TOP
    cv.setFont("Helvetica-Bold", 13)
    cv.drawString(MARGIN, top, f"Statistical analysis report: {title}"[:90])
    cv.setFont("Helvetica", 10)
    text = cv.beginText(MARGIN, top - 28)
    for line in ["The report could not be made:", *textwrap.wrap(why, 95)[:40], "",
                 "analysis/results.json holds every analysis' numbers."]:
        text.textLine(line)
    cv.drawText(text)
    cv.showPage()
    cv.save()
    return buf.getvalue()


# --- fonts and text --------------------------------------------------------------------------------

KOREAN = re.compile("[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af\u4e00-\u9fff]")  # Hangul and CJK ideographs
RIGHT_TO_LEFT = re.compile("[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufefc]")  # Hebrew and Arabic letters


def _korean(text: str) -> bool:
    """Hangul (or CJK ideographs) in ``text``: drawn with the Korean font."""
    return KOREAN.search(text) is not None


def _strong(ch: str) -> str | None:
    """'R' for a right-to-left letter, 'L' for a left-to-right letter or a digit, None for a neutral."""
    kind = unicodedata.bidirectional(ch)
    return "R" if kind in ("R", "AL") else "L" if kind in ("L", "EN", "AN") else None


def _rtl(text: str) -> bool:
    return RIGHT_TO_LEFT.search(text) is not None


def shown(line: str) -> str:
    """A line in the order it is drawn from left to right. A line whose first letter is Hebrew is a
    right-to-left paragraph (trial.randomize.confirmation.visual); an English line keeps its order
    and only its runs of Hebrew are reversed in place (a neutral between two Hebrew letters belongs
    to them), as the Unicode bidirectional algorithm has it for one line without embeddings."""
    first = next((k for k in map(_strong, line) if k), "L")
    if first == "R":
        return visual(line)
    if not _rtl(line):
        return line
    kinds = [_strong(c) for c in line]
    resolved = [k or ("R" if next((x for x in reversed(kinds[:i]) if x), "L") == "R" ==
                      next((x for x in kinds[i + 1:] if x), "L") else "L") for i, k in enumerate(kinds)]
    out, i = [], 0
    while i < len(line):
        j = i
        while j < len(line) and resolved[j] == resolved[i]:
            j += 1
        out.append(line[i:j][::-1].translate(MIRROR) if resolved[i] == "R" else line[i:j])
        i = j
    return "".join(out)


class _Styles:
    """The report's fonts and paragraph styles; text drawn in the font its script needs."""

    def __init__(self):
        rl = reportlab()
        self.regular, self.bold, self.mono = fonts("en")
        PS = rl.styles.ParagraphStyle
        self.body = PS("body", fontName=self.regular, fontSize=9, leading=12, spaceAfter=3)
        self.small = PS("small", fontName=self.regular, fontSize=7.5, leading=9.3)
        self.small_bold = PS("small_bold", parent=self.small, fontName=self.bold)
        self.small_right = PS("small_right", parent=self.small, alignment=2)
        self.grey = PS("grey", parent=self.small, fontSize=6.8, leading=8.5, textColor=rl.colors.Color(*GREY))
        self.code = PS("code", fontName=self.mono, fontSize=7.5, leading=9.5)
        self.h1 = PS("h1", fontName=self.bold, fontSize=15, leading=19, spaceAfter=4)
        self.h2 = PS("h2", fontName=self.bold, fontSize=11.5, leading=15, spaceBefore=10, spaceAfter=4, keepWithNext=1)
        self.warn = PS("warn", parent=self.body, fontName=self.bold, textColor=rl.colors.Color(0.6, 0, 0),
                       borderColor=rl.colors.Color(0.6, 0, 0), borderWidth=0.8, borderPadding=5, spaceBefore=6,
                       spaceAfter=10)

    @functools.cached_property
    def k_regular(self) -> str:  # the Korean font: registered when a text needs it (0.6 s)
        return fonts("ko")[0]

    @functools.cached_property
    def k_bold(self) -> str:
        return fonts("ko")[1]

    def font(self, text: str, bold: bool = False) -> str:
        if _korean(text):
            return self.k_bold if bold else self.k_regular
        return self.bold if bold else self.regular

    def wrap(self, text: str, size: float, width: float, bold: bool = False) -> list[str]:
        """``text`` in lines no wider than ``width`` (logical order; at most MAX_LINES)."""
        lines = reportlab().utils.simpleSplit(str(text), self.font(str(text), bold), size, width) or [""]
        return lines if len(lines) <= MAX_LINES else lines[:MAX_LINES - 1] + [lines[MAX_LINES - 1] + " …"]

    def para(self, text, style=None, width: float | None = None):
        """A paragraph of plain ``text`` (escaped), in the font its script needs; right-to-left text
        is wrapped to ``width`` first and each line laid out (visual order)."""
        rl = reportlab()
        text = "" if text is None else str(text)
        style = style or self.body
        if _korean(text):
            style = replace_font(style, self.k_bold if style.fontName == self.bold else self.k_regular)
        if _rtl(text) and width:
            lines = rl.utils.simpleSplit(text, style.fontName, style.fontSize, width)
            return rl.platypus.Paragraph("<br/>".join(escape(shown(x)) for x in lines), style)
        return rl.platypus.Paragraph(escape(text), style)

    def draw(self, cv, x: float, y: float, text: str, size: float, bold: bool = False, align: str = "left") -> None:
        """One line on a canvas, left-, right-aligned or centred at ``x``."""
        cv.setFont(self.font(text, bold), size)
        s = shown(text)
        (cv.drawRightString if align == "right" else cv.drawCentredString if align == "centre" else cv.drawString)(x, y, s)


def replace_font(style, font: str):
    """A copy of a paragraph style in another font."""
    clone = style.clone(f"{style.name}-{font}")
    clone.fontName = font
    return clone


# --- numbers -----------------------------------------------------------------------------------------

def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def decimals(*xs) -> int:
    """Decimals for numbers of this size: 2 from 1 to 100, 1 above, 3 significant digits below 1 (at
    most 4 decimals)."""
    m = max((abs(x) for x in xs if _finite(x)), default=0.0)
    if m >= 100:
        return 1
    if m >= 1 or m == 0:
        return 2
    return min(4, 2 - math.floor(math.log10(m)))


def estimate_text(e: dict) -> str:
    """"estimate [ci_low, ci_high]" in the row's decimals ("–" without an estimate)."""
    est, lo, hi = e.get("estimate"), e.get("ci_low"), e.get("ci_high")
    if not _finite(est):
        return "–"
    d = decimals(est, lo, hi)
    ci = f" [{lo:.{d}f}, {hi:.{d}f}]" if _finite(lo) and _finite(hi) else ""
    return f"{est:.{d}f}{ci}"


def p_text(p) -> str:
    if not _finite(p):
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _n_text(n) -> str:
    return "" if n is None else str(n)


# --- page 1: the SAP -------------------------------------------------------------------------------

def _setting(results: dict, content: dict, key: str, default):
    a = content.get("analysis") or {}
    v = results.get(key)
    return v if v is not None else a.get(key) if a.get(key) is not None else default


def _sap_page(results: dict, content: dict, title: str, st: _Styles, width: float) -> list:
    blinded = bool(results.get("blinded"))
    out = [st.para("Statistical analysis: results", st.h1, width),
           st.para((content.get("trial") or {}).get("name", ""), st.body, width),
           st.para(f"{title}. {'BLINDED bundle' if blinded else 'Unblinded bundle'}.", st.body, width)]
    if blinded:
        out.append(st.para(
            "BLINDED: dummy allocation. The arms in this report are dummy codes drawn at random from a seed, "
            "independently of the real allocation: every analysis runs as it will after unblinding, but its "
            "results say nothing about the arms. Analyses that need the intervention as delivered are not run.",
            st.warn, width))
    out.append(st.para("The statistical analysis plan", st.h2))
    out.append(_pairs(_sap_rows(results, content, st), st, width))
    out.append(st.para(
        "The digest is SHA-256 over the analysis code the lock ran. The blinded and the unblinded bundle of a lock "
        "carry the same digest: the code that produced these results was fixed at the blinded lock, before "
        "unblinding.", st.small, width))
    out += _estimand(results, content, st, width)
    return out


def _sap_rows(results: dict, content: dict, st: _Styles) -> list[tuple[str, object]]:
    a = content.get("analysis") or {}
    alpha = _setting(results, content, "alpha", 0.05)
    df = _setting(results, content, "df_method", "wald")
    mult = _setting(results, content, "multiplicity", "holm")
    rows = [("SAP version", str(results.get("sap_version") or a.get("sap_version") or "not given")),
            ("SAP (SHA-256)", st.para(results.get("sap_sha256") or "not recorded", st.code)),
            ("Analysis code (SHA-256)", st.para(results.get("code_sha256") or "not recorded", st.code)),
            ("Code files", st.para(_code_files(results.get("code_files")), st.code)),
            ("Degrees of freedom", DF_WORDS.get(df, str(df))),
            ("Multiplicity", MULTIPLICITY_WORDS.get(mult, str(mult))),
            ("Alpha (two-sided)", f"{alpha:g}; confidence intervals {100 * (1 - alpha):g}%")]
    if a.get("sensitivity") is not None:
        label = {e.get("key"): e.get("label") for e in results.get("analyses") or []}  # (the entries' own words)
        rows.append(("Sensitivity analyses", "; ".join(label.get(x) or x.replace("_", " ")
                                                       for x in a["sensitivity"]) or "none"))
    if a.get("mi"):
        rows.append(("Multiple imputation", f"{a['mi'].get('imputations', 20)} imputations, seed {a['mi'].get('seed')}"))
    if a.get("tipping_point"):
        rows.append(("Tipping point deltas", ", ".join(f"{x:g}" for x in a["tipping_point"].get("deltas", []))))
    return rows


def _code_files(files) -> str:
    """The analysis code's files as results.json lists them (names, or names with digests)."""
    if not files:
        return "not recorded"
    if isinstance(files, dict):
        return "\n".join(f"{k}  {v}" for k, v in files.items()).replace("\n", "; ")
    return "; ".join(" ".join(str(v) for v in f.values()) if isinstance(f, dict) else str(f) for f in files)


def _pairs(rows: list[tuple[str, object]], st: _Styles, width: float):
    """A two-column table: a bold label and its value (text or a flowable)."""
    rl = reportlab()
    label_w = 130
    data = [[st.para(k, st.small_bold, label_w), v if not isinstance(v, str) else st.para(v, st.small, width - label_w)]
            for k, v in rows]
    t = rl.platypus.Table(data, colWidths=[label_w, width - label_w], hAlign="LEFT")
    t.setStyle(rl.platypus.TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (0, -1), 0),
                                       ("TOPPADDING", (0, 0), (-1, -1), 1.5), ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5)]))
    return t


def _estimand(results: dict, content: dict, st: _Styles, width: float) -> list:
    rl = reportlab()
    primary = next((e for e in results.get("analyses", []) if e.get("key") == "primary"), {})
    est = primary.get("estimand") if isinstance(primary.get("estimand"), dict) else None
    est = est or (content.get("analysis") or {}).get("estimand")
    out = [st.para("Estimand (ICH E9(R1)) of the primary outcome", st.h2)]
    if not est:
        return out + [st.para("The protocol states no estimand.", st.body, width)]
    out.append(_pairs([("Population", est.get("population", "")), ("Variable", est.get("variable", "")),
                       ("Summary measure", est.get("summary_measure", ""))], st, width))
    events = est.get("intercurrent_events") or []
    out.append(rl.platypus.Spacer(1, 6))
    out.append(st.para("Intercurrent events and their strategies (an event not listed: treatment policy)", st.small_bold))
    if events:
        rows = [[EVENT_WORDS.get(e.get("event"), str(e.get("event"))), STRATEGY_WORDS.get(e.get("strategy"), str(e.get("strategy"))),
                 e.get("rationale") or ""] for e in events]
        out.append(_table(["Intercurrent event", "Strategy", "Rationale"], rows, [120, 90, width - 210], st))
    else:
        out.append(st.para("None listed.", st.small))
    return out


def _table(header: list[str], rows: list[list], widths: list[float], st: _Styles, bold_rows=(), right=(),
           commands=(), size: float = 7.5):
    """A table as the report prints it: cells wrapped where they must be (plain text where it fits:
    much faster to lay out), ``right`` columns right-aligned, the header repeated on each page."""
    rl = reportlab()
    colors, TableStyle = rl.colors, rl.platypus.TableStyle
    data = [[_cell(h, st, w, bold=True, size=size) for h, w in zip(header, widths)]]
    for i, r in enumerate(rows):
        data.append([_cell(c, st, w, bold=i in bold_rows, right=j in right, size=size)
                     for j, (c, w) in enumerate(zip(r, widths))])
    t = rl.platypus.Table(data, colWidths=widths, repeatRows=1, hAlign="LEFT")
    lead = size * 1.24
    t.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("FONT", (0, 0), (-1, -1), st.regular, size, lead),
                           ("FONT", (0, 0), (-1, 0), st.bold, size, lead),
                           *[("FONT", (0, i + 1), (-1, i + 1), st.bold, size, lead) for i in bold_rows],
                           *[("ALIGN", (j, 0), (j, -1), "RIGHT") for j in right],
                           ("LEFTPADDING", (0, 0), (-1, -1), 3), ("RIGHTPADDING", (0, 0), (-1, -1), 3),
                           ("LINEABOVE", (0, 0), (-1, 0), 0.8, colors.black),
                           ("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.black),
                           ("LINEBELOW", (0, -1), (-1, -1), 0.8, colors.black),
                           ("TOPPADDING", (0, 0), (-1, -1), 1.5), ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5),
                           *commands]))
    return t


def _cell(value, st: _Styles, width: float, bold: bool = False, right: bool = False, size: float = 7.5):
    """A table cell: a flowable as it is, a text that fits on one line in the table's font as plain
    text, any other text as a paragraph (wrapped; Korean and Hebrew in their fonts and order)."""
    if not isinstance(value, (str, int, float, type(None))):
        return value
    text = "" if value is None else str(value)
    plain = "\n" not in text and not _rtl(text) and not _korean(text)
    if plain and reportlab().pdfmetrics.stringWidth(text, st.bold if bold else st.regular, size) <= width - 6:
        return text
    style = st.small_bold if bold else st.small_right if right else st.small
    if size != style.fontSize:
        style = style.clone(f"{style.name}-{size}", fontSize=size, leading=size * 1.24)
    return st.para(text, style, width - 6)


# --- page 2: the forest plot ---------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    label: str
    n: str
    est: str
    p: str
    p_adj: str
    point: float | None
    lo: float | None
    hi: float | None
    primary: bool
    words: str  # instead of a bar: the note (no estimate) or the tipping point in words


@dataclass(frozen=True)
class Panel:
    heading: str
    axis: str                 # the outcome and the comparison
    left: str                 # the direction words under the axis's negative side
    right: str
    rows: tuple[Row, ...]
    lo: float                 # the axis (common to the panel's rows, also when it is split over pages)
    hi: float
    ticks: tuple[float, ...]
    adjusted: bool            # a column of adjusted p values
    continued: bool = False


def _sides(results: dict, content: dict) -> tuple[str, str]:
    """(the intervention, the reference) as the reader knows them: the protocol's pooled arms and
    reference arm, or the dummy arms of a blinded bundle."""
    if results.get("blinded"):
        inter, ref = _dummy_sides(results, content)
        return results.get("intervention_label") or inter, results.get("reference_label") or ref
    a = content.get("analysis") or {}
    labels = {x["key"]: x.get("label", x["key"]) for x in content.get("arms", [])}
    ref = a.get("reference_arm")
    pooled = a.get("pooled_arms") or [k for k in labels if k != ref]
    inter = labels.get(pooled[0], pooled[0]) if len(pooled) == 1 else a.get("pooled_label") or "the pooled arms"
    return inter, labels.get(ref, ref or "the reference arm")


def _dummy_sides(results: dict, content: dict) -> tuple[str, str]:
    """The dummy arms' names in a blinded bundle: its codes are A, B, C ... (one per arm,
    trial.exports.dataset.dummy_allocation) and results.json has an ``arm:<code>`` entry for each arm
    but the reference, so the code without one is the reference; the others are the pooled arms
    when the protocol pools every arm but the reference. Otherwise words without codes."""
    a = content.get("analysis") or {}
    arms = [x["key"] for x in content.get("arms", [])]
    codes = [chr(ord("A") + i) for i in range(len(arms))]
    others = sorted(e["key"][4:] for e in results.get("analyses", []) if str(e.get("key", "")).startswith("arm:"))
    ref = [c for c in codes if c not in others]
    pools_all = set(a.get("pooled_arms") or []) in (set(), set(arms) - {a.get("reference_arm")})
    if len(ref) != 1 or not others or not set(others) <= set(codes) or not pools_all:
        return "the dummy intervention arms", "the dummy reference arm"
    inter = f"Dummy arm {others[0]}" if len(others) == 1 else f"Dummy arms {' + '.join(others)}"
    return inter, f"Dummy arm {ref[0]}"


def outcome_label(content: dict, instrument: str, field: str) -> str:
    for ins in content.get("instruments", []):
        if ins["key"] == instrument:
            f = next((x for x in ins.get("fields", []) if x["key"] == field), None)
            return f"{ins.get('label', instrument)}: {f['label'] if f else field}"
    return f"{instrument}.{field}"


def _groups(results: dict, content: dict) -> list[tuple[str, str, str, str, list[dict]]]:
    """The panels' (heading, axis label, left words, right words, entries): the primary outcome's
    analyses, each secondary outcome, the dose-response slope (the order of results.json within)."""
    inter, ref = _sides(results, content)
    po = content.get("primary_outcome") or {}
    primary = outcome_label(content, po.get("instrument", ""), po.get("field", "")) if po else "the primary outcome"
    lower = benefit_of(content) == "lower"  # (sap_settings' benefit: one rule for every analysis)
    good, bad = f"favours {inter}", f"favours {ref}"
    sides = (f"← {good}", f"{bad} →") if lower else (f"← {bad}", f"{good} →")
    groups = {"primary": [f"Primary outcome: {primary}", f"{primary}: difference, arm minus {ref}", *sides, []]}
    for e in results.get("analyses", []):
        key = e.get("key", "")
        if key.startswith("secondary:"):
            ins, _, fld = key[len("secondary:"):].partition(".")
            label = outcome_label(content, ins, fld)
            groups.setdefault(key, [f"Secondary outcome: {label}", f"{label}: difference, arm minus {ref}",
                                    f"← lower with {inter}", f"higher with {inter} →", []])[4].append(e)
        elif key == "dose_response":
            dose_sides = ("← favours more sessions", "favours fewer sessions →") if lower else \
                ("← favours fewer sessions", "favours more sessions →")
            per = (e.get("details") or {}).get("per_sessions") or 1
            unit = "session" if per == 1 else f"{per:g} sessions"
            groups.setdefault(key, [f"Dose-response: {primary}", f"{primary}: difference per {unit} attended", *dose_sides,
                                    []])[4].append(e)
        else:
            groups["primary"][4].append(e)
    return [tuple(g) for g in groups.values() if g[4]]


def _row(e: dict) -> Row:
    key = e.get("key", "")
    est, lo, hi = (e.get(k) if _finite(e.get(k)) else None for k in ("estimate", "ci_low", "ci_high"))
    words = ""
    if key in TEXT_ONLY:
        words = (f"The conclusion is overturned at delta = {est:g}." if est is not None else
                 "" if e.get("note") else "No delta in the range overturns the conclusion.")
        words = " ".join(x for x in (words, e.get("note")) if x)
        est = lo = hi = None
    elif est is None:
        words = e.get("note") or "Not estimated."
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    return Row(e.get("label") or key, _n_text(e.get("n")), estimate_text(e), p_text(e.get("p_value")),
               p_text(e.get("p_adjusted")), est, lo, hi, key == "primary", words)


def _ticks(lo: float, hi: float) -> tuple[float, float, tuple[float, ...]]:
    """Round axis ends around [lo, hi] and 4 to 7 ticks between them."""
    raw = (hi - lo) / 5
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * 0.999)
    lo, hi = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    k = round((hi - lo) / step)
    return lo, hi, tuple(round(lo + i * step, 12) for i in range(k + 1))


def axis(rows: list[Row]) -> tuple[float, float, tuple[float, ...]]:
    """The panel's axis: every estimate and CI with zero, a margin on both sides; a CI reaching
    beyond the largest estimate by more than three times the median half-width is cut there."""
    points = [r.point for r in rows if r.point is not None]
    if not points:
        return _ticks(-1.0, 1.0)
    half = [(r.hi - r.lo) / 2 for r in rows if r.point is not None and r.lo is not None and r.hi is not None]
    limit = max(abs(x) for x in points) + 3 * (statistics.median(half) if half else 0)
    values = points + [x for r in rows if r.point is not None for x in (r.lo, r.hi) if x is not None] + [0.0]
    lo, hi = max(min(values), -limit), min(max(values), limit)
    if hi - lo < 1e-12:
        lo, hi = lo - 1, hi + 1
    span = hi - lo
    return _ticks(min(lo - 0.06 * span, -0.12 * span), max(hi + 0.06 * span, 0.12 * span))


def panels(results: dict, content: dict) -> list[Panel]:
    out = []
    for heading, label, left, right, entries in _groups(results, content):
        rows = [_row(e) for e in entries]
        lo, hi, ticks = axis(rows)
        out.append(Panel(heading, label, left, right, tuple(rows), lo, hi, ticks,
                         any(_finite(e.get("p_adjusted")) for e in entries)))
    return out


def _forest(results: dict, content: dict, st: _Styles) -> list:
    out = [st.para("Forest plot of the analyses", st.h2)]
    intro = ("Each row: the analysis, the number of children it used, the estimate (arm minus reference; "
             f"{100 * (1 - _setting(results, content, 'alpha', 0.05)):g}% CI) as a point and a bar, the p value and, for "
             "the secondary outcomes, the p value adjusted for multiplicity. The primary analysis is in bold with a "
             "diamond. A row without an estimate gives the reason instead of a bar.")
    out.append(st.para(intro, st.small))
    forest = _forest_class()
    chosen = panels(results, content)
    if not chosen:
        return out + [st.para("No analyses in this lock.", st.body)]
    rl = reportlab()
    for p in chosen:
        out += [rl.platypus.Spacer(1, 6), forest(p, st)]
    return out


class Geometry:
    """Where a panel's columns, rows and axis are at a width (the forest's flowable draws it)."""
    SIZE, LEAD, PAD = 7.5, 9.0, 3.0

    def __init__(self, panel: Panel, st: _Styles, width: float):
        self.panel, self.st, self.width = panel, st, width
        sw = reportlab().pdfmetrics.stringWidth
        num = [r.est for r in panel.rows] + ["Estimate [95% CI]"]
        self.w_est = max(sw(s, st.bold, self.SIZE) for s in num) + 6
        self.w_p = max(sw("<0.000", st.bold, self.SIZE), sw("p adj.", st.bold, self.SIZE)) + 8
        self.w_n = max([sw(r.n, st.bold, self.SIZE) for r in panel.rows] + [sw("n", st.bold, self.SIZE)]) + 8
        self.w_label = max(110.0, 0.27 * width)
        self.right_p_adj = width
        self.right_p = width - (self.w_p if panel.adjusted else 0)
        self.right_est = self.right_p - self.w_p
        self.right_n = self.w_label + self.w_n
        self.x0, self.x1 = self.right_n + 8, self.right_est - self.w_est - 6
        self.head = 14 + self.LEAD + 2 * self.PAD

    def x(self, v: float) -> float:
        p = self.panel
        return self.x0 + (min(max(v, p.lo), p.hi) - p.lo) / (p.hi - p.lo) * (self.x1 - self.x0)

    def label_lines(self, r: Row) -> list[str]:
        return self.st.wrap(r.label, self.SIZE, self.w_label - 4, bold=r.primary)

    def word_lines(self, r: Row) -> list[str]:
        return self.st.wrap(r.words, self.SIZE, self.width - self.x0) if r.words else []

    def row_height(self, r: Row) -> float:
        return max(len(self.label_lines(r)), len(self.word_lines(r)), 1) * self.LEAD + 2 * self.PAD

    def sides(self) -> tuple[list[str], list[str]]:
        zero = self.x(0.0)
        return (self.st.wrap(self.panel.left, 7, zero - 6), self.st.wrap(self.panel.right, 7, self.width - zero - 6))

    def axis_lines(self) -> list[str]:
        """The axis's label, centred under the plot (a little wider than it)."""
        half = min((self.x0 + self.x1) / 2, self.width - (self.x0 + self.x1) / 2)
        return self.st.wrap(self.panel.axis, 7.5, min(2 * half, self.x1 - self.x0 + 120), bold=True)

    def plotted(self) -> bool:
        return any(r.point is not None for r in self.panel.rows)

    def foot(self) -> float:
        """The height below the rows: the axis, or a little space when no row has a bar."""
        if not self.plotted():
            return 6
        left, right = self.sides()
        return 4 + 11 + max(len(left), len(right)) * 8.5 + len(self.axis_lines()) * 9 + 4

    def height(self, rows) -> float:
        return self.head + sum(self.row_height(r) for r in rows) + self.foot()

    def fitting(self, rows, available: float) -> int:
        """How many of ``rows`` fit in ``available`` points with the head and the axis."""
        used, k = self.head + self.foot(), 0
        for r in rows:
            used += self.row_height(r)
            if used > available:
                break
            k += 1
        return k


@functools.cache
def _forest_class():
    """The flowable of a forest panel (a class made when the first report is drawn, as ReportLab is
    loaded then): it splits between rows, each part with the panel's heading, columns and axis."""
    Flowable = reportlab().platypus.Flowable

    class Forest(Flowable):
        def __init__(self, panel: Panel, st: _Styles):
            super().__init__()
            self.panel, self.st, self.geo = panel, st, None

        def wrap(self, aw, ah):
            self.geo = Geometry(self.panel, self.st, aw)
            self.width, self.height = aw, self.geo.height(self.panel.rows)
            return self.width, self.height

        def split(self, aw, ah):
            k = Geometry(self.panel, self.st, aw).fitting(self.panel.rows, ah)
            if k >= len(self.panel.rows) or k == 0:
                return [self] if k else []
            first = replace(self.panel, rows=self.panel.rows[:k])
            rest = replace(self.panel, rows=self.panel.rows[k:], continued=True)
            return [Forest(first, self.st), Forest(rest, self.st)]

        def draw(self):
            draw_panel(self.canv, self.geo, self.height)

    return Forest


def draw_panel(cv, g: Geometry, height: float) -> None:
    """A panel on the flowable's canvas (origin at its bottom left): the heading and the column
    heads, the rows, the zero line, the axis with its ticks, direction words and label."""
    p, st = g.panel, g.st
    y = height - 11
    st.draw(cv, 0, y, p.heading + (" (continued)" if p.continued else ""), 9, bold=True)
    y -= g.LEAD + g.PAD + 3
    for x, text, align in ((0, "Analysis", "left"), (g.right_n, "n", "right"),
                           ((g.x0 + g.x1) / 2, "Estimate and CI", "centre"), (g.right_est, "Estimate [95% CI]", "right"),
                           (g.right_p, "p", "right")) + (((g.right_p_adj, "p adj.", "right"),) if p.adjusted else ()):
        st.draw(cv, x, y, text, g.SIZE, bold=True, align=align)
    y -= g.PAD + 1
    cv.setLineWidth(0.5)
    cv.line(0, y, g.width, y)
    for r in p.rows:
        y = _draw_row(cv, g, r, y)
    if g.plotted():
        _draw_axis(cv, g, y)


def _draw_row(cv, g: Geometry, r: Row, top: float) -> float:
    """A row below ``top``; returns its bottom."""
    st, h = g.st, g.row_height(r)
    bottom = top - h
    if r.primary:
        cv.setFillColorRGB(0.92, 0.94, 0.97)
        cv.rect(0, bottom, g.width, h, stroke=0, fill=1)
        cv.setFillColorRGB(0, 0, 0)
    if not r.words:  # the zero line (a row of words is written across it)
        cv.setStrokeColorRGB(*GREY)
        cv.setLineWidth(0.5)
        cv.line(g.x(0.0), top, g.x(0.0), bottom)
        cv.setStrokeColorRGB(0, 0, 0)
    base = top - g.PAD - g.SIZE
    for i, line in enumerate(g.label_lines(r)):
        st.draw(cv, 0, base - i * g.LEAD, line, g.SIZE, bold=r.primary)
    st.draw(cv, g.right_n, base, r.n, g.SIZE, bold=r.primary, align="right")
    if r.words:
        cv.setFillColorRGB(*GREY)
        for i, line in enumerate(g.word_lines(r)):
            st.draw(cv, g.x0, base - i * g.LEAD, line, g.SIZE)
        cv.setFillColorRGB(0, 0, 0)
        return bottom
    st.draw(cv, g.right_est, base, r.est, g.SIZE, bold=r.primary, align="right")
    st.draw(cv, g.right_p, base, r.p, g.SIZE, bold=r.primary, align="right")
    if g.panel.adjusted:
        st.draw(cv, g.right_p_adj, base, r.p_adj, g.SIZE, bold=r.primary, align="right")
    _draw_bar(cv, g, r, top - g.PAD - g.SIZE / 2 + 1.5)
    return bottom


def _draw_bar(cv, g: Geometry, r: Row, y: float) -> None:
    """The CI as a line (an arrow where the axis cuts it) and the estimate as a square (the primary:
    a diamond)."""
    p = g.panel
    cv.setLineWidth(1.1 if r.primary else 0.8)
    if r.lo is not None and r.hi is not None:
        a, b = g.x(r.lo), g.x(r.hi)
        cv.line(a, y, b, y)
        for v, end, d in ((r.lo, a, 1), (r.hi, b, -1)):
            if p.lo < v < p.hi:
                cv.line(end, y - 2, end, y + 2)
            else:
                cv.line(end, y, end + 3.5 * d, y + 2)
                cv.line(end, y, end + 3.5 * d, y - 2)
    x = g.x(r.point)
    if r.primary:
        path = cv.beginPath()
        path.moveTo(x - 4.5, y)
        path.lineTo(x, y + 4.5)
        path.lineTo(x + 4.5, y)
        path.lineTo(x, y - 4.5)
        path.close()
        cv.drawPath(path, stroke=0, fill=1)
    else:
        cv.rect(x - 2.3, y - 2.3, 4.6, 4.6, stroke=0, fill=1)


def _draw_axis(cv, g: Geometry, bottom: float) -> None:
    """The axis line below the rows with its ticks, the direction words either side of zero and the
    axis's label."""
    p, st = g.panel, g.st
    zero = g.x(0.0)
    cv.setLineWidth(0.5)
    cv.line(zero, bottom, zero, bottom - 4)
    y = bottom - 4
    cv.line(g.x0, y, g.x1, y)
    d = min(4, max(len(f"{t:.10g}".partition(".")[2]) for t in p.ticks))
    for t in p.ticks:
        cv.line(g.x(t), y, g.x(t), y - 3)
        st.draw(cv, g.x(t), y - 10, f"{t:.{d}f}", 6.5, align="centre")
    y -= 11
    left, right = g.sides()
    for i, line in enumerate(left):
        st.draw(cv, zero - 4, y - 8 - i * 8.5, line, 7, align="right")
    for i, line in enumerate(right):
        st.draw(cv, zero + 4, y - 8 - i * 8.5, line, 7)
    y -= max(len(left), len(right)) * 8.5
    for i, line in enumerate(g.axis_lines()):
        st.draw(cv, (g.x0 + g.x1) / 2, y - 9 - i * 9, line, 7.5, bold=True, align="centre")


# --- page 3: every entry -------------------------------------------------------------------------

def _entries(results: dict, st: _Styles, width: float) -> list:
    """Each entry in two rows: its label (and key), n, the estimate (SE, df) and p (adjusted p); then,
    across the table, its method, software and note."""
    out = [st.para("Every analysis: method, software and notes", st.h1)]
    entries = results.get("analyses", [])
    if not entries:
        return out + [st.para("No analyses in this lock.", st.body)]
    widths = [w * width / 515 for w in (215, 40, 160, 100)]
    rows, bold, commands = [], [], []
    for e in entries:
        i = len(rows)
        if e.get("key") == "primary":
            bold.append(i)
        rows += [_entry_cells(e, st, widths, i in bold), [_about(e, st, width)] + [""] * 3]
        commands += [("SPAN", (0, i + 2), (-1, i + 2)), ("NOSPLIT", (0, i + 1), (-1, i + 2)),
                     ("LINEBELOW", (0, i + 2), (-1, i + 2), 0.25, reportlab().colors.Color(0.75, 0.75, 0.75)),
                     ("BOTTOMPADDING", (0, i + 2), (-1, i + 2), 4)]
    return out + [_table(["Analysis", "n", "Estimate [95% CI]", "p"], rows, widths, st, bold_rows=bold,
                         right=(1,), commands=commands)]


def _entry_cells(e: dict, st: _Styles, widths: list[float], primary: bool) -> list:
    """An entry's numbers: its label (and key), n, the estimate (with SE and df), p (and adjusted p)."""
    style = st.small_bold if primary else st.small
    extra = "; ".join(x for x in (f"SE {e['se']:.{decimals(e['se'])}f}" if _finite(e.get("se")) else "",
                                  f"df {e['df']:.1f}" if _finite(e.get("df")) else "") if x)
    adjusted = f"adjusted {p_text(e['p_adjusted'])}" if _finite(e.get("p_adjusted")) else ""

    def cell(first, second, w):
        return [st.para(first, style, w - 6)] + ([st.para(second, st.grey, w - 6)] if second else [])
    return [cell(e.get("label") or e.get("key"), e.get("key"), widths[0]), _n_text(e.get("n")),
            cell(estimate_text(e), extra, widths[2]), cell(p_text(e.get("p_value")), adjusted, widths[3])]


def _about(e: dict, st: _Styles, width: float) -> list:
    """An entry's method, software and note, as paragraphs across the table."""
    parts = [("Method", e.get("method")), ("Software", e.get("software")), ("Note", e.get("note"))]
    return [st.para(f"{k}: {v}", st.grey, width - 6) for k, v in parts if v]


# --- page 4: missing data ------------------------------------------------------------------------

def _missing(m: dict, blinded: bool, st: _Styles, width: float) -> list:
    """The missingness table as given; a column with a label column beside it (``x`` and
    ``x_label``) is shown by its label."""
    out = [st.para("Missing outcome data by visit, arm and reason", st.h1)]
    if blinded:
        out.append(st.para("The arms are the dummy allocation's codes.", st.small))
    cols, rows = list((m or {}).get("columns") or []), list((m or {}).get("rows") or [])
    if not cols:
        return out + [st.para("No missingness table in this lock.", st.body)]
    if not rows:
        out.append(st.para("No outcome data are missing.", st.body))
    keep = [j for j, c in enumerate(cols) if f"{c}_label" not in cols]
    names = [str(cols[j]).removesuffix("_label") for j in keep]
    shown_rows = [[r[j] for j in keep] for r in rows]
    numeric = [j for j in range(len(keep)) if rows and all(v is None or _finite(v) for v in (r[j] for r in shown_rows))]
    header = [n.replace("_", " ") for n in names]
    cells = [["" if v is None else v for v in r] for r in shown_rows]
    for size in (7.5, 7.0, 6.5):  # the smallest font only when a larger one would wrap
        widths, fits = _widths(header, cells, st, width, numeric, size)
        if fits:
            break
    return out + [_table(header, cells, widths, st, right=tuple(numeric), size=size)]


def _widths(header: list[str], rows: list[list], st: _Styles, width: float, numeric: list[int],
            size: float = 7.5) -> tuple[list[float], bool]:
    """Columns as wide as their widest text, the table as wide as the page: spare width shared by the
    text columns; too little, and the widest text columns are cut down to a common width (only their
    longest cells wrap). Numbers never wrap. Returns the widths and whether every cell fits them."""
    sw = reportlab().pdfmetrics.stringWidth
    natural = [max([sw(h, st.bold, size)] + [sw(str(r[j]), st.regular, size) for r in rows]) + 7
               for j, h in enumerate(header)]
    text = [j for j in range(len(header)) if j not in numeric]
    spare = width - sum(natural)
    if not text or sum(natural[j] for j in numeric) >= width:
        return [width * w / sum(natural) for w in natural], False
    if spare >= 0:
        share = sum(natural[j] for j in text)
        return [w + (spare * w / share if j in text else 0) for j, w in enumerate(natural)], True
    lo, hi = 0.0, max(natural[j] for j in text)
    for _ in range(40):  # the common width c at which the text columns, each min(natural, c), fit
        c = (lo + hi) / 2
        lo, hi = (c, hi) if sum(min(natural[j], c) if j in text else natural[j] for j in range(len(natural))) <= width \
            else (lo, c)
    return [min(w, lo) if j in text else w for j, w in enumerate(natural)], False


# --- the running header and page numbers -------------------------------------------------------------

def _decorate(cv, page: int, total: int, st: _Styles, trial: str, lock: str, blinded: bool) -> None:
    """Every page's header (the trial, the lock, BLINDED) and its number."""
    w, h = reportlab().pagesizes.A4
    cv.saveState()
    cv.setFillColorRGB(*GREY)
    lock_w = reportlab().pdfmetrics.stringWidth(lock, st.font(lock), 7.5)
    name = st.wrap(trial, 7.5, w - 2 * MARGIN - lock_w - 20)
    st.draw(cv, MARGIN, h - 30, name[0] + (" …" if len(name) > 1 else ""), 7.5)
    st.draw(cv, w - MARGIN, h - 30, lock, 7.5, align="right")
    if blinded:
        cv.setFillColorRGB(0.6, 0, 0)
        st.draw(cv, MARGIN, h - 42, BLINDED_MARK, 9, bold=True)
        st.draw(cv, w - MARGIN, h - 42, "the arms are dummy codes", 7.5, align="right")
    cv.setStrokeColorRGB(*GREY)
    cv.setLineWidth(0.5)
    cv.line(MARGIN, h - 48, w - MARGIN, h - 48)
    cv.setFillColorRGB(*GREY)
    st.draw(cv, MARGIN, 26, "Statistical analysis report", 7.5)
    st.draw(cv, w - MARGIN, 26, f"Page {page} of {total}", 7.5, align="right")
    cv.restoreState()


@functools.cache
def _numbered_canvas():
    """A canvas that holds its pages until the document ends, then draws each one's header and
    "Page n of N" (a class made when the first report is drawn, as ReportLab is loaded then)."""
    Canvas = reportlab().canvas.Canvas

    class Numbered(Canvas):
        def __init__(self, *args, decorate=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.sap_decorate, self.sap_pages = decorate, []

        def showPage(self):
            self.sap_pages.append(dict(self.__dict__))
            self._startPage()

        def save(self):
            total = len(self.sap_pages)
            for state in self.sap_pages:
                self.__dict__.update(state)
                self.sap_decorate(self, self.getPageNumber(), total)
                super().showPage()
            super().save()

    return Numbered
