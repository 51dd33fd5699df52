"""The intervention as received (issue 31): the complier-average causal effect and the dose-response
on sessions attended, by instrumental variables with the randomization as the instrument (two-stage
least squares). Pure functions of :class:`trial.analysis.data.AnalysisData` and the SAP's settings,
each returning an entry of the bundle's ``analysis/results.json``.

The outcome is the primary outcome at the primary visit with the estimand's strategies applied
(trial.analysis.missingdata.primary_outcome), of the children of the pooled arms and the reference
arm who have it and the baseline value (complete cases). The exogenous covariates are the baseline
value and the adjustment factors (the strata as corrected: site), each factor coded against its first
level in sorted order. The fit is AER's ``ivreg``: beta = (X' P_Z X)^-1 X' P_Z y, residuals with
the endogenous regressors as observed, sigma^2 = RSS / (n - p), covariance sigma^2 (X' P_Z X)^-1,
t tests and intervals with n - p degrees of freedom.

- ``cace``: receipt (at least one session attended in the course, ``sessatt``; none in the
  reference arm) instrumented by randomization to a pooled arm: the effect of the therapy in the
  children who would take it when offered (compliers), under the exclusion restriction and
  monotonicity (no one in the reference arm receives it).
- ``dose_response``: sessions attended (0 in the reference arm) instrumented by one indicator per
  pooled arm: the effect of 10 sessions attended, assuming it is linear in the sessions.

A blinded bundle has no delivered intervention: both entries have no estimate and say why.
"""
from __future__ import annotations

import numpy as np

from trial.analysis.data import AnalysisData
from trial.analysis.lmm import estimable_columns
from trial.analysis.missingdata import (
    NotEstimable,
    Outcome,
    alpha_of,
    one_blas_thread,
    primary_outcome,
    software,
    t_inference,
)

DOSE_UNIT = 10  # the dose-response's estimate: per this many sessions attended
IV_SOFTWARE = "trial.analysis.causal (two-stage least squares, as AER::ivreg)"
BLINDED_NOTE = ("A blinded bundle has no sessions attended (the delivered intervention would reveal the arms): "
                "this analysis runs in the unblinded bundle only")


def tsls(y: np.ndarray, exog: np.ndarray, endog: np.ndarray, instruments: np.ndarray) -> dict:
    """Two-stage least squares as AER::ivreg: regressors [exog, endog], instruments [exog,
    instruments]. Returns the coefficients, their covariance, the residual df and the first
    stage's F statistic for the excluded instruments (for each endogenous regressor)."""
    x, z = np.column_stack([exog, endog]), np.column_stack([exog, instruments])
    keep_z = estimable_columns(z)
    z = z[:, keep_z]
    x_hat = z @ np.linalg.solve(z.T @ z, z.T @ x)  # the projection of X on the instruments
    keep = estimable_columns(x_hat)
    endog_cols = list(range(exog.shape[1], x.shape[1]))
    if not set(endog_cols) <= set(keep):
        raise NotEstimable("the instruments do not move the intervention received (no child of the pooled arms "
                           "attended a session, or too few children)")
    x, x_hat = x[:, keep], x_hat[:, keep]
    n, p = x.shape
    if n - p < 1:
        raise NotEstimable(f"{n} children for {p} coefficients: no residual degrees of freedom")
    inv = np.linalg.inv(x_hat.T @ x_hat)
    beta = inv @ (x_hat.T @ y)
    resid = y - x @ beta
    sigma2 = float(resid @ resid) / (n - p)
    return {"beta": beta, "cov": sigma2 * inv, "df": n - p, "n": n, "columns": keep, "sigma2": sigma2,
            "first_stage_f": [_first_stage_f(endog[:, k], exog, z) for k in range(endog.shape[1])]}


def _first_stage_f(d: np.ndarray, exog: np.ndarray, z: np.ndarray) -> float | None:
    """The F statistic of the excluded instruments in the first stage (AER's weak-instruments test)."""
    def rss(a):
        a = a[:, estimable_columns(a)]
        r = d - a @ np.linalg.solve(a.T @ a, a.T @ d)
        return float(r @ r), a.shape[1]
    rss0, p0 = rss(exog)
    rss1, p1 = rss(z)
    q, dfr = p1 - p0, len(d) - p1
    if q < 1 or dfr < 1 or rss1 <= 0:
        return None
    return ((rss0 - rss1) / q) / (rss1 / dfr)


def complete_cases(o: Outcome) -> np.ndarray:
    """The children with the outcome and the baseline value."""
    return ~np.isnan(o.y) & ~np.isnan(o.baseline)


def exogenous(o: Outcome, keep: np.ndarray) -> np.ndarray:
    """The intercept, the baseline value and the factors' indicators of the children in ``keep``."""
    return np.column_stack([np.ones(int(keep.sum())), o.baseline[keep], o.factor_columns(keep)])


