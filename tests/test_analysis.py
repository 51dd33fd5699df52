"""The protocol's primary analysis: a simulated trial with a known effect is recovered within its
confidence interval, lme4 (R) and statsmodels' MixedLM agree with the lock's fit, the scripts written into the bundle
reproduce its numbers, and the protocol's [analysis] is checked when it is loaded."""
from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trial.analysis.service import primary_analysis
from trial.exports.dataset import YESNO, Table, Var, arm_codes, dummy_arm_codes
from trial.exports.formats import dictionary_csv, to_csv
from trial.protocol.schema import ProtocolError, parse

PROTOCOL = Path(__file__).resolve().parent.parent / "config" / "protocols" / "time-a.toml"
CONTENT = parse(PROTOCOL.read_text())
VISITS = ["baseline", "month2", "month5"]
NAMES = {"baseline": "asoc_bl", "month2": "asoc_m2", "month5": "asoc_m5"}


def simulated_adsl(effect: float, n: int = 240, seed: int = 7, low_extra: float = 0.0, child_sd: float = 2.0) -> Table:
    """ADSL rows of a trial in which the music-therapy children's social affect falls by
    ``effect`` more than usual care's from baseline to 5 months (half of it at 2 months); six
    sites, a child's random intercept (SD 2), residual SD 1.5, about 10% of follow-ups missing."""
    rng = random.Random(seed)
    sites = {f"S{i}": rng.gauss(0, 1) for i in range(1, 7)}
    arms = ["low", "high", "usual", "usual"]
    rows = []
    for i in range(n):
        site = rng.choice(sorted(sites))
        arm = arms[i % 4]
        child = rng.gauss(0, child_sd)
        music = arm != "usual"
        extra = low_extra if arm == "low" else 0.0
        y = {"baseline": 12 + sites[site] + child,
             "month2": 11.5 + sites[site] + child + (effect / 2 if music else 0),
             "month5": 11 + sites[site] + child + (effect + extra if music else 0)}
        vals = []
        for v in VISITS:
            value = y[v] + rng.gauss(0, 1.5)
            vals.append(None if v != "baseline" and rng.random() < 0.1 else round(value, 3))
        rows.append((f"{site}-{i:04d}", site, site, arm, *vals, 1))
    vars_ = [Var("studyid", "Study ID", "str"), Var("site", "Site code", "str"),
             Var("c_site", "Stratum as corrected: site", "str"),  # the analysis adjusts for it (issue 29)
             Var("arm", "Arm", "str", codes=arm_codes(CONTENT))]
    vars_ += [Var(NAMES[v], f"Social affect, {v}", "float", instrument="ados2", field="social_affect", visit=v) for v in VISITS]
    vars_.append(Var("ittfl", "ITT", "int", codes=YESNO))
    return Table("adsl", "Analysis dataset", vars_, rows)


def test_a_simulated_effect_is_recovered_within_its_confidence_interval():
    for truth in (-2.0, 0.0):
        result, text, _, _ = primary_analysis(CONTENT, simulated_adsl(truth), blinded=False)
        assert result["converged"] is True
        assert result["ci_low"] < truth < result["ci_high"], result
        assert result["ci_high"] - result["ci_low"] < 1.6, "the interval is as narrow as 240 children make it"
        assert result["n"] == 240 and 600 < result["n_observations"] < 720
        assert result["visit"] == "month5" and result["outcome"] == "ados2.social_affect"
        assert result["allocation"] == "real" and result["reference_arm"] == "usual"
        assert "Enhanced usual care" in result["comparison"]
        assert f"Effect (group x month5): {result['estimate']:.4f}" in text
    big = primary_analysis(CONTENT, simulated_adsl(-2.0), blinded=False)[0]
    assert big["p_value"] < 1e-6
    # the secondary analysis: each arm against usual care (the low arm loses half its effect here)
    sec = {s["arm"]: s for s in primary_analysis(CONTENT, simulated_adsl(-2.0, n=400, low_extra=1.0), blinded=False)[0]["secondary"]}
    assert set(sec) == {"low", "high"}
    assert sec["low"]["ci_low"] < -1.0 < sec["low"]["ci_high"]
    assert sec["high"]["ci_low"] < -2.0 < sec["high"]["ci_high"]


def test_too_few_data_give_no_inference_and_say_so():
    t = simulated_adsl(-2.0, n=4)
    t.rows = [r[:4] + (12.0, 9.0, 9.0, 1) for r in t.rows]  # every child the same: the model fits exactly
    result, text, _, _ = primary_analysis(CONTENT, t, blinded=False)
    assert result["se"] is None and result["p_value"] is None and result["ci_low"] is None
    assert "No inference is possible" in result["note"] and result["note"] in text
    t.rows = []
    result, text, _, _ = primary_analysis(CONTENT, t, blinded=False)
    assert result["estimate"] is None and "could not be fitted" in result["note"]


