"""The interim reports of a data cut.

Their figures are computed once, when the cut is built, from the cut's snapshot (the same read
transaction as its tables), and stored with the cut (trial.interim.cuts):

- the OPEN report (:func:`open_data`), pooled over the arms: recruitment by site and month against
  the target, retention and visit completeness by visit, data queries, adverse-event and SAE counts.
  Nothing in it depends on the allocation (tests/test_blinding_differential.py proves it).
- the CLOSED report (:func:`closed_data`), by arm, for the data monitoring committee only: the
  baseline table, adverse events by arm and seriousness with the SAE listing (no study id: the
  committee reads no identifier), the primary outcome's mean with its 95% CI by arm and visit (from
  the cut's ADSL), and the interim primary analysis: the lock's mixed model run on the cut (the
  cut's bundle's ``analysis/primary.json``, trial.analysis.service.primary_analysis), its z
  statistic (estimate / SE), the information fraction and the protocol's group-sequential boundary.

Information fraction: the children randomized with the primary outcome at the primary visit in the
cut's ADSL (``primfl``), over the planned number of children with the primary outcome (the
protocol's ``[interim] planned_primary_n``; a protocol without it: the trial's recruitment target,
the sites' targets added up, which overstates the denominator by the children expected to miss the
primary visit; the report says which), capped at 1. For a model whose information grows with the children
who reached the primary visit this is the usual approximation of the statistical information
(Jennison & Turnbull), the one a DMC charter states. The boundary is the protocol's ``[interim]``
design's (Lan-DeMets O'Brien-Fleming spending, trial.analysis.groupseq.interim_boundary) at the
fraction observed, the earlier FORMAL looks' fractions (cuts asked for as formal interim looks, in
the order of their snapshots) being the earlier looks; a cut that is no formal look gives the
boundary it would have had and spends nothing. The look is final only at a fraction of 1. The
direction of benefit is the protocol's ``[interim] benefit`` ("lower": a negative effect, arm
minus reference, is benefit). Two-sided: crossed when |z| >= the boundary, with the side
(``crossed_side``: "benefit" or "harm"); one-sided: when the z in the benefit direction (-z for
"lower") >= the boundary (harm is not tested). ``crossed`` is None when the model did not converge
or the effect is not estimable.

The SAE listing shows coded fields only: the reported term is free text (it may name or describe
a child, a place or a carer) and is left out; the site is a letter (A, B, ... in the order the
listing first meets them), not its code.

The PDFs are drawn with ReportLab (its graphics for the charts) in the reader's language, with the
fonts of the randomization confirmation (trial.randomize.confirmation.fonts). No Flask here.
"""
from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import json
import math
import zipfile
from types import SimpleNamespace
from xml.sax.saxutils import escape

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from trial.analysis import groupseq
from trial.catalogue import LABELS, N_, RTL_LANGUAGES, translator
from trial.dataquality.models import DataQuery
from trial.exports.dataset import EXIT_EVENTS
from trial.exports.reports import baseline_table
from trial.participants.models import Allocation, Assessment, Participant, StatusEvent
from trial.protocol.service import labels as protocol_labels
from trial.randomize.confirmation import fonts, reportlab, visual
from trial.safety.models import AdverseEvent
from trial.safety.service import summary_by_arm
from trial.sites.models import Site

# --- the figures ----------------------------------------------------------------------------------


def _month(d: dt.datetime) -> str:
    return f"{d:%Y-%m}"


def open_data(db: Session, content: dict, snapshot_at: dt.datetime) -> dict:
    """The open report's figures, pooled over the arms (nothing by arm)."""
    sites = list(db.execute(select(Site).order_by(Site.code)).scalars())
    code = {s.id: s.code for s in sites}
    rand = db.execute(select(Allocation.participant_id, Participant.site_id, Allocation.randomized_at)
                      .join(Participant, Participant.id == Allocation.participant_id)).all()
    by_site_month: dict[str, dict[str, int]] = {s.code: {} for s in sites}
    for _, site_id, at in rand:
        per = by_site_month.setdefault(code.get(site_id, "?"), {})
        per[_month(at)] = per.get(_month(at), 0) + 1
    months = _months_through(sorted({m for per in by_site_month.values() for m in per}), snapshot_at)
    enrolled = dict(db.execute(select(Participant.site_id, func.count()).group_by(Participant.site_id)).all())
    recruitment = {
        "target": sum(s.target or 0 for s in sites), "months": months,
        "sites": [{"code": s.code, "name": s.name, "target": s.target or 0, "enrolled": enrolled.get(s.id, 0),
                   "randomized": sum(by_site_month[s.code].values()),
                   "by_month": [by_site_month[s.code].get(m, 0) for m in months]} for s in sites],
    }
    recruitment["randomized"] = sum(s["randomized"] for s in recruitment["sites"])
    recruitment["cumulative"] = _cumulative([sum(s["by_month"][i] for s in recruitment["sites"]) for i in range(len(months))])
    queries = dict(db.execute(select(DataQuery.status, func.count()).group_by(DataQuery.status)).all())
    aes = db.execute(select(AdverseEvent.participant_id, AdverseEvent.serious, AdverseEvent.outcome)).all()
    return {"recruitment": recruitment, "visits": _visit_completeness(db, content, rand, snapshot_at.date()),
            "queries": {k: int(queries.get(k, 0)) for k in ("open", "answered", "closed")},
            "adverse_events": {"events": len(aes), "participants": len({a[0] for a in aes}),
                               "serious": sum(1 for a in aes if a[1]),
                               "participants_serious": len({a[0] for a in aes if a[1]}),
                               "fatal": sum(1 for a in aes if a[2] == "fatal")}}


