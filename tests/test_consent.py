"""Consents (issue 28, first part): the protocol's consent documents, consents at enrollment and
after it, the migrated consent dates, re-consent after an amendment (the warning, then the 409
``reconsent_due``; adverse events always accepted), the child's assent at its age, the API and the
pages."""
from __future__ import annotations

import datetime as dt
import tomllib

import pytest
from sqlalchemy import func, select

from tests.helpers import CLI, PASSWORD, randomized_before
from trial.audit.models import AuditRecord
from trial.consent import service as consent
from trial.consent.models import Consent
from trial.protocol.schema import ProtocolError, validate
from trial.protocol.service import DEFAULT_PROTOCOL, load_text
from trial.sites import service as sites

TOML = DEFAULT_PROTOCOL.read_text()
TODAY = dt.date.today()
SEED = bytes(range(32))


def iso(d: dt.date) -> str:
    return d.isoformat()


def amend(db, text: str, effective_from: dt.date | None = None) -> None:
    if effective_from is not None:
        text = f"effective_from = {iso(effective_from)}\n\n" + text
    load_text(db, CLI, text, "amendment.toml")
    db.commit()


def version2(text: str = TOML) -> str:
    """The protocol with version 2 of the parental consent (a re-consent document)."""
    old = 'key = "parental_consent"\nlabel = "Parental consent"\nversion = "1"'
    assert old in text
    return text.replace(old, old[:-3] + '"2"', 1)


DATA_PROTECTION = '''
[[consent.documents]]
key = "data_protection"
label = "Data protection notice"
version = "1"
signer = "parent"
required = true
[consent.documents.labels]
de = "Datenschutzhinweis"
'''


def consents_of(db, p) -> list[Consent]:
    db.expire_all()
    return list(db.execute(select(Consent).where(Consent.participant_id == p.id).order_by(Consent.id)).scalars())


def body(**kw) -> dict:
    out = {"document": "parental_consent", "version": "1", "language": "de", "signed_on": iso(TODAY - dt.timedelta(days=1)),
           "signer": "guardian", "options": {"video_recording": True, "future_contact": False}}
    out.update(kw)
    return out


# --- the protocol ----------------------------------------------------------------------------------

def test_protocol_consent_documents_with_options_and_assent():
    c = validate(tomllib.loads(TOML))["consent"]
    assert c["reconsent_within_days"] == 30
    parental, assent = c["documents"]
    assert (parental["key"], parental["version"], parental["signer"], parental["required"], parental["reconsent"]) == \
        ("parental_consent", "1", "parent", True, True)
    assert [o["key"] for o in parental["options"]] == ["video_recording", "future_contact"]
    assert parental["options"][0]["labels"]["de"] == "Videoaufzeichnung der Therapiesitzungen"
    assert set(parental["labels"]) == {"de", "it", "nb", "pt_BR", "ko", "he"}
    assert (assent["signer"], assent["min_age_months"], assent["required"], assent["reconsent"]) == \
        ("child", 84, False, False)


def test_a_protocol_without_consent_gets_the_one_parental_consent():
    raw = tomllib.loads(TOML)
    del raw["consent"]
    assert validate(raw)["consent"] == {"reconsent_within_days": 30, "documents": [
        {"key": "parental_consent", "label": "Parental consent", "version": "1", "signer": "parent", "required": True,
         "reconsent": False, "options": []}]}


