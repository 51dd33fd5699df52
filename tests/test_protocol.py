"""The protocol: the default TIME-A file, validation of malformed files (each problem names its
dotted key), versioning and amendments, and GET /api/v1/protocol."""
from __future__ import annotations

import json
import re
import tomllib

import jsonschema
import pytest
from sqlalchemy import func, select

from tests.helpers import CLI, ROLES
from trial.audit.models import AuditRecord
from trial.errors import Conflict, Forbidden, ValidationError
from trial.protocol.models import ProtocolVersion
from trial.protocol.schema import ProtocolError, json_schema, parse
from trial.protocol.service import DEFAULT_PROTOCOL, current, load_text

TOML = DEFAULT_PROTOCOL.read_text()


def edit(old: str, new: str, occurrence: int = 1, text: str = TOML) -> str:
    """Replace the ``occurrence``-th (1-based) ``old`` in the protocol text; fail if it is not there."""
    parts = text.split(old)
    assert len(parts) > occurrence, f"{old!r} occurs {len(parts) - 1} times, wanted occurrence {occurrence}"
    return old.join(parts[:occurrence]) + new + old.join(parts[occurrence:])


def counts(db) -> tuple[int, int]:
    return (db.execute(select(func.count()).select_from(ProtocolVersion)).scalar_one(),
            db.execute(select(func.count()).select_from(AuditRecord)).scalar_one())


# --- the default protocol -----------------------------------------------------------------------

def test_default_protocol_is_time_a():
    p = parse(TOML)
    assert p["trial"]["key"] == "time-a"
    assert [(a["key"], a["weight"], a["sessions_per_week"]) for a in p["arms"]] == [
        ("low", 1, 1), ("high", 1, 3), ("usual", 2, 0)]
    r = p["randomization"]
    assert r["method"] == "permuted_blocks"
    assert r["block_sizes"] and all(s % 4 == 0 for s in r["block_sizes"])
    assert [f["key"] for f in r["factors"]] == ["site"]
    assert [(v["key"], v["primary"]) for v in p["visits"]] == [
        ("baseline", False), ("month2", False), ("month5", True), ("month12", False)]
    assert p["visits"][0]["day"] == 0
    assert [v["day"] for v in p["visits"]] == sorted(v["day"] for v in p["visits"])

    ados, srs = p["instruments"]
    assert (ados["key"], ados["blinded"], srs["key"], srs["blinded"]) == ("ados2", True, "srs2", False)
    assert {f["key"]: (f["type"], f["min"], f["max"], f["required"]) for f in ados["fields"]} == {
        "social_affect": ("integer", 0, 20, True), "rrb": ("integer", 0, 8, True), "css": ("integer", 1, 10, True)}
    assert {f["key"]: (f["type"], f["min"], f["max"]) for f in srs["fields"]} == {"total_t": ("integer", 30, 90)}
    for ins in (ados, srs):
        assert ins["visits"] == ["baseline", "month2", "month5", "month12"]
    assert p["primary_outcome"] == {"instrument": "ados2", "field": "social_affect", "visit": "month5"}
    assert len(p["criteria"]) == 5 and all(isinstance(c["qualifying_answer"], bool) for c in p["criteria"])


def test_the_loaded_default_is_version_1_of_the_default_file(world):
    pv = current(world.db)
    assert pv.version == 1
    assert pv.trial_key == "time-a"
    assert pv.source == TOML
    assert pv.content == parse(TOML)


# --- malformed files ----------------------------------------------------------------------------

def _without_arms(t: str) -> str:
    out = re.sub(r"\[\[arms\]\].*?(?=\[randomization\])", "", t, flags=re.S)
    assert "[[arms]]" not in out
    return out


