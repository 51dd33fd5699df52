"""The intervention as delivered: therapists' credentials (a session needs one valid on its day),
session content from the protocol, each child's goals, and treatment fidelity (a seeded, audited,
re-derivable sample rated by another credentialed therapist). Blinded roles see none of it."""
from __future__ import annotations

import datetime as dt
import io

import pytest
from sqlalchemy import delete, func, select

from tests.helpers import as_csv, dictionary_of
from tests.test_course import add_user, backdate, d, err, one_child_per_arm, session, state
from trial.audit.models import AuditRecord
from trial.course.models import ChildGoal
from trial.credentials.models import Credential
from trial.fidelity import service as fidelity
from trial.fidelity.models import FidelityDraw, FidelityRating, FidelitySample
from trial.timeline import today


@pytest.fixture()
def kids(world):
    """One child per arm at AT01, randomized 60 days ago."""
    out = one_child_per_arm(world)
    for p in out.values():
        backdate(world, p, 60)
    return out


def counts(db) -> dict:
    db.expire_all()
    return {**state(db), **{m.__name__: db.execute(select(func.count()).select_from(m)).scalar()
                            for m in (ChildGoal, Credential, FidelityDraw, FidelitySample, FidelityRating)}}


# --- credentials -----------------------------------------------------------------------------

@pytest.mark.parametrize("valid_from,valid_to,revoked", [
    (-400, -40, False),   # expired before the session
    (-20, 300, False),    # valid only from after the session
    (-400, 300, True),    # revoked
    (None, None, None),   # never recorded
])
def test_a_session_by_a_therapist_without_a_credential_valid_that_day_is_refused(world, kids, db, valid_from, valid_to,
                                                                                 revoked):
    t2 = add_user(world, "therapist2", [("therapist", "AT01")])
    if valid_from is not None:
        c = world.credential(t2, kind="HCPC", valid_from=today() + dt.timedelta(days=valid_from),
                             valid_to=today() + dt.timedelta(days=valid_to))
        if revoked:
            r = world.api("POST", f"/credentials/{c.id}/revoke", "admin", json={"reason": "registration lapsed"})
            assert r.status_code == 200, r.get_json()
        world.db.commit()
    before = counts(db)
    r = session(world, kids["low"], d(30), who="therapist2")
    assert r.status_code == 409, r.get_json()
    e = err(r)
    assert e["code"] == "credential"
    assert f"no therapist's credential valid on {d(30).isoformat()}" in e["message"]
    assert "held_on" in e["fields"]
    assert counts(db) == before
    # the same day from a credentialed therapist is accepted
    assert session(world, kids["low"], d(30)).status_code == 201


def test_credentials_are_recorded_by_the_admin_from_the_protocol_list_and_audited(world, db):
    t = world.users["therapist"]
    ok = {"kind": "MT-BC", "number": "MT-BC 012345", "valid_to": (today() + dt.timedelta(days=30)).isoformat()}
    for who in ("manager", "coordinator", "therapist", "assessor"):
        assert world.api("POST", f"/therapists/{t.id}/credentials", who, json=ok).status_code == 403
    before = counts(db)
    r = world.api("POST", f"/therapists/{t.id}/credentials", "admin", json={**ok, "kind": "MT-XX"})
    assert r.status_code == 400 and "Credential must be one of the protocol's credentials" in err(r)["message"]
    assert "kind" in err(r)["fields"]
    r = world.api("POST", f"/therapists/{t.id}/credentials", "admin",
                  json={**ok, "valid_from": (today() + dt.timedelta(days=40)).isoformat()})
    assert r.status_code == 400 and "valid_to" in err(r)["fields"]
    r = world.api("POST", f"/therapists/{world.users['assessor'].id}/credentials", "admin", json=ok)
    assert r.status_code == 400 and "is not a therapist" in err(r)["message"]
    assert counts(db) == before
    r = world.api("POST", f"/therapists/{t.id}/credentials", "admin", json=ok)
    assert r.status_code == 201, r.get_json()
    c = r.get_json()
    assert (c["kind"], c["issuer"], c["state"]) == ("MT-BC", "Certification Board for Music Therapists", "expiring")
    rec = db.execute(select(AuditRecord).where(AuditRecord.entity == "credential", AuditRecord.entity_id == str(c["id"]),
                                               AuditRecord.field == "number")).scalar_one()
    assert rec.new == "MT-BC 012345" and rec.actor == "admin@example.org"
    # the therapists page: credentialed, and a warning since the newest credential still lasts three years
    rows = {x["email"]: x for x in world.api("GET", "/therapists", "manager").get_json()}
    assert rows["therapist@example.org"]["credentialed"] and not rows["therapist@example.org"]["warning"]
    assert {c["kind"] for c in rows["therapist@example.org"]["credentials"]} == {"MTG-AT", "MT-BC"}
    assert world.api("GET", "/therapists", "assessor").status_code == 403


