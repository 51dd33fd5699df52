"""Every request body of ../shared/API.md posted exactly as the contract shows it: once with only
the fields it requires and once with every optional field it names, through the API alone (no
service call), each answered with the status the contract gives and at least the fields it lists.
An outside client written from API.md and nothing else must get through a child's whole course,
from screening to the hard lock and the unblinding."""
from __future__ import annotations

import datetime as dt

import pytest

from tests.helpers import PASSWORD, backdate_randomization

TODAY = dt.date.today()


def day(n: int) -> str:
    """``n`` days ago, as API.md writes a date."""
    return (TODAY - dt.timedelta(days=n)).isoformat()


def post(world, path: str, who: str, body=None, status: int = 201, fields: set[str] = frozenset(), **kw) -> dict:
    r = world.api("POST", path, who, json=body, **kw)
    assert r.status_code == status, (path, body, r.get_json())
    answer = r.get_json()
    assert fields <= set(answer or {}), (path, fields - set(answer or {}))
    return answer


@pytest.fixture()
def contract(world):
    world.open()
    return world


def _protocol(world) -> dict:
    r = world.api("GET", "/protocol", "coordinator")
    assert r.status_code == 200
    proto = r.get_json()
    assert {"version", "arms", "randomization", "criteria", "visits", "instruments", "primary_outcome"} <= set(proto)
    return proto


def _screen_and_enroll(world, proto: dict, *, full: bool) -> str:
    answers = {c["key"]: c["qualifying_answer"] for c in proto["criteria"]}
    body = {"site": "AT01", "screened_on": day(40), "answers": answers}
    if full:
        body |= {"declined": False, "other_reason": ""}
    screening = post(world, "/screenings", "coordinator", body, fields={"id", "outcome"})
    assert screening["outcome"] == "eligible"
    body = {"screening_id": screening["id"], "consent_date": day(38), "date_of_birth": day(6 * 365), "sex": "male"}
    if full:
        levels = {f["key"]: f["levels"] for f in proto["randomization"]["factors"]}
        body["strata"] = {k: v[0] for k, v in levels.items() if k != "site"}
    child = post(world, "/participants", "coordinator", body, fields={"study_id", "site", "status"})
    assert child["site"] == "AT01"
    return child["study_id"]


def _assess(world, sid: str, proto: dict, visit: str, performed_on: str, guess: str | None = None) -> dict:
    ados = next(i for i in proto["instruments"] if i["key"] == "ados2")
    values = {f["key"]: (f["min"] if f["min"] is not None else 1) + 2 for f in ados["fields"]}
    body = {"visit": visit, "instrument": "ados2", "performed_on": performed_on, "values": values}
    if guess:
        body["allocation_guess"] = guess
    return post(world, f"/participants/{sid}/assessments", "assessor", body, fields={"id"})


def _other_screenings(world, proto: dict) -> None:
    """The screening outcomes that are not eligible, as the contract names them."""
    answers = {c["key"]: c["qualifying_answer"] for c in proto["criteria"]}
    r = post(world, "/screenings", "coordinator", {"site": "AT01", "screened_on": day(1), "answers": answers,
                                                    "declined": True}, fields={"id", "outcome"})
    assert r["outcome"] == "declined"
    r = post(world, "/screenings", "coordinator", {"site": "AT01", "screened_on": day(1), "answers": answers,
                                                    "other_reason": "moved away"}, fields={"id", "outcome"})
    assert r["outcome"] == "other"
    first = proto["criteria"][0]
    r = post(world, "/screenings", "coordinator", {"site": "AT01", "screened_on": day(1), "answers": answers | {
        first["key"]: not first["qualifying_answer"]}}, fields={"id", "outcome"})
    assert r["outcome"] == "not_eligible"


