"""Group-sequential stopping boundaries with Lan-DeMets O'Brien-Fleming-type alpha spending.

The spending function (Lan and DeMets, 1983), as R's gsDesign defines ``sfLDOF`` and rpact its
``typeOfDesign = "asOF"``: for a one-sided level ``a``, the cumulative type I error spent by the
information fraction ``t`` is

    a*(t) = 2 - 2 Phi( Phi^-1(1 - a/2) / sqrt(t) ),     a*(1) = a.

A two-sided test at the overall level ``alpha`` spends ``alpha / 2`` on each side (gsDesign's
symmetric ``test.type = 2`` with ``alpha`` per side, rpact's ``sided = 2``): per side
``a = alpha / sides``, and the cumulative alpha spent, over both sides, is ``sides * a*(t)``.

The boundaries: the upper z boundary b_k at each look k is the one at which the probability, under
the null hypothesis, of continuing to look k and then crossing at k equals the alpha the spending
function gives look k: a*(t_k) - a*(t_{k-1}) (two-sided: |Z_k| >= b_k, with twice that). The
statistics Z_k = S(t_k) / sqrt(t_k) of a Brownian motion S at the information fractions have the
canonical joint distribution (Jennison and Turnbull, 2000, ch. 3): the probabilities are computed
by the recursive numerical integration of Armitage, McPherson and Rowe (1969) — the densities of
the continuing paths carried from look to look — on the grid of Jennison and Turnbull (ch. 19;
gsDesign's gsBound and rpact do the same) with Simpson's rule, and each b_k solved for by Brent's
method. The results agree with gsDesign's and rpact's to about 1e-7 (tests/test_groupseq.py).

At an interim look the boundary is re-computed at the information fractions actually observed
(``interim_boundary``): the planned spending function applied to the observed fractions, and at
the final look whatever alpha is left (Wassmer and Brannath, 2016, p. 78f; rpact's boundary
update).

This module imports nothing of the trial system (NumPy and SciPy only, loaded when first used).
"""
from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # NumPy and SciPy are loaded when a boundary is computed, not with the module
    import numpy as np

GRID_R = 32          # Jennison and Turnbull's grid parameter (gsDesign's default is 18): ~6r points a look
_TOLERANCE = 1e-12   # on b_k, in Brent's method


@functools.cache
def _lib() -> SimpleNamespace:
    """NumPy and the parts of SciPy the boundaries use."""
    # deferred: NumPy and SciPy are loaded when a boundary is first computed, not with the module (the
    # web app imports it with the data cuts' reports)
    import numpy
    from scipy import optimize, special, stats  # deferred, as above
    return SimpleNamespace(np=numpy, norm=stats.norm, brentq=optimize.brentq, ndtri_exp=special.ndtri_exp)


def spent_alpha(t: float, alpha: float, sides: int = 2) -> float:
    """The cumulative type I error spent by the information fraction ``t`` (over both sides when
    ``sides`` is 2): ``sides * sfLDOF(alpha / sides, t)``. With ``sides=1`` it is exactly
    gsDesign's ``sfLDOF(alpha, t)``; with ``sides=2`` it is rpact's ``alphaSpent`` of a two-sided
    "asOF" design at the level ``alpha``. ``t`` above 1 counts as 1 (everything is spent)."""
    norm = _lib().norm
    _check_level(alpha, sides)
    if t <= 0:
        return 0.0
    a = alpha / sides
    t = min(t, 1.0)
    one_side = 2.0 * norm.sf(norm.isf(a / 2.0) / math.sqrt(t))  # = 2 - 2 Phi(...), without the cancellation
    return float(sides * one_side)


