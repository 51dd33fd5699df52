"""Missing data with reasons (issue 29): a form recorded as "not done" by the role that enters it,
with the protocol's reason; it closes the missing-form query with that reason, the check never
raises it again, the worklists stop listing it, an entry afterwards is refused; the bundle's
notdone table and ADSL carry the reason in CSV, SAS transport and Stata; CONSORT counts the
excluded children by it; the blinded bundle never carries the reason's free text."""
from __future__ import annotations

import datetime as dt
import io
import zipfile

import pytest
from sqlalchemy import func, select

from tests.helpers import PASSWORD, backdate_randomization, dictionary_of, randomized_before
from trial.audit.models import AuditRecord
from trial.dataquality.models import DataQuery
from trial.outcomes import service as outcomes
from trial.outcomes.models import NotDone
from trial.participants.models import Participant
from trial.visitplan.service import stale

SEED = bytes(range(32))
TODAY = dt.date.today()
R = TODAY - dt.timedelta(days=200)  # month 2 and month 5 windows closed; month 12 not open
ADOS = {"social_affect": 10, "rrb": 3, "css": 5}
MEANING = "I approve locking the trial database; the data are complete and final."


def iso(d: dt.date) -> str:
    return d.isoformat()


@pytest.fixture()
def kids(world, db):
    world.open(SEED)
    out = []
    for _ in range(3):
        out.append(randomized_before(world, db, R)[0])
    backdate_randomization(db, dt.datetime.combine(R, dt.time(10, 0)))
    return out


def not_done(world, p, who="assessor", **body):
    world.db.commit()  # hold no transaction while the app answers
    data = {"visit": "month5", "instrument": "ados2", "reason": "child_unwell", **body}
    return world.api("POST", f"/participants/{p.study_id}/not-done", who, json=data)


def counts(db) -> tuple[int, int]:
    db.commit()
    return (db.execute(select(func.count()).select_from(NotDone)).scalar(),
            db.execute(select(func.count()).select_from(AuditRecord)).scalar())


def test_a_form_not_done_before_its_query_is_raised_is_never_queried(world, db, kids):
    p = kids[1]
    assert not_done(world, p, reason="lost_to_follow_up").status_code == 201
    db.expire_all()
    outcomes.check_missing_forms(db, [db.get(Participant, p.id)])
    db.commit()
    assert not db.execute(select(DataQuery).where(DataQuery.participant_id == p.id, DataQuery.visit == "month5",
                                                  DataQuery.instrument == "ados2")).first()
    assert db.execute(select(DataQuery).where(DataQuery.participant_id == p.id, DataQuery.visit == "month5",
                                              DataQuery.instrument == "srs2")).first() is not None
    # the daily run's candidates (the database's set query) leave it out too
    stmt = select(Participant).where(Participant.id == kids[0].id)
    kid = kids[2]
    assert not_done(world, kid, visit="month2").status_code == 201
    assert not_done(world, kid, "coordinator", instrument="srs2", visit="month2", reason="refused").status_code == 201
    assert not_done(world, kid).status_code == 201
    assert not_done(world, kid, "coordinator", instrument="srs2", reason="refused").status_code == 201
    assert outcomes.missing_form_candidates(db, select(Participant).where(Participant.id == kid.id)) == []
    assert outcomes.missing_form_candidates(db, stmt) != []  # a child with its forms simply missing


def test_the_assessor_records_a_blinded_form_not_done_and_its_query_closes_with_the_reason(world, db, kids):
    p = kids[0]
    raised = outcomes.check_missing_forms(db, [db.get(Participant, p.id)])
    db.commit()
    assert raised >= 2  # month 2 and month 5 of each form
    q = db.execute(select(DataQuery).where(DataQuery.participant_id == p.id, DataQuery.visit == "month5",
                                           DataQuery.instrument == "ados2")).scalar_one()
    assert q.status == "open"
    r = not_done(world, p)
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert body["reason"] == "child_unwell" and body["visit"] == "month5" and body["instrument"] == "ados2"
    db.expire_all()
    q = db.get(DataQuery, q.id)
    assert q.status == "closed" and q.open_key is None
    last = q.messages[-1]
    assert last.action == "close" and "Child unwell" in last.text
    # audited in the same transaction
    assert db.execute(select(AuditRecord).where(AuditRecord.entity == "not_done")).scalars().first() is not None
    # the check never raises it again, even at a later day
    outcomes.check_missing_forms(db, [db.get(Participant, p.id)], TODAY + dt.timedelta(days=30))
    db.commit()
    assert db.execute(select(func.count()).select_from(DataQuery).where(
        DataQuery.participant_id == p.id, DataQuery.visit == "month5", DataQuery.instrument == "ados2")).scalar() == 1
    assert stale(db, [p.id]) == []
    # an entry afterwards is refused, naming the reason
    db.commit()
    r = world.api("POST", f"/participants/{p.study_id}/assessments", "assessor",
                  json={"visit": "month5", "instrument": "ados2", "performed_on": iso(R + dt.timedelta(days=150)),
                        "values": ADOS})
    assert r.status_code == 409 and "not done" in r.get_json()["error"]["message"]
    # the schedule says so
    visits = world.api("GET", f"/participants/{p.study_id}/visits", "assessor").get_json()["visits"]
    m5 = next(v for v in visits if v["visit"] == "month5")
    assert m5["instruments_not_done"] == ["ados2"] and m5["status"] == "not_done"


