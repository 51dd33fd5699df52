"""Issue 29's walkthrough of the casebook, the audit export and the sign-off worklist: the
investigator's full casebook and the site's queries, who entered a form, no internal key in the
readable trail, the query's "About", the closure of a missing-form query credited to the user who
recorded the form not done, the milestones of a child whose participation ended, the PDF's metadata,
the worklist's compact layout and the investigator's menu (pdftotext on the PDFs)."""
from __future__ import annotations

import datetime as dt
import re
import subprocess
import tempfile

from sqlalchemy import select

from tests import test_casebook, test_signoff
from tests.helpers import CLI, PASSWORD
from tests.test_casebook import flat, investigator, pdf_as, text_of
from tests.test_signoff import _web, sign
from trial.consent import withdrawal
from trial.dataquality.models import DataQuery, QueryMessage
from trial.outcomes import notdone
from trial.outcomes import service as outcomes
from trial.oversight import auditexport, casebook, signoff
from trial.participants.models import Assessment
from trial.protocol.service import current as current_protocol
from trial.status.service import record_event

NOW = dt.datetime(2026, 12, 1, 9, 30)
child = test_casebook.child  # (the fixtures: a child with every kind of record; children to sign)
kids = test_signoff.kids


def pdfinfo(pdf: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".pdf") as f:
        f.write(pdf)
        f.flush()
        return subprocess.run(["pdfinfo", f.name], check=True, capture_output=True).stdout.decode()


def test_the_investigator_gets_the_full_casebook_and_the_sites_queries(world, db, child):
    investigator(world)
    r = pdf_as(world, "investigator", child.study_id)
    assert r.status_code == 200
    one = flat(text_of(r.data))
    # the queries and the records that reveal the allocation (allocation, sessions) as in the full casebook
    assert "Please check the comparison score." in one and "Checked against the source: correct." in one
    full = flat(text_of(casebook.casebook_pdf(db, CLI, child.study_id, "en")))
    for part in ("Allocation · Randomized", "Therapy session · Created", "Data query · Created"):
        assert part in full and part in one, part
    # the investigator reads the site's queries (as the monitor does), but answers and closes none
    r = world.api("GET", "/queries", "investigator")
    assert r.status_code == 200, r.get_data(as_text=True)
    got = r.get_json()
    assert any(child.study_id in str(q) for q in (got["items"] if isinstance(got, dict) else got))
    c = world.app.test_client()
    c.post("/login", data={"email": "investigator@example.org", "password": PASSWORD})
    page = c.get("/queries?status=all")
    assert page.status_code == 200 and child.study_id in page.get_data(as_text=True)
    home = c.get("/").get_data(as_text=True)
    assert 'href="/signoffs"' in home and 'href="/queries"' in home
    # the allocation's bookkeeping left out, its stratum and the consent's coded values in words
    for key in ("Seq:", "site=", "Signed by parent", "Language de", "Kind assessment", "Id "):
        assert key not in one, key
    assert re.search(r"Stratum: Site: AT01", one) and "Signed by a parent" in one
    # the assessor still gets the blinded casebook without the allocation's records
    blinded = flat(text_of(pdf_as(world, "assessor", child.study_id).data))
    assert "Allocation · Randomized" not in blinded and "Therapy session" not in blinded


def test_entered_by_names_who_and_when_and_the_query_is_about_a_form(world, db, child):
    one = flat(text_of(pdf_as(world, "manager", child.study_id).data))
    who = re.findall(r"Entered by (.*?) · (\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} \S+)", one)
    assert who and all(name.strip() for name, _ in who), who
    assert "Entered by 20" not in one  # never a bare time
    # the query's "about" field is labelled as such, not "Date"
    rows = auditexport.participant_trail(db, CLI, child.study_id, "en")[2]
    about = [r for r in rows if r["record"] == "Data query" and r["action"] == "Created" and "ADOS" in r["new"]]
    assert about and about[0]["field"] == "About"
    assert not [r for r in rows if r["record"] == "Data query" and r["field"] == "Date"]
    assert "Origin – → raised by a person" in one
    # a query step's moment is not in the label column: "Answered" then the moment and who
    # (who by name, the e-mail in brackets: as every step of the thread and the audit trail name them)
    assert re.search(r"Answered \d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} \S+ · "
                     + re.escape(f"{world.users['assessor'].name} (assessor@example.org): Checked"), one)


def test_no_internal_key_in_the_readable_trail(world, kids, db):
    p = kids["music"]  # month 5's window has closed: the milestone is reached
    outcomes.record_assessment(db, CLI, p.study_id, {
        "visit": "month5", "instrument": "ados2", "values": {"social_affect": 9, "rrb": 2, "css": 5},
        "performed_on": (dt.date.today() - dt.timedelta(days=50)).isoformat()})
    db.commit()
    r = sign(world, p)
    assert r.status_code == 201, r.get_data(as_text=True)
    a = db.execute(select(Assessment).where(Assessment.participant_id == p.id, Assessment.visit == "month5",
                                            Assessment.instrument == "ados2")).scalar_one()
    outcomes.correct_assessment(db, CLI, a.id, {"values": {"rrb": 3}, "reason": "transcription error"})
    db.commit()
    r = pdf_as(world, "investigator", p.study_id)
    assert r.status_code == 200
    one = flat(text_of(r.data))
    for key in ("casebook_signoff:", "Milestone – → month5", "Covered seq", "Covered visits", "Signature – → ",
                "Purpose – → casebook", "Status valid → invalidated"):
        assert key not in one, key
    label = next(m for m in signoff.milestones(db) if m["key"] == "month5")["label"]
    assert f"Purpose – → Casebook sign-off: {label}" in one and f"Milestone – → {label}" in one
    assert "Status Valid → Invalidated" in one  # the statuses as the participant page words them
    assert "Visits covered – → Baseline" in one
    # the digest of the signed data in groups of eight (it wraps between groups)
    assert re.search(r"Digest of the signed data \(SHA-256\) – → (?:[0-9a-f]{8} ){7}[0-9a-f]{8}", one)
    assert "Printed name – → Ivo Investigator" in one
    # the signature's own records say it was invalidated since; its meaning's digest in groups too
    assert re.search(r"Electronic signature \(invalidated on \d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} \S+\) · Created", one)
    assert not re.search(r"[0-9a-f]{64}", one.split("Digest of this document's content")[0])
    # the invalidation reason read from the sign-off (in the reader's language), and the bookkeeping table
    assert "is invalidated by a change" in one
    assert auditexport.BOOKKEEPING[("casebook_signoff", "covered_seq")] is None


