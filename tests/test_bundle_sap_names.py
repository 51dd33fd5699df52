"""One arm variable in both bundles, and the discrepancies of issue 31 fixed.

- The arm is ``arm`` in the blinded and the unblinded bundle, of the same type and level order (the
  reference arm first; in the blinded bundle the dummy code standing for it): a program written
  against the blinded bundle alone (read with its syntax/load.R, lme4 with ``arm`` as the factor,
  the levels 2..k against level 1), and the blinded bundle's own analysis/primary.R and primary.py,
  run unchanged on the unblinded bundle and give the lock's primary.json there.
- ``randdt`` (and ``enroldt``) is the site's calendar day of the moment wherever it appears; the
  README says what the SAS transport and Stata files hold for dates (numbers, not ISO text).
- The blinded allocation table has no list slot.
- ``trial protocol load`` (and its dry run) warns, and loads, when a randomization factor is not
  adjusted for.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import update

from tests.helpers import CLI, PASSWORD, backdate_randomization
from tests.test_cli import _new_db
from tests.test_cli import ok as cli_ok
from tests.test_exports import LABELS, MEANING, SEED, R, bundle_files, enrol, ok, read_csv
from trial.outcomes import service as outcomes
from trial.participants.models import Participant
from trial.protocol.schema import parse
from trial.protocol.service import DEFAULT_PROTOCOL, load_warnings
from trial.sites.models import Site

needs_r = pytest.mark.skipif(shutil.which("Rscript") is None,
                             reason="R is not installed (.ci/run installs r-base-core and r-cran-lme4)")
FAR_EAST = "Pacific/Kiritimati"  # UTC+14 all year (no daylight saving): 20:00 UTC is the next calendar day there
KEY_OF = {label: key for key, label in LABELS.items()}


def _locked_trial(world, db, n: int = 30) -> dict[str, dict[str, bytes]]:
    """A hard lock of ``n`` children at two sites (NO01 far east of UTC), randomized on R at 20:00
    UTC and enrolled on R - 1 at 20:00 UTC, assessed at baseline, 2 and 5 months with a therapy
    effect: each variant's bundle files."""
    db.execute(update(Site).where(Site.code == "NO01").values(timezone=FAR_EAST))
    db.commit()
    world.open(SEED)
    rng = random.Random(7)
    children = []
    for i in range(n):
        p = enrol(world, "NO01" if i % 3 == 0 else "AT01", social_affect=rng.randint(8, 18))
        children.append((p, world.randomize(p, f"names-{i}").allocation.arm))
    db.execute(update(Participant).values(enrolled_at=dt.datetime.combine(R - dt.timedelta(days=1), dt.time(20, 0))))
    backdate_randomization(db, dt.datetime.combine(R, dt.time(20, 0)))
    for p, arm in children:
        for visit, days, drop in (("month2", 61, -1), ("month5", 152, -3)):
            outcomes.record_assessment(db, CLI, p.study_id, {
                "visit": visit, "instrument": "ados2", "performed_on": (R + dt.timedelta(days=days)).isoformat(),
                "values": {"social_affect": rng.randint(6, 14) + (0 if arm == "usual" else drop), "rrb": 3, "css": 5}})
    db.commit()
    assert {arm for _, arm in children} == {"low", "high", "usual"}
    lock_id = ok(world.api("POST", "/locks", "manager", json={"kind": "hard", "meaning": MEANING, "password": PASSWORD,
                                                              "accept_open_queries": True}), 201).get_json()["id"]
    return {variant: bundle_files(ok(world.api("GET", f"/locks/{lock_id}/bundle.zip", who)).data)
            for variant, who in (("unblinded", "manager"), ("blinded", "statistician"))}


def _unzipped(files: dict[str, bytes], folder: Path) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def _run(cmd, cwd) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    return done.stdout


