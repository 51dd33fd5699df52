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


def primary_data(content: dict, adsl, values: dict[str, list] | None = None) -> dict:
    """analysis/primary_data.csv ({columns, rows}): the long data the primary model fitted, one row
    per child and analysis visit (studyid, visit, arm, y as analysed: ``values``, the estimand's
    strategies applied, else as recorded; the adjustment factors by their ADSL columns), which
    primary.py and primary.R read, so that they reproduce primary.json whatever the strategies did."""
    spec = analysis_spec(content, adsl.vars)
    visits, adjust = spec["visits"], spec["adjust"]
    long = long_form([v.name for v in adsl.vars], adsl.rows, "arm", spec["outcome_vars"], visits, adjust)
    if values is not None:
        long["y"] = [values[v][i] for i in range(len(adsl.rows)) for v in visits]
    columns = ["studyid", "visit", "arm", "y", *adjust]
    return {"columns": ["studyid", "visit", "arm", "y", *(adjust_column(f) for f in adjust)],
            "rows": [list(r) for r in zip(*(long[c] for c in columns))]}


def benefit_of(content: dict) -> str:
    """The direction of benefit of an effect (arm minus reference): ``[analysis] benefit``, else
    ``[interim] benefit``, else "lower" (a lower score is better). Every analysis reads it from
    trial.analysis.sap's sap_settings (the composite's worst value, the tipping point); the report's
    forest plot from here (this module loads no NumPy)."""
    return (content.get("analysis") or {}).get("benefit") or (content.get("interim") or {}).get("benefit") or "lower"


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


def dummy_stands(arms: list[dict], dummy_weights: dict[str, int]) -> dict[str, str]:
    """The dummy code that stands for each arm (by key) in a blinded dataset: by weight alone, the
    codes and the arms sorted by weight paired in order, so the dummy reference is a code with the
    reference arm's share."""
    codes = sorted(dummy_weights, key=lambda c: (dummy_weights[c], c))
    by_weight = sorted(arms, key=lambda x: (x["weight"], [y["key"] for y in arms].index(x["key"])))
    return {x["key"]: c for x, c in zip(by_weight, codes)}


def arm_levels(content: dict, blinded: bool = False, dummy_weights: dict[str, int] | None = None) -> list[str]:
    """The arm variable's codes in level order, the same in both bundles: the reference arm first
    (the protocol's [analysis] reference_arm; without [analysis], its first arm), then the others
    in the protocol's order; in a blinded dataset each dummy code takes the place of the arm it
    stands for (dummy_stands). R's factor levels, Stata's and SAS's codes 1..k follow it."""
    keys = [x["key"] for x in content["arms"]]
    ref = (content.get("analysis") or {}).get("reference_arm") or keys[0]
    order = [ref] + [k for k in keys if k != ref]
    if not blinded:
        return order
    stands = dummy_stands(content["arms"], dummy_weights or {})
    return [stands[k] for k in order]


def arms_for(content: dict, blinded: bool, dummy_weights: dict[str, int] | None) -> tuple[str, list[str], list[str], dict]:
    """(reference, pooled, every other arm, label of each) in the dataset's codes, every other arm
    in level order (arm_levels). A blinded dataset's dummy codes stand for the arms by weight alone
    (dummy_stands)."""
    a = content["analysis"]
    arms = content["arms"]
    levels = arm_levels(content, blinded, dummy_weights)
    if not blinded:
        labels = {x["key"]: x["label"] for x in arms}
        return a["reference_arm"], list(a["pooled_arms"]), levels[1:], labels
    stands = dummy_stands(arms, dummy_weights or {})
    labels = {c: f"Dummy arm {c}" for c in levels}
    return stands[a["reference_arm"]], [stands[k] for k in a["pooled_arms"]], levels[1:], labels


