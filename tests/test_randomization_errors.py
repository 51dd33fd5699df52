"""Randomization errors (issue 29): recorded by the manager, audited; the allocation never changes
(intention to treat); ADSL carries each stratification factor as randomized and as corrected; the
primary analysis adjusts for the corrected strata; the bundle's README counts the errors by kind."""
from __future__ import annotations

import datetime as dt
import io
import zipfile

import pytest
from sqlalchemy import func, select

from tests.helpers import PASSWORD, backdate_randomization, randomized_before
from trial.analysis.service import adjust_column, long_form
from trial.audit.models import AuditRecord
from trial.participants.models import Allocation
from trial.randomize.models import RandomizationError

SEED = bytes(range(32))
TODAY = dt.date.today()
R = TODAY - dt.timedelta(days=200)
MEANING = "I approve locking the trial database; the data are complete and final."


@pytest.fixture()
def kids(world, db):
    world.open(SEED)
    out = [randomized_before(world, db, R)[0] for _ in range(4)]
    backdate_randomization(db, dt.datetime.combine(R, dt.time(10, 0)))
    return out


def record(world, p, who="manager", **body):
    world.db.commit()
    data = {"kind": "wrong_stratum", "field": "site", "correct_value": "NO01",
            "text": "The child lives in Bergen; the site was picked wrong at enrolment.", **body}
    return world.api("POST", f"/participants/{p.study_id}/randomization-errors", who, json=data)


def state(db) -> tuple:
    db.commit()
    return (db.execute(select(func.count()).select_from(RandomizationError)).scalar(),
            db.execute(select(func.count()).select_from(AuditRecord)).scalar(),
            sorted(tuple(r) for r in db.execute(select(Allocation.participant_id, Allocation.arm, Allocation.stratum_id))))


def test_the_manager_records_a_wrong_stratum_and_the_allocation_is_kept(world, db, kids):
    p = kids[0]
    before = state(db)
    r = record(world, p)
    assert r.status_code == 201, r.get_json()
    e = r.get_json()
    assert e["kind"] == "wrong_stratum" and e["field"] == "site" and e["as_randomized"] == "AT01"
    assert e["correct_value"] == "NO01" and e["study_id"] == p.study_id
    after = state(db)
    assert after[0] == before[0] + 1 and after[1] > before[1]
    assert after[2] == before[2]  # intention to treat: no allocation changed
    audit = {r.field: r.new for r in db.execute(select(AuditRecord).where(
        AuditRecord.entity == "randomization_error", AuditRecord.entity_id == str(e["id"]))).scalars()}
    assert "NO01" in audit["correct_value"] and "AT01" in audit["as_randomized"] and "wrong_stratum" in audit["kind"]
    for who in ("manager", "statistician"):
        listed = world.api("GET", "/randomization-errors", who)
        assert listed.status_code == 200 and [x["id"] for x in listed.get_json()] == [e["id"]]
    for kind in ("ineligible", "randomized_twice"):
        r = record(world, kids[1], kind=kind, field=None, correct_value=None, text="found at monitoring")
        assert r.status_code == 201 and r.get_json()["field"] is None and r.get_json()["as_randomized"] is None


@pytest.mark.parametrize("who, status", [("coordinator", 403), ("assessor", 403), ("monitor", 403),
                                         ("statistician", 403), ("therapist", 403), ("admin", 403)])
def test_only_the_manager_records_one(world, db, kids, who, status):
    before = state(db)
    assert record(world, kids[0], who).status_code == status
    assert state(db) == before


@pytest.mark.parametrize("who", ["coordinator", "assessor", "monitor", "therapist"])
def test_only_the_manager_and_the_statistician_list_them(world, db, kids, who):
    assert world.api("GET", "/randomization-errors", who).status_code == 403


