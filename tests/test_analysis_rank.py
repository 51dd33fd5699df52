"""The primary analysis on data that do not allow every fixed effect (issue 31, "a model that fits
what the data allow"): the columns that cannot be estimated (a visit, an arm at a visit, a site
without observations) are dropped as lme4 drops them, named in the result, and the effect is
estimated whenever it is estimable; when it is not, the result says so and why. Checked against
lme4 through the bundle's own primary.R (the same dropped columns, the same estimates), and on a
hard lock of a trial with baseline and 5-month data but no 2-month data."""
from __future__ import annotations

import datetime as dt
import json
import random
import re
import shutil
import sys

import numpy as np
import pytest

from tests.test_analysis import CONTENT, NAMES, VISITS, _bundle_folder, _estimates, _run, simulated_adsl
from trial.analysis.lmm import estimable_columns, reml_fit
from trial.analysis.service import primary_analysis

needs_r = pytest.mark.skipif(shutil.which("Rscript") is None,
                             reason="R is not installed (.ci/run installs r-base-core and r-cran-lme4)")
COL = {name: i for i, name in enumerate(["studyid", "site", "c_site", "arm", *NAMES.values(), "ittfl"])}
PRIMARY = "5 months (primary endpoint)"


def _with(table, change):
    """The table with each row changed by ``change(row as a list)`` (which returns the list)."""
    table.rows = [tuple(change(list(r))) for r in table.rows]
    return table


def no_month2(table):
    def change(r):
        r[COL["asoc_m2"]] = None
        return r
    return _with(table, change)


def no_follow_up(arms, visit="asoc_m5"):
    def change(r):
        if r[COL["arm"]] in arms:
            r[COL[visit]] = None
        return r
    return change


def site_without(table, site, arm, instead):
    """No child of ``arm`` at ``site`` (they are in arm ``instead``); and site S6 has one arm only."""
    def change(r):
        if r[COL["site"]] == site and r[COL["arm"]] == arm:
            r[COL["arm"]] = instead
        if r[COL["site"]] == "S6":
            r[COL["arm"]] = "usual"
        return r
    return _with(table, change)


# --- the column selection: R's qr(X, tol = 1e-7), as lme4's rank check uses it ----------------------

def test_the_columns_kept_are_the_first_linearly_independent_ones_in_order():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=20), rng.normal(size=20)
    x = np.column_stack([np.ones(20), a, np.zeros(20), 2 * a, b, a + b, b + 1e-3 * rng.normal(size=20)])
    assert estimable_columns(x) == [0, 1, 4, 6]
    # a column below 1e-7 of its own norm once the others are projected out is dropped (R's tolerance)
    tiny = np.column_stack([np.ones(20), a, a + 1e-9 * b])
    assert estimable_columns(tiny) == [0, 1]
    assert estimable_columns(np.eye(4)[:, [0, 1, 2, 3]]) == [0, 1, 2, 3]


@needs_r
def test_the_column_selection_is_rs_qr_on_random_rank_deficient_designs(tmp_path):
    """R's own qr(X, tol = 1e-7)$pivot[1:rank] on designs with zero, repeated and combined columns."""
    rng = np.random.default_rng(11)
    designs = []
    for _ in range(6):
        base = rng.integers(0, 2, size=(30, 5)).astype(float)
        base[:, 0] = 1.0
        extra = [base[:, 1] + base[:, 2], np.zeros(30), base[:, 3] * 2.5, base[:, 0] - base[:, 4]]
        cols = [*base.T, *(extra[i] for i in rng.permutation(4)[:3])]
        designs.append(np.column_stack([cols[i] for i in [0, *rng.permutation(range(1, len(cols)))]]))
    for i, x in enumerate(designs):
        np.savetxt(tmp_path / f"x{i}.csv", x, delimiter=",")
    script = tmp_path / "qr.R"
    script.write_text(f"for (i in 0:5) {{ x <- as.matrix(read.csv(file.path('{tmp_path}', paste0('x', i, '.csv')),\n"
                      "  header = FALSE))\n"
                      "q <- qr(x, tol = 1e-7, LAPACK = FALSE); cat(sort(q$pivot[seq_len(q$rank)]) - 1, '\\n') }\n")
    out = _run(["Rscript", str(script)], cwd=tmp_path).strip().splitlines()
    assert [list(map(int, line.split())) for line in out] == [estimable_columns(x) for x in designs]
    assert any(len(estimable_columns(x)) < x.shape[1] for x in designs)


# --- against lme4, through the bundle's primary.R ----------------------------------------------------

