"""The de-identified sharing bundle of a locked, unblinded trial (issue 30; trial/interim/sharing.py).

A trial with children at two sites, sessions, goals, events, deviations, consents, withdrawals,
adverse events with follow-ups and reports, queries and screenings, a sentinel text planted in
every free-text field the system takes; hard-locked (its bundles built), unblinded with both
signatures; then the manager asks for the sharing bundle (API and page). The bundle has no date
of birth, no calendar date in any cell, no sentinel anywhere in any file, no study id, no real site
code; its k report is the recount from its own particip.csv; its manifest's digests are its files';
only the manager and the statistician download it, only after the unblinding (409 before, and
while it is built), 404 for an unknown lock.
"""
from __future__ import annotations

import collections
import csv
import datetime as dt
import hashlib
import io
import json
import re
import zipfile

import pandas as pd
import pytest
from sqlalchemy import select

from tests.helpers import PASSWORD
from tests.test_lock import R, backdate_all, child, dm, err, iso, kids, ok, unblind, web_client  # noqa: F401
from tests.test_lock_build import trial_cli, trial_db  # noqa: F401  (a committed database other processes see)
from trial.audit import service as audit
from trial.audit.models import AuditRecord
from trial.interim import sharing
from trial.interim.models import SharingBundle
from trial.participants.models import Participant
from trial.queries import service as queries

TAG = "QX7SENT"
DATE_RE = re.compile(r"(?<!\d)(?:19|20)\d\d[-/.](?:0?[1-9]|1[0-2])[-/.](?:0?[1-9]|[12]\d|3[01])(?!\d)"
                     r"|(?<!\d)(?:0?[1-9]|[12]\d|3[01])[./](?:0?[1-9]|1[0-2])[./](?:19|20)\d\d(?!\d)")
OTHERS = ("coordinator", "therapist", "assessor", "monitor", "admin")


def sentinel(field: str) -> str:
    return f"{TAG}-{field[:11]}"  # (at most 19 characters: some fields are short)


def _api_ok(r, status=201):
    assert r.status_code == status, (r.status_code, r.get_data(as_text=True))
    return r.get_json()


