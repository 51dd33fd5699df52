"""Missing data of the primary outcome (issue 31): multiple imputation under missing at random, the
delta-adjusted tipping point under missing not at random, and the table of what is missing by
visit, arm and reason. Pure functions of :class:`trial.analysis.data.AnalysisData` and the SAP's
settings (``sap``: the protocol's ``[analysis]`` with its defaults applied), each returning an entry
of the bundle's ``analysis/results.json`` (the missingness table: its columns and rows).

The outcome (``primary_outcome``) is the primary outcome at the primary visit with the estimand's
strategies applied (``primary_values``; trial.protocol.schema.IntercurrentEvent): for a child whose
intercurrent event came before the visit (the day it was performed, else the day it was due),
``hypothetical`` sets the value aside (missing: it is imputed), ``composite`` puts the worst value of
the field's range (worst by the SAP's direction of benefit, sap_settings' ``benefit``; a field without that
bound: not applied, and said), ``while_on_treatment`` the last value of an analysis visit before the
event (none: set aside), ``treatment_policy`` keeps the value as observed. A child with several such
events: composite before hypothetical before while on treatment (the rules of
trial.analysis.estimand, which applies them at every analysis visit for the mixed models). The
children are those of the pooled arms and of the reference arm, as randomized; "treatment" is the
pooled arms against the reference, the estimate treatment minus reference.

Multiple imputation (``multiple_imputation``): in each arm separately (the arms in the bundle's
order, reference first), the missing outcomes are drawn from a Bayesian normal linear regression on
the baseline value and the adjustment factors (site) fitted to the arm's children with both
(Rubin 1987, p. 167; mice's ``norm``): sigma^2 = RSS / chi^2(n - p), beta ~ N(b, sigma^2 (X'X)^-1),
y = X beta + e. A child without the baseline value has it drawn first the same way, from the
factors and, where observed, the outcome. Factor levels without an observed child in the arm are
left out of its regression (as mice leaves a constant column out). The draws of the ``m``
imputations are made together, from NumPy's default generator seeded with the SAP's seed: per arm,
the baselines (m chi-squares, m x p normals, m x k normals), then the outcomes likewise; the same
seed gives the same digits. Each completed data set is analysed by ANCOVA (outcome ~ treatment +
baseline + factors, OLS) and the results pooled by Rubin's rules with Barnard and Rubin's (1999)
degrees of freedom, as ``mice::pool`` (lambda floored at 1e-4).

The tipping point (``tipping_point``) reuses those imputations (the same seed): the imputed
outcomes of the pooled arms are shifted by each delta towards harm, the completed data sets analysed
and pooled again. Its estimate is the first delta of the grid at which the multiple imputation's
conclusion (a significant benefit at alpha) no longer holds.

NumPy and SciPy are imported at the top (the tree's budget of deferred imports is spent): import this
module only where an analysis runs.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
import platform

import numpy as np
import scipy
from scipy import linalg, stats
from threadpoolctl import ThreadpoolController

from trial.analysis.data import EVENT_TYPES, AnalysisData
from trial.analysis.lmm import estimable_columns

DEFAULT_MI = {"imputations": 20, "seed": 20240101}
LAMBDA_FLOOR = 1e-4  # mice::pool's floor on the fraction of variance due to missingness
STRATEGY_RANK = {"composite": 0, "hypothetical": 1, "while_on_treatment": 2}  # which decides when several apply
EXIT_LABELS = {"withdrawn": "Withdrawn", "died": "Died", "lost_to_follow_up": "Lost to follow-up"}
HIDDEN_WHEN_BLINDED = ("discontinued_intervention", "not_received")


class NotEstimable(ValueError):
    """The data do not allow the analysis (too few children with values, no contrast): the
    message says why in words."""


@functools.cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()  # (it looks for the loaded libraries once: a tenth of a second)


def one_blas_thread(analysis):
    """Run an analysis with BLAS on one thread (as trial.analysis.lmm fits): the same digits whichever
    process builds the bundle, and no thread contention with the build's other threads."""
    @functools.wraps(analysis)
    def run(*args, **kwargs):
        with _blas().limit(limits=1, user_api="blas"):
            return analysis(*args, **kwargs)
    return run