# The program a statistician writes against the blinded bundle alone, before the unblinding: read
# with the bundle's syntax/load.R, the primary outcome long, lme4 with each level 2..k of the factor
# `arm` against level 1 at each follow-up visit (no arm at baseline: randomized groups), the site.
BLIND_PROGRAM = r"""
args <- commandArgs(trailingOnly = TRUE)
setwd(args[1])
source("syntax/load.R")
suppressPackageStartupMessages(library(lme4))
adsl <- bundle$adsl
stopifnot(is.factor(adsl$arm), is.factor(bundle$particip$arm), is.factor(bundle$alloc$arm))
stopifnot(identical(levels(adsl$arm), levels(bundle$particip$arm)))
k <- nlevels(adsl$arm)
visits <- c("baseline", "month2", "month5")
outcome <- c("asoc_bl", "asoc_m2", "asoc_m5")
long <- do.call(rbind, lapply(seq_along(visits), function(i)
  data.frame(id = adsl$studyid, visit = visits[i], arm = adsl$arm, site = adsl$c_site, y = adsl[[outcome[i]]])))
long <- long[!is.na(long$y) & !is.na(long$arm), ]
long$visit <- factor(long$visit, levels = visits)
terms <- character(0)
for (j in 2:k) for (v in visits[-1]) {
  name <- sprintf("level%d_%s", j, v)
  long[[name]] <- as.numeric(as.integer(long$arm) == j & long$visit == v)
  terms <- c(terms, name)
}
fit <- lmer(as.formula(paste("y ~ visit +", paste(terms, collapse = " + "), "+ factor(site) + (1 | id)")),
            data = long, REML = TRUE)
b <- fixef(fit); se <- sqrt(diag(as.matrix(vcov(fit))))
cat(sprintf("level 1: %s
", levels(adsl$arm)[1]))
for (j in 2:k) {
  name <- sprintf("level%d_month5", j)
  cat(sprintf("level %d: %s: %.10f %.10f
", j, levels(adsl$arm)[j], b[[name]], se[names(b) == name]))
}
"""


def _levels(out: str) -> tuple[str, dict[str, tuple[float, float]]]:
    """(level 1's label, {label: (estimate, SE)} of levels 2..k) from BLIND_PROGRAM's output."""
    first = re.search(r"^level 1: (.+)$", out, re.M)[1]
    return first, {m[1]: (float(m[2]), float(m[3])) for m in re.finditer(r"^level \d+: (.+): (\S+) (\S+)$", out, re.M)}


def _estimates(out: str) -> dict[str, tuple[float, float]]:
    return {m[1]: (float(m[2]), float(m[3])) for m in re.finditer(r"^(\w+): estimate (\S+)\s+SE (\S+)", out, re.M)}


@needs_r
def test_the_program_written_blind_runs_unchanged_on_the_unblinded_bundle(world, db, tmp_path):
    files = _locked_trial(world, db)
    blinded = _unzipped(files["blinded"], tmp_path / "blinded")
    unblinded = _unzipped(files["unblinded"], tmp_path / "unblinded")
    program = tmp_path / "written_blind.R"
    program.write_text(BLIND_PROGRAM)
    # blind: the dummy codes, level 1 the code that stands for the reference arm (primary.json's reference)
    result = json.loads(files["blinded"]["analysis/primary.json"])
    first, by_level = _levels(_run(["Rscript", str(program), str(blinded)], tmp_path))
    assert first == f"Dummy arm {result['reference_arm']}" and len(by_level) == 2
    assert all(label.startswith("Dummy arm ") for label in by_level)
    # the bundle's own programs, run blind (from the blinded bundle's folder) reproduce its primary.json
    got = _estimates(_run(["Rscript", str(blinded / "analysis" / "primary.R")], tmp_path))
    assert abs(got[f"group_{result['visit']}"][0] - result["estimate"]) < 1e-5
    # the same texts, unchanged, on the unblinded bundle: its primary.json's numbers
    for script in ("analysis/primary.R", "analysis/primary.py"):
        assert files["blinded"][script] == files["unblinded"][script], f"{script} differs between the bundles"
    result = json.loads(files["unblinded"]["analysis/primary.json"])
    assert result["allocation"] == "real" and result["estimate"] is not None
    shutil.copyfile(blinded / "analysis" / "primary.R", unblinded / "analysis" / "blind_primary.R")
    shutil.copyfile(blinded / "analysis" / "primary.py", unblinded / "analysis" / "blind_primary.py")
    for got in (_estimates(_run(["Rscript", str(unblinded / "analysis" / "blind_primary.R")], tmp_path)),
                _estimates(_run([sys.executable, str(unblinded / "analysis" / "blind_primary.py")], tmp_path))):
        est, se = got["group_month5"]
        assert abs(est - result["estimate"]) < 1e-5 and abs(se - result["se"]) < 1e-5, (got, result)
        for s in result["secondary"]:
            assert abs(got[f"arm_{s['arm']}_month5"][0] - s["estimate"]) < 1e-5
    first, by_level = _levels(_run(["Rscript", str(program), str(unblinded)], tmp_path))
    assert first == LABELS["usual"] and list(by_level) == [LABELS["low"], LABELS["high"]]
    secondary = {s["arm"]: s for s in result["secondary"]}
    for label, (est, se) in by_level.items():
        s = secondary[KEY_OF[label]]
        assert abs(est - s["estimate"]) < 1e-5 and abs(se - s["se"]) < 1e-5, (label, est, se, s)


def _dictionary(files) -> dict[tuple[str, str], dict]:
    import csv
    return {(r["table"], r["name"]): r for r in csv.DictReader(io.StringIO(files["dictionary.csv"].decode()))}


