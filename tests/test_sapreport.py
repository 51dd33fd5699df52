"""The SAP report PDF (trial.exports.sapreport): what a reader finds in it (pdftotext), the blinded
mark on every page, a lock without estimates, a single analysis, pagination of many, protocol
labels in Hebrew and Korean, and the forest plot's axis."""
from __future__ import annotations

import copy
import shutil
import subprocess

import pytest

from tests.sap_sim import CONTENT, simulate
from trial.analysis.sap import run_sap
from trial.exports import sapreport
from trial.exports.sapreport import axis, estimate_text, panels, report_pdf

needs_poppler = pytest.mark.skipif(not shutil.which("pdftotext") or not shutil.which("pdffonts"),
                                   reason="poppler-utils (pdftotext, pdffonts) is not installed")

LOCK = "hard lock 3, 2026-12-08"
MISSING = {"columns": ["visit", "arm", "reason", "n"],
           "rows": [["month2", "low", "Refused", 4], ["month5", "usual", "Lost to follow-up", 12]]}


def _e(key, label, est, lo, hi, p, n, **kw):
    return {"key": key, "label": label, "estimate": est, "ci_low": lo, "ci_high": hi, "p_value": p, "n": n,
            "method": kw.pop("method", "Linear mixed model (REML)"), "software": "trial.analysis.lmm (Python)", **kw}


# each entry with the text its estimate and CI must read as (written here, not by the report's code)
SAMPLE = [
    (_e("primary", "Primary: music therapy vs enhanced usual care", -1.84, -2.61, -1.07, 3e-5, 598, se=0.39, df=412.3),
     "-1.84 [-2.61, -1.07]"),
    (_e("arm:low", "One session a week vs usual care", -1.52, -2.49, -0.55, 0.0021, 452), "-1.52 [-2.49, -0.55]"),
    (_e("arm:high", "Three sessions a week vs usual care", -2.16, -3.13, -1.19, 1e-5, 446), "-2.16 [-3.13, -1.19]"),
    (_e("secondary:ados2.rrb", "ADOS-2 repetitive behaviour", -0.55, -0.92, -0.18, 0.0036, 590, p_adjusted=0.0036),
     "-0.550 [-0.920, -0.180]"),
    (_e("secondary:ados2.css", "ADOS-2 severity", -0.08, -0.31, 0.15, 0.49, 590, p_adjusted=0.49),
     "-0.080 [-0.310, 0.150]"),
    (_e("secondary:srs2.total_t", "SRS-2 total", None, None, None, None, 588,
        note="Not tested: the hierarchy stopped at the severity score."), None),
    (_e("ancova", "ANCOVA at 5 months", -1.79, -2.55, -1.03, 4e-5, 521, method="ANCOVA (OLS)"), "-1.79 [-2.55, -1.03]"),
    (_e("all_strata", "Every stratification factor", -1.86, -2.63, -1.09, 3e-5, 598), "-1.86 [-2.63, -1.09]"),
    (_e("in_window", "Visits in their windows", -1.90, -2.72, -1.08, 5e-5, 570), "-1.90 [-2.72, -1.08]"),
    (_e("per_protocol", "Per protocol", -2.21, -3.05, -1.37, 1e-6, 503), "-2.21 [-3.05, -1.37]"),
    (_e("cace", "Complier-average causal effect", -2.19, -3.11, -1.27, 1e-5, 521, method="2SLS"), "-2.19 [-3.11, -1.27]"),
    (_e("dose_response", "Dose-response per session", -0.031, -0.045, -0.017, 2e-5, 360),
     "-0.0310 [-0.0450, -0.0170]"),
    (_e("mi", "Multiple imputation", -1.81, -2.62, -1.00, 6e-5, 598, note="20 imputations, seed 20090601."),
     "-1.81 [-2.62, -1.00]"),
    (_e("tipping_point", "Tipping point", 3.5, None, None, None, 598), None),
]


def _results(entries, blinded=False):
    return {"sap_version": "1.0", "sap_sha256": "cd34" * 16, "code_sha256": "ab12" * 16, "code_files": ["trial/analysis/sap.py"],
            "blinded": blinded, "alpha": 0.05, "df_method": "satterthwaite", "multiplicity": "hierarchy",
            "analyses": entries}


