"""Small-sample degrees of freedom in the mixed model (issue 31): Satterthwaite's as lmerTest
computes them and Kenward-Roger's (adjusted covariance and df) as pbkrtest computes them, for one
coefficient and for a linear contrast; checked against R (lmerTest's ``summary`` and ``contest``,
pbkrtest's ``vcovAdj`` and ``Lb_ddf``) on simulated data sets (balanced, unbalanced, rank
deficient, a boundary fit, the simulated TIME-A trial), and without R against a dense
implementation of pbkrtest's formulas and numerical derivatives of the REML deviance. Wald's
default is unchanged."""
from __future__ import annotations

import math
import shutil
import subprocess

import numpy as np
import pytest

from trial.analysis.lmm import (
    Z95,
    design,
    fit,
    kenward_roger,
    kenward_roger_parts,
    reml_fit,
    satterthwaite_df,
    varpar_hessian,
)

needs_r = pytest.mark.skipif(shutil.which("Rscript") is None,
                             reason="R is not installed (.ci/run installs r-base-core, lme4, lmerTest and pbkrtest)")
VISITS = ["baseline", "month2", "month5"]
TERMS = {"group": ["low", "high"], "high": ["high"]}


def simulate_long(n: int, seed: int, child_sd: float = 2.0, missing: float = 0.1, arms=("low", "high", "usual", "usual"),
                  visits=VISITS, empty: tuple = ()) -> dict:
    """Long data (studyid, visit, arm, y, site) of ``n`` children: a site effect, a child's random
    intercept (SD ``child_sd``), residual SD 1.5, the music arms 1.5 lower at the last visit; about
    ``missing`` of the follow-ups missing; ``empty``: (arm, visit) pairs without any observation."""
    rng = np.random.default_rng(seed)
    site_effect = rng.normal(size=5)
    out: dict = {"studyid": [], "visit": [], "arm": [], "y": [], "site": []}
    for i in range(n):
        arm, site = arms[rng.integers(len(arms))], int(rng.integers(5))
        child = rng.normal(0, child_sd)
        for k, v in enumerate(visits):
            y = 12 + site_effect[site] + child - (1.5 * k / (len(visits) - 1) if arm != "usual" else 0)
            gone = (k > 0 and rng.random() < missing) or (arm, v) in empty
            out["studyid"].append(f"C{i:04d}")
            out["visit"].append(v)
            out["arm"].append(arm)
            out["y"].append(None if gone else float(y + rng.normal(0, 1.5)))
            out["site"].append(f"S{site}")
    return out


def unbalanced_long(seed: int = 5) -> dict:
    """120 children with 1 to 5 visits each (a visit kept with probability falling with time),
    arms 1:2:5, a child's SD of 1 against a residual SD of 1.5."""
    visits = ["v0", "v1", "v2", "v3", "v4"]
    long = simulate_long(120, seed, child_sd=1.0, missing=0.0, arms=("low", "high", "high", *["usual"] * 5),
                         visits=visits)
    rng = np.random.default_rng(seed + 1)
    keep_p = {"v0": 1.0, "v1": 0.8, "v2": 0.6, "v3": 0.5, "v4": 0.35}
    long["y"] = [y if rng.random() < keep_p[v] else None for y, v in zip(long["y"], long["visit"])]
    return long


def sap_long(n: int = 200, seed: int = 3) -> dict:
    """The simulated TIME-A trial's primary outcome, long (its sites and arms)."""
    from tests.sap_sim import CONTENT, simulate
    from trial.analysis.data import analysis_data
    d = analysis_data(CONTENT, simulate(n=n, seed=seed), blinded=False)
    return d.long("ados2", "social_affect", VISITS, adjust=[])


