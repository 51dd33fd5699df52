"""The protocol's primary analysis, run on a lock's analysis dataset (ADSL).

TIME-A's (the protocol's ``[analysis]``): the primary outcome at baseline and each follow-up visit
up to the primary one, in a linear mixed model with fixed effects for visit, group x visit at
each follow-up visit and the adjustment factors (site), and a random intercept per child, fitted
by REML. Group is the pooled arms (music therapy, both frequencies) against the reference arm
(usual care); the effect is the group x primary-visit coefficient: the difference between the
groups in mean change from baseline to the primary visit, with its Wald 95% confidence interval
and p value. The secondary analysis puts each arm against the reference arm in one model.

The fitting function :func:`fit` uses pandas, NumPy and statsmodels only and is written into the
bundle's ``analysis/primary.py`` as it stands here, so the bundle reproduces its own numbers; the
bundle's ``analysis/primary.R`` fits the same model with lme4.
"""
from __future__ import annotations

import inspect
import json
import math
import platform
import textwrap
import warnings

Z95 = 1.959963984540054  # the normal distribution's 97.5% point


def fit(long, visits: list[str], terms: dict[str, list[str]], adjust: list[str]):
    """Fit the model to ``long`` (one row per child and visit: columns studyid, visit, arm, y and
    the adjustment factors). ``terms`` names each comparison's indicator and the arms it sets to 1
    (the reference arm is 0 in every one); each indicator enters multiplied by each follow-up
    visit (``<term>_<visit>``). Factors are coded against their first level in sorted order.
    Returns the statsmodels result and the design's column names."""
    # deferred: NumPy, pandas and statsmodels only when an analysis runs (a lock's bundle: a cold path)
    import numpy as np
    import pandas as pd
    from statsmodels.regression.mixed_linear_model import MixedLM

    long = long[long["y"].notna() & long["arm"].notna()].sort_values(["studyid", "visit"], kind="stable")
    long = long.reset_index(drop=True)
    cols = {"Intercept": np.ones(len(long))}
    for v in visits[1:]:
        cols[f"visit_{v}"] = (long["visit"] == v).astype(float).to_numpy()
    for term, arms in terms.items():
        member = long["arm"].isin(arms).astype(float).to_numpy()
        for v in visits[1:]:
            cols[f"{term}_{v}"] = member * (long["visit"] == v).astype(float).to_numpy()
    for factor in adjust:
        levels = sorted(long[factor].dropna().unique())
        for level in levels[1:]:
            cols[f"{factor}_{level}"] = (long[factor] == level).astype(float).to_numpy()
    exog = pd.DataFrame(cols)
    y = long["y"].astype(float).to_numpy()
    groups = long["studyid"].to_numpy()
    result = None
    with warnings.catch_warnings():  # convergence is reported in the result (converged), not as a warning
        warnings.simplefilter("ignore")
        for method in ("lbfgs", "bfgs", "powell", "nm"):  # each on its own: one that fails does not end the search
            try:
                fitted = MixedLM(y, exog, groups=groups).fit(reml=True, method=method)
            except (np.linalg.LinAlgError, ValueError):
                continue
            if fitted.converged and np.all(np.isfinite(np.asarray(fitted.fe_params))):
                result = fitted
                break
    if result is None or float(result.cov_re.iloc[0, 0]) <= 0:
        # the children's variance is estimated at zero (the boundary, lme4's "singular fit"): the REML
        # fit is then least squares, whose estimates and standard errors are the model's
        # deferred, as above: only for a boundary fit
        from types import SimpleNamespace

        from statsmodels.regression.linear_model import OLS  # deferred, as above
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ols = OLS(y, exog).fit()
        result = SimpleNamespace(fe_params=ols.params, bse_fe=ols.bse, cond_bse=ols.bse, scale=ols.scale,
                                 converged=True, boundary=True, summary=None)
    else:
        # the fixed effects' standard errors given the variance estimates, (X' V^-1 X)^-1, as lme4 and
        # SAS PROC MIXED give them (statsmodels' bse_fe inverts the whole Hessian, variances included)
        tau2, sigma2 = float(result.cov_re.iloc[0, 0]), float(result.scale)
        x = exog.to_numpy()
        codes, index = np.unique(groups, return_inverse=True)
        sums = np.zeros((len(codes), x.shape[1]))
        np.add.at(sums, index, x)
        sizes = np.bincount(index)
        c = tau2 / (sigma2 + sizes * tau2)
        info = (x.T @ x - sums.T @ (sums * c[:, None])) / sigma2
        result.cond_bse = pd.Series(np.sqrt(np.diag(np.linalg.inv(info))), index=exog.columns)
    return result, list(exog.columns), long


