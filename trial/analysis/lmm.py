"""A linear mixed model with one random intercept per group (a child), fitted by REML.

    y_ij = x_ij' beta + b_i + e_ij,   b_i ~ N(0, tau^2),   e_ij ~ N(0, sigma^2)

The REML criterion is profiled over the one parameter that is left once beta and sigma^2 are
solved for, theta = tau / sigma (lme4's parameterization), as lme4 does:

    d(theta) = (N - p) * (1 + log(2 pi s2(theta))) + sum_i log(1 + n_i theta^2) + log det(X' A^-1 X)

with A = I + theta^2 Z Z' (V = sigma^2 A), s2(theta) = r' A^-1 r / (N - p) and beta(theta) the
generalized least-squares solution. For a random intercept, X' A^-1 X = W + sum_i u_i m_i m_i'
with W the within-child scatter of X, m_i the child's column means and u_i = n_i / (1 + n_i theta^2),
which is the same for every child with as many observations: with the sums kept per group size,
an evaluation costs a few products of small matrices, whatever the number of children. d is minimized over theta >= 0 by a grid search on a log scale followed by Brent's method
in the best interval (theta = 0, the boundary, is a candidate of its own: lme4's "singular fit").
At the optimum, sigma^2 = s2, tau^2 = theta^2 sigma^2, and the fixed effects' covariance is
sigma^2 (X' A^-1 X)^-1: the standard errors lme4 and SAS PROC MIXED give (conditional on the
variance estimates).

A design whose columns are not linearly independent (a visit, an arm at a visit or a site without
observations) is fitted as lme4 fits it (its default ``check.rankX = "message+drop.cols"``): the
columns are taken in order and one is kept when it is not a linear combination of those kept
before it, with R's QR tolerance (LINPACK's limited pivoting, ``qr(X, tol = 1e-7)``: a column whose
norm, once the kept columns are projected out, falls below 1e-7 of its own norm is dropped). The
dropped columns are named in the fit (``dropped``) and have no estimate.

Inference on a coefficient or a contrast (``MixedFit.term``, ``MixedFit.contrast``) is Wald's by
default (the normal distribution), or Student's t with small-sample degrees of freedom:
Satterthwaite's as lmerTest computes them (the variance of the estimate and the REML deviance
differentiated in lmerTest's variance parameters (theta, sigma), here analytically) or
Kenward-Roger's as pbkrtest computes them (its adjusted covariance and degrees of freedom, here
through the block structure V = sigma^2 I + tau^2 J of each child, never an n x n matrix): both
cost about a millisecond whatever the number of children. The tests check them against lmerTest
and pbkrtest.

This module imports nothing of the trial system: the bundle's ``analysis/primary.py`` carries it
whole, so a statistician reproduces the lock's numbers with NumPy, SciPy and pandas alone. The
tests check it against statsmodels' MixedLM and against lme4.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

try:  # (light: it loads no BLAS itself)
    from threadpoolctl import threadpool_limits
except ImportError:  # the bundle's primary.py run where it is not installed: the same numbers to about 1e-12
    threadpool_limits = None

if TYPE_CHECKING:  # the module loads NumPy only when it fits
    import numpy as np

Z95 = 1.959963984540054  # the normal distribution's 97.5% point
SINGULAR_THETA = 1e-4    # lme4's isSingular() tolerance: theta below it is a boundary ("singular") fit
RANK_TOL = 1e-7          # R's qr() tolerance, which lme4 uses to drop the columns it cannot estimate
DF_METHODS = ("wald", "satterthwaite", "kenward_roger")
EIGEN_TOL = 1e-8         # lmerTest's: the Hessian's eigenvalues at or below it are left out of its inverse


def _numpy():
    """NumPy, loaded when a model is fitted, not when the module is imported (deferred: the web
    application and the command line import this module and need not pay NumPy's start-up)."""
    import numpy  # deferred: see the docstring
    return numpy


def _scipy():
    """SciPy's optimizers and special functions (Student's t), loaded when needed (deferred, as NumPy)."""
    from scipy import optimize, special  # deferred: as NumPy above
    return optimize, special


@dataclass
class GroupSums:
    """What the small-sample methods need of the data, kept with the fit: X's within-child scatter
    ``wxx``, each child's means of X (``mx``, a row per child) and of y (``my``), and the children
    grouped by their number of observations (``kinds`` the sizes, ``count`` the children of each,
    ``of_kind`` each child's size's index, ``bxx`` per size the sum of its children's m m')."""
    wxx: np.ndarray
    mx: np.ndarray
    my: np.ndarray
    kinds: np.ndarray
    count: np.ndarray
    of_kind: np.ndarray
    bxx: np.ndarray
    sizes: np.ndarray | None = None  # each child's number of observations
    # the fit's other sums: X'y and y'y within children, and per group size sum m_i ybar_i and sum ybar_i^2
    wxy: np.ndarray | None = None
    wyy: float = 0.0
    bxy: np.ndarray | None = None
    byy: np.ndarray | None = None

    def weighted(self, per_size) -> np.ndarray:
        """sum over the children of w(n_i) m_i m_i', ``per_size`` w for each size in ``kinds``."""
        return _numpy().tensordot(per_size, self.bxx, axes=1)


@dataclass
class MixedFit:
    """The fitted model. ``params`` and ``se`` are in the order of ``names``."""
    names: list[str]
    params: np.ndarray
    se: np.ndarray
    cov: np.ndarray
    sigma2: float          # residual variance
    tau2: float            # variance of the children's intercepts
    theta: float           # tau / sigma
    reml_criterion: float  # -2 REML log-likelihood at the optimum (lme4's "REML criterion at convergence")
    n_obs: int
    n_groups: int
    group_sizes: tuple[int, int, float]  # min, max, mean
    converged: bool
    boundary: bool         # theta at (or within SINGULAR_THETA of) zero
    outcome: str = "y"
    group_name: str = "child"
    dropped: list[str] = field(default_factory=list)  # the design's columns dropped as lme4 drops them, in order
    # the columns kept whose coefficient is not estimable either: a dropped column is a combination of
    # them, so their estimate (lme4's too) is that of the reduced model, not of the effect they name
    aliased: list[str] = field(default_factory=list)

    sums: GroupSums | None = field(default=None, repr=False, compare=False)  # for the small-sample methods

    def term(self, name: str, df_method: str = "wald", alpha: float = 0.05) -> dict:
        """One coefficient with its confidence interval (1 - ``alpha``) and p value: Wald's (the
        normal distribution, ``df`` None: the default, as the lock has always reported it), or
        Student's t with Satterthwaite's or Kenward-Roger's degrees of freedom (Kenward-Roger's
        also with its adjusted standard error). No inference when the standard error is not
        finite or the model leaves no residual variation; no estimate when the column was dropped
        (it cannot be estimated from these data)."""
        if name in self.dropped:
            return _inference(None, None, None, alpha)
        i = self.names.index(name)
        return self._test(self.params[i], self.se[i], _numpy().eye(len(self.names))[i], df_method, alpha)

    def contrast(self, weights: dict[str, float], df_method: str = "wald", alpha: float = 0.05) -> dict:
        """The linear combination sum_j w_j beta_j of the coefficients named in ``weights``, as
        ``term`` gives one coefficient (no estimate when it weighs a dropped column)."""
        if any(w != 0 and n in self.dropped for n, w in weights.items()):
            return _inference(None, None, None, alpha)
        np = _numpy()
        unknown = set(weights) - set(self.names) - set(self.dropped)
        if unknown:
            raise KeyError(f"no such coefficient: {', '.join(sorted(unknown))}")
        ell = np.array([float(weights.get(n, 0.0)) for n in self.names])
        var = float(ell @ self.cov @ ell)
        return self._test(ell @ self.params, math.sqrt(var) if var >= 0 else math.nan, ell, df_method, alpha)

    def _test(self, est, se, ell, df_method: str, alpha: float) -> dict:
        est, se = float(est), float(se)
        if df_method not in DF_METHODS:
            raise ValueError(f"df_method must be one of {', '.join(DF_METHODS)}, not {df_method!r}")
        if not (self.sigma2 > 0 and math.isfinite(est) and math.isfinite(se) and se > 0):
            return _inference(est if math.isfinite(est) else None, None, None, alpha)
        if df_method == "satterthwaite":
            return _inference(est, se, satterthwaite_df(self, ell), alpha)
        if df_method == "kenward_roger":
            var, df = kenward_roger(self, ell)
            return _inference(est, math.sqrt(var) if var > 0 else math.nan, df, alpha)
        return _inference(est, se, None, alpha)

    def summary(self) -> str:
        """The model's summary as a statistician reads it: the fit, the variance components and
        the fixed effects with their Wald tests and 95% intervals."""
        lo, hi, mean = self.group_sizes
        lines = [
            "Linear mixed model fitted by REML (one random intercept per child)",
            f"Outcome: {self.outcome}",
            f"Observations: {self.n_obs}    Children: {self.n_groups}    Observations per child: "
            f"min {lo}, mean {mean:.2f}, max {hi}",
            f"REML criterion at convergence: {self.reml_criterion:.4f}    Converged: {'yes' if self.converged else 'NO'}",
            "",
            "Random effects:",
            f"  {'':<24}{'Variance':>12}{'Std.Dev.':>12}",
            f"  {self.group_name + ' (intercept)':<24}{self.tau2:>12.4f}{math.sqrt(max(self.tau2, 0.0)):>12.4f}",
            f"  {'Residual':<24}{self.sigma2:>12.4f}{math.sqrt(max(self.sigma2, 0.0)):>12.4f}",
        ]
        if self.boundary:
            lines.append("  The children's variance is estimated at zero (a boundary fit, lme4's 'singular fit'): "
                         "the estimates are those of least squares.")
        width = max(18, *(len(n) + 2 for n in [*self.names, *self.dropped]))
        lines += ["", "Fixed effects (standard errors given the variance estimates, as lme4 and SAS PROC MIXED give them):",
                  f"  {'':<{width}}{'Estimate':>11}{'Std.Err.':>11}{'z':>9}{'P>|z|':>9}{'[0.025':>11}{'0.975]':>11}"]
        for name in self.names:
            t = self.term(name)
            if t["se"] is None:
                est = "" if t["estimate"] is None else f"{t['estimate']:.4f}"
                lines.append(f"  {name:<{width}}{est:>11}{'-':>11}")
                continue
            lines.append(f"  {name:<{width}}{t['estimate']:>11.4f}{t['se']:>11.4f}{t['estimate'] / t['se']:>9.3f}"
                         f"{t['p_value']:>9.4f}{t['ci_low']:>11.4f}{t['ci_high']:>11.4f}")
        for name in self.dropped:
            lines.append(f"  {name:<{width}}   (dropped: not estimable from these data)")
        if self.dropped:
            lines += ["", f"The fixed-effect model matrix is rank deficient, so {len(self.dropped)} "
                      f"column{'s were' if len(self.dropped) > 1 else ' was'} dropped, as lme4 drops them: "
                      f"{', '.join(self.dropped)}"]
        if self.aliased:
            lines.append("Aliased with a dropped column (their estimates are the reduced model's, not the effects "
                         f"they name): {', '.join(self.aliased)}")
        return "\n".join(lines)


def _inference(est: float | None, se: float | None, df: float | None, alpha: float) -> dict:
    """The entry of one estimate: the statistic est / se, its p value and the (1 - alpha) interval
    from the normal distribution (``df`` None: Wald's z) or from Student's t with ``df`` degrees of
    freedom; no inference without a finite positive standard error and, for t, a positive df (the
    entry's df then None, never NaN: JSON has none)."""
    out = {"estimate": est, "se": None, "ci_low": None, "ci_high": None, "p_value": None, "df": None, "statistic": None}
    if est is None or se is None or not (math.isfinite(se) and se > 0) or (df is not None and not df > 0):
        return out
    stat, special = est / se, _scipy()[1]
    if df is None or math.isinf(df):
        q = Z95 if alpha == 0.05 else float(special.ndtri(1.0 - alpha / 2))
        p = math.erfc(abs(stat) / math.sqrt(2))
    else:
        q, p = float(special.stdtrit(df, 1.0 - alpha / 2)), 2.0 * float(special.stdtr(df, -abs(stat)))
    out.update(se=se, ci_low=est - q * se, ci_high=est + q * se, p_value=p, df=None if df is None else float(df),
               statistic=stat)
    return out


def _theta_derivatives(fit: MixedFit):
    """u_i = n_i / (1 + n_i theta^2) for each group size and its first two derivatives in theta."""
    k, t = fit.sums.kinds, fit.theta
    u = k / (1.0 + k * t * t)
    return u, -2.0 * t * u * u, -2.0 * u * u + 8.0 * t * t * u ** 3


def varpar_hessian(fit: MixedFit) -> np.ndarray:
    """The Hessian of the REML deviance -2 l(theta, sigma) (not profiled: lmerTest's ``devfun_vp``)
    in lmerTest's variance parameters (theta, sigma) at the estimates, analytically:

        d = sum_i log(1 + n_i theta^2) + log det M + (N - p) log(2 pi sigma^2) + q(theta) / sigma^2

    with M = X'A^-1 X = W + sum_i u_i m_i m_i' and q = min_beta (y - X beta)'A^-1 (y - X beta)
    = within-child part + sum_i u_i e_i^2, e_i = ybar_i - m_i' beta: q' = sum_i u_i' e_i^2 (the
    minimum's envelope), q'' = sum_i u_i'' e_i^2 - 2 h'M^-1 h with h = sum_i u_i' e_i m_i."""
    np, s = _numpy(), fit.sums
    u, du, d2u = _theta_derivatives(fit)
    minv = np.linalg.inv(s.wxx + s.weighted(u))
    dm, d2m = s.weighted(du), s.weighted(d2u)
    e = s.my - s.mx @ fit.params
    h = (du[s.of_kind] * e) @ s.mx
    dq = float(du[s.of_kind] @ (e * e))
    d2q = float(d2u[s.of_kind] @ (e * e)) - 2.0 * float(h @ minv @ h)
    md = minv @ dm
    t2, s2, dof = fit.theta ** 2, fit.sigma2, fit.n_obs - len(fit.names)
    h_tt = (float(s.count @ (2.0 * u - 4.0 * t2 * u * u)) + float(np.trace(minv @ d2m)) - float(np.trace(md @ md))
            + d2q / s2)
    h_ts = -2.0 * dq / s2 ** 1.5
    h_ss = -2.0 * dof / s2 + 6.0 * dof * s2 / s2 ** 2  # q = (N - p) sigma^2 at the estimates
    return np.array([[h_tt, h_ts], [h_ts, h_ss]])


def satterthwaite_df(fit: MixedFit, ell: np.ndarray) -> float:
    """Satterthwaite's degrees of freedom of ell'beta, as lmerTest computes them:
    2 V^2 / (g' A g), V = sigma^2 ell'M(theta)^-1 ell, g its gradient in (theta, sigma) and A twice
    the inverse of the deviance's Hessian there (its eigenvalues at or below 1e-8 left out, as
    lmerTest leaves them out). Analytic derivatives (lmerTest's are numerical: they agree to about
    1e-7). At a boundary fit (theta = 0) V does not move with theta: the df are N - p."""
    np, s = _numpy(), fit.sums
    u, du, _ = _theta_derivatives(fit)
    w = np.linalg.solve(s.wxx + s.weighted(u), ell)
    var = fit.sigma2 * float(ell @ w)
    grad = np.array([-fit.sigma2 * float(w @ s.weighted(du) @ w), 2.0 * math.sqrt(fit.sigma2) * float(ell @ w)])
    values, vectors = np.linalg.eigh(varpar_hessian(fit))
    pos = values > EIGEN_TOL
    a = 2.0 * (vectors[:, pos] / values[pos]) @ vectors[:, pos].T
    denom = float(grad @ a @ grad)
    return 2.0 * var * var / denom if denom > 0 else math.nan


def kenward_roger_parts(fit: MixedFit):
    """pbkrtest's ``vcovAdj`` for V = tau^2 ZZ' + sigma^2 I (G_1 = ZZ', G_2 = I), through the
    block structure: in a child's block the mean direction has V's eigenvalue l_i = sigma^2 +
    n_i tau^2 (ZZ' acts as n_i, I as 1) and the within-child directions sigma^2 (ZZ' as 0), so
    every X' f(V, G) X is W f_within + sum_i n_i f(l_i) m_i m_i'. Returns (the adjusted
    covariance Phi_A = Phi + 2 Phi U Phi, Phi, the P_i, W = 2 IE2^-1)."""
    np, s = _numpy(), fit.sums
    s2, n = fit.sigma2, s.kinds
    lam = s2 + n * fit.tau2
    phi = fit.cov
    pp = [-s.weighted(n * n / lam ** 2), -(s.wxx / s2 ** 2 + s.weighted(n / lam ** 2))]
    qq = {(0, 0): s.weighted(n ** 3 / lam ** 3), (0, 1): s.weighted(n * n / lam ** 3),
          (1, 1): s.wxx / s2 ** 3 + s.weighted(n / lam ** 3)}
    qq[1, 0] = qq[0, 1]
    within = fit.n_obs - fit.n_groups
    kt = np.array([[float(s.count @ (n * n / lam ** 2)), float(s.count @ (n / lam ** 2))],
                   [float(s.count @ (n / lam ** 2)), within / s2 ** 2 + float(s.count @ (1.0 / lam ** 2))]])
    ie2 = np.array([[kt[i, j] - 2.0 * float(np.sum(phi * qq[i, j])) + float(np.trace(phi @ pp[i] @ phi @ pp[j]))
                     for j in range(2)] for i in range(2)])
    cond = float(np.min(np.abs(np.linalg.eigvalsh(ie2))))
    ww = 2.0 * (np.linalg.inv(ie2) if cond > 1e-10 else np.linalg.pinv(ie2))
    uu = sum(ww[i, j] * (qq[i, j] - pp[i] @ phi @ pp[j]) for i in range(2) for j in range(2))
    return phi + 2.0 * phi @ uu @ phi, phi, pp, ww


def kenward_roger(fit: MixedFit, ell: np.ndarray) -> tuple[float, float]:
    """Kenward and Roger's adjusted variance of ell'beta and its degrees of freedom, as pbkrtest's
    ``vcovAdj`` and ``Lb_ddf`` (one row: q = 1) compute them."""
    np = _numpy()
    adjusted, phi, pp, ww = kenward_roger_parts(fit)
    theta = np.outer(ell, ell) / float(ell @ phi @ ell)
    us = [theta @ phi @ p @ phi for p in pp]
    a1 = sum(ww[i, j] * float(np.trace(us[i])) * float(np.trace(us[j])) for i in range(2) for j in range(2))
    a2 = sum(ww[i, j] * float(np.sum(us[i] * us[j].T)) for i in range(2) for j in range(2))
    return float(ell @ adjusted @ ell), _kr_ddf(a1, a2, 1)


def _kr_ddf(a1: float, a2: float, q: int) -> float:
    """pbkrtest's denominator degrees of freedom from A1 and A2 (``Lb_ddf``'s closing lines)."""
    b = (a1 + 6.0 * a2) / (2.0 * q)
    g = ((q + 1) * a1 - (q + 4) * a2) / ((q + 2) * a2)
    d = 3.0 * q + 2.0 * (1.0 - g)
    c1, c2, c3 = g / d, (q - g) / d, (q + 2 - g) / d
    v0, v1, v2 = 1.0 + c1 * b, 1.0 - c2 * b, 1.0 - c3 * b
    v0 = 0.0 if abs(v0) < 1e-10 else v0
    x = 1.0 - a2 / q
    ratio = 1.0 if abs(x) < 1e-14 and abs(v1) < 1e-14 else x / v1  # pbkrtest's .divZero
    rho = ratio * ratio * v0 / v2 / q
    return 4.0 + (q + 2) / (q * rho - 1.0)


def estimable_columns(x: np.ndarray, tol: float = RANK_TOL) -> list[int]:
    """The columns of ``x`` lme4 keeps, in order: R's ``qr(x, tol = 1e-7)`` with LINPACK's
    limited column pivoting (the one lme4's rank check uses) goes through the columns from the
    left and moves to the end each one whose norm, once the columns kept before it are projected
    out, is below ``tol`` times its original norm (a column of zeros: below ``tol``); the first
    ``rank`` pivots, the columns kept, are then in their original order. The projections here are
    Gram-Schmidt's, done twice (as accurate as Householder's for a design's few columns)."""
    np = _numpy()
    n, p = x.shape
    keep: list[int] = []
    basis = np.zeros((n, 0))
    for j in range(p):
        col = np.asarray(x[:, j], dtype=float)
        norm = float(np.linalg.norm(col))
        if len(keep) >= n:  # n columns kept span every column left
            break
        rest = col - basis @ (basis.T @ col)
        rest -= basis @ (basis.T @ rest)  # once more: what rounding left of the projections
        left = float(np.linalg.norm(rest))
        if left >= tol * (norm if norm > 0 else 1.0) and left > 0:
            keep.append(j)
            basis = np.column_stack([basis, rest / left])
    return keep


def design(long, visits: list[str], terms: dict[str, list[str]], adjust: list[str]):
    """The model's data from ``long`` (a mapping of columns, such as a pandas DataFrame: one row per
    child and visit, columns studyid, visit, arm, y and the adjustment factors): rows with an
    outcome and an arm, sorted by child and visit; an intercept, each follow-up visit with
    observations (a visit without any is no level of the factor, as in R), each
    comparison's indicator (``terms``: its name and the arms it sets to 1, the reference arm 0 in
    every one) times each follow-up visit (``<term>_<visit>``), and each factor coded against its
    first level in sorted order. Returns (column names, X, y, the children's ids, the rows used
    as a dict of columns)."""
    np = _numpy()

    def column(name):
        return np.asarray(list(long[name]), dtype=object)
    y = np.array([np.nan if v is None else v for v in long["y"]], dtype=float)
    arm = column("arm")
    keep = ~np.isnan(y) & np.array([a is not None and a == a for a in arm], dtype=bool)  # (NaN != NaN)
    cols = {name: column(name)[keep] for name in ("studyid", "visit", "arm", *adjust)}
    order = np.lexsort((cols["visit"].astype(str), cols["studyid"].astype(str)))  # stable: by child, then visit
    used = {name: values[order] for name, values in cols.items()}
    used["y"] = y[keep][order]
    n = len(used["y"])
    visit = used["visit"]
    x = {"Intercept": np.ones(n)}
    # visit is a factor whose levels without an observation are dropped (as R's model frame drops
    # them, so lme4 never sees their columns): coded against its first level with observations
    present = [v for v in visits if (visit == v).any()]
    for v in present[1:]:
        x[f"visit_{v}"] = (visit == v).astype(float)
    for term, arms in terms.items():
        member = np.isin(used["arm"], np.asarray(arms, dtype=object)).astype(float)
        for v in visits[1:]:
            x[f"{term}_{v}"] = member * (visit == v)
    for factor in adjust:
        values = used[factor]
        levels = sorted({v for v in values if v is not None and v == v})
        for level in levels[1:]:
            x[f"{factor}_{level}"] = (values == level).astype(float)
    names = list(x)
    matrix = np.column_stack([x[c] for c in names]) if n else np.zeros((0, len(names)))
    return names, matrix, used["y"], used["studyid"], used


def reml_fit(x: np.ndarray, y: np.ndarray, groups, names: list[str]) -> MixedFit:
    """Fit the random-intercept model by REML (see the module's text), the columns that cannot be
    estimated dropped first as lme4 drops them (``estimable_columns``; named in the fit's
    ``dropped``, its ``names`` the columns kept). BLAS and LAPACK run in one
    thread here, whatever the process's setting: with more, OpenBLAS splits the sums differently
    and the last digits of the estimates change, while a lock's bundle must be the same bytes
    whichever process builds it (a worker, its helper, `trial lock rebuild`)."""
    one_thread = threadpool_limits(limits=1, user_api="blas") if threadpool_limits else contextlib.nullcontext()
    with one_thread:
        keep = estimable_columns(x) if x.shape[0] else list(range(x.shape[1]))
        if len(keep) == x.shape[1]:
            return _reml_fit(x, y, groups, names)
        result = _reml_fit(x[:, keep], y, groups, [names[j] for j in keep])
        result.dropped = [n for j, n in enumerate(names) if j not in set(keep)]
        result.aliased = aliased_columns(x, keep, names)
        return result


def aliased_columns(x: np.ndarray, keep: list[int], names: list[str]) -> list[str]:
    """The kept columns each dropped column is a combination of (x_d = X_keep c_d, c_d[j] not 0):
    their coefficients are not estimable in the full model (the unit vector of a column is in
    the row space of X only when it is orthogonal to every null vector (c_d, -1))."""
    np = _numpy()
    kept = x[:, keep]
    out: set[int] = set()
    for d in (j for j in range(x.shape[1]) if j not in set(keep)):
        c = np.linalg.lstsq(kept, x[:, d], rcond=None)[0]
        out.update(keep[i] for i in np.flatnonzero(np.abs(c) > 1e-6 * max(1.0, float(np.abs(c).max()))))
    return [names[j] for j in sorted(out)]


def child_sums(x: np.ndarray, y: np.ndarray, groups) -> GroupSums:
    """The sums the fit needs (GroupSums): the within-child scatter, the children's means and, as
    theta enters only through u_i = n_i / (1 + n_i theta^2), the same for every child with as many
    observations, the sums over the children kept per group size, once."""
    np = _numpy()
    _, index = np.unique(groups, return_inverse=True)
    sizes = np.bincount(index).astype(float)
    mx = np.zeros((len(sizes), x.shape[1]))
    np.add.at(mx, index, x)
    mx /= sizes[:, None]
    my = np.bincount(index, weights=y) / sizes
    xc, yc = x - mx[index], y - my[index]  # within-child deviations: their scatter does not depend on theta
    kinds, of_kind = np.unique(sizes, return_inverse=True)
    bxx = np.stack([mx[of_kind == k].T @ mx[of_kind == k] for k in range(len(kinds))])
    return GroupSums(xc.T @ xc, mx, my, kinds, np.bincount(of_kind).astype(float), of_kind, bxx, sizes=sizes,
                     wxy=xc.T @ yc, wyy=float(yc @ yc),
                     bxy=np.stack([mx[of_kind == k].T @ my[of_kind == k] for k in range(len(kinds))]),
                     byy=np.array([float(my[of_kind == k] @ my[of_kind == k]) for k in range(len(kinds))]))


def _minimum(criterion) -> tuple[float, float, bool]:
    """(theta, criterion, converged): a grid on a log scale (and 0), then Brent's method in the best
    grid point's interval."""
    np = _numpy()
    grid = np.concatenate([[0.0], np.logspace(-3, 3, 61)])
    values = np.array([criterion(t) for t in grid])
    k = int(np.argmin(values))
    best_theta, best, converged = float(grid[k]), float(values[k]), True
    if math.isfinite(best):
        lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
        found = _scipy()[0].minimize_scalar(criterion, bounds=(lo, hi), method="bounded",  # bounded Brent
                                            options={"xatol": 1e-10, "maxiter": 500})
        # the best at the grid's upper end: the optimum may lie beyond the searched range (the
        # children's spread a thousand times the visits' or more): reported as not converged
        converged = bool(found.success) and k < len(grid) - 1
        if found.success and found.fun <= best:
            best_theta, best = float(found.x), float(found.fun)
    return best_theta, best, converged


def _reml_fit(x: np.ndarray, y: np.ndarray, groups, names: list[str]) -> MixedFit:
    np = _numpy()
    n_obs, p = x.shape
    if n_obs <= p:
        raise ValueError(f"{n_obs} observations cannot fit {p} fixed effects")
    s = child_sums(x, y, groups)
    dof, kinds = n_obs - p, s.kinds
    exact = 1e-12 * max(float(((y - y.mean()) ** 2).sum()), 1e-300)  # a residual sum of squares below it is rounding

    def parts(theta: float):
        u = kinds / (1.0 + kinds * theta * theta)  # n / (1 + n theta^2) for each group size n
        a = s.wxx + np.tensordot(u, s.bxx, axes=1)
        b = s.wxy + u @ s.bxy
        c = s.wyy + float(u @ s.byy)
        chol = np.linalg.cholesky(a)
        beta = np.linalg.solve(chol.T, np.linalg.solve(chol, b))
        rss = c - float(b @ beta)
        return a, chol, beta, rss if rss > exact else 0.0

    def criterion(theta: float) -> float:
        _, chol, _, rss = parts(theta)
        if rss <= 0.0:
            return -math.inf  # the model fits exactly
        return (dof * (1.0 + math.log(2.0 * math.pi * rss / dof)) + float(s.count @ np.log1p(kinds * theta * theta))
                + 2.0 * float(np.log(np.diag(chol)).sum()))

    best_theta, best, converged = _minimum(criterion)
    a, _, beta, rss = parts(best_theta)
    sigma2 = rss / dof
    cov = sigma2 * np.linalg.inv(a)
    return MixedFit(names=names, params=beta, se=np.sqrt(np.clip(np.diag(cov), 0.0, None)), cov=cov, sigma2=sigma2,
                    tau2=best_theta * best_theta * sigma2, theta=best_theta, reml_criterion=best, n_obs=n_obs,
                    n_groups=len(s.sizes), group_sizes=(int(s.sizes.min()), int(s.sizes.max()), float(s.sizes.mean())),
                    converged=converged, boundary=best_theta < SINGULAR_THETA, sums=s)


def fit(long, visits: list[str], terms: dict[str, list[str]], adjust: list[str], outcome: str = "y"):
    """Build the design from ``long`` and fit it. Returns (the fit, the design's column names,
    the rows used)."""
    names, x, y, groups, used = design(long, visits, terms, adjust)
    result = reml_fit(x, y, groups, names)
    result.outcome = outcome
    return result, names, used