def test_consent_problems_are_each_named():
    raw = tomllib.loads(TOML)
    raw["consent"] = {"reconsent_within_days": -1, "documents": [
        {"key": "assent", "label": "Assent", "version": "1", "signer": "child"},
        {"key": "p", "label": "P", "version": 2, "signer": "teacher", "options": [{"key": "Video", "label": "x"}]},
        {"key": "q", "label": "Q", "version": "1", "min_age_months": 84},
        {"key": "r", "label": "R", "version": "1", "colour": "red"}]}
    with pytest.raises(ProtocolError) as e:
        validate(raw)
    problems = dict(e.value.errors)
    assert problems["consent.reconsent_within_days"] == "must be 0 or more"
    assert "is missing" in problems["consent.documents[0].min_age_months"]
    assert problems["consent.documents[1].version"] == "must be a string, not int 2"
    assert problems["consent.documents[1].signer"] == "must be one of parent, child, not 'teacher'"
    assert "is not a valid key" in problems["consent.documents[1].options[0].key"]
    assert "signer = \"child\"" in problems["consent.documents[2].min_age_months"]
    assert problems["consent.documents[3].colour"].startswith("is not a known key here")


# --- enrollment ------------------------------------------------------------------------------------

def enrol_body(sc, **kw) -> dict:
    out = {"screening_id": sc.id, "date_of_birth": iso(TODAY - dt.timedelta(days=5 * 365)), "sex": "male"}
    out.update(kw)
    return out


def test_a_consent_date_alone_records_the_parental_consent_in_the_sites_language(world, db):
    sites.update_site(db, CLI, "AT01", {"languages": ["de", "en"]})
    db.commit()
    sc = world.screen()
    r = world.api("POST", "/participants", "coordinator",
                  json=enrol_body(sc, consent_date=iso(TODAY - dt.timedelta(days=3))))
    assert r.status_code == 201, r.get_json()
    sid = r.get_json()["study_id"]
    (c,) = db.execute(select(Consent)).scalars().all()
    assert (c.document, c.version, c.language, c.signed_on, c.signer, c.options, c.source) == \
        ("parental_consent", "1", "de", TODAY - dt.timedelta(days=3), "parent", {}, "enrollment")
    assert c.obtained_by_id == world.users["coordinator"].id
    assert db.execute(select(func.count()).select_from(AuditRecord).where(
        AuditRecord.entity == "consent", AuditRecord.entity_id == f"{sid}/parental_consent/1")).scalar() > 0
    # a site without languages: English
    sc = world.screen("NO01")
    r = world.api("POST", "/participants", "coordinator_no", json=enrol_body(sc, consent_date=iso(TODAY)))
    assert r.status_code == 201
    assert db.execute(select(Consent.language).order_by(Consent.id.desc())).scalars().first() == "en"


def test_site_languages_are_checked(world, db):
    r = world.api("POST", "/participants", "coordinator", json={})  # (a request, so the app is warm)
    from trial.errors import ValidationError
    with pytest.raises(ValidationError) as e:
        sites.update_site(db, CLI, "AT01", {"languages": ["de", "xx"]})
    assert "languages" in e.value.fields
    db.rollback()
    assert r.status_code == 400


def test_enrollment_with_consents_names_each_missing_required_document(world, db):
    amend(db, TOML + DATA_PROTECTION)
    sc = world.screen()
    # a consent date alone cannot say which documents were signed
    r = world.api("POST", "/participants", "coordinator", json=enrol_body(sc, consent_date=iso(TODAY)))
    assert r.status_code == 400 and set(r.get_json()["error"]["fields"]) == {"consents"}
    assert "Data protection notice" in r.get_json()["error"]["fields"]["consents"]
    # the parental consent only: the data-protection notice is named
    parental = body(signer="parent", signed_on=iso(TODAY - dt.timedelta(days=2)))
    r = world.api("POST", "/participants", "coordinator", json=enrol_body(sc, consents=[parental]))
    assert r.status_code == 400
    fields = r.get_json()["error"]["fields"]
    assert set(fields) == {"consent"} and "Data protection notice" in fields["consent"] \
        and "Parental consent" not in fields["consent"]
    # none: both named
    r = world.api("POST", "/participants", "coordinator", json=enrol_body(sc, consents=[]))
    assert "Parental consent" in r.get_json()["error"]["fields"]["consent"]
    assert "Data protection notice" in r.get_json()["error"]["fields"]["consent"]
    # a bad consent among them: its fields named by position
    bad = body(document="data_protection", version="7", language="xx", signer="child", options={"colour": True})
    r = world.api("POST", "/participants", "coordinator", json=enrol_body(sc, consents=[parental, bad]))
    assert r.status_code == 400
    assert {"consents[1].version", "consents[1].language", "consents[1].signer", "consents[1].options.colour"} <= \
        set(r.get_json()["error"]["fields"])
    assert db.execute(select(func.count()).select_from(Consent)).scalar() == 0
    # both: enrolled, the consent date is the parental consent's
    dp = body(document="data_protection", signer="parent", options={}, signed_on=iso(TODAY))
    r = world.api("POST", "/participants", "coordinator", json=enrol_body(sc, consents=[parental, dp]))
    assert r.status_code == 201, r.get_json()
    got = world.api("GET", f"/participants/{r.get_json()['study_id']}", "coordinator").get_json()
    assert got["consent_date"] == parental["signed_on"]
    assert {(c.document, c.source) for c in db.execute(select(Consent)).scalars()} == \
        {("parental_consent", "enrollment"), ("data_protection", "enrollment")}