@pytest.fixture()
def shared(world, dm, db):  # noqa: F811  (the fixture of tests.test_lock)
    """The dm trial, three children at NO01 (two boys), a sentinel in every free-text field, a hard
    lock with its bundles, and the unblinding (both signatures)."""
    k = dm
    no = []
    for sex in ("male", "male", "female"):
        p = child(world, site="NO01", sex=sex)
        world.randomize(p, f"no-{p.study_id}")
        no.append(p)
    backdate_all(db)
    u, hi = k["usual"].study_id, k["high"].study_id
    planted = {}

    def plant(field):
        planted[field] = sentinel(field)
        return planted[field]

    # screenings: another reason not enrolled, the site's log number
    world.screen("AT01", screened_on=iso(R - dt.timedelta(days=3)), other_reason=plant("screen_other"),
                 log_number=plant("lognum"))
    # the intervention: a session's note, a goal's description
    from trial.course import service as course
    course.log_session(db, world.users["therapist"], hi, {"held_on": iso(R + dt.timedelta(days=40)),
                                                          "attendance": "attended", "minutes": 30,
                                                          "note": plant("session_note")})
    course.set_goals(db, world.users["therapist"], hi, {"goals": [{"goal": "eye_contact",
                                                                   "description": plant("goal_descr")}]})
    db.commit()
    # status: an event's reason, a deviation's description, a withdrawal's notes, a consent's version
    _api_ok(world.api("POST", f"/participants/{no[0].study_id}/events", "coordinator_no",
                      json={"type": "lost_to_follow_up", "on": iso(R + dt.timedelta(days=90)),
                            "reason": plant("event_reason")}))
    _api_ok(world.api("POST", f"/participants/{u}/deviations", "coordinator",
                      json={"on": iso(R + dt.timedelta(days=5)), "category": "other",
                            "description": plant("deviation")}))
    _api_ok(world.api("POST", f"/participants/{u}/consent-withdrawals", "coordinator",
                      json={"on": iso(R + dt.timedelta(days=60)), "scope": "intervention", "data_use": "keep",
                            "text": plant("withdrawal")}))
    _api_ok(world.api("POST", f"/participants/{u}/consents", "coordinator",
                      json={"document": "parental_consent", "version": "1", "language": "de",
                            "signed_on": iso(R + dt.timedelta(days=5)), "signer": "guardian",
                            "options": {"video_recording": True}}))
    # safety: a term and its description, a follow-up's note, a report's reference
    ae = _api_ok(world.api("POST", f"/participants/{u}/adverse-events", "coordinator",
                           json={"term": plant("ae_term"), "onset": iso(R + dt.timedelta(days=50)), "severity": "mild",
                                 "serious": False, "relatedness": "not_related", "outcome": "recovering",
                                 "description": plant("ae_descr")}))
    _api_ok(world.api("POST", f"/adverse-events/{k['dm']['ae']}/follow-ups", "coordinator",
                      json={"on": iso(R + dt.timedelta(days=42)), "outcome": "recovering", "text": plant("ae_followup")}))
    _api_ok(world.api("POST", f"/adverse-events/{k['dm']['reported']}/reports", "manager",
                      json={"reported_to": "authority", "reported_at": f"{iso(R + dt.timedelta(days=48))}T09:00:00Z",
                            "reference": plant("ae_report_ref")}))
    # data management: a query's text and its answer
    q = queries.raise_query(db, world.users["manager"], {"study_id": u, "on": {"kind": "participant"},
                                                         "text": plant("query")})
    db.commit()
    _api_ok(world.api("POST", f"/queries/{q.id}/responses", "coordinator", json={"text": plant("query_answer")}))
    _api_ok(world.api("POST", f"/participants/{u}/blinding-breaks", "assessor",
                      json={"description": plant("blinding_break")}))
    lock = _api_ok(world.api("POST", "/locks", "manager", json={"kind": "hard", "meaning": "Final lock.",
                                                                  "password": PASSWORD, "accept_open_queries": True,
                                                                  "accept_unsigned": True}))
    assert _api_ok(world.api("GET", f"/locks/{lock['id']}", "manager"), 200)["status"] == "ready"
    births = {p.study_id: p.date_of_birth for p in db.execute(select(Participant)).scalars()}
    db.commit()
    return {"lock": lock["id"], "planted": planted, "ae": ae, "births": births, "kids": k, "no": no}


def _files(content: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(content)) as z:
        return {n.split("/", 1)[1]: z.read(n) for n in z.namelist()}