def test_the_therapists_list_warns_sixty_days_before_the_last_credential_expires(world, db):
    t2 = add_user(world, "therapist2", [("therapist", "AT01")])
    world.credential(t2, kind="HCPC", valid_to=today() + dt.timedelta(days=59))
    t3 = add_user(world, "therapist3", [("therapist", "NO01")])
    world.credential(t3, kind="MT-NMF", valid_to=today() + dt.timedelta(days=61))
    world.db.commit()
    rows = {x["email"]: x for x in world.api("GET", "/therapists", "admin").get_json()}
    assert rows["therapist2@example.org"]["warning"] is True
    assert rows["therapist2@example.org"]["credentials"][0]["days_left"] == 59
    assert rows["therapist3@example.org"]["warning"] is False
    # a coordinator sees only their site's therapists
    assert {x["email"] for x in world.api("GET", "/therapists", "coordinator").get_json()} == \
        {"therapist@example.org", "therapist2@example.org"}


# --- session content and goals ---------------------------------------------------------------

def test_techniques_outside_the_protocol_and_bad_presence_are_refused_naming_the_field(world, kids, db):
    before = counts(db)
    r = session(world, kids["low"], d(20), techniques=["songs", "dance_therapy"])
    assert r.status_code == 400
    assert "Techniques must be a list drawn from the protocol's techniques" in err(r)["message"]
    assert "dance_therapy is not one of them" in err(r)["fields"]["techniques"]
    r = session(world, kids["low"], d(20), present="grandparent")
    assert r.status_code == 400 and "present" in err(r)["fields"] and "Present must be one of" in err(r)["message"]
    r = session(world, kids["low"], d(20), attendance="cancelled", minutes=None, present="child")
    assert r.status_code == 400 and "present" in err(r)["fields"]
    r = session(world, kids["low"], d(20), goals=["eye_contact"])
    assert r.status_code == 400 and "no goals are set for this child yet" in err(r)["fields"]["goals"]
    assert counts(db) == before


