"""The intervention as received (issue 31): the complier-average causal effect and the dose-response
by two-stage least squares (trial.analysis.causal), on a simulated TIME-A trial with a known truth
(tests/sap_sim.py): equal to AER::ivreg to 1e-6 (estimate, standard error, p, interval, first-stage
F), the known complier effect inside the interval, no estimate (and why) in a blinded bundle or when
the instrument does not move the receipt."""
from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import re
import shutil
import subprocess

import numpy as np
import pytest

from tests.sap_sim import CONTENT, Truth, simulate
from trial.analysis import causal
from trial.analysis.data import analysis_data
from trial.analysis.missingdata import primary_outcome

needs_r = pytest.mark.skipif(shutil.which("Rscript") is None, reason="R is not installed (AER is needed)")
SAP = CONTENT["analysis"]


@pytest.fixture(scope="module")
def d600():
    return analysis_data(CONTENT, simulate(600, seed=11), blinded=False)


def estimand_month5(d) -> list:
    """The 5-month social affect score under TIME-A's estimand, recomputed from the ADSL's exit
    columns (not the module's code): after a death (composite) the worst score, 20; after a
    withdrawal (hypothetical) none; as observed otherwise. A visit is after the exit when it was
    performed, or (not performed) due, after the exit day."""
    y = list(d.value("ados2", "social_affect", "month5"))
    done = d.performed("ados2", "month5")
    for i, (why, when) in enumerate(zip(d.column("exitrsn"), d.column("exitdt"))):
        if why not in ("died", "withdrawn"):
            continue
        day = done[i] or d.randdt[i] + dt.timedelta(days=152)
        if day > dt.date.fromisoformat(when):
            y[i] = 20 if why == "died" else None
    return y


def _complete(d):
    """The children the instrumental-variable fits use, as a dict of columns (recomputed here from
    the ADSL, not from the module's own selection)."""
    base = d.value("ados2", "social_affect", "baseline")
    y = estimand_month5(d)
    rows = [i for i in range(d.n) if d.arm[i] in ("usual", "low", "high") and y[i] is not None and base[i] is not None]
    return {"y": [y[i] for i in rows], "baseline": [base[i] for i in rows], "site": [d.factors["site"][i] for i in rows],
            "arm": [d.arm[i] for i in rows], "sessatt": [d.sessatt[i] or 0 for i in rows]}


