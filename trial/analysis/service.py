"""The protocol's primary analysis, run on a lock's analysis dataset (ADSL).

TIME-A's (the protocol's ``[analysis]``): the primary outcome at baseline and each follow-up visit
up to the primary one, in a linear mixed model with fixed effects for visit, group x visit at
each follow-up visit and the adjustment factors (site), and a random intercept per child, fitted
by REML. Group is the pooled arms (music therapy, both frequencies) against the reference arm
(usual care); the effect is the group x primary-visit coefficient: the difference between the
groups in mean change from baseline to the primary visit, with its Wald 95% confidence interval
and p value. The secondary analysis puts each arm against the reference arm in one model.

The model is fitted by :mod:`trial.analysis.lmm` (REML profiled over the one variance ratio of a
random intercept, vectorized over the children: statsmodels' MixedLM, which works child by child
in Python, took half a minute a fit at 10,000 children). That module is written whole into the
bundle's ``analysis/primary.py``, so the bundle reproduces its own numbers (and, with
``--statsmodels``, MixedLM's); the bundle's ``analysis/primary.R`` fits the same model with lme4.
The tests check the fit against both.
"""
from __future__ import annotations

import copy
import inspect
import json
import platform

from trial.analysis import lmm
from trial.analysis.lmm import Z95, fit

__all__ = ["Z95", "fit", "primary_analysis"]


def long_form(adsl_names: list[str], rows: list[tuple], arm_name: str, outcome_vars: list[str], visits: list[str],
              adjust: list[str]) -> dict[str, list]:
    """The long data of the model from the ADSL rows, as columns: one row per child and analysis
    visit (the children in ADSL order, each child's visits in the protocol's order)."""
    idx = {n: i for i, n in enumerate(adsl_names)}
    k = len(visits)
    cols = {"studyid": [r[idx["studyid"]] for r in rows for _ in range(k)], "visit": visits * len(rows),
            "arm": [r[idx[arm_name]] for r in rows for _ in range(k)],
            "y": [r[idx[name]] for r in rows for name in outcome_vars]}
    for f in adjust:
        at = idx[adjust_column(f)]
        cols[f] = [r[at] for r in rows for _ in range(k)]
    return cols


def adjust_column(factor: str) -> str:
    """The ADSL column of a randomization factor the analysis adjusts for: the stratum as
    corrected (c_ and the factor's first six letters: c_site), which is the stratum the child was
    randomized in unless a wrong-stratum randomization error was recorded (Yelland et al. 2015:
    keep the allocation, analyse with the correct stratum; trial.randomize.errors)."""
    return f"c_{factor[:6]}"


def software() -> str:
    import numpy  # deferred: the libraries are loaded only when an analysis runs (a cold path)
    import scipy
    return (f"trial.analysis.lmm (REML profiled over the child variance ratio, as lme4), NumPy {numpy.__version__}, "
            f"SciPy {scipy.__version__}, Python {platform.python_version()}")


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
    out, text = _opening(spec, labels, ref, pooled, blinded)
    outcome = f"{spec['outcome']} ({spec['outcome_label']})"
    words = _Words(content, spec, labels, long)
    try:
        res, _, _ = fit(long, visits, {"group": [*pooled]}, adjust, outcome)
    except Exception as e:  # noqa: BLE001  too few data to fit (an early lock, a test trial): said, not hidden
        _, _, y, children, _ = lmm.design(long, visits, {}, [])  # the children the model would have had
        out.update(n=len(set(children)), n_observations=len(y))
        text.append(_note(out, f" The model could not be fitted: {type(e).__name__}: {e}"))
    else:
        _primary(out, text, res, spec["primary_visit"], words.group(pooled, ref))
        _secondary(out, text, long, spec, outcome, (ref, others, labels), words)
    return out, "\n".join(text) + "\n", python_script(spec, ref, pooled, others, arm_name), \
        r_script(spec, ref, pooled, others, arm_name)


