"""Allocation through the API: preconditions, idempotency, concealment, blinding, list extension,
verification with the seed in hand, minimization."""
from __future__ import annotations

import collections

import pytest
from sqlalchemy import func, select, text

from tests.helpers import CLI
from trial.audit.models import AuditRecord
from trial.errors import Conflict
from trial.participants.models import Allocation
from trial.randomize import lists
from trial.randomize import service as randomization
from trial.randomize.models import Stratum

SEED = bytes(range(32))


def rand(world, p, who="coordinator", key=None):
    return world.api("POST", f"/participants/{p.study_id}/randomize", who,
                     headers={"Idempotency-Key": key} if key else None)


def state(db):
    return (db.execute(select(func.count()).select_from(Allocation)).scalar(),
            db.execute(select(func.count()).select_from(AuditRecord)).scalar(),
            tuple(db.execute(select(Stratum.key, Stratum.last_seq).order_by(Stratum.key)).all()))


@pytest.fixture()
def opened(world):
    world.open(SEED)
    return world


def test_randomize_follows_the_list_in_order(opened, db):
    expected = lists.StratumList(SEED, "site=AT01", [("low", 1), ("high", 1), ("usual", 2)], [4, 8])
    for seq in range(1, 13):
        p = opened.ready()
        r = rand(opened, p, key=f"k{seq}")
        assert r.status_code == 201
        body = r.get_json()
        assert set(body) == {"study_id", "arm", "arm_label", "randomized_at"}
        assert body["arm"] == expected.arm_at(seq) and body["study_id"] == p.study_id
        assert body["randomized_at"].endswith("Z")
    assert db.execute(select(Stratum.last_seq).where(Stratum.key == "site=AT01")).scalar() == 12


def test_same_idempotency_key_returns_same_answer_and_new_key_is_409(opened, db):
    p = opened.ready()
    first = rand(opened, p, key="abc")
    assert first.status_code == 201
    before = state(db)
    again = rand(opened, p, key="abc")
    assert again.status_code == 200 and again.get_json() == first.get_json()
    other = rand(opened, p, key="xyz")
    assert other.status_code == 409 and "already randomized" in other.get_json()["error"]["message"]
    assert rand(opened, p).status_code == 409
    assert state(db) == before


@pytest.mark.parametrize("case", ["no_baseline", "not_open", "site_closed"])
def test_not_ready_is_409_with_a_clear_message_and_changes_nothing(world, db, case):
    if case != "not_open":
        world.open(SEED)
    p = world.enroll() if case == "no_baseline" else world.ready()
    if case == "site_closed":
        from trial.sites.service import update_site
        update_site(db, CLI, "AT01", {"is_open": False}, reason="site paused")
        db.commit()
    before = state(db)
    r = rand(world, p, key="k")
    assert r.status_code == 409
    msg = r.get_json()["error"]["message"]
    assert {"no_baseline": "ADOS-2 (blinded assessor) (Baseline): Social affect score is not recorded", "not_open": "not open",
            "site_closed": "site AT01 is closed"}[case] in msg
    assert state(db) == before


def test_not_eligible_and_no_consent_cannot_even_be_enrolled(opened, db):
    sc = opened.screen(answers=opened.answers(asd_diagnosis=False))
    r = opened.api("POST", "/participants", "coordinator", json={"screening_id": sc.id, "date_of_birth": "2021-01-01",
                                                                 "sex": "male", "consent_date": "2026-01-01"})
    assert r.status_code == 409 and "has the outcome Not eligible" in r.get_json()["error"]["message"]
    sc = opened.screen()
    r = opened.api("POST", "/participants", "coordinator", json={"screening_id": sc.id, "date_of_birth": "2021-01-01", "sex": "male"})
    assert r.status_code == 400 and "consent_date" in r.get_json()["error"]["fields"]
    assert db.execute(select(func.count()).select_from(Allocation)).scalar() == 0