def long_form(adsl_names: list[str], rows: list[tuple], arm_name: str, outcome_vars: list[str], visits: list[str],
              adjust: list[str]):
    """The long data of the model from the ADSL rows: one row per child and analysis visit."""
    import pandas as pd  # deferred: pandas only when an analysis runs (a cold path)
    idx = {n: i for i, n in enumerate(adsl_names)}
    out = []
    for r in rows:
        for v, name in zip(visits, outcome_vars):
            rec = {"studyid": r[idx["studyid"]], "visit": v, "arm": r[idx[arm_name]], "y": r[idx[name]]}
            rec.update({f: r[idx[adjust_column(f)]] for f in adjust})
            out.append(rec)
    return pd.DataFrame(out, columns=["studyid", "visit", "arm", "y", *adjust])


def adjust_column(factor: str) -> str:
    """The ADSL column of a randomization factor: site, else s_ and the factor's first six letters."""
    return "site" if factor == "site" else f"s_{factor[:6]}"


def _term(result, names: list[str], name: str, used) -> dict:
    """One coefficient with its Wald 95% CI and p. A degenerate fit (a standard error that is not
    finite, or no residual variation left, when the SEs are rounding noise) gives no inference."""
    i = names.index(name)
    est, se = float(result.fe_params.iloc[i]), float(result.cond_bse.iloc[i])
    exact = not float(result.scale) > 1e-10 * max(1.0, float(used["y"].var() or 0.0))
    if exact or not (math.isfinite(est) and math.isfinite(se) and se > 0):
        return {"estimate": est if math.isfinite(est) else None, "se": None, "ci_low": None, "ci_high": None, "p_value": None}
    p = math.erfc(abs(est / se) / math.sqrt(2))
    return {"estimate": est, "se": se, "ci_low": est - Z95 * se, "ci_high": est + Z95 * se, "p_value": p}


def _summary(result, names: list[str]) -> str:
    """The model's summary: statsmodels' for a mixed-model fit (it carries no date, so the bundle's
    bytes stay the same), else a coefficient table of the least-squares fit at the boundary."""
    if result.summary is not None:
        return result.summary().as_text()
    lines = [f"{'':<18}{'Coef.':>10}{'Std.Err.':>10}{'z':>8}{'P>|z|':>8}{'[0.025':>10}{'0.975]':>10}"]
    for i, name in enumerate(names):
        est, se = float(result.fe_params.iloc[i]), float(result.cond_bse.iloc[i])
        if math.isfinite(se) and se > 0:
            z = est / se
            lines.append(f"{name:<18}{est:>10.3f}{se:>10.3f}{z:>8.3f}{math.erfc(abs(z) / math.sqrt(2)):>8.3f}"
                         f"{est - Z95 * se:>10.3f}{est + Z95 * se:>10.3f}")
        else:
            lines.append(f"{name:<18}{est:>10.3f}{'—':>10}")
    return "Least squares (the children's variance at zero), scale " + f"{float(result.scale):.4f}\n" + "\n".join(lines)


def software() -> str:
    import numpy  # deferred: the libraries are loaded only when an analysis runs (a cold path)
    import statsmodels
    return f"statsmodels {statsmodels.__version__} (MixedLM, REML), NumPy {numpy.__version__}, Python {platform.python_version()}"