# --- the migrated consent dates --------------------------------------------------------------------

def test_0024_turns_each_consent_date_into_a_parental_consent():
    from alembic import command

    from tests.conftest import FreshDatabase
    from tests.helpers import World
    from trial import create_app
    from trial.db import make_session_factory
    from trial.migrate import alembic_config
    fresh = FreshDatabase("consent0024")
    try:
        factory = make_session_factory(fresh.engine)
        s = factory()
        w = World(s, create_app({"ENGINE": fresh.engine, "SESSION_FACTORY": factory, "TESTING": True,
                                 "SECRET_KEY": "t"})).setup()
        kids = [w.enroll(consent_date=iso(TODAY - dt.timedelta(days=20 + i))) for i in range(2)]
        kids.append(w.enroll("NO01"))
        s.close()
        with fresh.engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0023")
            command.upgrade(alembic_config(conn), "head")
        s = factory()
        rows = {r.participant_id: r for r in s.execute(select(Consent)).scalars()}
        assert set(rows) == {p.id for p in kids}
        for p in kids:
            c = rows[p.id]
            assert (c.document, c.version, c.signer, c.options, c.source, c.signed_on) == \
                ("parental_consent", "1", "parent", None, "migrated", p.consent_date)
        assert rows[kids[2].id].language == "nb" and rows[kids[0].id].language == "de"
        # the migrated rows agree with the protocol: nothing is due for these children
        assert consent.due_for(s, list(s.execute(select(type(kids[0]))).scalars())) == []
        s.close()
    finally:
        fresh.drop()


# --- re-consent after an amendment --------------------------------------------------------------------

def assessment(world, p, on: dt.date, visit="month2"):
    return world.api("POST", f"/participants/{p.study_id}/assessments", "assessor",
                     json={"visit": visit, "instrument": "ados2", "performed_on": iso(on),
                           "values": {"social_affect": 10, "rrb": 3, "css": 5}, "allocation_guess": "unsure",
                           "guess_confidence": 2})


def test_a_new_version_makes_the_reconsent_due_from_its_effective_date_with_a_warning(world, db):
    world.open(SEED)
    p, _ = randomized_before(world, db, TODAY - dt.timedelta(days=61))
    assert world.api("GET", "/consents/due", "coordinator").get_json() == []
    amend(db, version2(), effective_from=TODAY - dt.timedelta(days=10))
    due = world.api("GET", "/consents/due", "coordinator").get_json()
    assert due == [{"study_id": p.study_id, "document": "parental_consent", "version": "2",
                    "due_since": iso(TODAY - dt.timedelta(days=10))}]
    # within reconsent_within_days: accepted, with a warning naming the document and version
    r = assessment(world, p, TODAY)
    assert r.status_code == 201, r.get_json()
    assert "re-consent to Parental consent version 2" in r.get_json()["warning"]


