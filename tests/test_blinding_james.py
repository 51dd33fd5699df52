"""James' blinding index (issue 31) beside Bang's, and the assessor's pseudonymous code on the
guesses with Bang's index per assessor.

James' index: James, Bloch, Lee, Kraemer and Fuller, "An index for assessing blindness in a
multi-centre clinical trial: disulfiram for alcohol cessation", Stat Med 1996;15:1421-1434, as Bang,
Ni and Davis restate it ("Assessment of blinding in clinical trials", Control Clin Trials
2004;25:143-156). The worked example is the CRISP trial's table of Bang 2004 (Table 7), the example
the R package BI (Schwartz and Mercaldo, CRAN) documents: guessed treatment 82 / 27, guessed placebo
25 / 29, don't know 170 / 83 (treatment / placebo arm)."""
from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest

from tests.helpers import CLI, PASSWORD
from tests.test_exports import BANG, SEED, SMALL, backdate_all, bundle_files, day, enrol, hard_lock, ok
from trial.auth import service as users
from trial.exports.reports import james

CRISP = [[82, 27], [25, 29], [170, 83]]


def test_james_index_on_the_crisp_table():
    est, se = james(CRISP)
    assert (round(est, 3), round(se, 3)) == (0.748, 0.022)
    assert (round(est - 1.959964 * se, 3), round(est + 1.959964 * se, 3)) == (0.705, 0.791)
    # the index by its definition, term by term: Pdk = 253/416; among the 163 guesses that are not
    # "don't know", wrong guesses observed (27 + 25) / 163 and expected from the margins
    n = 416
    pdk = 253 / n
    po = (27 + 25) / n / (1 - pdk)
    pe = ((82 + 27) / n * (27 + 29) / n + (25 + 29) / n * (82 + 25) / n) / (1 - pdk) ** 2
    assert est == pytest.approx((1 + pdk + (1 - pdk) * (po - pe) / pe) / 2, abs=1e-12)


def test_james_index_at_its_limits():
    assert james([[10, 0], [0, 10], [0, 0]]) == (0.0, 0.0)       # every guess right: unblinded
    assert james([[0, 10], [10, 0], [0, 0]]) == (1.0, 0.0)       # every guess wrong: 1 (or opposite guessing)
    assert james([[0, 0], [0, 0], [7, 5]]) == (1.0, 0.0)         # every guess "don't know": 1, SE 0 (James 1996)
    assert james([[0, 0], [0, 0], [0, 0]]) == (None, None)       # no guess
    assert james([[4, 0], [0, 0], [1, 0]]) == (None, None)       # one arm guessed only: no wrong guess expected
    # no "don't know" and even margins: the index is the share of wrong guesses and its variance the
    # binomial one, p (1 - p) / n
    est, se = james([[30, 10], [10, 30], [0, 0]])
    assert est == pytest.approx(0.25) and se == pytest.approx(math.sqrt(0.25 * 0.75 / 80), rel=1e-12)
    est, se = james([[5, 5], [5, 5], [0, 0]])
    assert est == pytest.approx(0.5) and se == pytest.approx(math.sqrt(0.25 / 20))   # as by chance


def test_james_standard_error_agrees_with_simulation():
    """The large-sample SE against the spread of the index over multinomial samples of the CRISP
    table (seeded): within 5%."""
    n = sum(map(sum, CRISP))
    rng = np.random.default_rng(20261208)
    draws = rng.multinomial(n, np.array(CRISP, float).ravel() / n, size=4000)
    values = [james(d.reshape(3, 2).tolist())[0] for d in draws]
    assert np.std(values) == pytest.approx(james(CRISP)[1], rel=0.05)


# --- on a trial: the bundle's reports ---------------------------------------------------------------

@pytest.fixture()
def two_assessors(world, db):
    """The five children of test_exports' SMALL (slots usual, high, high, low, usual), their month-2
    guesses entered by the site's assessor and their month-5 guesses by a second assessor."""
    second = users.create_user(db, CLI, "assessor2@example.org", "Assessor Two", PASSWORD, [("assessor", "AT01")])
    world.users["assessor2"], world.tokens["assessor2"] = second, users.issue_token(db, CLI, second)
    db.commit()
    world.open(SEED)
    kids = []
    for arm, sa, sex, age, _ in SMALL:
        p = enrol(world, "AT01", social_affect=sa, sex=sex, age_months=age)
        assert world.randomize(p, f"s-{p.study_id}").allocation.arm == arm
        kids.append(p)
    backdate_all(db)
    for p, (*_, guesses) in zip(kids, SMALL):
        for visit, offset, guess, who in (("month2", 61, guesses[0], "assessor"), ("month5", 152, guesses[1], "assessor2")):
            body = {"visit": visit, "instrument": "ados2", "performed_on": day(offset),
                    "values": {"social_affect": 8, "rrb": 3, "css": 5}}
            if guess:
                body.update(allocation_guess=guess, guess_confidence=3)
            ok(world.api("POST", f"/participants/{p.study_id}/assessments", who, json=body), 201)
    return {"first": f"R{world.users['assessor'].id:04d}", "second": f"R{second.id:04d}"}