def analysis_spec(content: dict, adsl_vars) -> dict:
    """The protocol's analysis with the ADSL variables it reads."""
    a, prim = content["analysis"], content["primary_outcome"]
    by = {(v.instrument, v.field, v.visit): v.name for v in adsl_vars if v.field}
    outcome_vars = [by[(prim["instrument"], prim["field"], vk)] for vk in a["visits"]]
    ins = next(i for i in content["instruments"] if i["key"] == prim["instrument"])
    fld = next(f for f in ins["fields"] if f["key"] == prim["field"])
    return {**a, "outcome": f"{prim['instrument']}.{prim['field']}", "outcome_label": f"{ins['label']}: {fld['label']}",
            "primary_visit": prim["visit"], "outcome_vars": outcome_vars}


def arms_for(content: dict, blinded: bool, dummy_weights: dict[str, int] | None) -> tuple[str, list[str], list[str], dict]:
    """(reference, pooled, every other arm, label of each) in the dataset's codes. A blinded
    dataset's dummy codes stand for the arms by weight alone: codes and arms sorted by weight are
    paired in order, so the dummy reference is a code with the reference arm's share."""
    a = content["analysis"]
    arms = content["arms"]
    if not blinded:
        labels = {x["key"]: x["label"] for x in arms}
        return a["reference_arm"], list(a["pooled_arms"]), [x["key"] for x in arms if x["key"] != a["reference_arm"]], labels
    weights = dummy_weights or {}
    codes = sorted(weights, key=lambda c: (weights[c], c))
    by_weight = sorted(arms, key=lambda x: (x["weight"], [y["key"] for y in arms].index(x["key"])))
    stands = {x["key"]: c for x, c in zip(by_weight, codes)}
    labels = {c: f"Dummy arm {c}" for c in codes}
    return (stands[a["reference_arm"]], [stands[k] for k in a["pooled_arms"]],
            sorted(c for k, c in stands.items() if k != a["reference_arm"]), labels)


def primary_analysis(content: dict, adsl, blinded: bool) -> tuple[dict, str, str, str]:
    """Run the protocol's analysis on the ADSL table. Returns (primary.json, primary.txt, the
    Python script, the R script)."""
    spec = analysis_spec(content, adsl.vars)
    names = [v.name for v in adsl.vars]
    arm_name = "armcd" if blinded else "arm"
    ref, pooled, others, labels = arms_for(content, blinded, adsl.meta.get("dummy_weights"))
    visits, adjust = spec["visits"], spec["adjust"]
    long = long_form(names, adsl.rows, arm_name, spec["outcome_vars"], visits, adjust)
    pv = spec["primary_visit"]
    comparison = f"{' + '.join(labels[k] for k in pooled)} (pooled) vs {labels[ref]}"
    model_text = (f"linear mixed model (REML): {spec['outcome']} ~ visit + group x visit ({', '.join(visits[1:])}) + "
                  f"{' + '.join(adjust)} + (1 | child); visits {', '.join(visits)}")
    out = {"outcome": spec["outcome"], "outcome_label": spec["outcome_label"], "visit": pv,
           "comparison": comparison, "reference_arm": ref, "pooled_arms": pooled,
           "allocation": "dummy" if blinded else "real", "model": model_text,
           "n": 0, "n_observations": 0, "estimate": None, "se": None, "ci_low": None, "ci_high": None, "p_value": None,
           "converged": None, "software": software(), "secondary": []}
    if blinded:
        out["note"] = ("DUMMY allocation: the groups are the blinded bundle's dummy codes, drawn at random "
                       "independently of the real allocation; this result says nothing about the arms.")
    text = [f"Primary analysis of {spec['outcome_label']} at {pv}", "=" * 60, f"Comparison: {comparison}",
            f"Model: {model_text}", f"Allocation: {'DUMMY (blinded bundle)' if blinded else 'real (unblinded bundle)'}", ""]
    try:
        res, cols, used = fit(long, visits, {"group": [*pooled]}, adjust)
    except Exception as e:  # too few data to fit (an early lock, a test trial): said, not hidden
        out["note"] = (out.get("note", "") + f" The model could not be fitted: {type(e).__name__}: {e}").strip()
        return out, "\n".join(text + [out["note"]]) + "\n", python_script(spec, ref, pooled, others, arm_name), \
            r_script(spec, ref, pooled, others, arm_name)
    out.update(n=int(used["studyid"].nunique()), n_observations=int(len(used)), converged=bool(res.converged),
               **_term(res, cols, f"group_{pv}", used))
    if getattr(res, "boundary", False):
        out["note"] = (out.get("note", "") + " The children's variance is estimated at zero (a boundary fit, lme4's "
                       "'singular fit'): the REML fit is least squares, shown below.").strip()
        text.append(out["note"])
    text += [_summary(res, cols),
             "(The table's standard errors invert statsmodels' whole Hessian, variances included; the effect's below, "
             "like lme4's and SAS PROC MIXED's, are those of the fixed effects given the variance estimates.)", ""]
    if out["se"] is None:
        out["note"] = (out.get("note", "") + " No inference is possible from these data (the standard error is not "
                       "finite, or the model leaves no residual variation).").strip()
        text.append(out["note"])
    else:
        text.append(f"Effect (group x {pv}): {out['estimate']:.4f} (SE {out['se']:.4f}; 95% CI {out['ci_low']:.4f} to "
                    f"{out['ci_high']:.4f}; Wald p = {out['p_value']:.4g})")
    try:
        res2, cols2, _ = fit(long, visits, {f"arm_{k}": [k] for k in others}, adjust)
        for k in others:
            out["secondary"].append({"comparison": f"{labels[k]} vs {labels[ref]}", "arm": k,
                                     **_term(res2, cols2, f"arm_{k}_{pv}", used)})
        text += ["", "Secondary: each arm against the reference arm", _summary(res2, cols2)]
    except Exception as e:
        text += ["", f"Secondary analysis could not be fitted: {type(e).__name__}: {e}"]
    return out, "\n".join(text) + "\n", python_script(spec, ref, pooled, others, arm_name), \
        r_script(spec, ref, pooled, others, arm_name)


