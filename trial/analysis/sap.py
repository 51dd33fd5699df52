"""The statistical analysis plan (the protocol's ``[analysis]``), executed in a hard lock: every
analysis it names, each an entry of the bundle's ``analysis/results.json`` (../shared/API.md, "The
SAP executed"), on the lock's tables, the same code for the blinded bundle (its dummy allocation)
and the unblinded one.

``sap_settings`` applies the defaults of an optional key. ``lock_analysis`` runs it all: the
estimand's strategies first (trial.analysis.estimand), then the primary analysis once (the bundle's
``primary.json`` and the ``primary`` entry are the same fit: trial.analysis.service.primary_analysis),
each arm against the reference (its secondary model), the secondary outcomes (the same mixed model
on each, p adjusted by the multiplicity procedure) and the sensitivity analyses: ANCOVA at the
primary visit, the model adjusted for every randomization factor, without the out-of-window
assessments, per protocol, then trial.analysis.causal's CACE and dose-response and
trial.analysis.missingdata's multiple imputation and tipping point. An analysis the SAP does not
name is listed with no estimate ("not in the SAP"); one that fails says why in its entry and the
others run. Estimates are arm (the pooled arms unless said) minus reference; intervals 1 - alpha.

``code_sha256`` is the digest of the analysis code the lock runs (this package's modules the SAP
uses and trial.exports.dataset, as the process loaded them): the same in the blinded and the
unblinded bundle while the code is unchanged, so a reader sees the analysis was fixed before
unblinding. ``sap_sha256`` is the digest of the SAP itself (sap_sha256).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np  # (NumPy and SciPy load with trial.analysis.missingdata, which imports them at its top)
from scipy import stats

from trial.analysis import causal, missingdata
from trial.analysis.data import AnalysisData, analysis_data
from trial.analysis.estimand import apply_estimand
from trial.analysis.lmm import estimable_columns, fit
from trial.analysis.service import (
    LEFT_OUT,
    arms_for,
    benefit_of,
    df_words,
    inference,
    primary_analysis,
    primary_data,
    software,
)

ROOT = Path(__file__).resolve().parent.parent.parent
# the modules a lock's analyses run (groupseq is the interim looks'), and trial.exports.dataset, which
# derives what they read (ppfl, sessatt, the dates, the dummy allocation)
CODE_FILES = ("trial/analysis/causal.py", "trial/analysis/data.py", "trial/analysis/estimand.py",
              "trial/analysis/lmm.py", "trial/analysis/missingdata.py", "trial/analysis/sap.py",
              "trial/analysis/service.py", "trial/exports/dataset.py")
# their source read once, when this module is imported: the code the running process loaded (a
# worker's preloaded code), not a file changed on disk since
SOURCES = {name: (ROOT / name).read_bytes() for name in sorted(CODE_FILES)}
# trial.protocol.schema.SENSITIVITY_ANALYSES (the protocol layer is above this one), in the results' order
SENSITIVITY = ("ancova", "all_strata", "in_window", "per_protocol", "cace", "dose_response", "mi", "tipping_point")
LABELS = {"primary": "Primary analysis", "ancova": "ANCOVA at the primary visit",
          "all_strata": "Adjusted for every randomization factor", "in_window": "Excluding out-of-window assessments",
          "per_protocol": "Per protocol", "cace": "Complier-average causal effect (CACE)",
          "dose_response": "Dose-response (per 10 sessions attended)", "mi": "Multiple imputation",
          "tipping_point": "Tipping point (delta-adjusted multiple imputation)"}
DEFAULT_MI = {"imputations": 20, "seed": 20240101}
TIPPING_STEPS = 20


def sap_settings(content: dict) -> dict:
    """The protocol's ``[analysis]`` with the defaults of its optional keys applied: df_method
    "wald", alpha 0.05, multiplicity "holm", every sensitivity analysis, 20 imputations with seed
    20240101, tipping-point deltas from 0 to half the outcome's range in 20 steps, sap_version
    "not versioned"."""
    a = dict(content.get("analysis") or {})
    tipping = (a.get("tipping_point") or {}).get("deltas") or default_deltas(content)
    return {**a, "sap_version": a.get("sap_version") or "not versioned", "df_method": a.get("df_method") or "wald",
            "alpha": a.get("alpha") or 0.05, "multiplicity": a.get("multiplicity") or "holm",
            "sensitivity": list(SENSITIVITY if a.get("sensitivity") is None else a["sensitivity"]),
            "mi": {**DEFAULT_MI, **(a.get("mi") or {})}, "tipping_point": {"deltas": list(tipping)},
            "estimand": a.get("estimand"), "secondary_outcomes": list(a.get("secondary_outcomes") or []),
            "adjust": list(a.get("adjust") or ["site"]), "benefit": benefit_of(content)}


def default_deltas(content: dict) -> list[float]:
    """0 to half the primary outcome's range (its field's min and max) in 20 steps; a field without
    both bounds: 0 to 5 of its units."""
    prim = content["primary_outcome"]
    ins = next(i for i in content["instruments"] if i["key"] == prim["instrument"])
    fld = next(f for f in ins["fields"] if f["key"] == prim["field"])
    half = (fld["max"] - fld["min"]) / 2 if fld.get("min") is not None and fld.get("max") is not None else 5.0
    return [round(half * k / TIPPING_STEPS, 10) for k in range(TIPPING_STEPS + 1)]


def code_files() -> list[str]:
    """The files code_sha256 digests, sorted by name."""
    return sorted(SOURCES)


def code_sha256() -> str:
    """SHA-256 of the analysis code's source bytes as loaded (SOURCES), file by file sorted by name,
    each prefixed with its name and its length in bytes (so no two sets of files give the same
    stream)."""
    h = hashlib.sha256()
    for name, data in sorted(SOURCES.items()):
        h.update(f"{name}\n{len(data)}\n".encode())
        h.update(data)
    return h.hexdigest()


def sap_sha256(content: dict) -> str:
    """SHA-256 of the SAP as the protocol states it: the canonical JSON (sorted keys, no spaces) of
    ``[analysis]``, ``[primary_outcome]`` and the arms' keys and weights. The same in both bundles
    of a lock; a changed SAP changes it even under the same sap_version."""
    sap = {"analysis": content.get("analysis"), "primary_outcome": content.get("primary_outcome"),
           "arms": [{"key": a.get("key"), "weight": a.get("weight")} for a in content.get("arms", [])]}
    text = json.dumps(sap, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclasses.dataclass
class LockAnalysis:
    """What the bundle's analysis/ folder holds: results.json, the missingness table, and the
    primary analysis' files (primary.json, its summary, the Python and R scripts)."""
    results: dict
    missingness: dict
    primary: dict
    primary_text: str
    primary_py: str
    primary_r: str
    primary_data: dict | None = None  # analysis/primary_data.csv (trial.analysis.service.primary_data)