def alpha_of(sap: dict) -> float:
    return float(sap.get("alpha") or 0.05)


def software(what: str) -> str:
    return f"{what}, NumPy {np.__version__}, SciPy {scipy.__version__}, Python {platform.python_version()}"


def t_inference(estimate: float, se: float, df: float, alpha: float) -> dict:
    """Estimate, se, df, the (1 - alpha) confidence interval and the two-sided p from the t
    distribution with ``df`` degrees of freedom."""
    if not (se > 0 and math.isfinite(se) and df > 0):  # no residual variation: no inference
        return {"estimate": float(estimate), "se": None, "df": float(df), "ci_low": None, "ci_high": None,
                "p_value": None}
    q = float(stats.t.ppf(1 - alpha / 2, df))
    return {"estimate": float(estimate), "se": float(se), "df": float(df), "ci_low": float(estimate - q * se),
            "ci_high": float(estimate + q * se), "p_value": float(2 * stats.t.sf(abs(estimate / se), df))}




# --- the outcome --------------------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    """The primary outcome at the primary visit (the estimand applied) of the children of the pooled
    and the reference arms, with what the analyses adjust for; arrays in ADSL order."""
    rows: np.ndarray                 # the children's ADSL indices
    y: np.ndarray                    # the outcome at the primary visit (NaN: missing)
    baseline: np.ndarray             # the outcome at the first analysis visit (NaN: missing)
    treated: np.ndarray              # 1.0 in a pooled arm, 0.0 in the reference arm
    arm: np.ndarray                  # the arm codes
    arms: list[str]                  # the codes present, the reference first
    factors: dict[str, np.ndarray]   # each adjustment factor's values (str)
    strategies: list[dict]           # the estimand's strategies as applied: {event, strategy, children}
    benefit: str                     # "lower" or "higher"
    label: str                       # the outcome and the visit, in words

    def factor_columns(self, mask: np.ndarray | None = None) -> np.ndarray:
        """Each adjustment factor coded against its first level in sorted order (the levels of the
        children in ``mask``), for those children."""
        cols = [dummies(v if mask is None else v[mask]) for v in self.factors.values()]
        n = len(self.y) if mask is None else int(mask.sum())
        return np.column_stack(cols) if cols else np.zeros((n, 0))


def dummies(values: np.ndarray) -> np.ndarray:
    """A factor's indicator columns against its first level in sorted order (as R codes a factor)."""
    levels = sorted(set(values.tolist()))
    if len(levels) < 2:
        return np.zeros((len(values), 0))
    return np.column_stack([values == level for level in levels[1:]]).astype(float)


def _float(values) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def primary_outcome(d: AnalysisData, sap: dict) -> Outcome:
    """The outcome the analyses of this module and trial.analysis.causal read (the module's text)."""
    prim = d.content["primary_outcome"]
    values, strategies = primary_values(d, sap)
    members = [d.reference, *d.pooled]
    rows = np.array([i for i, a in enumerate(d.arm) if a in members], dtype=int)
    arm = np.array([d.arm[i] for i in rows], dtype=object)
    base = d.value(prim["instrument"], prim["field"], d.spec["visits"][0])
    factors = {f: np.array(["" if d.factors[f][i] is None else str(d.factors[f][i]) for i in rows], dtype=object)
               for f in d.spec["adjust"] if f in d.factors}
    visit = next((v.get("label") or v["key"] for v in d.content.get("visits", []) if v["key"] == d.spec["primary_visit"]),
                 d.spec["primary_visit"])
    return Outcome(rows=rows, y=_float(values[i] for i in rows), baseline=_float(base[i] for i in rows),
                   treated=np.isin(arm, np.array(d.pooled, dtype=object)).astype(float), arm=arm,
                   arms=[a for a in d.arms if a in members and (arm == a).any()], factors=factors,
                   strategies=strategies, benefit=sap.get("benefit") or "lower",
                   label=f"{d.spec['outcome_label']} at {visit}")


def visit_days(d: AnalysisData, instrument: str, visit: str) -> list[dt.date | None]:
    """The day of each child's visit: performed, else due (randomization day + the visit's day)."""
    due = next((v["day"] for v in d.content.get("visits", []) if v["key"] == visit), 0)
    return [p or (r + dt.timedelta(days=due) if r else None) for p, r in zip(d.performed(instrument, visit), d.randdt)]