def _months_through(seen: list[str], snapshot_at: dt.datetime) -> list[str]:
    """Every month from the first randomization's to the cut's, those without a randomization too
    (a month left out would bend the recruitment curve's time axis)."""
    if not seen:
        return []
    year, month = map(int, seen[0].split("-"))
    last = max(seen[-1], _month(snapshot_at))
    out = []
    while f"{year:04d}-{month:02d}" <= last:
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out


def _cumulative(xs: list[int]) -> list[int]:
    out, n = [], 0
    for x in xs:
        n += x
        out.append(n)
    return out


def _visit_completeness(db: Session, content: dict, rand, on: dt.date) -> list[dict]:
    """Per follow-up visit: the children whose window had closed by the snapshot (due), those who
    had left the trial before the visit's day, those with a form of the visit, and those with the
    primary outcome at it. Retention: the due children who had not left; completeness: the due
    children with a form of the visit."""
    prim = content["primary_outcome"]
    randomized = {pid: at.date() for pid, _, at in rand}
    exits: dict[int, dt.date] = {}
    for pid, on_ in db.execute(select(StatusEvent.participant_id, StatusEvent.on).where(StatusEvent.type.in_(EXIT_EVENTS))):
        if pid not in exits or on_ < exits[pid]:
            exits[pid] = on_
    forms: dict[str, set[int]] = {}
    primary: dict[str, set[int]] = {}
    for pid, visit, ins, values in db.execute(select(Assessment.participant_id, Assessment.visit, Assessment.instrument,
                                                     Assessment.values)):
        forms.setdefault(visit, set()).add(pid)
        if ins == prim["instrument"] and (values or {}).get(prim["field"]) is not None:
            primary.setdefault(visit, set()).add(pid)
    out = []
    for v in content["visits"]:
        if v.get("day", 0) <= 0:
            continue
        due = [p for p, r in randomized.items() if r + dt.timedelta(days=v["day"] + v.get("window_after", 0)) <= on]
        left = [p for p in due if p in exits and exits[p] < randomized[p] + dt.timedelta(days=v["day"])]
        assessed = [p for p in due if p in forms.get(v["key"], ())]
        with_primary = [p for p in due if p in primary.get(v["key"], ())]
        out.append({"visit": v["key"], "due": len(due), "left": len(left), "assessed": len(assessed),
                    "primary": len(with_primary), "retention": (len(due) - len(left)) / len(due) if due else None,
                    "completeness": len(assessed) / len(due) if due else None})
    return out


def _bundle_file(bundle: bytes, name: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(bundle)) as z:
        member = next(n for n in z.namelist() if n.split("/", 1)[-1] == name)
        return z.read(member)


def _outcome_columns(bundle: bytes, content: dict, visits: list[str]) -> dict[str, str]:
    """The ADSL column of the primary outcome at each analysis visit, as the bundle's data
    dictionary names it (its instrument, visit and field)."""
    prim = content["primary_outcome"]
    field = f"field {prim['field']}"
    out = {}
    for r in csv.DictReader(io.StringIO(_bundle_file(bundle, "dictionary.csv").decode("utf-8"))):
        if r["table"] == "adsl" and r["instrument"] == prim["instrument"] and r["visit"] in visits \
                and r["source"].endswith(field):
            out[r["visit"]] = r["name"]
    return out


def _mean_ci(xs: list[float]) -> dict:
    from scipy import stats  # deferred: loaded when a cut is built
    n = len(xs)
    if not n:
        return {"n": 0, "mean": None, "sd": None, "ci_low": None, "ci_high": None}
    mean = sum(xs) / n
    if n < 2:
        return {"n": n, "mean": mean, "sd": None, "ci_low": None, "ci_high": None}
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half}


def closed_data(db: Session, content: dict, bundle: bytes, snapshot_at: dt.datetime,
                previous_fractions: list[float], formal: bool = False) -> dict:
    """The closed report's figures, by arm (the committee's only)."""
    arms = [a["key"] for a in content["arms"]]
    rows = list(csv.DictReader(io.StringIO(_bundle_file(bundle, "analysis/adsl.csv").decode("utf-8"))))
    spec = content.get("analysis")
    visits = list(spec["visits"]) if spec else []
    out_vars = _outcome_columns(bundle, content, visits)
    n_by_arm = {a: sum(1 for r in rows if r.get("arm") == a) for a in arms}
    means = []
    for a in arms:
        for vk in visits:
            col = out_vars.get(vk)
            xs = [float(r[col]) for r in rows if col and r.get("arm") == a and r.get(col) not in (None, "")]
            means.append({"arm": a, "visit": vk, **_mean_ci(xs)})
    return {"arms": arms, "reference_arm": (content.get("analysis") or {}).get("reference_arm"), "n_by_arm": n_by_arm,
            "baseline": baseline_table(db, False), "adverse_events": _ae_by_arm(db, content, snapshot_at.date()),
            "sae_listing": _sae_listing(db),
            "outcome": f"{content['primary_outcome']['instrument']}.{content['primary_outcome']['field']}",
            "primary_visit": content["primary_outcome"]["visit"], "means": means,
            **_interim(db, content, bundle, rows, previous_fractions, formal)}


def _exposure_rates(doc, rows: list[dict]) -> None:
    """The adverse events' exposure-adjusted rates by arm (trial.safety.service.summary_by_arm)."""
    def num(x, fmt="{:.2f}"):
        return "–" if x is None else fmt.format(x)
    doc.para(doc._(N_("Exposure-adjusted rates: events with onset in a child's course, up to the child's exit or the "
                      "cut, per 100 child-months (exact Poisson 95% CI) and per 100 sessions attended.")), doc.small)
    doc.table([doc._(N_("Arm")), doc._(N_("Children")), doc._(N_("Child-months")), doc._(N_("Events")),
               doc._(N_("Per 100 child-months (95% CI)")), doc._(N_("Sessions attended")),
               doc._(N_("Per 100 sessions"))],
              [[doc.arm(r["arm"]), r.get("children", 0), num(r.get("child_months"), "{:.1f}"),
                r.get("events_in_exposure", 0),
                f"{num(r.get('rate_per_100_child_months'))} ({num(r.get('rate_ci_low'))}–{num(r.get('rate_ci_high'))})",
                num(r.get("sessions_attended"), "{}"), num(r.get("rate_per_100_sessions"))] for r in rows])