def test_goals_are_set_after_the_first_session_worked_on_counted_and_revised_with_audit(world, kids, db):
    low = kids["low"]
    body = {"goals": [{"goal": "eye_contact", "description": "Looks up when the drum pauses"},
                      {"goal": "turn_taking"}]}
    r = world.api("POST", f"/participants/{low.study_id}/goals", "therapist", json=body)
    assert r.status_code == 409 and "after the first (assessment) session" in err(r)["message"]
    assert session(world, low, d(40), present="child_and_parent", techniques=["free_improvisation"]).status_code == 201
    for bad, why in (({"goals": [{"goal": "flying"}]}, "one of the protocol's goals"), ({"goals": []}, "at least one"),
                     ({"goals": [{"goal": "eye_contact"}, {"goal": "eye_contact"}]}, "listed twice")):
        r = world.api("POST", f"/participants/{low.study_id}/goals", "therapist", json=bad)
        assert r.status_code == 400 and why in err(r)["message"], r.get_json()
    assert world.api("POST", f"/participants/{low.study_id}/goals", "coordinator", json=body).status_code == 403
    # a usual-care child is not among the therapist's children at all
    assert world.api("POST", f"/participants/{kids['usual'].study_id}/goals", "therapist", json=body).status_code == 404
    r = world.api("POST", f"/participants/{low.study_id}/goals", "therapist", json={**body, "set_on": d(41).isoformat()})
    assert r.status_code == 400 and "before the first attended session" in err(r)["message"]
    r = world.api("POST", f"/participants/{low.study_id}/goals", "therapist", json={**body, "set_on": d(40).isoformat()})
    assert r.status_code == 201, r.get_json()
    assert {g["set_on"] for g in r.get_json()} == {d(40).isoformat()}
    goals = {g["goal"]: g for g in r.get_json()}
    assert goals["eye_contact"]["description"] == "Looks up when the drum pauses"
    assert world.api("POST", f"/participants/{low.study_id}/goals", "therapist", json=body).status_code == 409
    # sessions work on the goals; one outside the child's goals is refused
    assert session(world, low, d(33), goals=["eye_contact", "turn_taking"], present="child").status_code == 201
    assert session(world, low, d(26), goals=["eye_contact"]).status_code == 201
    r = session(world, low, d(19), goals=["vocalization"])
    assert r.status_code == 400 and "are not goals set for this child: Vocalization" in err(r)["fields"]["goals"]
    c = world.api("GET", f"/participants/{low.study_id}/course", "coordinator").get_json()
    assert {g["goal"]: g["sessions"] for g in c["goals"]} == {"eye_contact": 2, "turn_taking": 1}
    assert c["sessions"][0]["present"] == "child_and_parent"
    # revised: the description, then no longer pursued, each with its reason in the audit trail
    gid = goals["turn_taking"]["id"]
    r = world.api("POST", f"/goals/{gid}/revisions", "therapist", json={"description": "Waits for a turn on the xylophone"})
    assert r.status_code == 400 and "reason" in err(r)["fields"]
    r = world.api("POST", f"/goals/{gid}/revisions", "therapist",
                  json={"description": "Waits for a turn on the xylophone", "reason": "made concrete after session 3"})
    assert r.status_code == 200 and r.get_json()["description"] == "Waits for a turn on the xylophone"
    r = world.api("POST", f"/goals/{gid}/revisions", "therapist", json={"active": False, "reason": "reached"})
    assert r.status_code == 200 and r.get_json()["active"] is False
    recs = db.execute(select(AuditRecord).where(AuditRecord.entity == "child_goal", AuditRecord.entity_id == str(gid),
                                                AuditRecord.action == "revise")).scalars().all()
    assert [(x.field, x.reason) for x in recs] == [("description", "made concrete after session 3"), ("active", "reached")]
    assert all(x.reveals_allocation for x in recs)
    r = session(world, low, d(12), goals=["turn_taking"])
    assert r.status_code == 400, "a goal no longer pursued is not offered for new sessions"


# --- blinding --------------------------------------------------------------------------------

def test_blinded_roles_see_nothing_of_the_intervention_as_delivered(world, kids, db):
    low = kids["low"]
    assert session(world, low, d(40)).status_code == 201
    r = world.api("POST", f"/participants/{low.study_id}/goals", "therapist", json={"goals": [{"goal": "eye_contact"}]})
    gid = r.get_json()[0]["id"]
    for who in ("assessor", "statistician", "admin"):
        assert world.api("GET", "/fidelity", who).status_code == 403, who
        assert world.api("GET", "/fidelity/draws", who).status_code == 403, who
        assert world.api("GET", "/fidelity/due", who).status_code == 403, who
        assert world.api("POST", "/fidelity/draws", who, json={}).status_code == 403, who
        assert world.api("POST", f"/goals/{gid}/revisions", who, json={"active": False, "reason": "x"}).status_code in (403, 404)
        assert world.api("POST", f"/participants/{low.study_id}/goals", who,
                         json={"goals": [{"goal": "turn_taking"}]}).status_code in (403, 404)
        assert world.api("GET", f"/participants/{low.study_id}/course", who).status_code in (403, 404)
    assert world.api("GET", "/therapists", "assessor").status_code == 403
    # the assessor's view of the child and the audit trail carry no word of goals or fidelity
    body = world.api("GET", f"/participants/{low.study_id}", "assessor").get_data(as_text=True)
    assert "eye_contact" not in body and "goal" not in body


# --- fidelity --------------------------------------------------------------------------------

@pytest.fixture()
def rated_world(world, kids, db):
    """Twelve attended sessions of the low- and high-arm children by the world's therapist, and a
    second credentialed therapist at the site to rate them."""
    n = 0
    for p in (kids["low"], kids["high"]):
        for i in range(6):
            assert session(world, p, d(50 - 3 * i)).status_code == 201
            n += 1
    t2 = add_user(world, "therapist2", [("therapist", "AT01")])
    world.credential(t2, kind="HCPC")
    world.db.commit()
    return kids


