"""The statistical analysis plan executed in the lock (issue 31, trial.analysis.sap): results.json
carries every analysis API.md lists in both bundles, the known effect of a simulated trial lies in
the primary interval, each arm against the reference equals lmerTest (Satterthwaite) and the ANCOVA
R's lm, the hierarchy stops at the first outcome not significant and Holm equals R's p.adjust, each
estimand strategy changes exactly the values it should, a blinded run leaves out only what needs
the delivered intervention, the code's digest is the same in both variants, and a real hard lock's
bundles carry results.json, report.pdf and missingness.csv."""
from __future__ import annotations

import copy
import csv
import datetime as dt
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys

import pytest

from tests.sap_sim import CONTENT, Truth, simulate
from tests.test_exports import bundle_files, constructed, locked  # noqa: F401  (the hard-locked trial's fixtures)
from trial.analysis import sap as sap_module
from trial.analysis.data import analysis_data
from trial.analysis.estimand import apply_estimand
from trial.analysis.missingdata import primary_values
from trial.analysis.sap import code_files, code_sha256, hierarchy, holm, lock_analysis, run_sap, sap_settings
from trial.exports.dataset import Table
from trial.exports.formats import dictionary_csv, to_csv

R = shutil.which("Rscript")
needs_r = pytest.mark.skipif(R is None, reason="Rscript is not installed")
VISITS = ["baseline", "month2", "month5"]
KEYS = ["ancova", "all_strata", "in_window", "per_protocol", "cace", "dose_response", "mi", "tipping_point"]
ENTRY = {"key", "label", "estimate", "ci_low", "ci_high", "p_value", "n", "method", "software"}


@pytest.fixture(scope="module")
def sim():
    return simulate(n=600, seed=11)


@pytest.fixture(scope="module")
def unblinded(sim):
    return lock_analysis(CONTENT, sim, False)


@pytest.fixture(scope="module")
def blinded():
    return lock_analysis(CONTENT, simulate(n=600, seed=11, blinded=True), True)


def _by_key(results: dict) -> dict[str, dict]:
    return {e["key"]: e for e in results["analyses"]}


def _var(table: Table, **what) -> str:
    return next(v.name for v in table.vars if all(getattr(v, k) == x for k, x in what.items()))


def _column(table: Table, name: str) -> list:
    at = [v.name for v in table.vars].index(name)
    return [r[at] for r in table.rows]


