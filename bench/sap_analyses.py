#!/usr/bin/env python
"""The SAP's causal and missing-data analyses (issue 31) at scale: each of
trial.analysis.causal.cace / dose_response and trial.analysis.missingdata.multiple_imputation /
tipping_point / missingness_table timed on a simulated TIME-A trial (tests/sap_sim.py), in the
unblinded and the blinded variant, with the protocol's SAP (20 imputations, 15 tipping-point deltas).

    .venv/bin/python bench/sap_analyses.py [--participants 10000] [--repeat 3] [--seed 11]

Prints the best of ``--repeat`` runs of each function in seconds and their sum per variant (the
lock's budget for every analysis together is about 2 s a bundle at 10,000 children). No database.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.sap_sim import CONTENT, simulate
from trial.analysis import causal, missingdata
from trial.analysis.data import analysis_data

FUNCTIONS = [causal.cace, causal.dose_response, missingdata.multiple_imputation, missingdata.tipping_point,
             missingdata.missingness_table]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--participants", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    sap = CONTENT["analysis"]
    for blinded in (False, True):
        t0 = time.perf_counter()
        d = analysis_data(CONTENT, simulate(args.participants, seed=args.seed, blinded=blinded), blinded)
        print(f"{'blinded' if blinded else 'unblinded'}: {args.participants} children "
              f"(simulated and read in {time.perf_counter() - t0:.2f} s)")
        total = 0.0
        for f in FUNCTIONS:
            best = float("inf")
            for _ in range(args.repeat):
                t = time.perf_counter()
                out = f(d, sap)
                best = min(best, time.perf_counter() - t)
            total += best
            shown = "" if "rows" in out else f"  estimate {out['estimate']}"
            name = f"{f.__module__.rsplit('.', 1)[-1]}.{f.__name__}"
            print(f"  {name:<32} {best:7.3f} s{shown}")
        print(f"  {'together':<32} {total:7.3f} s")


if __name__ == "__main__":
    main()
