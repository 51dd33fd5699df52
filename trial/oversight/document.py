"""The close-out documents' PDF: a list of items (headings, label/value rows, paragraphs) drawn on
A4 pages in the reader's language, with a running header (a title, the study id or site, the print
time in the site's time zone), "page X of Y" on every page and the content's digest on the last.

The fonts and the right-to-left layout are the randomization confirmation's
(``trial.randomize.confirmation``: DejaVu Sans for Latin and Hebrew, a Korean TrueType font for
Korean, embedded). The digest is SHA-256 over the items as canonical JSON (:func:`digest`): the
same content gives the same digest whatever the print time, and the digest can be recomputed from
the data the document was made from.
"""
from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import io
import json
from dataclasses import dataclass, field

from trial.catalogue import N_, RTL_LANGUAGES, translator
from trial.randomize.confirmation import fonts, reportlab, visual

H1, H2, H3, KV, P, SMALL = "h1", "h2", "h3", "kv", "p", "small"


@dataclass
class Document:
    """What a document says, in its reader's language: ``items`` are (kind, text) or
    (KV, label, value)."""
    title: str
    subject: str  # the running header's subject (a study id, a site)
    printed: str  # the print time as shown (the site's time zone)
    language: str
    items: list = field(default_factory=list)
    created: dt.datetime | None = None  # when it was made (UTC): the PDF's creation date, not in the digest
    about: str = ""  # the PDF's subject (the trial's name)

    def h1(self, text: str) -> None:
        self.items.append((H1, text))

    def h2(self, text: str) -> None:
        self.items.append((H2, text))

    def h3(self, text: str) -> None:
        self.items.append((H3, text))

    def kv(self, label: str, value) -> None:
        self.items.append((KV, label, "" if value is None else str(value)))

    def p(self, text: str) -> None:
        self.items.append((P, text))

    def small(self, text: str) -> None:
        self.items.append((SMALL, text))

    @property
    def digest(self) -> str:
        return digest(self.items)


def digest(items) -> str:
    """SHA-256 (hex) of the items as canonical JSON (UTF-8, no spaces)."""
    return hashlib.sha256(json.dumps(items, ensure_ascii=False, separators=(",", ":")).encode("utf-8")).hexdigest()


STYLE = {H1: ("bold", 14, 20, 6), H2: ("bold", 11.5, 16, 6), H3: ("bold", 10, 14, 3), P: ("regular", 9, 12, 2),
         SMALL: ("regular", 8, 10.5, 1)}
KV_SIZE, KV_LEAD, LABEL_W = 9, 12, 150
TOP, BOTTOM, MARGIN = 66, 52, 50


def render(doc: Document) -> tuple[bytes, int]:
    """The PDF and its number of pages."""
    rl = reportlab()  # (ReportLab: loaded when the first PDF is drawn)
    pagesizes, utils, canvas = rl.pagesizes, rl.utils, rl.canvas
    stringWidth = canvas.pdfmetrics.stringWidth

    regular, bold, mono = fonts(doc.language)
    width, height = pagesizes.A4
    lay = _Layout(height, width - 2 * MARGIN, lambda t, f, sz, w: _split(t, f, sz, w, utils.simpleSplit, stringWidth))
    for item in doc.items:
        lay.item(item, regular, bold)
    lay.room(60)  # the digest on the last page
    lay.y -= 10
    lay.pages[-1].append((bold, 9, 0, lay.y, translator(doc.language)(N_("Digest of this document's content (SHA-256)"))))
    lay.y -= 13
    lay.pages[-1].append((mono, 8.5, 0, lay.y, doc.digest))
    buf = io.BytesIO()
    cv = canvas.Canvas(buf, pagesize=pagesizes.A4, invariant=1, pageCompression=1, lang=doc.language.replace("_", "-"))
    gettext = translator(doc.language)
    cv.setTitle(f"{doc.title}: {doc.subject}")
    cv.setAuthor(gettext(N_("TIME-A trial system")))
    cv.setCreator(gettext(N_("TIME-A trial system")))
    cv.setSubject(doc.about or doc.title)
    _created(cv, doc.created or dt.datetime.now(dt.UTC).replace(tzinfo=None))
    cv.setLineWidth(0.6)
    _paint(cv, doc, lay.pages, (regular, mono), width, height)
    cv.save()
    return buf.getvalue(), len(lay.pages)


def _created(cv, at: dt.datetime) -> None:
    """The PDF's creation and modification date: the real moment it was made (UTC; the canvas is
    otherwise invariant, so the same content made at the same moment gives the same bytes)."""
    stamp = cv._doc._timeStamp  # (ReportLab's only way to set the info dictionary's dates)
    t = calendar.timegm(at.timetuple())
    stamp.t, stamp.lt = t, dt.datetime.fromtimestamp(t, dt.UTC).timetuple()
    stamp.YMDhms, stamp.dhh, stamp.dmm, stamp.tzname = tuple(stamp.lt)[:6], 0, 0, "UTC"