def test_the_fidelity_sample_is_drawn_per_therapist_audited_and_derived_again_from_its_seed(world, rated_world, db):
    for who in ("therapist", "coordinator", "monitor"):
        assert world.api("POST", "/fidelity/draws", who, json={}).status_code == 403
    r = world.api("POST", "/fidelity/draws", "manager", json={})
    assert r.status_code == 201, r.get_json()
    (draw,) = r.get_json()
    assert draw["therapist"] == "therapist@example.org" and len(draw["population"]) == 12
    assert draw["size"] == 2  # ceil(0.1 x 12)
    assert draw["sample"] == fidelity.derive(draw["seed"], draw["population"], draw["size"])
    assert set(draw["sample"]) <= set(draw["population"])
    rec = db.execute(select(AuditRecord).where(AuditRecord.entity == "fidelity_draw", AuditRecord.field == "seed")).scalar_one()
    assert rec.new == draw["seed"] and rec.reveals_allocation
    assert fidelity.verify(db) == []
    # a session already drawn from is never drawn again; a new one enters the next draw
    assert world.api("POST", "/fidelity/draws", "manager", json={}).get_json() == []
    assert session(world, rated_world["low"], d(5)).status_code == 201
    (second,) = world.api("POST", "/fidelity/draws", "manager", json={}).get_json()
    assert len(second["population"]) == 1 and second["size"] == 1
    # a sample changed on record is found out
    db.execute(delete(FidelitySample).where(FidelitySample.session_id == draw["sample"][0]))
    db.flush()
    assert any("is not what the seed draws" in p for p in fidelity.verify(db))


def test_a_therapist_cannot_rate_their_own_session_and_ratings_are_checked(world, rated_world, db):
    (draw,) = world.api("POST", "/fidelity/draws", "manager", json={}).get_json()
    sid = draw["sample"][0]
    scores = {"follows_lead": 5, "attunement": 4, "affect_sharing": 4, "joint_attention": 3, "reciprocity": 4}
    before = counts(db)
    r = world.api("POST", f"/sessions/{sid}/fidelity", "therapist", json={"scores": scores})
    assert r.status_code == 403 and "another therapist rates it" in err(r)["message"]
    r = world.api("POST", f"/sessions/{sid}/fidelity", "therapist2", json={"scores": {**scores, "attunement": 6}})
    assert r.status_code == 400 and "Musical attunement to the child's expression must be a whole number from 1 to 5" in err(r)["message"]
    r = world.api("POST", f"/sessions/{sid}/fidelity", "therapist2", json={"scores": {"follows_lead": 5}})
    assert r.status_code == 400 and set(err(r)["fields"]) == set(scores) - {"follows_lead"}
    unsampled = next(s for s in draw["population"] if s not in draw["sample"])
    r = world.api("POST", f"/sessions/{unsampled}/fidelity", "therapist2", json={"scores": scores})
    assert r.status_code == 409 and "was not drawn" in err(r)["message"]
    for who in ("assessor", "coordinator"):
        assert world.api("POST", f"/sessions/{sid}/fidelity", who, json={"scores": scores}).status_code in (403, 404)
    assert counts(db) == before
    due = world.api("GET", "/fidelity/due", "therapist2").get_json()
    assert sorted(x["session"] for x in due) == draw["sample"]
    assert world.api("GET", "/fidelity/due", "therapist").get_json() == []  # their own sessions
    r = world.api("POST", f"/sessions/{sid}/fidelity", "therapist2", json={"scores": scores, "note": "Clear lead-following"})
    assert r.status_code == 201 and r.get_json()["mean"] == 4.0 and r.get_json()["adherent"] is True
    assert world.api("POST", f"/sessions/{sid}/fidelity", "therapist2", json={"scores": scores}).status_code == 409
    other = draw["sample"][1]
    low = {k: 2 for k in scores}
    assert world.api("POST", f"/sessions/{other}/fidelity", "therapist2", json={"scores": low}).get_json()["adherent"] is False
    rep = world.api("GET", "/fidelity", "manager").get_json()
    assert (rep["sampled"], rep["rated"]) == (2, 2)
    assert rep["by_therapist"] == [{"therapist": "therapist@example.org", "name": "Therapist", "site": "AT01", "sampled": 2,
                                    "rated": 2, "adherent": 1, "mean_score": 3.0, "share_adherent": 0.5}]
    assert sum(m["rated"] for m in rep["by_month"]) == 2
    assert world.api("GET", "/fidelity?site=NO01", "manager").get_json()["sampled"] == 0


