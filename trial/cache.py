"""Per-process caches for hot paths, in one place.

Every entry here is **immutable once written and keyed by what names it**: a protocol's content
by the SHA-256 of its text, a randomization design and its sealed seed by (design id,
commitment), a prebuilt SQL statement by dialect. Nothing cached can go stale: a new protocol
version has a new SHA-256, and a design never changes once opened (its commitment, a hash over
the design and the seed, would not match). So several app servers and worker processes may each
keep their own copy, and randomization safety still comes from the database alone. (The one
exception is a sealed seed's ciphertext, which `trial randomization rotate-seal-key` replaces by
the same seed under a new key: a process whose key no longer opens the kept one reads it again.)
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Hashable
from typing import Any


class Immutable:
    """A bounded dict of immutable values: when full it starts again (entries are cheap to reload)."""

    def __init__(self, name: str, limit: int = 64):
        self.name, self.limit = name, limit
        self._data: dict[Hashable, Any] = {}

    def get(self, key: Hashable, load: Callable[[], Any]) -> Any:
        value = self._data.get(key)
        if value is None:
            value = load()
            if len(self._data) >= self.limit:
                self._data.clear()
            self._data[key] = value
        return value

    def clear(self) -> None:
        self._data.clear()

    def drop(self, key: Hashable) -> None:
        """Forget one entry (a sealed seed re-sealed under a new key: trial.randomize.service)."""
        self._data.pop(key, None)


protocol_content = Immutable("protocol content by the SHA-256 of its text")
designs = Immutable("randomization design by (id, commitment)")
form_rules = Immutable("when each form of the protocol became due, by the current version's (number, SHA-256)")
sealed_seeds = Immutable("sealed-seed ciphertext by (design id, commitment)")


def prebuilt(build):
    """A statement built once per dialect and executed with bind parameters, for hot paths:
    building a ``select()`` costs more Python than executing a cached one. ``build(dialect_name)``
    returns the statement; the decorated function takes the session and returns it."""
    built: dict[str, object] = {}

    def get(db):
        name = db.get_bind().dialect.name
        stmt = built.get(name)
        if stmt is None:
            stmt = built[name] = build(name)
        return stmt
    get.__doc__ = build.__doc__
    return get


class AsOf(Immutable):
    """Whole-trial summaries (the manager's overview, adherence by arm) keyed by the audit chain's
    head: every change to clinical data appends to the chain in its own transaction, so a summary
    worked out when the head stood at ``seq`` holds for every reader that sees the head at
    ``seq``. The key also names the days it was worked out for (what is due depends on the date),
    the protocol version and the reader's scope. Read the head *before* the data: a summary may
    then be newer than its key, never older. Callers get a copy they may change."""

    def get(self, key: Hashable, load: Callable[[], Any]) -> Any:
        return copy.deepcopy(super().get(key, load))


summaries = AsOf("whole-trial summaries by (audit head, days, protocol, scope)", limit=256)