def cases() -> dict:
    """name -> (long, visits, adjust, the names of the coefficients and contrasts to test)."""
    five = ["v0", "v1", "v2", "v3", "v4"]
    return {
        "balanced": (simulate_long(60, 1, missing=0.0), VISITS, ["site"]),
        "missing": (simulate_long(150, 2), VISITS, ["site"]),
        "unbalanced": (unbalanced_long(), five, ["site"]),
        # no child of the high arm seen at 2 months, no follow-up at all in site S4: a column dropped
        "rank_deficient": (_rank_deficient(), VISITS, ["site"]),
        # no observation at all at 2 months (an early lock): its comparisons' columns dropped
        "no_visit": (simulate_long(80, 8, empty=(("low", "month2"), ("high", "month2"), ("usual", "month2"))),
                     VISITS, ["site"]),
        "boundary": (simulate_long(60, 5, child_sd=0.0), VISITS, ["site"]),
        "time_a": (sap_long(), VISITS, []),
    }


def _rank_deficient() -> dict:
    long = simulate_long(100, 7, empty=(("high", "month2"),))
    long["y"] = [None if (s == "S4" and v != "baseline") else y for y, s, v in zip(long["y"], long["site"], long["visit"])]
    long["y"] = [None if v == "month2" and a == "high" else y for y, v, a in zip(long["y"], long["visit"], long["arm"])]
    return long


# ---- the R side -----------------------------------------------------------------------------------

R_SCRIPT = r"""
suppressMessages({library(lmerTest); library(pbkrtest)})
args <- commandArgs(TRUE)
for (case in args) {
  d <- read.csv(paste0(case, ".csv"))
  xs <- grep("^x", names(d), value = TRUE)
  f <- suppressMessages(suppressWarnings(lmer(as.formula(paste("y ~ 0 +", paste(xs, collapse = " + "),
       "+ (1 | child)")), data = d, REML = TRUE, control = lmerControl(optimizer = "bobyqa",
       optCtrl = list(rhobeg = 2e-4, rhoend = 2e-11)))))
  cf <- summary(f)$coefficients
  Va <- vcovAdj(f)
  cons <- as.matrix(read.csv(paste0(case, "_L.csv")))
  cons <- cons[, rownames(cf), drop = FALSE]  # lme4's kept columns
  for (k in seq_len(nrow(cons))) {
    L <- cons[k, ]
    s <- contest(f, L, joint = FALSE, ddf = "Satterthwaite")
    kr <- contest(f, L, joint = FALSE, ddf = "Kenward-Roger")
    cat(sprintf("%s %d sat %.15g %.15g %.15g %.15g %.15g\n", case, k - 1, s$Estimate, s[["Std. Error"]], s$df,
                s[["t value"]], s[["Pr(>|t|)"]]))
    cat(sprintf("%s %d kr %.15g %.15g %.15g %.15g %.15g\n", case, k - 1, kr$Estimate, kr[["Std. Error"]], kr$df,
                kr[["t value"]], kr[["Pr(>|t|)"]]))
    cat(sprintf("%s %d pbkr %.15g %.15g\n", case, k - 1, sqrt(drop(t(L) %*% as.matrix(Va) %*% L)),
                Lb_ddf(L, vcov(f), Va)))
  }
  cat(sprintf("%s coefs %s\n", case, paste(rownames(cf), collapse = ",")))
  cat(sprintf("%s summarydf %s\n", case, paste(sprintf("%.15g", cf[, "df"]), collapse = ",")))
  cat(sprintf("%s theta %.15g\n", case, getME(f, "theta")))
}
"""


def _contrasts(names: list[str], dropped: list[str]) -> list[dict]:
    """Each comparison's coefficients (estimable ones) and a contrast of two of them."""
    kept = [n for n in names if n not in dropped]
    out = [{n: 1.0} for n in kept if n.startswith(("group_", "high_"))]
    out.append({"group_month5": 1.0, "high_month5": 0.5})
    out.append({"Intercept": 1.0, "visit_month5": 1.0, "group_month5": 1.0})
    return [c for c in out if set(c) <= set(kept)]