def _csv(data: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def _made(world, shared) -> dict[str, bytes]:
    lock_id = shared["lock"]
    asked = _api_ok(world.api("POST", f"/locks/{lock_id}/sharing", "manager"), 202)
    assert asked["status"] == "ready" and asked["lock_id"] == lock_id  # (built inline in the tests)
    r = world.api("GET", f"/locks/{lock_id}/sharing.zip", "statistician")
    assert r.status_code == 200 and r.mimetype == "application/zip"
    assert r.headers["X-Content-SHA256"] == hashlib.sha256(r.data).hexdigest()
    return _files(r.data)


# --- before the unblinding, and the roles --------------------------------------------------------

def test_nothing_before_the_unblinding_and_unknown_locks_are_404(world, shared, db):
    lock_id = shared["lock"]
    e = err(world.api("POST", f"/locks/{lock_id}/sharing", "manager"), 409, "not_unblinded")
    assert "unblinded" in e["message"]
    err(world.api("GET", f"/locks/{lock_id}/sharing.zip", "manager"), 409, "not_unblinded")
    err(world.api("GET", f"/locks/{lock_id}/sharing.zip", "statistician"), 409, "not_unblinded")
    assert db.execute(select(SharingBundle)).first() is None
    ok(unblind(world))
    err(world.api("POST", "/locks/4242/sharing", "manager"), 404)
    err(world.api("GET", "/locks/4242/sharing.zip", "manager"), 404)
    err(world.api("GET", f"/locks/{lock_id}/sharing.zip", "manager"), 404)  # none asked for yet
    assert _api_ok(world.api("GET", f"/locks/{lock_id}/sharing", "statistician"), 200)["status"] is None


def test_only_the_manager_asks_and_only_manager_and_statistician_download(world, shared, db):
    lock_id = shared["lock"]
    ok(unblind(world))
    for who in ("statistician", *OTHERS):
        err(world.api("POST", f"/locks/{lock_id}/sharing", who), 403)
    assert db.execute(select(SharingBundle)).first() is None
    _api_ok(world.api("POST", f"/locks/{lock_id}/sharing", "manager"), 202)
    for who in ("manager", "statistician"):
        r = world.api("GET", f"/locks/{lock_id}/sharing.zip", who)
        assert r.status_code == 200 and r.data[:2] == b"PK"
    for who in OTHERS:
        r = world.api("GET", f"/locks/{lock_id}/sharing.zip", who)
        assert r.status_code == 403 and b"PK" not in r.data[:2]
        err(world.api("GET", f"/locks/{lock_id}/sharing", who), 403)
    # audited: the request, the build and each download, by whom
    db.expire_all()
    rows = db.execute(select(AuditRecord.action, AuditRecord.actor).where(AuditRecord.entity == "sharing_bundle")).all()
    actions = collections.Counter(a for a, _ in rows)
    assert actions["request_sharing"] >= 1 and actions["build"] >= 1 and actions["download"] == 2
    assert {who for a, who in rows if a == "download"} == {"manager@example.org", "statistician@example.org"}
    assert audit.verify(db).ok


def test_409_while_it_is_built_and_when_it_failed(world, shared, db):
    lock_id = shared["lock"]
    ok(unblind(world))
    _api_ok(world.api("POST", f"/locks/{lock_id}/sharing", "manager"), 202)
    sb = db.execute(select(SharingBundle)).scalar_one()
    sb.status, sb.progress = "building", 0.4
    db.commit()
    e = err(world.api("GET", f"/locks/{lock_id}/sharing.zip", "statistician"), 409, "sharing_not_ready")
    assert "40%" in e["message"]
    err(world.api("POST", f"/locks/{lock_id}/sharing", "manager"), 409, "sharing_not_ready")
    assert _api_ok(world.api("GET", f"/locks/{lock_id}/sharing", "manager"), 200)["status"] == "building"
    sb.status = "failed"
    db.commit()
    err(world.api("GET", f"/locks/{lock_id}/sharing.zip", "manager"), 409, "sharing_not_ready")
    # a build whose worker died is failed after a while, and may be asked for again
    sb.status, sb.created_at = "building", sb.created_at - sharing.STALE - dt.timedelta(minutes=1)
    db.commit()
    assert _api_ok(world.api("GET", f"/locks/{lock_id}/sharing", "manager"), 200)["status"] == "failed"
    assert _api_ok(world.api("POST", f"/locks/{lock_id}/sharing", "manager"), 202)["status"] == "ready"


# --- the content ---------------------------------------------------------------------------------

def test_no_date_of_birth_no_calendar_date_no_identifier(world, shared, db):
    ok(unblind(world))
    files = _made(world, shared)
    csvs = {n: _csv(b) for n, b in files.items() if n.endswith(".csv")}
    assert "csv/particip.csv" in csvs and "analysis/adsl.csv" in csvs and "csv/ae.csv" in csvs
    # no date of birth: no such column, and no birth date anywhere
    for name, rows in csvs.items():
        assert "brthdt" not in (rows[0].keys() if rows else []), name
    births = {b.isoformat() for b in shared["births"].values()}
    for name, data in files.items():
        text = data.decode("latin-1")
        assert not any(b in text for b in births), name
    # no calendar date in any cell of any table (nor in the dictionary, the reports, the README)
    for name, rows in csvs.items():
        for row in rows:
            for col, cell in row.items():
                assert not DATE_RE.search(cell or ""), (name, col, cell)
    assert not DATE_RE.search(files["README.txt"].decode())
    assert not DATE_RE.search(files["disclosure.json"].decode())
    # the Stata and SAS files hold no date variable either, and their dates are days
    for name, data in files.items():
        if name.endswith((".dta", ".xpt")):
            frame = pd.read_stata(io.BytesIO(data), convert_categoricals=False) if name.endswith(".dta") else \
                pd.read_sas(io.BytesIO(data), format="xport")
            assert not any(str(t).startswith("datetime") for t in frame.dtypes), (name, frame.dtypes)
    # the dates became days from randomization: randomization day 0, the session on day 40
    particip = csvs["csv/particip.csv"]
    assert {r["randdt"] for r in particip} <= {"0", "-1", "1"}
    assert "40" in {r["sessdt"] for r in csvs["csv/sessions.csv"]}
    # the age as its band (5 years before R: 59 whole months); in months only where the bundle had it
    # (ADSL's agerand, as API.md's contract says: age in months instead of the date of birth)
    assert {r["ageband"] for r in particip} == {"48-59 months"}
    assert {r["agerand"] for r in csvs["analysis/adsl.csv"]} <= {"59", "60"} if "analysis/adsl.csv" in csvs else True
    # no screening log (children never randomized), no consent language or signer (quasi-identifiers)
    assert not any("screen" in n for n in files) and "screen" not in {r["table"] for r in _csv(files["dictionary.csv"])}
    for name, rows in csvs.items():
        assert not {"language", "signer"} & set(rows[0].keys() if rows else []), name
    # pseudonymous ids, not the study ids; only the randomized children; random site codes
    study_ids = list(shared["births"])
    pids = [r["pid"] for r in particip]
    assert len(pids) == len(set(pids)) == 7 and all(re.fullmatch(r"C\d{5}", p) for p in pids)
    for name, data in files.items():
        text = data.decode("latin-1")
        assert not any(sid in text for sid in study_ids), name
        assert not re.search(r"(?<![A-Za-z0-9])(AT01|NO01)(?![A-Za-z0-9])", text), name
        assert "@example.org" not in text, name
    # NO01's three children are rare (k < 3): their site is suppressed (the k test), AT01's is a random code
    assert len({r["site"] for r in particip} - {""}) == 1 and {r["site"] for r in particip} - {""} <= {"S01", "S02"}
    assert all(r["stratum"].startswith("site=S0") for r in csvs["csv/alloc.csv"] if r["stratum"])
    assert "slot" not in csvs["csv/alloc.csv"][0]
    # each child's rows agree across tables (the same pseudonym for the same child)
    adsl = {r["pid"]: r for r in csvs["analysis/adsl.csv"]}
    assert set(adsl) == set(pids)
    for r in particip:
        assert adsl[r["pid"]]["site"] == r["site"] and adsl[r["pid"]]["sex"] == r["sex"]
        assert adsl[r["pid"]]["ageband"] == r["ageband"]
    # (that the pseudonyms are drawn at random, not derived from the study ids: the last test)


def test_no_free_text_of_any_kind(world, shared, db):
    """Every free-text field the system takes carries a sentinel; none appears in any file."""
    ok(unblind(world))
    files = _made(world, shared)
    planted = shared["planted"]
    assert len(planted) >= 14
    # the sentinels are in the locked (unblinded) bundle: the test plants where the tables read
    lock_zip = world.api("GET", f"/locks/{shared['lock']}/bundle.zip", "statistician").data
    locked = b"".join(_files(lock_zip).values()).decode("latin-1")
    in_bundle = {f for f, s in planted.items() if s in locked}
    assert in_bundle >= {"screen_other", "lognum", "session_note", "goal_descr", "event_reason", "deviation",
                         "withdrawal", "ae_term", "ae_followup", "ae_report_ref", "query", "query_answer"}, in_bundle
    for name, data in files.items():
        text = data.decode("latin-1")
        assert TAG not in text, (name, [f for f, s in planted.items() if s in text])
    # and every text variable left is one the system makes (coded, or on the kept list)
    dictionary = _csv(files["dictionary.csv"])
    for v in dictionary:
        if v["type"] == "text":
            assert v["name"] in sharing.KEPT_TEXT or v["name"].startswith("c_") or v["name"] in ("pid", "country", "ageband"), v
        assert v["type"] not in ("date", "datetime"), v
    # the README says what was removed and why
    readme = files["README.txt"].decode()
    for words in ("Free text", "Date of birth: removed", "days from the child's", "pseudonymous id",
                  "random code", "sessnote", "Screening log", "language and signer", "site (and stratum) is left empty",
                  "is not in this bundle", "Country"):
        assert words in readme, words
    assert "disclosure_review.csv" not in readme


def test_the_k_report_is_the_recount_from_the_files(world, shared, db):
    ok(unblind(world))
    files = _made(world, shared)
    particip = _csv(files["csv/particip.csv"])
    recount = collections.Counter((r["site"], r["sex"], r["ageband"]) for r in particip)
    report = {(r["site"], r["sex"], r["age_band"]): int(r["k"]) for r in _csv(files["disclosure.csv"])}
    assert report == dict(recount)  # counted on the data as shipped
    assert {k: v for k, v in report.items()} and sum(report.values()) == 7
    marked = {(r["site"], r["sex"], r["age_band"]) for r in _csv(files["disclosure.csv"]) if r["below_k_min"] == "1"}
    assert marked == {key for key, k in recount.items() if k < 3}
    # NO01's girl is alone in her combination, its boys two: their site suppressed everywhere (still rare by sex
    # and age band alone: marked), and listed for the manager's review, with their pids, outside the bundle
    assert "disclosure_review.csv" not in files
    suppressed = {r["pid"] for r in particip if r["site"] == ""}
    assert len(suppressed) == 3
    adsl = {r["pid"]: r for r in _csv(files["analysis/adsl.csv"])}
    alloc = _csv(files["csv/alloc.csv"])
    assert all(adsl[p]["site"] == "" for p in suppressed) and sum(1 for r in alloc if not r["stratum"]) == 3
    lock_id = shared["lock"]
    assert world.api("GET", f"/locks/{lock_id}/sharing-review.csv", "statistician").status_code == 403
    r = world.api("GET", f"/locks/{lock_id}/sharing-review.csv", "manager")
    assert r.status_code == 200 and r.mimetype == "text/csv"
    review = _csv(r.data)
    assert {x["pid"] for x in review} == {p["pid"] for p in particip
                                          if recount[(p["site"], p["sex"], p["ageband"])] < 3} == suppressed
    assert all(int(x["k"]) < 3 for x in review)
    # the same in the JSON file and with the bundle's row (but the review list); the country left out
    d = json.loads(files["disclosure.json"])
    sb = db.execute(select(SharingBundle)).scalars().all()[-1]
    assert d == {k: v for k, v in sb.disclosure.items() if k != "review"} and d["sites_suppressed"] == 3
    assert {(c["site"] or "", c["sex"], c["age_band"]): c["k"] for c in d["combinations"]} == dict(recount)
    assert d["country_kept"] is False and "single site" in d["country"] and "country" not in particip[0]
    assert [b["label"] for b in d["age_bands"]] == [b[2] for b in sharing.AGE_BANDS]


def test_the_bundle_digests(world, shared, db):
    ok(unblind(world))
    lock_id = shared["lock"]
    _api_ok(world.api("POST", f"/locks/{lock_id}/sharing", "manager"), 202)
    r = world.api("GET", f"/locks/{lock_id}/sharing.zip", "manager")
    sb = db.execute(select(SharingBundle)).scalar_one()
    assert sb.sha256 == hashlib.sha256(r.data).hexdigest() == r.headers["X-Content-SHA256"]
    info = _api_ok(world.api("GET", f"/locks/{lock_id}/sharing", "statistician"), 200)
    assert info["sha256"] == sb.sha256 and info["status"] == "ready" and info["disclosure"]["children"] == 7
    files = _files(r.data)
    manifest = files.pop("manifest.sha256").decode().splitlines()
    listed = dict(reversed(line.split("  ", 1)) for line in manifest)
    assert set(listed) == set(files)
    for name, data in files.items():
        assert hashlib.sha256(data).hexdigest() == listed[name], name
    # the formats of the bundle: CSV, Stata and SAS transport for the tables with rows
    assert {"csv/particip.csv", "dta/particip.dta", "xpt/particip.xpt", "analysis/adsl.csv", "analysis/adsl.dta",
            "analysis/adsl.xpt", "dictionary.csv", "README.txt"} <= set(files)
    adsl = pd.read_stata(io.BytesIO(files["analysis/adsl.dta"]), convert_categoricals=False)
    assert len(adsl) == 7 and "pid" in adsl.columns and "studyid" not in adsl.columns
    # every zip entry has the fixed timestamp, not the lock's day
    with zipfile.ZipFile(io.BytesIO(r.data)) as z:
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_a_changed_table_is_refused_not_shared(world, shared, db):
    """The tables read now must be the locked bundle's (checked against its manifest)."""
    ok(unblind(world))
    from trial.lock.models import LockBundle
    lb = db.execute(select(LockBundle).where(LockBundle.variant == "unblinded")).scalar_one()
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(lb.content)) as src, zipfile.ZipFile(buf, "w") as dst:
        for n in src.namelist():
            data = src.read(n)
            if n.endswith("manifest.sha256"):
                data = re.sub(rb"[0-9a-f]{64}(  csv/ae\.csv)", b"0" * 64 + rb"\1", data)
            dst.writestr(n, data)
    lb.content = buf.getvalue()
    db.commit()
    _api_ok(world.api("POST", f"/locks/{shared['lock']}/sharing", "manager"), 202)
    sb = db.execute(select(SharingBundle)).scalar_one()
    assert sb.status == "failed" and "ae" in sb.error and sb.content is None
    err(world.api("GET", f"/locks/{shared['lock']}/sharing.zip", "manager"), 409, "sharing_not_ready")