def test_a_not_done_closes_the_missing_form_query_in_the_users_name(world, kids, db):
    p = kids["music"]
    outcomes.check_missing_forms(db, [p])
    db.commit()
    q = next(q for q in db.execute(select(DataQuery).where(DataQuery.participant_id == p.id,
                                                           DataQuery.open_key.is_not(None))).scalars()
             if q.open_key.endswith(":srs2"))  # the parents' form: the coordinator's
    visit, ins = q.open_key.split(":")[-2:]
    coord = world.users["coordinator"]
    notdone.record_not_done(db, coord, p.study_id, {"visit": visit, "instrument": ins, "reason": "child_unwell"})
    db.commit()
    db.refresh(q)
    assert q.status == "closed"
    close = db.execute(select(QueryMessage).where(QueryMessage.query_id == q.id, QueryMessage.action == "close")).scalar_one()
    assert close.by_id == coord.id and close.by == coord.email and "not done" in close.text
    rows = [r for r in auditexport.participant_trail(db, CLI, p.study_id, "en")[2]
            if r["record"] == "Data query" and r["action"] == "Closed"]
    assert rows and coord.name in rows[-1]["who"] and "system" not in rows[-1]["who"]


def test_a_child_who_left_before_the_visit_does_not_reach_its_milestone(world, kids, db):
    p = kids["music"]  # randomized 200 days ago: month 5's window has closed
    assert "month5" in signoff.reached(db, [p])[p.id]
    record_event(db, CLI, p.study_id, {"type": "withdrawn", "on": (dt.date.today() - dt.timedelta(days=170)).isoformat(),
                                       "reason": "family moved away"})
    db.commit()
    got = signoff.reached(db, [p])[p.id]
    assert "month5" not in got and "end" in got
    assert not [w for w in signoff.waiting(db) if w["study_id"] == p.study_id and w.get("milestone") == "month5"]
    # consent to the follow-up withdrawn before the visit: the same
    u = kids["usual"]
    withdrawal.withdraw_consent(db, world.users["coordinator"], u.study_id, {
        "on": (dt.date.today() - dt.timedelta(days=170)).isoformat(), "scope": "follow_up", "data_use": "keep"})
    db.commit()
    got = signoff.reached(db, [u])[u.id]
    assert "month5" not in got and "end" in got


def test_the_pdf_names_its_title_author_subject_and_creation_date(world, db, child):
    pdf = casebook.casebook_pdf(db, CLI, child.study_id, "en", NOW)
    info = pdfinfo(pdf)
    assert re.search(rf"Title:\s+Casebook: {child.study_id}", info)
    assert re.search(r"Author:\s+TIME-A trial system", info) and re.search(r"Subject:\s+TIME-A", info)
    assert re.search(r"CreationDate:\s+\w+ Dec\s+1 09:30:00 2026 UTC", info)
    later = casebook.casebook(db, CLI, child.study_id, "en", NOW + dt.timedelta(days=1))
    assert later.digest == casebook.casebook(db, CLI, child.study_id, "en", NOW).digest  # independent of the date


def test_the_worklist_is_a_compact_list_with_a_sign_link(app, world, kids, db):
    c = _web(app, "investigator", world)
    page = c.get("/signoffs").get_data(as_text=True)
    assert 'href="/signoffs"' in page  # the header's menu
    p = kids["music"]
    assert p.study_id in page
    assert page.count('name="password"') == 0  # no signing form in the list
    assert f'href="/participants/{p.study_id}#sign-month5"' in page and ">Sign<" in page
    # the link opens the signing form of that one casebook, its meaning whole in a text area
    one = c.get(f"/participants/{p.study_id}").get_data(as_text=True)
    assert 'id="sign-month5"' in one and one.count('name="password"') == 1
    assert re.search(r"<textarea[^>]*meaning[^>]*>\s*I have reviewed this casebook and confirm that its data are complete, "
                     r"accurate and attributable, as the investigator responsible for this participant at this site\.", one)


def test_every_field_of_the_trail_has_a_catalogue_or_protocol_label(world, db, child):
    """No field read from its key: each label is the catalogue's (FIELD, BOOKKEEPING) or the
    protocol's (a form's field), so a German casebook reads it in German once translated."""
    known = {str(v) for v in auditexport.FIELD.values()} | {str(v) for v in auditexport.BOOKKEEPING.values() if v}
    words = current_protocol(db).content
    known |= {f["label"] for i in words["instruments"] for f in i["fields"]}
    rows = auditexport.participant_trail(db, CLI, child.study_id, "en")[2]
    assert rows
    assert not [r["field"] for r in rows if r["field"] and r["field"] not in known]
    # the consent's version through the catalogue as one sentence
    one = flat(text_of(casebook.casebook_pdf(db, CLI, child.study_id, "en", NOW)))
    assert re.search(r"\(version \d+\)", one)