def _run(cmd, cwd) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _estimates(out: str) -> dict[str, tuple[float, float]]:
    return {m[1]: (float(m[2]), float(m[3])) for m in re.finditer(r"^(\w+): estimate (\S+)\s+SE (\S+)", out, re.M)}


def _bundle_folder(tmp_path, table: Table, blinded=False):
    result, _, py, r = primary_analysis(CONTENT, table, blinded=blinded)
    folder = tmp_path / "analysis"
    folder.mkdir()
    (folder / "adsl.csv").write_bytes(to_csv(table))
    (folder / "primary.py").write_text(py)
    (folder / "primary.R").write_text(r)
    (tmp_path / "dictionary.csv").write_bytes(dictionary_csv([table]))  # (the scripts read the arm's levels there)
    return result, folder


def test_the_bundles_python_script_reproduces_the_numbers(tmp_path):
    result, folder = _bundle_folder(tmp_path, simulated_adsl(-1.5))
    out = _run([sys.executable, str(folder / "primary.py"), "--statsmodels"], cwd=tmp_path.parent)
    got = _estimates(out)
    est, se = got["group_month5"]
    assert abs(est - result["estimate"]) < 1e-6 and abs(se - result["se"]) < 1e-6
    for s in result["secondary"]:
        assert abs(got[f"arm_{s['arm']}_month5"][0] - s["estimate"]) < 1e-6
    # --statsmodels: MixedLM's second opinion, printed beside the script's own
    sm = {m[1]: float(m[2]) for m in re.finditer(r"^statsmodels (\w+): estimate (\S+)", out, re.M)}
    assert set(sm) == {"group_month5", "arm_low_month5", "arm_high_month5"}
    assert abs(sm["group_month5"] - result["estimate"]) < 1e-4


CASES = ((-1.5, 7, 2.0, 240), (0.4, 11, 2.0, 240), (2.0, 5, 0.3, 60), (0.5, 1, 0.0, 60))  # the last: a boundary fit


@pytest.mark.skipif(shutil.which("Rscript") is None, reason="R is not installed (.ci/run installs r-base-core and r-cran-lme4)")
def test_lme4_agrees_with_the_locks_fit(tmp_path):
    """The bundle's R script, fitting the same model with lme4 from the same ADSL, agrees with the
    lock's fit to 1e-5 on the estimate and its standard error, primary and secondary, including a
    fit whose children's variance is at zero (lme4's singular fit)."""
    for effect, seed, child_sd, n in CASES:
        case = tmp_path / f"case{seed}"
        case.mkdir()
        result, folder = _bundle_folder(case, simulated_adsl(effect, seed=seed, child_sd=child_sd, n=n))
        out = _run(["Rscript", str(folder / "primary.R")], cwd=tmp_path)
        got = _estimates(out)
        est, se = got["group_month5"]
        assert abs(est - result["estimate"]) < 1e-5 and abs(se - result["se"]) < 1e-5, (got, result)
        for s in result["secondary"]:
            e2, s2 = got[f"arm_{s['arm']}_month5"]
            assert abs(e2 - s["estimate"]) < 1e-5 and abs(s2 - s["se"]) < 1e-5
        boundary = "boundary fit" in (result.get("note") or "")
        assert boundary == (child_sd == 0.0) and boundary == ("singular" in out), (result.get("note"), out[-500:])


def _long(table: Table):
    from trial.analysis.service import long_form
    return long_form([v.name for v in table.vars], table.rows, "arm", list(NAMES.values()), VISITS, ["site"])


