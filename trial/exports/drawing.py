"""The CONSORT flow diagram in the standard layout (enrolment, allocation, follow-up, analysis;
the arms side by side; reasons in the boxes), laid out once and drawn as SVG or as a ReportLab
PDF."""
from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass
from html import escape

from trial.catalogue import N_, Label, Msg
from trial.randomize.confirmation import reportlab

W = 960
LINE = 13
PAD = 6
CHARS_PER_PX = 1 / 5.6  # about 5.6 px per character at 9.5 pt


@dataclass
class Box:
    x: float
    y: float
    w: float
    lines: list[str]

    @property
    def h(self) -> float:
        return len(self.lines) * LINE + 2 * PAD


def _wrap(items: list[str], w: float) -> list[str]:
    out = []
    for item in items:
        indent = "   " if item.startswith("• ") else ""
        out += textwrap.wrap(item, int(w * CHARS_PER_PX), subsequent_indent=indent) or [""]
    return out


def _reasons(box: dict, t) -> list[str]:
    return [t(Msg(N_("• %(reason)s (n=%(n)s)"), reason=Msg(reason), n=n)) for reason, n in box["reasons"].items()]


def _n(v, t) -> str:
    return t(Msg(N_("withheld while blinded"))) if v is None else f"n={v}"


def layout(c: dict, title: str, say=None) -> tuple[list[Box], list[tuple], list[tuple[str, float]], float]:
    """The boxes, arrows and phase labels. ``say`` puts a composed message (trial.catalogue.Msg)
    into the reader's language (the web page's diagram); without it, English (the bundle's files,
    the PDF)."""
    t = say or str
    boxes, arrows, phases = [], [], []
    left = 110
    rand = _enrolment(c, t, left, boxes, arrows, phases)
    height = _arms(c, t, left, rand, boxes, arrows, phases)
    return boxes, arrows, phases, height


def _enrolment(c: dict, t, left: float, boxes: list[Box], arrows: list[tuple], phases: list[tuple[str, float]]) -> Box:
    """The enrolment phase: assessed for eligibility, excluded (with the reasons) and randomized,
    with their arrows. Returns the box of the randomized."""
    y = 40
    enrol = Box(left + 200, y, 280, _wrap([t(Msg(N_("Assessed for eligibility (n=%(n)s)"), n=c["assessed_for_eligibility"]))],
                                          280))
    ex = c["excluded"]
    excl = Box(left + 560, y + enrol.h + 10, 280, _wrap([
        t(Msg(N_("Excluded (n=%(n)s)"), n=ex["total"])),
        t(Msg(N_("• Not meeting inclusion criteria (n=%(n)s)"), n=ex["not_meeting_inclusion_criteria"])),
        t(Msg(N_("• Declined to participate (n=%(n)s)"), n=ex["declined_to_participate"])),
        t(Msg(N_("• Other reasons (n=%(n)s)"), n=ex["other_reasons"]))], 280))
    phases.append((t(Msg(N_("Enrolment"))), y))
    mid_x = enrol.x + enrol.w / 2
    rand = Box(left + 200, excl.y + excl.h + 20, 280, [t(Msg(N_("Randomized (n=%(n)s)"), n=c["randomized"]))])
    boxes += [enrol, excl, rand]
    arrows.append((mid_x, enrol.y + enrol.h, mid_x, rand.y, True))
    arrows.append((mid_x, excl.y + excl.h / 2, excl.x, excl.y + excl.h / 2, True))
    return rand