def _randomize(world, sid: str) -> dict:
    first = post(world, f"/participants/{sid}/randomize", "coordinator", headers={"Idempotency-Key": f"contract-{sid}"},
                 fields={"study_id", "arm", "arm_label", "randomized_at"})
    again = world.api("POST", f"/participants/{sid}/randomize", "coordinator", headers={"Idempotency-Key": f"contract-{sid}"})
    assert again.status_code == 200 and again.get_json() == first
    return first


def _two_in_music_therapy(world, proto: dict) -> tuple[str, str]:
    """Children enrolled and randomized through the API until one enrolled with only the required
    fields and one with every optional field are in an arm with sessions (each is, with 2/3)."""
    music = {a["key"] for a in proto["arms"] if a["sessions_per_week"]}
    found: dict[bool, str] = {}
    for n in range(24):
        full = bool(n % 2)
        if full in found:
            continue
        sid = _screen_and_enroll(world, proto, full=full)
        _assess(world, sid, proto, "baseline", day(35))
        if _randomize(world, sid)["arm"] in music:
            found[full] = sid
        if len(found) == 2:
            return found[False], found[True]
    raise AssertionError("24 children and not two in music therapy")


def test_a_childs_course_with_only_the_required_fields_and_with_every_optional_one(contract, db):
    proto = _protocol(contract)
    _other_screenings(contract, proto)
    minimal, full = _two_in_music_therapy(contract, proto)
    assert contract.api("POST", f"/participants/{minimal}/randomize", "coordinator",
                        headers={"Idempotency-Key": "contract-other"}).status_code == 409
    backdate_randomization(db, dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(days=10))

    # sessions: the first round's body (required fields; then minutes and techniques), then the
    # second round's additions (present, and goals once the child's goals are set)
    post(contract, f"/participants/{minimal}/sessions", "therapist", {"held_on": day(2), "attendance": "no_show"},
         fields={"id"})
    techniques = proto["course"]["techniques"] if "course" in proto else ["free_improvisation", "songs"]
    post(contract, f"/participants/{full}/sessions", "therapist", {
        "held_on": day(2), "attendance": "attended", "minutes": 30, "techniques": techniques[:2]}, fields={"id"})
    r = contract.api("POST", f"/participants/{full}/goals", "therapist",
                     json={"goals": [{"goal": "eye_contact"}, {"goal": "turn_taking"}]})
    assert r.status_code == 201, r.get_json()
    post(contract, f"/participants/{full}/sessions", "therapist", {
        "held_on": day(1), "attendance": "attended", "minutes": 40, "techniques": techniques[:1],
        "present": "child_and_parent", "goals": ["eye_contact", "turn_taking"]}, fields={"id"})

    # an assessment with the guess the contract makes optional (and no confidence), and one without
    _assess(contract, full, proto, "month2", day(0), guess="unsure")
    _assess(contract, minimal, proto, "month2", day(0))

    post(contract, f"/participants/{minimal}/events", "coordinator",
         {"type": "discontinued_intervention", "on": day(0), "reason": "family moved"}, fields={"id"})
    post(contract, f"/participants/{full}/events", "coordinator",
         {"type": "lost_to_follow_up", "on": day(0), "reason": "no answer to calls"}, fields={"id"})