@pytest.mark.parametrize("body, fields", [
    ({"kind": "typo"}, {"kind"}),
    ({"field": "age"}, {"field"}),
    ({"field": None}, {"field"}),
    ({"correct_value": "XX99"}, {"correct_value"}),
    ({"correct_value": "AT01"}, {"correct_value"}),   # the value it was randomized with
    ({"text": ""}, {"text"}),
    ({"text": "bad\x00"}, {"text"}),
    ({"kind": "ineligible"}, {"field", "correct_value"}),  # only a wrong stratum names a factor
])
def test_bad_input_is_refused_naming_the_fields_and_changes_nothing(world, db, kids, body, fields):
    before = state(db)
    r = record(world, kids[0], **body)
    assert r.status_code == 400, r.get_json()
    assert fields <= set(r.get_json()["error"]["fields"]), r.get_json()
    assert state(db) == before


def test_a_child_not_randomized_has_no_randomization_error(world, db, kids):
    child = world.enroll()
    before = state(db)
    r = record(world, child)
    assert r.status_code == 409
    assert state(db) == before
    assert record(world, type("P", (), {"study_id": "AT01-9999"})).status_code == 404


def test_the_managers_page_lists_and_records_them(world, db, kids, app):
    db.commit()
    c = app.test_client()
    c.post("/login", data={"email": "manager@example.org", "password": PASSWORD})
    page = c.get("/randomization-errors")
    assert page.status_code == 200 and "No randomization error is recorded." in page.get_data(as_text=True)
    bad = c.post("/randomization-errors", data={"study_id": kids[0].study_id, "kind": "wrong_stratum", "field": "site",
                                                "correct_value": "AT01", "text": "x"})
    assert bad.status_code == 400
    r = c.post("/randomization-errors", data={"study_id": kids[0].study_id, "kind": "wrong_stratum", "field": "site",
                                              "correct_value": "NO01", "text": "wrong site picked"})
    assert r.status_code == 302, r.get_data(as_text=True)[:2000]
    page = c.get("/randomization-errors").get_data(as_text=True)
    assert kids[0].study_id in page and "Randomized in the wrong stratum" in page and "wrong site picked" in page
    c2 = app.test_client()
    c2.post("/login", data={"email": "coordinator@example.org", "password": PASSWORD})
    assert c2.get("/randomization-errors").status_code == 403