def _arms(c: dict, t, left: float, rand: Box, boxes: list[Box], arrows: list[tuple],
          phases: list[tuple[str, float]]) -> float:
    """The arms side by side below the randomized, through allocation, follow-up and analysis,
    each phase's boxes as high as its highest, with their arrows. Returns the diagram's height."""
    arms = list(c["arms"].items())
    n = max(len(arms), 1)
    col_w = (W - left - 20 - (n - 1) * 16) / n
    rows = {"alloc": [], "follow": [], "analysis": []}
    for i, (key, a) in enumerate(arms):
        x = left + i * (col_w + 16)
        rows["alloc"].append(Box(x, 0, col_w, _wrap(_allocation_lines(key, a, t), col_w)))
        rows["follow"].append(Box(x, 0, col_w, _wrap(_follow_up_lines(a, t), col_w)))
        rows["analysis"].append(Box(x, 0, col_w, _wrap(_analysis_lines(a, t), col_w)))
    mid_x = rand.x + rand.w / 2
    y = rand.y + rand.h + 40
    bar_y = rand.y + rand.h + 20
    if arms:
        xs = [b.x + b.w / 2 for b in rows["alloc"]]
        arrows.append((mid_x, rand.y + rand.h, mid_x, bar_y, False))
        arrows.append((min(xs), bar_y, max(xs), bar_y, False))
    for phase, label in (("alloc", N_("Allocation")), ("follow", N_("Follow-up")), ("analysis", N_("Analysis"))):
        phases.append((t(Msg(label)), y))
        h = max((b.h for b in rows[phase]), default=0)
        for b in rows[phase]:
            b.y = y
            boxes.append(b)
        if phase == "alloc":
            for b in rows[phase]:
                arrows.append((b.x + b.w / 2, bar_y, b.x + b.w / 2, b.y, True))
        else:
            prev = rows[{"follow": "alloc", "analysis": "follow"}[phase]]
            for p, b in zip(prev, rows[phase]):
                arrows.append((b.x + b.w / 2, p.y + p.h, b.x + b.w / 2, b.y, True))
        y += h + 30
    return y + 10


def _allocation_lines(key: str, a: dict, t) -> list[str]:
    d = a["did_not_receive_allocated_intervention"]
    return ([t(Msg(N_("Allocated to %(arm)s (n=%(n)s)"), arm=Label("arm", key, a["label"]), n=a["allocated"])),
             t(Msg(N_("• Received allocated intervention (%(n)s)"), n=_n(a["received_allocated_intervention"], t))),
             t(Msg(N_("• Did not receive allocated intervention (%(n)s)"), n=_n(d["total"], t)))]
            + ["  " + r for r in _reasons(d, t)])


def _follow_up_lines(a: dict, t) -> list[str]:
    lost, disc = a["lost_to_follow_up"], a["discontinued_intervention"]
    return ([t(Msg(N_("Lost to follow-up (n=%(n)s)"), n=lost["total"]))] + _reasons(lost, t) +
            [t(Msg(N_("Discontinued intervention (%(n)s)"), n=_n(disc["total"], t)))] + _reasons(disc, t) +
            _withdrawal_lines(a, t))


def _withdrawal_lines(a: dict, t) -> list[str]:
    """The withdrawals of consent by scope (issue 28): from the intervention only, from the
    follow-up only, from both (a child counted once, in its widest withdrawal). None when there are
    none (the count from the intervention withheld from blinded readers, as its box's: no line
    when the others are nothing)."""
    w = a.get("withdrawals_of_consent") or {}
    if not any(w.values()):
        return []
    return [t(Msg(N_("Withdrew consent: from the intervention (%(intervention)s), from follow-up (%(follow_up)s), from "
                     "both (%(both)s)"), intervention=_n(w.get("discontinued_intervention"), t),
                  follow_up=_n(w.get("withdrew_from_follow_up"), t), both=_n(w.get("withdrew_completely"), t)))]


def _analysis_lines(a: dict, t) -> list[str]:
    exa = a["excluded_from_analysis"]
    return ([t(Msg(N_("Analysed (n=%(n)s)"), n=a["analysed"])), t(Msg(N_("• Excluded from analysis (n=%(n)s)"), n=exa["total"]))]
            + ["  " + r for r in _reasons(exa, t)])