def test_data_management_bodies_as_the_contract_shows_them(contract, db):
    proto = _protocol(contract)
    sid = _screen_and_enroll(contract, proto, full=False)
    assessment = _assess(contract, sid, proto, "baseline", day(35))

    # queries: raised by a manager and by the site's monitor, with and without the optional id and field
    q1 = post(contract, "/queries", "manager", {"study_id": sid, "on": {"kind": "participant"}, "text": "Date of birth?"},
              fields={"id", "status"})
    assert q1["status"] == "open"
    q2 = post(contract, "/queries", "monitor", {"study_id": sid, "on": {"kind": "assessment", "id": assessment["id"],
                                                                         "field": "social_affect"},
                                                  "text": "Please check the score."}, fields={"id", "status"})
    post(contract, f"/queries/{q1['id']}/responses", "coordinator", {"text": "Checked against the birth certificate."})
    post(contract, f"/queries/{q2['id']}/responses", "assessor", {"text": "The score is right."})
    listed = {q["id"]: q for q in contract.api("GET", f"/queries?study_id={sid}", "manager").get_json()}
    assert {listed[q1["id"]]["status"], listed[q2["id"]]["status"]} == {"answered"}
    assert {"id", "study_id", "on", "text", "status", "origin", "raised_by", "raised_at", "thread"} <= set(listed[q1["id"]])
    closed = post(contract, f"/queries/{q1['id']}/close", "manager", None, status=200, fields={"id", "status"})
    assert closed["status"] == "closed"
    post(contract, f"/queries/{q1['id']}/reopen", "monitor", {"text": "One more look, please."}, status=200)
    post(contract, f"/queries/{q2['id']}/close", "monitor", {"text": "Thank you."}, status=200)

    # adverse events: the required fields, then every optional one; a follow-up with and without resolved_on
    ae = post(contract, f"/participants/{sid}/adverse-events", "coordinator", {
        "term": "Headache", "onset": day(3), "severity": "mild", "serious": False, "relatedness": "unlikely",
        "outcome": "recovering"}, fields={"id", "serious"})
    assert ae["serious"] is False
    sae = post(contract, f"/participants/{sid}/adverse-events", "coordinator", {
        "term": "Fracture of the arm", "onset": day(2), "severity": "severe", "serious": True,
        "seriousness": ["hospitalisation"], "relatedness": "not_related", "outcome": "recovered",
        "resolved_on": day(1), "description": "Fell from a bicycle."}, fields={"id", "serious", "report_due"})
    assert sae["serious"] is True and sae["report_due"]
    post(contract, f"/adverse-events/{ae['id']}/follow-ups", "coordinator",
         {"on": day(1), "outcome": "not_recovered", "text": "Still there."})
    post(contract, f"/adverse-events/{ae['id']}/follow-ups", "coordinator",
         {"on": day(0), "outcome": "recovered", "resolved_on": day(0), "text": "Gone."})
    assert len(contract.api("GET", "/adverse-events?serious=true", "manager").get_json()) == 1

    # source data verification
    post(contract, f"/participants/{sid}/verifications", "monitor", {"on": {"kind": "assessment", "id": assessment["id"]}})


def test_locks_and_unblinding_bodies_as_the_contract_shows_them(contract, db):
    soft = post(contract, "/locks", "manager", {"kind": "soft", "meaning": "Interim check", "password": PASSWORD},
                fields={"id", "kind", "created_at"})
    assert soft["kind"] == "soft"
    r = contract.api("DELETE", f"/locks/{soft['id']}", "manager", json={"reason": "Check done", "password": PASSWORD})
    assert r.status_code == 200, r.get_json()
    hard = post(contract, "/locks", "manager", {"kind": "hard", "meaning": "Final analysis", "password": PASSWORD},
                fields={"id", "kind", "created_at"})
    listed = contract.api("GET", "/locks", "statistician").get_json()
    assert {"id", "kind", "created_at", "signed_by", "manifest_sha256"} <= set(next(x for x in listed if x["id"] == hard["id"]))
    asked = post(contract, "/unblinding", "manager", {"meaning": "Unblinding for the final analysis", "password": PASSWORD},
                 status=202, fields={"id", "status", "countersigner_role"})
    assert asked["status"] == "awaiting_countersignature" and asked["countersigner_role"] == "statistician"
    assert contract.api("GET", "/consort", "statistician").get_json()["arms"].keys() == {"all"}, "not unblinded yet"
    post(contract, f"/unblinding/{asked['id']}/countersign", "statistician",
         {"meaning": "Countersigned for the final analysis", "password": PASSWORD})
    assert contract.api("GET", "/consort", "statistician").get_json()["arms"].keys() != {"all"}
    r = contract.api("DELETE", f"/locks/{hard['id']}", "manager", json={"reason": "A late correction", "password": PASSWORD})
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "unblinded", r.get_json()