def _ae_by_arm(db: Session, content: dict, until: dt.date | None = None) -> list[dict]:
    """Adverse events by arm, with the serious ones by seriousness criterion and the exposure-adjusted
    rates up to ``until`` (the cut's day)."""
    base = {r["arm"]: r for r in summary_by_arm(db, until=until)}
    arm_of = dict(db.execute(select(Allocation.participant_id, Allocation.arm)).all())
    crit: dict[str, dict[str, int]] = {a["key"]: {} for a in content["arms"]}
    for pid, serious, seriousness in db.execute(select(AdverseEvent.participant_id, AdverseEvent.serious,
                                                       AdverseEvent.seriousness)):
        if serious and pid in arm_of:
            for c in seriousness or []:
                crit[arm_of[pid]][c] = crit[arm_of[pid]].get(c, 0) + 1
    return [{**base.get(a["key"], {"arm": a["key"]}), "seriousness": dict(sorted(crit[a["key"]].items()))}
            for a in content["arms"]]


def _sae_listing(db: Session) -> list[dict]:
    """Every serious adverse event with its arm, coded fields only: no study id (an identifier), no
    term (free text), the site as a letter; the onset as days from randomization and the grading."""
    rows = db.execute(select(AdverseEvent, Allocation.arm, Allocation.randomized_at, Site.code)
                      .join(Allocation, Allocation.participant_id == AdverseEvent.participant_id)
                      .join(Site, Site.id == AdverseEvent.site_id)
                      .where(AdverseEvent.serious.is_(True))
                      .order_by(Allocation.arm, AdverseEvent.onset, AdverseEvent.id)).all()
    letters: dict[str, str] = {}
    for *_, site in rows:
        letters.setdefault(site, _letter(len(letters)))
    return [{"number": i + 1, "arm": arm, "site": letters[site],
             "onset_day": (ae.onset - at.date()).days, "severity": ae.severity,
             "seriousness": list(ae.seriousness or []), "relatedness": ae.relatedness,
             "expectedness": ae.expectedness, "outcome": ae.outcome}
            for i, (ae, arm, at, site) in enumerate(rows)]