def _note(out: dict, more: str) -> str:
    """``more`` added to the result's note; returns the note."""
    out["note"] = (out.get("note", "") + more).strip()
    return out["note"]


class _Words:
    """The model's columns and why one cannot be estimated, in the protocol's labels: a visit by
    its label, a comparison by its arms' labels, a factor's level by the factor and the level;
    the reasons from the long data (which arm has an observation at which visit)."""

    def __init__(self, content: dict, spec: dict, labels: dict, long: dict, terms: dict | None = None, ref=None):
        self.visit = {v["key"]: v["label"] for v in content.get("visits", [])}
        self.labels, self.spec, self.terms, self.ref, self.content = labels, spec, terms or {}, ref, content
        seen: dict[tuple, set] = {}
        for sid, v, arm, y in zip(long["studyid"], long["visit"], long["arm"], long["y"]):
            if y is not None and y == y and arm is not None and arm == arm:  # (NaN != NaN)
                seen.setdefault((arm, v), set()).add(sid)
        self.seen = {k: len(v) for k, v in seen.items()}

    def group(self, pooled: list[str], ref: str) -> _Words:
        """The primary model's words: the pooled group against the reference arm."""
        real = {a["key"] for a in self.content.get("arms", [])}
        label = (self.spec.get("pooled_label") if set(pooled) <= real else None) or \
            " + ".join(self.labels.get(k, k) for k in pooled)  # (a blinded bundle's dummy codes: their own labels)
        return self._with({"group": (list(pooled), label)}, ref)

    def arms(self, others: list[str], ref: str) -> _Words:
        """The secondary model's words: each arm against the reference arm."""
        return self._with({f"arm_{k}": ([k], self.labels.get(k, k)) for k in others}, ref)

    def _with(self, terms: dict, ref: str) -> _Words:
        other = copy.copy(self)
        other.terms, other.ref = terms, ref
        return other

    def _visit(self, v: str) -> str:
        return f"'{self.visit.get(v, v)}'"

    def visit_named(self, v: str) -> str:
        return f"{self._visit(v)} ({v})"

    def visits_without_observations(self) -> list[str]:
        everyone = {a for (a, _w) in self.seen}
        return [v for v in self.spec["visits"] if self._at(everyone, v) == 0]

    def _at(self, arms, v: str) -> int:
        return sum(n for (a, w), n in self.seen.items() if w == v and a in arms)

    def _split(self, col: str):
        """(kind, key, visit): ("visit", None, v), ("term", term, v), ("factor", factor, level) or None."""
        visits = self.spec["visits"][1:]
        for v in visits:
            if col == f"visit_{v}":
                return "visit", None, v
            for term in self.terms:
                if col == f"{term}_{v}":
                    return "term", term, v
        for f in self.spec.get("adjust", []):
            if col.startswith(f"{f}_"):
                return "factor", f, col[len(f) + 1:]
        return None

    def column(self, col: str) -> str:
        """The column in words, its name after it."""
        kind = self._split(col)
        if kind is None:
            return col
        what, key, at = kind
        if what == "visit":
            return f"visit {self._visit(at)} ({col})"
        if what == "term":
            return f"{self.terms[key][1]} x visit {self._visit(at)} ({col})"
        return f"{key} {at} ({col})"

    def why(self, col: str) -> str:
        """Why the column cannot be estimated, in words."""
        kind = self._split(col)
        if kind and kind[0] in ("visit", "term"):
            _, key, v = kind
            everyone = {a for (a, _w) in self.seen}
            if self._at(everyone, v) == 0:
                return f"no child has an observation of the outcome at visit {self._visit(v)}"
            if key is not None:
                members, label = self.terms[key]
                if self._at(set(members), v) == 0:
                    return f"no child of {label} has an observation of the outcome at visit {self._visit(v)}"
                if self.ref is not None and self._at({self.ref}, v) == 0:
                    return (f"no child of {self.labels.get(self.ref, self.ref)} (the reference arm) has an observation "
                            f"of the outcome at visit {self._visit(v)}")
        return "in these data its column is a linear combination of the model's other columns"