def primary_analysis(content: dict, adsl, blinded: bool, values: dict[str, list] | None = None,
                     df_method: str = "wald", alpha: float = 0.05,
                     sap_version: str | None = None) -> tuple[dict, str, str, str]:
    """Run the protocol's analysis on the ADSL table. Returns (primary.json, primary.txt, the
    Python script, the R script). The SAP's (trial.analysis.sap): ``values``, the outcome at each
    visit (a value per ADSL row) as the estimand's strategies left it, instead of the recorded one;
    the tests' degrees of freedom (``df_method``) and ``alpha``; the SAP's version, recorded."""
    spec = {**analysis_spec(content, adsl.vars), "df_method": df_method, "alpha": alpha}  # (the scripts' too)
    names = [v.name for v in adsl.vars]
    arm_name = "arm"  # the same name in both bundles (the dummy codes in a blinded one)
    ref, pooled, others, labels = arms_for(content, blinded, adsl.meta.get("dummy_weights"))
    visits, adjust = spec["visits"], spec["adjust"]
    long = long_form(names, adsl.rows, arm_name, spec["outcome_vars"], visits, adjust)
    out, text = _opening(spec, labels, ref, pooled, blinded)
    out = {**({"sap_version": sap_version} if sap_version else {}), **out, "df_method": df_method, "alpha": alpha}
    if values is not None:
        _with_values(out, text, long, [values[v][i] for i in range(len(adsl.rows)) for v in visits])
    outcome = f"{spec['outcome']} ({spec['outcome_label']})"
    words = _Words(content, spec, labels, long)
    group_long = compared_only(long, [ref, *pooled])
    if len(group_long["y"]) < len(long["y"]):
        out["model"] += LEFT_OUT
    for said in without_follow_up(group_long, visits, [ref, *pooled], labels):
        text.append(_note(out, f" {said}"))
    try:
        res, _, _ = fit(group_long, visits, {"group": [*pooled]}, adjust, outcome)
    except Exception as e:  # noqa: BLE001  too few data to fit (an early lock, a test trial): said, not hidden
        _, _, y, children, _ = lmm.design(long, visits, {}, [])  # the children the model would have had
        out.update(n=len(set(children)), n_observations=len(y))
        text.append(_note(out, f" The model could not be fitted: {type(e).__name__}: {e}"))
    else:
        _primary(out, text, res, spec["primary_visit"], words.group(pooled, ref))
        _secondary(out, text, long, spec, outcome, (ref, others, labels), words)
    return out, "\n".join(text) + "\n", python_script(spec, ref, pooled, others, arm_name), \
        r_script(spec, ref, pooled, others, arm_name)


# the pooled-group models leave out the arms neither pooled nor the reference (each-arm model: every arm)
LEFT_OUT = "; the children of arms neither pooled nor the reference left out"


def compared_only(long: dict, arms: list[str]) -> dict:
    """The rows of ``long`` (columns) of the children of ``arms``: the pooled-group model compares
    the pooled arms with the reference alone (an arm in neither is not part of either group)."""
    keep = [a in arms for a in long["arm"]]
    if all(keep):
        return long
    return {k: [x for x, ok in zip(col, keep) if ok] for k, col in long.items()}


def without_follow_up(long: dict, visits: list[str], arms: list[str], labels: dict) -> list[str]:
    """Sentences naming each of ``arms`` (the reference and the pooled arms) with no observation of
    the outcome at a follow-up visit (its label)."""
    seen = {a for a, v, y in zip(long["arm"], long["visit"], long["y"]) if v in visits[1:] and y is not None}
    return [f"The arm {labels.get(a, a)} has no follow-up observation of the outcome (nothing after "
            f"{visits[0]}): it contributes its baseline values only." for a in arms if a not in seen]


def _with_values(out: dict, text: list[str], long: dict, ys: list) -> None:
    """The outcome's values the estimand's strategies left, in place of the recorded ones (said in
    the note when they differ: the scripts fit the recorded values)."""
    changed = sum(1 for a, b in zip(long["y"], ys) if a != b)
    long["y"] = ys
    if changed:
        text.append(_note(out, f" The estimand's strategies for intercurrent events changed {changed} value"
                               f"{'s' if changed > 1 else ''} of the outcome (analysis/results.json: the primary "
                               "entry's estimand); primary.py and primary.R fit these values too: they read "
                               "analysis/primary_data.csv (the values as analysed), not adsl.csv's."))