def _letter(n: int) -> str:
    """A, B, ..., Z, AA, AB, ..."""
    return (_letter(n // 26 - 1) if n >= 26 else "") + chr(ord("A") + n % 26)


def _interim(db: Session, content: dict, bundle: bytes, rows: list[dict], previous: list[float],
             formal: bool = False) -> dict:
    """The interim primary analysis against the protocol's boundary."""
    design = content.get("interim")
    planned_n, planned_from = _planned(db, design)
    observed = sum(1 for r in rows if r.get("primfl") == "1")
    fraction = min(observed / planned_n, 1.0) if planned_n else None
    try:
        primary = json.loads(_bundle_file(bundle, "analysis/primary.json"))
    except StopIteration:
        primary = {}
    est, se = primary.get("estimate"), primary.get("se")
    estimable = est is not None and se is not None and math.isfinite(se) and se > 0 \
        and primary.get("converged") is not False
    z = est / se if est is not None and se and math.isfinite(se) else None
    benefit = (design or {}).get("benefit", "lower")
    sides = (design or {}).get("sides", 2)
    looks = [f for f in previous if fraction is not None and f < fraction]
    out = {"analysis": {k: primary.get(k) for k in ("comparison", "model", "n", "n_observations", "estimate", "se",
                                                      "ci_low", "ci_high", "p_value", "converged", "note", "secondary",
                                                      "pooled_arms", "reference_arm", "visit")},
           "planned_sample_size": planned_n, "planned_from": planned_from, "observed_primary": observed,
           "information_fraction": fraction, "formal": formal, "benefit": benefit, "sides": sides,
           "z": z, "z_benefit": None if z is None else (-z if benefit == "lower" else z),
           "boundary_z": None, "crossed": None, "crossed_side": None,
           "previous_fractions": looks, "look_number": len(looks) + 1 if formal else None, "design": design,
           "information_fraction_definition": (
               "children with the primary outcome at the primary visit / " + (
                   "the protocol's planned number of children with the primary outcome ([interim] planned_primary_n)"
                   if planned_from == "protocol" else "the recruitment target (the sites' targets added up: the protocol "
                                                      "gives no [interim] planned_primary_n)") + ", at most 1")}
    if design and fraction:
        _decide(out, groupseq.interim_boundary(design["information_fractions"], fraction, looks,
                                               design.get("alpha", 0.05), sides), estimable, est, se)
    return out


def _planned(db: Session, design: dict | None) -> tuple[int, str]:
    """The planned number of children with the primary outcome, and where it comes from: the
    protocol's, else the sites' recruitment targets added up."""
    planned_n = (design or {}).get("planned_primary_n")
    if planned_n:
        return planned_n, "protocol"
    return int(db.execute(select(func.coalesce(func.sum(Site.target), 0))).scalar() or 0), "site_targets"


def _decide(out: dict, b: float, estimable: bool, est, se) -> None:
    """The boundary ``b`` into the analysis ``out``, and whether z crossed it (and on which side)."""
    out["boundary_z"] = b
    z, zb = out["z"], out["z_benefit"]
    if z is not None and estimable:
        if out["sides"] == 2:
            out["crossed"] = bool(abs(z) >= b)
            out["crossed_side"] = ("benefit" if zb > 0 else "harm") if out["crossed"] else None
        else:
            out["crossed"] = bool(zb >= b)
            out["crossed_side"] = "benefit" if out["crossed"] else None
        out["repeated_ci"] = [est - b * se, est + b * se]


# --- the PDFs ---------------------------------------------------------------------------------------

@functools.cache
def _rl() -> SimpleNamespace:
    """ReportLab's parts the reports use (ReportLab: loaded when the first PDF is drawn)."""
    rl = reportlab()
    return SimpleNamespace(**{n: getattr(rl.shapes, n) for n in ("Circle", "Drawing", "Line", "PolyLine",
                                                                 "Polygon", "Rect", "String")},
                           colors=rl.colors, pagesizes=rl.pagesizes, ParagraphStyle=rl.styles.ParagraphStyle,
                           mm=rl.units.mm, Paragraph=rl.platypus.Paragraph, Table=rl.platypus.Table,
                           KeepTogether=rl.platypus.KeepTogether, stringWidth=rl.pdfmetrics.stringWidth,
                           TableStyle=rl.platypus.TableStyle, SimpleDocTemplate=rl.platypus.SimpleDocTemplate)


TEXT_WIDTH = 595.2756 - 36 * 2.834646  # A4's width less its margins (18 mm a side), in points
CELL_PAD = 2.0  # a table cell's padding left and right (points): twelve months and a site fit a line


class _Doc:
    """A report being written: its language's words, fonts and styles, and the flowables."""

    def __init__(self, language: str, content: dict):
        rl = _rl()
        self.language = language or "en"
        self.gettext = translator(self.language)
        self.regular, self.bold, _ = fonts(self.language)
        self.rtl = self.language in RTL_LANGUAGES
        self.words = protocol_labels(content, self.language)
        align = 2 if self.rtl else 0
        self.body = rl.ParagraphStyle("body", fontName=self.regular, fontSize=9, leading=12, alignment=align)
        self.small = rl.ParagraphStyle("small", fontName=self.regular, fontSize=7.5, leading=9.5, alignment=align)
        self.h1 = rl.ParagraphStyle("h1", fontName=self.bold, fontSize=16, leading=20, spaceAfter=6, alignment=align)
        self.h2 = rl.ParagraphStyle("h2", fontName=self.bold, fontSize=11.5, leading=15, spaceBefore=10, spaceAfter=4,
                                    alignment=align, keepWithNext=1)
        self.story: list = []

    def _(self, s: str) -> str:
        return self.gettext(s)

    def v(self, s) -> str:
        s = "" if s is None else str(s)
        return visual(s) if self.rtl else s

    def para(self, s: str, style=None) -> None:
        rl = _rl()
        self.story.append(rl.Paragraph(escape(self.v(s)), style or self.body))

    def h(self, s: str, level: int = 2) -> None:
        self.para(s, self.h1 if level == 1 else self.h2)

    def table(self, header: list, rows: list[list], widths=None) -> None:
        rl = _rl()
        texts = [[self.v(c) for c in r] for r in [header, *rows]]
        cells = [[rl.Paragraph(escape(c), self.small) for c in r] for r in texts]
        t = rl.Table(cells, colWidths=widths or self.widths(texts), repeatRows=1, hAlign="RIGHT" if self.rtl else "LEFT")
        t.setStyle(rl.TableStyle([("LINEBELOW", (0, 0), (-1, 0), 0.6, rl.colors.black),
                               ("LINEBELOW", (0, -1), (-1, -1), 0.4, rl.colors.grey),
                               ("VALIGN", (0, 0), (-1, -1), "TOP"),
                               ("LEFTPADDING", (0, 0), (-1, -1), CELL_PAD), ("RIGHTPADDING", (0, 0), (-1, -1), CELL_PAD),
                               ("TOPPADDING", (0, 0), (-1, -1), 1.5), ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5)]))
        self.story.append(t)

    def widths(self, texts: list[list[str]]) -> list[float]:
        """Column widths that break no word (a German heading split mid-word, a site code over two
        lines): each column at least its longest word wide, the rest of the line shared out in
        proportion to what each column's longest cell still lacks (when the longest words alone do
        not fit the line, each column in proportion to its longest word)."""
        width, size, pad = _rl().stringWidth, self.small.fontSize, 2 * CELL_PAD + 1

        def unbroken(c: str) -> list[str]:  # a short cell ("11 (18.3%)", "AT01") stays on one line
            return [c] if len(c) <= 12 else (c.split() or [""])
        cols = list(zip(*texts))
        least = [max(width(w, self.regular, size) for c in col for w in unbroken(c)) + pad for col in cols]
        full = [max(width(c, self.regular, size) for c in col) + pad for col in cols]
        if sum(least) >= TEXT_WIDTH:  # too many columns for whole words: the fewest breaks
            return [w * TEXT_WIDTH / sum(least) for w in least]
        if sum(full) <= TEXT_WIDTH:  # all on one line: the spare width in proportion to the columns
            return [f * TEXT_WIDTH / sum(full) for f in full]
        lacking = [f - w for f, w in zip(full, least)]
        return [w + (TEXT_WIDTH - sum(least)) * x / sum(lacking) for w, x in zip(least, lacking)]

    def drawing(self, d) -> None:
        self.story.append(d)

    def render(self, title: str, subject: str) -> bytes:
        rl = _rl()
        buf = io.BytesIO()
        doc = rl.SimpleDocTemplate(buf, pagesize=rl.pagesizes.A4, leftMargin=18 * rl.mm, rightMargin=18 * rl.mm, topMargin=16 * rl.mm,
                                bottomMargin=16 * rl.mm, title=title, author="TIME-A trial system", subject=subject,
                                invariant=1, lang=self.language.replace("_", "-"))
        regular = self.regular

        def footer(canvas, doc_):
            canvas.saveState()
            canvas.setFont(regular, 7)
            canvas.drawRightString(rl.pagesizes.A4[0] - 18 * rl.mm, 9 * rl.mm, str(doc_.page))
            canvas.drawString(18 * rl.mm, 9 * rl.mm, self.v(title)[:110])
            canvas.restoreState()
        doc.build(self.story, onFirstPage=footer, onLaterPages=footer)
        return buf.getvalue()

    # the protocol's and the catalogue's words
    def arm(self, key) -> str:
        return self.words["arm"].get(key, key)

    def visit(self, key) -> str:
        return self.words["visit"].get(key, key)

    def term(self, kind: str, key) -> str:
        label = LABELS.get(kind, {}).get(key)
        return self.gettext(label) if label else str(key)


def _n(x, digits: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}f}"


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _head(doc: _Doc, data: dict, title: str, closed: bool) -> None:
    """The title and the cut. The audit trail's head only in the closed report: its size follows the
    sessions logged (music therapy only), which the open report's readers must not learn."""
    cut = data["cut"]
    doc.h(title, 1)
    doc.para(cut["trial"])
    values = {"id": cut["cut"], "label": cut["label"], "at": cut["snapshot_at"].replace("T", " ").rstrip("Z"),
              "seq": cut["audit_seq"], "version": cut["protocol_version"]}
    if closed:
        doc.para(doc._(N_("Data cut %(id)s (%(label)s); snapshot of the live data at %(at)s UTC; audit trail record "
                         "%(seq)s; protocol version %(version)s.")) % values, doc.small)
    else:
        doc.para(doc._(N_("Data cut %(id)s (%(label)s); snapshot of the live data at %(at)s UTC; protocol version "
                         "%(version)s.")) % values, doc.small)