def test_not_eligible_screening_blocks_randomization_even_if_data_were_tampered(opened, db):
    p = opened.ready()
    db.execute(text("UPDATE screening SET outcome = 'not_eligible' WHERE id = :id"), {"id": p.screening_id})
    db.commit()
    before = state(db)
    r = rand(opened, p, key="k")
    assert r.status_code == 409 and "screening is not eligible" in r.get_json()["error"]["message"]
    assert state(db) == before


@pytest.mark.parametrize("who,status", [("coordinator_no", 404), ("assessor", 403), ("therapist", 403),
                                        ("statistician", 403), ("manager", 403), ("admin", 403), (None, 401)])
def test_only_the_sites_coordinator_randomizes(opened, db, who, status):
    p = opened.ready()
    before = state(db)
    r = rand(opened, p, who=who, key="k")
    assert r.status_code == status
    body = r.get_data(as_text=True)
    assert not any(f'"{w}"' in body for w in ("arm", "low", "high", "usual"))
    assert state(db) == before


def test_unknown_participant_is_404(opened):
    assert rand(opened, type("P", (), {"study_id": "AT01-9999"})(), key="k").status_code == 404


def test_blinded_roles_never_get_an_arm(opened):
    p = opened.ready()
    rand(opened, p, key="k")
    seen = opened.api("GET", f"/participants/{p.study_id}", "coordinator").get_json()
    assert seen["arm"] in ("low", "high", "usual") and seen["arm_label"]
    for who in ("assessor", "statistician"):
        one = opened.api("GET", f"/participants/{p.study_id}", who)
        assert one.status_code == 200
        many = opened.api("GET", "/participants", who).get_json()
        for item in [one.get_json()] + many:
            assert "arm" not in item and "arm_label" not in item
            text_ = str(item)
            assert not any(lbl in text_ for lbl in ("Music therapy", "usual care", "'low'", "'high'", "'usual'"))
    assert opened.api("GET", "/participants", "admin").status_code == 403


def test_assessor_view_is_identical_for_children_in_different_arms(opened):
    by_arm = {}
    while len(by_arm) < 3:
        p = opened.ready()
        arm = rand(opened, p, key=p.study_id).get_json()["arm"]
        by_arm.setdefault(arm, p.study_id)
    views = []
    for study_id in by_arm.values():
        v = opened.api("GET", f"/participants/{study_id}", "assessor").get_json()
        views.append({k: v[k] for k in v if k not in ("study_id", "enrolled_at")})
    assert views[0] == views[1] == views[2]


def test_therapist_sees_only_music_therapy_children(opened):
    arms = {}
    for _ in range(8):
        p = opened.ready()
        arms[p.study_id] = rand(opened, p, key=p.study_id).get_json()["arm"]
    seen = {p["study_id"] for p in opened.api("GET", "/participants", "therapist").get_json()}
    assert seen == {s for s, a in arms.items() if a in ("low", "high")}
    usual = next(s for s, a in arms.items() if a == "usual")
    assert opened.api("GET", f"/participants/{usual}", "therapist").status_code == 404


def test_exhausted_list_is_extended_from_the_seed_and_audited(world, db):
    import tomllib

    from trial.protocol.service import DEFAULT_PROTOCOL, load_text
    src = DEFAULT_PROTOCOL.read_text().replace("initial_blocks = 25", "initial_blocks = 1").replace(
        "extension_blocks = 10", "extension_blocks = 1")
    assert tomllib.loads(src)["randomization"]["initial_blocks"] == 1
    load_text(db, CLI, src)
    db.commit()
    world.open(SEED)
    stratum = db.execute(select(Stratum).where(Stratum.key == "site=AT01")).scalar_one()
    first_len = stratum.length
    expected = lists.StratumList(SEED, "site=AT01", [("low", 1), ("high", 1), ("usual", 2)], [4, 8])
    arms = [rand(world, world.ready(), key=f"k{i}").get_json()["arm"] for i in range(first_len + 1)]
    assert arms == [expected.arm_at(i) for i in range(1, first_len + 2)]
    db.expire_all()
    stratum = db.execute(select(Stratum).where(Stratum.key == "site=AT01")).scalar_one()
    assert stratum.blocks == 2 and stratum.length > first_len and stratum.last_seq == first_len + 1
    ext = db.execute(select(AuditRecord).where(AuditRecord.action == "extend")).scalars().all()
    assert ext and ext[0].entity_id == "site=AT01" and "exhausted" in ext[0].reason
    seqs = db.execute(select(Allocation.seq).order_by(Allocation.seq)).scalars().all()
    assert seqs == list(range(1, first_len + 2))