def _pages(pdf: bytes) -> list[str]:
    """The text of each page (pdftotext), whitespace made single spaces."""
    out = subprocess.run(["pdftotext", "-", "-"], input=pdf, capture_output=True, check=True).stdout.decode()
    return [" ".join(p.split()) for p in out.split("\f")[:-1]]


def _flat(s: str) -> str:
    return " ".join(s.split())


@needs_poppler
def test_every_entry_label_estimate_ci_and_note_is_in_the_report():
    pdf = report_pdf(_results([e for e, _ in SAMPLE]), CONTENT, MISSING, LOCK)
    assert pdf.startswith(b"%PDF-")
    pages = _pages(pdf)
    text = " ".join(pages)
    forest = pages[1]
    for e, shown in SAMPLE:
        assert _flat(e["label"]) in forest and _flat(e["label"]) in text
        if shown:
            assert shown in forest, (e["key"], shown)
        if e.get("note"):
            assert _flat(e["note"]) in text
    assert "The conclusion is overturned at delta = 3.5" in forest
    assert "0.004 0.004" in forest  # p and adjusted p of the first secondary outcome
    assert "favours Music therapy (both frequencies)" in forest and "favours Enhanced usual care" in forest
    assert all(f"Page {i} of {len(pages)}" in p for i, p in enumerate(pages, 1))
    assert "BLINDED" not in text


@needs_poppler
def test_the_sap_page_gives_version_digest_estimand_and_settings():
    pages = _pages(report_pdf(_results([e for e, _ in SAMPLE]), CONTENT, MISSING, LOCK))
    first = pages[0]
    for words in ("SAP version 1.0", "SAP (SHA-256) " + "cd34" * 16, "ab12" * 16, "Satterthwaite", "fixed hierarchy", "0.05; confidence intervals 95%",
                  CONTENT["analysis"]["estimand"]["population"], "Treatment policy", "Hypothetical", "Composite",
                  "Intervention not received", "Withdrawal", "20 imputations, seed 20090601"):
        assert _flat(words) in first, words
    assert "month5 usual Lost to follow-up 12" in pages[-1]


@needs_poppler
def test_the_estimand_of_the_primary_entry_comes_before_the_protocols():
    entries = copy.deepcopy([e for e, _ in SAMPLE])
    entries[0]["estimand"] = {"population": "Everyone randomized in the simulation", "variable": "v",
                              "summary_measure": "m", "intercurrent_events": [{"event": "death",
                                                                               "strategy": "while_on_treatment"}]}
    first = _pages(report_pdf(_results(entries), CONTENT, MISSING, LOCK))[0]
    assert "Everyone randomized in the simulation" in first and "While on treatment" in first
    assert CONTENT["analysis"]["estimand"]["population"] not in first
    bare = copy.deepcopy(CONTENT)
    del bare["analysis"]["estimand"]
    assert "The protocol states no estimand." in _pages(report_pdf(_results(entries[1:]), bare, MISSING, LOCK))[0]


@needs_poppler
def test_a_blinded_report_says_so_on_every_page_and_gives_the_reasons_of_what_could_not_run():
    entries = copy.deepcopy([e for e, _ in SAMPLE])
    why = "A blinded bundle has no sessions attended: the analysis needs the intervention as delivered."
    for e in entries:
        if e["key"] in ("per_protocol", "cace", "dose_response"):
            e.update(estimate=None, ci_low=None, ci_high=None, p_value=None, note=why)
    pages = _pages(report_pdf(_results(entries, blinded=True), CONTENT, MISSING, LOCK))
    assert len(pages) >= 4
    assert all("BLINDED: dummy allocation" in p for p in pages)
    assert pages[1].count(why) == 3
    assert "favours the dummy intervention arms" in pages[1] and "favours the dummy reference arm" in pages[1]
    assert "Music therapy (both frequencies)" not in pages[1]


@needs_poppler
def test_the_dummy_labels_given_by_the_results_name_the_sides():
    r = _results([SAMPLE[0][0]], blinded=True)
    r.update(intervention_label="Dummy arms A and C", reference_label="Dummy arm B")
    forest = _pages(report_pdf(r, CONTENT, MISSING, LOCK))[1]
    assert "favours Dummy arms A and C" in forest and "favours Dummy arm B" in forest


