"""The fixes of the hostile review of issue 31 (trial.analysis.sap): pooled arms that are a subset
of the non-reference arms, an estimand step that fails, an arm without follow-up, the direction of
benefit from ``[analysis] benefit``, the SAP's digest, the code digest's files."""
from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import itertools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sap_sim import CONTENT, simulate
from trial.analysis import sap as sap_module
from trial.analysis.data import analysis_data
from trial.analysis.lmm import fit
from trial.analysis.sap import lock_analysis, sap_settings
from trial.analysis.service import analysis_spec
from trial.exports.formats import dictionary_csv, to_csv
from trial.exports.reports import table_csv


def _by_key(results: dict) -> dict[str, dict]:
    return {e["key"]: e for e in results["analyses"]}


def with_deaths(tables: dict, k: int = 12) -> dict:
    """The tables with ``k`` children (with a 5-month value) dead on day 100 after randomization
    (after the 2-month visit, before the 5-month one)."""
    adsl, events = tables["adsl"], tables["events"]
    names = [v.name for v in adsl.vars]
    kids = [r for r in adsl.rows if r[names.index("asoc_m5")] is not None][:k]
    died = [(r[0], "died", (dt.date.fromisoformat(str(r[names.index("randdt")])) + dt.timedelta(days=100)).isoformat(),
             "") for r in kids]
    return {**tables, "events": dataclasses.replace(events, rows=[*events.rows, *died])}


def _content(**analysis) -> dict:
    content = copy.deepcopy(CONTENT)
    content["analysis"].update(analysis)
    return content


@pytest.fixture(scope="module")
def sim():
    return simulate(n=600, seed=11)


def test_pooled_arms_a_subset_leave_the_other_arms_out(sim):
    content = _content(pooled_arms=["low"])
    done = lock_analysis(content, sim, False)
    got = _by_key(done.results)
    d = analysis_data(content, sim, False)
    visits, adjust = d.spec["visits"], d.spec["adjust"]
    keep = [a != "high" for a in d.arm]
    res, _, _ = fit(d.long("ados2", "social_affect", visits, adjust, keep), visits, {"group": ["low"]}, adjust, "y")
    want = res.term("group_month5")["estimate"]
    assert got["primary"]["estimate"] == pytest.approx(want, rel=1e-9)
    assert done.primary["estimate"] == got["primary"]["estimate"]
    assert got["primary"]["n"] == res.n_groups < sum(a is not None for a in d.arm)
    assert "neither pooled nor the reference left out" in got["primary"]["method"]
    assert "left out" in done.primary["model"]
    # the each-arm model keeps every arm: arm:low is a fit with the high arm's children in it, the same direction
    assert got["arm:low"]["estimate"] < 0 and got["primary"]["estimate"] < 0
    assert got["arm:low"]["estimate"] != pytest.approx(want, rel=1e-9)
    assert "left out" not in got["arm:low"]["method"]
    # the other pooled-group models too (the full pooling would mix the high arm into the reference)
    full = _by_key(lock_analysis(CONTENT, sim, False).results)
    assert got["in_window"]["n"] == got["primary"]["n"] < full["in_window"]["n"]
    assert "left out" in got["secondary:ados2.rrb"]["method"]
    assert "left out" not in full["primary"]["method"]


def test_an_arm_without_follow_up_is_named_in_the_note(sim):
    adsl = copy.deepcopy(sim["adsl"])
    names = [v.name for v in adsl.vars]
    spec = analysis_spec(CONTENT, adsl.vars)
    at = [names.index(v) for v in spec["outcome_vars"][1:]]
    arm = names.index("arm")
    adsl.rows = [tuple(None if (j in at and r[arm] == "high") else x for j, x in enumerate(r)) for r in adsl.rows]
    done = lock_analysis(CONTENT, {**sim, "adsl": adsl}, False)
    note = _by_key(done.results)["primary"]["note"]
    assert "Music therapy, 3 sessions per week has no follow-up observation" in note
    assert "Music therapy, 1 session per week" not in note and done.primary["note"] == note
    clean = _by_key(lock_analysis(CONTENT, sim, False).results)["primary"]
    assert "no follow-up observation" not in (clean.get("note") or "")