def run_sap(content: dict, tables: dict, blinded: bool) -> tuple[dict, dict]:
    """The SAP on a lock's tables (``adsl`` and ``events``: trial.exports.dataset.Table): results.json
    and the missingness table ({columns, rows})."""
    done = lock_analysis(content, tables, blinded)
    return done.results, done.missingness


def lock_analysis(content: dict, tables: dict, blinded: bool) -> LockAnalysis:
    """Every analysis of the SAP, the primary one computed once for results.json and primary.json.
    An estimand that cannot be applied: every analysis on the data as recorded, each entry saying
    why; data that cannot be read, or a primary analysis that fails: every entry API.md lists, with
    the reason."""
    sap = sap_settings(content)
    d0 = d = estimand = failure = unapplied = None
    try:
        d0 = analysis_data(content, tables, blinded)
    except Exception as e:  # noqa: BLE001  every entry then says why (the primary analysis still runs)
        failure = e
    if d0 is not None:
        try:
            d, estimand = apply_estimand(d0, sap)
        except Exception as e:  # noqa: BLE001  the data as recorded, said in every entry
            d, unapplied = d0, (f"The estimand could not be applied ({_why(e)}): this analysis is of the data as "
                                "recorded (every intercurrent event under treatment policy).")
            sap = {**sap, "estimand": None}
    values = None if d is None or unapplied else {v: d.value(*_primary_outcome(d), v) for v in d.spec["visits"]}
    primary = _primary_files(content, tables, blinded, values, sap, unapplied)
    if d is None:
        entries = failed_entries(content, tables, blinded, sap, failure)
    else:
        entries = [_with_note(e, unapplied) for e in analyses(d, sap, primary[0], estimand, d0)]
    results = {"sap_version": sap["sap_version"], "sap_sha256": sap_sha256(content), "code_sha256": code_sha256(),
               "code_files": code_files(), "blinded": blinded, "alpha": sap["alpha"], "df_method": sap["df_method"],
               "multiplicity": sap["multiplicity"], "analyses": entries}
    return LockAnalysis(plain(results), plain(_missingness(d0, sap)), plain(primary[0]), *primary[1:],
                        primary_data=_primary_data(content, tables, values))