DF_WORDS = {"wald": "Wald z tests and intervals (the normal distribution)",
            "satterthwaite": "t tests and intervals with Satterthwaite's degrees of freedom (as lmerTest)",
            "kenward_roger": "t tests and intervals with Kenward-Roger's adjusted covariance and degrees of freedom "
                             "(as pbkrtest)"}


def df_words(df_method: str) -> str:
    return DF_WORDS.get(df_method, df_method)


def inference(res, name: str, df_method: str = "wald", alpha: float = 0.05) -> dict:
    """A coefficient's estimate, SE, degrees of freedom (None: Wald), 1 - alpha interval and p value
    by the SAP's degrees-of-freedom method (trial.analysis.lmm.MixedFit.term)."""
    t = res.term(name, df_method=df_method, alpha=alpha)
    return {"estimate": t["estimate"], "se": t["se"], "df": t.get("df"), "ci_low": t["ci_low"],
            "ci_high": t["ci_high"], "p_value": t["p_value"]}


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
    out.update(n=res.n_groups, n_observations=res.n_obs, converged=res.converged,
               **inference(res, effect, out.get("df_method", "wald"), out.get("alpha", 0.05)),
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
        text.append(f"Effect (group x {pv}): {out['estimate']:.4f} (SE {out['se']:.4f}; {_ci_words(out)} "
                    f"{out['ci_low']:.4f} to {out['ci_high']:.4f}; {_p_words(out)} = {out['p_value']:.4g})")


def _ci_words(out: dict) -> str:
    return f"{100 * (1 - out.get('alpha', 0.05)):g}% CI"


def _p_words(out: dict) -> str:
    """How the p value was had: Wald, or t with its degrees of freedom and their method."""
    if out.get("df") is None:
        return "Wald p"
    method = {"satterthwaite": "Satterthwaite", "kenward_roger": "Kenward-Roger"}.get(out.get("df_method"), "")
    return f"t({out['df']:.2f}, {method}) p"


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
            entry = {"comparison": f"{labels[k]} vs {labels[ref]}", "arm": k, "n": res2.n_groups,
                     **inference(res2, f"arm_{k}_{pv}", out.get("df_method", "wald"), out.get("alpha", 0.05))}
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
    return _py_settings(spec, ref, pooled, others, arm_name) + body + PY_ARMS + PY_ANALYSIS


# primary.py's arms: their codes by level number, read from the bundle's dictionary.csv
PY_ARMS = '''

# ---- the arms, by level number -------------------------------------------------------------------
def arm_levels() -> dict[int, str]:
    """The arm's codes by level number, from the bundle's dictionary.csv (beside analysis/)."""
    with open(HERE.parent / "dictionary.csv", encoding="utf-8", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["table"] == "adsl" and r["name"] == ARM)
    return {int(n): code for n, code in (item.split(" = ", 1) for item in row["codes_in_dta_xpt"].split("; "))}


LEVELS = arm_levels()
REFERENCE = LEVELS[1]
POOLED = [LEVELS[i] for i in POOLED_LEVELS]
OTHERS = [LEVELS[i] for i in OTHER_LEVELS]
'''


def arm_positions(ref: str, pooled: list[str], others: list[str]) -> tuple[list[int], list[int]]:
    """The level numbers (1 = the reference arm; ``others`` in level order, arms_for) of the pooled
    arms and of every other arm. The scripts name the arms by these numbers, not by their codes,
    so that the blinded bundle's scripts run unchanged on the unblinded bundle: the dummy codes
    take the places of the arms they stand for (arm_levels)."""
    if ref in others:
        raise ValueError("the reference arm is not one of the others")
    return [others.index(k) + 2 for k in pooled], [i + 2 for i in range(len(others))]


def _py_settings(spec: dict, ref: str, pooled: list[str], others: list[str], arm_name: str) -> str:
    """primary.py's opening: what it does, its imports and the settings of this lock's analysis (the
    same text in the blinded and the unblinded bundle: the arms by level number)."""
    pooled_at, others_at = arm_positions(ref, pooled, others)
    return f'''"""Reproduces analysis/primary.json from analysis/primary_data.csv, the values the model fitted
(without it, from analysis/adsl.csv's values as recorded; run from anywhere: python3 analysis/primary.py). Needs pandas, NumPy and SciPy (and threadpoolctl, if installed, holds
BLAS to one thread as the lock did: the same last digits); with --statsmodels it also fits the
same model with statsmodels' MixedLM (slower: it works child by child) and prints its numbers.
The fitting code below is the trial system's, as the lock ran it."""
from __future__ import annotations

import csv
import json
import pathlib
import sys

import pandas as pd

HERE = pathlib.Path(__file__).resolve().parent
VISITS = {json.dumps(spec['visits'])}
OUTCOME_VARS = {json.dumps(spec['outcome_vars'])}   # {spec['outcome']} at each visit
ARM = {json.dumps(arm_name)}
# The arms by level number (1 = the reference arm), their codes read from the bundle's dictionary.csv
# (the numbers the Stata and SAS files hold): the same script runs on the blinded bundle (the dummy
# codes, which take the places of the arms they stand for) and on the unblinded one (the arms).
# (read by arm_levels below)
POOLED_LEVELS = {json.dumps(pooled_at)}
OTHER_LEVELS = {json.dumps(others_at)}
ADJUST = {json.dumps({f: adjust_column(f) for f in spec['adjust']})}   # factor: its ADSL column
PRIMARY_VISIT = {json.dumps(spec['primary_visit'])}
DF_METHOD = {json.dumps(spec.get('df_method', 'wald'))}   # the tests' degrees of freedom: wald, satterthwaite, kenward_roger
ALPHA = {spec.get('alpha', 0.05)!r}

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
    t = result.term(name, df_method=DF_METHOD, alpha=ALPHA)
    if t["se"] is None:
        print(f"{name}: estimate {t['estimate']}  no inference possible from these data")
        return
    df = "" if t["df"] is None else f"  df {t['df']:.6f}"
    print(f"{name}: estimate {t['estimate']:.6f}  SE {t['se']:.6f}  {100 * (1 - ALPHA):g}% CI {t['ci_low']:.6f} to "
          f"{t['ci_high']:.6f}  p {t['p_value']:.4g}{df}")


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
    if (HERE / "primary_data.csv").exists():  # the values the model fitted (the estimand's strategies applied)
        data = pd.read_csv(HERE / "primary_data.csv", dtype={"studyid": str, "visit": str, "arm": str,
                                                             **{c: str for c in ADJUST.values()}},
                           keep_default_na=False, na_values={"y": [""]})
        data["arm"] = data["arm"].replace("", None)
        long = pd.DataFrame({"studyid": data["studyid"], "visit": data["visit"], "arm": data["arm"], "y": data["y"],
                             **{f: data[c] for f, c in ADJUST.items()}})
    else:  # (no primary_data.csv beside this script: the values as recorded in adsl.csv)
        adsl = pd.read_csv(HERE / "adsl.csv", dtype={"studyid": str, "site": str, ARM: str}, keep_default_na=False,
                           na_values={v: [""] for v in OUTCOME_VARS})
        adsl[ARM] = adsl[ARM].replace("", None)
        long = pd.concat([pd.DataFrame({"studyid": adsl["studyid"], "visit": v, "arm": adsl[ARM], "y": adsl[c],
                                        **{f: adsl[c] for f, c in ADJUST.items()}})
                          for v, c in zip(VISITS, OUTCOME_VARS)], ignore_index=True)
    compared = long[long["arm"].isin([REFERENCE, *POOLED])]  # (arms neither pooled nor the reference: left out)
    result, cols, used = fit(compared, VISITS, {"group": POOLED}, list(ADJUST))
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
        statsmodels_check(compared, {"group": POOLED}, f"group_{PRIMARY_VISIT}")
        for k in OTHERS:
            statsmodels_check(long, secondary, f"arm_{k}_{PRIMARY_VISIT}")
'''


def r_script(spec: dict, ref: str, pooled: list[str], others: list[str], arm_name: str) -> str:
    """analysis/primary.R: the same model with lme4, from analysis/adsl.csv beside it
    (Rscript analysis/primary.R). Two parts: the long data with the model's terms, then the fits."""
    return _r_long_data(spec, ref, pooled, others, arm_name) + _r_fits(spec)


def _r_vector(xs) -> str:
    return "c(" + ", ".join(json.dumps(x) for x in xs) + ")"


def _r_long_data(spec: dict, ref: str, pooled: list[str], others: list[str], arm_name: str) -> str:
    """primary.R's first part: lme4, the ADSL read and made long (a row per child and visit), the
    arms by level number (their codes from the bundle's dictionary.csv: the same text in the
    blinded and the unblinded bundle), and the group and arm indicators at each follow-up visit."""
    pooled_at, others_at = arm_positions(ref, pooled, others)
    return f'''# Reproduces analysis/primary.json with lme4 from analysis/primary_data.csv (the values the model
# fitted; without it, from analysis/adsl.csv's values as recorded):
#   Rscript analysis/primary.R        (needs the lme4 package)
# {spec['outcome']} at {", ".join(spec['visits'])}; group = the arms of levels {", ".join(map(str, pooled_at))} (pooled) vs
# the reference arm (level 1); REML.
suppressPackageStartupMessages(library(lme4))
args <- commandArgs(trailingOnly = FALSE)
script <- sub("^--file=", "", args[grepl("^--file=", args)])
here <- if (length(script)) dirname(normalizePath(script)) else "analysis"
adsl <- read.csv(file.path(here, "adsl.csv"), colClasses = c(studyid = "character", site = "character",
                 {arm_name} = "character"), na.strings = "", stringsAsFactors = FALSE)
visits <- {_r_vector(spec['visits'])}
outcome <- {_r_vector(spec['outcome_vars'])}
# The arms by level number (1 = the reference arm), their codes read from the bundle's dictionary.csv
# (the numbers the Stata and SAS files hold): the same script runs on the blinded bundle (the dummy
# codes, which take the places of the arms they stand for) and on the unblinded one (the arms).
dictionary <- read.csv(file.path(here, "..", "dictionary.csv"), colClasses = "character", na.strings = character(0),
                       encoding = "UTF-8")
numbered <- strsplit(dictionary$codes_in_dta_xpt[dictionary$table == "adsl" & dictionary$name == "{arm_name}"],
                     "; ", fixed = TRUE)[[1]]
arm_levels <- sub("^[0-9]+ = ", "", numbered)[order(as.integer(sub(" = .*$", "", numbered)))]
reference <- arm_levels[1]
pooled <- arm_levels[{_r_vector(pooled_at)}]
others <- arm_levels[{_r_vector(others_at)}]
data_file <- file.path(here, "primary_data.csv")
if (file.exists(data_file)) {{  # the values the model fitted (the estimand's strategies applied)
  data <- read.csv(data_file, colClasses = "character", na.strings = "", encoding = "UTF-8")
  long <- data.frame(studyid = data$studyid, visit = data$visit, arm = data$arm, y = as.numeric(data$y),
                     {", ".join(f"{f} = data${adjust_column(f)}" for f in spec["adjust"])})
}} else {{  # (no primary_data.csv beside this script: the values as recorded in adsl.csv)
  long <- do.call(rbind, lapply(seq_along(visits), function(i)
    data.frame(studyid = adsl$studyid, visit = visits[i], arm = adsl${arm_name}, y = adsl[[outcome[i]]],
               {", ".join(f"{f} = adsl${adjust_column(f)}" for f in spec["adjust"])})))
}}
long <- long[!is.na(long$y) & !is.na(long$arm), ]
long$visit <- factor(long$visit, levels = visits)
for (v in visits[-1]) {{
  long[[paste0("group_", v)]] <- as.numeric(long$arm %in% pooled) * (long$visit == v)
  for (k in others) long[[paste0("arm_", k, "_", v)]] <- as.numeric(long$arm == k) * (long$visit == v)
}}
'''


# primary.R's show(): an effect's estimate, SE, interval and p by the degrees-of-freedom method
R_SHOW = '''show <- function(fit, term) {
  if (!term %in% names(fixef(fit)) || term %in% aliased(fit)) {
    cat(sprintf("%s: cannot be estimated from these data (its column is dropped or aliased by lme4's rank check)\\n",
                term))
    return(invisible(NULL))
  }
  if (DF_METHOD == "wald") {
    est <- fixef(fit)[[term]]; se <- sqrt(diag(as.matrix(vcov(fit))))[names(fixef(fit)) == term]
    p <- 2 * pnorm(-abs(est / se)); q <- qnorm(1 - ALPHA / 2); df <- ""
  } else {
    s <- coef(summary(fit, ddf = if (DF_METHOD == "satterthwaite") "Satterthwaite" else "Kenward-Roger"))
    est <- s[term, "Estimate"]; se <- s[term, "Std. Error"]; p <- s[term, "Pr(>|t|)"]
    q <- qt(1 - ALPHA / 2, s[term, "df"]); df <- sprintf("  df %.6f", s[term, "df"])
  }
  cat(sprintf("%s: estimate %.6f  SE %.6f  %g%% CI %.6f to %.6f  p %.4g%s\\n", term, est, se, 100 * (1 - ALPHA),
              est - q * se, est + q * se, p, df))
}
'''


def _r_fits(spec: dict) -> str:
    """primary.R's second part: the primary model (pooled group) and the secondary one (each arm),
    fitted by REML, with each effect's estimate, SE, interval and p value by the degrees-of-freedom
    method (Wald, or lmerTest's Satterthwaite or Kenward-Roger)."""
    post = spec["visits"][1:]
    terms = " + ".join(f"group_{v}" for v in post)
    adjust = "".join(f" + factor({f})" for f in spec["adjust"])
    return f'''# the tests' degrees of freedom ("wald": the normal distribution; "satterthwaite" or "kenward_roger": t, as
# lmerTest computes them, Kenward-Roger's with pbkrtest's adjusted standard error) and the intervals' 1 - alpha
DF_METHOD <- "{spec.get('df_method', 'wald')}"; ALPHA <- {spec.get('alpha', 0.05)!r}
if (DF_METHOD != "wald") suppressPackageStartupMessages(library(lmerTest))  # (its lmer: with the small-sample df)
# lme4 drops the columns of the fixed-effect design it cannot estimate ("rank deficient so dropping");
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
{R_SHOW}all_arms <- long
long <- all_arms[all_arms$arm %in% c(reference, pooled), ]  # (arms neither pooled nor the reference: left out)
fit <- lmer(y ~ visit + {terms}{adjust} + (1 | studyid), data = long, REML = TRUE)
print(summary(fit))
cat(sprintf("children %d, observations %d\\n", length(unique(long$studyid)), nrow(long)))
dropped(fit, "")
show(fit, "group_{spec['primary_visit']}")
long <- all_arms
arm_terms <- paste(unlist(lapply(others, function(k) paste0("arm_", k, "_", visits[-1]))), collapse = " + ")
fit2 <- lmer(as.formula(paste("y ~ visit +", arm_terms, "{adjust} + (1 | studyid)")), data = long, REML = TRUE)
dropped(fit2, "secondary ")
for (k in others) show(fit2, paste0("arm_", k, "_{spec['primary_visit']}"))
'''