def open_pdf(data: dict, content: dict, language: str) -> bytes:
    """The open report (pooled over the arms), in ``language``."""
    doc = _Doc(language, content)
    title = doc._(N_("Open report to the data monitoring committee"))
    _head(doc, data, title, closed=False)
    doc.para(doc._(N_("Pooled over the arms: nothing in this report is by arm.")))
    rec = data["recruitment"]
    doc.h(doc._(N_("Recruitment against the target")))
    doc.para(doc._(N_("%(n)s children randomized of a target of %(target)s.")) % {"n": rec["randomized"],
                                                                                  "target": rec["target"]})
    doc.drawing(_recruitment_chart(doc, rec))
    doc.table([doc._(N_("Site")), doc._(N_("Target")), doc._(N_("Enrolled")), doc._(N_("Randomized")),
               doc._(N_("Share of the target"))],
              [[f"{s['code']} {s['name']}", s["target"], s["enrolled"], s["randomized"],
                _pct(s["randomized"] / s["target"]) if s["target"] else "–"] for s in rec["sites"]])
    if rec["months"]:
        doc.h(doc._(N_("Randomized by site and month")))
        months = rec["months"][-12:]
        at = len(rec["months"]) - len(months)
        doc.table([doc._(N_("Site")), *months],
                  [[s["code"], *s["by_month"][at:]] for s in rec["sites"]])
    doc.h(doc._(N_("Retention and visit completeness")))
    doc.drawing(_completeness_chart(doc, data["visits"]))
    doc.table([doc._(N_("Visit")), doc._(N_("Due")), doc._(N_("Left the trial before")), doc._(N_("Retention")),
               doc._(N_("With a form")), doc._(N_("Completeness")), doc._(N_("With the primary outcome"))],
              [[doc.visit(v["visit"]), v["due"], v["left"], _pct(v["retention"]), v["assessed"], _pct(v["completeness"]),
                v["primary"]] for v in data["visits"]])
    q = data["queries"]
    doc.h(doc._(N_("Data queries")))
    doc.table([doc.term("query_status", "open"), doc.term("query_status", "answered"),
               doc.term("query_status", "closed")], [[q["open"], q["answered"], q["closed"]]])
    ae = data["adverse_events"]
    doc.h(doc._(N_("Adverse events (pooled)")))
    doc.table([doc._(N_("Events")), doc._(N_("Children with an event")), doc._(N_("Serious events")),
               doc._(N_("Children with a serious event")), doc._(N_("Fatal"))],
              [[ae["events"], ae["participants"], ae["serious"], ae["participants_serious"], ae["fatal"]]])
    return doc.render(title, data["cut"]["trial"])


def closed_pdf(data: dict, content: dict, language: str) -> bytes:
    """The closed report (by arm), in ``language``: for the data monitoring committee only."""
    doc = _Doc(language, content)
    title = doc._(N_("CLOSED report to the data monitoring committee"))
    _head(doc, data, title, closed=True)
    doc.para(doc._(N_("By arm: for the members of the data monitoring committee only. Do not pass it on.")))
    arms = data["arms"]
    doc.h(doc._(N_("Baseline characteristics by arm")))
    _baseline(doc, data, content)
    doc.h(doc._(N_("Adverse events by arm and seriousness")))
    doc.table([doc._(N_("Arm")), doc._(N_("Children with an event")), doc._(N_("Events")), doc._(N_("Serious events")),
               doc._(N_("Fatal")), doc.term("severity", "severe"), doc._(N_("Related")), doc._(N_("Serious, by criterion"))],
              [[doc.arm(r["arm"]), r.get("participants_with_event", 0), r.get("events", 0), r.get("serious", 0),
                r.get("fatal", 0), r.get("severe", 0), r.get("related", 0),
                "; ".join(f"{doc.term('seriousness', k)}: {n}" for k, n in r.get("seriousness", {}).items()) or "–"]
               for r in data["adverse_events"]])
    _exposure_rates(doc, data["adverse_events"])
    doc.h(doc._(N_("Serious adverse events")))
    if data["sae_listing"]:
        doc.para(doc._(N_("Coded fields only: the reported term is free text and is not shown; sites are letters, not "
                          "their codes.")), doc.small)
        doc.table(["#", doc._(N_("Arm")), doc._(N_("Site")), doc._(N_("Onset (day)")),
                   doc._(N_("Severity")), doc._(N_("Seriousness")), doc._(N_("Relatedness")), doc._(N_("Outcome"))],
                  [[s["number"], doc.arm(s["arm"]), s["site"], s["onset_day"], doc.term("severity", s["severity"]),
                    ", ".join(doc.term("seriousness", c) for c in s["seriousness"]),
                    doc.term("relatedness", s["relatedness"]), doc.term("ae_outcome", s["outcome"])]
                   for s in data["sae_listing"]])
    else:
        doc.para(doc._(N_("None.")))
    doc.h(doc._(N_("The primary outcome by arm and visit (mean, 95% CI)")))
    doc.drawing(_means_chart(doc, data))
    doc.table([doc._(N_("Arm")), doc._(N_("Visit")), "n", doc._(N_("Mean")), doc._(N_("SD")), doc._(N_("95% CI"))],
              [[doc.arm(m["arm"]), doc.visit(m["visit"]), m["n"], _n(m["mean"], 2), _n(m["sd"], 2),
                f"{_n(m['ci_low'], 2)} – {_n(m['ci_high'], 2)}"] for m in data["means"]])
    _analysis(doc, data)
    doc.para(doc._(N_("Randomized: %(counts)s.")) % {
        "counts": "; ".join(f"{doc.arm(a)} {data['n_by_arm'].get(a, 0)}" for a in arms)}, doc.small)
    return doc.render(title, data["cut"]["trial"])