def test_arm_has_one_name_type_and_level_order_in_both_bundles(world, db):
    files = _locked_trial(world, db, n=12)
    numbered = {}
    for variant in ("unblinded", "blinded"):
        f = files[variant]
        dictionary = _dictionary(f)
        for table in ("particip", "alloc", "guesses", "adsl"):
            head = read_csv(f[f"csv/{table}.csv" if table != "adsl" else "analysis/adsl.csv"])[0]
            if table == "guesses" and (table, "arm") not in dictionary:
                continue  # (no guess recorded)
            assert "arm" in head and "armcd" not in head, (variant, table)
            entry = dictionary[(table, "arm")]
            assert entry["type"] == "text (coded)" and entry["sas_format"] == "ARM.", entry
            numbered.setdefault(variant, set()).add(entry["codes_in_dta_xpt"])
        load_do = f["syntax/load.do"].decode()
        assert "frame adsl: fvset base 1 arm" in load_do and "armcd" not in load_do
        assert "value ARM 1=" in f["syntax/load.sas"].decode()
        odm = f["odm/snapshot.xml"].decode()
        assert 'ItemOID="IT.RANDOMIZATION.ARM"' in odm and 'CodeListOID="CL.ARM"' in odm and "ARMCD" not in odm
    (real,), (dummy,) = numbered["unblinded"], numbered["blinded"]
    assert real == "1 = usual; 2 = low; 3 = high"
    codes = [item.split(" = ")[1] for item in dummy.split("; ")]
    result = json.loads(files["blinded"]["analysis/primary.json"])
    assert codes[0] == result["reference_arm"] and sorted(codes) == ["A", "B", "C"]
    # the code standing for usual care (weight 2) first: it has twice the others' children
    head, rows = read_csv(files["blinded"]["csv/alloc.csv"])
    count = {c: sum(r[head.index("arm")] == c for r in rows) for c in codes}
    assert count[codes[0]] == 2 * count[codes[1]] == 2 * count[codes[2]], count
    r_load = files["blinded"]["syntax/load.R"].decode()
    assert f'd$arm <- factor(d$arm, levels = c("{codes[0]}", "{codes[1]}", "{codes[2]}")' in r_load
    assert 'd$arm <- factor(d$arm, levels = c("usual", "low", "high")' in files["unblinded"]["syntax/load.R"].decode()
    readme = files["blinded"]["README.txt"].decode()
    assert "THE ALLOCATION IN THIS BUNDLE IS A DUMMY" in readme and "armcd" not in readme
    assert "a program written on this bundle runs unchanged on the unblinded one" in readme.replace("\n", " ")


def test_the_blinded_allocation_has_no_list_slot_and_dates_mean_the_sites_day(world, db, tmp_path):
    import pyreadstat
    files = _locked_trial(world, db, n=9)
    ahead, _ = read_csv(files["unblinded"]["csv/alloc.csv"])
    bhead, brows = read_csv(files["blinded"]["csv/alloc.csv"])
    assert "slot" in ahead and "slot" not in bhead and len(bhead) == len(brows[0])
    assert ("alloc", "slot") not in _dictionary(files["blinded"]) and ("alloc", "slot") in _dictionary(files["unblinded"])
    east, utc = (R + dt.timedelta(days=1)).isoformat(), R.isoformat()
    for variant in ("unblinded", "blinded"):
        f = files[variant]
        head, rows = read_csv(f["csv/particip.csv"])
        site, rand, enrol_day = head.index("site"), head.index("randdt"), head.index("enroldt")
        for r in rows:  # the site's calendar day of 20:00 UTC: the next day at UTC+14, the same at UTC
            assert r[rand] == (east if r[site] == "NO01" else utc), (variant, r)
            assert r[enrol_day] == (R.isoformat() if r[site] == "NO01" else (R - dt.timedelta(days=1)).isoformat())
        adsl_head, adsl_rows = read_csv(f["analysis/adsl.csv"])
        by_child = {r[0]: r[rand] for r in rows}
        assert all(by_child[r[0]] == r[adsl_head.index("randdt")] for r in adsl_rows), "one meaning of randdt"
        ahead, arows = read_csv(f["csv/alloc.csv"])
        assert {r[ahead.index("randdtm")] for r in arows} == {f"{utc}T20:00:00"}, "the moment itself in UTC"
        dictionary = _dictionary(f)
        assert dictionary[("particip", "randdt")]["label"] == dictionary[("adsl", "randdt")]["label"] == \
            "Date of randomization (site's calendar)"
        assert "UTC" not in dictionary[("particip", "randdt")]["label"] + dictionary[("particip", "enroldt")]["label"]
        # the SAS transport file holds a date as days since 1960-01-01 with a date format, not ISO text
        (tmp_path / f"{variant}.xpt").write_bytes(f["xpt/particip.xpt"])
        df, meta = pyreadstat.read_xport(str(tmp_path / f"{variant}.xpt"), disable_datetime_conversion=True)
        cols = {c.lower(): c for c in df.columns}
        days = {(R + dt.timedelta(days=1) - dt.date(1960, 1, 1)).days, (R - dt.date(1960, 1, 1)).days}
        assert set(df[cols["randdt"]].astype(int)) == days
        assert meta.original_variable_types[cols["randdt"]].upper().startswith("YYMMDD")
        readme = f["README.txt"].decode()
        assert "dates as ISO text" not in readme and "a date is a number of days since" in readme
        assert "1960-01-01 with the format YYMMDD10." in readme and "(%td)" in readme


