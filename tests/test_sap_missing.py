"""Missing data of the primary outcome (issue 31; trial.analysis.missingdata) on a simulated TIME-A
trial (tests/sap_sim.py): multiple imputation reproducible with its seed and, within Monte-Carlo
error, equal to mice's "norm" imputation by arm pooled by mice::pool; Rubin's rules equal to
mice::pool on the same completed data sets (1e-8); the tipping point monotone, its delta the first
crossing of the grid, null with the reason when there is nothing to overturn; the missingness table
equal to a recount of the ADSL."""
from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import itertools
import math
import shutil
import subprocess

import numpy as np
import pytest

from tests.sap_sim import CONTENT, Truth, simulate
from tests.test_sap_causal import estimand_month5, with_exit
from trial.analysis import missingdata as md
from trial.analysis.data import analysis_data

needs_r = pytest.mark.skipif(shutil.which("Rscript") is None, reason="R is not installed (mice is needed)")
SAP = CONTENT["analysis"]


@pytest.fixture(scope="module")
def d600():
    return analysis_data(CONTENT, simulate(600, seed=11), blinded=False)


def _sap(**changes) -> dict:
    sap = copy.deepcopy(SAP)
    sap.update(changes)
    return sap


def _rscript(tmp_path, body: str) -> list[float]:
    script = tmp_path / "run.R"
    script.write_text(body)
    out = subprocess.run(["Rscript", str(script)], check=False, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return [float(x) for x in out.stdout.split()]


def _write(path, cols: dict) -> None:
    names = list(cols)
    lines = [",".join(names)]
    for i in range(len(cols[names[0]])):
        lines.append(",".join("NA" if (v := cols[c][i]) is None or (isinstance(v, float) and math.isnan(v))
                              else v if isinstance(v, str) else repr(float(v)) for c in names))
    path.write_text("\n".join(lines) + "\n")


# --- multiple imputation ------------------------------------------------------------------------

def test_the_same_seed_gives_the_same_digits(d600):
    a, b = md.multiple_imputation(d600, SAP), md.multiple_imputation(d600, SAP)
    assert a == b
    assert a["details"]["seed"] == SAP["mi"]["seed"] and a["details"]["imputations"] == SAP["mi"]["imputations"]
    assert str(SAP["mi"]["seed"]) in a["method"]
    other = md.multiple_imputation(d600, _sap(mi={"imputations": 20, "seed": 7}))
    assert other["estimate"] != a["estimate"] and other["details"]["seed"] == 7
    assert abs(other["estimate"] - a["estimate"]) < 0.1  # the same data: Monte-Carlo noise only


def test_the_entry_and_its_imputations(d600):
    got = md.multiple_imputation(d600, SAP)
    assert got["key"] == "mi" and got["n"] == d600.n  # every child of the three arms, as randomized
    assert got["ci_low"] < got["estimate"] < got["ci_high"] and got["p_value"] < 0.05
    missing = sum(1 for y in estimand_month5(d600) if y is None)
    assert got["details"]["imputed"] == missing and got["details"]["observed"] == d600.n - missing
    assert sum(got["details"]["imputed_by_arm"].values()) == missing
    r = got["details"]["rubin"]
    assert r["m"] == 20 and r["t"] == pytest.approx(r["ubar"] + (1 + 1 / 20) * r["b"]) and got["se"] == pytest.approx(math.sqrt(r["t"]))
    assert 0 < r["lambda"] < 1 and r["dfcom"] == d600.n - 8  # intercept, treatment, baseline, 5 sites
    # the ITT truth is well inside a 600-child trial's interval
    assert got["ci_low"] < Truth().itt_pooled() < got["ci_high"]


def test_imputations_keep_the_observed_values_and_draw_by_arm(d600):
    o = md.primary_outcome(d600, SAP)
    c = md.impute(o, 5, 3)
    seen = ~np.isnan(o.y)
    assert (c.y[:, seen] == o.y[seen]).all() and not np.isnan(c.y).any()
    assert (c.y[0, ~seen] != c.y[1, ~seen]).all()  # each imputation draws its own values
    assert (c.imputed == ~seen).all() and not c.baseline_imputed.any()


def test_no_missing_outcome_gives_the_complete_data_ancova(d600):
    """Nothing to impute: every completed data set is the data; the estimate is the ANCOVA's, the
    between-imputation variance 0 (mice's lambda floor of 1e-4 then sets the df)."""
    o = md.primary_outcome(d600, SAP)
    keep = ~np.isnan(o.y)
    full = dataclasses.replace(o, y=o.y[keep], baseline=o.baseline[keep], treated=o.treated[keep], arm=o.arm[keep],
                               rows=o.rows[keep], factors={k: v[keep] for k, v in o.factors.items()})
    c = md.impute(full, 4, 1)
    est, var, dfcom = md.ancova_completed(full, c, np.zeros(len(full.y)), np.zeros(1))
    x = np.column_stack([np.ones(len(full.y)), full.treated, full.baseline, full.factor_columns()])
    beta, rss, *_ = np.linalg.lstsq(x, full.y, rcond=None)
    assert np.allclose(est[:, 0], beta[1], atol=1e-10)
    assert np.allclose(var[:, 0], rss[0] / dfcom * np.linalg.inv(x.T @ x)[1, 1], rtol=1e-9)
    r = md.rubin(est[:, 0], var[:, 0], dfcom)
    assert r["b"] == pytest.approx(0, abs=1e-20) and r["lambda"] == pytest.approx(0, abs=1e-12)
    assert r["df"] == pytest.approx((3 / 1e-8) * (dfcom + 1) / (dfcom + 3) * dfcom * (1 - 1e-4)
                                    / (3 / 1e-8 + (dfcom + 1) / (dfcom + 3) * dfcom * (1 - 1e-4)))


def _blank_baselines(tables, share_rows: list[int]):
    adsl = tables["adsl"]
    at = [v.name for v in adsl.vars].index("asoc_bl")
    adsl.rows = [tuple(None if (k == at and i in share_rows) else x for k, x in enumerate(r))
                 for i, r in enumerate(adsl.rows)]
    return tables


def test_missing_baselines_are_drawn_first(d600):
    tables = simulate(600, seed=11)
    d = analysis_data(CONTENT, _blank_baselines(tables, set(range(0, 600, 7))), blinded=False)
    got = md.multiple_imputation(d, SAP)
    assert got["details"]["baseline_imputed"] == len(range(0, 600, 7))
    assert got["estimate"] is not None and got["ci_low"] < got["estimate"] < got["ci_high"]
    o = md.primary_outcome(d, SAP)
    c = md.impute(o, 3, 5)
    assert not np.isnan(c.baseline).any() and not np.isnan(c.y).any()
    seen = ~np.isnan(o.baseline)
    assert (c.baseline[:, seen] == o.baseline[seen]).all()
    assert abs(got["estimate"] - md.multiple_imputation(d600, SAP)["estimate"]) < 0.25
    assert md.multiple_imputation(d, SAP) == got  # reproducible with drawn baselines too


def test_too_few_children_say_so_in_words(d600):
    few = analysis_data(CONTENT, simulate(12, seed=3), blinded=False)
    for entry in (md.multiple_imputation(few, SAP), md.tipping_point(few, SAP)):
        assert entry["estimate"] is None
        assert entry["note"].startswith("Not estimable from these data: ")


MICE = """suppressMessages(library(mice))
x <- read.csv("{csv}"); x$site <- factor(x$site)
set.seed({seed})
done <- lapply(split(x, x$arm), function(a) {{
  imp <- mice(a[, c("y", "baseline", "site")], m = {m}, method = c("norm", "", ""), maxit = 1, printFlag = FALSE)
  lapply(seq_len({m}), function(j) cbind(complete(imp, j), treated = a$treated))
}})
fits <- lapply(seq_len({m}), function(j) {{
  dj <- do.call(rbind, lapply(done, function(a) a[[j]])); dj$site <- factor(dj$site, levels = levels(x$site))
  lm(y ~ treated + baseline + site, data = dj)
}})
s <- summary(pool(as.mira(fits)))
p <- pool(as.mira(fits))$pooled
cat(sprintf("%.17g", c(s$estimate[2], s$std.error[2], p$b[2], p$ubar[2])), "\\n")
"""


@needs_r
def test_against_mice_within_monte_carlo_error(d600, tmp_path):
    """mice's norm by arm and pool() against ours with 100 imputations each: the two pooled estimates
    differ by Monte-Carlo error only, whose SD is sqrt(B_ours / m + B_mice / m) (B: the between-
    imputation variance, about 0.005 here); allowed: 4 SDs (about 0.04, a fiftieth of the effect).
    The pooled standard errors (whose between part is itself estimated from m draws) within 10%."""
    m = 100
    o = md.primary_outcome(d600, SAP)
    _write(tmp_path / "x.csv", {"y": list(o.y), "baseline": list(o.baseline), "site": list(o.factors["site"]),
                                "arm": list(o.arm), "treated": list(o.treated)})
    r_est, r_se, r_b, _ = _rscript(tmp_path, MICE.format(csv=tmp_path / "x.csv", seed=2024, m=m))
    ours = md.multiple_imputation(d600, _sap(mi={"imputations": m, "seed": 99}))
    sd = math.sqrt(ours["details"]["rubin"]["b"] / m + r_b / m)
    assert 0.005 < 4 * sd < 0.06
    assert abs(ours["estimate"] - r_est) < 4 * sd, (ours["estimate"], r_est, sd)
    assert ours["se"] == pytest.approx(r_se, rel=0.10)


POOL = """suppressMessages(library(mice))
x <- read.csv("{csv}"); x$site <- factor(x$site)
fits <- lapply(split(x, x$imp), function(d) lm(y ~ treated + baseline + site, data = d))
p <- pool(as.mira(fits))$pooled[2, ]
s <- summary(pool(as.mira(fits)), conf.int = TRUE)[2, ]
cat(sprintf("%.17g", c(p$estimate, p$ubar, p$b, p$t, p$dfcom, p$df, p$riv, p$lambda, p$fmi, s$std.error,
                       s$p.value, s$`2.5 %`, s$`97.5 %`)), "\\n")
"""


@needs_r
def test_rubins_rules_equal_mice_pool_on_the_same_completed_data(d600, tmp_path):
    o = md.primary_outcome(d600, SAP)
    m = 7
    c = md.impute(o, m, 11)
    n = len(o.y)
    _write(tmp_path / "c.csv", {"imp": [j for j in range(m) for _ in range(n)], "y": list(c.y.ravel()),
                                "baseline": list(c.baseline.ravel()), "treated": list(o.treated) * m,
                                "site": list(o.factors["site"]) * m})
    r = dict(zip(["estimate", "ubar", "b", "t", "dfcom", "df", "riv", "lambda", "fmi", "se", "p_value", "ci_low",
                  "ci_high"], _rscript(tmp_path, POOL.format(csv=tmp_path / "c.csv"))))
    est, var, dfcom = md.ancova_completed(o, c, np.zeros(n), np.zeros(1))
    ours = md.rubin(est[:, 0], var[:, 0], dfcom)
    for k in ("estimate", "ubar", "b", "t", "dfcom", "df", "riv", "lambda", "fmi"):
        assert ours[k] == pytest.approx(r[k], rel=1e-8, abs=1e-12), k
    inf = md.t_inference(ours["estimate"], math.sqrt(ours["t"]), ours["df"], 0.05)
    for k in ("se", "p_value", "ci_low", "ci_high"):
        assert inf[k] == pytest.approx(r[k], rel=1e-8, abs=1e-12), k


# --- the tipping point --------------------------------------------------------------------------

def test_tipping_point_grid_is_monotone_and_starts_at_the_mi_result(d600):
    got = md.tipping_point(d600, SAP)
    mi = md.multiple_imputation(d600, SAP)
    grid = got["details"]["grid"]
    assert [g["delta"] for g in grid] == [float(x) for x in SAP["tipping_point"]["deltas"]]
    assert grid[0]["delta"] == 0 and grid[0]["estimate"] == pytest.approx(mi["estimate"], abs=1e-12)
    assert grid[0]["p_value"] == pytest.approx(mi["p_value"], rel=1e-9)
    ests, ps = [g["estimate"] for g in grid], [g["p_value"] for g in grid]
    assert all(b > a for a, b in itertools.pairwise(ests))  # towards harm: a higher (worse) score
    assert all(b >= a for a, b in itertools.pairwise(ps))
    # the estimate moves by delta times the share of imputed children among the pooled arms' (about)
    o = md.primary_outcome(d600, SAP)
    share = got["details"]["shifted"] / (o.treated == 1).sum()
    assert (ests[-1] - ests[0]) / grid[-1]["delta"] == pytest.approx(share, rel=0.2)
    assert got["estimate"] is None and got["note"].startswith("No delta up to 6 overturns")


def test_tipping_point_reports_the_first_crossing(d600):
    sap = _sap(tipping_point={"deltas": [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 25, 30]})
    got = md.tipping_point(d600, sap)
    grid = got["details"]["grid"]
    first = next(g for g in grid if not g["significant_benefit"])
    assert got["estimate"] == first["delta"] and 0 < first["delta"] <= 30
    assert all(g["significant_benefit"] for g in grid if g["delta"] < first["delta"])
    assert first["p_value"] >= 0.05 or first["estimate"] >= 0
    assert f"overturned at delta {first['delta']:g}" in got["note"]
    assert got["details"]["estimate_is"] == "delta" and got["ci_low"] is None and got["p_value"] is None


def test_tipping_point_null_when_mi_shows_no_benefit():
    d = analysis_data(CONTENT, simulate(600, seed=11, truth=Truth(effect=0.0, high_extra=0.0)), blinded=False)
    mi = md.multiple_imputation(d, SAP)
    assert mi["p_value"] >= 0.05
    got = md.tipping_point(d, SAP)
    assert got["estimate"] is None and "no significant benefit" in got["note"]
    assert len(got["details"]["grid"]) == len(SAP["tipping_point"]["deltas"])


def test_higher_is_better_shifts_the_other_way(d600):
    content = copy.deepcopy(CONTENT)
    content["analysis"]["benefit"] = "higher"
    d = dataclasses.replace(d600, content=content)
    grid = md.tipping_point(d, _sap(benefit="higher"))["details"]["grid"]
    assert all(b["estimate"] < a["estimate"] for a, b in itertools.pairwise(grid))
    assert md.worst_value(content, "ados2", "social_affect", "higher") == 0
    assert md.worst_value(content, "ados2", "social_affect", "lower") == 20


# --- the estimand -------------------------------------------------------------------------------

def test_strategies_change_exactly_the_values_they_should():
    d = analysis_data(CONTENT, simulate(600, seed=11), blinded=False)
    y5 = list(d.value("ados2", "social_affect", "month5"))
    y2 = d.value("ados2", "social_affect", "month2")
    done2 = d.performed("ados2", "month2")
    kids = [i for i in range(d.n) if y5[i] is not None and y2[i] is not None and d.column("exitrsn")[i] is None
            and d.studyid[i] not in d.events]
    with_exit(d, kids[:3], "withdrawn", 120)  # after month 2 (day ~61), before month 5
    with_exit(d, kids[3:5], "died", 100)
    for i in kids[5:8]:  # stopped the therapy after the 2-month visit
        d.events[d.studyid[i]] = [("discontinued_intervention", done2[i] + dt.timedelta(days=1))]
    sap = _sap(estimand={**SAP["estimand"], "intercurrent_events": [
        *SAP["estimand"]["intercurrent_events"][1:], {"event": "discontinued_intervention", "strategy": "while_on_treatment"}]})
    values, applied = md.primary_values(d, sap)
    assert [values[i] for i in kids[:3]] == [None] * 3
    assert [values[i] for i in kids[3:5]] == [20, 20]
    assert [values[i] for i in kids[5:8]] == [y2[i] for i in kids[5:8]]
    changed = {i for i in range(d.n) if values[i] != y5[i]}
    assert changed == set(kids[:8]) - {i for i in kids[5:8] if y2[i] == y5[i]}
    assert {e["event"]: e["children"] for e in applied}["discontinued_intervention"] == 3
    # treatment policy everywhere: the values as observed
    policy = _sap(estimand={**SAP["estimand"], "intercurrent_events": [
        {"event": e, "strategy": "treatment_policy"} for e in ("withdrawal", "death", "discontinued_intervention")]})
    assert md.primary_values(d, policy)[0] == y5


def test_a_blinded_bundle_imputes_on_the_dummy_allocation_and_says_what_it_cannot_see():
    d = analysis_data(CONTENT, simulate(600, seed=11, blinded=True), blinded=True)
    got = md.multiple_imputation(d, SAP)
    assert got["estimate"] is not None and got["n"] == d.n
    assert set(got["details"]["imputed_by_arm"]) == {"A", "B", "C"}
    notes = {e["event"]: e.get("note") for e in got["details"]["intercurrent_events"]}
    assert "blinded bundle does not show" in notes["not_received"] and notes["withdrawal"] is None
    assert md.tipping_point(d, SAP)["details"]["grid"]


# --- the missingness table ----------------------------------------------------------------------

def _recount(tables, visit: str, day_closes: int) -> dict:
    """(arm, status, reason) -> count, from the ADSL's rows directly."""
    adsl = tables["adsl"]
    at = {v.name: k for k, v in enumerate(adsl.vars)}
    code = {"baseline": "bl", "month2": "m2", "month5": "m5"}[visit]
    counts: dict = {}
    for r in adsl.rows:
        if r[at[f"asoc_{code}"]] is not None:
            key = ("observed", "")
        elif r[at["exitdt"]] and dt.date.fromisoformat(r[at["exitdt"]]) <= \
                dt.date.fromisoformat(r[at["randdt"]]) + dt.timedelta(days=day_closes):
            key = ("left_trial", r[at["exitrsn"]])
        elif r[at[f"anr_{code}"]]:
            key = ("not_done", r[at[f"anr_{code}"]])
        else:
            key = ("no_reason", "")
        for arm in (r[at["arm"]], "all"):
            counts[(arm, *key)] = counts.get((arm, *key), 0) + 1
    return counts


def test_missingness_table_equals_a_recount():
    tables = simulate(600, seed=11)
    d = analysis_data(CONTENT, tables, blinded=False)
    table = md.missingness_table(d, SAP)
    assert table["columns"] == md.MISSINGNESS_COLUMNS
    col = {c: k for k, c in enumerate(table["columns"])}
    closes = {"baseline": 0, "month2": 61 + 14, "month5": 152 + 21}
    for visit, day in closes.items():
        want = _recount(tables, visit, day)
        rows = [r for r in table["rows"] if r[col["visit"]] == visit]
        got = {(r[col["arm"]], r[col["status"]], r[col["reason"]]): r[col["n"]] for r in rows if r[col["n"]]}
        assert got == want, visit
        for arm in ("usual", "low", "high", "all"):
            mine = [r for r in rows if r[col["arm"]] == arm]
            randomized = sum(1 for a in d.arm if arm == "all" or a == arm)
            assert sum(r[col["n"]] for r in mine) == randomized == mine[0][col["randomized"]]
            assert all(r[col["percent"]] == round(100 * r[col["n"]] / randomized, 1) for r in mine)
    # every protocol reason is listed, with its label, even with no child
    labels = {r[col["reason"]]: r[col["reason_label"]] for r in table["rows"] if r[col["status"]] == "not_done"}
    assert labels["assessor_unavailable"] == "Not done: Assessor unavailable"
    month5 = {(r[col["arm"]], r[col["status"]]): 0 for r in table["rows"]}
    assert ("all", "left_trial") in month5 and ("usual", "observed") in month5
    left = sum(r[col["n"]] for r in table["rows"] if r[col["visit"]] == "month5" and r[col["arm"]] == "all"
               and r[col["status"]] == "left_trial")
    assert left > 0


def test_missingness_table_of_a_blinded_bundle_uses_the_dummy_arms():
    d = analysis_data(CONTENT, simulate(300, seed=2, blinded=True), blinded=True)
    table = md.missingness_table(d, SAP)
    arms = {r[3] for r in table["rows"]}
    assert arms == {"Dummy arm A", "Dummy arm B", "Dummy arm C", "All arms"}


def test_an_arm_without_any_outcome_says_which():
    tables = simulate(300, seed=4)
    adsl = tables["adsl"]
    at = {v.name: k for k, v in enumerate(adsl.vars)}
    adsl.rows = [tuple(None if (k == at["asoc_m5"] and r[at["arm"]] == "high") else x for k, x in enumerate(r))
                 for r in adsl.rows]
    d = analysis_data(CONTENT, tables, blinded=False)
    got = md.multiple_imputation(d, SAP)
    assert got["estimate"] is None
    assert got["note"].startswith("Not estimable from these data: arm high: 0 children with values")


def test_composite_without_a_bound_is_not_applied_and_says_so():
    content = copy.deepcopy(CONTENT)
    ins = next(i for i in content["instruments"] if i["key"] == "ados2")
    next(f for f in ins["fields"] if f["key"] == "social_affect")["max"] = None
    d = analysis_data(CONTENT, simulate(600, seed=11), blinded=False)
    y5 = list(d.value("ados2", "social_affect", "month5"))
    kids = [i for i in range(d.n) if y5[i] is not None and d.column("exitrsn")[i] is None][:2]
    with_exit(d, kids, "died", 100)
    values, applied = md.primary_values(dataclasses.replace(d, content=content), SAP)
    assert [values[i] for i in kids] == [y5[i] for i in kids]
    death = next(a for a in applied if a["event"] == "death")
    assert "no worst value" in death["note"]
    assert [md.primary_values(d, SAP)[0][i] for i in kids] == [20, 20]
