"""Small defects issues 29's and 30's walk-throughs found in the casebook, the audit trail export
and the sign-off form: a creation shows only the fields that got a value (no "Strata – → –"), a
query's thread names every person the same way (the name, the e-mail in brackets) and shows the
question once, and a refused signature brings the reader back to the signing form with the message
beside it."""
from __future__ import annotations

import csv
import io
import re
from types import SimpleNamespace

from sqlalchemy import select

from tests import test_casebook, test_signoff
from tests.helpers import CLI, PASSWORD
from tests.test_casebook import flat, text_of
from tests.test_signoff import MEANING, _web, code_of
from trial.dataquality.models import DataQuery
from trial.outcomes import notdone
from trial.outcomes import service as outcomes
from trial.oversight import auditexport, casebook
from trial.oversight.document import Document
from trial.queries import service as queries

child = test_casebook.child  # (the fixtures: a child with every kind of record; children to sign)
kids = test_signoff.kids


def _empty(row: dict) -> bool:
    return bool(row["field"]) and not row["old"] and not row["new"]


def test_a_creation_shows_only_the_fields_that_got_a_value(world, db, child):
    rows = auditexport.participant_trail(db, CLI, child.study_id, "en")[2]
    assert rows and not [r for r in rows if _empty(r)]
    session = [r for r in rows if r["record"] == "Therapy session" and r["action"] == "Created"]
    fields = {r["field"] for r in session}
    assert {"Attendance", "Minutes"} <= fields and "Goals worked on" not in fields and "Techniques" not in fields
    created = [r for r in rows if r["record"] == "Participant" and r["action"] == "Created"]
    assert created and "Strata" not in {r["field"] for r in created}
    # the casebook's changes, the CSV and the PDFs of the child and of the site
    one = flat(text_of(casebook.casebook_pdf(db, CLI, child.study_id, "en")))
    assert "– → –" not in one and "Attendance – → Attended" in one
    db.commit()
    r = world.api("GET", f"/participants/{child.study_id}/audit.csv", "manager")
    got = list(csv.DictReader(io.StringIO(r.data.decode("utf-8-sig"))))
    assert got and not [x for x in got if x["Field"] and not x["Old value"] and not x["New value"]]
    c = world.app.test_client()
    c.post("/login", data={"email": "manager@example.org", "password": PASSWORD})
    for url in (f"/participants/{child.study_id}/audit.pdf", "/sites/AT01/audit.pdf"):
        text = flat(text_of(c.get(url).data))
        assert "– → –" not in text and "Attendance – → Attended" in text, url


def test_a_change_none_of_whose_fields_changed_keeps_its_heading_and_reason():
    row = {"when": "2026-12-01 10:00:00 CET", "who": "Ann (ann@example.org)", "study_id": "AT01-0001",
           "record": "Individual goal", "action": "Changed", "old": "", "new": "", "reason": "tidied"}
    other = dict(row, action="Created", field="Goal", new="Turn-taking", reason="")
    got = auditexport.without_empty([dict(row, field="Note"), dict(row, field="Goals worked on"), other,
                                     dict(other, field="Note", new="")])
    assert got == [dict(row, field=""), other]  # one row without a field, with its reason; the empty field gone
    doc = Document("t", "s", "now", "en")
    auditexport.add_changes(doc, got, SimpleNamespace(t=str))
    said = [item[1:] for item in doc.items]
    assert said[0] == (f"{row['when']} · {row['who']} · Individual goal · Changed",) and ("Reason", "tidied") in said
    assert ("Goal", "– → Turn-taking") in said and not [x for x in said if "– → –" in x[-1]]


def _queries_section(db, study_id: str) -> str:
    db.expire_all()
    one = flat(text_of(casebook.casebook_pdf(db, CLI, study_id, "en")))
    return one.split("Data queries", 1)[1].split("Investigator's sign-offs", 1)[0]