def test_a_rater_without_a_valid_credential_is_refused(world, rated_world, db):
    (draw,) = world.api("POST", "/fidelity/draws", "manager", json={}).get_json()
    add_user(world, "therapist3", [("therapist", "AT01")])
    scores = {"follows_lead": 5, "attunement": 4, "affect_sharing": 4, "joint_attention": 3, "reciprocity": 4}
    r = world.api("POST", f"/sessions/{draw['sample'][0]}/fidelity", "therapist3", json={"scores": scores})
    assert r.status_code == 409 and err(r)["code"] == "credential"
    assert db.execute(select(func.count()).select_from(FidelityRating)).scalar() == 0


# --- the bundle --------------------------------------------------------------------------------

def test_the_table_of_the_intervention_as_delivered_counts_every_session(world, rated_world, db):
    """The CONSORT 2025 table, counted in the database, against the sessions counted one by one
    here: attended in the course, minutes, active and receptive techniques, a parent present,
    goals worked on; missed sessions count nowhere."""
    from trial.course.models import TherapySession
    from trial.participants.models import Allocation
    low, high = rated_world["low"], rated_world["high"]
    r = world.api("POST", f"/participants/{low.study_id}/goals", "therapist", json={"goals": [{"goal": "eye_contact"}]})
    assert r.status_code == 201, r.get_json()
    for p, days, kw in ((low, 20, {"minutes": 45, "techniques": ["receptive_listening"], "goals": ["eye_contact"]}),
                        (low, 19, {"minutes": 50, "techniques": ["receptive_listening", "songs"],
                                   "present": "child_and_parent"}),
                        (low, 18, {"attendance": "no_show", "minutes": None, "techniques": []}),
                        (high, 17, {"minutes": 40, "techniques": ["free_improvisation", "musical_games"],
                                    "present": "child"}),
                        (high, 16, {"attendance": "cancelled", "minutes": None, "techniques": []}),
                        (high, 15, {"minutes": 55, "present": "child_and_parent"})):
        assert session(world, p, d(days), **kw).status_code == 201, (days, kw)
    table = fidelity.delivered_by_arm(db, world.users["manager"])
    got = {row[0]: dict(zip(table["arms"], row[1:])) for row in table["rows"]}
    cats = {"receptive_listening": "receptive"}
    for arm in ("low", "high"):
        rows = [s for s, a in db.execute(select(TherapySession, Allocation.arm).join(
            Allocation, Allocation.participant_id == TherapySession.participant_id)).all()
                if a == arm and s.attendance == "attended" and not s.outside_course]
        n = len(rows)
        minutes = [s.minutes for s in rows if s.minutes]
        mean = sum(minutes) / len(minutes)
        sd = (sum((m - mean) ** 2 for m in minutes) / (len(minutes) - 1)) ** 0.5
        active = sum(any(cats.get(t, "active") == "active" for t in s.techniques) for s in rows)
        receptive = sum(any(cats.get(t) == "receptive" for t in s.techniques) for s in rows)
        parent = sum(s.present == "child_and_parent" for s in rows)
        goals = sum(bool(s.goals) for s in rows)
        assert got["Sessions attended in the course, total"][arm] == str(n)
        assert got["Minutes per attended session, mean (SD)"][arm] == f"{mean:.1f} ({sd:.1f})"
        assert got["Sessions with active techniques, n (%)"][arm] == f"{active} ({100 * active / n:.1f}%)"
        assert got["Sessions with receptive techniques, n (%)"][arm] == f"{receptive} ({100 * receptive / n:.1f}%)"
        assert got["Sessions with a parent present, n (%)"][arm] == f"{parent} ({100 * parent / n:.1f}%)"
        assert got["Sessions that worked on a goal, n (%)"][arm] == f"{goals} ({100 * goals / n:.1f}%)"
        allocated = db.execute(select(func.count()).select_from(Allocation).where(Allocation.arm == arm)).scalar()
        children = len({s.participant_id for s in rows})
        assert got["Received at least one session in the course, n (%)"][arm] == \
            f"{children} ({100 * children / allocated:.1f}%)"
    assert got["Sessions attended in the course, total"] == {"low": "8", "high": "8", "usual": "—"}
    assert got["Sessions with receptive techniques, n (%)"]["low"] == "2 (25.0%)"
    assert got["Sessions that worked on a goal, n (%)"] == {"low": "1 (12.5%)", "high": "0 (0.0%)", "usual": "—"}


