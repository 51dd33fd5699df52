"""The app's processes start without the numerical and PDF libraries: NumPy, SciPy and ReportLab
load only when a lock's analysis or a PDF needs them (a worker preloads them before it forks), so a
web worker neither waits for them nor keeps them in memory."""
from __future__ import annotations

import subprocess
import sys

from trial.exports.bundle import PRELOAD


def test_the_app_and_the_command_line_start_without_numpy_scipy_or_reportlab():
    code = ("import sys, trial.app, trial.cli; "
            "print(sorted(m for m in ('numpy', 'scipy', 'reportlab') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_worker_preloads_what_the_analyses_need():
    code = ("import sys; from trial.exports.bundle import preload; preload(); "
            "print(all(m in sys.modules for m in ('numpy', 'scipy.stats', 'trial.analysis.sap', 'trial.analysis.missingdata')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True" and "trial.analysis.sap" in PRELOAD
