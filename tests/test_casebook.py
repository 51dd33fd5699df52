"""The casebook PDF and the audit trail export (issue 29): pdftotext of the casebook carries every
value (with its label and unit), every change with its reason, the query threads, forms not done with
their reasons, sign-offs and randomization errors; the blinded casebook names no arm in any language
and no session, and is the same text whatever the child's arm (a differential test); who gets what."""
from __future__ import annotations

import csv
import datetime as dt
import io
import re
import subprocess
import tempfile

import pytest
from sqlalchemy import delete, select, update

from tests.helpers import CLI, PASSWORD, backdate_randomization, randomized_before
from trial.course import service as course
from trial.course.models import TherapySession
from trial.esign.models import Signature
from trial.outcomes import notdone
from trial.outcomes import service as outcomes
from trial.outcomes.models import NotDone
from trial.oversight import auditexport, casebook, signoff
from trial.oversight.models import CasebookSignoff
from trial.participants.models import Allocation, Assessment, StatusEvent
from trial.protocol.service import current as current_protocol
from trial.queries import service as queries
from trial.randomize.models import RandomizationError
from trial.safety import service as safety
from trial.safety.models import AdverseEvent
from trial.sites.models import Site
from trial.status.service import record_event

SEED = bytes(range(32))
TODAY = dt.date.today()
R = TODAY - dt.timedelta(days=200)
NOW = dt.datetime(2026, 12, 1, 9, 30)


def investigator(world):
    """The site's investigator (AT01), made here when the world has none."""
    if "investigator" not in world.users:
        from trial.auth import service as users
        u = users.create_user(world.db, CLI, "investigator@example.org", "Investigator", PASSWORD, [("investigator", "AT01")])
        world.users["investigator"] = u
        world.tokens["investigator"] = users.issue_token(world.db, CLI, u)
        world.db.commit()
    return world.users["investigator"]


def iso(d: dt.date) -> str:
    return d.isoformat()


def text_of(pdf: bytes) -> str:
    assert pdf.startswith(b"%PDF")
    with tempfile.NamedTemporaryFile(suffix=".pdf") as f:
        f.write(pdf)
        f.flush()
        return subprocess.run(["pdftotext", "-raw", f.name, "-"], check=True, capture_output=True).stdout.decode()


def flat(text: str) -> str:
    """The text with its line breaks and runs of spaces as one space (a wrapped value reads whole)."""
    return re.sub(r"\s+", " ", text)


def normalize(text: str) -> str:
    text = re.sub(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} \S+", "<ts>", text)
    return re.sub(r"[0-9a-f]{64}", "<digest>", text)


@pytest.fixture()
def child(world, db):
    """A music-arm child at AT01 with forms, a correction, a form not done, a query thread, sessions,
    an adverse event, a sign-off and a randomization error."""
    db.execute(update(Site).where(Site.code == "AT01").values(timezone="Europe/Vienna"))
    world.open(SEED)
    while True:
        p, arm = randomized_before(world, db, R)
        if arm != "usual":
            break
    backdate_randomization(db, dt.datetime.combine(R, dt.time(10, 0)), p.id)
    a = outcomes.record_assessment(db, CLI, p.study_id, {"visit": "month2", "instrument": "ados2",
                                                         "performed_on": iso(R + dt.timedelta(days=61)),
                                                         "values": {"social_affect": 9, "rrb": 2, "css": 5}})
    outcomes.record_assessment(db, CLI, p.study_id, {"visit": "month2", "instrument": "srs2",
                                                     "performed_on": iso(R + dt.timedelta(days=60)), "values": {"total_t": 71}})
    db.commit()
    outcomes.correct_assessment(db, CLI, a.id, {"values": {"rrb": 3}, "reason": "transcription error on the sheet"})
    notdone.record_not_done(db, CLI, p.study_id, {"visit": "month5", "instrument": "srs2", "reason": "child_unwell"})
    q = queries.raise_query(db, world.users["monitor"], {"study_id": p.study_id, "on": {"kind": "assessment", "id": a.id,
                                                                                         "field": "css"},
                                                          "text": "Please check the comparison score."})
    db.commit()
    queries.respond(db, world.users["assessor"], q.id, {"text": "Checked against the source: correct."})
    course.log_session(db, CLI, p.study_id, {"held_on": iso(R + dt.timedelta(days=3)), "attendance": "attended",
                                             "minutes": 40, "note": "drumming together"})
    safety.record(db, world.users["coordinator"], p.study_id, {
        "term": "Otitis media", "onset": iso(R + dt.timedelta(days=50)), "severity": "mild", "serious": False,
        "relatedness": "not_related", "outcome": "recovered", "resolved_on": iso(R + dt.timedelta(days=60))})
    record_event(db, CLI, p.study_id, {"type": "discontinued_intervention", "on": iso(R + dt.timedelta(days=90)),
                                       "reason": "distressed by the sessions"})
    inv = investigator(world)
    sig = Signature(user_id=inv.id, printed_name=inv.name, email=inv.email, purpose="casebook",
                    meaning="I have reviewed this casebook and confirm its data", signed_at=NOW)
    db.add(sig)
    db.flush()
    db.add(RandomizationError(participant_id=p.id, kind="wrong_stratum", field="age_band", as_randomized="young",
                              correct_value="old", text="age computed from the wrong date", recorded_by_id=None))
    month5 = next(m for m in signoff.milestones(db) if m["key"] == "month5")  # what it covers, as signed
    db.add(CasebookSignoff(participant_id=p.id, milestone="month5", signature_id=sig.id, signed_by_id=inv.id,
                           signed_at=NOW, covered_seq=1,
                           covered_digest=signoff.digest(db, p, month5, signoff.local_date(NOW, "Europe/Vienna"))))
    db.commit()
    return p