def test_an_overdue_reconsent_refuses_new_data_but_not_adverse_events(world, db):
    world.open(SEED)
    kids = [randomized_before(world, db, TODAY - dt.timedelta(days=61)) for _ in range(4)]
    p = kids[0][0]
    music = next(k for k, arm in kids if arm in ("low", "high"))
    amend(db, version2(), effective_from=TODAY - dt.timedelta(days=31))
    r = assessment(world, p, TODAY)
    assert r.status_code == 409
    e = r.get_json()["error"]
    assert e["code"] == "reconsent_due" and "Parental consent version 2" in e["message"]
    r = world.api("POST", f"/participants/{music.study_id}/sessions", "therapist",
                  json={"held_on": iso(TODAY - dt.timedelta(days=1)), "attendance": "attended", "minutes": 30})
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "reconsent_due"
    r = world.api("POST", f"/participants/{p.study_id}/adverse-events", "coordinator",
                  json={"term": "Otitis media", "onset": iso(TODAY - dt.timedelta(days=2)), "severity": "mild",
                        "serious": False, "relatedness": "not_related", "outcome": "recovering"})
    assert r.status_code == 201, r.get_json()
    # the re-consent recorded: the child's data are accepted again, the others' still refused
    r = world.api("POST", f"/participants/{p.study_id}/consents", "coordinator",
                  json=body(version="2", signer="parent", signed_on=iso(TODAY)))
    assert r.status_code == 201, r.get_json()
    r = assessment(world, p, TODAY)
    assert r.status_code == 201 and "warning" not in r.get_json()
    assert [d["study_id"] for d in world.api("GET", "/consents/due", "manager").get_json()] == \
        sorted(k.study_id for k, _ in kids[1:])


def test_an_overdue_reconsent_still_accepts_status_events_and_deviations(world, db):
    """As ensure_consented's docstring says: what happened to the child (a deviation, here the
    missed re-consent itself; a status event) is recorded whatever is overdue."""
    world.open(SEED)
    p, _ = randomized_before(world, db, TODAY - dt.timedelta(days=61))
    amend(db, version2(), effective_from=TODAY - dt.timedelta(days=31))
    assert assessment(world, p, TODAY).status_code == 409
    r = world.api("POST", f"/participants/{p.study_id}/deviations", "coordinator",
                  json={"on": iso(TODAY), "category": "consent", "description": "re-consent to version 2 overdue"})
    assert r.status_code == 201, r.get_json()
    r = world.api("POST", f"/participants/{p.study_id}/events", "coordinator",
                  json={"type": "lost_to_follow_up", "on": iso(TODAY), "reason": "family unreachable"})
    assert r.status_code == 201, r.get_json()


def new_document(key: str, required: bool, reconsent: bool) -> str:
    return (f'\n[[consent.documents]]\nkey = "{key}"\nlabel = "Document {key}"\nversion = "1"\nsigner = "parent"\n'
            f'required = {str(required).lower()}\nreconsent = {str(reconsent).lower()}\n')


