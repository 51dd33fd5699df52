"""The SAP's analyses read a lock's tables through trial.analysis.data: the columns they get are the
ADSL's, by the protocol's instrument, field and visit; the blinded variant has no delivered
intervention; the intercurrent events' days come from the status events."""
from __future__ import annotations

import datetime as dt

from tests.sap_sim import CONTENT, simulate
from trial.analysis.data import analysis_data


def _column(table, name):
    at = [v.name for v in table.vars].index(name)
    return [r[at] for r in table.rows]


def test_the_outcomes_are_read_by_instrument_field_and_visit():
    tables = simulate(n=60, seed=3)
    d = analysis_data(CONTENT, tables, blinded=False)
    adsl = tables["adsl"]
    var = next(v for v in adsl.vars if (v.instrument, v.field, v.visit) == ("ados2", "social_affect", "month5"))
    assert d.value("ados2", "social_affect", "month5") == _column(adsl, var.name)
    assert d.n == 60 and d.studyid == _column(adsl, "studyid")
    # the form's date, window flag and not-done reason, each from its own column
    nr = next(v for v in adsl.vars if v.instrument == "ados2" and v.visit == "month5" and not v.field and v.type == "str")
    assert d.not_done("ados2", "month5") == _column(adsl, nr.name)
    got = [x for x in d.performed("ados2", "month5") if x is not None]
    assert got and all(isinstance(x, dt.date) for x in got)
    assert not d.has("ados2", "social_affect", "screening")


def test_the_reference_arm_comes_first_and_the_blinded_variant_has_no_intervention_data():
    d = analysis_data(CONTENT, simulate(n=40, seed=4), blinded=False)
    assert d.arms == ["usual", "low", "high"] and d.reference == "usual" and d.pooled == ["low", "high"]
    assert d.sessatt is not None and d.dose is not None and d.ppfl is not None
    b = analysis_data(CONTENT, simulate(n=40, seed=4, blinded=True), blinded=True)
    assert b.arms[0] == b.reference and set(b.arms) == {"A", "B", "C"}
    assert b.sessatt is None and b.dose is None and b.ppfl is None and b.sessplan is None
    assert all(label.startswith("Dummy arm") for label in b.labels.values())


def test_each_intercurrent_event_has_its_first_day():
    tables = simulate(n=400, seed=5)
    d = analysis_data(CONTENT, tables, blinded=False)
    ev = tables["events"]
    for event, kind in (("death", "died"), ("withdrawal", "withdrawn"), ("not_received", "not_received")):
        expected = {}
        for sid, t, day, _ in ev.rows:
            if t == kind:
                expected.setdefault(sid, dt.date.fromisoformat(day))
        got = {s: x for s, x in zip(d.studyid, d.event_day(event)) if x is not None}
        assert got == expected
    assert all(x is None for x in d.event_day("discontinued_intervention"))  # none in this trial


def test_the_long_form_keeps_the_children_and_visits_in_order_and_takes_replacement_values():
    d = analysis_data(CONTENT, simulate(n=20, seed=6), blinded=False)
    visits = ["baseline", "month2", "month5"]
    keep = [i % 2 == 0 for i in range(d.n)]
    long = d.long("ados2", "social_affect", visits, keep=keep)
    assert long["visit"] == visits * 10 and long["studyid"][:3] == [d.studyid[0]] * 3
    assert long["site"] == [d.factors["site"][i] for i in range(0, 20, 2) for _ in visits]
    swapped = d.long("ados2", "social_affect", visits, values={"month5": [99.0] * d.n})
    assert swapped["y"][2::3] == [99.0] * d.n
    assert swapped["y"][0::3] == d.value("ados2", "social_affect", "baseline")