def _csv(b: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(b.decode())))


def test_the_bundles_carry_james_index_and_the_assessors(world, two_assessors, db):
    first, second = two_assessors["first"], two_assessors["second"]
    lock_id = hard_lock(world)
    un = bundle_files(ok(world.api("GET", f"/locks/{lock_id}/bundle.zip", "manager")).data)
    bl = bundle_files(ok(world.api("GET", f"/locks/{lock_id}/bundle.zip", "statistician")).data)
    rows = _csv(un["reports/blinding_index.csv"])
    # Bang's rows as test_exports computes them by hand; James' over the arms per visit
    assert [(r["arm"], r["visit"], r["bang_index"]) for r in rows if r["index"] == "bang"] == [
        (b["arm"], b["visit"], str(b["bang_index"])) for b in BANG]
    jrows = {r["visit"]: r for r in rows if r["index"] == "james"}
    assert set(jrows) == {"month2", "month5"} and all(r["arm"] == "all" and r["bang_index"] == "" for r in jrows.values())
    # month 2, by hand: guessed music therapy 1 / 0, usual care 2 / 2 (music-therapy arms / usual care), no
    # "unsure": Po = 2/5 wrong, Pe = 0.2 * 0.4 + 0.8 * 0.6 = 0.56, Kd = -0.16 / 0.56, BI = (1 + Kd) / 2 = 5/14
    m2 = jrows["month2"]
    assert (m2["n"], m2["correct"], m2["incorrect"], m2["unsure"]) == ("5", "3", "2", "0")
    assert m2["james_index"] == str(round(5 / 14, 3))
    est, se = james([[1, 0], [2, 2], [0, 0]])
    assert est == pytest.approx(5 / 14)
    assert (m2["james_se"], m2["james_ci_low"], m2["james_ci_high"]) == (
        str(round(se, 3)), str(round(max(0.0, est - 1.959963984540054 * se), 3)),
        str(round(min(1.0, est + 1.959963984540054 * se), 3)))
    # month 5: 1 / 1, 1 / 0, unsure 1 / 0: Pdk = 1/4, Po = (2/4) / (3/4), Pe = (2/4 * 1/4 + 1/4 * 2/4) / (3/4)^2,
    # Kd = 0.5, BI = (1 + 1/4 + 3/4 * 1/2) / 2 = 0.8125
    assert james([[1, 1], [1, 0], [1, 0]])[0] == pytest.approx(0.8125)
    # the guesses carry the assessor's code in both bundles, never a name or an e-mail
    for files in (un, bl):
        guesses = _csv(files["csv/guesses.csv"])
        assert {(g["visit"], g["assessor"]) for g in guesses} == {("month2", first), ("month5", second)}
        assert not any(b"assessor2@example.org" in c or b"Assessor Two" in c for c in files.values())
    # Bang's index per assessor and arm, the visits pooled: the first assessor's month-2 guesses, the second's month 5
    by = {(r["assessor"], r["arm"]): (r["n"], r["correct"], r["incorrect"], r["unsure"], r["bang_index"])
          for r in _csv(un["reports/blinding_by_assessor.csv"])}
    assert by == {(first, "low"): ("1", "0", "1", "0", "-1.0"), (first, "high"): ("2", "1", "1", "0", "0.0"),
                  (first, "usual"): ("2", "2", "0", "0", "1.0"), (second, "low"): ("1", "0", "1", "0", "-1.0"),
                  (second, "high"): ("2", "1", "0", "1", "0.5"), (second, "usual"): ("1", "0", "1", "0", "-1.0")}
    assert {r["visits"] for r in _csv(un["reports/blinding_by_assessor.csv"])} == {
        "pooled: n counts guesses, a child guessed at two visits counts twice; the CI assumes the guesses independent"}
    assert "a child guessed at two visits counts twice" in " ".join(un["README.txt"].decode().split())
    # the blinded bundle: what it showed before, pooled guesses and no index; no per-assessor table
    assert "reports/blinding_by_assessor.csv" not in bl
    brows = _csv(bl["reports/blinding_index.csv"])
    assert list(brows[0]) == ["arm", "visit", "n", "guessed_music_therapy", "guessed_usual_care", "unsure", "bang_index"]
    assert [(r["visit"], r["n"], r["bang_index"]) for r in brows] == [("month2", "5", ""), ("month5", "4", "")]
    readme = bl["README.txt"].decode()
    assert "no index" in readme and "measure only chance" in readme
    assert "James' over the arms" in un["README.txt"].decode()
