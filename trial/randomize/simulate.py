"""Monte Carlo check of a randomization design: imbalance and predictability.

Each run draws a fresh master seed, sends participants to sites uniformly at random and
allocates them by permuted blocks per site (stratum ``site=<code>``) or by minimization on site.
Imbalance of a group is ``max over arms |n_arm - n * w / W|``. Predictability follows
Blackwell–Hodges: before each allocation the site's coordinator guesses the arm furthest behind
its expected share at that site (``(k + 1) * w / W - n_arm``, ties at random).
"""
from __future__ import annotations

import hashlib
import hmac
import math
import statistics
from collections.abc import Sequence
from typing import Any

from trial.randomize.lists import StratumList, Stream, new_master_seed
from trial.randomize.minimization import choose_from_counts, draws

METHODS = ("permuted_blocks", "minimization")


def _imbalance(counts: dict[str, int], arms: Sequence[tuple[str, int]], total_w: int) -> float:
    n = sum(counts.values())
    return max(abs(counts[a] - n * w / total_w) for a, w in arms)


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"mean": statistics.fmean(ordered),
            "sd": statistics.stdev(ordered) if len(ordered) > 1 else 0.0,
            "median": statistics.median(ordered),
            "p95": ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)],  # nearest rank
            "max": ordered[-1]}


def _run_master(seed: bytes | None, run: int) -> bytes:
    if seed is None:
        return new_master_seed()
    return hmac.new(seed, f"simulate:run:{run}".encode(), hashlib.sha256).digest()


def _one_run(master: bytes, arms: Sequence[tuple[str, int]], block_sizes: Sequence[int], method: str,
             sites: Sequence[str], participants: int, probability: float, imbalance: str) -> dict[str, float]:
    keys = [a for a, _ in arms]
    total_w = sum(w for _, w in arms)
    site_stream, guess_stream = Stream(master, "simulate:sites"), Stream(master, "simulate:guess")
    lists = {s: StratumList(master, f"site={s}", arms, block_sizes) for s in sites} if method == "permuted_blocks" else {}
    per_site = {s: dict.fromkeys(keys, 0) for s in sites}
    overall = dict.fromkeys(keys, 0)
    correct, peak = 0, 0.0
    for n in range(1, participants + 1):
        site = sites[site_stream.randbelow(len(sites))]
        here = per_site[site]
        k = sum(here.values())
        deficit = {a: (k + 1) * w - here[a] * total_w for a, w in arms}  # scaled by W: exact
        top = max(deficit.values())
        guess = guess_stream.choice([a for a in keys if deficit[a] == top])
        if method == "permuted_blocks":
            arm = lists[site].arm_at(k + 1)
        else:
            u_pick, u_tie = draws(master, n)
            arm, _ = choose_from_counts(arms, {"site": here}, probability, imbalance, u_pick, u_tie)
        correct += arm == guess
        here[arm] += 1
        overall[arm] += 1
        peak = max(peak, _imbalance(here, arms, total_w))
    return {"overall": _imbalance(overall, arms, total_w),
            "per_site": max(_imbalance(c, arms, total_w) for c in per_site.values()),
            "per_site_peak": peak,
            "guess_correct": correct / participants}


def simulate(arms: list[tuple[str, int]], block_sizes: list[int], method: str, sites: list[str],
             participants: int, runs: int, probability: float = 0.8, imbalance: str = "range",
             seed: bytes | None = None) -> dict[str, Any]:
    """Simulate ``runs`` trials of ``participants`` each; reproducible when ``seed`` is given.

    Returns the design echoed back, summaries (mean, sd, median, p95, max over runs) of the final
    overall imbalance (in participants and as a proportion of N), the final worst-site imbalance
    and the worst-site imbalance at any point during the run, and guessing success vs chance.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if not sites:
        raise ValueError("at least one site is needed")
    if participants < 1 or runs < 1:
        raise ValueError("participants and runs must be at least 1")
    total_w = sum(w for _, w in arms)
    results = [_one_run(_run_master(seed, r), arms, block_sizes, method, sites, participants, probability, imbalance)
               for r in range(runs)]
    overall = [r["overall"] for r in results]
    chance = max(w for _, w in arms) / total_w
    correct = statistics.fmean(r["guess_correct"] for r in results)
    return {"method": method, "arms": [list(a) for a in arms], "block_sizes": list(block_sizes),
            "sites": len(sites), "participants": participants, "runs": runs,
            "probability": probability if method == "minimization" else None,
            "imbalance": imbalance if method == "minimization" else None,
            "overall": _summary(overall),
            "overall_proportion": _summary([x / participants for x in overall]),
            "per_site": _summary([r["per_site"] for r in results]),
            "per_site_peak": _summary([r["per_site_peak"] for r in results]),
            "guessing": {"correct": correct, "chance": chance, "excess": correct - chance}}


def format_report(result: dict[str, Any]) -> str:
    """A plain-text report of :func:`simulate` output for the command line."""
    method = result["method"].replace("_", " ")
    if result["method"] == "minimization":
        method += f" (p = {result['probability']:.2f}, {result['imbalance']})"
    else:
        method += f" (block sizes {', '.join(map(str, result['block_sizes']))})"
    lines = [
        "Randomization simulation",
        "========================",
        f"  method         {method}",
        f"  arms           {'  '.join(f'{a}:{w}' for a, w in result['arms'])}",
        f"  sites          {result['sites']}",
        f"  participants   {result['participants']} per run",
        f"  runs           {result['runs']}",
        "",
        "Imbalance  max over arms |n - expected|",
        f"  {'':<26}{'mean':>8}{'sd':>8}{'median':>8}{'p95':>8}{'max':>8}",
    ]
    rows = [("overall (participants)", result["overall"], "{:8.2f}"),
            ("overall (% of N)", {k: 100 * v for k, v in result["overall_proportion"].items()}, "{:7.2f}%"),
            ("worst site, at end", result["per_site"], "{:8.2f}"),
            ("worst site, at any time", result["per_site_peak"], "{:8.2f}")]
    for label, s, fmt in rows:
        lines.append(f"  {label:<26}" + "".join(fmt.format(s[k]) for k in ("mean", "sd", "median", "p95", "max")))
    g = result["guessing"]
    lines += ["",
              "Predictability  (coordinator guesses the arm furthest behind at the site)",
              f"  correct guesses            {100 * g['correct']:7.2f}%",
              f"  chance (most likely arm)   {100 * g['chance']:7.2f}%",
              f"  excess over chance         {100 * g['excess']:+7.2f} points"]
    return "\n".join(lines) + "\n"