# --- the page ------------------------------------------------------------------------------------

def test_the_lock_page_asks_for_it_shows_its_state_and_downloads(app, world, shared, db):
    lock_id = shared["lock"]
    manager = web_client(app, "manager")
    assert "sharing-title" not in manager.get("/locks").get_data(as_text=True)  # not before the unblinding
    assert manager.post(f"/locks/{lock_id}/sharing", data={}).status_code == 302
    assert db.execute(select(SharingBundle)).first() is None
    ok(unblind(world))
    html = manager.get("/locks").get_data(as_text=True)
    assert "sharing-title" in html and f'action="/locks/{lock_id}/sharing"' in html
    assert manager.post(f"/locks/{lock_id}/sharing", data={}).status_code == 302
    html = manager.get("/locks").get_data(as_text=True)
    assert f"/locks/{lock_id}/sharing.zip" in html
    # the children to review (the page names their list): the manager downloads it from the page too
    assert f'href="/locks/{lock_id}/sharing-review.csv"' in html
    r = manager.get(f"/locks/{lock_id}/sharing-review.csv")
    assert r.status_code == 200 and r.mimetype == "text/csv" and "disclosure_review.csv" in r.headers["Content-Disposition"]
    review = _csv(r.data)
    assert review and all(int(x["k"]) < 3 for x in review) and set(review[0]) == {"pid", "site", "sex", "age_band", "k"}
    statistician = web_client(app, "statistician")
    html = statistician.get("/locks").get_data(as_text=True)
    assert f"/locks/{lock_id}/sharing.zip" in html and f'action="/locks/{lock_id}/sharing"' not in html
    assert "sharing-review.csv" not in html and statistician.get(f"/locks/{lock_id}/sharing-review.csv").status_code == 403
    r = statistician.get(f"/locks/{lock_id}/sharing.zip")
    assert r.status_code == 200 and r.data[:2] == b"PK"
    assert statistician.post(f"/locks/{lock_id}/sharing", data={}).status_code == 403
    for who in ("coordinator", "monitor"):
        assert web_client(app, who).get(f"/locks/{lock_id}/sharing.zip").status_code == 403