def _rscript(tmp_path, script: str) -> str:
    (tmp_path / "check.R").write_text(script)
    done = subprocess.run([R, "check.R"], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


# --- results.json ----------------------------------------------------------------------------------

def test_every_key_api_md_lists_is_in_both_variants(unblinded, blinded):
    for done, arms in ((unblinded, ["low", "high"]), (blinded, None)):
        r = done.results
        assert set(r) >= {"sap_version", "code_sha256", "code_files", "blinded", "alpha", "df_method", "multiplicity",
                          "analyses"}
        assert r["sap_version"] == "1.0" and r["df_method"] == "satterthwaite" and r["multiplicity"] == "hierarchy"
        keys = [e["key"] for e in r["analyses"]]
        d = analysis_data(CONTENT, simulate(n=20, seed=1, blinded=r["blinded"]), r["blinded"])
        arms = arms or d.others  # the dummy codes in a blinded bundle (the reference's left out)
        assert keys == ["primary", *(f"arm:{k}" for k in arms), "secondary:ados2.rrb", "secondary:ados2.css",
                        "secondary:srs2.total_t", *KEYS]
        for e in r["analyses"]:
            assert set(e) >= ENTRY, e["key"]
            assert e["software"], e["key"]
            assert e["estimate"] is not None or e["note"], e["key"]  # no estimate: the entry says why
        assert all("p_adjusted" in e for e in r["analyses"] if e["key"].startswith("secondary:"))
        assert "estimand" in r["analyses"][0]
        json.dumps(r, allow_nan=False)  # valid JSON: no NaN or infinity anywhere
        assert [row[:2] for row in done.missingness["rows"]] and done.missingness["columns"]


@pytest.mark.parametrize("n", [0, 3, 8])
def test_an_early_lock_lists_every_analysis_and_says_why_one_has_no_estimate(n):
    for blinded in (False, True):
        r, missing = run_sap(CONTENT, simulate(n=n, seed=2, blinded=blinded), blinded)
        json.dumps(r, allow_nan=False)
        assert [e["key"] for e in r["analyses"]][-8:] == KEYS and missing["rows"]
        for e in r["analyses"]:
            assert e["estimate"] is not None or e["note"], e
    got = _by_key(run_sap(CONTENT, simulate(n=0, seed=2), False)[0])
    assert got["in_window"]["note"] == ("The analysis could not be run: ValueError: 0 observations cannot fit 3 fixed "
                                        "effects")


def test_the_known_effect_is_inside_the_primary_interval(unblinded):
    primary = _by_key(unblinded.results)["primary"]
    assert primary["ci_low"] < Truth().itt_pooled() < primary["ci_high"]
    assert primary["n"] == 600 and primary["df"] > 100  # Satterthwaite's df (the protocol's df_method)
    # the per-protocol estimate is nearer the complier effect than the ITT one (never-takers left out)
    pp = _by_key(unblinded.results)["per_protocol"]
    assert pp["estimate"] < primary["estimate"] and pp["n"] < primary["n"]


def test_the_primary_entry_and_primary_json_are_the_same_fit(unblinded, blinded):
    for done in (unblinded, blinded):
        entry, pj = done.results["analyses"][0], done.primary
        for k in ("estimate", "se", "df", "ci_low", "ci_high", "p_value", "n"):
            assert entry[k] == pj[k], k
        assert pj["sap_version"] == "1.0" and pj["df_method"] == "satterthwaite"
        arms = {s["arm"]: s for s in pj["secondary"]}
        for e in done.results["analyses"]:
            if e["key"].startswith("arm:"):
                assert e["estimate"] == arms[e["key"][4:]]["estimate"] and e["df"] == arms[e["key"][4:]]["df"]


def _long_csv(tables: dict, path) -> None:
    """The primary outcome's long data from the ADSL as recorded (no code of the lock's)."""
    adsl = tables["adsl"]
    ys = {v: _column(adsl, _var(adsl, instrument="ados2", field="social_affect", visit=v)) for v in VISITS}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["studyid", "visit", "arm", "site", "y"])
        for i, (sid, arm, site) in enumerate(zip(_column(adsl, "studyid"), _column(adsl, "arm"), _column(adsl, "c_site"))):
            for v in VISITS:
                if ys[v][i] is not None:
                    w.writerow([sid, v, arm, site, ys[v][i]])


@needs_r
def test_each_arm_against_the_reference_equals_lmertest(tmp_path, sim, unblinded):
    est = unblinded.results["analyses"][0]["estimand"]
    assert all(e["values_changed"] == 0 for e in est["intercurrent_events"])  # these data: as recorded
    _long_csv(sim, tmp_path / "long.csv")
    out = _rscript(tmp_path, """suppressPackageStartupMessages(library(lmerTest))
long <- read.csv("long.csv", colClasses = c(studyid = "character", visit = "character", arm = "character",
                 site = "character"))
long$visit <- factor(long$visit, levels = c("baseline", "month2", "month5"))
for (v in c("month2", "month5")) {
  long[[paste0("group_", v)]] <- as.numeric(long$arm %in% c("low", "high")) * (long$visit == v)
  for (k in c("low", "high")) long[[paste0("arm_", k, "_", v)]] <- as.numeric(long$arm == k) * (long$visit == v)
}
show <- function(fit, term, key) {
  s <- coef(summary(fit, ddf = "Satterthwaite"))
  q <- qt(0.975, s[term, "df"])
  cat(key, sprintf("%.12g", c(s[term, "Estimate"], s[term, "Std. Error"], s[term, "df"], s[term, "Pr(>|t|)"],
      s[term, "Estimate"] - q * s[term, "Std. Error"], s[term, "Estimate"] + q * s[term, "Std. Error"])), "\\n")
}
f1 <- lmer(y ~ visit + group_month2 + group_month5 + factor(site) + (1 | studyid), data = long, REML = TRUE)
show(f1, "group_month5", "primary")
f2 <- lmer(y ~ visit + arm_low_month2 + arm_low_month5 + arm_high_month2 + arm_high_month5 + factor(site) +
           (1 | studyid), data = long, REML = TRUE)
show(f2, "arm_low_month5", "arm:low")
show(f2, "arm_high_month5", "arm:high")
""")
    got = _by_key(unblinded.results)
    for line in out.strip().splitlines():
        key, *nums = line.split()
        r_est, r_se, r_df, r_p, r_lo, r_hi = map(float, nums)
        e = got[key]
        assert e["estimate"] == pytest.approx(r_est, rel=1e-4) and e["se"] == pytest.approx(r_se, rel=1e-4)
        assert e["df"] == pytest.approx(r_df, rel=1e-4) and e["p_value"] == pytest.approx(r_p, rel=1e-4, abs=1e-12)
        assert e["ci_low"] == pytest.approx(r_lo, rel=1e-4) and e["ci_high"] == pytest.approx(r_hi, rel=1e-4)