# the baseline table's fixed labels (trial.exports.reports.baseline_table writes them in English)
_BASELINE_LABELS = {"Characteristic": N_("Characteristic"), "Age at consent, months, mean (SD)":
                    N_("Age at consent, months, mean (SD)"), "Sex, n (%)": N_("Sex, n (%)"), "Female": N_("Female"),
                    "Male": N_("Male"), "Missing": N_("Missing"), "Site, n (%)": N_("Site, n (%)"),
                    "Missing, n": N_("Missing, n")}


def _score_labels(doc: _Doc, content: dict) -> dict[str, str]:
    """The baseline table's rows of the instruments' scores (written in English by
    trial.exports.reports.baseline_table, as "ADOS-2: Total, points, mean (SD)"), each in the
    reader's language: the protocol's labels of the instrument, the field and its units."""
    out = {}
    for ins in content.get("instruments", []):
        for f in ins["fields"]:
            key = f"{ins['key']}.{f['key']}"
            english = f"{ins['label']}: {f['label']}" + (f", {f['units']}" if f.get("units") else "")
            local = f"{doc.words['instrument'].get(ins['key'], ins['label'])}: {doc.words['field'].get(key, f['label'])}" \
                + (f", {doc.words['unit'].get(key, f['units'])}" if f.get("units") else "")
            out[f"{english}, mean (SD)"] = doc._(N_("%(characteristic)s, mean (SD)")) % {"characteristic": local}
    return out


def _baseline(doc: _Doc, data: dict, content: dict) -> None:
    """The baseline table with its headers and fixed labels in the reader's language (the arms by
    the protocol's labels, the instruments' rows by the protocol's words where it gives them)."""
    b = data["baseline"]
    arms = data["arms"]
    n_all = sum(data["n_by_arm"].values())
    head = [doc._(N_("Characteristic")), *(f"{doc.arm(a)} (N = {data['n_by_arm'].get(a, 0)})" for a in arms),
            f"{doc._(N_('Total'))} (N = {n_all})"]
    if len(b["columns"]) != len(head):  # (not the layout expected: as it is)
        head = list(b["columns"])

    scores = _score_labels(doc, content)

    def label(cell: str) -> str:
        lead = cell[:len(cell) - len(cell.lstrip())]
        word = cell.strip()
        if word in scores:
            return lead + scores[word]
        return lead + doc._(_BASELINE_LABELS[word]) if word in _BASELINE_LABELS else cell
    doc.table(head, [[label(r[0]), *r[1:]] for r in b["rows"]])


def _analysis_rows(doc: _Doc, a: dict, data: dict) -> list[list[str]]:
    """The interim analysis' results, a row each: the estimate, the information, the boundary."""
    return [[doc._(N_("Estimate (95% CI)")),
             f"{_n(a.get('estimate'), 3)} ({_n(a.get('ci_low'), 3)} – {_n(a.get('ci_high'), 3)})"],
            [doc._(N_("Standard error")), _n(a.get("se"), 3)], ["z", _n(data.get("z"), 3)],
            [doc._(N_("Information fraction")), _n(data.get("information_fraction"), 3)],
            [doc._(N_("Children with the primary outcome / planned")),
             f"{data['observed_primary']} / {data['planned_sample_size']}"],
            [doc._(N_("Boundary (|z|)")) if data.get("sides", 2) == 2 else
             doc._(N_("Boundary (z in the direction of benefit)")), _n(data.get("boundary_z"), 3)],
            [doc._(N_("Boundary crossed")), _crossed(doc, data)]]


def _crossed(doc: _Doc, data: dict) -> str:
    return "–" if data.get("crossed") is None else doc._(N_("yes, towards benefit")) \
        if data.get("crossed_side") == "benefit" else doc._(N_("yes, towards harm")) if data["crossed"] else doc._(N_("no"))


def _analysis(doc: _Doc, data: dict) -> None:
    """The interim analysis: its heading, results, notes and forest plot kept on one page."""
    start = len(doc.story)
    _analysis_parts(doc, data)
    doc.story[start:] = [_rl().KeepTogether(doc.story[start:])]