def test_the_sites_day_of_a_moment_is_exact_across_clock_changes():
    """SiteDays works out a zone's offset once per UTC day: every minute of the days around clock
    changes (Vienna's, St John's at half past the hour, Lord Howe's half-hour change) gives the day
    a direct conversion gives; a site without a zone is UTC; no moment, no day."""
    from trial.exports.dataset import SiteDays
    from trial.timeline import local_date
    zones = {1: "Europe/Vienna", 2: "America/St_Johns", 3: "Australia/Lord_Howe", 4: FAR_EAST, 5: None}
    days = SiteDays(zones)
    for start in (dt.datetime(2025, 3, 29), dt.datetime(2025, 10, 25), dt.datetime(2025, 3, 8), dt.datetime(2025, 11, 1),
                  dt.datetime(2025, 4, 5), dt.datetime(2025, 10, 4)):
        for minute in range(0, 3 * 24 * 60, 7):
            when = start + dt.timedelta(minutes=minute)
            for site, zone in zones.items():
                assert days(site, when) == local_date(when, zone or "UTC").isoformat(), (zone, when)
    assert days(4, dt.datetime(2025, 1, 1, 20, 0)) == "2025-01-02" and days(5, dt.datetime(2025, 1, 1, 23, 59)) == "2025-01-01"
    assert days(1, None) is None


# --- the warning of a randomization factor not adjusted for ---------------------------------------

TOML = DEFAULT_PROTOCOL.read_text()
SECOND_FACTOR = '[[randomization.factors]]\nkey = "verbal"\nlevels = ["yes", "no"]\nlabel = "Verbal"\n\n'


def _with_second_factor(adjust: str = '["site"]') -> str:
    marker = "[randomization.minimization]"
    assert marker in TOML and 'adjust = ["site"]' in TOML
    return TOML.replace(marker, SECOND_FACTOR + marker, 1).replace('adjust = ["site"]', f"adjust = {adjust}", 1)


def test_the_warning_names_each_factor_not_adjusted_for():
    assert [f["key"] for f in parse(TOML)["randomization"]["factors"]] == ["site"]
    assert load_warnings(parse(TOML)) == [], "TIME-A adjusts for all of its factors"
    (warning,) = load_warnings(parse(_with_second_factor()))
    assert warning.startswith("randomization factor 'verbal' is not in [analysis] adjust") and "ICH E9" in warning
    assert load_warnings(parse(_with_second_factor('["site", "verbal"]'))) == []
    without = re.sub(r"\n\[analysis\]\n.*?(?=\n\[(?!\[?analysis\.)|\Z)", "\n", _with_second_factor(), flags=re.S)
    assert "analysis" not in parse(without) and load_warnings(parse(without)) == [], "no analysis declared: no warning"


def test_protocol_load_and_its_dry_run_warn_and_still_load(tmp_path_factory, tmp_path):
    d = _new_db("h1warn", tmp_path_factory)
    try:
        path = tmp_path / "two-factors.toml"
        path.write_text(_with_second_factor())
        versions = d.count("protocol_version")
        r = cli_ok(d.run("protocol", "load", str(path), "--dry-run"))
        assert "dry run: nothing was changed" in r.stdout and d.count("protocol_version") == versions
        assert "warning: randomization factor 'verbal' is not in [analysis] adjust" in r.stderr
        r = cli_ok(d.run("protocol", "load", str(path)))
        assert f"protocol version {versions + 1} " in r.stdout and d.count("protocol_version") == versions + 1
        assert r.stderr.count("warning: randomization factor 'verbal'") == 1 and "site" not in r.stderr
        path.write_text(_with_second_factor('["site", "verbal"]'))
        r = cli_ok(d.run("protocol", "load", str(path)))
        assert d.count("protocol_version") == versions + 2 and "warning" not in r.stderr
        path.write_text(TOML)
        assert "warning" not in cli_ok(d.run("protocol", "load", str(path), "--dry-run")).stderr
    finally:
        d.fresh.drop()