def test_the_dummy_codes_of_a_blinded_bundle_name_the_sides_when_the_arm_entries_show_them():
    r = _results([SAMPLE[0][0], dict(SAMPLE[1][0], key="arm:A"), dict(SAMPLE[2][0], key="arm:C")], blinded=True)
    assert panels(r, CONTENT)[0].left == "← favours Dummy arms A + C"
    assert panels(r, CONTENT)[0].right == "favours Dummy arm B →"
    r["analyses"] = r["analyses"][:2]  # one arm entry missing: the reference cannot be told
    assert panels(r, CONTENT)[0].right == "favours the dummy reference arm →"


@needs_poppler
@pytest.mark.parametrize("blinded", [False, True])
def test_the_report_of_a_simulated_trial_shows_every_analysis_the_sap_ran(blinded):
    results, missingness = run_sap(CONTENT, simulate(300, seed=5, blinded=blinded), blinded)
    pages = _pages(report_pdf(results, CONTENT, missingness, LOCK))
    forest, text = pages[1] + " " + pages[2], " ".join(pages)
    for e in results["analyses"]:
        assert _flat(e["label"]) in text
        if e.get("estimate") is not None and e["key"] != "tipping_point":
            assert estimate_text(e) in forest, e["key"]
        if e.get("note"):
            assert _flat(e["note"]) in _flat(text), e["key"]
    assert all(("BLINDED: dummy allocation" in p) == blinded for p in pages)
    assert results["code_sha256"] in pages[0]
    assert ("favours Dummy arm" in forest) == blinded


@needs_poppler
def test_an_early_lock_without_any_estimate_still_gives_a_report_with_every_note():
    entries = [_e(e["key"], e["label"], None, None, None, None, 0, note=f"Not estimable yet: no 5-month data for {e['label']}.")
               for e, _ in SAMPLE]
    pdf = report_pdf(_results(entries), CONTENT, {"columns": [], "rows": []}, LOCK)
    pages = _pages(pdf)
    assert len(pages) >= 4 and pdf.rstrip().endswith(b"%%EOF")
    table = " ".join(pages[2:-1])  # every entry with its method and note
    for e in entries:
        assert e["label"] in pages[1] and e["note"] in pages[1] and f"Note: {e['note']}" in table
    assert "No missingness table in this lock." in pages[-1]
    empty = _pages(report_pdf(_results([]), CONTENT, MISSING, LOCK))
    assert "No analyses in this lock." in empty[1] and "No analyses in this lock." in empty[2]


@needs_poppler
def test_a_single_analysis_is_drawn_with_its_axis():
    pages = _pages(report_pdf(_results([SAMPLE[0][0]]), CONTENT, MISSING, LOCK))
    assert len(pages) == 4
    assert "-1.84 [-2.61, -1.07]" in pages[1] and "<0.001" in pages[1]
    assert "ADOS-2 (blinded assessor): Social affect score: difference, arm minus Enhanced usual care" in pages[1]


@needs_poppler
def test_forty_entries_with_long_labels_paginate_and_every_one_is_shown():
    long = "with a label long enough to wrap over several lines of the forest plot's label column"
    entries = [_e(f"arm:a{i}", f"Analysis {i:02d} {long}", -1 - i / 10, -2 - i / 10, -i / 10, 0.01, 100 + i)
               for i in range(40)]
    entries[7].update(estimate=None, ci_low=None, ci_high=None, note="Analysis 07 did not run: too few data.")
    pdf = report_pdf(_results(entries), CONTENT, MISSING, LOCK)
    pages = _pages(pdf)
    forest_pages = [p for p in pages if "Estimate and CI" in p]
    assert len(forest_pages) >= 3
    assert all("Primary outcome:" in p for p in forest_pages) and "(continued)" in forest_pages[1]
    assert all("favours Enhanced usual care" in p for p in forest_pages)  # each part has its axis
    text = " ".join(pages)
    for e in entries:
        assert f"{e['label'].split(' with')[0]} {long}" in text
        if e["estimate"] is not None:
            assert estimate_text(e) in " ".join(forest_pages)
    assert "Analysis 07 did not run: too few data." in " ".join(forest_pages)
    assert all(f"Page {i} of {len(pages)}" in p for i, p in enumerate(pages, 1))


