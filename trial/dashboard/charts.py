"""Recruitment charts drawn here as SVG (no script, no CDN, no chart library) from numbers the
services worked out and words the caller gives in the reader's language: not one word of the
charts is written in this module. The charts are pooled over the arms (the numbers they get are).

The time axis runs left to right in every language; on a right-to-left page the texts are set
right to left (``direction="rtl"`` on the root, each anchor mirrored so that it lands where it
would on a left-to-right page)."""
from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass
from html import escape

BLUE, RED, GRID, FRAME = "#1f5f8b", "#a33", "#e3e7eb", "#c5ccd3"


def iso_month(d: dt.date) -> str:
    return d.strftime("%Y-%m")


@dataclass(frozen=True)
class Say:
    """How a chart speaks: its ``words`` (by key) and how it writes a month (its first day) and a
    number, in the reader's language; ``rtl`` for a language written right to left."""
    words: dict[str, str]
    month: Callable[[dt.date], str] = iso_month
    number: Callable[[int], str] = str
    rtl: bool = False

    def of(self, n: int, target: int) -> str:
        """"n of target" (the words' ``of``, with ``%(n)s`` and ``%(target)s``)."""
        return self.words["of"].replace("%(n)s", self.number(n)).replace("%(target)s", self.number(target))


def month_range(first: dt.date, last: dt.date) -> list[dt.date]:
    """The first day of every month from ``first``'s to ``last``'s."""
    span = (last.year - first.year) * 12 + last.month - first.month + 1
    return [dt.date(first.year + (first.month - 1 + i) // 12, (first.month - 1 + i) % 12 + 1, 1) for i in range(span)]


def running(per: dict[dt.date, int], months: list[dt.date]) -> list[int]:
    """The running total of ``per`` (a count by month) at each of ``months``."""
    out, n = [], 0
    for m in months:
        n += per.get(m, 0)
        out.append(n)
    return out


def text(x: float, y: float, words: str, say: Say, anchor: str = "start", **attrs) -> str:
    """A text whose ``anchor`` is where it sits on the page (start: its left edge at x) in either
    direction: on a right-to-left chart start and end swap, as SVG reads them in the writing's
    direction."""
    if say.rtl:
        anchor = {"start": "end", "end": "start"}.get(anchor, anchor)
    more = "".join(f' {k.replace("_", "-")}="{v}"' for k, v in attrs.items())
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{more}>{escape(words)}</text>'


def svg_open(width: int, height: int, title: str, say: Say, font_size: int = 11) -> list[str]:
    """The root element (an image named by ``title`` for assistive technology) and its title."""
    return [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'role="img" aria-label="{escape(title)}" direction="{"rtl" if say.rtl else "ltr"}" '
             f'font-family="sans-serif" font-size="{font_size}" class="chart">'),
            f'<title>{escape(title)}</title>']


def legend(x: int, y: int, say: Say) -> str:
    """The two lines' key: randomized (solid) and target (dashed)."""
    return (f'<line x1="{x}" y1="{y}" x2="{x + 20}" y2="{y}" stroke="{BLUE}" stroke-width="2"/>'
            + text(x + 24, y + 4, say.words["randomized"], say)
            + f'<line x1="{x + 170}" y1="{y}" x2="{x + 190}" y2="{y}" stroke="{RED}" stroke-dasharray="4 3"/>'
            + text(x + 194, y + 4, say.words["target"], say))


@dataclass(frozen=True)
class Plot:
    """The plotting area (x, y: its top left corner; w, h) and its scale: months along, counts up to ``top``."""
    x: float
    y: float
    w: float
    h: float
    months: int
    top: int

    def px(self, i: int) -> float:
        return self.x + self.w * i / max(self.months - 1, 1)

    def py(self, n: float) -> float:
        return self.y + self.h - self.h * n / self.top


def plot(p: Plot, counts: list[int], target: int, say: Say, dots: bool = False) -> list[str]:
    """The frame, the target (a dashed line; none for a target of 0) and the cumulative counts
    (a line, a dot for each month when ``dots``); no line without ``counts``."""
    out = [f'<rect x="{p.x:.1f}" y="{p.y:.1f}" width="{p.w:.1f}" height="{p.h:.1f}" fill="none" stroke="{FRAME}"/>']
    if target:
        out.append(f'<line x1="{p.x:.1f}" y1="{p.py(target):.1f}" x2="{p.x + p.w:.1f}" y2="{p.py(target):.1f}" '
                   f'stroke="{RED}" stroke-dasharray="4 3"/>')
    if counts:
        pts = " ".join(f"{p.px(i):.1f},{p.py(n):.1f}" for i, n in enumerate(counts))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{BLUE}" stroke-width="2"/>')
        if dots or len(counts) == 1:
            out += [f'<circle cx="{p.px(i):.1f}" cy="{p.py(n):.1f}" r="2.5" fill="{BLUE}"/>' for i, n in enumerate(counts)]
    return out


def nice_step(top: int, ticks: int = 4) -> int:
    """A round step (1, 2 or 5 times a power of ten) giving about ``ticks`` steps up to ``top``."""
    raw = max(top / ticks, 1)
    power = 10 ** math.floor(math.log10(raw))
    return next(k * power for k in (1, 2, 5, 10) if k * power >= raw)


def month_ticks(span: int, most: int = 6) -> list[int]:
    """The months to label on an axis of ``span`` months: the last (the current month) and every
    ``step``-th before it, at most ``most``."""
    step = max(1, math.ceil(span / most))
    return sorted(range(span - 1, -1, -step))


def bars_svg(sites: list[dict], say: Say) -> str:
    """Horizontal bars, one per site (code, target, enrolled, randomized): target (outline),
    enrolled and randomized (filled), with "randomized / target" after each and a key below."""
    bar_h, gap, left, width, top = 18, 10, 70, 460, 30
    scale = max([s["target"] for s in sites] + [s["enrolled"] for s in sites] + [1])
    height = top + len(sites) * (bar_h + gap) + 40
    out = svg_open(left + width + 80, height, say.words["title"], say, font_size=12)
    out.append(text(0, 16, say.words["title"], say, font_weight="bold"))
    for i, s in enumerate(sites):
        y = top + i * (bar_h + gap)
        w_t, w_e, w_r = (width * s[k] / scale for k in ("target", "enrolled", "randomized"))
        out += [text(0, y + 13, s["code"], say),
                f'<rect x="{left}" y="{y}" width="{w_t:.1f}" height="{bar_h}" fill="none" stroke="#5e6b78"/>',
                f'<rect x="{left}" y="{y + 3}" width="{w_e:.1f}" height="{bar_h - 6}" fill="#90caf9"/>',
                f'<rect x="{left}" y="{y + 3}" width="{w_r:.1f}" height="{bar_h - 6}" fill="{BLUE}"/>',
                text(left + max(w_t, w_e) + 6, y + 13, f'{say.number(s["randomized"])} / {say.number(s["target"])}', say)]
    y = top + len(sites) * (bar_h + gap) + 10
    for x, fill, stroke, key in ((left, BLUE, "none", "randomized"), (left + 130, "#90caf9", "none", "enrolled"),
                                 (left + 260, "none", "#5e6b78", "target")):
        out.append(f'<rect x="{x}" y="{y}" width="12" height="10" fill="{fill}" stroke="{stroke}"/>'
                   + text(x + 16, y + 9, say.words[key], say))
    out.append("</svg>")
    return "\n".join(out)


# the chart of one scope (the trial, or a site): its size and the plot's margins
CHART_W, CHART_H, LEFT, RIGHT, TOP, BOTTOM = 600, 290, 48, 44, 40, 44  # room for half a month's name on either side


def cumulative_svg(rec: dict, say: Say) -> str:
    """One scope's cumulative randomizations by month against its target, with labelled axes:
    ``rec`` as :func:`trial.dashboard.service.recruitment_by_month` gives it. A scope where
    nobody was randomized yet says so in words (the words' ``empty``)."""
    rows, target = rec["rows"], rec["target"]
    counts = [r["cumulative"] for r in rows]  # none when nobody was randomized: no line, but words
    months = [r["month"] for r in rows] or [rec["month"]]
    n = counts[-1] if counts else 0
    step = nice_step(max(target, n, 1))
    top = step * math.ceil(max(target, n, 1) / step)
    p = Plot(LEFT, TOP, CHART_W - LEFT - RIGHT, CHART_H - TOP - BOTTOM, len(months), top)
    out = svg_open(CHART_W, CHART_H, say.words["title"], say) + [legend(LEFT, 16, say)]
    for k in range(0, top + 1, step):
        out.append(f'<line x1="{p.x:.1f}" y1="{p.py(k):.1f}" x2="{p.x + p.w:.1f}" y2="{p.py(k):.1f}" stroke="{GRID}"/>'
                   + text(p.x - 6, p.py(k) + 4, say.number(k), say, "end"))
    out += plot(p, counts, target, say, dots=True)
    for i in month_ticks(len(months)):
        out.append(f'<line x1="{p.px(i):.1f}" y1="{p.y + p.h:.1f}" x2="{p.px(i):.1f}" y2="{p.y + p.h + 4:.1f}" stroke="{FRAME}"/>'
                   + text(p.px(i), p.y + p.h + 18, say.month(months[i]), say, "middle"))
    if target:
        out.append(text(p.x + p.w, p.py(target) - 5, say.of(n, target), say, "end", fill=RED))
    if not rows:
        out.append(text(p.x + p.w / 2, p.y + p.h / 2, say.words["empty"], say, "middle", font_size=14))
    out.append("</svg>")
    return "\n".join(out)


# the small panels of the recruitment-over-time chart: per row, width, height, left margin (the axis)
PANEL_COLS, PANEL_W, PANEL_H, PANEL_PAD = 3, 230, 130, 34


def panels_svg(panels: list[tuple[str, int, dict[dt.date, int]]], first: dt.date, last: dt.date, say: Say) -> str:
    """Small multiples: one panel per (name, target, randomized by month), cumulative from
    ``first``'s month to ``last``'s, three to a row, under a title and the legend."""
    rows = (len(panels) + PANEL_COLS - 1) // PANEL_COLS
    width, height = PANEL_COLS * (PANEL_W + 20) + 10, 40 + rows * (PANEL_H + 44)
    out = svg_open(width, height, say.words["title"], say)
    out += [text(10, 18, say.words["title"], say, font_size=14, font_weight="bold"), legend(10, 30, say)]
    months = month_range(first, last)
    for k, (name, target, per) in enumerate(panels):
        x0, y0 = 10 + (k % PANEL_COLS) * (PANEL_W + 20), 50 + (k // PANEL_COLS) * (PANEL_H + 44)
        out += _panel(name, target, running(per, months), x0, y0, months, say)
    out.append("</svg>")
    return "\n".join(out)


def _panel(name: str, target: int, counts: list[int], x0: int, y0: int, months: list[dt.date], say: Say) -> list[str]:
    """One small panel at (x0, y0): its name and "n of target", the plot, 0 and the top of the
    scale, the first and the last month."""
    p = Plot(x0 + PANEL_PAD, y0 + 14, PANEL_W - PANEL_PAD - 6, PANEL_H - 26, len(months), max(target, counts[-1], 1))
    out = ["<g>", text(x0, y0 + 8, name, say, font_weight="bold"),
           text(x0 + PANEL_W - 6, y0 + 8, say.of(counts[-1], target), say, "end"),
           text(p.x - 4, p.y + 4, say.number(p.top), say, "end"), text(p.x - 4, p.y + p.h, say.number(0), say, "end")]
    out += plot(p, counts, target, say)
    out += [text(p.x, y0 + PANEL_H + 2, say.month(months[0]), say),
            text(p.x + p.w, y0 + PANEL_H + 2, say.month(months[-1]), say, "end"), "</g>"]
    return out
