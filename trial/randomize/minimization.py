"""Pocock–Simon minimization with a random element, re-derivable from two recorded uniforms.

For each candidate arm the imbalance it would cause is summed over the factors: on each factor,
take the prior participants sharing the new participant's level, count them per arm (+1 for the
candidate), divide each count by the arm's weight, and measure the spread ("range": max - min,
or "variance": population variance). Arithmetic is exact (fractions), so ties are exact.

Draws: ``u_pick`` decides whether the preferred arm is taken (``u_pick < probability``);
``u_tie`` breaks ties among the minimal arms (index ``floor(u_tie * len)`` in arm order).
Otherwise one of the *other* arms (all arms except the preferred one, including any arm that
tied with it) is chosen **in proportion to arm weight**, using ``(u_pick - p) / (1 - p)``;
weighting keeps the random element in line with the allocation ratio (with equal weights it is
uniform). If every arm scores the same there is no preference: the arm is chosen in proportion
to weight using ``u_tie`` alone, and ``u_pick`` is not used.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from trial.randomize.lists import Stream

IMBALANCE = ("range", "variance")


def _spread(values: list[Fraction], imbalance: str) -> Fraction:
    if imbalance == "range":
        return max(values) - min(values)
    return statistics.pvariance(values)


def _weighted_pick(arms: Sequence[tuple[str, int]], u: float) -> str:
    total = sum(w for _, w in arms)
    target = u * total
    acc = 0
    for key, w in arms:
        acc += w
        if target < acc:
            return key
    return arms[-1][0]  # only reachable through float rounding at u -> 1


def _unit(name: str, u: float) -> None:
    if not 0.0 <= u < 1.0:
        raise ValueError(f"{name} must be in [0, 1), not {u!r}")


def choose_from_counts(arms: Sequence[tuple[str, int]], counts: Mapping[str, Mapping[str, int]],
                       probability: float, imbalance: str, u_pick: float, u_tie: float) -> tuple[str, dict[str, Any]]:
    """Like :func:`choose`, from per-factor arm counts of the prior participants that share the
    new participant's level (``counts[factor][arm]``; missing arms count 0)."""
    if len(arms) < 2:
        raise ValueError("minimization needs at least two arms")
    if imbalance not in IMBALANCE:
        raise ValueError(f"imbalance must be one of {IMBALANCE}, not {imbalance!r}")
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be in [0, 1], not {probability!r}")
    _unit("u_pick", u_pick)
    _unit("u_tie", u_tie)
    keys = [a for a, _ in arms]
    weight = dict(arms)
    exact: dict[str, Fraction] = {}
    for cand in keys:
        total = Fraction(0)
        for per_arm in counts.values():
            values = [Fraction(per_arm.get(a, 0) + (a == cand), weight[a]) for a in keys]
            total += _spread(values, imbalance)
        exact[cand] = total
    best = min(exact.values())
    tied = [a for a in keys if exact[a] == best]
    details: dict[str, Any] = {"scores": {a: float(s) for a, s in exact.items()},
                               "u_pick": u_pick, "u_tie": u_tie, "all_tied": len(tied) == len(keys)}
    if details["all_tied"]:
        arm = _weighted_pick(arms, u_tie)
        details.update(preferred=arm, took_preferred=True)
        return arm, details
    preferred = tied[math.floor(u_tie * len(tied))]
    details["preferred"] = preferred
    if u_pick < probability:
        details["took_preferred"] = True
        return preferred, details
    others = [(a, w) for a, w in arms if a != preferred]
    arm = _weighted_pick(others, (u_pick - probability) / (1.0 - probability))
    details["took_preferred"] = False
    return arm, details


def choose(arms: list[tuple[str, int]], factors: list[str], new_levels: dict[str, str],
           prior: list[tuple[str, dict[str, str]]], probability: float, imbalance: str,
           u_pick: float, u_tie: float) -> tuple[str, dict[str, Any]]:
    """Allocate one participant by minimization; deterministic given the draws.

    ``prior`` holds ``(arm, levels)`` of everyone already allocated. Returns the arm and
    ``{"scores", "preferred", "u_pick", "u_tie", "took_preferred", "all_tied"}``.
    """
    missing = [f for f in factors if f not in new_levels]
    if missing:
        raise ValueError(f"new participant has no level for factor(s) {missing}")
    known = {a for a, _ in arms}
    counts: dict[str, dict[str, int]] = {f: {} for f in factors}
    for arm, levels in prior:
        if arm not in known:
            raise ValueError(f"prior allocation to unknown arm {arm!r}")
        for f in factors:
            if levels.get(f) == new_levels[f]:
                counts[f][arm] = counts[f].get(arm, 0) + 1
    return choose_from_counts(arms, counts, probability, imbalance, u_pick, u_tie)


def draws(master: bytes, n: int) -> tuple[float, float]:
    """``(u_pick, u_tie)`` for the ``n``-th minimization allocation of a trial."""
    stream = Stream(master, f"minimization:{n}")
    return stream.random(), stream.random()