def _dropped_text(dropped: list[str], words) -> str:
    """The columns dropped as lme4 drops them, in words with the reason for each."""
    said = [f"{words.column(c)}: {words.why(c)}" if words else c for c in dropped]
    return (f"The fixed-effect design is rank deficient, so {len(dropped)} "
            f"column{'s were' if len(dropped) > 1 else ' was'}"
            f" dropped as lme4 drops them (the first linearly independent columns are kept, in order) and "
            f"{'are' if len(dropped) > 1 else 'is'} not estimated: {'; '.join(said)}.")


def _opening(spec: dict, labels: dict, ref: str, pooled: list[str], blinded: bool) -> tuple[dict, list[str]]:
    """The result before the fit (what is compared, in which model, on which allocation) and the
    summary's heading."""
    pv, visits, adjust = spec["primary_visit"], spec["visits"], spec["adjust"]
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
    return out, text


def _primary(out: dict, text: list[str], res, pv: str, words=None) -> None:
    """The primary effect (group x primary visit) from the fit, with what a reader must know of
    the fit (columns dropped as lme4 drops them, the effect not estimable, a boundary fit, no
    convergence, no inference possible). ``words`` (a _Words' comparison) says the dropped
    columns and why in the protocol's labels."""
    effect = f"group_{pv}"
    out.update(n=res.n_groups, n_observations=res.n_obs, converged=res.converged, **res.term(effect),
               dropped_columns=list(res.dropped))
    if words:
        empty = words.visits_without_observations()
        out["visits_without_observations"] = empty
        if empty:
            text.append(_note(out, f" No child has an observation of the outcome at visit "
                                   f"{', '.join(words.visit_named(v) for v in empty)}: "
                                   f"{'these visits are' if len(empty) > 1 else 'the visit is'} not in the model."))
    if res.dropped:
        text.append(_note(out, " " + _dropped_text(res.dropped, words)))
    if effect in res.dropped or effect in res.aliased:
        out.update(estimable=False, estimate=None, se=None, ci_low=None, ci_high=None, p_value=None)
        why = words.why(effect) if words else "its column is a linear combination of the model's other columns"
        text.append(_note(out, f" The effect cannot be estimated from these data: {why}."))
    if res.boundary:
        text.append(_note(out, " The children's variance is estimated at zero (a boundary fit, lme4's "
                               "'singular fit'): the REML fit is least squares."))
    if not res.converged:
        text.append(_note(out, " The fit did NOT converge (the children's variance may be beyond the range searched): "
                               "read the estimates with care and check them with the R or Python script."))
    text += [res.summary(), ""]
    if out.get("estimable") is False:
        return
    if out["se"] is None:
        text.append(_note(out, " No inference is possible from these data (the standard error is not finite, or the "
                               "model leaves no residual variation)."))
    else:
        text.append(f"Effect (group x {pv}): {out['estimate']:.4f} (SE {out['se']:.4f}; 95% CI {out['ci_low']:.4f} to "
                    f"{out['ci_high']:.4f}; Wald p = {out['p_value']:.4g})")