def test_the_intervention_as_delivered_reads_back_from_every_format_and_only_unblinded(world, rated_world, db, tmp_path):
    import pandas as pd
    import pyreadstat

    from tests.test_exports import bundle_files, hard_lock, read_csv
    low = rated_world["low"]
    r = world.api("POST", f"/participants/{low.study_id}/goals", "therapist",
                  json={"goals": [{"goal": "eye_contact", "description": "Looks up when the drum pauses"}]})
    assert r.status_code == 201
    assert session(world, low, d(2), goals=["eye_contact"], present="child_and_parent",
                   techniques=["receptive_listening"]).status_code == 201
    (draw,) = world.api("POST", "/fidelity/draws", "manager", json={}).get_json()
    scores = {"follows_lead": 5, "attunement": 4, "affect_sharing": 4, "joint_attention": 3, "reciprocity": 4}
    for sid in draw["sample"]:
        assert world.api("POST", f"/sessions/{sid}/fidelity", "therapist2", json={"scores": scores}).status_code == 201
    table = world.api("GET", "/intervention-delivered", "manager").get_json()
    assert world.api("GET", "/intervention-delivered", "statistician").status_code == 403
    lock_id = hard_lock(world)
    un = bundle_files(world.api("GET", f"/locks/{lock_id}/bundle.zip", "manager").data)
    bl = bundle_files(world.api("GET", f"/locks/{lock_id}/bundle.zip", "statistician").data)
    # the blinded bundle holds nothing of it, in any file
    assert not any(n.split("/")[-1].split(".")[0] in ("goals", "fiddraw", "fidrate", "intervention_delivered") for n in bl)
    assert not any(b"eye_contact" in v or b"Looks up when the drum" in v or draw["seed"].encode() in v
                   for n, v in bl.items() if n != "protocol.toml")  # (the protocol lists the goals a child may have)
    # the unblinded one: each table the same in CSV, SAS transport and Stata
    expected = {"goals": 1, "fiddraw": 1, "fidrate": len(draw["sample"])}
    for t, n in expected.items():
        head, rows = read_csv(un[f"csv/{t}.csv"])
        assert len(rows) == n, t
        for fmt, reader in (("xpt", pyreadstat.read_xport), ("dta", pyreadstat.read_dta)):
            path = tmp_path / f"{t}.{fmt}"
            path.write_bytes(un[f"{fmt}/{t}.{fmt}"])
            df, _ = reader(str(path))
            assert [c.lower() for c in df.columns] == head and len(df) == n, (t, fmt)
            entries = dictionary_of(un)
            for got, want in zip(df.itertuples(index=False), rows):
                assert [as_csv(g, entries[(t, n)]) for n, g in zip(head, got)] == want, (t, fmt)
    g_head, g_rows = read_csv(un["csv/goals.csv"])
    goals = dict(zip(g_head, g_rows[0]))
    assert (goals["goal"], goals["descr"], goals["active"]) == ("eye_contact", "Looks up when the drum pauses", "1")
    fd = dict(zip(read_csv(un["csv/fiddraw.csv"])[0], read_csv(un["csv/fiddraw.csv"])[1][0]))
    assert fd["seed"] == draw["seed"] and int(fd["size"]) == len(draw["sample"])
    fr_head, fr_rows = read_csv(un["csv/fidrate.csv"])
    assert [float(dict(zip(fr_head, r))["fidmean"]) for r in fr_rows] == [4.0] * len(draw["sample"])
    sess_head, sess_rows = read_csv(un["csv/sessions.csv"])
    last = dict(zip(sess_head, [r for r in sess_rows if r[0] == low.study_id][-1]))
    assert (last["present"], last["goals"], last["techniq"]) == ("child_and_parent", "eye_contact", "receptive_listening")
    assert last["therap"] == f"T{world.users['therapist'].id:04d}"
    # the CONSORT 2025 table in the bundle is the one the manager reads
    delivered = pd.read_csv(io.BytesIO(un["reports/intervention_delivered.csv"]), dtype=str, keep_default_na=False)
    assert list(delivered.columns) == table["columns"] and delivered.values.tolist() == table["rows"]
    assert b"goals" in un["odm/snapshot.xml"] or b"IG.GOALS" in un["odm/snapshot.xml"]