def test_the_worklists_stop_listing_a_form_not_done(world, db, kids):
    p = kids[0]
    db.commit()

    def overdue():
        return {(v["study_id"], v["visit"]) for v in world.api("GET", "/visits?kind=overdue", "assessor").get_json()}
    assert (p.study_id, "month5") in overdue()
    assert not_done(world, p).status_code == 201
    assert (p.study_id, "month5") not in overdue()
    assert (p.study_id, "month2") in overdue()  # only the form not done left the list
    # the coordinator's list still has the month-5 visit: its own form (srs2) is still missing there
    coord = {(v["study_id"], v["visit"]) for v in world.api("GET", "/visits?kind=overdue", "coordinator").get_json()}
    assert (p.study_id, "month5") in coord


@pytest.mark.parametrize("who, instrument, status", [
    ("coordinator", "ados2", 403),       # a blinded form: the assessor's
    ("assessor", "srs2", 403),           # an unblinded form: the coordinator's
    ("therapist", "ados2", 403),
    ("monitor", "ados2", 403),
    ("manager", "ados2", 403),
    ("statistician", "ados2", 403),
    ("coordinator_no", "srs2", 404),     # the coordinator of another site: no such child
])
def test_only_the_role_that_enters_the_form_records_it_not_done(world, db, kids, who, instrument, status):
    before = counts(db)
    r = not_done(world, kids[0], who, instrument=instrument)
    assert r.status_code == status, r.get_json()
    assert counts(db) == before


def test_the_coordinator_records_an_unblinded_form(world, db, kids):
    r = not_done(world, kids[0], "coordinator", instrument="srs2", reason="family_could_not_attend")
    assert r.status_code == 201, r.get_json()


@pytest.mark.parametrize("body, fields, words", [
    ({"instrument": "nope"}, {"instrument"}, "ADOS-2"),
    ({"visit": "nope"}, {"visit"}, "5 months"),
    ({"reason": "bored"}, {"reason"}, "Child unwell"),
    ({"reason": "other"}, {"text"}, "required"),
    ({"reason": "other", "text": "x" * 1001}, {"text"}, "1000"),
    ({"reason": "other", "text": "bad\x07bell"}, {"text"}, "control"),
    ({"reason": 5, "instrument": None}, {"reason", "instrument"}, ""),
])
def test_bad_input_is_refused_naming_the_fields_and_changes_nothing(world, db, kids, body, fields, words):
    before = counts(db)
    r = not_done(world, kids[0], **body)
    assert r.status_code == 400, r.get_json()
    err = r.get_json()["error"]
    assert fields <= set(err["fields"]), err
    assert words in err["message"]
    assert counts(db) == before


def test_conflicts(world, db, kids):
    p, q = kids[0], kids[1]
    db.commit()
    ok = world.api("POST", f"/participants/{p.study_id}/assessments", "assessor",
                   json={"visit": "month2", "instrument": "ados2", "performed_on": iso(R + dt.timedelta(days=61)),
                         "values": ADOS, "allocation_guess": "unsure", "guess_confidence": 2})
    assert ok.status_code == 201, ok.get_json()
    before = counts(db)
    assert not_done(world, p, visit="month2").status_code == 409            # entered already
    assert not_done(world, p, visit="month12").status_code == 409           # not due yet
    r = not_done(world, p, visit="baseline")                                # randomization needs it
    assert r.status_code == 409 and "randomization" in r.get_json()["error"]["message"]
    assert counts(db) == before
    assert not_done(world, q).status_code == 201
    before = counts(db)
    r = not_done(world, q, reason="refused")
    assert r.status_code == 409 and "already" in r.get_json()["error"]["message"]  # already not done
    assert counts(db) == before
    # a child not randomized: its later visits are not due
    child = world.enroll()
    before = counts(db)
    assert not_done(world, child).status_code == 409
    assert counts(db) == before


