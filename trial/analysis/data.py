"""The data every analysis of the SAP reads, taken from a lock's tables (no database): the analysis
dataset (ADSL, one row per randomized child) and the status events. The same code reads a blinded
bundle (the dummy allocation, no delivered intervention) and an unblinded one.

Columns are lists in ADSL order (the children by study id), ``None`` where a value is missing. The
arm is a code of the variable ``arm`` (the dummy codes in a blinded bundle); ``arms`` lists the
codes with the reference first, as the bundle's loading scripts order the levels.
"""
from __future__ import annotations

import dataclasses
import datetime as dt

from trial.analysis.service import adjust_column, analysis_spec, arms_for

# the intercurrent events of an estimand (trial.protocol.schema.INTERCURRENT_EVENTS) and the status
# events that record them (a blinded bundle has none of the two that tell a therapy arm)
EVENT_TYPES = {"discontinued_intervention": "discontinued_intervention", "withdrawal": "withdrawn",
               "not_received": "not_received", "death": "died"}


@dataclasses.dataclass
class AnalysisData:
    content: dict                 # the protocol in force at the lock (normalised)
    spec: dict                    # trial.analysis.service.analysis_spec: [analysis] with the outcome's ADSL variables
    blinded: bool
    arm_name: str                 # the ADSL variable of the arm
    reference: str                # the reference arm's code
    pooled: list[str]             # the codes pooled against the reference in the primary analysis
    others: list[str]             # every other arm's code
    arms: list[str]               # every code, the reference first
    labels: dict[str, str]        # each code's label
    studyid: list[str]
    arm: list[str]
    site: list[str]
    factors: dict[str, list]      # each randomization factor as corrected (the analysis adjusts for these)
    randdt: list[dt.date | None]  # the day of randomization (the site's calendar)
    primfl: list[int]
    ppfl: list[int] | None        # unblinded only (None in a blinded bundle)
    sessatt: list[int | None] | None  # sessions attended in the course (unblinded only)
    sessplan: list[int | None] | None  # sessions the course plans for the child's arm (unblinded only)
    dose: list[float | None] | None   # sessatt / sessplan, None for the reference arm (unblinded only)
    events: dict[str, list[tuple[str, dt.date]]]  # each child's status events (type, day), in date order
    _col: dict[str, list]         # every ADSL column by name
    _by_field: dict[tuple[str, str, str], str]  # (instrument, field, visit) -> ADSL variable
    _by_visit: dict[tuple[str, str, str], str]  # (instrument, visit, "dt"|"ow"|"nr") -> ADSL variable

    @property
    def n(self) -> int:
        return len(self.studyid)

    def column(self, name: str) -> list:
        return self._col[name]

    def value(self, instrument: str, field: str, visit: str) -> list[float | None]:
        """A numeric field of an instrument at a visit, one value per child."""
        return self._col[self._by_field[(instrument, field, visit)]]

    def has(self, instrument: str, field: str, visit: str) -> bool:
        return (instrument, field, visit) in self._by_field

    def performed(self, instrument: str, visit: str) -> list[dt.date | None]:
        return [_day(x) for x in self._col[self._by_visit[(instrument, visit, "dt")]]]

    def out_of_window(self, instrument: str, visit: str) -> list[int | None]:
        return self._col[self._by_visit[(instrument, visit, "ow")]]

    def not_done(self, instrument: str, visit: str) -> list[str | None]:
        """The protocol's missing reason (key) of a form recorded as not done, else None."""
        return self._col[self._by_visit[(instrument, visit, "nr")]]

    def event_day(self, event: str) -> list[dt.date | None]:
        """The first day of an intercurrent event (trial.protocol.schema.INTERCURRENT_EVENTS) for each
        child, None when it did not happen (or the bundle cannot show it: blinded)."""
        kind = EVENT_TYPES[event]
        return [next((d for t, d in self.events.get(s, []) if t == kind), None) for s in self.studyid]

    def long(self, instrument: str, field: str, visits: list[str], adjust: list[str] | None = None,
             keep=None, values: dict[str, list] | None = None) -> dict[str, list]:
        """The long data of a mixed model (trial.analysis.lmm.fit): one row per child and visit, the
        children in ADSL order, each child's visits in the given order. ``keep``: a flag per child
        (those false are left out); ``values``: the outcome at each visit to use instead of the
        observed one (an estimand's strategy, an imputation)."""
        adjust = self.spec["adjust"] if adjust is None else adjust
        ys = {v: (values or {}).get(v) or self.value(instrument, field, v) for v in visits}
        rows = [i for i in range(self.n) if keep is None or keep[i]]
        out = {"studyid": [self.studyid[i] for i in rows for _ in visits], "visit": visits * len(rows),
               "arm": [self.arm[i] for i in rows for _ in visits],
               "y": [ys[v][i] for i in rows for v in visits]}
        for f in adjust:
            out[f] = [self.factors[f][i] for i in rows for _ in visits]
        return out


def _day(x) -> dt.date | None:
    if x is None or x == "":
        return None
    return x if isinstance(x, dt.date) else dt.date.fromisoformat(str(x)[:10])


def analysis_data(content: dict, tables: dict, blinded: bool) -> AnalysisData:
    """The analyses' data from a lock's tables (``tables``: name -> trial.exports.dataset.Table; the
    ADSL at least, the status events when there)."""
    adsl = tables["adsl"]
    names = [v.name for v in adsl.vars]
    cols = {n: [r[i] for r in adsl.rows] for i, n in enumerate(names)}
    spec = analysis_spec(content, adsl.vars)
    ref, pooled, others, labels = arms_for(content, blinded, adsl.meta.get("dummy_weights"))
    arm_name = "arm"  # in both bundles
    by_field, by_visit = {}, {}
    for v in adsl.vars:
        if v.instrument and v.visit and v.field:
            by_field[(v.instrument, v.field, v.visit)] = v.name
        elif v.instrument and v.visit:
            kind = "dt" if v.type == "date" else "ow" if v.type == "int" else "nr"
            by_visit[(v.instrument, v.visit, kind)] = v.name
    factors = {f["key"]: cols[adjust_column(f["key"])] for f in content["randomization"]["factors"]
               if adjust_column(f["key"]) in cols}
    events: dict[str, list] = {}
    if "events" in tables:
        ev = tables["events"]
        at = {v.name: i for i, v in enumerate(ev.vars)}
        for r in ev.rows:
            if (day := _day(r[at["evdt"]])) is not None:
                events.setdefault(r[at["studyid"]], []).append((r[at["evtype"]], day))
        for lst in events.values():
            lst.sort(key=lambda e: e[1])
    unblinded = lambda name: cols.get(name) if not blinded else None
    return AnalysisData(
        content=content, spec=spec, blinded=blinded, arm_name=arm_name, reference=ref, pooled=list(pooled),
        others=list(others), arms=[ref, *others],  # the level order (trial.analysis.service.arm_levels)
        labels=labels, studyid=cols["studyid"], arm=cols[arm_name], site=cols["site"], factors=factors,
        randdt=[_day(x) for x in cols["randdt"]], primfl=cols["primfl"], ppfl=unblinded("ppfl"),
        sessatt=unblinded("sessatt"), sessplan=unblinded("sessplan"), dose=unblinded("dose"), events=events,
        _col=cols, _by_field=by_field, _by_visit=by_visit)