def test_the_benefit_comes_from_the_analysis_then_the_interim_then_lower():
    higher = _content(benefit="higher")
    higher.pop("interim", None)
    assert sap_settings(higher)["benefit"] == "higher"
    no_analysis = copy.deepcopy(CONTENT)
    no_analysis["analysis"].pop("benefit", None)
    no_analysis["interim"]["benefit"] = "higher"
    assert sap_settings(no_analysis)["benefit"] == "higher"
    no_analysis.pop("interim")
    assert sap_settings(no_analysis)["benefit"] == "lower"


def test_a_higher_is_better_protocol_without_interim_turns_worst_value_tipping_and_plot(sim):
    from trial.exports.sapreport import panels
    higher = _content(benefit="higher", estimand={**CONTENT["analysis"]["estimand"], "intercurrent_events": [
        {"event": "death", "strategy": "composite"}]})
    higher.pop("interim", None)
    sim = with_deaths(sim)
    lower = _content(estimand=higher["analysis"]["estimand"])
    lower.pop("interim", None)
    d = analysis_data(higher, sim, False)
    died = [i for i in range(d.n) if d.event_day("death")[i] is not None]
    assert died
    from trial.analysis.estimand import apply_estimand
    hi, _ = apply_estimand(d, sap_settings(higher))
    lo, _ = apply_estimand(analysis_data(lower, sim, False), sap_settings(lower))
    y_hi, y_lo = hi.value("ados2", "social_affect", "month5"), lo.value("ados2", "social_affect", "month5")
    changed = [i for i in died if y_hi[i] != y_lo[i]]
    assert changed and all(y_hi[i] == 0 and y_lo[i] == 20 for i in changed)
    r_hi = lock_analysis(higher, sim, False).results
    tp = _by_key(r_hi)["tipping_point"]
    grid = tp["details"]["grid"] if tp.get("details") else []
    assert all(b["estimate"] <= a["estimate"] for a, b in itertools.pairwise(grid))
    assert panels(r_hi, higher)[0].left.startswith("← favours Enhanced usual care")
    assert panels(lock_analysis(lower, sim, False).results, lower)[0].left.startswith("← favours Music")


def _api_keys(results: dict) -> None:
    keys = [e["key"] for e in results["analyses"]]
    assert keys[:3] == ["primary", "arm:low", "arm:high"]
    assert {"secondary:ados2.rrb", "secondary:ados2.css", "secondary:srs2.total_t", "ancova", "all_strata", "in_window",
            "per_protocol", "cace", "dose_response", "mi", "tipping_point"} <= set(keys)
    assert all("p_adjusted" in e for e in results["analyses"] if e["key"].startswith("secondary:"))
    assert {"sap_sha256", "code_sha256", "code_files"} <= set(results)


def test_an_estimand_that_fails_leaves_every_entry_on_the_data_as_recorded(sim, monkeypatch):
    def broken(d, sap):
        raise RuntimeError("no event days")
    monkeypatch.setattr(sap_module, "apply_estimand", broken)
    done = lock_analysis(CONTENT, sim, False)
    _api_keys(done.results)
    got = _by_key(done.results)
    said = "The estimand could not be applied (RuntimeError: no event days)"
    assert all(said in (e.get("note") or "") for e in done.results["analyses"])
    assert got["primary"]["estimate"] is not None and got["primary"]["estimate"] == done.primary["estimate"]
    assert said in done.primary["note"] and said in done.primary_text and got["primary"]["note"].count(said) == 1
    assert "estimand" not in got["primary"]
    plain = _content(estimand=None)  # the data as recorded: as a SAP without an estimand
    assert got["primary"]["estimate"] == pytest.approx(_by_key(lock_analysis(plain, sim, False).results)["primary"]["estimate"],
                                                       rel=1e-12)
    assert got["mi"]["estimate"] is not None and got["arm:low"]["estimate"] is not None


def test_unreadable_data_still_give_every_key(sim, monkeypatch):
    def broken(content, tables, blinded):
        raise KeyError("adsl")
    monkeypatch.setattr(sap_module, "analysis_data", broken)
    done = lock_analysis(CONTENT, sim, False)
    _api_keys(done.results)
    assert all("KeyError" in e["note"] for e in done.results["analyses"])