def primary_values(d: AnalysisData, sap: dict) -> tuple[list, list[dict]]:
    """The primary outcome at the primary visit, each child (ADSL order), with the estimand's
    strategies applied (the module's text); and for each intercurrent event of the estimand its
    strategy and the children whose event came before the visit."""
    prim = d.content["primary_outcome"]
    ins, fld, pv = prim["instrument"], prim["field"], d.spec["primary_visit"]
    values = list(d.value(ins, fld, pv))
    day = visit_days(d, ins, pv)
    deciding: dict[int, tuple[int, dt.date, str]] = {}
    applied = []
    days = event_days(d)
    for e in (sap.get("estimand") or {}).get("intercurrent_events") or []:
        event, strategy = e["event"], e["strategy"]
        when = days.get(EVENT_TYPES[event], {})
        hit = [i for i, w in when.items() if day[i] is not None and day[i] > w]
        note = ("a blinded bundle does not show this event: the strategy could not apply"
                if d.blinded and event in HIDDEN_WHEN_BLINDED else None)
        applied.append({"event": event, "strategy": strategy, "children": None if note else len(hit),
                        **({"note": note} if note else {})})
        for i in hit if strategy in STRATEGY_RANK else []:
            if i not in deciding or STRATEGY_RANK[strategy] < deciding[i][0]:
                deciding[i] = (STRATEGY_RANK[strategy], when[i], strategy)
    worst = worst_value(d.content, ins, fld, sap.get("benefit") or "lower")
    before = _last_before(d, ins, fld) if any(s == "while_on_treatment" for _, _, s in deciding.values()) else None
    for i, (_, when_i, strategy) in deciding.items():
        if strategy == "composite" and worst is None:  # no bound in the protocol: no worst value (said below)
            continue
        values[i] = worst if strategy == "composite" else None if strategy == "hypothetical" else before(i, when_i)
    for a in applied if worst is None else []:
        if a["strategy"] == "composite":
            a["note"] = "not applied: the protocol gives the outcome's field no bound, so there is no worst value"
    return values, applied


def event_days(d: AnalysisData) -> dict[str, dict[int, dt.date]]:
    """The first day of each status event by type and child (ADSL index), for the children who had
    it (as AnalysisData.event_day, from the few children with events)."""
    at = {sid: i for i, sid in enumerate(d.studyid)}
    out: dict[str, dict[int, dt.date]] = {}
    for sid, events in d.events.items():
        for kind, day in events:  # (in date order: the first one stays)
            if sid in at:
                out.setdefault(kind, {}).setdefault(at[sid], day)
    return out


def worst_value(content: dict, instrument: str, field: str, benefit: str) -> float | None:
    """The worst value of a field's range (its max when lower is better, else its min; ``benefit``:
    trial.analysis.sap.sap_settings' direction of benefit)."""
    ins = next(i for i in content["instruments"] if i["key"] == instrument)
    f = next(x for x in ins["fields"] if x["key"] == field)
    return f.get("max") if benefit == "lower" else f.get("min")


def _last_before(d: AnalysisData, ins: str, fld: str):
    """A function of (child, day): the child's last value of the analysis visits performed before
    that day (None when none)."""
    visits = d.spec["visits"]
    visits = visits[:visits.index(d.spec["primary_visit"])] if d.spec["primary_visit"] in visits else visits
    got = [(d.value(ins, fld, v), d.performed(ins, v)) for v in visits]

    def last(i: int, day: dt.date):
        seen = [vals[i] for vals, days in got if vals[i] is not None and days[i] is not None and days[i] < day]
        return seen[-1] if seen else None
    return last


# --- multiple imputation ------------------------------------------------------------------------

@dataclasses.dataclass
class Completed:
    """The m completed data sets: the outcome and the baseline (m x children)."""
    y: np.ndarray
    baseline: np.ndarray
    imputed: np.ndarray           # the outcome was drawn (per child)
    baseline_imputed: np.ndarray  # the baseline was drawn (per child)
    seed: int