@pytest.fixture(scope="module")
def r_results(tmp_path_factory):
    """Our fits and R's numbers, by case: (fit, contrasts, {(k, kind): numbers}, R's summary df, R's theta)."""
    if shutil.which("Rscript") is None:
        pytest.skip("R is not installed")
    folder = tmp_path_factory.mktemp("lmm_df")
    ours = {}
    for name, (long, visits, adjust) in cases().items():
        names, x, y, groups, _ = design(long, visits, {k: v for k, v in TERMS.items()}, adjust)
        res = reml_fit(x, y, groups, names)
        cons = _contrasts(names, res.dropped)
        cols = {f"x{j}": x[:, j] for j in range(x.shape[1])}
        table = np.column_stack([y, np.unique(groups, return_inverse=True)[1], *cols.values()])
        np.savetxt(folder / f"{name}.csv", table, delimiter=",", header=",".join(["y", "child", *cols]), comments="")
        lmat = np.array([[c.get(n, 0.0) for n in names] for c in cons])
        np.savetxt(folder / f"{name}_L.csv", lmat, delimiter=",", header=",".join(cols), comments="")
        ours[name] = (res, names, cons)
    (folder / "df.R").write_text(R_SCRIPT)
    done = subprocess.run(["Rscript", "df.R", *ours], cwd=folder, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    got: dict = {name: {} for name in ours}
    for line in done.stdout.splitlines():
        case, key, *rest = line.split()
        if key in ("coefs", "summarydf", "theta"):
            got[case][key] = rest[0].split(",")
        else:
            got[case][(int(key), rest[0])] = [float(v) for v in rest[1:]]
    return {name: (*ours[name], got[name]) for name in ours}


def _close(a: float, b: float, rel: float) -> bool:
    return abs(a - b) <= rel * max(abs(b), 1.0)


@needs_r
@pytest.mark.parametrize("case", list(cases()))
def test_satterthwaite_equals_lmertest(r_results, case):
    res, names, cons, got = r_results[case]
    assert [names[int(c[1:])] for c in got["coefs"]] == res.names, "lme4 kept the same columns"
    for k, weights in enumerate(cons):
        ours = res.contrast(weights, "satterthwaite")
        est, se, df, t, p = got[(k, "sat")]
        assert _close(ours["estimate"], est, 1e-6) and _close(ours["se"], se, 1e-6), (case, weights)
        assert abs(ours["df"] - df) <= 1e-4 * df, (case, weights, ours["df"], df)
        assert _close(ours["statistic"], t, 1e-5) and abs(ours["p_value"] - p) <= 1e-6, (case, weights, ours, p)
    # summary()'s df column: each coefficient's
    for name, df in zip(res.names, map(float, got["summarydf"])):
        assert abs(res.term(name, "satterthwaite")["df"] - df) <= 1e-4 * df, (case, name)


@needs_r
@pytest.mark.parametrize("case", list(cases()))
def test_kenward_roger_equals_pbkrtest(r_results, case):
    res, _, cons, got = r_results[case]
    for k, weights in enumerate(cons):
        ours = res.contrast(weights, "kenward_roger")
        _, se, df, t, p = got[(k, "kr")]
        se_pb, df_pb = got[(k, "pbkr")]
        assert abs(se - se_pb) < 1e-12 and abs(df - df_pb) < 1e-9 * df, "lmerTest's contest is pbkrtest's"
        assert _close(ours["se"], se, 1e-5), (case, weights, ours["se"], se)
        assert abs(ours["df"] - df) <= 1e-4 * df, (case, weights, ours["df"], df)
        assert _close(ours["statistic"], t, 1e-5) and abs(ours["p_value"] - p) <= 1e-6, (case, weights, ours, p)
        assert ours["se"] >= res.contrast(weights)["se"], "Kenward-Roger's covariance is inflated"


def test_the_cases_are_what_they_claim():
    """Rank deficient: columns dropped, the effect still estimated; boundary: theta at zero;
    unbalanced: children with 1 to 5 observations."""
    fits = {name: fit(long, visits, TERMS, adjust)[0] for name, (long, visits, adjust) in cases().items()}
    assert fits["rank_deficient"].dropped == ["high_month2"]
    assert fits["no_visit"].dropped == ["group_month2", "high_month2"] and "visit_month2" not in fits["no_visit"].names
    assert fits["boundary"].boundary and not fits["missing"].boundary
    assert fits["unbalanced"].group_sizes[0] == 1 and fits["unbalanced"].group_sizes[1] == 5
    rd = fits["rank_deficient"]
    dropped = rd.dropped[0]
    for method in ("wald", "satterthwaite", "kenward_roger"):
        none = rd.term(dropped, method)
        assert none["estimate"] is None and none["df"] is None and none["p_value"] is None
        assert rd.contrast({dropped: 1.0, "group_month5": 1.0}, method)["estimate"] is None
        assert rd.term("group_month5", method)["p_value"] is not None


# ---- without R: the formulas checked by other means -----------------------------------------------

def _deviance(res, x, y, groups, theta: float, sigma: float) -> float:
    """-2 REML log-likelihood at (theta, sigma), from dense matrices (lmerTest's devfun_vp)."""
    _, idx = np.unique(groups, return_inverse=True)
    z = np.eye(idx.max() + 1)[idx]
    a = np.eye(len(y)) + theta * theta * z @ z.T
    ai = np.linalg.inv(a)
    m = x.T @ ai @ x
    beta = np.linalg.solve(m, x.T @ ai @ y)
    r = y - x @ beta
    n, p = x.shape
    return (np.linalg.slogdet(a)[1] + np.linalg.slogdet(m)[1] + (n - p) * math.log(2 * math.pi * sigma ** 2)
            + float(r @ ai @ r) / sigma ** 2)


def test_the_analytic_hessian_is_the_deviances_numerical_one():
    long = simulate_long(40, 9)
    names, x, y, groups, _ = design(long, VISITS, TERMS, [])
    res = reml_fit(x, y, groups, names)
    t0, s0, h = res.theta, math.sqrt(res.sigma2), 1e-4

    def dev(t, s):
        return _deviance(res, x, y, groups, t, s)
    num = np.array([[(dev(t0 + h, s0) - 2 * dev(t0, s0) + dev(t0 - h, s0)) / h ** 2,
                     (dev(t0 + h, s0 + h) - dev(t0 + h, s0 - h) - dev(t0 - h, s0 + h) + dev(t0 - h, s0 - h)) / (4 * h * h)],
                    [0.0, (dev(t0, s0 + h) - 2 * dev(t0, s0) + dev(t0, s0 - h)) / h ** 2]])
    num[1, 0] = num[0, 1]
    assert np.allclose(varpar_hessian(res), num, rtol=1e-5, atol=1e-5), (varpar_hessian(res), num)
    assert abs(dev(t0 + h, s0) - dev(t0 - h, s0)) / (2 * h) < 1e-4, "the estimates are the deviance's optimum"


def _dense_kenward_roger(res, x, groups, ell):
    """pbkrtest's vcovAdj and Lb_ddf, written with the dense n x n matrices as pbkrtest writes them."""
    _, idx = np.unique(groups, return_inverse=True)
    z = np.eye(idx.max() + 1)[idx]
    g = [z @ z.T, np.eye(len(idx))]
    sigma = res.tau2 * g[0] + res.sigma2 * g[1]
    si = np.linalg.inv(sigma)
    phi = res.cov
    tt = si @ x
    oo = [gi @ si @ x for gi in g]
    pp = [-(o.T @ tt) for o in oo]
    qq = {(i, j): oo[i].T @ si @ oo[j] for i in range(2) for j in range(2)}
    hh = [gi @ si for gi in g]
    ie2 = np.array([[np.trace(hh[i] @ hh[j]) - 2 * np.sum(phi * qq[i, j]) + np.trace(phi @ pp[i] @ phi @ pp[j])
                     for j in range(2)] for i in range(2)])
    ww = 2 * np.linalg.inv(ie2)
    uu = sum(ww[i, j] * (qq[i, j] - pp[i] @ phi @ pp[j]) for i in range(2) for j in range(2))
    return phi + 2 * phi @ uu @ phi, ww


def test_kenward_roger_through_the_blocks_is_the_dense_computation():
    for long in (simulate_long(50, 12), unbalanced_long(13)):
        visits = sorted(set(long["visit"]))
        names, x, y, groups, _ = design(long, visits, TERMS, ["site"])
        res = reml_fit(x, y, groups, names)
        adjusted, _, _, ww = kenward_roger_parts(res)
        dense, dense_w = _dense_kenward_roger(res, x[:, [names.index(n) for n in res.names]], groups, None)
        assert np.allclose(adjusted, dense, rtol=1e-9, atol=1e-12) and np.allclose(ww, dense_w, rtol=1e-9)
        assert np.all(np.diag(adjusted) >= np.diag(res.cov))


def test_the_wald_default_is_unchanged():
    """term(name) is Wald's, as the lock has always reported it: the normal 97.5% point, the
    two-sided normal p value, no df."""
    res = fit(simulate_long(80, 21), VISITS, TERMS, ["site"])[0]
    i = res.names.index("group_month5")
    est, se = float(res.params[i]), float(res.se[i])
    t = res.term("group_month5")
    assert t == res.term("group_month5", "wald")
    assert t["estimate"] == est and t["se"] == se and t["df"] is None
    assert t["ci_low"] == est - Z95 * se and t["ci_high"] == est + Z95 * se
    assert t["p_value"] == math.erfc(abs(est / se) / math.sqrt(2)) and t["statistic"] == est / se
    assert res.contrast({"group_month5": 1.0}) == t
    # other alphas: the normal quantile; t intervals are wider than Wald's and converge to them
    t90 = res.term("group_month5", alpha=0.10)
    assert abs((t90["ci_high"] - est) / se - 1.6448536269514722) < 1e-12
    sat = res.term("group_month5", "satterthwaite")
    assert sat["ci_high"] - sat["ci_low"] > t["ci_high"] - t["ci_low"] and sat["p_value"] > t["p_value"]


def test_the_boundary_fit_has_the_least_squares_df():
    """At theta = 0 the covariance does not move with theta: Satterthwaite's df are N - p."""
    res = fit(simulate_long(60, 5, child_sd=0.0), VISITS, TERMS, ["site"])[0]
    assert res.boundary and res.theta == 0.0
    ell = np.eye(len(res.names))[res.names.index("group_month5")]
    assert abs(satterthwaite_df(res, ell) - (res.n_obs - len(res.names))) < 1e-8


def test_bad_arguments_are_refused():
    res = fit(simulate_long(40, 2), VISITS, TERMS, [])[0]
    with pytest.raises(ValueError, match="df_method"):
        res.term("group_month5", "containment")
    with pytest.raises(KeyError, match="no_such"):
        res.contrast({"no_such": 1.0})
    ell = np.eye(len(res.names))[res.names.index("group_month5")]
    var, df = kenward_roger(res, ell)
    i = res.names.index("group_month5")
    assert var > res.cov[i, i] and 0 < df < res.n_obs


def test_the_simulated_trial_has_sensible_df():
    """The TIME-A simulation (200 children): both methods' df are below the residual df and close
    to each other; the interval still covers the truth."""
    from tests.sap_sim import Truth
    res = fit(sap_long(), VISITS, {"group": ["low", "high"]}, [])[0]
    sat, kr = res.term("group_month5", "satterthwaite"), res.term("group_month5", "kenward_roger")
    assert 50 < sat["df"] < res.n_obs - len(res.names) and abs(sat["df"] - kr["df"]) < 0.05 * sat["df"]
    assert kr["ci_low"] < Truth().itt_pooled() < kr["ci_high"]


def test_degrees_of_freedom_that_cannot_be_had_give_no_inference_and_no_nan(monkeypatch):
    """A Satterthwaite denominator that is not positive (a degenerate Hessian) gives the estimate
    without an interval or p value, and df None (never NaN in a JSON file)."""
    from trial.analysis import lmm
    res = fit(simulate_long(40, 2), VISITS, TERMS, [])[0]
    monkeypatch.setattr(lmm, "varpar_hessian", lambda f: np.zeros((2, 2)))
    out = res.term("group_month5", "satterthwaite")
    assert out["estimate"] == res.term("group_month5")["estimate"]
    assert out["df"] is None and out["p_value"] is None and out["ci_low"] is None and out["se"] is None
