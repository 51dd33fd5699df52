"""Withdrawals of consent with their scope (issue 28): the API's validation and roles, and each
scope's effects on sessions, visits, the missing-form checks, the visit plan and CONSORT."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from tests.helpers import CLI, backdate_randomization, randomized_before
from trial.audit.models import AuditRecord
from trial.consent.models import Consent, ConsentWithdrawal
from trial.course import service as course
from trial.course.models import TherapySession
from trial.dataquality.models import DataQuery
from trial.errors import Conflict
from trial.exports.consort import consort
from trial.outcomes import service as outcomes
from trial.participants.models import Participant, StatusEvent
from trial.participants.service import allocation_of, events_of, status_label
from trial.visitplan.models import PlannedVisit
from trial.visitplan.service import stale

SEED = bytes(range(32))
TODAY = dt.date.today()
R = TODAY - dt.timedelta(days=200)   # every child randomized on this day
ADOS = {"social_affect": 10, "rrb": 3, "css": 5}


def iso(d: dt.date) -> str:
    return d.isoformat()


@pytest.fixture()
def kids(world, db):
    """Children at AT01 randomized on R: two in a music arm and one in usual care."""
    world.open(SEED)
    music, usual = [], []
    while len(music) < 2 or not usual:
        p, arm = randomized_before(world, db, R)
        (usual if arm == "usual" else music).append(p)
    backdate_randomization(db, dt.datetime.combine(R, dt.time(10, 0)))
    return {"m1": music[0], "m2": music[1], "usual": usual[0]}


def withdraw(world, p, who="coordinator", **body):
    path = f"/participants/{p.study_id}/consent-withdrawals"
    world.db.commit()  # hold no transaction (a savepoint the app's commit would land in) while the app answers
    return world.api("POST", path, who,
                     json={"on": iso(R + dt.timedelta(days=100)), "scope": "follow_up", "data_use": "keep", **body})


def session(db, p, day: dt.date):
    s = course.log_session(db, CLI, p.study_id, {"held_on": iso(day), "attendance": "attended", "minutes": 30})
    db.commit()
    return s


def assess(db, p, visit: str, day: dt.date):
    a = outcomes.record_assessment(db, CLI, p.study_id, {"visit": visit, "instrument": "ados2", "performed_on": iso(day),
                                                         "values": ADOS, "allocation_guess": "unsure",
                                                         "guess_confidence": 2})
    db.commit()
    return a


def count(db, model) -> int:
    return db.execute(select(func.count()).select_from(model)).scalar()


def test_bad_input_is_refused_naming_each_field_and_nothing_is_recorded(world, db, kids):
    p = kids["m1"]
    r = withdraw(world, p, scope="therapy", data_use="erase")
    assert r.status_code == 400, r.get_json()
    assert set(r.get_json()["error"]["fields"]) == {"scope", "data_use"}
    r = withdraw(world, p, on=iso(TODAY + dt.timedelta(days=1)))  # the site's today decides (the service)
    assert r.status_code == 400 and set(r.get_json()["error"]["fields"]) == {"on"}
    assert "future" in r.get_json()["error"]["fields"]["on"]
    r = withdraw(world, p, on=iso(p.consent_date - dt.timedelta(days=1)))  # before the consent
    assert r.status_code == 400 and set(r.get_json()["error"]["fields"]) == {"on"}
    r = withdraw(world, p, text="x" * 2001)
    assert r.status_code == 400 and set(r.get_json()["error"]["fields"]) == {"text"}
    r = withdraw(world, p, on=None)
    assert r.status_code == 400 and "on" in r.get_json()["error"]["fields"]
    db.expire_all()
    assert count(db, ConsentWithdrawal) == 0
    assert count(db, StatusEvent) == 0


@pytest.mark.parametrize("who", ["therapist", "assessor", "monitor", "statistician", "admin", "coordinator_no"])
def test_roles_other_than_the_sites_coordinator_and_the_manager_are_refused(world, db, kids, who):
    r = withdraw(world, kids["m1"], who)
    assert r.status_code in (403, 404), r.get_json()  # (another site's coordinator: the child is unknown to it)
    if who != "coordinator_no":
        assert r.status_code == 403
    db.expire_all()
    assert count(db, ConsentWithdrawal) == 0


def test_the_coordinator_and_the_manager_record_a_withdrawal_audited(world, db, kids):
    r = withdraw(world, kids["m1"], scope="intervention", data_use="delete_unanalysed", text="too tiring")
    assert r.status_code == 201, r.get_json()
    assert withdraw(world, kids["m2"], "manager").status_code == 201
    db.expire_all()
    w = db.get(ConsentWithdrawal, r.get_json()["id"])
    assert (w.on, w.scope, w.data_use, w.text) == (R + dt.timedelta(days=100), "intervention", "delete_unanalysed",
                                                  "too tiring")
    recs = db.execute(select(AuditRecord).where(AuditRecord.entity == "consent_withdrawal",
                                                AuditRecord.entity_id == str(w.id))).scalars().all()
    assert recs and {r.action for r in recs} == {"create"}
    # the same scope twice: 409, nothing more recorded
    r = withdraw(world, kids["m1"], scope="intervention")
    assert r.status_code == 409
    db.expire_all()
    assert count(db, ConsentWithdrawal) == 2


def test_intervention_stops_sessions_from_its_day_but_not_the_follow_up(world, db, kids):
    p, day = kids["m1"], R + dt.timedelta(days=100)
    assert withdraw(world, p, scope="intervention", on=iso(day)).status_code == 201
    db.expire_all()
    session(db, p, day - dt.timedelta(days=1))  # before the day: still accepted (logged late)
    with pytest.raises(Conflict) as e:
        session(db, p, day)
    db.rollback()
    assert "withdrew consent" in str(e.value) and iso(day) in str(e.value)
    sid = p.study_id
    db.commit()
    r = world.api("POST", f"/participants/{sid}/sessions", "therapist",
                  json={"held_on": iso(day + dt.timedelta(days=3)), "attendance": "attended", "minutes": 30})
    assert r.status_code == 409 and "held_on" in r.get_json()["error"]["fields"]
    # a session is not moved onto or past the day either
    s = db.execute(select(TherapySession).where(TherapySession.participant_id == p.id)).scalars().first()
    with pytest.raises(Conflict):
        course.correct_session(db, CLI, s.id, {"held_on": iso(day + dt.timedelta(days=1)), "reason": "wrong day"})
    db.rollback()
    # participation goes on: no status event, the 5-month visit is entered, the plan expects it
    assert events_of(db, [p.id]) == {}
    assess(db, p, "month5", R + dt.timedelta(days=152))
    assert True not in db.execute(select(PlannedVisit.ended).where(PlannedVisit.participant_id == p.id)).scalars().all()


def test_follow_up_stops_visits_after_it_and_their_missing_form_checks(world, db, kids):
    p, day = kids["m1"], R + dt.timedelta(days=100)
    assert withdraw(world, p, scope="follow_up", on=iso(day)).status_code == 201
    db.expire_all()
    # the 5-month visit opens after the day: refused; the 2-month one (before it) is accepted
    with pytest.raises(Conflict) as e:
        assess(db, p, "month5", R + dt.timedelta(days=152))
    db.rollback()
    assert "withdrew consent" in str(e.value)
    sid = p.study_id
    db.commit()
    r = world.api("POST", f"/participants/{sid}/assessments", "assessor",
                  json={"visit": "month5", "instrument": "ados2", "performed_on": iso(R + dt.timedelta(days=152)),
                        "values": ADOS, "allocation_guess": "unsure", "guess_confidence": 2})
    assert r.status_code == 409 and "visit" in r.get_json()["error"]["fields"]
    assess(db, p, "month2", R + dt.timedelta(days=61))
    # the plan: month5 and month12 ended, month2 not; and the stored plan is the derived one
    ended = dict(db.execute(select(PlannedVisit.visit, PlannedVisit.ended).where(PlannedVisit.participant_id == p.id)).all())
    assert ended["month5"] and ended["month12"] and not ended["month2"]
    assert stale(db) == []
    # the checks: the 5-month forms are never missing (no query), those of a child still followed up are
    outcomes.check_missing_forms(db, [db.get(Participant, k.id) for k in kids.values()])
    db.commit()
    asked = set(db.execute(select(DataQuery.participant_id, DataQuery.visit)
                           .where(DataQuery.origin == "check")).all())
    assert (p.id, "month5") not in asked and (kids["m2"].id, "month5") in asked
    assert (p.id, "month2") in asked  # the SRS-2 at two months was due before the withdrawal
    sched = outcomes.schedule(db, CLI, [db.get(Participant, p.id)])[p.id]
    assert {e["visit"]: e["status"] for e in sched}["month5"] == "not_expected"
    # sessions go on, and participation does not end
    session(db, p, day + dt.timedelta(days=1))
    assert events_of(db, [p.id]) == {}


def test_a_due_visit_after_a_follow_up_withdrawal_is_not_due_nor_missing(world, db):
    world.open(SEED)
    start = TODAY - dt.timedelta(days=61)  # the 2-month visit is due today
    p, _ = randomized_before(world, db, start)
    backdate_randomization(db, dt.datetime.combine(start, dt.time(10, 0)), p.id)
    def due():
        db.commit()
        return {(row["study_id"], row["visit"]) for row in world.api("GET", "/visits?kind=due", "coordinator").get_json()}
    sid = p.study_id
    assert (sid, "month2") in due()
    assert withdraw(world, p, scope="follow_up", on=iso(TODAY - dt.timedelta(days=1))).status_code == 201
    assert (sid, "month2") not in due()
    # after the window closed: no query for it
    db.expire_all()
    assert outcomes.check_missing_forms(db, [db.get(Participant, p.id)], TODAY + dt.timedelta(days=60)) == 0


def test_all_records_the_withdrawn_event_and_stops_everything(world, db, kids):
    p, day = kids["m1"], R + dt.timedelta(days=100)
    assert withdraw(world, p, scope="all", on=iso(day)).status_code == 201
    db.expire_all()
    evs = events_of(db, [p.id])[p.id]
    assert [(e.type, e.on) for e in evs] == [("withdrawn", day)]
    assert status_label(True, evs) == "withdrawn"
    with pytest.raises(Conflict):
        session(db, p, day + dt.timedelta(days=1))
    db.rollback()
    with pytest.raises(Conflict):
        assess(db, p, "month5", R + dt.timedelta(days=152))
    db.rollback()
    assert db.execute(select(PlannedVisit.ended).where(PlannedVisit.participant_id == p.id,
                                                       PlannedVisit.visit == "month5")).scalar() is True
    # a withdrawn child takes no further withdrawal
    assert withdraw(world, p, scope="intervention").status_code == 409


def test_consort_counts_the_withdrawals_by_scope(world, db, kids):
    for key, scope in (("m1", "intervention"), ("m2", "follow_up"), ("usual", "all")):
        assert withdraw(world, kids[key], scope=scope).status_code == 201
    # a child with both partial withdrawals counts once, as complete
    assert withdraw(world, kids["m1"], scope="follow_up", on=iso(R + dt.timedelta(days=120))).status_code == 201
    db.expire_all()
    c = consort(db, CLI, blinded=False)
    by_arm: dict[str, dict] = {}
    for p in kids.values():
        arm = allocation_of(db, p.id).arm
        by_arm.setdefault(arm, {"discontinued_intervention": 0, "withdrew_from_follow_up": 0, "withdrew_completely": 0})
    by_arm[allocation_of(db, kids["m1"].id).arm]["withdrew_completely"] += 1
    by_arm[allocation_of(db, kids["m2"].id).arm]["withdrew_from_follow_up"] += 1
    by_arm["usual"]["withdrew_completely"] += 1
    for arm, want in by_arm.items():
        assert c["arms"][arm]["withdrawals_of_consent"] == want
    pooled = consort(db, CLI, blinded=True)["arms"]["all"]["withdrawals_of_consent"]
    assert pooled == {"discontinued_intervention": None, "withdrew_from_follow_up": 1, "withdrew_completely": 2}


@pytest.mark.parametrize("same", [True, False], ids=["one-music-arm", "two-music-arms"])
def test_the_consort_diagram_draws_the_withdrawals_of_consent_in_the_follow_up_of_each_arm(world, db, kids, tmp_path,
                                                                                           same):
    import os
    import re
    import shutil
    import subprocess

    from trial.catalogue import Msg
    from trial.exports.service import consort_pdf, consort_svg

    def lines(svg: str) -> list[str]:
        import html
        return [html.unescape(x) for x in re.findall(r'xml:space="preserve">([^<]*)<', svg)]

    # none yet: no line
    assert not [x for x in lines(consort_svg(db, CLI)) if "Withdrew consent" in x]
    # both layouts, whatever the list drew: the second music child in the first one's arm, or in the other
    music = allocation_of(db, kids["m1"].id).arm
    second = kids["m2"]
    while allocation_of(db, second.id).arm == "usual" or (allocation_of(db, second.id).arm == music) != same:
        second, _ = randomized_before(world, db, R)
        backdate_randomization(db, dt.datetime.combine(R, dt.time(10, 0)), second.id)
    kids = {**kids, "m2": second}
    for key, scope in (("m1", "intervention"), ("m2", "follow_up"), ("usual", "all")):
        assert withdraw(world, kids[key], scope=scope).status_code == 201
    db.expire_all()
    svg = consort_svg(db, CLI)
    text = " ".join(lines(svg))
    usual = "Withdrew consent: from the intervention (n=0), from follow-up (n=0), from both (n=1)"
    assert usual in text
    if same:
        assert "Withdrew consent: from the intervention (n=1), from follow-up (n=1), from both (n=0)" in text
    else:
        assert "Withdrew consent: from the intervention (n=1), from follow-up (n=0), from both (n=0)" in text
        assert "Withdrew consent: from the intervention (n=0), from follow-up (n=1), from both (n=0)" in text
    # the follow-up boxes (one per arm) hold the line and overlap nothing: every box's text inside it
    boxes = [tuple(map(float, m)) for m in re.findall(r'<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" '
                                                       r'height="([\d.]+)" fill="#fff" stroke', svg)]
    for i, (x, y, w, h) in enumerate(boxes):
        for (x2, y2, w2, h2) in boxes[i + 1:]:
            assert x + w <= x2 or x2 + w2 <= x or y + h <= y2 or y2 + h2 <= y, "boxes overlap"
    # in the reader's language: the line is one message of the catalogue, put through the page's ``say``
    said: list[Msg] = []

    def say(m):
        said.append(m)
        return str(m).upper()
    assert usual.upper() in " ".join(lines(consort_svg(db, CLI, say=say)))
    assert any(isinstance(m, Msg) and str(m) == usual for m in said)
    # blinded (pooled): the count from the intervention withheld, as its box's
    world.db.commit()
    r = world.api("GET", "/consort.svg", "statistician")
    assert r.status_code == 200
    assert "Withdrew consent: from the intervention (withheld while blinded), from follow-up (n=1), from both " \
           "(n=1)" in " ".join(lines(r.get_data(as_text=True)))
    # the PDF (English)
    pdf = consort_pdf(db, CLI)
    (tmp_path / "consort.pdf").write_bytes(pdf)
    if os.environ.get("TRIAL_KEEP_DRAWINGS"):
        shutil.copy(tmp_path / "consort.pdf", os.environ["TRIAL_KEEP_DRAWINGS"])
    if shutil.which("pdftotext"):
        out = subprocess.run(["pdftotext", "-raw", "-", "-"], input=pdf, capture_output=True, check=True).stdout.decode()
        flat = " ".join(out.split())
        assert "from both (n=1)" in flat and "Withdrew consent" in flat


def test_the_bundle_carries_the_consents_and_the_withdrawals_without_free_text_when_blinded(world, db, kids):
    from tests.test_exports import MEANING, PASSWORD, bundle_files, read_csv
    m1, m2 = kids["m1"], kids["m2"]
    assert withdraw(world, m1, scope="intervention", data_use="delete_unanalysed",
                    text="no more drumming sessions").status_code == 201
    assert withdraw(world, m2, scope="follow_up").status_code == 201
    db.add(Consent(participant_id=m1.id, document="parental_consent", version="9", language="de",
                   signed_on=R - dt.timedelta(days=20), signer="guardian",
                   options={"video_recording": True, "future_contact": False}, source="entered"))
    db.add(Consent(participant_id=m2.id, document="parental_consent", version="9", language="en",
                   signed_on=R - dt.timedelta(days=20), signer="parent", options=None, source="migrated"))
    ids = {m1.study_id: "m1", m2.study_id: "m2"}
    db.commit()
    r = world.api("POST", "/locks", "manager", json={"kind": "hard", "meaning": MEANING, "password": PASSWORD,
                                                     "accept_open_queries": True})
    assert r.status_code == 201, r.get_json()
    lock_id = r.get_json()["id"]
    for who, blinded in (("manager", False), ("statistician", True)):
        files = bundle_files(world.api("GET", f"/locks/{lock_id}/bundle.zip", who).data)
        head, rows = read_csv(files["csv/withdraw.csv"])
        assert head == ["studyid", "wdrdt", "scope", "datause", "text"]
        got = {ids[r[0]]: r[1:] for r in rows}
        note = "(withheld while blinded)" if blinded else "no more drumming sessions"
        m2_row = [iso(R + dt.timedelta(days=100)), "follow_up", "keep", ""]
        if blinded:  # a withdrawal from the intervention alone tells a therapy arm: not in the blinded bundle
            assert got == {"m2": m2_row}
        else:
            assert got == {"m1": [iso(R + dt.timedelta(days=100)), "intervention", "delete_unanalysed", note],
                           "m2": m2_row}
        assert b"drumming" not in b"".join(files.values()) if blinded else True
        head, rows = read_csv(files["csv/consent.csv"])
        assert head[:6] == ["studyid", "document", "version", "language", "signdt", "signer"]
        assert "o_video_" in head and "o_future" in head
        mine = {ids[r[0]]: dict(zip(head, r)) for r in rows if r[2] == "9"}
        assert (mine["m1"]["signer"], mine["m1"]["language"], mine["m1"]["o_video_"], mine["m1"]["o_future"]) == (
            "guardian", "de", "1", "0")
        assert (mine["m2"]["o_video_"], mine["m2"]["o_future"]) == ("", "")  # not recorded (a migrated consent)
        assert {"withdraw", "consent"} <= {e["table"] for e in dictionary_rows(files)}


def dictionary_rows(files) -> list[dict]:
    import csv
    import io
    return list(csv.DictReader(io.StringIO(files["dictionary.csv"].decode("utf-8"))))


def logged_in(world, who: str):
    from tests.helpers import PASSWORD
    c = world.app.test_client()
    assert c.post("/login", data={"email": f"{who}@example.org", "password": PASSWORD}).status_code == 302, who
    return c


def consented(db, p, **options):
    """A parental consent of a later version with these options (the family's latest)."""
    db.add(Consent(participant_id=p.id, document="parental_consent", version="9", language="en",
                   signed_on=R - dt.timedelta(days=20), signer="parent", options=options, source="entered"))
    db.commit()


def test_a_session_is_video_recorded_only_with_the_familys_option_and_only_those_are_drawn(world, db, kids):
    from trial.consent.withdrawal import gave_option
    yes, no, unsaid = kids["m1"], kids["m2"], kids["usual"]
    consented(db, yes, video_recording=True, future_contact=False)
    consented(db, no, video_recording=False)
    assert (gave_option(db, yes.id, "video_recording"), gave_option(db, no.id, "video_recording")) == (True, False)
    assert gave_option(db, unsaid.id, "video_recording") is None
    body = {"held_on": iso(R + dt.timedelta(days=3)), "attendance": "attended", "minutes": 30, "video_recorded": True}
    sid_no, sid_yes = no.study_id, yes.study_id
    r = world.api("POST", f"/participants/{sid_no}/sessions", "therapist", json=body)
    assert r.status_code == 400 and set(r.get_json()["error"]["fields"]) == {"video_recorded"}, r.get_json()
    r = world.api("POST", f"/participants/{sid_no}/sessions", "therapist", json={**body, "video_recorded": "yes"})
    assert r.status_code == 400 and "video_recorded" in r.get_json()["error"]["fields"]
    db.expire_all()
    assert count(db, TherapySession) == 0
    # accepted: recorded with the option, not recorded without it, unsaid as before
    for sid, day, video in ((sid_yes, 3, True), (sid_yes, 10, True), (sid_yes, 17, None), (sid_no, 3, False),
                            (sid_no, 10, False)):
        b = {**body, "held_on": iso(R + dt.timedelta(days=day))}
        if video is None:
            del b["video_recorded"]
        else:
            b["video_recorded"] = video
        r = world.api("POST", f"/participants/{sid}/sessions", "therapist", json=b)
        assert r.status_code == 201, r.get_json()
    db.expire_all()
    got = sorted((s.participant_id, s.held_on, s.video_recorded) for s in db.execute(select(TherapySession)).scalars())
    assert [v for *_, v in got].count(True) == 2 and [v for *_, v in got].count(False) == 2
    # the fidelity draw takes no session known not to be recorded
    r = world.api("POST", "/fidelity/draws", "manager", json={})
    assert r.status_code == 201, r.get_json()
    (draw,) = r.get_json()
    recorded = set(db.execute(select(TherapySession.id).where(TherapySession.video_recorded.is_not(False))).scalars())
    assert set(draw["population"]) == recorded and len(recorded) == 3
    # the page asks only when the family gave the option
    c = logged_in(world, "therapist")
    assert "video_recorded" in c.get(f"/participants/{sid_yes}/sessions/new").get_data(as_text=True)
    assert "video_recorded" not in c.get(f"/participants/{sid_no}/sessions/new").get_data(as_text=True)
    r = c.post(f"/participants/{sid_yes}/sessions/new", data={"held_on": iso(R + dt.timedelta(days=24)),
                                                               "attendance": "attended", "minutes": "30",
                                                               "engagement": "", "present": "", "video_recorded": "y"})
    assert r.status_code == 302, r.get_data(as_text=True)[:2000]
    db.expire_all()
    assert db.execute(select(TherapySession.video_recorded).where(
        TherapySession.held_on == R + dt.timedelta(days=24))).scalar() is True


def test_the_participant_page_offers_the_withdrawal_form_and_shows_a_recorded_withdrawal(world, db, kids):
    p = kids["m1"]
    sid = p.study_id
    db.commit()
    c = logged_in(world, "coordinator")
    page = c.get(f"/participants/{sid}").get_data(as_text=True)
    assert f"/participants/{sid}/consent-withdrawals/new" in page and "Withdrawals of consent" not in page
    form = c.get(f"/participants/{sid}/consent-withdrawals/new").get_data(as_text=True)
    assert "Stop the therapy sessions (still come to the assessments)" in form and "Nothing is deleted now" in form
    # bad input: 400 with the form again, nothing recorded
    r = c.post(f"/participants/{sid}/consent-withdrawals/new", data={"on": iso(TODAY + dt.timedelta(days=2)),
                                                                     "scope": "follow_up", "data_use": "keep"})
    assert r.status_code == 400 and "in the future" in r.get_data(as_text=True)
    db.expire_all()
    assert count(db, ConsentWithdrawal) == 0
    r = c.post(f"/participants/{sid}/consent-withdrawals/new", data={"on": iso(R + dt.timedelta(days=100)),
                                                                     "scope": "follow_up", "data_use": "keep",
                                                                     "text": "moving house"})
    assert r.status_code == 302, r.get_data(as_text=True)[:3000]
    page = c.get(f"/participants/{sid}").get_data(as_text=True)
    assert "Withdrawals of consent" in page and "Stop the assessments and questionnaires" in page
    assert "moving house" in page
    # in German (the words are the catalogue's)
    assert c.post("/language", data={"language": "de"}).status_code in (200, 302)
    assert c.get(f"/participants/{sid}").status_code == 200
    # roles that may not: 403
    for who in ("therapist", "assessor", "monitor"):
        assert logged_in(world, who).get(f"/participants/{sid}/consent-withdrawals/new").status_code == 403


def test_a_withdrawal_from_the_intervention_alone_is_shown_only_to_readers_of_the_arm(world, db, kids):
    """It tells a therapy arm, as a discontinued intervention does: a reader of consents who may not
    know the arm (a coordinator who is also the site's assessor) sees neither it nor its heading."""
    from trial.views.enrollment import _withdrawals
    m1, m2 = kids["m1"], kids["m2"]
    assert withdraw(world, m1, scope="intervention").status_code == 201
    assert withdraw(world, m2, scope="follow_up").status_code == 201
    assert [w.scope for w in _withdrawals(db, m1.id, show_arm=True)] == ["intervention"]
    assert _withdrawals(db, m1.id, show_arm=False) == []
    assert [w.scope for w in _withdrawals(db, m2.id, show_arm=False)] == ["follow_up"]