def norm_draw(x: np.ndarray, y: np.ndarray, x_mis: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """m draws of the missing values by Bayesian normal linear regression (mice's ``norm`` without
    its ridge): fitted to (x, y), predicted at ``x_mis`` (m x k x p: a design per imputation).
    Columns that are combinations of earlier ones (a level without an observed child) are left out."""
    keep = estimable_columns(x)
    x, x_mis = x[:, keep], x_mis[..., keep]
    (n, p), m = x.shape, x_mis.shape[0]
    if n - p < 1:
        raise NotEstimable(f"{n} children with values for {p} coefficients: too few to impute from")
    xtx_inv = np.linalg.inv(x.T @ x)
    b = xtx_inv @ (x.T @ y)
    rss = float(((y - x @ b) ** 2).sum())
    sigma = np.sqrt(rss / rng.chisquare(n - p, size=m))
    beta = b + sigma[:, None] * (rng.standard_normal((m, p)) @ np.linalg.cholesky(xtx_inv).T)
    return np.einsum("mkp,mp->mk", x_mis, beta) + sigma[:, None] * rng.standard_normal((m, x_mis.shape[1]))


def impute(o: Outcome, m: int, seed: int) -> Completed:
    """The m completed data sets (the module's text: by arm, the baselines first)."""
    rng = np.random.default_rng(seed)
    y, base = np.repeat(o.y[None, :], m, axis=0), np.repeat(o.baseline[None, :], m, axis=0)
    for arm in o.arms:
        try:
            _impute_arm(o, np.flatnonzero(o.arm == arm), y, base, rng)
        except NotEstimable as e:
            raise NotEstimable(f"arm {arm}: {e}") from e
    return Completed(y=y, baseline=base, imputed=np.isnan(o.y), baseline_imputed=np.isnan(o.baseline), seed=seed)


def _impute_arm(o: Outcome, idx: np.ndarray, y: np.ndarray, base: np.ndarray, rng: np.random.Generator) -> None:
    m = y.shape[0]
    f = o.factor_columns(np.isin(np.arange(len(o.y)), idx))
    one = np.ones((len(idx), 1))
    yo, bo = ~np.isnan(o.y[idx]), ~np.isnan(o.baseline[idx])
    both = yo & bo
    if (sel := ~bo & yo).any():  # the baseline from the outcome and the factors
        x = np.column_stack([one, o.y[idx], f])
        base[:, idx[sel]] = norm_draw(x[both], o.baseline[idx][both], np.broadcast_to(x[sel], (m, *x[sel].shape)), rng)
    if (sel := ~bo & ~yo).any():  # the baseline from the factors alone
        x = np.column_stack([one, f])
        base[:, idx[sel]] = norm_draw(x[bo], o.baseline[idx][bo], np.broadcast_to(x[sel], (m, *x[sel].shape)), rng)
    if (sel := ~yo).any():  # the outcome from the baseline (observed or drawn) and the factors
        x = np.column_stack([one, o.baseline[idx], f])
        x_mis = np.concatenate([np.broadcast_to(one[sel], (m, int(sel.sum()), 1)), base[:, idx[sel], None],
                                np.broadcast_to(f[sel], (m, *f[sel].shape))], axis=2)
        y[:, idx[sel]] = norm_draw(x[both], o.y[idx][both], x_mis, rng)


def ols_term(x: np.ndarray, ys: np.ndarray, col: int = 1) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Least squares of each column of ``ys`` on ``x``: the coefficients of column ``col``, the
    residuals, that coefficient's variance factor ((X'X)^-1 at col, col) and the residual degrees of
    freedom (columns that are combinations of earlier ones left out)."""
    keep = estimable_columns(x)
    if col not in keep:
        raise NotEstimable("the treatment cannot be estimated: it is a combination of the other terms")
    x = x[:, keep]
    n, p = x.shape
    if n - p < 1:
        raise NotEstimable(f"{n} children for {p} coefficients: no residual degrees of freedom")
    q, r = np.linalg.qr(x)
    coef = linalg.solve_triangular(r, q.T @ ys)
    r_inv = linalg.solve_triangular(r, np.eye(p))
    j = keep.index(col)
    return coef[j], ys - x @ coef, float(r_inv[j] @ r_inv[j]), n - p


def ancova_completed(o: Outcome, c: Completed, shift: np.ndarray, deltas: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """ANCOVA (outcome ~ treatment + baseline + factors) of each completed data set with ``shift``
    (one value per child) times each delta added to its outcome: the treatment's estimates and
    variances (m x deltas) and the complete-data residual degrees of freedom. Least squares being
    linear, the shift is fitted once: estimate(delta) = estimate + delta * estimate(shift) and the
    residuals r + delta * r(shift)."""
    m, n = c.y.shape
    f = o.factor_columns()

    def design(j: int) -> np.ndarray:
        return np.column_stack([np.ones(n), o.treated, c.baseline[j], f])
    if c.baseline_imputed.any():  # a design per completed data set
        fits = [ols_term(design(j), np.column_stack([c.y[j], shift])) for j in range(m)]
    else:  # one design for every data set: one solve
        b, res, v, df = ols_term(design(0), np.column_stack([c.y.T, shift]))
        fits = [(b[[j, m]], res[:, [j, m]], v, df) for j in range(m)]
    est, var = np.empty((m, len(deltas))), np.empty((m, len(deltas)))
    for j, (b, res, v, df) in enumerate(fits):
        est[j] = b[0] + deltas * b[1]
        rss = res[:, 0] @ res[:, 0] + 2 * deltas * (res[:, 0] @ res[:, 1]) + deltas ** 2 * (res[:, 1] @ res[:, 1])
        var[j] = rss / df * v
    return est, var, fits[0][3]


def rubin(q: np.ndarray, u: np.ndarray, dfcom: float) -> dict:
    """Rubin's rules for one scalar (``q`` the m estimates, ``u`` their variances) with Barnard and
    Rubin's degrees of freedom (``dfcom``: the complete-data residual df), as mice::pool."""
    m = len(q)
    qbar, ubar, b = float(np.mean(q)), float(np.mean(u)), float(np.var(q, ddof=1))
    t = ubar + (1 + 1 / m) * b
    lam = max((1 + 1 / m) * b / t, LAMBDA_FLOOR)
    dfold = (m - 1) / lam ** 2
    dfobs = (dfcom + 1) / (dfcom + 3) * dfcom * (1 - lam)
    df = dfold * dfobs / (dfold + dfobs)
    riv = (1 + 1 / m) * b / ubar
    return {"m": m, "estimate": qbar, "ubar": ubar, "b": b, "t": t, "df": df, "dfcom": dfcom, "riv": riv,
            "lambda": (1 + 1 / m) * b / t, "fmi": (riv + 2 / (df + 3)) / (1 + riv)}