# --- the rules on their own ----------------------------------------------------------------------

def test_country_is_kept_only_when_it_narrows_nobody_down():
    from trial.exports.dataset import Table, Var
    vars_ = [Var("studyid", "Study ID", "str"), Var("site", "Site code", "str"), Var("sex", "Sex", "str"),
             Var("brthdt", "Date of birth", "date"), Var("randdt", "Date of randomization", "date"),
             Var("note", "A note", "str"), Var("score", "A score", "int")]
    rows = []
    n = 0
    for site in ("AT01", "AT02", "NO01", "NO02"):
        for _ in range(3):
            n += 1
            rows.append((f"{site}-{n:04d}", site, "female", "2020-01-15", "2025-02-01", "free words", n))
    made = sharing.deidentify([Table("particip", "Participants", vars_, rows)],
                              {"AT01": "AT", "AT02": "AT", "NO01": "NO", "NO02": "NO"})
    t = made["tables"][0]
    names = [v.name for v in t.vars]
    assert made["disclosure"]["country_kept"] is True and "country" in names
    assert "note" not in names and "brthdt" not in names and names.count("ageband") == 1
    assert {r[names.index("ageband")] for r in t.rows} == {"60-71 months"}
    assert {r[names.index("randdt")] for r in t.rows} == {0}
    # one country of one site: left out
    made = sharing.deidentify([Table("particip", "Participants", vars_, rows)],
                              {"AT01": "AT", "AT02": "AT", "NO01": "NO", "NO02": "SE"})
    assert made["disclosure"]["country_kept"] is False
    assert "country" not in [v.name for v in made["tables"][0].vars]
    assert sharing.age_band(47) == "under 48 months" and sharing.age_band(48) == "48-59 months"
    assert sharing.age_band(84) == "84 months or more" and sharing.age_band(None) == sharing.UNKNOWN_BAND