LME4_DIGITS = """
source(file.path("{folder}", "primary.R"))
for (f in list(primary = fit, secondary = fit2)) {{
  b <- fixef(f); se <- sqrt(diag(as.matrix(vcov(f))))
  cat(sprintf("coef %s %.15g %.15g\\n", names(b), b, se), sep = "")
}}
"""


def _lme4(tmp_path, table, name):
    """(primary.json, R's output, R's coefficients by our column names) for the table."""
    case = tmp_path / name
    case.mkdir()
    result, folder = _bundle_folder(case, table)
    wrapper = folder / "digits.R"
    wrapper.write_text(LME4_DIGITS.format(folder=folder))
    out = _run(["Rscript", str(wrapper)], cwd=case)
    coefs = {}
    for m in re.finditer(r"^coef (\S+) (\S+) (\S+)$", out, re.M):
        ours = re.sub(r"^factor\((\w+)\)", r"\1_", re.sub(r"^visit", "visit_", m[1]))
        ours = ours.replace("(Intercept)", "Intercept")
        coefs.setdefault(ours, []).append((float(m[2]), float(m[3])))
    return result, out, coefs


def _dropped_in_r(out: str, secondary=False) -> list[str]:
    m = re.search(rf"^{'secondary ' if secondary else ''}dropped columns: (.*)$", out, re.M)
    return [] if m[1] == "none" else m[1].split()


def _agree(result, out, coefs, effect="group_month5"):
    """lme4 drops the same columns and agrees on every kept coefficient (estimate and SE) of the
    primary fit, and on each estimable effect of both fits."""
    assert _dropped_in_r(out) == result["dropped_columns"], (out[-800:], result)
    assert _dropped_in_r(out, secondary=True) == result["secondary_dropped_columns"]
    got = _estimates(out)
    if result["estimate"] is None:
        assert effect not in got and f"{effect}: cannot be estimated" in out
    else:
        est, se = got[effect]
        assert abs(est - result["estimate"]) < 1e-5 and abs(se - result["se"]) < 1e-5
        r_est, r_se = coefs[effect][0]
        assert abs(r_est - result["estimate"]) < 1e-7 and abs(r_se - result["se"]) < 1e-7, (coefs[effect], result)
    for s in result["secondary"]:
        name = f"arm_{s['arm']}_month5"
        if s["estimate"] is None:
            assert name not in got and f"{name}: cannot be estimated" in out
        else:
            assert abs(got[name][0] - s["estimate"]) < 1e-5 and abs(got[name][1] - s["se"]) < 1e-5


def _python_fit(table, terms):
    from tests.test_analysis import _long
    from trial.analysis.lmm import fit
    return fit(_long(table), VISITS, terms, ["site"])[0]


def _all_coefficients_agree(table, coefs, terms={"group": ["low", "high"]}):  # noqa: B006
    """Every coefficient the primary fit keeps, estimate and SE, equal to lme4's to 1e-7 (both
    optimizers stop within about 1e-8 of the optimum: the differences seen are 4e-10 to 3e-8)."""
    res = _python_fit(table, terms)
    for name, est, se in zip(res.names, res.params, res.se):
        r_est, r_se = coefs[name][0]
        assert abs(r_est - est) < 1e-7 and abs(r_se - se) < 1e-7, (name, coefs[name], est, se)
    assert not set(res.dropped) & set(coefs)
    return res


@needs_r
def test_no_2_month_visit_at_all_drops_its_columns_and_estimates_the_effect_as_lme4(tmp_path):
    table = no_month2(simulated_adsl(-1.5, n=160, seed=3))
    result, out, coefs = _lme4(tmp_path, table, "nomonth2")
    # the visit without observations is no level of R's factor (no column); its comparison's column is dropped
    assert "rank deficient so dropping 1 column / coefficient" in out  # lme4's own message
    assert result["dropped_columns"] == ["group_month2"] and result["visits_without_observations"] == ["month2"]
    assert result["secondary_dropped_columns"] == ["arm_low_month2", "arm_high_month2"]
    assert result["estimate"] is not None and result["se"] > 0 and result.get("estimable", True) is True
    assert result["n"] == 160 and result["n_observations"] == sum(r[COL["asoc_bl"]] is not None for r in table.rows) + \
        sum(r[COL["asoc_m5"]] is not None for r in table.rows)
    assert result["ci_low"] < -1.5 < result["ci_high"]
    assert ("No child has an observation of the outcome at visit '2 months' (month2): the visit is not in the model."
            in result["note"])
    assert ("so 1 column was dropped as lme4 drops them (the first linearly independent columns are kept, in order) "
            "and is not estimated: Music therapy (both frequencies) x visit '2 months' (group_month2): no child has an "
            "observation of the outcome at visit '2 months'.") in result["note"]
    assert all(s["estimate"] is not None for s in result["secondary"])
    _agree(result, out, coefs)
    _all_coefficients_agree(table, coefs)