def _pooled(q: np.ndarray, u: np.ndarray, dfcom: float, alpha: float) -> dict:
    r = rubin(q, u, dfcom)
    return {**t_inference(r["estimate"], math.sqrt(r["t"]), r["df"], alpha), "rubin": r}


def mi_settings(sap: dict) -> tuple[int, int]:
    mi = {**DEFAULT_MI, **(sap.get("mi") or {})}
    return int(mi["imputations"]), int(mi["seed"])


def _factor_words(o: Outcome) -> str:
    return " + ".join(o.factors) or "no factor"


def _mi_method(o: Outcome, m: int, seed: int) -> str:
    f = _factor_words(o)
    return (f"Missing values of {o.label} imputed {m} times in each arm separately by Bayesian normal linear "
            f"regression on the baseline value and {f} (mice's 'norm'; NumPy's default generator, seed {seed}); "
            f"a missing baseline drawn first, by arm, from {f} and the outcome where observed. Each completed "
            f"data set analysed by ANCOVA (outcome ~ treatment + baseline + {f}, OLS), treatment = the pooled "
            "arms against the reference; pooled by Rubin's rules with Barnard-Rubin degrees of freedom")


def _entry(key: str, label: str, o: Outcome, method: str, what: str) -> dict:
    return {"key": key, "label": label, "estimate": None, "ci_low": None, "ci_high": None, "p_value": None,
            "n": len(o.y), "method": method, "software": software(what)}


MI_SOFTWARE = "trial.analysis.missingdata (Bayesian normal linear regression imputation as mice's norm; Rubin's rules as mice::pool)"