def _secondary(out: dict, text: list[str], long: dict, spec: dict, outcome: str, arms: tuple, words=None) -> None:
    """The secondary analysis: each arm against the reference arm, in one model (an arm's effect
    that cannot be estimated says why)."""
    ref, others, labels = arms
    pv = spec["primary_visit"]
    try:
        res2, _, _ = fit(long, spec["visits"], {f"arm_{k}": [k] for k in others}, spec["adjust"], outcome)
        out["secondary_dropped_columns"] = list(res2.dropped)
        text += ["", "Secondary: each arm against the reference arm", res2.summary()]
        by_arm = words.arms(others, ref) if words else None
        if res2.dropped:
            text.append(_dropped_text(res2.dropped, by_arm))
        for k in others:
            entry = {"comparison": f"{labels[k]} vs {labels[ref]}", "arm": k, **res2.term(f"arm_{k}_{pv}")}
            if f"arm_{k}_{pv}" in res2.dropped or f"arm_{k}_{pv}" in res2.aliased:
                why = by_arm.why(f"arm_{k}_{pv}") if by_arm else "its column is a linear combination of the others"
                entry.update(estimate=None, se=None, ci_low=None, ci_high=None, p_value=None, estimable=False,
                             note=f"The effect cannot be estimated from these data: {why}.")
                text.append(f"{entry['comparison']}: {entry['note']}")
            out["secondary"].append(entry)
    except Exception as e:  # noqa: BLE001  (as the primary's: said, not hidden)
        text += ["", f"Secondary analysis could not be fitted: {type(e).__name__}: {e}"]


def python_script(spec: dict, ref: str, pooled: list[str], others: list[str], arm_name: str) -> str:
    """analysis/primary.py: reads analysis/adsl.csv beside it and fits the model with the very
    code the lock used (trial.analysis.lmm, carried whole); with --statsmodels it also fits the
    model with statsmodels' MixedLM, for a second opinion. Three parts: the settings of this
    lock's analysis, lmm's source, and the analysis that runs it (PY_ANALYSIS)."""
    body = inspect.getsource(lmm).replace("from __future__ import annotations\n", "")
    return _py_settings(spec, ref, pooled, others, arm_name) + body + PY_ANALYSIS


def _py_settings(spec: dict, ref: str, pooled: list[str], others: list[str], arm_name: str) -> str:
    """primary.py's opening: what it does, its imports and the settings of this lock's analysis."""
    return f'''"""Reproduces analysis/primary.json from analysis/adsl.csv (run from anywhere:
python3 analysis/primary.py). Needs pandas, NumPy and SciPy (and threadpoolctl, if installed, holds
BLAS to one thread as the lock did: the same last digits); with --statsmodels it also fits the
same model with statsmodels' MixedLM (slower: it works child by child) and prints its numbers.
The fitting code below is the trial system's, as the lock ran it."""
from __future__ import annotations

import json
import pathlib
import sys

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

# ---- trial.analysis.lmm, as the lock ran it ------------------------------------------------------
'''