@needs_r
def test_a_site_without_children_of_one_arm_is_fitted_as_lme4(tmp_path):
    table = site_without(simulated_adsl(-1.0, n=200, seed=9), "S1", "low", "high")
    assert not any(r[COL["site"]] == "S1" and r[COL["arm"]] == "low" for r in table.rows)
    result, out, coefs = _lme4(tmp_path, table, "site")
    assert result["dropped_columns"] == [] and "rank deficient" not in out  # nothing to drop: all estimable
    assert result["estimate"] is not None and result["n"] == 200
    _agree(result, out, coefs)
    _all_coefficients_agree(table, coefs)


@needs_r
def test_no_child_of_the_pooled_arms_at_the_primary_visit_cannot_be_estimated_and_says_why(tmp_path):
    table = _with(simulated_adsl(-1.0, n=120, seed=4), no_follow_up({"low", "high"}))
    result, out, coefs = _lme4(tmp_path, table, "nopooled")
    assert result["estimate"] is None and result["se"] is None and result["estimable"] is False
    assert result["dropped_columns"] == ["group_month5"] and "group_month5" not in coefs
    assert result["n"] == 120 and result["n_observations"] > 120, "the model is fitted: the children are counted"
    assert ("The effect cannot be estimated from these data: no child of Music therapy (both frequencies) has an "
            f"observation of the outcome at visit '{PRIMARY}'.") in result["note"]
    for s in result["secondary"]:
        assert s["estimate"] is None and s["estimable"] is False
        assert s["note"].startswith("The effect cannot be estimated from these data: no child of Music therapy")
    _agree(result, out, coefs)
    _all_coefficients_agree(table, coefs)


@needs_r
def test_no_child_of_one_arm_at_the_primary_visit_leaves_the_pooled_effect_estimable(tmp_path):
    table = _with(simulated_adsl(-2.0, n=200, seed=6), no_follow_up({"low"}))
    result, out, coefs = _lme4(tmp_path, table, "nolow")
    assert result["estimate"] is not None and result["dropped_columns"] == []
    sec = {s["arm"]: s for s in result["secondary"]}
    assert result["secondary_dropped_columns"] == ["arm_low_month5"]
    assert sec["low"]["estimate"] is None and sec["high"]["estimate"] is not None
    assert sec["low"]["note"] == ("The effect cannot be estimated from these data: no child of Music therapy, "
                                  f"1 session per week has an observation of the outcome at visit '{PRIMARY}'.")
    _agree(result, out, coefs)


@needs_r
def test_no_child_of_the_reference_arm_at_the_primary_visit_cannot_be_estimated(tmp_path):
    """Without usual care at 5 months, lme4 drops group_month5 (it equals visit_month5) and, in the
    secondary model, the high arm's column; the low arm's column is kept but aliased (its estimate
    would be low against high): neither arm's effect against usual care is estimable, which is said."""
    table = _with(simulated_adsl(-1.0, n=160, seed=8), no_follow_up({"usual"}))
    result, out, coefs = _lme4(tmp_path, table, "nousual")
    assert result["estimate"] is None and result["dropped_columns"] == ["group_month5"]
    assert ("no child of Enhanced usual care (the reference arm) has an observation of the outcome at visit "
            f"'{PRIMARY}'") in result["note"]
    assert result["secondary_dropped_columns"] == ["arm_high_month5"]
    assert "arm_low_month5" in coefs, "lme4 reports the aliased column; the result does not"
    assert all(s["estimate"] is None and "Enhanced usual care" in s["note"] for s in result["secondary"])
    _agree(result, out, coefs)


@needs_r
def test_full_data_are_fitted_unchanged(tmp_path):
    table = simulated_adsl(-1.5, n=240, seed=7)
    result, out, coefs = _lme4(tmp_path, table, "full")
    assert result["dropped_columns"] == [] and result["secondary_dropped_columns"] == []
    assert "estimable" not in result and "rank deficient" not in out and "dropped" not in result.get("note", "")
    _agree(result, out, coefs)
    res = _all_coefficients_agree(table, coefs)
    assert res.dropped == [] and res.aliased == []