def test_the_participant_page_offers_not_done_at_the_forms_place(world, db, kids, app):
    p = kids[0]
    db.commit()
    c = app.test_client()
    c.post("/login", data={"email": "assessor@example.org", "password": PASSWORD})
    page = c.get(f"/participants/{p.study_id}").get_data(as_text=True)
    assert f"/participants/{p.study_id}/not-done?visit=month5&amp;instrument=ados2" in page
    form = c.get(f"/participants/{p.study_id}/not-done?visit=month5&instrument=ados2")
    assert form.status_code == 200 and "Child unwell" in form.get_data(as_text=True)
    bad = c.post(f"/participants/{p.study_id}/not-done", data={"visit": "month5", "instrument": "ados2", "reason": "other",
                                                                 "text": ""})
    assert bad.status_code == 400
    r = c.post(f"/participants/{p.study_id}/not-done", data={"visit": "month5", "instrument": "ados2",
                                                               "reason": "child_unwell", "text": ""})
    assert r.status_code == 302
    db.expire_all()
    assert db.execute(select(NotDone.reason).where(NotDone.participant_id == p.id)).scalar_one() == "child_unwell"
    page = c.get(f"/participants/{p.study_id}").get_data(as_text=True)
    assert "not done" in page
    # the worklist offers it too
    visits = c.get("/visits?kind=overdue").get_data(as_text=True)
    assert f"/participants/{p.study_id}/not-done?visit=month2" in visits


# --- the bundle: ADSL, the notdone table, CSV, XPT and DTA; CONSORT by reason -----------------------

