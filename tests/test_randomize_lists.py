"""Randomization lists, minimization and simulation: pure, deterministic, statistical checks.

Seeds are derived from fixed strings, so every test is reproducible; the statistical
tolerances are nevertheless set at about 5 standard deviations (or a 0.1% chi-square critical
value) so that they would hold for almost any seeds, not just these ones.
"""
from __future__ import annotations

import hashlib
import hmac
import math
from collections import Counter

import pytest

from trial.randomize.lists import (
    StratumList,
    Stream,
    block,
    canonical,
    commitment,
    list_digest,
    new_master_seed,
    stratum_list,
    stratum_seed,
)
from trial.randomize.minimization import choose, draws
from trial.randomize.simulate import format_report, simulate

ARMS = [("low", 1), ("high", 1), ("usual", 2)]
SIZES = [4, 8]
SHARE = {"low": 0.25, "high": 0.25, "usual": 0.5}


def seed(i: int | str) -> bytes:
    return hashlib.sha256(f"test-seed-{i}".encode()).digest()


def within(count: int, n: int, p: float, sds: float = 5.0) -> bool:
    """``count`` is within ``sds`` binomial standard deviations of ``n * p``."""
    return abs(count - n * p) <= sds * math.sqrt(n * p * (1 - p))


# --- blocks and lists ---------------------------------------------------------------------