def svg(c: dict, title: str, say=None) -> str:
    boxes, arrows, phases, height = layout(c, title, say)
    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height:.0f}" viewBox="0 0 {W} {height:.0f}" '
            f'font-family="Helvetica, Arial, sans-serif" font-size="9.5" role="img" aria-label="{escape(title)}">'),
           ('<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="7" refY="4" orient="auto">'
            '<path d="M0,0 L8,4 L0,8 z" fill="#333"/></marker></defs>'),
           f'<rect width="{W}" height="{height:.0f}" fill="#fff"/>',
           f'<text x="10" y="20" font-size="13" font-weight="bold">{escape(title)}</text>']
    for label, y in phases:
        out.append(f'<rect x="10" y="{y:.1f}" width="84" height="22" rx="4" fill="#cfe3f3"/>'
                   f'<text x="52" y="{y + 15:.1f}" text-anchor="middle" font-weight="bold">{escape(label)}</text>')
    for x1, y1, x2, y2, head in arrows:
        marker = ' marker-end="url(#arrow)"' if head else ""
        out.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="#333"{marker}/>')
    for b in boxes:
        out.append(f'<rect x="{b.x:.1f}" y="{b.y:.1f}" width="{b.w:.1f}" height="{b.h:.1f}" fill="#fff" stroke="#333"/>')
        for i, line in enumerate(b.lines):
            weight = ' font-weight="bold"' if i == 0 else ""
            out.append(f'<text x="{b.x + PAD:.1f}" y="{b.y + PAD + (i + 1) * LINE - 3:.1f}"{weight} xml:space="preserve">{escape(line)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def pdf(c: dict, title: str, extra_tables: list[tuple[str, dict]] | None = None) -> bytes:
    """The diagram on an A4 landscape page (scaled to fit), then any tables (e.g. Table 1)."""
    rl = reportlab()  # (ReportLab: loaded when the first PDF is drawn)
    A4, landscape, canvas = rl.pagesizes.A4, rl.pagesizes.landscape, rl.canvas

    boxes, arrows, phases, height = layout(c, title)
    buf = io.BytesIO()
    page_w, page_h = landscape(A4)
    cv = canvas.Canvas(buf, pagesize=(page_w, page_h), invariant=1, pageCompression=1)
    cv.setTitle(title)
    cv.setAuthor("TIME-A trial system")
    scale = min((page_w - 40) / W, (page_h - 40) / height)
    cv.translate(20, page_h - 20)
    cv.scale(scale, -scale)
    _draw(cv, title, boxes, arrows, phases)
    cv.showPage()
    for heading, table in extra_tables or []:
        _table_page(cv, heading, table, page_w, page_h)
    cv.save()
    return buf.getvalue()


def _draw(cv, title: str, boxes: list[Box], arrows: list[tuple], phases: list[tuple[str, float]]) -> None:
    """The diagram on a canvas whose y axis points down (as the layout's)."""
    _text(cv, 10, 20, title, bold=True, size=13)
    for label, y in phases:
        cv.setFillColorRGB(0.81, 0.89, 0.95)
        cv.roundRect(10, y, 84, 22, 4, stroke=0, fill=1)
        cv.setFillColorRGB(0, 0, 0)
        _text(cv, 18, y + 15, label, bold=True)
    cv.setLineWidth(0.8)
    for x1, y1, x2, y2, head in arrows:
        cv.line(x1, y1, x2, y2)
        if head:
            d = 1 if (y2 > y1 or x2 > x1) else -1
            if x1 == x2:
                cv.line(x2, y2, x2 - 3, y2 - 6 * d)
                cv.line(x2, y2, x2 + 3, y2 - 6 * d)
            else:
                cv.line(x2, y2, x2 - 6 * d, y2 - 3)
                cv.line(x2, y2, x2 - 6 * d, y2 + 3)
    for b in boxes:
        cv.rect(b.x, b.y, b.w, b.h, stroke=1, fill=0)
        for i, line in enumerate(b.lines):
            _text(cv, b.x + PAD, b.y + PAD + (i + 1) * LINE - 3, line, bold=i == 0)


def _text(cv, x, y, s, bold=False, size=9.5) -> None:
    """A line of text the right way up on the flipped canvas."""
    cv.saveState()
    cv.translate(x, y)
    cv.scale(1, -1)
    cv.setFont("Helvetica-Bold" if bold else "Helvetica", size)
    cv.drawString(0, 0, s)
    cv.restoreState()


def _table_page(cv, heading: str, table: dict, page_w: float, page_h: float) -> None:
    rl = reportlab()
    colors, Table, TableStyle = rl.colors, rl.platypus.Table, rl.platypus.TableStyle
    cv.setFont("Helvetica-Bold", 13)
    cv.drawString(30, page_h - 40, heading)
    data = [table["columns"]] + table["rows"]
    t = Table(data, repeatRows=1)
    t.setStyle(TableStyle([("FONT", (0, 0), (-1, -1), "Helvetica", 8.5), ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 8.5),
                           ("LINEBELOW", (0, 0), (-1, 0), 0.8, colors.black), ("ALIGN", (1, 0), (-1, -1), "RIGHT"),
                           ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.Color(0.95, 0.96, 0.97)])]))
    _, h = t.wrapOn(cv, page_w - 60, page_h - 80)
    t.drawOn(cv, 30, page_h - 60 - h)
    cv.showPage()