def _primary_data(content: dict, tables: dict, values) -> dict:
    """primary_data.csv's table, or a one-row table saying why there is none."""
    try:
        return plain(primary_data(content, tables["adsl"], values))
    except Exception as e:  # noqa: BLE001  said in the file, not hidden
        return {"columns": ["note"], "rows": [[f"The primary analysis' data could not be written: {_why(e)}"]]}


def _with_note(entry: dict, note: str | None) -> dict:
    """The entry with ``note`` (a sentence) added to its note, once."""
    if not note or note in (entry.get("note") or ""):
        return entry
    return {**entry, "note": f"{entry['note']} {note}" if entry.get("note") else note}


def _primary_files(content: dict, tables: dict, blinded: bool, values, sap: dict, unapplied: str | None):
    """primary_analysis' (primary.json, primary.txt, primary.py, primary.R); its failure said in
    primary.json's note (and the primary entry's) instead of losing the bundle."""
    try:
        out = primary_analysis(content, tables["adsl"], blinded, values=values, df_method=sap["df_method"],
                               alpha=sap["alpha"], sap_version=sap["sap_version"])
    except Exception as e:  # noqa: BLE001  said in primary.json, the other analyses still run
        prim = content.get("primary_outcome") or {}
        why = f"The primary analysis could not be run: {_why(e)}"
        failed = {"sap_version": sap["sap_version"], "outcome": f"{prim.get('instrument')}.{prim.get('field')}",
                  "visit": prim.get("visit"), "estimate": None, "se": None, "ci_low": None, "ci_high": None,
                  "p_value": None, "n": None, "software": software(), "secondary": [], "note": why}
        return failed, why + "\n", f"# {why}\n", f"# {why}\n"
    text = out[1] + REPRODUCE
    if unapplied:
        out[0]["note"] = f"{out[0].get('note', '')} {unapplied}".strip()
        text += f"{unapplied}\n"
    return out[0], text, *out[2:]


REPRODUCE = ("\nprimary.py and primary.R reproduce these numbers from analysis/primary_data.csv: the values the model "
             "fitted (studyid, visit, arm, y as analysed, the adjustment factors).\n")


def failed_entries(content: dict, tables: dict, blinded: bool, sap: dict, failure: BaseException | None) -> list[dict]:
    """Every entry API.md lists (primary, each arm, each secondary with p_adjusted, the sensitivity
    analyses) when the analysis data could not be read, each with the reason."""
    try:
        _, _, others, _ = arms_for(content, blinded, tables["adsl"].meta.get("dummy_weights"))
    except Exception:  # noqa: BLE001  (no arm can be named: none listed)
        others = []
    secondary = [{**_failed(k, failure), "p_adjusted": None} for k in _secondary_keys(sap)]
    return [_failed("primary", failure), *(_failed(f"arm:{k}", failure) for k in others), *secondary,
            *(_failed(k, failure) for k in SENSITIVITY)]


def plain(x):
    """JSON's values only: NumPy's scalars as Python's, a float that is not finite as None."""
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    return None if isinstance(x, float) and not math.isfinite(x) else x


