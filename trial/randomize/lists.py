"""Deterministic randomization lists: permuted blocks of random sizes, per stratum.

Everything here is a pure function of a secret master seed, so after unblinding anyone holding
the revealed seed can regenerate every list and check it against the recorded commitment.

Byte formats (fixed, because third parties must be able to reproduce them):

* stream block ``i``: ``HMAC-SHA256(key, label.encode("utf-8") + i.to_bytes(8, "big"))``,
  ``i = 0, 1, 2, ...``; the stream is these 32-byte blocks concatenated, consumed in order.
* stratum seed: ``HMAC-SHA256(master, b"stratum:" + stratum_key.encode("utf-8"))``.
* block ``index`` of a stratum: ``Stream(stratum_seed, f"block:{index}")``; first
  ``randbelow(len(block_sizes))`` picks the size, then a Fisher–Yates shuffle of the arm keys
  (in the given arm order, each repeated ``weight * size // sum(weights)`` times).
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import json
import secrets
import threading
from collections.abc import MutableSequence, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
Arms = Sequence[tuple[str, int]]


def new_master_seed() -> bytes:
    """A fresh 256-bit secret seed from the operating system's CSPRNG."""
    return secrets.token_bytes(32)


class Stream:
    """HMAC-SHA256 in counter mode: a reproducible, cryptographically strong bit stream."""

    def __init__(self, key: bytes, label: str) -> None:
        if not isinstance(key, (bytes, bytearray)) or not key:
            raise ValueError("stream key must be non-empty bytes")
        self._key = bytes(key)
        self._label = label.encode("utf-8")
        self._counter = 0
        self._buf = b""
        self._pos = 0

    def _take(self, n: int) -> bytes:
        while len(self._buf) - self._pos < n:
            msg = self._label + self._counter.to_bytes(8, "big")
            self._buf = self._buf[self._pos:] + hmac.new(self._key, msg, hashlib.sha256).digest()
            self._pos = 0
            self._counter += 1
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return out

    def getrandbits(self, k: int) -> int:
        """``k`` random bits as a non-negative int (whole bytes are consumed, high bits dropped)."""
        if k <= 0:
            return 0
        nbytes = (k + 7) // 8
        return int.from_bytes(self._take(nbytes), "big") >> (nbytes * 8 - k)

    def randbelow(self, n: int) -> int:
        """Uniform integer in ``[0, n)`` by rejection sampling (no modulo bias)."""
        if n <= 0:
            raise ValueError(f"randbelow needs n >= 1, not {n}")
        k = (n - 1).bit_length()
        while True:
            r = self.getrandbits(k)
            if r < n:
                return r

    def random(self) -> float:
        """Uniform float in ``[0, 1)`` with 53 random bits."""
        return self.getrandbits(53) / (1 << 53)

    def choice(self, seq: Sequence[T]) -> T:
        if not seq:
            raise IndexError("cannot choose from an empty sequence")
        return seq[self.randbelow(len(seq))]

    def shuffle(self, items: MutableSequence[Any]) -> None:
        """Fisher–Yates shuffle in place."""
        for i in range(len(items) - 1, 0, -1):
            j = self.randbelow(i + 1)
            items[i], items[j] = items[j], items[i]


def stratum_seed(master: bytes, stratum_key: str) -> bytes:
    """The seed of one stratum's list; a stratum added later derives from the same master."""
    return hmac.new(master, b"stratum:" + stratum_key.encode("utf-8"), hashlib.sha256).digest()


def _check(arms: Arms, block_sizes: Sequence[int]) -> int:
    """Validate arms and block sizes; return the weight sum."""
    if not arms:
        raise ValueError("at least one arm is needed")
    keys = [a for a, _ in arms]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate arm keys in {keys}")
    if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for _, w in arms):
        raise ValueError("arm weights must be integers >= 1")
    total = sum(w for _, w in arms)
    if not block_sizes:
        raise ValueError("at least one block size is needed")
    for s in block_sizes:
        if isinstance(s, bool) or not isinstance(s, int) or s <= 0 or s % total:
            raise ValueError(f"block size {s!r} is not a positive multiple of the weight sum {total}")
    return total