def obf_boundaries(information_fractions: Sequence[float], alpha: float = 0.05, sides: int = 2) -> list[float]:
    """The upper z boundary at each look (two-sided: reject when |Z_k| >= b_k) of the design whose
    looks are at ``information_fractions`` (ascending, in (0, 1]; the last normally 1), with
    Lan-DeMets O'Brien-Fleming-type spending of the overall level ``alpha``."""
    fractions = _check_fractions(information_fractions)
    _check_level(alpha, sides)
    spent = [spent_alpha(t, alpha, sides) for t in fractions]
    return _boundaries(fractions, spent, sides, alpha)


def interim_boundary(planned: Sequence[float], observed_fraction: float, previous_fractions: Sequence[float],
                     alpha: float = 0.05, sides: int = 2, final: bool | None = None) -> float:
    """The boundary at a look taken at ``observed_fraction`` of the planned final information, the
    earlier looks having been at ``previous_fractions`` (as observed): the planned spending function
    applied to the fractions actually observed. The look is the final one when its information
    reaches the planned maximum (``observed_fraction`` >= 1), or when the caller says so (``final``:
    the final analysis of a trial that ended short of its information): it spends all the alpha
    left (the correlation between the looks still from the observed information). A look's place
    among the ``planned`` ones does not make it final: more interim looks than planned (a DMC's
    extra look) each spend by the spending function at their observed fraction."""
    _check_fractions(planned)
    looks = [*previous_fractions, observed_fraction]
    fractions = _check_fractions(looks, final_may_exceed=True)
    _check_level(alpha, sides)
    if final is None:
        final = observed_fraction >= 1.0
    spent = [spent_alpha(t, alpha, sides) for t in fractions[:-1]]
    spent.append(float(alpha) if final else spent_alpha(fractions[-1], alpha, sides))
    return _boundaries(fractions, spent, sides, None if final and len(fractions) == 1 else alpha)[-1]


def nominal_p_values(boundaries: Sequence[float], sides: int = 2) -> list[float]:
    """The nominal p value each boundary stands for (a look's own test, ignoring the others)."""
    norm = _lib().norm
    return [float(sides * norm.sf(b)) for b in boundaries]


# --- the numerical integration -------------------------------------------------------------------

def _check_level(alpha: float, sides: int) -> None:
    if sides not in (1, 2):
        raise ValueError("sides must be 1 or 2")
    if not 0 < alpha < 0.5 * sides:
        raise ValueError("alpha must be above 0 and below 0.5 per side")


def _check_fractions(fractions: Sequence[float], final_may_exceed: bool = False) -> list[float]:
    out = [float(t) for t in fractions]
    if not out:
        raise ValueError("at least one look is needed")
    if any(not math.isfinite(t) or t <= 0 for t in out):
        raise ValueError("information fractions must be above 0")
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise ValueError("information fractions must be strictly ascending")
    if not final_may_exceed and out[-1] > 1:
        raise ValueError("information fractions must not exceed 1")
    if final_may_exceed and any(t > 1 for t in out[:-1]):
        raise ValueError("only the final look's information may exceed the planned maximum")
    return out


def _grid(lower: float, upper: float, r: int = GRID_R) -> tuple[np.ndarray, np.ndarray]:
    """Jennison and Turnbull's points (z scale, drift 0) on the continuation interval
    (lower, upper) and their Simpson weights: dense in the centre, spreading out in the tails
    beyond +-3, cut at the boundaries (which become points)."""
    np = _lib().np
    i = np.arange(1, 6 * r)
    x = np.where(i < r, -3.0 - 4.0 * np.log(r / i),
                 np.where(i <= 5 * r, -3.0 + 3.0 * (i - r) / (2.0 * r),
                          3.0 + 4.0 * np.log(r / np.maximum(6 * r - i, 1))))
    inside = x[(x > lower) & (x < upper)]
    knots = inside
    if lower > x[0]:
        knots = np.concatenate(([lower], knots))
    if upper < x[-1]:
        knots = np.concatenate((knots, [upper]))
    if knots.size < 2:  # a very narrow interval: two knots, its ends
        knots = np.array([max(lower, x[0]), min(upper, x[-1])])
    # Simpson's rule on each interval between knots (its midpoint added)
    mids = (knots[:-1] + knots[1:]) / 2.0
    points = np.empty(2 * knots.size - 1)
    points[0::2] = knots
    points[1::2] = mids
    widths = np.diff(knots)
    weights = np.zeros_like(points)
    weights[0::2][:-1] += widths / 6.0
    weights[0::2][1:] += widths / 6.0
    weights[1::2] = 4.0 * widths / 6.0
    return points, weights