def test_pseudonyms_are_drawn_at_random_not_derived_from_the_study_ids():
    """Twelve children (told apart by a score): two bundles give them different pseudonyms (the
    chance that two random draws agree is 1/12!), none holding its study id's number."""
    from trial.exports.dataset import Table, Var
    vars_ = [Var("studyid", "Study ID", "str"), Var("site", "Site code", "str"), Var("randdt", "Randomized", "date"),
             Var("score", "A score", "int")]
    rows = [(f"AT01-{n:04d}", "AT01", "2025-02-01", n) for n in range(1, 13)]

    def pids():
        t = sharing.deidentify([Table("particip", "Participants", vars_, rows)], {"AT01": "AT"})["tables"][0]
        names = [v.name for v in t.vars]
        return {r[names.index("score")]: r[names.index("pid")] for r in t.rows}
    first, second = pids(), pids()
    assert sorted(first.values()) == sorted(second.values()) == [f"C{n:05d}" for n in range(1, 13)]
    assert first != second


# --- in the background, as a lock's bundles are built ----------------------------------------------


def test_a_process_of_its_own_builds_it_from_a_committed_database(trial_db, tmp_path):  # noqa: F811
    """TRIAL_LOCK_BUILDER=worker: the request commits, a detached `python -m trial.interim.sharing ID`
    builds the bundle (progress, then ready), its output in the instance folder's worker.log."""
    import time

    from trial.auth import service as users
    from trial.lock import service as locks
    from trial.lock import unblinding
    db = trial_db["db"]
    manager = users.get_user_by_email(db, "manager@example.org")
    statistician = users.get_user_by_email(db, "statistician@example.org")
    lock = locks.create_lock(db, manager, "hard", "Final lock.", PASSWORD, accept_unsigned=True)
    db.commit()
    built = trial_cli(trial_db["env"], "worker", "--until-idle")
    assert built.returncode == 0, built.stdout + built.stderr
    req = unblinding.request_unblinding(db, manager, "Unblind after the final lock.", PASSWORD)
    db.commit()
    unblinding.countersign(db, statistician, req.id, "I countersign.", PASSWORD)
    db.commit()
    sb = sharing.request_sharing(db, manager, lock.id)
    db.commit()
    instance = tmp_path / "instance"
    sharing.start_build(db, manager, sb.id, "worker", trial_db["url"], instance)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        db.expire_all()
        state = db.get(SharingBundle, sb.id).status
        db.rollback()  # (on SQLite a transaction holds the write lock: none held while the worker writes)
        if state != "building":
            break
        time.sleep(0.5)
    row = db.get(SharingBundle, sb.id)
    log = (instance / "worker.log").read_text() if (instance / "worker.log").exists() else ""
    assert row.status == "ready", (row.status, row.error, log)
    assert row.progress == 1.0 and row.sha256 == hashlib.sha256(row.content).hexdigest()
    files = _files(row.content)
    assert len(_csv(files["csv/particip.csv"])) == 4 and row.disclosure["children"] == 4
    assert f"sharing bundle {sb.id}: ready" in log
    # audited by the worker, in the same chain
    who = db.execute(select(AuditRecord.actor).where(AuditRecord.entity == "sharing_bundle",
                                                     AuditRecord.action == "build")).scalars().all()
    assert who and all(w.startswith("worker ") for w in who)
    assert audit.verify(db).ok