def analyses(d: AnalysisData, sap: dict, primary: dict, estimand: dict | None, raw: AnalysisData) -> list[dict]:
    """The entries in results.json's order: primary, each arm, each secondary outcome (p adjusted),
    the sensitivity analyses. ``d``: the data with the estimand applied (the mixed models');
    ``raw``: as recorded (the analyses at the primary visit apply it themselves, AT_PRIMARY_VISIT)."""
    out = [primary_entry(d, sap, primary, estimand), *arm_entries(d, sap, primary)]
    secondary = [_guarded(k, lambda d, sap, s=s: secondary_outcome(d, sap, s), d, sap)
                 for k, s in zip(_secondary_keys(sap), sap["secondary_outcomes"])]
    out += adjust_p(secondary, sap, out[0])
    for key in SENSITIVITY:
        if key not in sap["sensitivity"]:
            out.append(_blank(key, note="not in the SAP"))
        elif key == "all_strata" and set(d.factors) <= set(d.spec["adjust"]):
            out.append(_same_as_primary(out[0], d))
        else:
            out.append(_guarded(key, SENSITIVITY_FUNCTIONS[key], raw if key in AT_PRIMARY_VISIT else d, sap))
    return out


def _missingness(d: AnalysisData | None, sap: dict) -> dict:
    """The missingness table (trial.analysis.missingdata), or a one-row table saying why there is none."""
    try:
        if d is None:
            raise ValueError("the analysis data could not be read")
        return missingdata.missingness_table(d, sap)
    except Exception as e:  # noqa: BLE001  said in the table, not hidden
        return {"columns": ["note"], "rows": [[f"The missingness table could not be made: {_why(e)}"]]}


# --- the entries -----------------------------------------------------------------------------------

def _blank(key: str, label: str | None = None, note: str | None = None) -> dict:
    """An entry with no estimate."""
    out = {"key": key, "label": label or LABELS.get(key, key), "estimate": None, "ci_low": None, "ci_high": None,
           "p_value": None, "n": None, "method": None, "software": software()}
    if note:
        out["note"] = note
    return out


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _failed(key: str, e: BaseException | None) -> dict:
    return _blank(key, note=f"The analysis could not be run: {_why(e) if e else 'no data'}")


def _guarded(key: str, analysis, d: AnalysisData, sap: dict) -> dict:
    """One analysis' entry; its failure said in the entry (the others still run). The keys every
    entry has are filled in where the analysis left them out."""
    try:
        entry = analysis(d, sap)
    except missingdata.NotEstimable as e:
        return _blank(key, note=f"Not estimable from these data: {e}.")
    except Exception as e:  # noqa: BLE001  one analysis failing never loses the others
        return _failed(key, e)
    return {**_blank(key), **entry, "key": key}


def _primary_outcome(d: AnalysisData) -> tuple[str, str]:
    prim = d.content["primary_outcome"]
    return prim["instrument"], prim["field"]


def _visit_label(d: AnalysisData, key: str) -> str:
    return next((v["label"] for v in d.content["visits"] if v["key"] == key), key)


def _mixed_method(d: AnalysisData, sap: dict, outcome: str, adjust: list[str], what: str = "") -> str:
    visits = ", ".join(sap["visits"])
    left_out = LEFT_OUT if set(d.arms) - {d.reference, *d.pooled} else ""
    return (f"Linear mixed model (REML): {outcome} ~ visit + group x visit + {' + '.join(adjust) or '(no factor)'} + "
            f"(1 | child), visits {visits}{what}{left_out}; {df_words(sap['df_method'])}")


def primary_entry(d: AnalysisData, sap: dict, primary: dict, estimand: dict | None) -> dict:
    """The primary entry: primary.json's numbers (the same fit), with the estimand."""
    keys = ("estimate", "ci_low", "ci_high", "p_value", "se", "df")
    group = " + ".join(d.labels.get(k, k) for k in d.pooled) if d.blinded else d.spec.get("pooled_label", "Pooled arms")
    label = f"Primary: {group} vs {d.labels.get(d.reference, d.reference)} at {_visit_label(d, primary['visit'])}"
    out = {**_blank("primary", label),
           **{k: primary.get(k) for k in keys}, "n": primary.get("n"),
           "method": _mixed_method(d, sap, primary["outcome"], d.spec["adjust"]), "software": primary["software"],
           "details": {k: primary.get(k) for k in ("n_observations", "dropped_columns", "converged") if k in primary}}
    if estimand is not None:
        out["estimand"] = estimand
    if primary.get("note"):
        out["note"] = primary["note"]
    return out