@needs_poppler
def test_hebrew_and_korean_protocol_labels_are_drawn_in_fonts_that_have_them():
    content = copy.deepcopy(CONTENT)
    content["trial"]["name"] = "음악 치료 시험 TIME-A"
    for a in content["arms"]:
        a["label"] = {"low": "טיפול במוזיקה פעם בשבוע", "high": "טיפול במוזיקה שלוש פעמים", "usual": "טיפול רגיל"}[a["key"]]
    content["analysis"]["pooled_label"] = "음악 치료"
    entries = [dict(SAMPLE[0][0], label="일차 분석: 음악 치료"), dict(SAMPLE[1][0], label="טיפול במוזיקה פעם בשבוע")]
    pdf = report_pdf(_results(entries), content, MISSING, LOCK)
    fonts_used = subprocess.run(["pdffonts", "-"], input=pdf, capture_output=True, check=True).stdout.decode()
    if sapreport.fonts("en")[0] == "Helvetica" or not sapreport.fonts("ko")[0].startswith("TrialKorean"):
        pytest.skip("DejaVu Sans and a Korean TrueType font (fonts-dejavu-core, fonts-nanum) are not installed")
    assert "Nanum" in fonts_used or "UnDotum" in fonts_used or "gulim" in fonts_used.lower()
    assert "DejaVuSans" in fonts_used
    pages = _pages(pdf)
    assert all("음악 치료 시험 TIME-A" in p for p in pages)  # the running header
    assert "일차 분석: 음악 치료" in pages[1] and "favours 음악 치료" in pages[1]
    hebrew = "טיפול רגיל"
    assert hebrew in pages[1] or hebrew[::-1] in pages[1] or "".join(reversed(hebrew.split())) in pages[1]


def test_the_report_is_the_same_bytes_each_time():
    r = _results([e for e, _ in SAMPLE])
    assert report_pdf(r, CONTENT, MISSING, LOCK) == report_pdf(r, CONTENT, MISSING, LOCK)


def test_the_axis_holds_zero_and_every_interval_and_cuts_only_an_outlying_one():
    rows = panels(_results([e for e, _ in SAMPLE]), CONTENT)[0].rows
    lo, hi, ticks = axis(list(rows))
    assert lo < -3.13 and hi > 0 and ticks[0] == lo and ticks[-1] == hi and 0 in ticks
    assert 4 <= len(ticks) <= 8
    wide = _e("cace", "Weak instrument", -2.0, -60.0, 56.0, 0.9, 100)
    lo2, hi2, _ = axis(list(panels(_results([e for e, _ in SAMPLE[:3]] + [wide]), CONTENT)[0].rows))
    assert -15 < lo2 < -3.13 and 0 < hi2 < 15  # the wide CI is cut (drawn with arrows), the others fit
    assert axis([]) == (-1.0, 1.0, (-1.0, -0.5, 0.0, 0.5, 1.0))


def test_the_panels_put_each_scale_on_an_axis_of_its_own_and_the_benefit_sets_the_sides():
    got = panels(_results([e for e, _ in SAMPLE]), CONTENT)
    assert [p.heading.split(":")[0] for p in got] == ["Primary outcome", "Secondary outcome", "Secondary outcome",
                                                      "Secondary outcome", "Dose-response"]
    assert [r.label for r in got[0].rows][-1] == "Tipping point" and got[0].rows[-1].point is None
    assert got[0].rows[0].primary and not got[0].adjusted and got[1].adjusted
    assert got[0].left == "← favours Music therapy (both frequencies)"
    higher = copy.deepcopy(CONTENT)
    higher["analysis"]["benefit"] = "higher"
    assert panels(_results([SAMPLE[0][0]]), higher)[0].left == "← favours Enhanced usual care"


def test_numbers_are_written_in_decimals_that_suit_their_size():
    assert estimate_text({"estimate": -1.845, "ci_low": -2.6, "ci_high": -1.07}) == "-1.84 [-2.60, -1.07]"
    assert estimate_text({"estimate": 123.45, "ci_low": 100, "ci_high": 150}) == "123.5 [100.0, 150.0]"
    assert estimate_text({"estimate": 2.0}) == "2.00"
    assert estimate_text({"estimate": None, "ci_low": 1, "ci_high": 2}) == "–"
    assert estimate_text({"estimate": float("nan")}) == "–"
    assert sapreport.p_text(0.0004) == "<0.001" and sapreport.p_text(0.0123) == "0.012" and sapreport.p_text(None) == ""


@needs_poppler
def test_the_failure_pdf_is_one_page_saying_why():
    pages = _pages(sapreport.failure_pdf(LOCK, "ValueError: no fonts today"))
    assert len(pages) == 1 and "could not be made" in pages[0] and "ValueError: no fonts today" in pages[0]