def test_a_required_document_added_by_an_amendment_is_a_reconsent_due_for_every_child_in_the_trial(world, db):
    world.open(SEED)
    p, _ = randomized_before(world, db, TODAY - dt.timedelta(days=61))
    q, _ = randomized_before(world, db, TODAY - dt.timedelta(days=61))
    r = world.api("POST", f"/participants/{q.study_id}/events", "coordinator",
                  json={"type": "withdrawn", "on": iso(TODAY - dt.timedelta(days=40)), "reason": "moved away"})
    assert r.status_code == 201, r.get_json()
    amend(db, TOML + new_document("data_protection", required=True, reconsent=True),
          effective_from=TODAY - dt.timedelta(days=31))
    # the child still in the trial owes it from the amendment's effective date (the withdrawn one does not)
    assert world.api("GET", "/consents/due", "coordinator").get_json() == [
        {"study_id": p.study_id, "document": "data_protection", "version": "1",
         "due_since": iso(TODAY - dt.timedelta(days=31))}]
    # a re-consent like any other: overdue after reconsent_within_days, new data refused, AEs accepted
    r = assessment(world, p, TODAY)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "reconsent_due"
    assert "Document data_protection version 1" in r.get_json()["error"]["message"]
    r = world.api("POST", f"/participants/{p.study_id}/consents", "coordinator",
                  json=body(document="data_protection", signer="parent", options={}, signed_on=iso(TODAY)))
    assert r.status_code == 201, r.get_json()
    assert world.api("GET", "/consents/due", "coordinator").get_json() == []
    assert assessment(world, p, TODAY).status_code == 201
    # a child enrolled from now on signs it at enrollment and owes nothing
    sc = world.screen()
    r = world.api("POST", "/participants", "coordinator", json=enrol_body(sc, consents=[
        body(signer="parent", signed_on=iso(TODAY)),
        body(document="data_protection", signer="parent", options={}, signed_on=iso(TODAY))]))
    assert r.status_code == 201, r.get_json()
    assert world.api("GET", "/consents/due", "coordinator").get_json() == []


@pytest.mark.parametrize("required, reconsent", [(False, True), (False, False), (True, False)],
                         ids=["optional", "optional-no-reconsent", "required-new-enrollments-only"])
def test_an_optional_document_added_by_an_amendment_is_never_due(world, db, required, reconsent):
    """Offered, not owed: an optional new document (or a required one the amendment asks only of
    the children enrolled from now on, ``reconsent = false``) is no re-consent due and refuses
    nothing; a new version of the parental consent in the same amendment still is."""
    world.open(SEED)
    p, _ = randomized_before(world, db, TODAY - dt.timedelta(days=61))
    amend(db, TOML + new_document("video_sharing", required=required, reconsent=reconsent),
          effective_from=TODAY - dt.timedelta(days=40))
    assert world.api("GET", "/consents/due", "manager").get_json() == []
    r = assessment(world, p, TODAY)
    assert r.status_code == 201 and "warning" not in r.get_json()
    amend(db, version2(TOML + new_document("video_sharing", required=required, reconsent=reconsent)),
          effective_from=TODAY - dt.timedelta(days=5))
    assert [(d["document"], d["version"]) for d in world.api("GET", "/consents/due", "manager").get_json()] == \
        [("parental_consent", "2")]


def test_a_document_of_the_first_protocol_never_signed_is_no_reconsent(world, db):
    """Only an amendment makes a re-consent: a required document the first protocol already had
    (a family without it is an enrollment's problem, not a re-consent) is not reported."""
    world.open(SEED)
    p, _ = randomized_before(world, db, TODAY - dt.timedelta(days=61))
    db.execute(Consent.__table__.delete().where(Consent.participant_id == p.id))
    db.commit()
    assert world.api("GET", "/consents/due", "manager").get_json() == []


def test_an_assent_is_due_from_the_childs_84th_month(world, db):
    born = dt.date(TODAY.year - 7, TODAY.month, 1)  # 84 months on the 1st of this month
    consented = TODAY - dt.timedelta(days=TODAY.day + 3)  # 83 months old then
    sc = world.screen(screened_on=iso(consented))
    r = world.api("POST", "/participants", "coordinator",
                  json=enrol_body(sc, consent_date=iso(consented), date_of_birth=iso(born)))
    assert r.status_code == 201, r.get_json()
    sid = r.get_json()["study_id"]
    assert world.api("GET", "/consents/due", "coordinator").get_json() == [
        {"study_id": sid, "document": "child_assent", "version": "1", "due_since": iso(born.replace(year=born.year + 7))}]
    # an assent is not signed by a parent; signed by the child it clears the due
    r = world.api("POST", f"/participants/{sid}/consents", "coordinator",
                  json=body(document="child_assent", signer="parent", options={}))
    assert r.status_code == 400 and set(r.get_json()["error"]["fields"]) == {"signer"}
    r = world.api("POST", f"/participants/{sid}/consents", "coordinator",
                  json=body(document="child_assent", signer="child", options={}, signed_on=iso(TODAY)))
    assert r.status_code == 201
    assert world.api("GET", "/consents/due", "coordinator").get_json() == []