def table_pdf(title: str, table: dict, caption: str = "") -> bytes:
    """A table as a journal prints it (Table 1): A4 portrait, a rule above and below the header
    and at the end, no shading, sub-rows indented, numbers right-aligned; pages split as needed
    and the header repeated. Deterministic bytes (ReportLab's invariant mode)."""
    rl = reportlab()  # (ReportLab: loaded when the first PDF is drawn)
    colors, A4, ParagraphStyle = rl.colors, rl.pagesizes.A4, rl.styles.ParagraphStyle
    Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle = (
        rl.platypus.Paragraph, rl.platypus.SimpleDocTemplate, rl.platypus.Spacer, rl.platypus.Table, rl.platypus.TableStyle)

    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=A4, invariant=1, leftMargin=40, rightMargin=40, topMargin=50, bottomMargin=50,
                            title=title, author="TIME-A trial system")
    head = ParagraphStyle("head", fontName="Helvetica-Bold", fontSize=8.5, leading=10)
    cell = ParagraphStyle("cell", fontName="Helvetica", fontSize=8.5, leading=10)
    sub = ParagraphStyle("sub", parent=cell, leftIndent=10)
    note = ParagraphStyle("note", fontName="Helvetica", fontSize=7.5, leading=9)

    def esc(s: str) -> str:
        return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    data = [[Paragraph(esc(c), head) for c in table["columns"]]]
    for r in table["rows"]:
        first = r[0]
        data.append([Paragraph(esc(first.strip()), sub if first.startswith("  ") else cell)] + list(r[1:]))
    n = len(table["columns"])
    first_w = 190
    widths = [first_w] + [(A4[0] - 80 - first_w) / max(1, n - 1)] * (n - 1)
    t = Table(data, colWidths=widths, repeatRows=1)
    t.setStyle(TableStyle([("FONT", (1, 1), (-1, -1), "Helvetica", 8.5), ("ALIGN", (1, 1), (-1, -1), "RIGHT"),
                           ("VALIGN", (0, 0), (-1, -1), "TOP"),
                           ("LINEABOVE", (0, 0), (-1, 0), 0.9, colors.black),
                           ("LINEBELOW", (0, 0), (-1, 0), 0.6, colors.black),
                           ("LINEBELOW", (0, -1), (-1, -1), 0.9, colors.black),
                           ("TOPPADDING", (0, 0), (-1, -1), 1.5), ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5)]))
    story = [Paragraph(esc(title), ParagraphStyle("title", fontName="Helvetica-Bold", fontSize=12, leading=15)),
             Spacer(1, 8), t, Spacer(1, 6)]
    story += [Paragraph(esc(x), note) for x in ([caption] if caption else []) + table.get("notes", [])]
    doc.build(story)
    return buf.getvalue()