def _files(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = z.namelist()
        prefix = names[0].split("/")[0] + "/"
        return {n[len(prefix):]: z.read(n) for n in names}


def _csv(b: bytes):
    import csv
    rows = list(csv.reader(io.StringIO(b.decode("utf-8"))))
    return rows[0], rows[1:]


def test_the_reason_is_in_adsl_and_the_notdone_table_in_every_format_and_consort_counts_it(world, db, kids, tmp_path):
    import pyreadstat
    p = kids[0]
    assert not_done(world, p, reason="other", text="the family moved to Graz").status_code == 201
    assert not_done(world, kids[1], "coordinator", instrument="srs2", visit="month2",
                    reason="family_could_not_attend").status_code == 201
    c = world.api("GET", "/consort", "manager").get_json()
    arm = next(a for a in c["arms"].values() if a["excluded_from_analysis"]["reasons"].get("not done: Other"))
    assert arm["excluded_from_analysis"]["reasons"]["not done: Other"] == 1
    assert sum(a["excluded_from_analysis"]["reasons"].get("no primary outcome", 0) for a in c["arms"].values()) == 2
    pooled = world.api("GET", "/consort", "statistician").get_json()
    assert any("not done: Other" in a["excluded_from_analysis"]["reasons"] for a in pooled["arms"].values())

    lock = world.api("POST", "/locks", "manager", json={"kind": "hard", "meaning": MEANING, "password": PASSWORD,
                                                       "accept_open_queries": True, "accept_unsigned": True})
    assert lock.status_code == 201, lock.get_json()
    lock_id = lock.get_json()["id"]
    for variant, who in (("unblinded", "manager"), ("blinded", "statistician")):
        r = world.api("GET", f"/locks/{lock_id}/bundle.zip", who)
        assert r.status_code == 200
        files = _files(r.data)
        entries = dictionary_of(files)
        head, rows = _csv(files["analysis/adsl.csv"])
        row = next(x for x in rows if x[head.index("studyid")] == p.study_id)
        assert row[head.index("anr_m5")] == "other" and row[head.index("anr_m2")] == ""
        other = next(x for x in rows if x[head.index("studyid")] == kids[1].study_id)
        srs = [n for n in head if n.endswith("nr_m2") and n != "anr_m2"]
        assert any(other[head.index(n)] == "family_could_not_attend" for n in srs)
        entry = entries[("adsl", "anr_m5")]
        assert "child_unwell = Child unwell" in entry["allowed_values"] and "source" in entry, entry
        nhead, nrows = _csv(files["csv/notdone.csv"])
        mine = next(x for x in nrows if x[0] == p.study_id)
        assert mine[nhead.index("reason")] == "other"
        text = mine[nhead.index("ndtext")]
        if variant == "blinded":
            assert "Graz" not in text and b"Graz" not in b"".join(files.values())
        else:
            assert text == "the family moved to Graz"
        # the SAS transport and Stata files carry the reason (coded, with its label)
        for fmt, reader in (("xpt", pyreadstat.read_xport), ("dta", pyreadstat.read_dta)):
            path = tmp_path / f"{variant}-adsl.{fmt}"
            path.write_bytes(files[f"analysis/adsl.{fmt}"])
            df, meta = reader(str(path))
            cols = {c.lower(): c for c in df.columns}
            i = [str(s) for s in df[cols["studyid"]]].index(p.study_id)
            code = df[cols["anr_m5"]].iloc[i]
            numbered = dict(part.split(" = ") for part in entry["codes_in_dta_xpt"].split("; "))
            assert numbered[str(int(code))] == "other", (fmt, code)
            if fmt == "dta":
                assert meta.variable_value_labels[cols["anr_m5"]][int(code)] == "Other"
            path = tmp_path / f"{variant}-notdone.{fmt}"
            path.write_bytes(files[f"{fmt}/notdone.{fmt}"])
            df, _ = reader(str(path))
            assert len(df) == 2
        for syntax in ("R", "do", "sas", "sps"):
            assert b"notdone" in files[f"syntax/load.{syntax}"]
        assert b"anr_m5" in files["syntax/load.sas"].lower() or b"ANR_M5" in files["syntax/load.sas"]


def test_recording_a_form_not_done_revokes_its_open_survey_links(world, db, kids):
    """The family's open links to that form's survey are revoked (audited); others stay."""
    from trial.consent.models import Survey
    from trial.db import utcnow
    p = kids[0]
    later = utcnow() + dt.timedelta(days=10)
    rows = {key: Survey(participant_id=p.id, visit=visit, instrument="srs2", token_hash=key * 64, language="de",
                        status=status, expires_at=later)
            for key, visit, status in (("a", "month5", "sent"), ("b", "month5", "opened"), ("c", "month2", "sent"),
                                       ("d", "month5", "completed"))}
    db.add_all(rows.values())
    db.commit()
    assert not_done(world, p, "coordinator", instrument="srs2", reason="refused").status_code == 201
    db.expire_all()
    assert {k: db.get(Survey, s.id).status for k, s in rows.items()} == {
        "a": "revoked", "b": "revoked", "c": "sent", "d": "completed"}
    recs = db.execute(select(AuditRecord).where(AuditRecord.entity == "survey", AuditRecord.action == "update",
                                                AuditRecord.new == "revoked")).scalars().all()
    assert sorted(r.entity_id for r in recs) == sorted([str(rows["a"].id), str(rows["b"].id)])


def test_a_mistaken_record_is_retracted_with_a_reason(world, db, kids):
    """Retraction (the same roles, with a reason): audited with what the record said, the form's
    missing-form query reopened, and the form may be entered again."""
    p = kids[0]
    outcomes.check_missing_forms(db, [db.get(Participant, p.id)])
    db.commit()
    r = not_done(world, p, reason="other", text="wrong child")
    assert r.status_code == 201
    nd_id = r.get_json()["id"]
    url = f"/participants/{p.study_id}/not-done/{nd_id}/retract"
    before = counts(db)
    # no reason, another role, another site's reader, an unknown record: refused, nothing changed
    r = world.api("POST", url, "assessor", json={})
    assert r.status_code == 400 and "reason" in r.get_json()["error"]["fields"]
    assert world.api("POST", url, "coordinator", json={"reason": "x"}).status_code == 403
    assert world.api("POST", url, "coordinator_no", json={"reason": "x"}).status_code == 404
    assert world.api("POST", f"/participants/{p.study_id}/not-done/99999/retract", "assessor",
                     json={"reason": "x"}).status_code == 404
    assert counts(db) == before
    r = world.api("POST", url, "assessor", json={"reason": "recorded for the wrong child"})
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.get_json()["text"] == "wrong child"
    db.expire_all()
    assert db.get(NotDone, nd_id) is None
    rec = db.execute(select(AuditRecord).where(AuditRecord.entity == "not_done", AuditRecord.entity_id == str(nd_id),
                                               AuditRecord.action == "delete")).scalars().all()
    assert rec and all(x.reason == "recorded for the wrong child" for x in rec)
    assert {x.field: x.old for x in rec}["text"] == "wrong child"
    q = db.execute(select(DataQuery).where(DataQuery.participant_id == p.id, DataQuery.visit == "month5",
                                           DataQuery.instrument == "ados2")).scalar_one()
    assert q.status == "open" and q.open_key
    # the form can be entered again
    db.commit()
    r = world.api("POST", f"/participants/{p.study_id}/assessments", "assessor",
                  json={"visit": "month5", "instrument": "ados2", "performed_on": iso(R + dt.timedelta(days=160)),
                        "values": ADOS, "allocation_guess": "unsure", "guess_confidence": 2})
    assert r.status_code == 201, r.get_data(as_text=True)
    from trial.audit import service as audit
    assert audit.verify(db).ok