def arm_entries(d: AnalysisData, sap: dict, primary: dict) -> list[dict]:
    """Each arm against the reference (primary.json's secondary model, the same fit)."""
    by_arm = {s["arm"]: s for s in primary.get("secondary", [])}
    method = _mixed_method(d, sap, primary["outcome"], d.spec["adjust"]).replace(
        "group x visit", "arm x visit (each arm against the reference)").replace(LEFT_OUT, "")
    out = []
    for k in d.others:
        s = by_arm.get(k)
        label = f"{d.labels.get(k, k)} vs {d.labels.get(d.reference, d.reference)}"
        if s is None:
            out.append(_blank(f"arm:{k}", label, "The secondary model (each arm against the reference) could not "
                                                 "be fitted: see primary.txt"))
            continue
        entry = {**_blank(f"arm:{k}", label), **{x: s.get(x) for x in ("estimate", "ci_low", "ci_high", "p_value",
                                                                       "se", "df")},
                 "n": s.get("n"), "method": method, "software": primary["software"]}
        if s.get("note"):
            entry["note"] = s["note"]
        out.append(entry)
    return out


def _secondary_keys(sap: dict) -> list[str]:
    return [f"secondary:{s['instrument']}.{s['field']}" for s in sap["secondary_outcomes"]]


def mixed_entry(d: AnalysisData, sap: dict, key: str, label: str, *, outcome: tuple[str, str] | None = None,
                adjust: list[str] | None = None, keep=None, values=None, what: str = "") -> dict:
    """The primary model (pooled arms against the reference, the effect at the primary visit) on
    the given outcome, adjustment factors, children (``keep``) or values (AnalysisData.long)."""
    ins, fld = outcome or _primary_outcome(d)
    visits = [v for v in sap["visits"] if d.has(ins, fld, v)]
    pv = d.spec["primary_visit"]
    adjust = d.spec["adjust"] if adjust is None else adjust
    out = {**_blank(key, label), "method": _mixed_method(d, sap, f"{ins}.{fld}", adjust, what)}
    if pv not in visits:
        return {**out, "note": f"The outcome {ins}.{fld} is not measured at the primary visit ({pv})."}
    compared = {d.reference, *d.pooled}  # (an arm neither pooled nor the reference is left out: LEFT_OUT)
    keep = [a in compared and (keep is None or keep[i]) for i, a in enumerate(d.arm)]
    res, _, _ = fit(d.long(ins, fld, visits, adjust, keep, values), visits, {"group": list(d.pooled)}, adjust,
                    f"{ins}.{fld}")
    out.update(n=res.n_groups, details={"n_observations": res.n_obs, "dropped_columns": list(res.dropped)})
    name = f"group_{pv}"
    if name in res.dropped or name in res.aliased:
        return {**out, "note": "The effect cannot be estimated from these data: its column of the model is a "
                               "linear combination of the others (no observations of an arm at the primary visit)."}
    out.update(inference(res, name, sap["df_method"], sap["alpha"]))
    if out["se"] is None:
        out["note"] = ("No inference is possible from these data (the standard error is not finite, or the model "
                       "leaves no residual variation).")
    return out


def secondary_outcome(d: AnalysisData, sap: dict, s: dict) -> dict:
    """A secondary outcome: the primary model on it."""
    ins = next((i for i in d.content["instruments"] if i["key"] == s["instrument"]), {"label": s["instrument"],
                                                                                      "fields": []})
    fld = next((f for f in ins["fields"] if f["key"] == s["field"]), {"label": s["field"]})
    key = f"secondary:{s['instrument']}.{s['field']}"
    return mixed_entry(d, sap, key, f"Secondary outcome: {ins['label']}: {fld['label']}",
                       outcome=(s["instrument"], s["field"]),
                       what="; the values as recorded: every intercurrent event under the treatment-policy strategy "
                            "(the estimand's strategies are the primary outcome's)")