# primary.py's last part: the protocol's analysis on the lock's ADSL, with lmm's fit (and, with
# --statsmodels, MixedLM's)
PY_ANALYSIS = '''

# ---- the protocol's analysis ---------------------------------------------------------------------
def report(result, name):
    if name in result.dropped or name in result.aliased:
        how = "dropped" if name in result.dropped else "aliased with a dropped column"
        print(f"{name}: cannot be estimated from these data (its column is {how}, as lme4's rank check drops it)")
        return
    t = result.term(name)
    if t["se"] is None:
        print(f"{name}: estimate {t['estimate']}  no inference possible from these data")
        return
    print(f"{name}: estimate {t['estimate']:.6f}  SE {t['se']:.6f}  95% CI {t['ci_low']:.6f} to {t['ci_high']:.6f}"
          f"  p {t['p_value']:.4g}")


def statsmodels_check(long, terms, name):
    """The same model fitted by statsmodels' MixedLM (REML): its estimate, and the standard error
    given its variance estimates (as lme4 gives it)."""
    import numpy as np
    from statsmodels.regression.mixed_linear_model import MixedLM
    names, x, y, groups, _ = design(long, VISITS, terms, list(ADJUST))
    keep = estimable_columns(x)  # the columns lme4 keeps (MixedLM fits no rank-deficient design)
    if name not in [names[j] for j in keep]:
        return
    names, x = [names[j] for j in keep], x[:, keep]
    sm = MixedLM(y, x, groups=groups).fit(reml=True, method=["bfgs", "lbfgs", "powell"])
    again = reml_fit(x, y, groups, names)  # the covariance at statsmodels' variances, by the same algebra
    tau2, sigma2 = float(np.asarray(sm.cov_re).ravel()[0]), float(sm.scale)
    _, index = np.unique(groups, return_inverse=True)
    sums = np.zeros((index.max() + 1, x.shape[1]))
    np.add.at(sums, index, x)
    c = tau2 / (sigma2 + np.bincount(index) * tau2)
    se = np.sqrt(np.diag(np.linalg.inv((x.T @ x - sums.T @ (sums * c[:, None])) / sigma2)))
    i = names.index(name)
    print(f"statsmodels {name}: estimate {float(np.asarray(sm.fe_params)[i]):.6f}  SE {se[i]:.6f}"
          f"  (this script: {again.params[i]:.6f}, SE {again.se[i]:.6f})")


if __name__ == "__main__":
    adsl = pd.read_csv(HERE / "adsl.csv", dtype={"studyid": str, "site": str, ARM: str}, keep_default_na=False,
                       na_values={v: [""] for v in OUTCOME_VARS})
    adsl[ARM] = adsl[ARM].replace("", None)
    long = pd.concat([pd.DataFrame({"studyid": adsl["studyid"], "visit": v, "arm": adsl[ARM], "y": adsl[c],
                                    **{f: adsl[c] for f, c in ADJUST.items()}}) for v, c in zip(VISITS, OUTCOME_VARS)],
                     ignore_index=True)
    result, cols, used = fit(long, VISITS, {"group": POOLED}, list(ADJUST))
    print(result.summary())
    print(f"children {result.n_groups}, observations {result.n_obs}")
    print(f"dropped columns: {' '.join(result.dropped) or 'none'}")
    report(result, f"group_{PRIMARY_VISIT}")
    secondary = {f"arm_{k}": [k] for k in OTHERS}
    result2, cols2, _ = fit(long, VISITS, secondary, list(ADJUST))
    print(f"secondary dropped columns: {' '.join(result2.dropped) or 'none'}")
    for k in OTHERS:
        report(result2, f"arm_{k}_{PRIMARY_VISIT}")
    if "--statsmodels" in sys.argv[1:]:
        statsmodels_check(long, {"group": POOLED}, f"group_{PRIMARY_VISIT}")
        for k in OTHERS:
            statsmodels_check(long, secondary, f"arm_{k}_{PRIMARY_VISIT}")
'''


def r_script(spec: dict, ref: str, pooled: list[str], others: list[str], arm_name: str) -> str:
    """analysis/primary.R: the same model with lme4, from analysis/adsl.csv beside it
    (Rscript analysis/primary.R). Two parts: the long data with the model's terms, then the fits."""
    return _r_long_data(spec, ref, pooled, others, arm_name) + _r_fits(spec, others)


def _r_vector(xs) -> str:
    return "c(" + ", ".join(json.dumps(x) for x in xs) + ")"


