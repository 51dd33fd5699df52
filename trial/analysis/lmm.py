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

    def term(self, name: str) -> dict:
        """One coefficient with its Wald 95% confidence interval and p value; no inference when the
        standard error is not finite or the model leaves no residual variation; no estimate when
        the column was dropped (it cannot be estimated from these data)."""
        if name in self.dropped:
            return {"estimate": None, "se": None, "ci_low": None, "ci_high": None, "p_value": None}
        i = self.names.index(name)
        est, se = float(self.params[i]), float(self.se[i])
        if not (self.sigma2 > 0 and math.isfinite(est) and math.isfinite(se) and se > 0):
            return {"estimate": est if math.isfinite(est) else None, "se": None, "ci_low": None, "ci_high": None,
                    "p_value": None}
        return {"estimate": est, "se": se, "ci_low": est - Z95 * se, "ci_high": est + Z95 * se,
                "p_value": math.erfc(abs(est / se) / math.sqrt(2))}

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


def estimable_columns(x: np.ndarray, tol: float = RANK_TOL) -> list[int]:
    """The columns of ``x`` lme4 keeps, in order: R's ``qr(x, tol = 1e-7)`` with LINPACK's
    limited column pivoting (the one lme4's rank check uses) goes through the columns from the
    left and moves to the end each one whose norm, once the columns kept before it are projected
    out, is below ``tol`` times its original norm (a column of zeros: below ``tol``); the first
    ``rank`` pivots, the columns kept, are then in their original order. The projections here are
    Gram-Schmidt's, done twice (as accurate as Householder's for a design's few columns)."""
    import numpy as np  # deferred, as below
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
    import numpy as np  # deferred: NumPy only when an analysis runs (a lock's bundle: a cold path)

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
    import numpy as np  # deferred, as above
    kept = x[:, keep]
    out: set[int] = set()
    for d in (j for j in range(x.shape[1]) if j not in set(keep)):
        c = np.linalg.lstsq(kept, x[:, d], rcond=None)[0]
        out.update(keep[i] for i in np.flatnonzero(np.abs(c) > 1e-6 * max(1.0, float(np.abs(c).max()))))
    return [names[j] for j in sorted(out)]


def _reml_fit(x: np.ndarray, y: np.ndarray, groups, names: list[str]) -> MixedFit:
    import numpy as np  # deferred, as above
    from scipy.optimize import minimize_scalar  # deferred, as above: SciPy's bounded Brent search

    n_obs, p = x.shape
    if n_obs <= p:
        raise ValueError(f"{n_obs} observations cannot fit {p} fixed effects")
    _, index = np.unique(groups, return_inverse=True)
    sizes = np.bincount(index).astype(float)
    n_groups = len(sizes)
    mx = np.zeros((n_groups, p))
    np.add.at(mx, index, x)
    mx /= sizes[:, None]
    my = np.bincount(index, weights=y) / sizes
    xc, yc = x - mx[index], y - my[index]  # within-child deviations: their scatter does not depend on theta
    wxx, wxy, wyy = xc.T @ xc, xc.T @ yc, float(yc @ yc)
    dof = n_obs - p
    exact = 1e-12 * max(float(((y - y.mean()) ** 2).sum()), 1e-300)  # a residual sum of squares below it is rounding
    # theta enters only through u_i = n_i / (1 + n_i theta^2), the same for every child with as many
    # observations: the sums over the children are kept per group size, once
    kinds, of_kind = np.unique(sizes, return_inverse=True)
    count = np.bincount(of_kind).astype(float)
    bxx = np.stack([mx[of_kind == k].T @ mx[of_kind == k] for k in range(len(kinds))])
    bxy = np.stack([mx[of_kind == k].T @ my[of_kind == k] for k in range(len(kinds))])
    byy = np.array([float(my[of_kind == k] @ my[of_kind == k]) for k in range(len(kinds))])

    def parts(theta: float):
        u = kinds / (1.0 + kinds * theta * theta)  # n / (1 + n theta^2) for each group size n
        a = wxx + np.tensordot(u, bxx, axes=1)
        b = wxy + u @ bxy
        c = wyy + float(u @ byy)
        chol = np.linalg.cholesky(a)
        beta = np.linalg.solve(chol.T, np.linalg.solve(chol, b))
        rss = c - float(b @ beta)
        return a, chol, beta, rss if rss > exact else 0.0

    def criterion(theta: float) -> float:
        _, chol, _, rss = parts(theta)
        if rss <= 0.0:
            return -math.inf  # the model fits exactly
        return (dof * (1.0 + math.log(2.0 * math.pi * rss / dof)) + float(count @ np.log1p(kinds * theta * theta))
                + 2.0 * float(np.log(np.diag(chol)).sum()))

    grid = np.concatenate([[0.0], np.logspace(-3, 3, 61)])
    values = np.array([criterion(t) for t in grid])
    k = int(np.argmin(values))
    best_theta, best, converged = float(grid[k]), float(values[k]), True
    if math.isfinite(best):
        lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
        found = minimize_scalar(criterion, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10, "maxiter": 500})
        # the best at the grid's upper end: the optimum may lie beyond the searched range (the
        # children's spread a thousand times the visits' or more): reported as not converged
        converged = bool(found.success) and k < len(grid) - 1
        if found.success and found.fun <= best:
            best_theta, best = float(found.x), float(found.fun)
    a, _, beta, rss = parts(best_theta)
    sigma2 = rss / dof
    cov = sigma2 * np.linalg.inv(a)
    return MixedFit(names=names, params=beta, se=np.sqrt(np.clip(np.diag(cov), 0.0, None)), cov=cov, sigma2=sigma2,
                    tau2=best_theta * best_theta * sigma2, theta=best_theta, reml_criterion=best, n_obs=n_obs,
                    n_groups=n_groups, group_sizes=(int(sizes.min()), int(sizes.max()), float(sizes.mean())),
                    converged=converged, boundary=best_theta < SINGULAR_THETA)


def fit(long, visits: list[str], terms: dict[str, list[str]], adjust: list[str], outcome: str = "y"):
    """Build the design from ``long`` and fit it. Returns (the fit, the design's column names,
    the rows used)."""
    names, x, y, groups, used = design(long, visits, terms, adjust)
    result = reml_fit(x, y, groups, names)
    result.outcome = outcome
    return result, names, used