def test_the_bundles_python_script_reports_the_dropped_columns(tmp_path):
    table = no_month2(simulated_adsl(-1.5, n=120, seed=2))
    result, folder = _bundle_folder(tmp_path, table)
    out = _run([sys.executable, str(folder / "primary.py"), "--statsmodels"], cwd=tmp_path)
    assert "dropped columns: group_month2" in out
    est, se = _estimates(out)["group_month5"]
    assert abs(est - result["estimate"]) < 1e-6 and abs(se - result["se"]) < 1e-6
    assert re.search(r"^statsmodels group_month5: estimate", out, re.M)
    # and where the effect is not estimable, it says so rather than fail
    table = _with(simulated_adsl(-1.0, n=80, seed=4), no_follow_up({"low", "high"}))
    (tmp_path / "x").mkdir()
    result, folder = _bundle_folder(tmp_path / "x", table)
    out = _run([sys.executable, str(folder / "primary.py")], cwd=tmp_path)
    assert "group_month5: cannot be estimated from these data" in out


def test_a_model_that_cannot_be_fitted_still_counts_the_children_it_had():
    t = _with(simulated_adsl(-1.0, n=1), no_follow_up({"low", "high", "usual"}, "asoc_m2"))
    t = _with(t, no_follow_up({"low", "high", "usual"}, "asoc_m5"))  # one child, one observation: nothing to fit
    result = primary_analysis(CONTENT, t, blinded=False)[0]
    assert result["estimate"] is None and "could not be fitted" in result["note"], result
    assert result["n"] == 1 and result["n_observations"] == 1
    t.rows = []
    result = primary_analysis(CONTENT, t, blinded=False)[0]
    assert result["n"] == 0 and result["n_observations"] == 0 and "could not be fitted" in result["note"]


def test_reml_fit_drops_as_lme4_and_names_what_it_dropped():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), 2)
    t = np.tile([0.0, 1.0], 30)
    x = np.column_stack([np.ones(60), t, np.zeros(60), 1 - t])
    y = rng.normal(size=30)[groups] + t + rng.normal(size=60)
    res = reml_fit(x, y, groups, ["Intercept", "t", "never", "not_t"])
    assert res.names == ["Intercept", "t"] and res.dropped == ["never", "not_t"] and res.aliased == ["Intercept", "t"]
    assert res.term("never")["estimate"] is None and "dropped" in res.summary()
    full = reml_fit(x[:, :2], y, groups, ["Intercept", "t"])
    assert np.allclose(res.params, full.params, atol=0) and np.allclose(res.se, full.se, atol=0)


# --- a hard lock with baseline and 5-month data but no 2-month data (both databases) ---------------

def test_a_lock_without_2_month_data_estimates_the_effect_and_names_the_dropped_columns(world, db):
    from tests.helpers import CLI, PASSWORD
    from tests.test_exports import MEANING, SEED, R, backdate_all, bundle_files, enrol, ok
    from trial.outcomes import service as outcomes
    world.open(SEED)
    rng = random.Random(31)
    children = []
    for i in range(16):
        p = enrol(world, "AT01" if i % 3 else "NO01", social_affect=rng.randint(8, 18))
        children.append((p, world.randomize(p, f"rank-{i}").allocation.arm))
    backdate_all(db)
    for p, arm in children:
        outcomes.record_assessment(db, CLI, p.study_id, {
            "visit": "month5", "instrument": "ados2", "performed_on": (R + dt.timedelta(days=152)).isoformat(),
            "values": {"social_affect": rng.randint(4, 12) + (0 if arm == "usual" else -2), "rrb": 3, "css": 5}})
    db.commit()
    assert {arm for _, arm in children} == {"low", "high", "usual"}
    # (the 2-month visits are missed: the data manager's open query on them is accepted with the signature)
    lock_id = ok(world.api("POST", "/locks", "manager", json={"kind": "hard", "meaning": MEANING, "password": PASSWORD,
                                                              "accept_open_queries": True}), 201).get_json()["id"]
    for who, variant in (("manager", "unblinded"), ("statistician", "blinded")):
        files = bundle_files(ok(world.api("GET", f"/locks/{lock_id}/bundle.zip", who)).data)
        result = json.loads(files["analysis/primary.json"])
        assert result["n"] == 16 and result["n_observations"] == 32, (variant, result)
        assert result["dropped_columns"] == ["group_month2"], (variant, result)
        assert result["visits_without_observations"] == ["month2"]
        text = files["analysis/primary.txt"].decode()
        assert ("x visit '2 months' (group_month2): no child has an observation of the outcome at visit '2 months'"
                in text)
        if variant == "unblinded" or result.get("estimable", True):
            assert result["estimate"] is not None and result["se"] > 0 and result["ci_low"] < result["ci_high"], result
            assert "could not be fitted" not in result.get("note", "")