def _crossing(b: float, carried: np.ndarray, points: np.ndarray, s_prev: float, s_now: float, step: float,
              sides: int) -> float:
    """The probability of continuing to the previous look (``carried``: the density at its grid
    points times their weights) and crossing +-b at this one."""
    norm = _lib().norm
    upper = norm.sf((b * s_now - points * s_prev) / step)
    if sides == 2:
        upper = upper + norm.cdf((-b * s_now - points * s_prev) / step)
    return float(carried @ upper)


def _first_bound(t: float, spent: float, alpha: float, sides: int) -> float:
    """The first look's boundary, where nothing came before: sf(b) = sfLDOF(a, t) / 2 per side, solved
    on the log scale so that a very early look (whose alpha underflows) still has a finite boundary."""
    ndtri_exp = _lib().ndtri_exp
    norm = _lib().norm
    if spent > 1e-300:
        return float(norm.isf(spent / sides))
    a = alpha / sides
    # per side sfLDOF(a, t) / 1 = 2 sf(z_{a/2} / sqrt(t)); the first look spends it on one side alone
    log_sf = math.log(2.0) + float(norm.logsf(norm.isf(a / 2.0) / math.sqrt(t)))
    return float(-ndtri_exp(log_sf))


def _later_bound(carried: np.ndarray, points: np.ndarray, s_prev: float, s_now: float, step: float, target: float,
                 sides: int) -> float:
    """A later look's boundary: the one the paths still going cross with the probability ``target``."""
    if target <= 0:
        return math.inf
    if _crossing(0.0, carried, points, s_prev, s_now, step, sides) < target:
        return 0.0  # even b = 0 crosses less than there is to spend
    return float(_lib().brentq(lambda z: _crossing(z, carried, points, s_prev, s_now, step, sides) - target, 0.0, 40.0,
                               xtol=_TOLERANCE))


def _boundaries(fractions: list[float], spent: list[float], sides: int, alpha_at_one: float | None = None) -> list[float]:
    """b_k for each look such that the probability of continuing to look k and crossing there is
    spent[k] - spent[k-1]: the densities of the paths still going carried by the recursion."""
    np, norm = _lib().np, _lib().norm
    info = np.asarray(fractions)
    bounds: list[float] = []
    points = weights = density = None
    previous_spent = 0.0
    for k, t in enumerate(info):
        target = spent[k] - previous_spent
        previous_spent = spent[k]
        if k == 0:
            b = _first_bound(t, spent[0], alpha_at_one, sides) if alpha_at_one else \
                (float(norm.isf(target / sides)) if target > 0 else math.inf)
            bounds.append(b)
        else:  # (weights * density: the mass at each point of the previous look's grid)
            bounds.append(_later_bound(weights * density, points, math.sqrt(info[k - 1]), math.sqrt(t),
                                       math.sqrt(t - info[k - 1]), target, sides))
        # the density at look k of the paths that have not crossed, on its grid
        b = bounds[-1]
        lower = -b if sides == 2 else -math.inf
        upper = b
        new_points, new_weights = _grid(lower, upper)
        if k == 0:
            new_density = norm.pdf(new_points)
        else:
            s_prev, s_now = math.sqrt(info[k - 1]), math.sqrt(t)
            step = math.sqrt(t - info[k - 1])
            kernel = norm.pdf((new_points[:, None] * s_now - points[None, :] * s_prev) / step) * (s_now / step)
            new_density = kernel @ (weights * density)
        points, weights, density = new_points, new_weights, new_density
    return bounds