def test_site_added_after_opening_gets_its_list_from_the_same_seed(opened, db):
    from trial.auth.service import create_user, issue_token
    from trial.sites.service import create_site
    create_site(db, CLI, {"code": "IT01", "name": "Rome"})
    u = create_user(db, CLI, "it@example.org", "It", "long-password-1", [("coordinator", "IT01")])
    opened.tokens["it"] = issue_token(db, CLI, u)
    db.commit()
    expected = lists.StratumList(SEED, "site=IT01", [("low", 1), ("high", 1), ("usual", 2)], [4, 8])
    for seq in range(1, 5):
        p = opened.ready("IT01")
        r = rand(opened, p, who="it", key=f"k{seq}")
        assert r.status_code == 201 and r.get_json()["arm"] == expected.arm_at(seq)


def test_verify_with_the_seed_in_hand_and_detect_an_altered_allocation(opened, db):
    for i in range(10):
        rand(opened, opened.ready("AT01" if i % 2 else "NO01"), who="coordinator" if i % 2 else "coordinator_no", key=f"k{i}")
    with pytest.raises(Conflict, match="not unblinded"):
        randomization.verify(db, CLI)
    seed = randomization.unseal_for_verification(db, CLI)
    assert seed == SEED
    res = randomization.verify(db, CLI, seed=seed)
    assert res.ok and res.checked == 10, res.problems
    wrong = randomization.verify(db, CLI, seed=bytes(32))
    assert not wrong.ok and any("commitment" in p for p in wrong.problems)
    a = db.execute(select(Allocation).order_by(Allocation.id).limit(1)).scalar_one()
    new_arm = "usual" if a.arm != "usual" else "low"
    db.execute(text("UPDATE allocation SET arm = :arm WHERE id = :id"), {"arm": new_arm, "id": a.id})
    db.expire_all()
    bad = randomization.verify(db, CLI, seed=seed)
    assert not bad.ok and any(f"has arm {new_arm}" in p for p in bad.problems)


def test_verify_detects_a_skipped_slot(opened, db):
    for i in range(3):
        rand(opened, opened.ready(), key=f"k{i}")
    db.execute(text("UPDATE allocation SET seq = seq + 10 WHERE seq = 3"))
    db.expire_all()
    res = randomization.verify(db, CLI, seed=SEED)
    assert not res.ok and any("slot 13 but slot 3 was next" in p for p in res.problems)


def test_commitment_covers_design_and_seed(opened, db):
    row = randomization.get_design(db)
    assert row.commitment == lists.commitment(row.design, SEED)
    assert set(row.design["initial_strata"]) == {"site=AT01", "site=NO01"}
    assert "seed" not in str(row.design).lower().replace("stratum_derivation", "").replace("hmac-sha256(seed", "")
    with pytest.raises(Conflict):
        randomization.open_randomization(db, CLI)


def test_the_seed_is_sealed_at_rest(opened, db):
    raw = db.execute(text("SELECT ciphertext FROM sealed_seed")).scalar()
    assert SEED not in bytes(raw) and SEED.hex().encode() not in bytes(raw)