def _mi_details(o: Outcome, c: Completed, m: int) -> dict:
    return {"seed": c.seed, "imputations": m, "generator": "numpy.random.default_rng (PCG64)",
            "observed": int((~c.imputed).sum()), "imputed": int(c.imputed.sum()),
            "imputed_by_arm": {a: int((c.imputed & (o.arm == a)).sum()) for a in o.arms},
            "baseline_imputed": int(c.baseline_imputed.sum()), "intercurrent_events": o.strategies}


@one_blas_thread
def multiple_imputation(d: AnalysisData, sap: dict) -> dict:
    """The ``mi`` entry: the missing primary outcomes imputed under missing at random (the module's
    text), analysed by ANCOVA and pooled by Rubin's rules."""
    o = primary_outcome(d, sap)
    m, seed = mi_settings(sap)
    out = _entry("mi", "Multiple imputation of missing outcomes (missing at random)", o, _mi_method(o, m, seed),
                 MI_SOFTWARE)
    try:
        c = impute(o, m, seed)
        est, var, dfcom = ancova_completed(o, c, np.zeros(len(o.y)), np.zeros(1))
    except (NotEstimable, np.linalg.LinAlgError) as e:
        out["note"] = f"Not estimable from these data: {e}"
        out["details"] = {"seed": seed, "imputations": m}
        return out
    res = _pooled(est[:, 0], var[:, 0], dfcom, alpha_of(sap))
    rubin_ = res.pop("rubin")
    out.update(res)
    out["details"] = {**_mi_details(o, c, m), "rubin": rubin_}
    return out


# --- the tipping point --------------------------------------------------------------------------

def tipping_deltas(d: AnalysisData, sap: dict) -> list[float]:
    """The SAP's deltas (their one default is trial.analysis.sap.sap_settings')."""
    return [float(x) for x in sap["tipping_point"]["deltas"]]


def _beneficial(r: dict, benefit: str, alpha: float) -> bool:
    return r["p_value"] is not None and r["p_value"] < alpha and \
        (r["estimate"] < 0 if benefit == "lower" else r["estimate"] > 0)


@one_blas_thread
def tipping_point(d: AnalysisData, sap: dict) -> dict:
    """The ``tipping_point`` entry: the imputed outcomes of the pooled arms shifted by each delta
    towards harm (missing not at random); its estimate the first delta of the grid at which the
    multiple imputation's significant benefit is lost (null, with the reason in ``note``, when the
    multiple imputation shows none or no delta of the grid overturns it)."""
    o = primary_outcome(d, sap)
    m, seed = mi_settings(sap)
    deltas, alpha = tipping_deltas(d, sap), alpha_of(sap)
    harm = 1.0 if o.benefit == "lower" else -1.0
    method = (f"Delta-adjusted multiple imputation (missing not at random): as 'mi' (the same {m} imputations, seed "
              f"{seed}), the imputed outcomes of the pooled arms shifted by delta towards harm ({'+' if harm > 0 else '-'}"
              f"delta; the direction of benefit: {o.benefit} is better) for each delta of {deltas}; the estimate is the "
              "smallest delta at which the conclusion (a significant benefit at alpha) is overturned")
    out = _entry("tipping_point", "Tipping point of the multiple imputation (missing not at random)", o, method,
                 MI_SOFTWARE)
    try:
        c = impute(o, m, seed)
        shift = harm * (c.imputed & (o.treated == 1)).astype(float)
        est, var, dfcom = ancova_completed(o, c, shift, np.array([0.0, *deltas]))
    except (NotEstimable, np.linalg.LinAlgError) as e:
        out["note"] = f"Not estimable from these data: {e}"
        return out
    pooled = [_pooled(est[:, k], var[:, k], dfcom, alpha) for k in range(est.shape[1])]
    grid = [{"delta": delta, **{k: r[k] for k in ("estimate", "ci_low", "ci_high", "p_value", "df")},
             "significant_benefit": _beneficial(r, o.benefit, alpha)} for delta, r in zip(deltas, pooled[1:])]
    out["details"] = {"seed": seed, "imputations": m, "deltas": deltas, "estimate_is": "delta",
                      "units": "outcome points towards harm", "shifted": int((c.imputed & (o.treated == 1)).sum()),
                      "mi": {k: pooled[0][k] for k in ("estimate", "ci_low", "ci_high", "p_value")}, "grid": grid}
    out["note"] = _tipping(out, pooled[0], grid, o.benefit, alpha)
    return out