def pdf_as(world, who: str, study_id: str, web: bool = False):
    world.db.commit()
    if web:
        c = world.app.test_client()
        assert c.post("/login", data={"email": f"{who}@example.org", "password": PASSWORD}).status_code in (302, 200)
        return c.get(f"/participants/{study_id}/casebook.pdf")
    return world.api("GET", f"/participants/{study_id}/casebook.pdf", who)


def test_the_full_casebook_carries_every_value_and_every_change(world, db, child):
    r = pdf_as(world, "manager", child.study_id)
    assert r.status_code == 200 and r.mimetype == "application/pdf"
    text = text_of(r.data)
    one = flat(text)
    words = current_protocol(db).content
    for a in db.execute(select(Assessment).where(Assessment.participant_id == child.id)).scalars():
        ins = next(i for i in words["instruments"] if i["key"] == a.instrument)
        visit = next(v for v in words["visits"] if v["key"] == a.visit)
        assert f"{visit['label']} · {ins['label']}" in one
        for f in ins["fields"]:
            value = f"{a.values[f['key']]} {f.get('units') or ''}".strip()
            assert re.search(re.escape(f["label"]) + r"\s+" + re.escape(value), one), (f["label"], value)
    assert "T-score" in one  # the unit
    # every change with old → new and every reason of the audit trail
    assert "3 → " not in one and "2 → 3" in one
    for rec in auditexport.participant_trail(db, CLI, child.study_id, "en")[2]:
        if rec["reason"]:
            assert flat(rec["reason"]) in one, rec["reason"]
    assert "transcription error on the sheet" in one
    assert "Child unwell" in one  # the form not done, with its reason
    assert "Please check the comparison score." in one and "Checked against the source: correct." in one
    assert "I have reviewed this casebook and confirm its data" in one and "valid" in one
    assert "out of date" not in one  # the fixture's signature covers the data as they are
    assert "age computed from the wrong date" in one and "young → old" in one
    arm = db.execute(select(Allocation.arm).where(Allocation.participant_id == child.id)).scalar()
    assert next(x["label"] for x in words["arms"] if x["key"] == arm) in one
    assert "drumming together" in one and "Otitis media" in one and "distressed by the sessions" in one
    # the running header, page numbers and the digest on the last page
    pages = text.split("\f")
    pages = [pg for pg in pages if pg.strip()]
    assert len(pages) >= 2
    for n, pg in enumerate(pages, 1):
        assert child.study_id in pg and f"page {n} of {len(pages)}" in pg
        assert re.search(r"Printed \d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} CE", pg)  # Vienna's time
    cb = casebook.casebook(db, CLI, child.study_id, "en", NOW)
    assert cb.digest in pages[-1] and cb.digest not in pages[0]


def test_the_casebook_is_in_the_readers_language(world, db, child):
    for language, word in (("he", "סירוב"), ("ko", "음악치료")):
        pdf = casebook.casebook_pdf(db, CLI, child.study_id, language, NOW)
        text = text_of(pdf)
        assert child.study_id in text
        if language == "ko":
            arm = db.execute(select(Allocation.arm).where(Allocation.participant_id == child.id)).scalar()
            label = next(x for x in current_protocol(db).content["arms"] if x["key"] == arm)["labels"]["ko"]
            assert label.replace(" ", "") in text.replace(" ", "")


