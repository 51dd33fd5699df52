#!/usr/bin/env python
"""The mixed model's small-sample degrees of freedom at scale (issue 31): seconds to fit the primary
model (trial.analysis.lmm.fit) and then to add each degrees-of-freedom method's inference of the
primary effect (Wald, Satterthwaite, Kenward-Roger), on a simulated trial.

    .venv/bin/python bench/lmm_df.py [--children 600 10000] [--repeat 5] [--seed 1]

The trial: three visits, arms low/high/usual/usual, six sites, a child's random intercept (SD 2),
residual SD 1.5, 12% of follow-ups missing. Each figure is the best of ``--repeat`` runs (one
thread, as the lock fits). The methods use the fit's sums per group size (Kenward-Roger through
the block structure, never an n x n matrix), so they should cost milliseconds whatever the number
of children; the fit itself is the baseline they add to. Prints figures; no checks.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from trial.analysis.lmm import fit

VISITS = ["baseline", "month2", "month5"]


def simulate(n: int, seed: int) -> dict:
    """Long data (one row per child and visit) of ``n`` children, vectorised."""
    rng = np.random.default_rng(seed)
    arms = np.array(["low", "high", "usual", "usual"], dtype=object)[rng.integers(4, size=n)]
    sites = rng.integers(6, size=n)
    level = 12 + rng.normal(size=6)[sites] + rng.normal(0, 2.0, size=n)
    rows = np.repeat(np.arange(n), 3)
    k = np.tile(np.arange(3), n)
    music = arms[rows] != "usual"
    y = level[rows] - 0.75 * k * music + rng.normal(0, 1.5, size=3 * n)
    y[(k > 0) & (rng.random(3 * n) < 0.12)] = np.nan
    return {"studyid": [f"C{i:05d}" for i in rows], "visit": [VISITS[j] for j in k], "arm": list(arms[rows]),
            "y": [None if np.isnan(v) else float(v) for v in y], "site": [f"S{s}" for s in sites[rows]]}


def best(repeat: int, run) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--children", type=int, nargs="+", default=[600])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    terms = {"group": ["low", "high"]}
    print(f"{'children':>9}{'obs':>8}  {'fit s':>8}  {'wald s':>9}  {'satt s':>9}  {'KR s':>9}  "
          f"{'satt df':>9}  {'KR df':>9}")
    for n in args.children:
        long = simulate(n, args.seed)
        t_fit, (res, _, _) = best(args.repeat, lambda long=long: fit(long, VISITS, terms, ["site"]))
        figures = {m: best(args.repeat, lambda m=m, res=res: res.term("group_month5", m))
                   for m in ("wald", "satterthwaite", "kenward_roger")}
        print(f"{n:>9}{res.n_obs:>8}  {t_fit:>8.3f}  {figures['wald'][0]:>9.5f}  "
              f"{figures['satterthwaite'][0]:>9.5f}  {figures['kenward_roger'][0]:>9.5f}  "
              f"{figures['satterthwaite'][1]['df']:>9.1f}  {figures['kenward_roger'][1]['df']:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