def test_statsmodels_mixedlm_agrees_with_the_locks_fit():
    """statsmodels' MixedLM (REML) on the same design gives the same estimates, variances and, given
    its variance estimates, the same standard errors; at the boundary the fit is least squares."""
    import numpy as np
    from statsmodels.regression.linear_model import OLS
    from statsmodels.regression.mixed_linear_model import MixedLM

    from trial.analysis.lmm import design, fit
    for effect, seed, child_sd, n in CASES:
        long = _long(simulated_adsl(effect, seed=seed, child_sd=child_sd, n=n))
        terms = {"group": ["low", "high"]}
        ours, names, _ = fit(long, VISITS, terms, ["site"])
        _, x, y, groups, _ = design(long, VISITS, terms, ["site"])
        if ours.boundary:
            ols = OLS(y, x).fit()
            assert np.allclose(ours.params, ols.params, atol=1e-8) and np.allclose(ours.se, ols.bse, atol=1e-8)
            assert ours.tau2 < 1e-6 and abs(ours.sigma2 - ols.scale) < 1e-8
            continue
        sm = MixedLM(y, x, groups=groups).fit(reml=True, method=["bfgs", "lbfgs"])
        assert sm.converged
        assert np.allclose(ours.params, sm.fe_params, atol=1e-4), (ours.params, sm.fe_params)
        tau2 = float(np.asarray(sm.cov_re).ravel()[0])
        # (statsmodels stops a little short of the optimum: its variances agree to 1e-4 (relative, when above 1), and its
        # REML log-likelihood, times -2, is never below the lock's criterion)
        assert abs(ours.tau2 - tau2) < 1e-4 * max(1.0, tau2) and abs(ours.sigma2 - sm.scale) < 1e-4 * max(1.0, sm.scale)
        assert -1e-7 < -2 * sm.llf - ours.reml_criterion < 1e-5, "the criterion is -2 x the REML log-likelihood, at its optimum"
        _, index = np.unique(groups, return_inverse=True)
        sums = np.zeros((index.max() + 1, x.shape[1]))
        np.add.at(sums, index, x)
        c = tau2 / (sm.scale + np.bincount(index) * tau2)
        se = np.sqrt(np.diag(np.linalg.inv((x.T @ x - sums.T @ (sums * c[:, None])) / sm.scale)))
        assert np.allclose(ours.se, se, atol=1e-4)
        assert names.index("group_month5") >= 0


def test_a_design_that_cannot_be_estimated_is_refused_in_words():
    """An effect the data cannot estimate (no child of the pooled arms seen at 5 months) is not
    fitted with a made-up number: its column is dropped as lme4 drops it, and the analysis says
    why (tests/test_analysis_rank.py checks such designs against lme4)."""
    t = simulated_adsl(-1.0, n=80)
    t.rows = [r[:6] + (None,) + r[7:] if r[3] in ("low", "high") else r for r in t.rows]
    result, text, _, _ = primary_analysis(CONTENT, t, blinded=False)
    assert result["estimate"] is None and result["estimable"] is False and result["dropped_columns"] == ["group_month5"]
    assert "The effect cannot be estimated from these data: no child of" in result["note"] and "rank deficient" in result["note"]


def blinded_adsl(table: Table, weights: dict[str, int], code: dict[str, str]) -> Table:
    """The table as a blinded bundle holds it: ``arm`` the dummy code ``code`` gives each arm, the
    dummy weights in its meta."""
    t = Table(table.name, table.label, list(table.vars), [r[:3] + (code[r[3]],) + r[4:] for r in table.rows],
              meta={"dummy_weights": weights})
    t.vars[3] = Var("arm", "Arm: DUMMY allocation (blinded)", "str", codes=dummy_arm_codes(CONTENT, weights))
    return t


def test_a_blinded_dataset_is_analysed_on_its_dummy_codes_and_says_so():
    t = blinded_adsl(simulated_adsl(-2.0), {"A": 2, "B": 1, "C": 1}, {"low": "B", "high": "C", "usual": "A"})
    result, text, py, r = primary_analysis(CONTENT, t, blinded=True)
    assert result["allocation"] == "dummy" and "DUMMY" in result["note"] and "DUMMY" in text
    assert result["reference_arm"] == "A" and sorted(result["pooled_arms"]) == ["B", "C"]
    assert "Dummy arm A" in result["comparison"] and "usual care" not in json.dumps(result)
    # one variable name, and the scripts the same text as the unblinded bundle's (the arms by level number)
    _, _, py_real, r_real = primary_analysis(CONTENT, simulated_adsl(-2.0), blinded=False)
    assert py == py_real and r == r_real
    assert 'ARM = "arm"' in py and "adsl$arm" in r and '"usual"' not in py + r and '"A"' not in py + r