class _Layout:
    """The items placed on pages, top down: each page a list of (font, size, x from the reading side,
    y, text), drawn once the number of pages is known."""

    def __init__(self, height: float, text_w: float, split):
        self.height, self.text_w, self.split = height, text_w, split
        self.pages: list[list] = [[]]
        self.y = height - TOP

    def room(self, h: float) -> None:
        if self.y - h < BOTTOM:
            self.pages.append([])
            self.y = self.height - TOP

    def lines(self, lines: list[str], font: str, size: float, x0: float, lead: float) -> None:
        for line in lines:
            self.room(lead)
            self.pages[-1].append((font, size, x0, self.y, line))
            self.y -= lead

    def item(self, item, regular: str, bold: str) -> None:
        if item[0] == KV:
            self.kv(item[1], item[2], regular, bold)
            return
        style, size, lead, before = STYLE[item[0]]
        font = bold if style == "bold" else regular
        lines = self.split(item[1], font, size, self.text_w)
        if item[0] in (H1, H2, H3):
            self.room(before + lead * (len(lines) + 2))  # a heading never ends a page
        self.y -= before if self.y < self.height - TOP else 0
        self.lines(lines, font, size, 0, lead)

    def kv(self, label: str, value: str, regular: str, bold: str) -> None:
        lab = self.split(label, bold, KV_SIZE, LABEL_W)
        val = self.split(value, regular, KV_SIZE, self.text_w - LABEL_W - 10)
        h = max(len(lab), len(val)) * KV_LEAD
        if h > self.height - TOP - BOTTOM:  # a value longer than a page: line by line
            self.lines(self.split(label, bold, KV_SIZE, self.text_w), bold, KV_SIZE, 0, KV_LEAD)
            self.lines(val, regular, KV_SIZE, LABEL_W + 10, KV_LEAD)
            return
        self.room(h)
        for i, line in enumerate(lab):
            self.pages[-1].append((bold, KV_SIZE, 0, self.y - i * KV_LEAD, line))
        for i, line in enumerate(val):
            self.pages[-1].append((regular, KV_SIZE, LABEL_W + 10, self.y - i * KV_LEAD, line))
        self.y -= h + 1.5


def _paint(cv, doc: Document, pages: list[list], faces: tuple[str, str], width: float, height: float) -> None:
    """Each page: the running header (title, subject, print time), its lines, "page X of Y"."""
    regular, mono = faces
    gettext = translator(doc.language)
    rtl = doc.language in RTL_LANGUAGES
    left, right = MARGIN, width - MARGIN
    printed = gettext(N_("Printed %(moment)s")) % {"moment": doc.printed}
    for n, ops in enumerate(pages, 1):
        _draw(cv, regular, 8, left, right, height - 34, f"{doc.title} · {doc.subject}", rtl, far=printed)
        cv.line(left, height - 42, right, height - 42)
        _draw(cv, regular, 8, left, right, 30, gettext(N_("page %(page)s of %(pages)s")) % {"page": n, "pages": len(pages)},
              rtl)
        for font, size, x0, y, line in ops:
            cv.setFont(font, size)
            if font == mono:  # a digest reads left to right in every language
                (cv.drawRightString(right, y, line) if rtl else cv.drawString(left, y, line))
            elif rtl:
                cv.drawRightString(right - x0, y, visual(line))
            else:
                cv.drawString(left + x0, y, line)
        cv.showPage()


def _split(text: str, font: str, size: float, w: float, simple_split, string_width) -> list[str]:
    out = []
    for para in (text or "").split("\n"):
        if len(para) * size * WIDEST <= w:  # short enough to fit whatever its letters: no need to measure it
            out.append(" ".join(para.split()))
        else:
            for line in simple_split(para, font, size, w) or [""]:
                out.extend(_hard_break(line, font, size, w, string_width))
    return out or [""]


def _hard_break(line: str, font: str, size: float, w: float, stringWidth) -> list[str]:
    """A line still wider than ``w`` (one long word: a digest, a JSON value) broken between letters."""
    if len(line) * size * WIDEST <= w or stringWidth(line, font, size) <= w:
        return [line]
    out, cur = [], ""
    for ch in line:
        if cur and stringWidth(cur + ch, font, size) > w:
            out.append(cur)
            cur = ""
        cur += ch
    return out + [cur]


WIDEST = 1.05  # no glyph of the fonts used is wider than this many times the font size


def _draw(cv, font: str, size: float, left: float, right: float, y: float, text: str, rtl: bool, far: str | None = None):
    cv.setFont(font, size)
    if rtl:
        cv.drawRightString(right, y, visual(text))
        if far:
            cv.drawString(left, y, visual(far))
    else:
        cv.drawString(left, y, text)
        if far:
            cv.drawRightString(right, y, far)