def all_strata(d: AnalysisData, sap: dict) -> dict:
    """The primary model adjusted for every randomization factor (the strata as corrected)."""
    factors = list(d.factors)
    return mixed_entry(d, sap, "all_strata", LABELS["all_strata"] + f" ({', '.join(factors)})", adjust=factors,
                       what="; every randomization factor, as corrected")


def _same_as_primary(primary: dict, d: AnalysisData) -> dict:
    """all_strata when the primary model already adjusts for every randomization factor: its fit."""
    keep = ("estimate", "ci_low", "ci_high", "p_value", "se", "df", "n", "method", "software")
    return {**_blank("all_strata", LABELS["all_strata"] + f" ({', '.join(d.factors)})"),
            **{k: primary.get(k) for k in keep},
            "note": "The primary model adjusts for every randomization factor already: this is its fit."}


def in_window(d: AnalysisData, sap: dict) -> dict:
    """The primary model without the assessments performed outside their visit's window."""
    ins, fld = _primary_outcome(d)
    values, dropped = {}, 0
    for v in sap["visits"]:
        if not d.has(ins, fld, v):
            continue
        ys = d.value(ins, fld, v)
        ow = d.out_of_window(ins, v) if (ins, v, "ow") in d._by_visit else [None] * d.n
        values[v] = [None if flag == 1 else y for y, flag in zip(ys, ow)]
        dropped += sum(1 for y, flag in zip(ys, ow) if flag == 1 and y is not None)
    entry = mixed_entry(d, sap, "in_window", LABELS["in_window"], values=values,
                        what="; the assessments outside their visit's window left out")
    entry.setdefault("details", {})["out_of_window_left_out"] = dropped
    return entry


def per_protocol(d: AnalysisData, sap: dict) -> dict:
    """The primary model on the per-protocol population (ppfl = 1); none in a blinded bundle."""
    if d.ppfl is None:
        return _blank("per_protocol", note="A blinded bundle has no per-protocol population: it needs the sessions "
                                           "attended, which would tell the arm (see the unblinded bundle).")
    return mixed_entry(d, sap, "per_protocol", LABELS["per_protocol"], keep=[p == 1 for p in d.ppfl],
                       what=f"; children per protocol (ppfl = 1: at least {sap.get('per_protocol_min_dose', 0.5):g} "
                            "of the planned sessions in the intervention arms, the primary outcome observed)")


def ancova(d: AnalysisData, sap: dict) -> dict:
    """The outcome at the primary visit ~ treatment + baseline + the adjustment factors, by ordinary
    least squares with t-based inference: the children of the pooled and reference arms with both
    values (trial.analysis.missingdata's outcome: the estimand applied at the primary visit)."""
    o = missingdata.primary_outcome(d, sap)
    keep = ~np.isnan(o.y) & ~np.isnan(o.baseline)
    n = int(keep.sum())
    ins, fld = _primary_outcome(d)
    pv, base = d.spec["primary_visit"], sap["visits"][0]
    method = (f"ANCOVA by ordinary least squares: {ins}.{fld} at {pv} ~ treatment + baseline ({base}) + "
              f"{' + '.join(o.factors) or '(no factor)'}; t distribution (n - p degrees of freedom)")
    out = {**_blank("ancova", f"ANCOVA at {_visit_label(d, pv)}"), "n": n, "method": method,
           "software": missingdata.software("NumPy least squares")}
    x = np.column_stack([np.ones(n), o.treated[keep], o.baseline[keep], o.factor_columns(keep)])
    return {**out, **ols_coefficient(x, o.y[keep], 1, sap["alpha"])}


def ols_coefficient(x: np.ndarray, y: np.ndarray, j: int, alpha: float) -> dict:
    """Coefficient ``j`` of the least-squares fit of y on x (the columns that are combinations of
    earlier ones left out, as R's lm): estimate, SE, residual df, t-based 1 - alpha interval, p."""
    keep = estimable_columns(x)
    if j not in keep:
        raise missingdata.NotEstimable("the treatment's column is a combination of the other columns")
    x = x[:, keep]
    n, p = x.shape
    if n <= p:
        raise missingdata.NotEstimable(f"{n} children for {p} coefficients leave no residual degrees of freedom")
    inv = np.linalg.inv(x.T @ x)  # (a few well-scaled columns: the normal equations are exact to ~1e-12)
    coef = inv @ (x.T @ y)
    resid = y - x @ coef
    k = keep.index(j)
    est, df = float(coef[k]), n - p
    se = math.sqrt(float(resid @ resid) / df * float(inv[k, k]))
    crit = float(stats.t.ppf(1 - alpha / 2, df))
    return {"estimate": est, "se": se, "df": float(df), "ci_low": est - crit * se, "ci_high": est + crit * se,
            "p_value": float(2 * stats.t.sf(abs(est / se), df)) if se > 0 else None}