def test_a_kept_running_worker_claims_data_cuts_and_sharing_bundles(trial_db, tmp_path):  # noqa: F811
    """TRIAL_LOCK_BUILDER=external: the app starts nothing; `trial worker` claims the waiting data cut and
    sharing bundle and builds them (each once); a cut whose builder went silent is failed for good."""
    from trial.auth import service as users
    from trial.interim import cuts
    from trial.interim.models import DataCut
    from trial.interim.worker import start_build as start_cut
    from trial.lock import service as locks
    from trial.lock import unblinding
    db = trial_db["db"]
    manager = users.get_user_by_email(db, "manager@example.org")
    statistician = users.get_user_by_email(db, "statistician@example.org")
    lock = locks.create_lock(db, manager, "hard", "Final lock.", PASSWORD, accept_unsigned=True)
    db.commit()
    assert trial_cli(trial_db["env"], "worker", "--until-idle").returncode == 0  # the lock's bundles
    req = unblinding.request_unblinding(db, manager, "Unblind after the final lock.", PASSWORD)
    db.commit()
    unblinding.countersign(db, statistician, req.id, "I countersign.", PASSWORD)
    db.commit()
    instance = tmp_path / "instance"
    cut = cuts.request_cut(db, manager, "Taken by the worker", True)
    dead = cuts.request_cut(db, manager, "Its builder died")
    sb = sharing.request_sharing(db, manager, lock.id)
    db.commit()
    db.execute(DataCut.__table__.update().where(DataCut.id == dead.id).values(
        worker="w:dead", heartbeat=cuts.utcnow() - dt.timedelta(minutes=10)))
    db.commit()
    start_cut(db, manager, cut.id, "external", trial_db["url"], instance)
    sharing.start_build(db, manager, sb.id, "external", trial_db["url"], instance)
    db.expire_all()
    assert db.get(DataCut, cut.id).status == "building" and db.get(SharingBundle, sb.id).status == "building"
    assert not (instance / "worker.log").exists()  # nothing started: the worker kept running claims them
    db.rollback()
    built = trial_cli(trial_db["env"], "worker", "--until-idle")
    assert built.returncode == 0, built.stdout + built.stderr
    assert f"data cut {cut.id} ready" in built.stdout and f"sharing bundle {sb.id} ready" in built.stdout, built.stdout
    assert f"data cut {dead.id}" not in built.stdout  # not taken over
    db.expire_all()
    assert db.get(DataCut, cut.id).status == "ready" and db.get(SharingBundle, sb.id).status == "ready"
    assert db.get(DataCut, dead.id).status == "failed"  # persisted, not only shown
    again = trial_cli(trial_db["env"], "worker", "--until-idle")
    assert "data cut" not in again.stdout and "sharing bundle" not in again.stdout  # each built once
    db.rollback()