def test_every_block_holds_the_exact_ratio_and_sizes_vary():
    sizes = Counter()
    for i in range(200):
        for b in StratumList(seed(i), "site=a", ARMS, SIZES).blocks(20):
            assert len(b) in SIZES
            assert Counter(b) == {a: w * len(b) // 4 for a, w in ARMS}
            sizes[len(b)] += 1
    n = sum(sizes.values())  # 4000 blocks; each size has probability 1/2
    assert set(sizes) == {4, 8}
    assert within(sizes[4], n, 0.5), sizes


def test_each_position_follows_the_weights():
    # Slot k of a list, across independent seeds, is the arm a with probability w_a / W.
    # Binomial(3000, p) has sd <= 27.4; 5 sd is a tolerance of under 4.6 percentage points.
    n = 3000
    by_position = [Counter() for _ in range(12)]
    for i in range(n):
        lst = StratumList(seed(i), "site=x", ARMS, SIZES)
        for k in range(12):
            by_position[k][lst.arm_at(k + 1)] += 1
    for k, counts in enumerate(by_position):
        for arm, p in SHARE.items():
            assert within(counts[arm], n, p), (k + 1, counts)


def test_proportions_over_many_slots_match_1_1_2():
    # 400 lists x 101 slots (cut mid-block, so not exact by construction). Slots within a list
    # are negatively correlated (blocks), so the binomial sd over all 40,400 slots is an upper
    # bound: 5 sd is under 1.3 percentage points for "usual".
    counts, n = Counter(), 0
    for i in range(400):
        lst = StratumList(seed(i), "site=y", ARMS, SIZES)
        counts.update(lst.arm_at(k) for k in range(1, 102))
        n += 101
    for arm, p in SHARE.items():
        assert within(counts[arm], n, p), counts


def test_lists_are_reproducible_and_differ_across_seeds_and_strata():
    a1 = StratumList(seed(1), "site=a", ARMS, SIZES).blocks(30)
    assert StratumList(seed(1), "site=a", ARMS, SIZES).blocks(30) == a1
    assert StratumList(seed(2), "site=a", ARMS, SIZES).blocks(30) != a1
    assert StratumList(seed(1), "site=b", ARMS, SIZES).blocks(30) != a1
    assert stratum_seed(seed(1), "site=a") != stratum_seed(seed(1), "site=b")
    assert stratum_seed(seed(1), "site=a") == hmac.new(seed(1), b"stratum:site=a", hashlib.sha256).digest()
    masters = {new_master_seed() for _ in range(10)}
    assert len(masters) == 10 and all(len(m) == 32 for m in masters)


def test_block_is_independent_of_earlier_blocks():
    lst = StratumList(seed(3), "site=c", ARMS, SIZES)
    direct = block(seed(3), "site=c", 17, ARMS, SIZES)  # computed first, on its own
    assert lst.blocks(18)[17] == direct
    assert block(seed(3), "site=c", 17, ARMS, SIZES) == direct


def test_arm_at_block_of_and_lengths_agree_with_blocks():
    lst = StratumList(seed(4), "site=d", ARMS, SIZES)
    arm_first = [lst.arm_at(k) for k in range(1, 200)]  # fills the cache lazily from slots
    blocks = StratumList(seed(4), "site=d", ARMS, SIZES).blocks(60)
    flat = [a for b in blocks for a in b]
    assert arm_first == flat[:199]
    assert lst.length_of_blocks(0) == 0
    assert lst.length_of_blocks(5) == sum(len(b) for b in blocks[:5])
    seq = 0
    for i, b in enumerate(blocks[:20]):
        for _ in b:
            seq += 1
            assert lst.block_of(seq) == i
    with pytest.raises(ValueError):
        lst.arm_at(0)


def test_cached_stratum_list_is_shared():
    one = stratum_list(seed(5), "site=e", tuple(ARMS), tuple(SIZES))
    assert stratum_list(seed(5), "site=e", [list(a) for a in ARMS], SIZES) is one
    assert one.blocks(3) == StratumList(seed(5), "site=e", ARMS, SIZES).blocks(3)


@pytest.mark.parametrize("sizes", [[4, 6], [0], [-4], [], [4.0]])
def test_bad_block_sizes_are_refused(sizes):
    with pytest.raises(ValueError):
        block(seed(6), "site=f", 0, ARMS, sizes)
    with pytest.raises(ValueError):
        StratumList(seed(6), "site=f", ARMS, sizes)


def test_bad_arms_and_index_are_refused():
    for arms in ([], [("a", 1), ("a", 1)], [("a", 0), ("b", 1)]):
        with pytest.raises(ValueError):
            block(seed(7), "s", 0, arms, [2])
    with pytest.raises(ValueError):
        block(seed(7), "s", -1, ARMS, SIZES)


# --- commitment -----------------------------------------------------------------------------

def test_commitment_binds_design_and_seed():
    lst = StratumList(seed(8), "site=a", ARMS, SIZES)
    design = {"method": "permuted_blocks", "arms": [list(a) for a in ARMS], "block_sizes": SIZES,
              "strata": {"site=a": list_digest([a for b in lst.blocks(10) for a in b])}}
    c = commitment(design, seed(8))
    assert len(c) == 64
    assert commitment(dict(reversed(list(design.items()))), seed(8)) == c  # key order is irrelevant
    assert commitment(design, seed(9)) != c
    assert commitment({**design, "block_sizes": [4]}, seed(8)) != c
    assert commitment({**design, "strata": {"site=a": list_digest(["low"])}}, seed(8)) != c
    assert c == hashlib.sha256(canonical({"design": design, "seed": seed(8).hex()})).hexdigest()
    assert canonical({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()
    assert list_digest(["low", "usual"]) != list_digest(["usual", "low"])


# --- stream -----------------------------------------------------------------------------------

def test_stream_byte_format_is_pinned():
    key = seed("stream")
    first = hmac.new(key, b"lbl" + (0).to_bytes(8, "big"), hashlib.sha256).digest()
    assert Stream(key, "lbl").random() == (int.from_bytes(first[:7], "big") >> 3) / 2 ** 53
    s = Stream(key, "lbl")
    s.getrandbits(256)  # the whole first block
    second = hmac.new(key, b"lbl" + (1).to_bytes(8, "big"), hashlib.sha256).digest()
    assert s.getrandbits(8) == second[0]


@pytest.mark.parametrize("n", [3, 6, 10])
def test_randbelow_is_uniform(n):
    # Pearson chi-square, n-1 df; 0.1% critical values: 13.8 (2 df), 20.5 (5 df), 27.9 (9 df).
    critical = {3: 13.82, 6: 20.52, 10: 27.88}[n]
    s = Stream(seed(f"uniform-{n}"), "test")
    draws_ = 6000 * n
    counts = Counter(s.randbelow(n) for _ in range(draws_))
    assert set(counts) == set(range(n))
    expected = draws_ / n
    assert sum((c - expected) ** 2 / expected for c in counts.values()) < critical


def test_stream_helpers():
    s = Stream(seed(10), "helpers")
    assert all(s.randbelow(1) == 0 for _ in range(10))
    for bad in (0, -1):
        with pytest.raises(ValueError):
            s.randbelow(bad)
    xs = [s.random() for _ in range(2000)]
    assert all(0.0 <= x < 1.0 for x in xs) and 0.45 < sum(xs) / len(xs) < 0.55
    items = list(range(20))
    s.shuffle(items)
    assert sorted(items) == list(range(20)) and items != list(range(20))
    assert s.choice("abc") in "abc"
    with pytest.raises(IndexError):
        s.choice([])
    with pytest.raises(ValueError):
        Stream(b"", "x")


# --- minimization --------------------------------------------------------------------------

PRIOR = [("A", {"site": "s1", "sex": "m"}), ("A", {"site": "s1", "sex": "f"}), ("B", {"site": "s2", "sex": "m"})]
NEW = {"site": "s1", "sex": "m"}


def test_minimization_hand_checked_range():
    # Sharing site s1: A=2, B=0. Sharing sex m: A=1, B=1.
    # A -> site |3-0| + sex |2-1| = 4 ;  B -> site |2-1| + sex |1-2| = 2  => B.
    for u_pick in (0.0, 0.5, 0.999):
        arm, d = choose([("A", 1), ("B", 1)], ["site", "sex"], NEW, PRIOR, 1.0, "range", u_pick, 0.3)
        assert arm == "B"
        assert d["scores"] == {"A": 4.0, "B": 2.0} and d["preferred"] == "B" and d["took_preferred"]


def test_minimization_hand_checked_variance_and_random_element():
    # Variance: A -> pvar(3,0) + pvar(2,1) = 2.25 + 0.25 ; B -> 0.25 + 0.25.
    arm, d = choose([("A", 1), ("B", 1)], ["site", "sex"], NEW, PRIOR, 0.8, "variance", 0.5, 0.0)
    assert (arm, d["scores"]) == ("B", {"A": 2.5, "B": 0.5})
    arm, d = choose([("A", 1), ("B", 1)], ["site", "sex"], NEW, PRIOR, 0.8, "variance", 0.9, 0.0)
    assert arm == "A" and d["preferred"] == "B" and d["took_preferred"] is False


def test_minimization_weights_ties_and_others():
    prior = [("low", {"site": "s"}), ("high", {"site": "s"})]
    # low -> [2,1,0] range 2 ; high -> 2 ; usual -> [1,1,0.5] range 0.5  => usual preferred.
    arm, d = choose(ARMS, ["site"], {"site": "s"}, prior, 0.8, "range", 0.1, 0.5)
    assert arm == "usual" and d["scores"] == {"low": 2.0, "high": 2.0, "usual": 0.5}
    # Not preferred: (u_pick - 0.8) / 0.2 picks among low/high by weight (equal here).
    assert choose(ARMS, ["site"], {"site": "s"}, prior, 0.8, "range", 0.85, 0.5)[0] == "low"
    assert choose(ARMS, ["site"], {"site": "s"}, prior, 0.8, "range", 0.95, 0.5)[0] == "high"
    # All tied (one "usual" so far: every candidate gives range 1): weight-proportional on u_tie.
    one = [("usual", {"site": "s"})]
    picks = {u: choose(ARMS, ["site"], {"site": "s"}, one, 0.8, "range", 0.99, u) for u in (0.1, 0.3, 0.6)}
    assert [picks[u][0] for u in (0.1, 0.3, 0.6)] == ["low", "high", "usual"]
    assert all(d["all_tied"] and d["took_preferred"] for _, d in picks.values())
    # Two-way tie: two "usual" at level t; low -> [1,0,1] and high -> [0,1,1] range 1,
    # usual -> [0,0,1.5] range 1.5. u_tie indexes the tied set in arm order.
    two = [("usual", {"site": "t"}), ("usual", {"site": "t"})]
    tied = [choose(ARMS, ["site"], {"site": "t"}, two, 1.0, "range", 0.0, u)[0] for u in (0.2, 0.7)]
    assert tied == ["low", "high"]


def test_minimization_refuses_bad_input():
    with pytest.raises(ValueError):
        choose(ARMS, ["site"], {}, [], 0.8, "range", 0.1, 0.1)
    with pytest.raises(ValueError):
        choose(ARMS, ["site"], {"site": "s"}, [], 0.8, "spread", 0.1, 0.1)
    with pytest.raises(ValueError):
        choose(ARMS, ["site"], {"site": "s"}, [], 0.8, "range", 1.0, 0.1)
    with pytest.raises(ValueError):
        choose(ARMS, ["site"], {"site": "s"}, [("other", {"site": "s"})], 0.8, "range", 0.1, 0.1)


def _run_minimization(master: bytes, n: int, probability: float) -> list[tuple[str, dict, float, float]]:
    levels = Stream(master, "levels")
    prior, record = [], []
    for k in range(1, n + 1):
        lv = {"site": levels.choice(["a", "b", "c", "d"]), "sex": levels.choice(["f", "m"])}
        u_pick, u_tie = draws(master, k)
        arm, details = choose(ARMS, ["site", "sex"], lv, prior, probability, "range", u_pick, u_tie)
        if probability == 1.0:
            assert details["scores"][arm] == min(details["scores"].values())
        prior.append((arm, lv))
        record.append((arm, lv, u_pick, u_tie))
    return record


def test_minimization_always_minimizes_at_probability_one():
    _run_minimization(seed("p1"), 120, 1.0)


def test_minimization_rederives_from_recorded_draws():
    record = _run_minimization(seed("rederive"), 150, 0.8)
    prior = []
    for k, (arm, lv, u_pick, u_tie) in enumerate(record, start=1):
        assert draws(seed("rederive"), k) == (u_pick, u_tie)
        assert choose(ARMS, ["site", "sex"], lv, prior, 0.8, "range", u_pick, u_tie)[0] == arm
        prior.append((arm, lv))
    assert draws(seed("rederive"), 1) != draws(seed("rederive"), 2)


def test_minimization_keeps_arms_balanced():
    for i in range(10):
        record = _run_minimization(seed(f"balance-{i}"), 200, 0.8)
        overall = Counter(arm for arm, *_ in record)
        assert max(abs(overall[a] - 200 * p) for a, p in SHARE.items()) <= 5, overall
        for site in "abcd":
            here = Counter(arm for arm, lv, *_ in record if lv["site"] == site)
            n = sum(here.values())
            # per site (about 50 each) a little looser: 4.5 was the worst in 300 seeds
            assert max(abs(here[a] - n * p) for a, p in SHARE.items()) <= 6, (site, here)


# --- simulation ------------------------------------------------------------------------------

def test_simulate_permuted_blocks():
    r = simulate(ARMS, SIZES, "permuted_blocks", ["a", "b", "c", "d"], 120, 40, seed=b"sim")
    assert r["participants"] == 120 and r["runs"] == 40
    # Within a site the deviation never exceeds half the largest block (in fact w/W*(1-w/W)*b).
    assert r["per_site_peak"]["max"] <= max(SIZES) / 2
    assert r["per_site"]["max"] <= max(SIZES) / 2
    assert r["overall"]["max"] <= 4 * max(SIZES) / 2  # sum over 4 sites at most
    assert r["overall_proportion"]["mean"] == pytest.approx(r["overall"]["mean"] / 120)
    s = r["overall"]
    assert 0 <= s["mean"] <= s["max"] and s["median"] <= s["p95"] <= s["max"] and s["sd"] >= 0
    # Convergence guessing beats chance (the 50% of always guessing "usual") for blocks.
    assert r["guessing"]["chance"] == 0.5
    assert r["guessing"]["correct"] > r["guessing"]["chance"] + 0.03
    assert simulate(ARMS, SIZES, "permuted_blocks", ["a", "b", "c", "d"], 120, 40, seed=b"sim") == r


def test_simulate_minimization_and_report():
    r = simulate(ARMS, SIZES, "minimization", ["a", "b", "c"], 100, 20, probability=0.8, seed=b"mini")
    assert r["method"] == "minimization" and r["probability"] == 0.8
    assert r["overall"]["max"] <= 6 and 0 <= r["guessing"]["correct"] <= 1
    text = format_report(r)
    for needle in ("minimization", "low:1", "usual:2", "100 per run", f"{r['overall']['mean']:.2f}",
                   f"{100 * r['guessing']['correct']:.2f}%", "50.00%"):
        assert needle in text, needle
    with pytest.raises(ValueError):
        simulate(ARMS, SIZES, "coin", ["a"], 10, 1)