def test_minimization_allocates_balanced_and_verifies(world, db):
    from trial.protocol.service import DEFAULT_PROTOCOL, load_text
    load_text(db, CLI, DEFAULT_PROTOCOL.read_text().replace('method = "permuted_blocks"', 'method = "minimization"'))
    db.commit()
    world.open(SEED)
    arms = collections.Counter()
    for i in range(24):
        site = "AT01" if i % 3 else "NO01"
        r = rand(world, world.ready(site), who="coordinator" if site == "AT01" else "coordinator_no", key=f"m{i}")
        assert r.status_code == 201
        arms[r.get_json()["arm"]] += 1
    assert abs(arms["usual"] - 12) <= 4 and abs(arms["low"] - 6) <= 3 and abs(arms["high"] - 6) <= 3
    details = db.execute(select(Allocation.details).order_by(Allocation.seq)).scalars().all()
    assert all({"u_pick", "u_tie", "scores"} <= set(d) for d in details)
    assert randomization.verify(db, CLI, seed=SEED).ok
    a = db.execute(select(Allocation).order_by(Allocation.seq.desc()).limit(1)).scalar_one()
    db.execute(text("UPDATE allocation SET arm = :arm WHERE id = :id"), {"arm": "high" if a.arm != "high" else "low", "id": a.id})
    db.expire_all()
    assert not randomization.verify(db, CLI, seed=SEED).ok


def test_web_randomize_needs_confirmation(opened, app, db):
    from tests.helpers import PASSWORD
    p = opened.ready()
    c = app.test_client()
    c.post("/login", data={"email": "coordinator@example.org", "password": PASSWORD})
    page = c.get(f"/participants/{p.study_id}").get_data(as_text=True)
    assert "The allocation is final" in page
    r = c.post(f"/participants/{p.study_id}/randomize", data={"idempotency_key": "w1"})
    assert r.status_code == 302
    assert db.execute(select(func.count()).select_from(Allocation)).scalar() == 0
    r = c.post(f"/participants/{p.study_id}/randomize", data={"idempotency_key": "w1", "confirm": "y"})
    assert r.status_code == 302
    page = c.get(f"/participants/{p.study_id}").get_data(as_text=True)
    assert "Allocation" in page and db.execute(select(func.count()).select_from(Allocation)).scalar() == 1
    # the assessor's page of the same child shows no allocation
    a = app.test_client()
    a.post("/login", data={"email": "assessor@example.org", "password": PASSWORD})
    page = a.get(f"/participants/{p.study_id}").get_data(as_text=True)
    assert "Allocation" not in page and "Music therapy" not in page and "usual care" not in page.lower()


def test_withdrawn_child_cannot_be_randomized(opened, db):
    import datetime as dt

    from trial.status.service import record_event
    p = opened.ready()
    record_event(db, CLI, p.study_id, {"type": "withdrawn", "on": dt.date.today().isoformat(), "reason": "family moved"})
    db.commit()
    before = state(db)
    r = rand(opened, p, key="k")
    assert r.status_code == 409 and "withdrawn on" in r.get_json()["error"]["message"]
    assert state(db) == before


def test_retry_with_the_same_key_is_answered_even_under_a_lock(opened, db):
    from tests.helpers import PASSWORD
    p, other = opened.ready(), opened.ready()
    first = rand(opened, p, key="k1")
    assert opened.api("POST", "/locks", "manager", json={"kind": "soft", "meaning": "m", "password": PASSWORD}).status_code == 201
    again = rand(opened, p, key="k1")
    assert again.status_code == 200 and again.get_json() == first.get_json()
    assert rand(opened, other, key="k2").status_code == 423


def test_block_sizes_are_not_published(world):
    body = world.api("GET", "/protocol", "coordinator").get_json()
    assert "block_sizes" not in body["randomization"]


def test_an_amendment_after_opening_applies_to_the_next_randomization(opened, db):
    """The randomize path keeps protocol content per process, keyed by the text's SHA-256: an
    amendment (a new text) must take effect on the very next request, in the same process."""
    from trial.protocol.service import DEFAULT_PROTOCOL, load_text
    first, second = opened.ready(), opened.ready()
    assert rand(opened, first).status_code == 201  # warms the per-process caches
    text = DEFAULT_PROTOCOL.read_text()
    assert 'instrument = "ados2"\nfield = "social_affect"' in text
    load_text(db, CLI, text.replace('instrument = "ados2"\nfield = "social_affect"',
                                    'instrument = "srs2"\nfield = "total_t"', 1))
    db.commit()
    before = state(db)
    r = rand(opened, second)
    assert r.status_code == 409
    assert "SRS-2 (parent-reported) (Baseline): SRS-2 total T-score is not recorded" in r.get_json()["error"]["message"]
    assert state(db) == before
