"""The estimand of the primary outcome (ICH E9(R1)) applied to the analysis data before the models.

Each intercurrent event the protocol's ``[analysis.estimand]`` names has a strategy
(trial.protocol.schema.IntercurrentEvent), applied to the primary outcome at the analysis visits:

- ``treatment_policy``: the values as observed, whatever happened (an event the estimand does not
  name is handled so too);
- ``hypothetical``: the values after the event's day are set aside (missing: the mixed model and the
  multiple imputation take them as missing at random given the earlier values);
- ``while_on_treatment``: the child's last value before the event's day stands for every analysis
  visit after it (none: those values are set aside);
- ``composite``: the event is itself an unfavourable outcome: the worst value of the outcome's range
  (the field's min or max in the protocol, by the direction of benefit: sap_settings' ``benefit``)
  at every analysis visit after the event.

A visit is after the event when it was performed after the event's day, or, not performed, when its
target day (randomization + the visit's day) is after it; the last value before the event is that of
a visit before its day. A child with several events: at a visit after more than one, composite
decides before hypothetical before while on treatment (``PRECEDENCE``, the rule of
trial.analysis.missingdata, which applies the same strategies at the primary visit for its analyses). A blinded bundle does not show the events that
tell a therapy arm (discontinued intervention, not received): their strategy cannot apply there, and
the estimand says so. Plain functions: no Flask, no database.
"""
from __future__ import annotations

import dataclasses
import datetime as dt

from trial.analysis.data import AnalysisData

# a child with several events: at a visit after more than one, the strategy first here decides (as
# trial.analysis.missingdata decides at the primary visit); applied in the reverse order, each
# overwriting what the ones before it left
PRECEDENCE = {"composite": 0, "hypothetical": 1, "while_on_treatment": 2, "treatment_policy": 3}
# the intercurrent events a blinded bundle cannot show (they tell a therapy arm)
UNBLINDED_ONLY = ("discontinued_intervention", "not_received")

HOW = {
    "treatment_policy": "the values as observed",
    "hypothetical": "the values after the event set aside (missing at random given the earlier values)",
    "while_on_treatment": "the last value before the event's day carried to the analysis visits after it",
    "composite": "the worst value of the outcome's range ({worst}) at the analysis visits after the event",
}


def worst_value(content: dict, benefit: str) -> float | None:
    """The primary outcome's worst value: its field's max when lower is better, its min when higher
    is (``benefit``: trial.analysis.sap.sap_settings' direction of benefit); None when the protocol
    gives the field no such bound."""
    prim = content["primary_outcome"]
    ins = next(i for i in content["instruments"] if i["key"] == prim["instrument"])
    fld = next(f for f in ins["fields"] if f["key"] == prim["field"])
    return fld.get("min") if benefit == "higher" else fld.get("max")


def visit_days(d: AnalysisData, instrument: str, visits: list[str]) -> dict[str, list[dt.date | None]]:
    """Each child's day of each visit: the day performed, else the target day after randomization."""
    target = {v["key"]: v["day"] for v in d.content["visits"]}
    out = {}
    for v in visits:
        done = d.performed(instrument, v) if (instrument, v, "dt") in d._by_visit else [None] * d.n
        out[v] = [p if p is not None else (r + dt.timedelta(days=target[v]) if r is not None else None)
                  for p, r in zip(done, d.randdt)]
    return out


def apply_strategy(strategy: str, values: dict[str, list], days: dict[str, list], event_day: list,
                   worst: float | None) -> int:
    """Apply one strategy in place to ``values`` (visit -> a value per child, the visits in order);
    returns how many values it changed."""
    if strategy == "treatment_policy" or (strategy == "composite" and worst is None):
        return 0
    changed = 0
    for i, day in enumerate(event_day):
        if day is None:
            continue
        last = None
        for v, ys in values.items():
            when = days[v][i]
            if when is None or when <= day:  # not after the event (a value of its very day stays)
                last = ys[i] if ys[i] is not None and when is not None and when < day else last
                continue
            new = None if strategy == "hypothetical" else last if strategy == "while_on_treatment" else worst
            if new != ys[i]:
                ys[i] = new
                changed += 1
    return changed


def apply_estimand(d: AnalysisData, sap: dict) -> tuple[AnalysisData, dict | None]:
    """The data with the estimand's strategies applied to the primary outcome at the analysis visits
    (the other columns as they were), and the estimand in words for results.json: population,
    variable, summary measure and, for each intercurrent event, its strategy, the children it applied
    to and how (None when the SAP declares no estimand: every event then under treatment policy)."""
    estimand = sap.get("estimand")
    if not estimand:
        return d, None
    prim = d.content["primary_outcome"]
    ins, fld = prim["instrument"], prim["field"]
    visits = [v for v in sap["visits"] if d.has(ins, fld, v)]
    values = {v: list(d.value(ins, fld, v)) for v in visits}
    days = visit_days(d, ins, visits)
    worst = worst_value(d.content, sap.get("benefit") or "lower")
    listed = estimand.get("intercurrent_events") or []
    done = {ev["event"]: _apply_event(d, ev, values, days, worst)
            for ev in sorted(listed, key=lambda ev: -PRECEDENCE.get(ev["strategy"], 99))}
    events = [done[ev["event"]] for ev in listed]
    named = {e["event"] for e in events}
    for event in ("discontinued_intervention", "withdrawal", "not_received", "death"):
        if event not in named:
            events.append({"event": event, "strategy": "treatment_policy", "children": _count(d, event),
                           "values_changed": 0, "how": "not named by the estimand: " + HOW["treatment_policy"]})
    cols = {**d._col, **{d._by_field[(ins, fld, v)]: values[v] for v in visits}}
    out = {"population": estimand.get("population"), "variable": estimand.get("variable"),
           "summary_measure": estimand.get("summary_measure"), "intercurrent_events": events}
    return dataclasses.replace(d, _col=cols), out


def _count(d: AnalysisData, event: str) -> int | None:
    if d.blinded and event in UNBLINDED_ONLY:
        return None
    return sum(x is not None for x in d.event_day(event))


def _apply_event(d: AnalysisData, ev: dict, values: dict, days: dict, worst: float | None) -> dict:
    event, strategy = ev["event"], ev["strategy"]
    out = {"event": event, "strategy": strategy, **({"rationale": ev["rationale"]} if ev.get("rationale") else {})}
    how = HOW[strategy].format(worst=worst)
    if d.blinded and event in UNBLINDED_ONLY and strategy == "treatment_policy":
        return {**out, "children": None, "values_changed": None,
                "how": f"{how} (a blinded bundle does not show this event, which would tell the arm; the strategy "
                       "needs no record of it)"}
    if d.blinded and event in UNBLINDED_ONLY:
        return {**out, "children": None, "values_changed": None,
                "how": f"{how}; NOT applied here: a blinded bundle does not show this event (it would tell the "
                       "arm), so the strategy applies in the unblinded bundle only"}
    if strategy == "composite" and worst is None:
        how = "NOT applied: the protocol gives the outcome's field no bound, so there is no worst value"
    day = d.event_day(event)
    changed = apply_strategy(strategy, values, days, day, worst)
    return {**out, "children": sum(x is not None for x in day), "values_changed": changed, "how": how}