def block(master: bytes, stratum_key: str, index: int, arms: Arms, block_sizes: Sequence[int]) -> list[str]:
    """Block number ``index`` (0-based) of a stratum, independent of every other block."""
    total = _check(arms, block_sizes)
    if index < 0:
        raise ValueError(f"block index must be >= 0, not {index}")
    stream = Stream(stratum_seed(master, stratum_key), f"block:{index}")
    size = block_sizes[stream.randbelow(len(block_sizes))]
    contents = [key for key, w in arms for _ in range(w * size // total)]
    stream.shuffle(contents)
    return contents


class StratumList:
    """One stratum's allocation list, generated block by block on demand and cached."""

    def __init__(self, master: bytes, stratum_key: str, arms: Arms, block_sizes: Sequence[int]) -> None:
        self.arms: tuple[tuple[str, int], ...] = tuple((str(a), int(w)) for a, w in arms)
        self.block_sizes: tuple[int, ...] = tuple(block_sizes)
        _check(self.arms, self.block_sizes)
        self.master, self.stratum_key = master, stratum_key
        self._blocks: list[list[str]] = []
        self._ends: list[int] = []  # _ends[i] = slots in blocks 0..i
        self._lock = threading.Lock()

    def _ensure(self, n_blocks: int) -> None:
        with self._lock:
            while len(self._blocks) < n_blocks:
                b = block(self.master, self.stratum_key, len(self._blocks), self.arms, self.block_sizes)
                self._blocks.append(b)
                self._ends.append((self._ends[-1] if self._ends else 0) + len(b))

    def _ensure_seq(self, seq: int) -> None:
        if seq < 1:
            raise ValueError(f"sequence numbers start at 1, not {seq}")
        while not self._ends or self._ends[-1] < seq:
            self._ensure(len(self._blocks) + max(1, len(self._blocks)))

    def block_of(self, seq: int) -> int:
        """0-based index of the block holding slot ``seq`` (1-based)."""
        self._ensure_seq(seq)
        lo, hi = 0, len(self._ends) - 1
        while lo < hi:  # first block whose end reaches seq
            mid = (lo + hi) // 2
            if self._ends[mid] >= seq:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def arm_at(self, seq: int) -> str:
        """The arm in slot ``seq`` (1-based) of this stratum's list."""
        i = self.block_of(seq)
        start = self._ends[i - 1] if i else 0
        return self._blocks[i][seq - start - 1]

    def blocks(self, n_blocks: int) -> list[list[str]]:
        """Copies of the first ``n_blocks`` blocks."""
        self._ensure(n_blocks)
        return [list(b) for b in self._blocks[:n_blocks]]

    def length_of_blocks(self, n_blocks: int) -> int:
        """Number of slots in the first ``n_blocks`` blocks."""
        if n_blocks <= 0:
            return 0
        self._ensure(n_blocks)
        return self._ends[n_blocks - 1]


@functools.lru_cache(maxsize=4096)
def _cached_stratum_list(master: bytes, stratum_key: str, arms: tuple[tuple[str, int], ...],
                         sizes: tuple[int, ...]) -> StratumList:
    return StratumList(master, stratum_key, arms, sizes)


def stratum_list(master: bytes, stratum_key: str, arms_tuple: Arms, sizes_tuple: Sequence[int]) -> StratumList:
    """A shared, cached :class:`StratumList` (safe to share: lists are deterministic)."""
    arms = tuple((str(a), int(w)) for a, w in arms_tuple)
    return _cached_stratum_list(bytes(master), stratum_key, arms, tuple(sizes_tuple))


stratum_list.cache_clear = _cached_stratum_list.cache_clear  # type: ignore[attr-defined]


def canonical(obj: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, no spaces, UTF-8) for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def commitment(design: dict[str, Any], master: bytes) -> str:
    """SHA-256 hex commitment to the design (incl. list digests) and the secret seed."""
    return hashlib.sha256(canonical({"design": design, "seed": master.hex()})).hexdigest()


def list_digest(lst: list[str]) -> str:
    """SHA-256 hex of a list of arm keys, in canonical JSON."""
    return hashlib.sha256(canonical(lst)).hexdigest()