# --- the API --------------------------------------------------------------------------------------

def test_consent_routes_by_role_with_each_bad_field_named(world, db):
    p = world.enroll()
    sid = p.study_id
    r = world.api("POST", f"/participants/{sid}/consents", "coordinator", json=body())
    assert r.status_code == 201
    got = r.get_json()
    assert (got["study_id"], got["document"], got["signer"], got["options"], got["source"]) == \
        (sid, "parental_consent", "guardian", {"video_recording": True, "future_contact": False}, "entered")
    assert db.execute(select(func.count(func.distinct(AuditRecord.entity_id))).where(
        AuditRecord.entity == "consent")).scalar() == 1  # (enrollment's and this one share document and version)
    # the same document, version and signer again: 409, nothing added
    r = world.api("POST", f"/participants/{sid}/consents", "coordinator", json=body())
    assert r.status_code == 409
    # each bad field named, nothing recorded
    bad = body(document="nonsense", language="sv", signed_on=iso(TODAY + dt.timedelta(days=2)), signer="aunt",
               options={"video_recording": True})
    r = world.api("POST", f"/participants/{sid}/consents", "coordinator", json=bad)
    assert r.status_code == 400
    assert {"document", "language", "signed_on", "signer"} <= set(r.get_json()["error"]["fields"])
    r = world.api("POST", f"/participants/{sid}/consents", "coordinator",
                  json=body(version="9", signer="parent", options={"parking": True},
                            signed_on=iso(TODAY - dt.timedelta(days=400))))
    assert {"version", "options.parking", "signed_on"} == set(r.get_json()["error"]["fields"])
    assert len(consents_of(db, p)) == 2
    # who may read and write
    for who in ("therapist", "assessor", "statistician", "admin", "monitor", "manager"):
        assert world.api("POST", f"/participants/{sid}/consents", who, json=body(signer="parent")).status_code == 403, who
    assert world.api("POST", f"/participants/{sid}/consents", "coordinator_no", json=body()).status_code in (403, 404)
    for who in ("coordinator", "monitor", "manager"):
        r = world.api("GET", f"/participants/{sid}/consents", who)
        assert r.status_code == 200 and [c["source"] for c in r.get_json()] == ["enrollment", "entered"], who
        assert world.api("GET", "/consents/due", who).status_code == 200
    for who in ("therapist", "assessor", "statistician", "admin"):
        assert world.api("GET", f"/participants/{sid}/consents", who).status_code == 403, who
        assert world.api("GET", "/consents/due", who).status_code == 403, who
    assert world.api("GET", f"/participants/{sid}/consents", "coordinator_no").status_code == 404
    assert world.api("GET", "/consents/due?site=NO01", "manager").get_json() == []


# --- the pages --------------------------------------------------------------------------------------

def login(app, who):
    c = app.test_client()
    assert c.post("/login", data={"email": f"{who}@example.org", "password": PASSWORD}).status_code == 302
    return c