# the analyses of the primary outcome at the primary visit: trial.analysis.missingdata.primary_outcome
# applies the estimand to the recorded data (the same strategies and precedence as
# trial.analysis.estimand: tests/test_sap.py checks they agree)
AT_PRIMARY_VISIT = ("ancova", "cace", "dose_response", "mi", "tipping_point")
SENSITIVITY_FUNCTIONS = {"ancova": ancova, "all_strata": all_strata, "in_window": in_window,
                         "per_protocol": per_protocol, "cace": causal.cace, "dose_response": causal.dose_response,
                         "mi": missingdata.multiple_imputation, "tipping_point": missingdata.tipping_point}


# --- multiplicity ----------------------------------------------------------------------------------

def adjust_p(entries: list[dict], sap: dict, primary: dict | None = None) -> list[dict]:
    """The secondary outcomes' ``p_adjusted`` by the SAP's procedure (in the SAP's order), each
    entry's ``method`` saying how. ``primary``: the primary entry (the hierarchy starts with it)."""
    if sap["multiplicity"] == "hierarchy":
        return hierarchy(entries, sap["alpha"], primary)
    adjusted = holm([e.get("p_value") for e in entries])
    how = (f"; p adjusted by Holm's procedure over the {len(entries)} secondary outcomes the SAP plans "
           "(one without a p value counts in m)")
    return [{**e, "p_adjusted": p, "method": f"{e.get('method') or ''}{how}",
             **({} if p is not None or e.get("p_value") is not None else
                {"note": _joined(e.get("note"), "no p value: it counts in Holm's m, and has no adjusted p")})}
            for e, p in zip(entries, adjusted)]


def hierarchy(entries: list[dict], alpha: float, primary: dict | None = None) -> list[dict]:
    """A fixed hierarchy that starts with the primary outcome: each secondary outcome tested at
    alpha in the listed order while the primary and every earlier one were significant (its
    p_adjusted is its p); after the first not significant (or without a p), p_adjusted is 1 and the
    entry says the hierarchy stopped there."""
    how = ("; fixed-sequence hierarchy: the primary outcome first, then the secondary outcomes in the SAP's "
           f"order, each tested at alpha = {alpha:g} only while every earlier one was significant")
    out, stopped = [], None
    p0 = None if primary is None else primary.get("p_value")
    if primary is not None and (p0 is None or p0 > alpha):
        stopped = (f"the primary outcome, which was not significant "
                   f"({'no p value' if p0 is None else f'p = {p0:.4g} > {alpha:g}'})")
    for e in entries:
        e = {**e, "method": f"{e.get('method') or ''}{how}"}
        if stopped is not None:
            out.append({**e, "p_adjusted": 1.0, "note": _joined(e.get("note"), f"not tested: the hierarchy stopped at "
                                                                               f"{stopped}")})
            continue
        p = e.get("p_value")
        out.append({**e, "p_adjusted": p})
        if p is None or p > alpha:
            stopped = f"{e['label']} ({'no p value' if p is None else f'p = {p:.4g} > {alpha:g}'})"
    return out


def _joined(a: str | None, b: str) -> str:
    return f"{a} {b[0].upper()}{b[1:]}." if a else f"{b[0].upper()}{b[1:]}."


def holm(ps: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment, as R's p.adjust(method = "holm", n = len(ps)): m is the number of
    outcomes planned, a missing p counts in m and stays missing."""
    given = sorted((p, i) for i, p in enumerate(ps) if p is not None)
    m = len(ps)
    out: list[float | None] = [None] * len(ps)
    running = 0.0
    for rank, (p, i) in enumerate(given):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