BAD = {
    "missing-arms": (_without_arms(TOML), "arms", "is missing"),
    "weight-0": (edit("weight = 1", "weight = 0"), "arms[0].weight", "1 or more"),
    "weight-not-a-number": (edit("weight = 1", 'weight = "one"'), "arms[0].weight", "must be a"),
    "block-size-6": (edit("block_sizes = [4, 8]", "block_sizes = [4, 6]"), "randomization.block_sizes[1]",
                     "not a positive multiple of the ratio sum 4"),
    "unknown-method": (edit('method = "permuted_blocks"', 'method = "coin_toss"'), "randomization.method",
                       "must be one of permuted_blocks, minimization, not 'coin_toss'"),
    "duplicate-arm-key": (edit('key = "high"', 'key = "low"'), "arms[1].key", "duplicate key 'low'"),
    "one-arm": (_without_arms(TOML).replace(
        "[randomization]", '[[arms]]\nkey = "low"\nlabel = "Only"\nsessions_per_week = 1\nweight = 1\n\n[randomization]', 1),
        "arms", "at least two arms"),
    "two-primary-visits": (edit("window_after = 14\nprimary = false", "window_after = 14\nprimary = true"),
                           "visits", "exactly one visit"),
    "no-primary-visit": (edit("primary = true", "primary = false"), "visits", "exactly one visit"),
    "primary-field-unknown": (edit('field = "social_affect"', 'field = "social_skills"'), "primary_outcome.field",
                              "no field 'social_skills'"),
    "primary-instrument-unknown": (edit('instrument = "ados2"', 'instrument = "cars2"'),
                                   "primary_outcome.instrument", "unknown instrument 'cars2'"),
    "primary-visit-not-primary": (edit('visit = "month5"', 'visit = "month12"'), "primary_outcome.visit",
                                  "not the visit marked primary"),
    "min-above-max": (edit("min = 0\n  max = 20", "min = 21\n  max = 20"), "instruments[0].fields[0].max",
                      "must not be below min"),
    "unknown-field-type": (edit('type = "integer"', 'type = "float"'), "instruments[0].fields[0].type",
                           "must be one of"),
    "unknown-visit-in-instrument": (edit('visits = ["baseline", "month2", "month5", "month12"]',
                                         'visits = ["baseline", "month3", "month5"]', 2),
                                    "instruments[1].visits[1]", "unknown visit 'month3'"),
    "invalid-toml": (edit("weight = 1", "weight = "), "(file)", "not valid TOML"),
    "unknown-section": (TOML + "\n[extras]\nfoo = 1\n", "extras", "not a known protocol section"),
    "visit-out-of-order": (edit("day = 152", "day = 30"), "visits", "in order of their day"),
    "no-baseline": (edit('key = "baseline"', 'key = "screening"'), "visits", "'baseline' visit on day 0"),
    "negative-window": (edit("window_before = 14", "window_before = -1"), "visits[1].window_before", "0 or more"),
    "bad-arm-key": (edit('key = "low"', 'key = "Low Dose"'), "arms[0].key", "not a valid key"),
    "age-range-reversed": (edit("max_age_months = 83", "max_age_months = 40"), "eligibility.max_age_months",
                           "below min_age_months"),
    "criterion-answer-not-bool": (edit("qualifying_answer = true", 'qualifying_answer = "yes"'),
                                  "criteria[0].qualifying_answer", "must be a"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_malformed_protocol_names_the_key(name):
    text, key, problem = BAD[name]
    assert text != TOML
    with pytest.raises(ProtocolError) as exc:
        parse(text)
    e = exc.value
    assert e.key == key
    assert problem in e.problem
    assert (e.key, e.problem) == e.errors[0]
    assert str(e) == "; ".join(f"{k}: {p}" for k, p in e.errors)
    assert "\n" not in str(e) and len(str(e)) < 300


def test_every_problem_of_a_file_is_named_at_once():
    text = edit("weight = 1", "weight = 0")
    text = edit("window_before = 14", "window_before = -1", text=text)
    text = edit('type = "integer"', 'type = "float"', text=text)
    text = edit("min = 0\n  max = 20", "mni = 0\n  max = 20", text=text)
    with pytest.raises(ProtocolError) as exc:
        parse(text)
    found = dict(exc.value.errors)
    assert found == {"arms[0].weight": "must be 1 or more",
                     "visits[1].window_before": "must be 0 or more",
                     "instruments[0].fields[0].type": "must be one of integer, number, text, boolean, choice, not 'float'",
                     "instruments[0].fields[0].mni": found["instruments[0].fields[0].mni"]}, found
    assert found["instruments[0].fields[0].mni"].startswith("is not a known key here (expected one of ")
    # the rules between sections are checked once the sections are valid, every one of them
    text = edit('field = "social_affect"', 'field = "social_skills"')
    text = edit('reference_arm = "usual"', 'reference_arm = "none"', text=text)
    text = edit('visits = ["baseline", "month2", "month5", "month12"]', 'visits = ["baseline", "month3", "month5"]', 2,
                text=text)
    with pytest.raises(ProtocolError) as exc:
        parse(text)
    assert [k for k, _ in exc.value.errors] == ["instruments[1].visits[1]", "primary_outcome.field"]


# what a JSON Schema cannot say: relations between values (a multiple of the ratio sum, unique keys,
# references to other sections, order, one bound against another); `trial protocol load` checks them
SCHEMA_BLIND = {"block-size-6", "duplicate-arm-key", "primary-field-unknown", "primary-instrument-unknown",
                "primary-visit-not-primary", "min-above-max", "unknown-visit-in-instrument", "visit-out-of-order",
                "age-range-reversed", "invalid-toml"}


def test_the_json_schema_accepts_the_default_and_refuses_the_broken_copies():
    from click.testing import CliRunner

    from trial.cli import main
    out = CliRunner().invoke(main, ["protocol", "schema"])
    assert out.exit_code == 0, out.output
    schema = json.loads(out.output)
    assert schema == json.loads(json.dumps(json_schema()))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors(tomllib.loads(TOML)))
    for name, (text, key, _) in BAD.items():
        if name in SCHEMA_BLIND:
            continue
        errors = list(validator.iter_errors(tomllib.loads(text)))
        assert errors, name
        where = ".".join(str(p) for p in errors[0].absolute_path)
        assert where.replace(".", "") in key.replace("[", "").replace("]", "").replace(".", ""), (name, where, key)


def test_misspelled_key_inside_a_table_is_rejected():
    with pytest.raises(ProtocolError) as exc:
        parse(edit("min = 0\n  max = 20", "mni = 0\n  max = 20"))
    assert exc.value.key == "instruments[0].fields[0].mni"


def test_non_string_visit_in_an_instrument_is_a_protocol_error():
    with pytest.raises(ProtocolError) as exc:
        parse(edit('visits = ["baseline", "month2", "month5", "month12"]',
                   'visits = ["baseline", { key = "month2" }, "month5", "month12"]', 2))
    assert exc.value.key == "instruments[1].visits[1]"


# --- loading and amendments ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["weight-0", "block-size-6", "invalid-toml", "unknown-section"])
def test_load_text_rejects_a_bad_file_and_stores_nothing(world, name):
    text, key, problem = BAD[name]
    before = counts(world.db)
    with pytest.raises(ValidationError) as exc:
        load_text(world.db, CLI, text, source_name="bad.toml")
    e = exc.value
    assert e.status == 400
    assert key in e.fields and problem in e.fields[key]
    assert e.message.startswith("bad.toml: ") and key in e.message
    world.db.rollback()
    assert counts(world.db) == before
    assert current(world.db).version == 1


def test_amendment_becomes_version_2_and_is_audited(world):
    amended = edit("Has the child received music therapy in the past 12 months?",
                   "Has the child received any music therapy in the past 12 months?")
    pv = load_text(world.db, CLI, amended, source_name="amendment-2.toml")
    world.db.commit()
    assert pv.version == 2
    assert current(world.db).version == 2
    crit = {c["key"]: c["question"] for c in current(world.db).content["criteria"]}
    assert crit["recent_music_therapy"] == "Has the child received any music therapy in the past 12 months?"

    recs = world.db.execute(select(AuditRecord).where(AuditRecord.entity == "protocol_version",
                                                      AuditRecord.entity_id == "2")).scalars().all()
    assert recs and all(r.action == "create" and r.actor == CLI.email for r in recs)
    assert {r.field: r.new for r in recs}["sha256"] == pv.sha256

    # identical text again: no new version, no audit record
    before = counts(world.db)
    assert load_text(world.db, CLI, amended).version == 2
    assert counts(world.db) == before

    # the API shows the amendment
    r = world.api("GET", "/protocol", "coordinator")
    assert r.get_json()["version"] == 2


def test_only_an_admin_loads_a_protocol(world):
    before = counts(world.db)
    with pytest.raises(Forbidden):
        load_text(world.db, world.users["manager"], edit("months = 5", "months = 6"))
    world.db.rollback()
    assert counts(world.db) == before


@pytest.mark.parametrize("old, new, part", [
    ('label = "Enhanced usual care"', 'label = "Usual care"', "arms"),
    ("sessions_per_week = 3", "sessions_per_week = 2", "arms"),
    ("block_sizes = [4, 8]", "block_sizes = [4]", "randomization"),
    ('method = "permuted_blocks"', 'method = "minimization"', "randomization"),
])
def test_after_randomization_opens_arms_and_design_are_fixed(world, old, new, part):
    world.open()
    before = counts(world.db)
    with pytest.raises(Conflict) as exc:
        load_text(world.db, CLI, edit(old, new))
    assert exc.value.status == 409
    assert f"'{part}'" in exc.value.message and part in exc.value.fields
    world.db.rollback()
    assert counts(world.db) == before
    assert current(world.db).version == 1


def test_after_randomization_opens_other_amendments_are_allowed(world):
    world.open()
    pv = load_text(world.db, CLI, edit("window_before = 21", "window_before = 28"))
    world.db.commit()
    assert pv.version == 2 and current(world.db).content["visits"][2]["window_before"] == 28


# --- GET /api/v1/protocol -----------------------------------------------------------------------

@pytest.mark.parametrize("who", list(ROLES))
def test_api_protocol_shape_for_every_role(world, who):
    r = world.api("GET", "/protocol", who)
    assert r.status_code == 200
    p = r.get_json()
    assert p["version"] == 1
    assert p["arms"] == [
        {"key": "low", "label": "Music therapy, 1 session per week", "weight": 1, "sessions_per_week": 1},
        {"key": "high", "label": "Music therapy, 3 sessions per week", "weight": 1, "sessions_per_week": 3},
        {"key": "usual", "label": "Enhanced usual care", "weight": 2, "sessions_per_week": 0}]
    assert p["randomization"]["method"] == "permuted_blocks"
    assert p["randomization"]["factors"] == [{"key": "site", "levels": ["AT01", "NO01"]}]

    assert [c["key"] for c in p["criteria"]] == ["age_in_range", "asd_diagnosis", "recent_music_therapy",
                                                 "severe_sensory_impairment", "parent_available"]
    for c in p["criteria"]:
        assert isinstance(c["question"], str) and c["question"]
        assert isinstance(c["qualifying_answer"], bool)
    assert {c["key"]: c["qualifying_answer"] for c in p["criteria"]}["recent_music_therapy"] is False

    assert [(v["key"], v["day"], v["window_before"], v["window_after"], v["primary"]) for v in p["visits"]] == [
        ("baseline", 0, 60, 0, False), ("month2", 61, 14, 14, False), ("month5", 152, 21, 21, True),
        ("month12", 365, 30, 30, False)]

    ins = {i["key"]: i for i in p["instruments"]}
    assert set(ins) == {"ados2", "srs2"}
    assert ins["ados2"]["label"] and ins["ados2"]["blinded"] is True and ins["srs2"]["blinded"] is False
    assert ins["ados2"]["visits"] == ["baseline", "month2", "month5", "month12"]
    assert [{k: f[k] for k in ("key", "type", "min", "max", "required")} for f in ins["ados2"]["fields"]] == [
        {"key": "social_affect", "type": "integer", "min": 0, "max": 20, "required": True},
        {"key": "rrb", "type": "integer", "min": 0, "max": 8, "required": True},
        {"key": "css", "type": "integer", "min": 1, "max": 10, "required": True}]
    assert [{k: f[k] for k in ("key", "type", "min", "max", "required")} for f in ins["srs2"]["fields"]] == [
        {"key": "total_t", "type": "integer", "min": 30, "max": 90, "required": True}]
    assert p["primary_outcome"] == {"instrument": "ados2", "field": "social_affect", "visit": "month5"}


def test_api_protocol_site_levels_follow_the_sites(world):
    from trial.sites.service import create_site
    create_site(world.db, CLI, {"code": "DK01", "name": "Aalborg"})
    world.db.commit()
    factors = world.api("GET", "/protocol", "statistician").get_json()["randomization"]["factors"]
    assert factors == [{"key": "site", "levels": ["AT01", "DK01", "NO01"]}]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer trl_not-a-token"}, {"Authorization": "Basic eA=="}],
                         ids=["no-token", "bad-token", "not-bearer"])
def test_api_protocol_needs_a_token(world, headers):
    r = world.api("GET", "/protocol", None, headers=headers)
    assert r.status_code == 401
    assert r.get_json()["error"]["code"] == "unauthorized"
    assert "arms" not in r.get_json()