def _analysis_parts(doc: _Doc, data: dict) -> None:
    a = data["analysis"]
    doc.h(doc._(N_("Interim primary analysis")))
    pooled, ref = a.get("pooled_arms") or [], a.get("reference_arm") or data.get("reference_arm")
    if pooled and ref:
        doc.para(doc._(N_("Comparison: %(arms)s (pooled) against %(reference)s.")) % {
            "arms": " + ".join(doc.arm(k) for k in pooled), "reference": doc.arm(ref)}, doc.small)
    model = a.get("model") or ""
    if ":" in model:  # "linear mixed model (REML): <formula>; visits ...": the formula is notation, not words
        formula = model.split(":", 1)[1].split("; visits", 1)[0].strip()
        doc.para(doc._(N_("Linear mixed model (REML): %(formula)s.")) % {"formula": formula}, doc.small)
    rows = _analysis_rows(doc, a, data)
    doc.table([doc._(N_("Result")), ""], rows)
    if not data.get("formal", True):
        doc.para(doc._(N_("This cut is not a formal interim look: it spends no alpha, and the boundary is the one a "
                          "look at this information would have.")), doc.small)
    if data.get("design") is None:
        doc.para(doc._(N_("The protocol defines no interim design ([interim]): no stopping boundary is defined.")))
    else:
        doc.para((doc._(N_("Information fraction: children with the primary outcome at the primary visit divided by the "
                           "planned number of children with the primary outcome.")) if data.get("planned_from") == "protocol"
                  else doc._(N_("Information fraction: children with the primary outcome at the primary visit divided by "
                                "the recruitment target (the protocol gives no planned number with the primary "
                                "outcome).")))
                 + " " + doc._(N_("Boundary: Lan-DeMets O'Brien-Fleming-type alpha spending at the fraction observed "
                                  "(overall alpha %(alpha)s, %(sides)s-sided).")) % {
            "alpha": data["design"].get("alpha"), "sides": data["design"].get("sides")}, doc.small)
    if a.get("converged") is False:
        doc.para(doc._(N_("The model did not converge: no boundary decision is made.")), doc.small)
    elif a.get("estimate") is None or not a.get("se"):
        doc.para(doc._(N_("The effect cannot be estimated from these data: no boundary decision is made.")), doc.small)
    if a.get("estimate") is not None and a.get("se"):
        doc.drawing(_forest(doc, data))


# --- the charts ---------------------------------------------------------------------------------------

W = 470.0  # the charts' width (points): the page's text width


def _text(doc: _Doc, x, y, s, size=7, anchor="start"):
    rl = _rl()
    return rl.String(x, y, doc.v(s), fontName=doc.regular, fontSize=size, textAnchor=anchor)