def test_a_primary_analysis_that_fails_is_said_in_primary_json_and_the_entry(sim, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("singular")
    monkeypatch.setattr(sap_module, "primary_analysis", broken)
    done = lock_analysis(CONTENT, sim, False)
    _api_keys(done.results)
    got = _by_key(done.results)
    why = "The primary analysis could not be run: ValueError: singular"
    assert done.primary["note"] == why and done.primary["estimate"] is None and why in done.primary_text
    assert why in got["primary"]["note"] and got["primary"]["estimate"] is None
    assert got["mi"]["estimate"] is not None  # the others still run
    # the hierarchy starts with the primary: no primary p, no secondary tested
    assert all(e["p_adjusted"] == 1.0 for k, e in got.items() if k.startswith("secondary:"))


def test_a_report_that_fails_becomes_a_one_page_pdf_and_the_bundle_keeps_its_files(sim, monkeypatch):
    from trial.exports import bundle

    def broken(*args, **kwargs):
        raise RuntimeError("no fonts")
    monkeypatch.setattr(bundle, "report_pdf", broken)
    files = dict(bundle._analysis_files(CONTENT, sim, False, "hard lock 1"))
    assert files["analysis/report.pdf"] == bundle.failure_pdf("hard lock 1", "RuntimeError: no fonts")
    assert json.loads(files["analysis/results.json"])["analyses"][0]["estimate"] is not None
    assert json.loads(files["analysis/primary.json"])["estimate"] is not None


def test_a_blinded_bundle_counts_the_hidden_events_as_null_never_zero():
    blinded = simulate(n=600, seed=11, blinded=True)
    assert next(v.codes for v in blinded["adsl"].vars if v.name == "arm").name == "ARM"  # the production code list
    results = lock_analysis(CONTENT, blinded, True).results
    seen = []

    def walk(x):
        if isinstance(x, dict):
            if x.get("event") in ("discontinued_intervention", "not_received"):
                seen.append(x)
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
    walk(results)
    assert len(seen) >= 4  # the estimand's and the multiple imputation's (and CACE's) lists
    assert all(e.get("children") is None and e.get("values_changed") is None for e in seen)


def test_the_secondary_outcomes_say_they_are_under_treatment_policy(sim):
    got = _by_key(lock_analysis(CONTENT, sim, False).results)
    assert all("under the treatment-policy strategy" in e["method"] for k, e in got.items() if k.startswith("secondary:"))


def _scripts_folder(tmp_path, done, tables) -> Path:
    folder = tmp_path / "analysis"
    folder.mkdir()
    (folder / "adsl.csv").write_bytes(to_csv(tables["adsl"]))
    (folder / "primary.py").write_text(done.primary_py)
    (folder / "primary.R").write_text(done.primary_r)
    (folder / "primary_data.csv").write_bytes(table_csv(done.primary_data))
    (tmp_path / "dictionary.csv").write_bytes(dictionary_csv([tables["adsl"]]))  # (the scripts' arm levels)
    return folder


def _estimates(out: str) -> dict[str, tuple[float, float]]:
    return {m[1]: (float(m[2]), float(m[3])) for m in re.finditer(r"^(\w+): estimate (\S+)\s+SE (\S+)", out, re.MULTILINE)}


def _run(cmd, cwd) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("runner", ["python", "R"])
def test_the_scripts_reproduce_primary_json_when_the_estimand_changed_values(sim, tmp_path, runner):
    if runner == "R" and shutil.which("Rscript") is None:
        pytest.skip("Rscript is not installed")
    content = _content(estimand={**CONTENT["analysis"]["estimand"], "intercurrent_events": [
        {"event": "death", "strategy": "composite"}]})
    tables = with_deaths(sim)
    done = lock_analysis(content, tables, False)
    assert "changed" in done.primary["note"] and "primary_data.csv" in done.primary["note"]
    assert "reproduce these numbers from analysis/primary_data.csv" in done.primary_text
    recorded = lock_analysis(_content(estimand=None), tables, False).primary
    assert abs(recorded["estimate"] - done.primary["estimate"]) > 1e-3  # the strategy did change the fit
    folder = _scripts_folder(tmp_path, done, tables)
    cmd = [sys.executable, str(folder / "primary.py")] if runner == "python" else ["Rscript", str(folder / "primary.R")]
    got = _estimates(_run(cmd, tmp_path))
    est, se = got["group_month5"]
    assert est == pytest.approx(done.primary["estimate"], abs=1e-5) and se == pytest.approx(done.primary["se"], abs=1e-5)
    for s in done.primary["secondary"]:
        assert got[f"arm_{s['arm']}_month5"][0] == pytest.approx(s["estimate"], abs=1e-5)