def test_the_casebooks_units_are_in_the_readers_language(world, db, child):
    """A value's unit in the protocol's words for the reader's language (units_labels), not in English."""
    srs2 = next(i for i in current_protocol(db).content["instruments"] if i["key"] == "srs2")
    total = next(f for f in srs2["fields"] if f["key"] == "total_t")
    german = total["units_labels"]["de"]
    assert german != total["units"]
    one = flat(text_of(casebook.casebook_pdf(db, CLI, child.study_id, "de", NOW)))
    assert f"71 {german}" in one
    assert total["units"] not in one


def arm_labels(db) -> list[str]:
    out = []
    for a in current_protocol(db).content["arms"]:
        out.append(a["label"])
        out.extend((a.get("labels") or {}).values())
    return out


def test_the_blinded_casebook_names_no_arm_and_no_session(world, db, child):
    r = pdf_as(world, "assessor", child.study_id)
    assert r.status_code == 200
    text = text_of(r.data)
    one = flat(text)
    assert "Casebook (blinded)" in one
    for label in arm_labels(db):
        assert label not in one
    trial_name = current_protocol(db).content["trial"]["name"]
    assert trial_name in one
    rest = one.replace(trial_name, "")  # the trial's name is the same for every child
    # (the screening's criteria may name music therapy: they are the same for every child)
    for word in ("drumming together", "Otitis media", "distressed by the sessions", "Sessions", "Therapy session",
                 "minutes", "Allocated arm", "Adverse event", "Allocation", "Discontinued", "Counselling"):
        assert word not in rest, word
    # what the assessor may read is there: the forms, the correction and its reason, the query thread
    assert "transcription error on the sheet" in one and "Checked against the source: correct." in one
    for language in ("de", "he", "ko", "pt_BR"):
        t = text_of(casebook.casebook_pdf(db, world.users["assessor"], child.study_id, language, NOW))
        for label in arm_labels(db):
            assert label not in t and label.replace(" ", "") not in t.replace(" ", "")


def test_the_blinded_casebook_is_the_same_whatever_the_arm(world, db, child):
    """Differential: the child's allocation is swapped (and what it caused removed); the assessor's
    casebook reads the same, the manager's does not. The unblinded staff's words follow the arm too:
    a status event's reason, the text of a coordinator's form not done, a correction (values and
    reason) of the parents' questionnaire, and a sign-off invalidated by a session's change."""
    assessor = world.users["assessor"]
    srs2 = db.execute(select(Assessment).where(Assessment.participant_id == child.id,
                                               Assessment.instrument == "srs2")).scalar_one()
    nd = db.execute(select(NotDone).where(NotDone.participant_id == child.id, NotDone.instrument == "srs2")).scalar_one()
    event = StatusEvent(participant_id=child.id, type="lost_to_follow_up", on=R + dt.timedelta(days=190), reason="")
    db.add(event)
    so = db.execute(select(CasebookSignoff).where(CasebookSignoff.participant_id == child.id)).scalar_one()
    db.commit()

    def both():
        db.commit()
        return (normalize(text_of(casebook.casebook_pdf(db, assessor, child.study_id, "en", NOW))),
                normalize(text_of(casebook.casebook_pdf(db, world.users["manager"], child.study_id, "en", NOW))))

    blinded = {}
    unblinded = {}
    arms = [a["key"] for a in current_protocol(db).content["arms"]]
    for arm in arms:
        db.execute(update(Allocation).where(Allocation.participant_id == child.id).values(arm=arm))
        if arm == "usual":  # what the allocation caused is gone in usual care
            db.execute(delete(TherapySession).where(TherapySession.participant_id == child.id))
            for ae in db.execute(select(AdverseEvent).where(AdverseEvent.participant_id == child.id)).scalars():
                ae.follow_ups.clear()
                ae.reports.clear()
                db.delete(ae)
            db.execute(delete(StatusEvent).where(StatusEvent.participant_id == child.id,
                                                 StatusEvent.type == "discontinued_intervention"))
        words = {"music": "the sessions tired him", "usual": "no therapy on offer"}.get(arm, f"said {arm}")
        event.reason, nd.text = f"moved away: {words}", f"parents declined: {words}"
        outcomes.correct_assessment(db, CLI, srs2.id, {"values": {"total_t": 60 + len(words)},
                                                       "reason": f"the parents corrected it: {words}"})
        if arm == "usual":
            so.status, so.invalidated_at, so.invalidated_change = "valid", None, None
        else:
            signoff.invalidate(db, so, signoff._change(db, "therapy_session", "correct", None), None)
        blinded[arm], unblinded[arm] = both()
        for text in (words, str(60 + len(words))):
            assert text not in blinded[arm], text
    assert len(set(blinded.values())) == 1, "the blinded casebook depends on the allocation"
    assert len(set(unblinded.values())) == len(arms)  # control: the unblinded one names the arm


