"""The protocol's statistical analysis of a locked dataset.

``trial.analysis.sap`` (the SAP run in the lock) loads NumPy and SciPy with its modules; it is
loaded on first use as an attribute of this package (PEP 562, as SciPy loads its own submodules),
so that a module that reaches it through the package (trial.exports.bundle) does not load them when
the app's processes start: they need them only when they build a lock, and a worker preloads them.
"""
from __future__ import annotations

import importlib

LAZY = ("sap",)


def __getattr__(name: str):
    if name in LAZY:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