def test_a_querys_thread_names_each_person_alike_and_asks_its_question_once(world, db, child):
    q = db.execute(select(DataQuery).where(DataQuery.participant_id == child.id)).scalar_one()
    queries.close(db, world.users["monitor"], q.id, {"text": "Thank you, closed."})
    db.commit()
    section = _queries_section(db, child.study_id)
    monitor, assessor = world.users["monitor"], world.users["assessor"]
    assert f"· {monitor.name} ({monitor.email}): Thank you, closed." in section
    assert f"· {assessor.name} ({assessor.email}): Checked against the source: correct." in section
    assert "Raised" in section and f"· {monitor.name} ({monitor.email})" in section
    assert not re.search(r"· [^ (]+@example\.org", section), section  # never an e-mail address alone
    assert section.count("Please check the comparison score.") == 1, section


def test_a_check_closed_by_a_not_done_names_the_system_and_the_user(world, kids, db):
    p = kids["music"]
    outcomes.check_missing_forms(db, [p])
    db.commit()
    q = next(q for q in db.execute(select(DataQuery).where(DataQuery.participant_id == p.id,
                                                           DataQuery.open_key.is_not(None))).scalars()
             if q.open_key.endswith(":srs2"))
    visit, ins = q.open_key.split(":")[-2:]
    coord = world.users["coordinator"]
    notdone.record_not_done(db, coord, p.study_id, {"visit": visit, "instrument": ins, "reason": "child_unwell"})
    db.commit()
    section = _queries_section(db, p.study_id)
    assert "· system check" in section and "system (data check)" not in section
    assert f"· {coord.name} ({coord.email}):" in section
    assert not re.search(r"· [^ (]+@example\.org", section), section


def _sign_web(c, p, **data):
    return c.post(f"/participants/{p.study_id}/signoffs/sign",
                  data={"milestone": "month5", "meaning": MEANING, "password": PASSWORD, **data})


def _alerts(page: str) -> list[tuple[int, str]]:
    return [(m.start(), m.group(1)) for m in re.finditer(r'<p class="flash error" role="alert"><bdi>(.*?)</bdi>', page)]


def test_a_refused_signature_returns_to_the_form_with_the_message_beside_it(app, world, kids, db):
    p = kids["music"]
    c = _web(app, "investigator", world)
    wrong = "000000" if code_of(world, "investigator") != "000000" else "111111"
    for data in ({"code": wrong}, {"password": "", "code": code_of(world, "investigator")}):
        r = _sign_web(c, p, **data)
        assert r.status_code == 302 and r.headers["Location"].endswith(f"/participants/{p.study_id}#sign-month5"), data
        page = c.get(f"/participants/{p.study_id}").get_data(as_text=True)
        alerts = _alerts(page)
        anchor = page.index('id="sign-month5"')
        assert len(alerts) == 1 and alerts[0][1].strip(), (data, alerts)
        form = page.index(f'action="/participants/{p.study_id}/signoffs/sign"', anchor)
        assert anchor < alerts[0][0] < form, data  # beside the form, not at the top of the page
        assert not _alerts(c.get(f"/participants/{p.study_id}").get_data(as_text=True))  # shown once
    assert "Fill in every field of the signature." in page
    # signed: the success at the top of the page it came from
    r = _sign_web(c, p, code=code_of(world, "investigator"), back="worklist")
    assert r.status_code == 302 and r.headers["Location"].endswith("/signoffs")
    assert "is signed" in c.get("/signoffs").get_data(as_text=True)


def test_a_refusal_with_no_form_to_return_to_is_at_the_top(app, world, kids, db):
    p = kids["early"]  # month 5 not reached: no form on the page
    c = _web(app, "investigator", world)
    r = _sign_web(c, p, code=code_of(world, "investigator"))
    assert r.status_code == 302
    page = c.get(f"/participants/{p.study_id}").get_data(as_text=True)
    alerts = _alerts(page)
    assert len(alerts) == 1 and "not reached" in alerts[0][1] and alerts[0][0] < page.index("<h1")