@needs_r
def test_the_ancova_equals_rs_lm(tmp_path, sim, unblinded):
    adsl = sim["adsl"]
    y5, y0 = (_column(adsl, _var(adsl, instrument="ados2", field="social_affect", visit=v)) for v in ("month5", "baseline"))
    with open(tmp_path / "ancova.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["y", "base", "treat", "site"])
        for a, b, arm, site in zip(y5, y0, _column(adsl, "arm"), _column(adsl, "c_site")):
            if a is not None and b is not None:
                w.writerow([a, b, int(arm != "usual"), site])
    out = _rscript(tmp_path, """d <- read.csv("ancova.csv", colClasses = c(site = "character"))
fit <- lm(y ~ treat + base + factor(site), data = d)
s <- coef(summary(fit)); ci <- confint(fit)
cat(sprintf("%.15g", c(s["treat", 1], s["treat", 2], s["treat", 4], ci["treat", 1], ci["treat", 2], df.residual(fit),
    nobs(fit))), "\\n")
""")
    est, se, p, lo, hi, df, n = map(float, out.split())
    e = _by_key(unblinded.results)["ancova"]
    assert e["n"] == n and e["df"] == df
    for k, r in (("estimate", est), ("se", se), ("ci_low", lo), ("ci_high", hi)):
        assert e[k] == pytest.approx(r, rel=1e-8, abs=1e-12), k
    assert e["p_value"] == pytest.approx(p, rel=1e-6, abs=1e-30)


# --- multiplicity ----------------------------------------------------------------------------------

def test_the_hierarchy_stops_at_the_first_outcome_not_significant():
    truth = Truth(secondary_effects={("ados2", "rrb"): -0.6, ("ados2", "css"): 0.0, ("srs2", "total_t"): -3.0})
    got = _by_key(run_sap(CONTENT, simulate(n=600, seed=11, truth=truth), False)[0])
    rrb, css, srs = got["secondary:ados2.rrb"], got["secondary:ados2.css"], got["secondary:srs2.total_t"]
    assert rrb["p_value"] < 0.05 and rrb["p_adjusted"] == rrb["p_value"]
    assert css["p_value"] > 0.05 and css["p_adjusted"] == css["p_value"]  # tested: the first not significant
    assert srs["p_value"] < 0.05 and srs["p_adjusted"] == 1.0  # significant alone, but never tested
    assert srs["note"].startswith("Not tested: the hierarchy stopped at Secondary outcome: ADOS-2")
    assert "Calibrated severity score" in srs["note"] and "note" not in rrb


def test_the_hierarchy_on_hand_made_entries():
    entries = [{"label": "a", "p_value": 0.001}, {"label": "b", "p_value": None}, {"label": "c", "p_value": 0.0001}]
    out = hierarchy(entries, 0.05)
    assert [e["p_adjusted"] for e in out] == [0.001, None, 1.0]
    assert "stopped at b (no p value)" in out[2]["note"]
    assert [e["p_adjusted"] for e in hierarchy([{"label": "a", "p_value": 0.01}, {"label": "b", "p_value": 0.04}],
                                               0.05)] == [0.01, 0.04]


def test_holm_by_hand_with_a_missing_p():
    # m = 4 outcomes planned, the missing p counts (R: p.adjust(p, "holm", n = 4), NA kept)
    assert holm([0.01, None, 0.04, 0.03]) == pytest.approx([0.04, None, 0.09, 0.09])
    assert holm([0.5, 0.6]) == [1.0, 1.0] and holm([]) == []


def test_holm_counts_a_missing_p_in_m_and_says_so():
    sap = {"multiplicity": "holm", "alpha": 0.05}
    out = sap_module.adjust_p([{"label": "a", "p_value": 0.02, "method": "M"}, {"label": "b", "p_value": None}],
                              sap, {"p_value": 0.001})
    assert out[0]["p_adjusted"] == pytest.approx(0.04) and out[1]["p_adjusted"] is None
    assert "Holm's procedure over the 2 secondary outcomes" in out[0]["method"] and out[0]["method"].startswith("M;")
    assert "counts in Holm's m" in out[1]["note"]


def test_the_hierarchy_starts_with_the_primary():
    entries = [{"label": "a", "p_value": 0.001}, {"label": "b", "p_value": 0.002}]
    out = hierarchy(entries, 0.05, {"p_value": 0.2})
    assert [e["p_adjusted"] for e in out] == [1.0, 1.0]
    assert all("the primary outcome, which was not significant (p = 0.2 > 0.05)" in e["note"] for e in out)
    assert "the primary outcome first" in out[0]["method"]
    assert [e["p_adjusted"] for e in hierarchy(entries, 0.05, {"p_value": 0.01})] == [0.001, 0.002]
    assert [e["p_adjusted"] for e in hierarchy(entries, 0.05, {"p_value": None})] == [1.0, 1.0]


@needs_r
def test_holm_equals_rs_p_adjust(tmp_path):
    content = copy.deepcopy(CONTENT)
    content["analysis"]["multiplicity"] = "holm"
    got = [e for e in run_sap(content, simulate(n=300, seed=5), False)[0]["analyses"] if e["key"].startswith("secondary:")]
    ps = [e["p_value"] for e in got]
    out = _rscript(tmp_path, f'cat(sprintf("%.17g", p.adjust(c({", ".join(repr(p) for p in ps)}), "holm", n = {len(ps)})))')
    assert [e["p_adjusted"] for e in got] == pytest.approx(list(map(float, out.split())), rel=1e-12)
    assert all("Not tested" not in (e.get("note") or "") for e in got)


# --- the estimand ----------------------------------------------------------------------------------

START = dt.date(2025, 1, 6)
DAY = {"baseline": 0, "month2": 61, "month5": 152}


def _hand_made(blinded: bool = False) -> dict:
    """Six children with known social affect (baseline 10 + i, 2 months 11 + i, 5 months 12 + i, each
    performed on its target day; child 1 has no 5-month value) and their events: 0 withdrawn on day
    100, 1 died on day 30, 2 stopped the intervention on day 100, 3 never received it (day 100), 4
    none, 5 withdrawn on day 61 (the day of its 2-month visit)."""
    tables = simulate(n=6, seed=2, blinded=blinded)
    adsl = tables["adsl"]
    names = [v.name for v in adsl.vars]
    rows = []
    for i, row in enumerate(adsl.rows):
        row = list(row)
        row[names.index("randdt")] = START.isoformat()
        for k, v in enumerate(VISITS):
            row[names.index(_var(adsl, instrument="ados2", field="social_affect", visit=v))] = 10 + k + i
            date = next(x.name for x in adsl.vars if x.instrument == "ados2" and x.visit == v and x.type == "date")
            row[names.index(date)] = (START + dt.timedelta(days=DAY[v])).isoformat()
        if i == 1:
            row[names.index(_var(adsl, instrument="ados2", field="social_affect", visit="month5"))] = None
            row[names.index(next(x.name for x in adsl.vars if x.instrument == "ados2" and x.visit == "month5"
                                 and x.type == "date"))] = None
        rows.append(tuple(row))
    sids = [r[0] for r in rows]
    on = lambda n: (START + dt.timedelta(days=n)).isoformat()
    events = [(sids[0], "withdrawn", on(100), ""), (sids[1], "died", on(30), ""), (sids[5], "withdrawn", on(61), "")]
    if not blinded:
        events += [(sids[2], "discontinued_intervention", on(100), ""), (sids[3], "not_received", on(100), "")]
    return {"adsl": Table("adsl", adsl.label, adsl.vars, rows, meta=adsl.meta),
            "events": Table("events", "Status events", tables["events"].vars, sorted(events))}


def _with_strategy(strategy: str) -> dict:
    content = copy.deepcopy(CONTENT)
    for e in content["analysis"]["estimand"]["intercurrent_events"]:
        e["strategy"] = strategy
    return content


def _values(d) -> list[list]:
    return [[d.value("ados2", "social_affect", v)[i] for v in VISITS] for i in range(d.n)]


RECORDED = [[10, 11, 12], [11, 12, None], [12, 13, 14], [13, 14, 15], [14, 15, 16], [15, 16, 17]]
EXPECTED = {
    "treatment_policy": RECORDED,
    "hypothetical": [[10, 11, None], [11, None, None], [12, 13, None], [13, 14, None], [14, 15, 16], [15, 16, None]],
    # the last value before the event's day (child 5's 2-month value is of the day itself: baseline's carried)
    "while_on_treatment": [[10, 11, 11], [11, 11, 11], [12, 13, 13], [13, 14, 14], [14, 15, 16], [15, 16, 15]],
    # the worst of social affect's range (0-20, lower is better), also where the value is missing
    "composite": [[10, 11, 20], [11, 20, 20], [12, 13, 20], [13, 14, 20], [14, 15, 16], [15, 16, 20]],
}


@pytest.mark.parametrize("strategy", list(EXPECTED))
def test_each_strategy_changes_exactly_the_values_it_should(strategy):
    content = _with_strategy(strategy)
    d0 = analysis_data(content, _hand_made(), blinded=False)
    assert _values(d0) == RECORDED
    d, estimand = apply_estimand(d0, sap_settings(content))
    assert _values(d) == EXPECTED[strategy]
    assert _values(d0) == RECORDED  # the recorded data are left as they were
    changed = sum(a != b for x, y in zip(RECORDED, EXPECTED[strategy]) for a, b in zip(x, y))
    assert sum(e["values_changed"] for e in estimand["intercurrent_events"]) == changed
    assert {e["event"]: e["children"] for e in estimand["intercurrent_events"]} == {
        "discontinued_intervention": 1, "not_received": 1, "withdrawal": 2, "death": 1}
    assert all(e["strategy"] == strategy for e in estimand["intercurrent_events"])
    # the analyses at the primary visit (trial.analysis.missingdata) apply the same strategies there
    assert primary_values(d0, sap_settings(content))[0] == [row[2] for row in EXPECTED[strategy]]


def test_composite_decides_before_hypothetical_whatever_the_order():
    tables = _hand_made()
    sid = tables["adsl"].rows[4][0]  # child 4: withdrawn on day 50, died on day 120
    tables["events"].rows += [(sid, "withdrawn", (START + dt.timedelta(days=50)).isoformat(), ""),
                              (sid, "died", (START + dt.timedelta(days=120)).isoformat(), "")]
    death, withdrawal = {"event": "death", "strategy": "composite"}, {"event": "withdrawal", "strategy": "hypothetical"}
    for order in ([death, withdrawal], [withdrawal, death]):
        content = copy.deepcopy(CONTENT)
        content["analysis"]["estimand"]["intercurrent_events"] = order
        d, _ = apply_estimand(analysis_data(content, tables, False), sap_settings(content))
        assert _values(d)[4] == [14, None, 20]


def test_a_blinded_bundle_cannot_apply_a_strategy_to_an_event_it_does_not_show():
    content = _with_strategy("hypothetical")
    d, estimand = apply_estimand(analysis_data(content, _hand_made(blinded=True), True), sap_settings(content))
    by = {e["event"]: e for e in estimand["intercurrent_events"]}
    for event in ("discontinued_intervention", "not_received"):
        assert by[event]["children"] is None and "NOT applied here: a blinded bundle" in by[event]["how"]
    assert by["withdrawal"]["children"] == 2 and by["withdrawal"]["values_changed"] == 2
    assert _values(d)[2] == [12, 13, 14]  # child 2's stopping is not shown: its values stay


# --- blinded, failures, settings, digest -----------------------------------------------------------

def test_a_blinded_run_has_nulls_with_notes_only_where_the_intervention_is_needed(blinded):
    for e in blinded.results["analyses"]:
        if e["key"] in ("per_protocol", "cace", "dose_response"):
            assert e["estimate"] is None and "blinded" in e["note"].lower(), e
        elif e["key"] != "tipping_point":  # (its estimate: the delta overturning a significant benefit, if any)
            assert e["estimate"] is not None and e["ci_low"] < e["estimate"] < e["ci_high"], e
    assert blinded.results["blinded"] is True and "DUMMY" in blinded.results["analyses"][0]["note"]


def test_one_analysis_failing_loses_none_of_the_others(monkeypatch, sim):
    def broken(d, sap):
        raise RuntimeError("boom")
    monkeypatch.setitem(sap_module.SENSITIVITY_FUNCTIONS, "in_window", broken)
    got = _by_key(run_sap(CONTENT, sim, False)[0])
    assert got["in_window"]["estimate"] is None
    assert got["in_window"]["note"] == "The analysis could not be run: RuntimeError: boom"
    assert all(got[k]["estimate"] is not None for k in ("primary", "ancova", "per_protocol", "cace", "mi"))


def test_an_analysis_the_sap_does_not_name_is_listed_without_an_estimate():
    content = copy.deepcopy(CONTENT)
    content["analysis"]["sensitivity"] = ["ancova"]
    got = _by_key(run_sap(content, simulate(n=200, seed=3), False)[0])
    assert got["ancova"]["estimate"] is not None
    for k in KEYS[1:]:
        assert got[k]["estimate"] is None and got[k]["note"] == "not in the SAP", k


def test_the_defaults_of_the_optional_keys():
    content = copy.deepcopy(CONTENT)
    for k in ("sap_version", "df_method", "alpha", "multiplicity", "sensitivity", "mi", "tipping_point", "estimand"):
        content["analysis"].pop(k, None)
    s = sap_settings(content)
    assert (s["sap_version"], s["df_method"], s["alpha"], s["multiplicity"]) == ("not versioned", "wald", 0.05, "holm")
    assert s["sensitivity"] == KEYS and s["mi"] == {"imputations": 20, "seed": 20240101}
    assert s["tipping_point"]["deltas"] == [k * 0.5 for k in range(21)]  # social affect 0-20: 0 to 10 in 20 steps
    assert s["estimand"] is None and sap_settings(CONTENT)["tipping_point"]["deltas"][-1] == 6
    r = run_sap(content, simulate(n=200, seed=3), False)[0]
    assert r["df_method"] == "wald" and r["analyses"][0]["df"] is None and "estimand" not in r["analyses"][0]


def test_the_code_digest_is_the_same_in_both_variants_and_covers_the_code(unblinded, blinded, tmp_path, monkeypatch):
    assert unblinded.results["code_sha256"] == blinded.results["code_sha256"] == code_sha256()
    assert unblinded.results["code_files"] == code_files() == sorted(code_files())
    h = hashlib.sha256()
    for name in code_files():
        data = (sap_module.ROOT / name).read_bytes()
        h.update(f"{name}\n{len(data)}\n".encode() + data)
    assert code_sha256() == h.hexdigest()
    assert {"trial/analysis/lmm.py", "trial/analysis/sap.py", "trial/analysis/missingdata.py",
            "trial/exports/dataset.py"} <= set(code_files())
    # the source as the process loaded it (read when the module was imported), not the file on disk now
    changed = {**sap_module.SOURCES, "trial/exports/dataset.py": sap_module.SOURCES["trial/exports/dataset.py"] + b"\n"}
    monkeypatch.setattr(sap_module, "SOURCES", changed)
    assert code_sha256() != h.hexdigest()  # one byte changed anywhere changes the digest
    monkeypatch.setattr(sap_module, "ROOT", tmp_path)  # (a file changed on disk since: not read again)
    monkeypatch.setattr(sap_module, "SOURCES", {k: v for k, v in changed.items()})
    assert code_sha256() == sap_module.code_sha256()


def test_the_sap_digest_is_the_same_in_both_variants_and_changes_with_the_sap(unblinded, blinded):
    digest = unblinded.results["sap_sha256"]
    assert digest == blinded.results["sap_sha256"] == sap_module.sap_sha256(CONTENT) and len(digest) == 64
    same_version = copy.deepcopy(CONTENT)
    same_version["analysis"]["alpha"] = 0.01
    assert sap_module.sap_sha256(same_version) != digest and same_version["analysis"]["sap_version"] == "1.0"
    weights = copy.deepcopy(CONTENT)
    weights["arms"][0]["weight"] = 3
    assert sap_module.sap_sha256(weights) != digest
    label = copy.deepcopy(CONTENT)
    label["arms"][0]["label"] = "renamed"  # (not the SAP)
    assert sap_module.sap_sha256(label) == digest


# --- a real hard lock ------------------------------------------------------------------------------

def test_a_hard_locks_bundles_carry_the_saps_files(locked):  # noqa: F811
    digests = set()
    for variant in ("unblinded", "blinded"):
        files = bundle_files(locked[variant].data)
        results = json.loads(files["analysis/results.json"])
        primary = json.loads(files["analysis/primary.json"])
        assert results["blinded"] is (variant == "blinded") and primary["sap_version"] == results["sap_version"] == "1.0"
        got = _by_key(results)
        assert {"primary", "ancova", "all_strata", "in_window", "per_protocol", "cace", "dose_response", "mi",
                "tipping_point", "secondary:ados2.rrb"} <= set(got)
        assert any(k.startswith("arm:") for k in got)
        assert got["primary"]["estimate"] == primary["estimate"] and got["primary"]["n"] == primary["n"]
        assert files["analysis/report.pdf"].startswith(b"%PDF")
        rows = list(csv.reader(io.StringIO(files["analysis/missingness.csv"].decode())))
        assert len(rows) > 1 and "visit" in rows[0]
        digests.add(results["code_sha256"])
        readme = files["README.txt"].decode()
        assert "results.json" in readme and "report.pdf" in readme and "missingness.csv" in readme
        manifest = files["manifest.sha256"].decode()
        assert all(f"analysis/{n}" in manifest for n in ("results.json", "report.pdf", "missingness.csv"))
    assert len(digests) == 1


# --- the bundle's scripts --------------------------------------------------------------------------

LINE = re.compile(r"^(\w+): estimate (\S+)\s+SE (\S+)\s+95% CI (\S+) to (\S+)\s+p (\S+)\s+df (\S+)$", re.MULTILINE)


@needs_r
@pytest.mark.parametrize("df_method", ["satterthwaite", "kenward_roger"])
def test_the_bundles_scripts_reproduce_primary_json_with_the_saps_degrees_of_freedom(tmp_path, df_method):
    content = copy.deepcopy(CONTENT)
    content["analysis"]["df_method"] = df_method
    tables = simulate(n=200, seed=11)
    done = lock_analysis(content, tables, False)
    assert "estimand's strategies" not in (done.primary.get("note") or "")  # these data: the values as recorded
    folder = tmp_path / "analysis"
    folder.mkdir()
    (folder / "adsl.csv").write_bytes(to_csv(tables["adsl"]))
    (folder / "primary.py").write_text(done.primary_py)
    (folder / "primary.R").write_text(done.primary_r)
    (tmp_path / "dictionary.csv").write_bytes(dictionary_csv([tables["adsl"]]))  # (the scripts read the arm's levels)
    want = {"group_month5": done.primary, **{f"arm_{s['arm']}_month5": s for s in done.primary["secondary"]}}
    for cmd in ([sys.executable, "analysis/primary.py"], [R, "analysis/primary.R"]):
        ran = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
        assert ran.returncode == 0, ran.stderr[-3000:]
        got = {m[1]: list(map(float, m.groups()[1:])) for m in LINE.finditer(ran.stdout)}
        assert set(got) == set(want), ran.stdout[-2000:]
        for term, (est, se, lo, hi, p, df) in got.items():
            w = want[term]
            assert est == pytest.approx(w["estimate"], abs=1e-5) and se == pytest.approx(w["se"], abs=1e-5), cmd
            assert lo == pytest.approx(w["ci_low"], abs=1e-5) and hi == pytest.approx(w["ci_high"], abs=1e-5), cmd
            assert df == pytest.approx(w["df"], rel=1e-4) and p == pytest.approx(w["p_value"], rel=1e-3), cmd