def python_script(spec: dict, ref: str, pooled: list[str], others: list[str], arm_name: str) -> str:
    """analysis/primary.py: reads analysis/adsl.csv beside it and fits the model with the very
    function the lock used."""
    header = f'''"""Reproduces analysis/primary.json from analysis/adsl.csv (run from anywhere:
python3 analysis/primary.py). Needs pandas, NumPy and statsmodels."""
import json
import math
import pathlib
import warnings

import pandas as pd

HERE = pathlib.Path(__file__).resolve().parent
VISITS = {json.dumps(spec['visits'])}
OUTCOME_VARS = {json.dumps(spec['outcome_vars'])}   # {spec['outcome']} at each visit
ARM = {json.dumps(arm_name)}
REFERENCE = {json.dumps(ref)}
POOLED = {json.dumps(pooled)}
OTHERS = {json.dumps(others)}
ADJUST = {json.dumps({f: adjust_column(f) for f in spec['adjust']})}   # factor: its ADSL column
PRIMARY_VISIT = {json.dumps(spec['primary_visit'])}
Z95 = {Z95!r}

'''
    body = textwrap.dedent(inspect.getsource(fit))
    main = '''

def report(result, cols, name):
    i = cols.index(name)
    est, se = float(result.fe_params.iloc[i]), float(result.cond_bse.iloc[i])
    p = math.erfc(abs(est / se) / math.sqrt(2))
    print(f"{name}: estimate {est:.6f}  SE {se:.6f}  95% CI {est - Z95 * se:.6f} to {est + Z95 * se:.6f}  p {p:.4g}")


if __name__ == "__main__":
    adsl = pd.read_csv(HERE / "adsl.csv", dtype={"studyid": str, "site": str, ARM: str}, keep_default_na=False,
                       na_values={v: [""] for v in OUTCOME_VARS})
    adsl[ARM] = adsl[ARM].replace("", None)
    long = pd.concat([pd.DataFrame({"studyid": adsl["studyid"], "visit": v, "arm": adsl[ARM], "y": adsl[c],
                                    **{f: adsl[c] for f, c in ADJUST.items()}}) for v, c in zip(VISITS, OUTCOME_VARS)],
                     ignore_index=True)
    result, cols, used = fit(long, VISITS, {"group": POOLED}, list(ADJUST))
    print(result.summary() if result.summary is not None else "least squares: the children's variance at zero")
    print(f"children {used['studyid'].nunique()}, observations {len(used)}")
    report(result, cols, f"group_{PRIMARY_VISIT}")
    result2, cols2, _ = fit(long, VISITS, {f"arm_{k}": [k] for k in OTHERS}, list(ADJUST))
    for k in OTHERS:
        report(result2, cols2, f"arm_{k}_{PRIMARY_VISIT}")
'''
    return header + body + main