def _ivreg(tmp_path, data: dict, formula: str) -> dict:
    """AER::ivreg's coefficient of the first regressor after the intercept: estimate, se, df, p, the
    95% interval with the t quantile and the first stage's weak-instrument F."""
    csv = tmp_path / "iv.csv"
    cols = list(data)
    csv.write_text(",".join(cols) + "\n" + "".join(",".join(repr(data[c][i]) if not isinstance(data[c][i], str)
                                                            else data[c][i] for c in cols) + "\n"
                                                   for i in range(len(data[cols[0]]))))
    script = tmp_path / "iv.R"
    script.write_text(f"""suppressMessages(library(AER))
x <- read.csv("{csv}"); x$site <- factor(x$site)
x$received <- as.numeric(x$sessatt >= 1 & x$arm != "usual"); x$treated <- as.numeric(x$arm != "usual")
x$low <- as.numeric(x$arm == "low"); x$high <- as.numeric(x$arm == "high")
fit <- ivreg({formula}, data = x)
s <- summary(fit, diagnostics = TRUE)
co <- s$coefficients[2, ]; df <- fit$df.residual; q <- qt(0.975, df)
cat(sprintf("%.17g", c(co[1], co[2], df, co[4], co[1] - q * co[2], co[1] + q * co[2],
                       s$diagnostics["Weak instruments", "statistic"], nobs(fit))), "\\n")
""")
    out = subprocess.run(["Rscript", str(script)], check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    v = [float(x) for x in out.stdout.split()]
    return dict(zip(["estimate", "se", "df", "p_value", "ci_low", "ci_high", "f", "n"], v))


@needs_r
def test_cace_equals_aer_ivreg(d600, tmp_path):
    got = causal.cace(d600, SAP)
    data = _complete(d600)
    r = _ivreg(tmp_path, data, "y ~ received + baseline + site | treated + baseline + site")
    assert got["n"] == r["n"] == len(data["y"])
    assert got["df"] == r["df"]
    for k in ("estimate", "se", "ci_low", "ci_high"):
        assert got[k] == pytest.approx(r[k], abs=1e-6, rel=1e-6), k
    assert got["p_value"] == pytest.approx(r["p_value"], rel=1e-6, abs=1e-12)
    assert got["details"]["first_stage_f"] == pytest.approx(r["f"], rel=1e-6)


@needs_r
def test_dose_response_equals_aer_ivreg_per_ten_sessions(d600, tmp_path):
    got = causal.dose_response(d600, SAP)
    r = _ivreg(tmp_path, _complete(d600), "y ~ sessatt + baseline + site | low + high + baseline + site")
    assert got["n"] == r["n"]
    assert got["estimate"] == pytest.approx(10 * r["estimate"], abs=1e-6, rel=1e-6)
    assert got["se"] == pytest.approx(10 * r["se"], abs=1e-6, rel=1e-6)
    assert got["ci_low"] == pytest.approx(10 * r["ci_low"], abs=1e-6, rel=1e-6)
    assert got["p_value"] == pytest.approx(r["p_value"], rel=1e-6, abs=1e-12)
    assert got["details"]["first_stage_f"] == pytest.approx(r["f"], rel=1e-6)
    assert "per 10 sessions" in got["method"] and got["details"]["per_sessions"] == 10


def test_the_known_complier_effect_is_inside_the_interval():
    truth = Truth()
    for seed in (11, 12):
        d = analysis_data(CONTENT, simulate(600, seed=seed, truth=truth), blinded=False)
        got = causal.cace(d, SAP)
        assert got["ci_low"] < truth.cace_pooled() < got["ci_high"], (seed, got)
        # the intention-to-treat effect is diluted by the never-takers: the CACE is further from zero
        assert got["estimate"] < truth.itt_pooled() + 0.5
        assert got["details"]["received_share_pooled_arms"] == pytest.approx(1 - truth.never_share, abs=0.06)


def test_entries_have_the_contract_keys(d600):
    for entry in (causal.cace(d600, SAP), causal.dose_response(d600, SAP)):
        assert {"key", "label", "estimate", "ci_low", "ci_high", "p_value", "n", "method", "software", "se",
                "df"} <= set(entry)
        assert entry["ci_low"] < entry["estimate"] < entry["ci_high"]
        assert "AER::ivreg" in entry["method"] and "NumPy" in entry["software"]
    assert causal.cace(d600, SAP)["key"] == "cace" and causal.dose_response(d600, SAP)["key"] == "dose_response"


def test_a_blinded_bundle_has_no_estimate_and_says_why():
    d = analysis_data(CONTENT, simulate(600, seed=11, blinded=True), blinded=True)
    assert d.sessatt is None
    for entry in (causal.cace(d, SAP), causal.dose_response(d, SAP)):
        assert entry["estimate"] is None and entry["ci_low"] is None and entry["p_value"] is None
        assert "blinded bundle has no sessions attended" in entry["note"]
        assert entry["n"] > 0


def test_no_session_attended_is_not_estimable(d600):
    nobody = dataclasses.replace(d600, sessatt=[0] * d600.n)
    for entry in (causal.cace(nobody, SAP), causal.dose_response(nobody, SAP)):
        assert entry["estimate"] is None and "se" not in entry
        assert entry["note"].startswith("Not estimable from these data: the instruments do not move")


def test_children_without_the_outcome_or_the_baseline_are_left_out(d600):
    o = primary_outcome(d600, SAP)
    assert causal.cace(d600, SAP)["n"] == int((~np.isnan(o.y) & ~np.isnan(o.baseline)).sum()) < d600.n
    # a sessions count missing (None) is no session: the same as 0
    unknown = dataclasses.replace(d600, sessatt=[None if a == "usual" else s for a, s in zip(d600.arm, d600.sessatt)])
    assert causal.cace(unknown, SAP)["estimate"] == causal.cace(d600, SAP)["estimate"]


def with_exit(d, children: list[int], why: str, days_after_randomization: int):
    """``d`` (a fresh one: changed in place) with the children leaving the trial (``why``: died,
    withdrawn) that many days after randomization: the status event and the ADSL's exit columns."""
    for i in children:
        day = d.randdt[i] + dt.timedelta(days=days_after_randomization)
        d.events[d.studyid[i]] = sorted([*d.events.get(d.studyid[i], []), (why, day)], key=lambda e: e[1])
        d.column("exitrsn")[i], d.column("exitdt")[i] = why, day.isoformat()
    return d


def test_the_estimand_applies_a_death_counts_as_the_worst_value():
    """Death is 'composite' in TIME-A's estimand: a child who died before 5 months has the worst
    social affect score (20) and is in the fit, even with a value entered later; as 'hypothetical'
    the child is left out."""
    d = analysis_data(CONTENT, simulate(600, seed=11), blinded=False)
    y5, base = d.value("ados2", "social_affect", "month5"), d.value("ados2", "social_affect", "baseline")
    observed = [i for i in range(d.n) if y5[i] is not None and base[i] is not None and d.column("exitrsn")[i] is None]
    missing = [i for i in range(d.n) if y5[i] is None and base[i] is not None and d.column("exitrsn")[i] is None]
    with_exit(d, observed[:3] + missing[:4], "died", 100)
    with_exit(d, missing[4:6], "died", 200)  # after the 5-month visit was due (and closed): no strategy applies
    assert [estimand_month5(d)[i] for i in observed[:3] + missing[:6]] == [20] * 7 + [None] * 2
    with_death = causal.cace(d, SAP)
    sap = copy.deepcopy(SAP)
    for e in sap["estimand"]["intercurrent_events"]:
        if e["event"] == "death":
            e["strategy"] = "hypothetical"
    without = causal.cace(d, sap)
    assert with_death["n"] - without["n"] == 7
    applied = {e["event"]: e for e in with_death["details"]["intercurrent_events"]}
    assert applied["death"]["strategy"] == "composite" and applied["death"]["children"] >= 7
    assert with_death["estimate"] != without["estimate"]


@needs_r
def test_the_estimand_applied_equals_aer_on_the_recomputed_outcome(tmp_path):
    d = analysis_data(CONTENT, simulate(600, seed=11), blinded=False)
    y5 = d.value("ados2", "social_affect", "month5")
    alive = [i for i in range(d.n) if y5[i] is not None and d.column("exitrsn")[i] is None]
    with_exit(d, alive[:5], "died", 90)
    with_exit(d, alive[5:12], "withdrawn", 120)
    got = causal.cace(d, SAP)
    r = _ivreg(tmp_path, _complete(d), "y ~ received + baseline + site | treated + baseline + site")
    assert got["n"] == r["n"]
    assert got["estimate"] == pytest.approx(r["estimate"], abs=1e-6, rel=1e-6)
    assert got["se"] == pytest.approx(r["se"], abs=1e-6, rel=1e-6)


def test_outcome_names_in_method_match_the_protocol(d600):
    entry = causal.cace(d600, SAP)
    assert "Social affect" in entry["method"] and "site" in entry["method"]
    assert re.search(r"at least one session", entry["method"])