def _files(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = z.namelist()
        prefix = names[0].split("/")[0] + "/"
        return {n[len(prefix):]: z.read(n) for n in names}


def _csv(b: bytes):
    import csv
    rows = list(csv.reader(io.StringIO(b.decode("utf-8"))))
    return rows[0], rows[1:]


def test_adsl_carries_both_strata_and_the_analysis_uses_the_corrected_one(world, db, kids, tmp_path):
    import pyreadstat
    p = kids[0]
    arms_before = state(db)[2]
    assert record(world, p).status_code == 201
    assert record(world, kids[1], kind="ineligible", field=None, correct_value=None, text="aged 7 at screening").status_code == 201
    assert adjust_column("site") == "c_site"
    lock = world.api("POST", "/locks", "manager", json={"kind": "hard", "meaning": MEANING, "password": PASSWORD,
                                                       "accept_open_queries": True, "accept_unsigned": True})
    assert lock.status_code == 201, lock.get_json()
    lock_id = lock.get_json()["id"]
    assert state(db)[2] == arms_before
    for variant, who in (("unblinded", "manager"), ("blinded", "statistician")):
        files = _files(world.api("GET", f"/locks/{lock_id}/bundle.zip", who).data)
        head, rows = _csv(files["analysis/adsl.csv"])
        by = {r[head.index("studyid")]: r for r in rows}
        assert by[p.study_id][head.index("site")] == "AT01"      # as randomized
        assert by[p.study_id][head.index("c_site")] == "NO01"    # as corrected
        assert by[kids[1].study_id][head.index("c_site")] == "AT01"  # no wrong stratum: the same
        # the model's long data take the corrected stratum
        long = long_form(head, [tuple(r) for r in rows], "arm",  # (the same name in both bundles)
                         [head[head.index("asoc_m2")], head[head.index("asoc_m5")]], ["month2", "month5"], ["site"])
        i = [s for s in long["studyid"]].index(p.study_id)
        assert long["site"][i] == "NO01"
        for script in ("analysis/primary.py", "analysis/primary.R"):
            assert b"c_site" in files[script], script
        readme = files["README.txt"].decode()
        assert "Randomization errors: 2 recorded (ineligible child randomized: 1, wrong stratum: 1" in readme
        dictionary = files["dictionary.csv"].decode()
        assert "adsl" in dictionary and "c_site" in dictionary and "Stratum as corrected: site" in dictionary
        rh, rr = _csv(files["csv/randerr.csv"])
        assert len(rr) == 2
        wrong = next(r for r in rr if r[rh.index("kind")] == "wrong_stratum")
        assert wrong[rh.index("asrand")] == "AT01" and wrong[rh.index("correct")] == "NO01"
        if variant == "blinded":
            assert b"Bergen" not in b"".join(v for k, v in files.items() if not k.startswith("odm/"))
        for fmt, reader in (("xpt", pyreadstat.read_xport), ("dta", pyreadstat.read_dta)):
            path = tmp_path / f"{variant}.{fmt}"
            path.write_bytes(files[f"analysis/adsl.{fmt}"])
            df, _ = reader(str(path))
            cols = {c.lower(): c for c in df.columns}
            i = [str(s) for s in df[cols["studyid"]]].index(p.study_id)
            assert df[cols["c_site"]].iloc[i] == "NO01" and df[cols["site"]].iloc[i] == "AT01"


def test_the_fitted_estimate_changes_with_a_corrected_stratum():
    """The primary model adjusts for the stratum as corrected (c_site): with the correct site of the
    children randomized in the wrong one, the arms' estimated difference changes (here: towards
    the true effect, the site effect no longer confounding it)."""
    from trial.analysis.service import fit
    rows = []
    for i in range(40):
        true_site = "NO01" if i % 2 else "AT01"
        arm = "music" if (i % 4) in (1, 2) else "usual"
        # children 1, 5, 9, ...: randomized as AT01 though they live in Bergen (NO01)
        as_randomized = "AT01" if i % 4 == 1 else true_site
        base = 50 + (i % 3)
        # the site tells at every visit (Bergen's children score higher); the arm at 5 months
        site = 20 if true_site == "NO01" else 0
        y2, y5 = base + site, base + 2 * site + (6 if arm == "music" else 0) + (i % 2)
        rows.append((f"AT01-{i:04d}", arm, as_randomized, true_site, y2, y5))
    names = ["studyid", "arm", "site", "c_site", "y_m2", "y_m5"]

    def estimate(column: str) -> float:
        at = names.index(column)
        adsl = [r[:names.index("c_site")] + (r[at],) + r[names.index("c_site") + 1:] for r in rows]
        long = long_form(names, adsl, "arm", ["y_m2", "y_m5"], ["month2", "month5"], ["site"])
        res, cols, _ = fit(long, ["month2", "month5"], {"group": ["music"]}, ["site"])
        return float(res.params[cols.index("group_month5")])
    as_randomized, corrected = estimate("site"), estimate("c_site")
    assert abs(corrected - as_randomized) > 0.5, (as_randomized, corrected)
    assert abs(corrected - 6) < abs(as_randomized - 6)


def test_adsl_flags_and_the_managers_retraction(world, db, kids):
    """ADSL flags a child randomized though ineligible or twice (documented in the dictionary, every
    format); a mistaken record is retracted by the manager with a reason, audited, and the flag goes."""
    p = kids[0]
    r = record(world, p, kind="ineligible", field=None, correct_value=None, text="aged 7 at screening")
    assert r.status_code == 201
    eid = r.get_json()["id"]
    assert record(world, kids[1], kind="randomized_twice", field=None, correct_value=None,
                  text="enrolled twice").status_code == 201
    from trial.randomize import errors
    kinds = errors.kinds_of(db)
    assert kinds[p.id] == {"ineligible"} and kinds[kids[1].id] == {"randomized_twice"}
    url = f"/participants/{p.study_id}/randomization-errors/{eid}/retract"
    before = state(db)
    for who in ("coordinator", "statistician"):
        assert world.api("POST", url, who, json={"reason": "x"}).status_code == 403
    r = world.api("POST", url, "manager", json={})
    assert r.status_code == 400 and "reason" in r.get_json()["error"]["fields"]
    assert world.api("POST", f"/participants/{p.study_id}/randomization-errors/99999/retract", "manager",
                     json={"reason": "x"}).status_code == 404
    assert state(db) == before
    r = world.api("POST", url, "manager", json={"reason": "recorded for the wrong child"})
    assert r.status_code == 200, r.get_data(as_text=True)
    db.expire_all()
    assert db.get(RandomizationError, eid) is None
    recs = db.execute(select(AuditRecord).where(AuditRecord.entity == "randomization_error",
                                                AuditRecord.entity_id == str(eid), AuditRecord.action == "delete")
                      ).scalars().all()
    assert recs and all(x.reason == "recorded for the wrong child" for x in recs)
    assert p.id not in errors.kinds_of(db)
    lock = world.api("POST", "/locks", "manager", json={"kind": "hard", "meaning": MEANING, "password": PASSWORD,
                                                       "accept_open_queries": True, "accept_unsigned": True})
    assert lock.status_code == 201, lock.get_json()
    files = _files(world.api("GET", f"/locks/{lock.get_json()['id']}/bundle.zip", "statistician").data)
    head, rows = _csv(files["analysis/adsl.csv"])
    by = {r[head.index("studyid")]: r for r in rows}
    assert by[kids[1].study_id][head.index("randtwic")] == "1" and by[kids[1].study_id][head.index("randinel")] == "0"
    assert by[p.study_id][head.index("randinel")] == "0"
    dictionary = files["dictionary.csv"].decode()
    assert "randinel" in dictionary and "Randomized twice (randomization error)" in dictionary
    import tempfile

    import pyreadstat
    for fmt, reader in (("xpt", pyreadstat.read_xport), ("dta", pyreadstat.read_dta)):
        with tempfile.NamedTemporaryFile(suffix=f".{fmt}") as f:
            f.write(files[f"analysis/adsl.{fmt}"])
            f.flush()
            df, _ = reader(f.name)
        assert {"randinel", "randtwic"} <= {c.lower() for c in df.columns}, fmt


def test_the_errors_text_stays_hidden_from_blinded_readers(world, db, kids):
    """The free text may name the arm: the statistician before the unblinding reads it withheld in the
    list, and the blinded casebook's audit trail leaves the error's record out (its kind and factor
    stay in the casebook's own section)."""
    import subprocess
    import tempfile

    from trial.oversight import auditexport
    secret = "The child lives in Bergen; the site was picked wrong at enrolment."
    assert record(world, kids[0]).status_code == 201
    by = {who: world.api("GET", "/randomization-errors", who).get_json()[0]["text"] for who in ("manager", "statistician")}
    assert by["manager"] == secret and by["statistician"] == "(withheld while blinded)"
    pdf = world.api("GET", f"/participants/{kids[0].study_id}/casebook.pdf", "assessor")
    assert pdf.status_code == 200
    with tempfile.NamedTemporaryFile(suffix=".pdf") as f:
        f.write(pdf.data)
        f.flush()
        text = " ".join(subprocess.run(["pdftotext", "-raw", f.name, "-"], check=True, capture_output=True).stdout.decode().split())
    assert "Bergen" not in text
    assert "randomization_error" in [p[0] for p in auditexport._parts(auditexport.Reader(True, True, True))]