def _r_long_data(spec: dict, ref: str, pooled: list[str], others: list[str], arm_name: str) -> str:
    """primary.R's first part: lme4, the ADSL read and made long (a row per child and visit), and
    the group and arm indicators at each follow-up visit."""
    return f'''# Reproduces analysis/primary.json with lme4 from analysis/adsl.csv:
#   Rscript analysis/primary.R        (needs the lme4 package)
# {spec['outcome']} at {", ".join(spec['visits'])}; group = {" + ".join(pooled)} vs {ref}; REML.
suppressPackageStartupMessages(library(lme4))
args <- commandArgs(trailingOnly = FALSE)
script <- sub("^--file=", "", args[grepl("^--file=", args)])
here <- if (length(script)) dirname(normalizePath(script)) else "analysis"
adsl <- read.csv(file.path(here, "adsl.csv"), colClasses = c(studyid = "character", site = "character",
                 {arm_name} = "character"), na.strings = "", stringsAsFactors = FALSE)
visits <- {_r_vector(spec['visits'])}
outcome <- {_r_vector(spec['outcome_vars'])}
long <- do.call(rbind, lapply(seq_along(visits), function(i)
  data.frame(studyid = adsl$studyid, visit = visits[i], arm = adsl${arm_name}, y = adsl[[outcome[i]]],
             {", ".join(f"{f} = adsl${adjust_column(f)}" for f in spec["adjust"])})))
long <- long[!is.na(long$y) & !is.na(long$arm), ]
long$visit <- factor(long$visit, levels = visits)
for (v in visits[-1]) {{
  long[[paste0("group_", v)]] <- as.numeric(long$arm %in% {_r_vector(pooled)}) * (long$visit == v)
  for (k in {_r_vector(others)}) long[[paste0("arm_", k, "_", v)]] <- as.numeric(long$arm == k) * (long$visit == v)
}}
'''


def _r_fits(spec: dict, others: list[str]) -> str:
    """primary.R's second part: the primary model (pooled group) and the secondary one (each arm),
    fitted by REML, with each effect's estimate, SE, Wald 95% interval and p value."""
    post = spec["visits"][1:]
    terms = " + ".join(f"group_{v}" for v in post)
    arm_terms = " + ".join(f"arm_{k}_{v}" for k in others for v in post)
    adjust = "".join(f" + factor({f})" for f in spec["adjust"])
    return f'''# lme4 drops the columns of the fixed-effect design it cannot estimate ("rank deficient so dropping");
# a kept column of which a dropped one is a combination is aliased: its estimate is not the effect it names
aliased <- function(fit) {{
  X <- getME(fit, "X"); d <- names(attr(X, "col.dropped"))
  if (!length(d)) return(character(0))
  full <- model.matrix(nobars(formula(fit)), data = long)
  co <- qr.coef(qr(X), full[, d, drop = FALSE])
  rownames(co)[apply(abs(co) > 1e-6 * pmax(1, max(abs(co))), 1, any)]
}}
dropped <- function(fit, what) {{
  d <- names(attr(getME(fit, "X"), "col.dropped"))
  d <- sub("^factor\\\\((\\\\w+)\\\\)", "\\\\1_", sub("^visit", "visit_", d))  # the names primary.json gives them
  cat(sprintf("%sdropped columns: %s\\n", what, if (length(d)) paste(d, collapse = " ") else "none"))
}}
show <- function(fit, term) {{
  if (!term %in% names(fixef(fit)) || term %in% aliased(fit)) {{
    cat(sprintf("%s: cannot be estimated from these data (its column is dropped or aliased by lme4's rank check)\\n",
                term))
    return(invisible(NULL))
  }}
  est <- fixef(fit)[[term]]; se <- sqrt(diag(as.matrix(vcov(fit))))[names(fixef(fit)) == term]
  p <- 2 * pnorm(-abs(est / se))
  cat(sprintf("%s: estimate %.6f  SE %.6f  95%% CI %.6f to %.6f  p %.4g\\n", term, est, se,
              est - qnorm(0.975) * se, est + qnorm(0.975) * se, p))
}}
fit <- lmer(y ~ visit + {terms}{adjust} + (1 | studyid), data = long, REML = TRUE)
print(summary(fit))
cat(sprintf("children %d, observations %d\\n", length(unique(long$studyid)), nrow(long)))
dropped(fit, "")
show(fit, "group_{spec['primary_visit']}")
fit2 <- lmer(y ~ visit + {arm_terms}{adjust} + (1 | studyid), data = long, REML = TRUE)
dropped(fit2, "secondary ")
for (k in {_r_vector(others)}) show(fit2, paste0("arm_", k, "_{spec['primary_visit']}"))
'''