def _recruitment_chart(doc: _Doc, rec: dict):
    """Cumulative randomizations by month (a line) against the target (dashed)."""
    rl = _rl()
    h, left, bottom, right, top = 160.0, 40.0, 24.0, 10.0, 24.0
    d = rl.Drawing(W, h)
    cum, months, target = rec["cumulative"], rec["months"], rec["target"]
    top_v = max([target, *cum, 1])
    pw, ph = W - left - right, h - bottom - top
    d.add(rl.Line(left, bottom, left, bottom + ph, strokeWidth=0.6))
    d.add(rl.Line(left, bottom, left + pw, bottom, strokeWidth=0.6))
    for k in range(5):
        v = top_v * k / 4
        d.add(_text(doc, left - 4, bottom + ph * k / 4 - 2, f"{v:.0f}", anchor="end"))
    if target:
        y = bottom + ph * target / top_v
        d.add(rl.Line(left, y, left + pw, y, strokeDashArray=[3, 2], strokeWidth=0.8))
        d.add(_text(doc, left + pw, y + 3, doc._(N_("target")), anchor="end"))
    if months:
        step = pw / max(len(months) - 1, 1)
        pts = []
        for i, n in enumerate(cum):
            pts += [left + i * step, bottom + ph * n / top_v]
        if len(pts) > 2:
            d.add(rl.PolyLine(pts, strokeWidth=1.4))
        for i in range(0, len(pts), 2):
            d.add(rl.Circle(pts[i], pts[i + 1], 1.8, fillColor=rl.colors.black))
        every = max(1, len(months) // 8)
        for i, m in enumerate(months):
            if i % every == 0 or i == len(months) - 1:
                d.add(_text(doc, left + i * step, bottom - 10, m, size=6.5, anchor="middle"))
    d.add(_text(doc, left, h - 8, doc._(N_("Randomized, cumulative, by month"))))
    return d


def _completeness_chart(doc: _Doc, visits: list[dict]):
    """Retention and completeness by visit: two bars per visit (0 to 100%)."""
    rl = _rl()
    h, left, bottom, top = 120.0, 40.0, 24.0, 14.0
    d = rl.Drawing(W, h)
    pw, ph = W - left - 10, h - bottom - top
    d.add(rl.Line(left, bottom, left + pw, bottom, strokeWidth=0.6))
    for k in (0, 50, 100):
        d.add(_text(doc, left - 4, bottom + ph * k / 100 - 2, f"{k}%", anchor="end"))
    slot = pw / max(len(visits), 1)
    for i, v in enumerate(visits):
        x = left + i * slot + slot * 0.2
        for j, (key, shade) in enumerate((("retention", rl.colors.grey), ("completeness", rl.colors.black))):
            if v[key] is not None:
                d.add(rl.Rect(x + j * slot * 0.3, bottom, slot * 0.28, ph * v[key], fillColor=shade, strokeWidth=0))
        d.add(_text(doc, left + i * slot + slot / 2, bottom - 10, doc.visit(v["visit"]), size=6.5, anchor="middle"))
    d.add(rl.Rect(left, h - 10, 8, 6, fillColor=rl.colors.grey, strokeWidth=0))
    d.add(_text(doc, left + 11, h - 10, doc._(N_("Retention"))))
    d.add(rl.Rect(left + 90, h - 10, 8, 6, fillColor=rl.colors.black, strokeWidth=0))
    d.add(_text(doc, left + 101, h - 10, doc._(N_("Completeness"))))
    return d


def _means_chart(doc: _Doc, data: dict):
    """The primary outcome's mean with its 95% CI, by arm (a marker each) across the visits."""
    rl = _rl()
    h, left, bottom, top = 170.0, 40.0, 24.0, 16.0
    d = rl.Drawing(W, h)
    ms = [m for m in data["means"] if m["mean"] is not None]
    visits = list(dict.fromkeys(m["visit"] for m in data["means"]))
    if not ms or not visits:
        d.add(_text(doc, left, h / 2, doc._(N_("No data yet."))))
        return d
    lo, hi = _value_range(ms)
    pw, ph = W - left - 10, h - bottom - top

    def y(v):
        return bottom + ph * (v - lo) / (hi - lo)
    d.add(rl.Line(left, bottom, left, bottom + ph, strokeWidth=0.6))
    d.add(rl.Line(left, bottom, left + pw, bottom, strokeWidth=0.6))
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        d.add(_text(doc, left - 4, y(v) - 2, f"{v:.1f}", anchor="end"))
    arms = data["arms"]
    shades = [rl.colors.black, rl.colors.grey, rl.colors.Color(0.55, 0.55, 0.55), rl.colors.Color(0.3, 0.3, 0.3)]
    slot = pw / len(visits)
    for i, vk in enumerate(visits):
        d.add(_text(doc, left + i * slot + slot / 2, bottom - 10, doc.visit(vk), size=6.5, anchor="middle"))
        for j, a in enumerate(arms):
            m = next((m for m in ms if m["arm"] == a and m["visit"] == vk), None)
            if m is None:
                continue
            x = left + i * slot + slot * (j + 1) / (len(arms) + 1)
            c = shades[j % len(shades)]
            if m["ci_low"] is not None:
                d.add(rl.Line(x, y(m["ci_low"]), x, y(m["ci_high"]), strokeColor=c, strokeWidth=0.9))
            d.add(_marker(j, x, y(m["mean"]), c))
    _arm_key(doc, d, arms, shades, left, h)
    d.height = h + 9 * len(arms)
    return d


def _value_range(ms: list[dict]) -> tuple[float, float]:
    """The chart's scale: the means and their intervals, with a tenth of the range to spare."""
    lo = min(m["ci_low"] if m["ci_low"] is not None else m["mean"] for m in ms)
    hi = max(m["ci_high"] if m["ci_high"] is not None else m["mean"] for m in ms)
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    pad = (hi - lo) * 0.1
    return lo - pad, hi + pad


def _arm_key(doc: _Doc, d, arms: list, shades: list, left: float, h: float) -> None:
    """The chart's key: one arm a line, above the plot."""
    for j, a in enumerate(arms):
        d.add(_marker(j, left + 3, h + 3 + 9 * (len(arms) - 1 - j), shades[j % len(shades)]))
        d.add(_text(doc, left + 10, h + 9 * (len(arms) - 1 - j), doc.arm(a)))


def _marker(j: int, x: float, y: float, c):
    """The ``j``th arm's marker: a circle, a square or a triangle."""
    rl = _rl()
    if j % 3 == 0:
        return rl.Circle(x, y, 2.4, fillColor=c, strokeColor=c)
    if j % 3 == 1:
        return rl.Rect(x - 2.3, y - 2.3, 4.6, 4.6, fillColor=c, strokeColor=c)
    return rl.Polygon([x, y + 3, x - 2.8, y - 2, x + 2.8, y - 2], fillColor=c, strokeColor=c)


def _forest(doc: _Doc, data: dict):
    """The interim estimate with its 95% CI and its repeated CI at the boundary (estimate ± boundary
    × SE: it excludes 0 exactly when the boundary is crossed), against no effect."""
    rl = _rl()
    a = data["analysis"]
    est = a["estimate"]
    rows = [(doc._(N_("95% CI")), a["ci_low"], a["ci_high"])]
    if data.get("repeated_ci"):
        rows.append((doc._(N_("CI at the boundary")), *data["repeated_ci"]))
    lo = min(0.0, *[r[1] for r in rows])
    hi = max(0.0, *[r[2] for r in rows])
    pad = (hi - lo) * 0.1 or 1.0
    lo, hi = lo - pad, hi + pad
    h, left, right = 40.0 + 26 * len(rows), 130.0, 20.0
    d = rl.Drawing(W, h)
    pw = W - left - right

    def x(v):
        return left + pw * (v - lo) / (hi - lo)
    d.add(rl.Line(x(0), 14, x(0), h - 12, strokeDashArray=[2, 2], strokeWidth=0.6))  # (below the z line)
    d.add(_text(doc, x(0), 4, doc._(N_("no effect")), size=6.5, anchor="middle"))
    for i, (label, l, u) in enumerate(rows):
        yy = h - 20 - 26 * i
        d.add(_text(doc, 4, yy - 2, label))
        d.add(rl.Line(x(l), yy, x(u), yy, strokeWidth=1.2))
        d.add(rl.Line(x(l), yy - 3, x(l), yy + 3, strokeWidth=1.2))
        d.add(rl.Line(x(u), yy - 3, x(u), yy + 3, strokeWidth=1.2))
        d.add(rl.Circle(x(est), yy, 2.8, fillColor=None))
        d.add(_text(doc, x(u) + 4 if x(u) < W - 60 else x(l) - 4, yy - 2, f"{l:.2f} – {u:.2f}", size=6.5,
                    anchor="start" if x(u) < W - 60 else "end"))
    bound = ""
    if data.get("boundary_z"):  # the same words as the table's: the boundary, and whether it was crossed
        bound = "; " + (doc._(N_("Boundary (|z|)")) if data.get("sides", 2) == 2 else
                        doc._(N_("Boundary (z in the direction of benefit)"))) + f" {data['boundary_z']:.2f}; " + \
            doc._(N_("Boundary crossed")) + ": " + _crossed(doc, data)
    d.add(_text(doc, W - right, h - 8, f"z = {data['z']:.2f}" + bound, size=7, anchor="end"))
    return d