@pytest.mark.parametrize("lang,words,after", [
    ("en", ("Consents", "Parental consent", "options not recorded", "Due since", "English"),
     ("Video recording of therapy sessions: yes", "Contact about future studies: no", "Deutsch", "Guardian")),
    ("de", ("Einwilligung der Eltern", "English"), ("Videoaufzeichnung der Therapiesitzungen", "Deutsch")),
])
def test_the_pages_show_consents_and_what_is_due(app, world, db, lang, words, after):
    world.open(SEED)
    p, _ = randomized_before(world, db, TODAY - dt.timedelta(days=61))
    # a migrated consent date: options not recorded
    db.execute(Consent.__table__.update().where(Consent.participant_id == p.id).values(options=None, source="migrated"))
    db.commit()
    amend(db, version2(), effective_from=TODAY - dt.timedelta(days=3))
    c = login(app, "coordinator")
    c.environ_base["HTTP_ACCEPT_LANGUAGE"] = lang
    # the re-consent due: on the participant's page, the home page and the status grid
    page = c.get(f"/participants/{p.study_id}").get_data(as_text=True)
    part = page.split('id="consents"')[1].split("</table>")[0]
    for w in words:
        assert w in part, w
    for key in ("parental_consent", "video_recording", "consent_document"):  # no internal key
        assert key not in part, key
    home = c.get("/").get_data(as_text=True)
    assert p.study_id in home.split('id="consents-due"')[1].split("</div>")[0]
    grid = c.get("/dashboard/").get_data(as_text=True)
    assert "consent-due" in grid
    # the form records it (its options: the ticked ones given, the others declined)
    r = c.get(f"/participants/{p.study_id}/consents/new")
    assert r.status_code == 200
    r = c.post(f"/participants/{p.study_id}/consents/new", data={
        "document": "parental_consent", "language": "de", "signed_on": iso(TODAY - dt.timedelta(days=1)),
        "signer": "guardian", "options": "video_recording"})
    assert r.status_code == 302, r.get_data(as_text=True)
    got = consents_of(db, p)[-1]
    assert (got.version, got.signer, got.options) == ("2", "guardian", {"video_recording": True, "future_contact": False})
    assert "consent-due" not in c.get("/dashboard/").get_data(as_text=True)
    assert 'id="consents-due"' not in c.get("/").get_data(as_text=True)
    page = c.get(f"/participants/{p.study_id}").get_data(as_text=True)
    part = page.split('id="consents"')[1].split("</table>")[0]
    for w in after:
        assert w in part, w
    assert "Coordinator" in part  # who obtained it
    # an option of another document: refused on the form, nothing recorded
    r = c.post(f"/participants/{p.study_id}/consents/new", data={
        "document": "child_assent", "language": "de", "signed_on": iso(TODAY), "signer": "child",
        "options": "video_recording"})
    assert r.status_code == 400 and len(consents_of(db, p)) == 2
    # readers without consents see none
    assert "id=\"consents\"" not in login(app, "assessor").get(f"/participants/{p.study_id}").get_data(as_text=True)


# --- `trial audit verify --data` ---------------------------------------------------------------------