def r_script(spec: dict, ref: str, pooled: list[str], others: list[str], arm_name: str) -> str:
    """analysis/primary.R: the same model with lme4, from analysis/adsl.csv beside it
    (Rscript analysis/primary.R)."""
    def vec(xs):
        return "c(" + ", ".join(json.dumps(x) for x in xs) + ")"
    post = spec["visits"][1:]
    terms = " + ".join(f"group_{v}" for v in post)
    arm_terms = " + ".join(f"arm_{k}_{v}" for k in others for v in post)
    adjust = "".join(f" + factor({f})" for f in spec["adjust"])
    return f'''# Reproduces analysis/primary.json with lme4 from analysis/adsl.csv:
#   Rscript analysis/primary.R        (needs the lme4 package)
# {spec['outcome']} at {", ".join(spec['visits'])}; group = {" + ".join(pooled)} vs {ref}; REML.
suppressPackageStartupMessages(library(lme4))
args <- commandArgs(trailingOnly = FALSE)
script <- sub("^--file=", "", args[grepl("^--file=", args)])
here <- if (length(script)) dirname(normalizePath(script)) else "analysis"
adsl <- read.csv(file.path(here, "adsl.csv"), colClasses = c(studyid = "character", site = "character",
                 {arm_name} = "character"), na.strings = "", stringsAsFactors = FALSE)
visits <- {vec(spec['visits'])}
outcome <- {vec(spec['outcome_vars'])}
long <- do.call(rbind, lapply(seq_along(visits), function(i)
  data.frame(studyid = adsl$studyid, visit = visits[i], arm = adsl${arm_name}, y = adsl[[outcome[i]]],
             {", ".join(f"{f} = adsl${adjust_column(f)}" for f in spec["adjust"])})))
long <- long[!is.na(long$y) & !is.na(long$arm), ]
long$visit <- factor(long$visit, levels = visits)
for (v in visits[-1]) {{
  long[[paste0("group_", v)]] <- as.numeric(long$arm %in% {vec(pooled)}) * (long$visit == v)
  for (k in {vec(others)}) long[[paste0("arm_", k, "_", v)]] <- as.numeric(long$arm == k) * (long$visit == v)
}}
show <- function(fit, term) {{
  est <- fixef(fit)[[term]]; se <- sqrt(diag(as.matrix(vcov(fit))))[names(fixef(fit)) == term]
  p <- 2 * pnorm(-abs(est / se))
  cat(sprintf("%s: estimate %.6f  SE %.6f  95%% CI %.6f to %.6f  p %.4g\\n", term, est, se,
              est - qnorm(0.975) * se, est + qnorm(0.975) * se, p))
}}
fit <- lmer(y ~ visit + {terms}{adjust} + (1 | studyid), data = long, REML = TRUE)
print(summary(fit))
cat(sprintf("children %d, observations %d\\n", length(unique(long$studyid)), nrow(long)))
show(fit, "group_{spec['primary_visit']}")
fit2 <- lmer(y ~ visit + {arm_terms}{adjust} + (1 | studyid), data = long, REML = TRUE)
for (k in {vec(others)}) show(fit2, paste0("arm_", k, "_{spec['primary_visit']}"))
'''