def test_the_arms_level_order_puts_the_reference_first_in_both_bundles():
    """The reference arm first, then the protocol's order; each dummy code in the place of the arm
    it stands for (by weight: the code of weight 2 stands for usual care); without [analysis], the
    protocol's first arm is the reference."""
    from trial.analysis.service import arm_levels, arms_for
    assert [k for k, _ in arm_codes(CONTENT).items] == ["usual", "low", "high"] == arm_levels(CONTENT)
    assert arm_codes(CONTENT).code_of() == {"usual": 1, "low": 2, "high": 3}
    for weights, order in (({"A": 2, "B": 1, "C": 1}, ["A", "B", "C"]), ({"A": 1, "B": 2, "C": 1}, ["B", "A", "C"]),
                           ({"A": 1, "B": 1, "C": 2}, ["C", "A", "B"])):
        codes = dummy_arm_codes(CONTENT, weights)
        assert [k for k, _ in codes.items] == order == arm_levels(CONTENT, True, weights)
        assert codes.name == arm_codes(CONTENT).name == "ARM" and codes.code_of()[order[0]] == 1
        ref, _, others, _ = arms_for(CONTENT, True, weights)
        assert ref == order[0] and others == order[1:] and weights[ref] == 2
    without = {k: v for k, v in CONTENT.items() if k != "analysis"}
    assert arm_levels(without) == ["low", "high", "usual"]


def test_the_protocols_analysis_is_checked_when_loaded():
    text = PROTOCOL.read_text()
    assert CONTENT["analysis"]["visits"] == VISITS and CONTENT["analysis"]["reference_arm"] == "usual"
    for old, new, key in (('reference_arm = "usual"', 'reference_arm = "none"', "analysis.reference_arm"),
                          ('visits = ["baseline", "month2", "month5"]', 'visits = ["month2", "month5"]', "analysis.visits"),
                          ('visits = ["baseline", "month2", "month5"]', 'visits = ["baseline", "month2"]', "analysis.visits"),
                          ('pooled_arms = ["low", "high"]', 'pooled_arms = ["low", "usual"]', "analysis.pooled_arms"),
                          ('adjust = ["site"]', 'adjust = ["age"]', "analysis.adjust"),
                          ('per_protocol_min_dose = 0.5', 'per_protocol_min_dose = 1.5', "analysis.per_protocol_min_dose"),
                          ('{ instrument = "ados2", field = "rrb" }', '{ instrument = "ados2", field = "nope" }',
                           "analysis.secondary_outcomes[0].field"),
                          ('model = "mixed_model"', 'model = "anova"', "analysis.model")):
        assert old in text
        with pytest.raises(ProtocolError) as e:
            parse(text.replace(old, new, 1))
        assert e.value.key == key, (new, e.value)
    # [analysis] and its sub-tables ([analysis.estimand], [analysis.mi], ...) up to the next other table
    without = re.sub(r"\n\[analysis\]\n.*?(?=\n\[(?!\[?analysis\.)|\Z)", "\n", text, flags=re.S)
    assert "[analysis]" not in without and "analysis" not in parse(without)


def test_an_optimum_beyond_the_searched_range_is_not_called_converged():
    """Children differing ten thousand times more than their visits do: the criterion still falls at
    the grid's last point, so the fit says it did not converge."""
    import numpy as np

    from trial.analysis.lmm import reml_fit
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(40), 3)
    x = np.column_stack([np.ones(120), np.tile([0.0, 1.0, 2.0], 40)])
    y = rng.normal(0, 1e4, 40)[groups] + x[:, 1] + rng.normal(0, 1e-1, 120)
    wide = reml_fit(x, y, groups, ["const", "t"])
    assert wide.converged is False and "Converged: NO" in wide.summary()
    y = rng.normal(0, 2, 40)[groups] + x[:, 1] + rng.normal(0, 1, 120)
    assert reml_fit(x, y, groups, ["const", "t"]).converged is True


FIT_IN_A_PROCESS = """
import hashlib, sys
import numpy as np
from trial.analysis.lmm import reml_fit
rng = np.random.default_rng(5)
n, k = 10000, 3
groups = np.repeat(np.arange(n), k)
x = np.column_stack([np.ones(n * k), rng.normal(size=(n * k, 14))])
y = x @ rng.normal(size=15) + np.repeat(rng.normal(size=n), k) + rng.normal(size=n * k)
r = reml_fit(x, y, groups, [f"b{i}" for i in range(15)])
print(hashlib.sha256(np.concatenate([r.params, r.se, [r.theta, r.sigma2]]).tobytes()).hexdigest())
"""


def test_the_fit_has_the_same_digits_whatever_blas_threads_the_process_has():
    """OpenBLAS with two threads splits the sums of 30,000 rows differently from one (the last
    digits change); the fit runs BLAS in one thread, so a lock's analysis is the same bytes in a
    worker (one thread), in `trial lock rebuild` or in a process that left BLAS its default."""
    import os
    root = Path(__file__).resolve().parents[1]
    digests = set()
    for threads in ("1", "2"):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads, "PYTHONPATH": str(root)}
        out = subprocess.run([sys.executable, "-c", FIT_IN_A_PROCESS], env=env, capture_output=True, text=True,
                             timeout=120, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1, digests