def test_who_gets_the_casebook(world, db, child):
    assert pdf_as(world, "manager", child.study_id).status_code == 200
    assert pdf_as(world, "coordinator", child.study_id).status_code == 200
    assert pdf_as(world, "monitor", child.study_id).status_code == 200
    assert pdf_as(world, "investigator", child.study_id).status_code == 200
    other = pdf_as(world, "coordinator_no", child.study_id)
    unknown = pdf_as(world, "coordinator_no", "AT01-9999")
    assert other.status_code == unknown.status_code == 404 and other.data == unknown.data
    assert pdf_as(world, "admin", child.study_id).status_code in (403, 404)
    assert pdf_as(world, "statistician", child.study_id).status_code in (403, 404)
    assert pdf_as(world, "manager", "AT01-9999").status_code == 404


def test_the_participant_page_links_the_casebook_and_the_audit_trail(world, db, child):
    db.commit()
    for who, audit_link in (("manager", True), ("assessor", False)):
        c = world.app.test_client()
        c.post("/login", data={"email": f"{who}@example.org", "password": PASSWORD})
        page = c.get(f"/participants/{child.study_id}").get_data(as_text=True)
        assert f"/participants/{child.study_id}/casebook.pdf" in page
        assert (f"/participants/{child.study_id}/audit.csv" in page) is audit_link
        r = c.get(f"/participants/{child.study_id}/casebook.pdf")
        assert r.status_code == 200 and r.mimetype == "application/pdf"


def test_the_audit_trail_export_is_readable(world, db, child):
    db.commit()
    r = world.api("GET", f"/participants/{child.study_id}/audit.csv", "manager")
    assert r.status_code == 200 and r.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(r.data.decode("utf-8-sig"))))
    assert rows and set(rows[0]) == {"When", "Who", "Participant", "Record", "Action", "Field", "Old value", "New value",
                                     "Reason"}
    fix = next(x for x in rows if x["Reason"] == "transcription error on the sheet")
    assert fix["Field"] == "Restricted and repetitive behaviour" or fix["Field"] != "values.rrb"
    assert (fix["Old value"], fix["New value"]) == ("2", "3") and fix["Action"] == "Corrected"
    assert fix["Record"].startswith("Form: ") and re.match(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} CE", fix["When"])
    assert not any(x["Field"].startswith("values.") or "_" in x["Record"] for x in rows)  # labels, not keys
    assert any(x["Record"] == "Therapy session" for x in rows)  # the manager reads the unblinded trail
    # a reader who does not read audit trails: 403; a reader who may not see the child: 404 as for none
    assert world.api("GET", f"/participants/{child.study_id}/audit.csv", "coordinator").status_code == 403
    assert world.api("GET", f"/participants/{child.study_id}/audit.csv", "assessor").status_code == 403
    assert world.api("GET", "/participants/AT01-9999/audit.csv", "manager").status_code == 404
    inv = world.api("GET", f"/participants/{child.study_id}/audit.csv", "investigator")
    assert inv.status_code == 200
    # the web's CSV and PDF, of the child and of the site
    c = world.app.test_client()
    c.post("/login", data={"email": "manager@example.org", "password": PASSWORD})
    pdf = c.get(f"/participants/{child.study_id}/audit.pdf")
    assert pdf.status_code == 200 and "transcription error on the sheet" in flat(text_of(pdf.data))
    site_csv = c.get("/sites/AT01/audit.csv")
    assert site_csv.status_code == 200 and child.study_id in site_csv.get_data(as_text=True)
    site_pdf = c.get("/sites/AT01/audit.pdf")
    assert site_pdf.status_code == 200 and child.study_id in text_of(site_pdf.data)
    assert "/sites/AT01/audit.pdf" in c.get("/dashboard/sites/AT01").get_data(as_text=True)


def test_blinded_readers_of_the_trail_get_only_what_they_may_read(world, db, child):
    """The trail's filter of a blinded reader (records that reveal an allocation withheld) and the
    casebook's: an investigator is blinded trial-wide (not a manager), so records that reveal an
    allocation are kept from the export; the manager reads them."""
    _, _, manager_rows, _ = auditexport.participant_trail(db, world.users["manager"], child.study_id, "en")
    _, _, inv_rows, _ = auditexport.participant_trail(db, world.users["investigator"], child.study_id, "en")
    assert any(r["record"] == "Allocation" for r in manager_rows)
    assert len(inv_rows) <= len(manager_rows)
    blinded = casebook.casebook(db, world.users["assessor"], child.study_id, "en", NOW)
    records = {item[1] for item in blinded.document.items if item[0] == "h3"}
    assert not any("Allocation" in r or "Therapy session" in r or "Adverse event" in r or "Status event" in r
                   for r in records)