def _tipping(out: dict, mi: dict, grid: list[dict], benefit: str, alpha: float) -> str:
    """Set the entry's estimate (the tipping delta) and say what it means."""
    if not _beneficial(mi, benefit, alpha):
        return (f"The multiple imputation shows no significant benefit at alpha {alpha:g} (estimate {mi['estimate']:.4g}, "
                f"p {_g(mi['p_value'])}): there is no conclusion to overturn")
    first = next((g for g in grid if not g["significant_benefit"]), None)
    if first is None:
        return (f"No delta up to {grid[-1]['delta']:g} overturns the significant benefit (at delta {grid[-1]['delta']:g}: "
                f"estimate {grid[-1]['estimate']:.4g}, p {grid[-1]['p_value']:.4g})")
    out["estimate"] = first["delta"]
    return (f"The significant benefit is overturned at delta {first['delta']:g} (imputed outcomes of the pooled arms "
            f"{first['delta']:g} points worse): estimate {first['estimate']:.4g} "
            f"[{_g(first['ci_low'])}, {_g(first['ci_high'])}], p {_g(first['p_value'])}")


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


# --- the missingness table ----------------------------------------------------------------------

MISSINGNESS_COLUMNS = ["visit", "visit_label", "arm", "arm_label", "status", "reason", "reason_label", "n",
                       "randomized", "percent"]


def _status(d: AnalysisData, visit: dict) -> list[tuple[str, str]]:
    """Each child's (status, reason) at a visit, for the primary outcome: observed; left the trial
    (withdrawn, died, lost to follow-up) on or before the last day of the visit's window; recorded
    as not done with the protocol's reason; missing with no reason recorded (in this order)."""
    prim = d.content["primary_outcome"]
    ins, vk = prim["instrument"], visit["key"]
    values, reasons = d.value(ins, prim["field"], vk), d.not_done(ins, vk)
    exit_day = [None if x in (None, "") else dt.date.fromisoformat(str(x)[:10]) for x in d.column("exitdt")]
    exit_reason = d.column("exitrsn")
    closes = visit["day"] + visit.get("window_after", 0)
    out = []
    for i in range(d.n):
        if values[i] is not None:
            out.append(("observed", ""))
        elif exit_day[i] is not None and d.randdt[i] is not None and \
                exit_day[i] <= d.randdt[i] + dt.timedelta(days=closes):
            out.append(("left_trial", exit_reason[i] or ""))
        elif reasons[i]:
            out.append(("not_done", reasons[i]))
        else:
            out.append(("no_reason", ""))
    return out


@one_blas_thread
def missingness_table(d: AnalysisData, sap: dict) -> dict:
    """The primary outcome at each analysis visit, by arm (and all arms) and status (``_status``):
    counts and percent of the children randomized to the arm; every protocol reason and exit reason
    listed, with zero counts. ``{columns, rows}``."""
    reasons = [("observed", "", "Observed")]
    reasons += [("not_done", r["key"], f"Not done: {r['label']}") for r in d.content.get("missing_reasons", [])]
    reasons += [("no_reason", "", "Missing, no reason recorded")]
    reasons += [("left_trial", k, f"Left the trial: {label}") for k, label in EXIT_LABELS.items()]
    visits = {v["key"]: v for v in d.content.get("visits", [])}
    arms = [(a, d.labels.get(a, a)) for a in d.arms] + [("all", "All arms")]
    rows = []
    for vk in d.spec["visits"]:
        status = _status(d, visits[vk])
        for arm, arm_label in arms:
            mine = [s for s, a in zip(status, d.arm) if arm == "all" or a == arm]
            counts = {}
            for s in mine:
                counts[s] = counts.get(s, 0) + 1
            known = {(s, r) for s, r, _ in reasons}
            extra = sorted({s for s in counts if s not in known})  # a reason the protocol no longer lists
            for s, r, label in reasons + [(s, r, f"{s}: {r}") for s, r in extra]:
                n = counts.get((s, r), 0)
                rows.append([vk, visits[vk].get("label") or vk, arm, arm_label, s, r, label, n, len(mine),
                             round(100 * n / len(mine), 1) if mine else None])
    return {"columns": list(MISSINGNESS_COLUMNS), "rows": rows}
