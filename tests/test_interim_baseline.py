"""The closed interim report's baseline table in the reader's language (issue 30's walk-through): the
instruments' rows by the protocol's labels for that language (instrument, field and units), never
the English ones in a German report; the English report as before."""
from __future__ import annotations

from tests import test_interim
from tests.test_interim import pdf_text, take_cut
from trial.interim.reports import _Doc, _score_labels
from trial.protocol.service import current, labels

trial = test_interim.trial  # (the fixture: a committee member, twelve children through the visits)


def _report(world, cut_id: int, language: str) -> str:
    world.users["dmc"].language = language
    world.db.commit()
    return pdf_text(world.api("GET", f"/data-cuts/{cut_id}/closed-report.pdf", "dmc").data)


def test_the_baseline_tables_instruments_are_in_the_readers_language(trial):
    world, _, _ = trial
    cut_id = take_cut(world)
    content = current(world.db).content
    en, de = labels(content, "en"), labels(content, "de")
    assert de["instrument"]["ados2"] != en["instrument"]["ados2"]
    german, english = _report(world, cut_id, "de"), _report(world, cut_id, "en")
    baseline = german.split("Baseline", 1)[-1]
    for ins in content["instruments"]:
        numeric = [f for f in ins["fields"] if f["type"] in ("integer", "number")]
        if not numeric:
            continue
        assert f"{en['instrument'][ins['key']]}:" not in german, ins["key"]
        assert f"{de['instrument'][ins['key']]}:" in german, ins["key"]
        field = f"{ins['key']}.{numeric[0]['key']}"
        assert de["field"][field].split()[0] in baseline, field
        assert f"{en['instrument'][ins['key']]}: {en['field'][field]}" in english, field


def test_each_score_row_is_named_from_the_protocols_words():
    content = {"arms": [], "visits": [], "instruments": [
        {"key": "srs2", "label": "SRS-2", "labels": {"de": "SRS-2 (Eltern)"},
         "fields": [{"key": "total_t", "label": "Total", "labels": {"de": "Gesamtwert"}, "type": "integer",
                     "units": "T-score", "units_labels": {"de": "T-Wert"}},
                    {"key": "note", "label": "Note", "type": "text"}]}]}
    got = _score_labels(_Doc("de", content), content)
    assert got["SRS-2: Total, T-score, mean (SD)"].startswith("SRS-2 (Eltern): Gesamtwert, T-Wert")
    assert _score_labels(_Doc("en", content), content)["SRS-2: Total, T-score, mean (SD)"] == \
        "SRS-2: Total, T-score, mean (SD)"