def sessions(d: AnalysisData, o: Outcome) -> np.ndarray:
    """Sessions attended in the course by the children of ``o`` (none recorded: 0)."""
    return np.array([float(d.sessatt[i] or 0) for i in o.rows])


def _entry(key: str, label: str, o: Outcome, method: str) -> dict:
    return {"key": key, "label": label, "estimate": None, "ci_low": None, "ci_high": None, "p_value": None,
            "n": int(complete_cases(o).sum()), "method": method, "software": software(IV_SOFTWARE)}


def _fit(out: dict, o: Outcome, endog: np.ndarray, instruments: np.ndarray, alpha: float, scale: float = 1.0) -> dict:
    """Fit and fill the entry (the endogenous regressor's coefficient, times ``scale``); the fit."""
    keep = complete_cases(o)
    fit = tsls(o.y[keep], exogenous(o, keep), endog[keep][:, None], instruments[keep])
    j = len(fit["columns"]) - 1  # the endogenous regressor: the last column
    est, se = float(fit["beta"][j]), float(np.sqrt(fit["cov"][j, j]))
    out.update(t_inference(est * scale, se * scale, fit["df"], alpha))
    out["n"] = fit["n"]
    return fit


def _words(o: Outcome) -> str:
    return " + ".join(o.factors) or "no factor"


@one_blas_thread
def cace(d: AnalysisData, sap: dict) -> dict:
    """The ``cace`` entry: the complier-average causal effect of the pooled arms (the module's text)."""
    o = primary_outcome(d, sap)
    method = (f"Two-stage least squares: {o.label} on receipt (at least one session attended in the course; none in "
              f"the reference arm), instrumented by randomization to the pooled arms, adjusted for the baseline value "
              f"and {_words(o)} (exogenous); children with the outcome and the baseline value; homoskedastic standard "
              "errors, t distribution with n - p degrees of freedom (as AER::ivreg)")
    out = _entry("cace", "Complier-average causal effect (instrumental variables)", o, method)
    if d.sessatt is None:
        out["note"] = BLINDED_NOTE
        return out
    received = ((sessions(d, o) >= 1) & (o.treated == 1)).astype(float)
    try:
        fit = _fit(out, o, received, o.treated[:, None], alpha_of(sap))
    except (NotEstimable, np.linalg.LinAlgError) as e:
        out["note"] = f"Not estimable from these data: {e}"
        return out
    keep = complete_cases(o)
    treated = keep & (o.treated == 1)
    out["details"] = {"received_share_pooled_arms": float(received[treated].mean()) if treated.any() else None,
                      "first_stage_f": fit["first_stage_f"][0], "df": fit["df"],
                      "intercurrent_events": o.strategies}
    return out


@one_blas_thread
def dose_response(d: AnalysisData, sap: dict) -> dict:
    """The ``dose_response`` entry: the effect of 10 sessions attended (the module's text)."""
    o = primary_outcome(d, sap)
    pooled = [a for a in o.arms if a != d.reference]
    method = (f"Two-stage least squares: {o.label} on sessions attended in the course (0 in the reference arm), "
              f"instrumented by randomization to each pooled arm ({', '.join(d.labels.get(a, a) for a in pooled)}), "
              f"adjusted for the baseline value and {_words(o)} (exogenous); the estimate is the effect per "
              f"{DOSE_UNIT} sessions attended (the coefficient times {DOSE_UNIT}), assumed linear; children with "
              "the outcome and the baseline value; homoskedastic standard errors, t distribution with n - p "
              "degrees of freedom (as AER::ivreg)")
    out = _entry("dose_response", f"Dose-response: effect per {DOSE_UNIT} sessions attended (instrumental variables)",
                 o, method)
    if d.sessatt is None:
        out["note"] = BLINDED_NOTE
        return out
    attended = np.where(o.treated == 1, sessions(d, o), 0.0)
    arms = np.column_stack([(o.arm == a).astype(float) for a in pooled]) if pooled else np.zeros((len(o.y), 0))
    try:
        fit = _fit(out, o, attended, arms, alpha_of(sap), scale=DOSE_UNIT)
    except (NotEstimable, np.linalg.LinAlgError) as e:
        out["note"] = f"Not estimable from these data: {e}"
        return out
    keep = complete_cases(o)
    out["details"] = {"per_sessions": DOSE_UNIT, "first_stage_f": fit["first_stage_f"][0], "df": fit["df"],
                      "mean_sessions_by_arm": {a: float(attended[keep & (o.arm == a)].mean())
                                               for a in o.arms if (keep & (o.arm == a)).any()},
                      "intercurrent_events": o.strategies}
    return out