def test_the_replay_compares_consents_and_withdrawals_and_accepts_the_migrated_ones(world, db):
    from sqlalchemy import text

    from trial.audit import replay
    from trial.consent.models import ConsentWithdrawal
    from trial.participants.models import Participant

    specs = {s.table: s for s in replay.TABLES}

    def found() -> set[tuple[str, str, str]]:
        db.expire_all()
        return {(d.table, d.id, d.field) for t in ("consent", "consent_withdrawal")
                for d in replay.compare_table(db, specs[t])}

    sc = world.screen()
    r = world.api("POST", "/participants", "coordinator", json=enrol_body(sc, consent_date=iso(TODAY - dt.timedelta(days=3))))
    sid = r.get_json()["study_id"]
    r = world.api("POST", f"/participants/{sid}/consents", "coordinator", json=body(signer="guardian"))
    assert r.status_code == 201, r.get_json()
    r = world.api("POST", f"/participants/{sid}/consent-withdrawals", "coordinator",
                  json={"on": iso(TODAY), "scope": "follow_up", "data_use": "keep"})
    assert r.status_code == 201, r.get_json()
    # recorded through the services: clean
    assert found() == set()
    # a child enrolled before issue 28 (as then: no consent record): its consent written by migration
    # 0024 from its consent date, without an audit record
    sc2 = world.screen()
    old = Participant(study_id="AT01-900", site_id=sc2.site_id, screening_id=sc2.id,
                      consent_date=TODAY - dt.timedelta(days=9), date_of_birth=TODAY - dt.timedelta(days=5 * 365),
                      sex="male", strata={})
    db.add(old)
    db.flush()
    db.execute(Consent.__table__.insert().values(participant_id=old.id, document="parental_consent", version="1",
                                                 language="en", signed_on=old.consent_date, signer="parent",
                                                 options=None, source="migrated"))
    db.commit()
    migrated = db.execute(select(Consent.id).where(Consent.participant_id == old.id)).scalar_one()
    assert found() == set()
    # changed by plain SQL: named by table, row id and field; a migrated row unlike what 0024 wrote too
    guardian = db.execute(select(Consent.id).where(Consent.signer == "guardian")).scalar_one()
    db.execute(text("UPDATE consent SET signed_on = :d WHERE id = :i"), {"d": TODAY - dt.timedelta(days=20),
                                                                         "i": guardian})
    db.execute(text("UPDATE consent SET options = :o WHERE id = :i"), {"o": '{"video_recording": true}', "i": migrated})
    w = db.execute(select(ConsentWithdrawal.id)).scalar_one()
    db.execute(text("UPDATE consent_withdrawal SET data_use = 'delete_unanalysed' WHERE id = :i"), {"i": w})
    assert found() == {("consent", str(guardian), "signed_on"), ("consent", str(migrated), "options"),
                       ("consent_withdrawal", str(w), "data_use")}
    problems = [str(d) for d in replay.compare_table(db, specs["consent"])]
    assert f"consent {migrated} options: differs from its audit trail (changed without a record): not what " \
           "migration 0024 wrote" in problems
    db.rollback()
    # a row passed off as "migrated": compared with the trail when the trail has it, with what 0024
    # wrote when not; one deleted is named by what the trail calls it
    db.execute(text("UPDATE consent SET source = 'migrated' WHERE id = :i"), {"i": guardian})
    db.execute(Consent.__table__.insert().values(participant_id=old.id, document="parental_consent", version="1",
                                                 language="en", signed_on=TODAY, signer="guardian",
                                                 options=None, source="migrated"))
    fake = db.execute(select(Consent.id).where(Consent.participant_id == old.id, Consent.signer == "guardian")
                      ).scalar_one()
    db.execute(text("DELETE FROM consent WHERE signer = 'parent' AND participant_id = "
                    "(SELECT id FROM participant WHERE study_id = :s)"), {"s": sid})
    assert found() == {("consent", str(guardian), "source"), ("consent", str(fake), "signer"),
                       ("consent", str(fake), "signed_on"), ("consent", f"{sid}/parental_consent/1/parent", "*")}
    db.rollback()


def test_options_missing_from_the_enrollments_consent_are_recorded_later_and_a_true_duplicate_is_refused_in_words(world, db):
    """Enrolled with the consent date alone, the parental consent has no options; recording the same
    version with its options completes it (audited, the replay agrees); recording it again is 409,
    in words (the document's label, not its key)."""
    from trial.audit import replay

    sc = world.screen()
    r = world.api("POST", "/participants", "coordinator", json=enrol_body(sc, consent_date=iso(TODAY - dt.timedelta(days=3))))
    sid = r.get_json()["study_id"]
    c = body(signer="parent", options={"video_recording": True, "future_contact": False})
    r = world.api("POST", f"/participants/{sid}/consents", "coordinator", json=c)
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["options"] == {"video_recording": True, "future_contact": False}
    db.expire_all()
    specs = {s.table: s for s in replay.TABLES}
    assert list(replay.compare_table(db, specs["consent"])) == []
    r = world.api("POST", f"/participants/{sid}/consents", "coordinator", json=c)
    assert r.status_code == 409
    msg = str(r.get_json())
    assert "Parental consent" in msg and "parental_consent" not in msg and "a parent" in msg
