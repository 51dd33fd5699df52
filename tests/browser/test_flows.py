"""Each role's main task, end to end through the pages in Chromium, as a person does it: the
coordinator screens, enrols and randomizes a child (the assessor enters the baseline ADOS-2 in
between); the therapist logs a session; the assessor enters a 2-month assessment with a guess of
the allocation; the coordinator answers a query; the manager signs a soft lock (a banner on every
page, the data-entry links gone for everyone) and lifts it again; under a hard lock, lifting and
unblinding are two sections of the Locks page, and unblinding without its confirmation ticked
changes nothing."""
from __future__ import annotations

import datetime as dt
import re

from babel.dates import format_date
from sqlalchemy import select

from tests.browser.conftest import PHONE
from trial.auth.models import User
from trial.demo import DEMO_PASSWORDS
from trial.lock.service import build_now, create_lock, lift_lock
from trial.protocol.service import current
from trial.randomize.service import get_design
from trial.timeline import today
from trial.trialstate.service import active_lock_id

PASSWORD = {"manager": DEMO_PASSWORDS["manager"]}


def _iso(d: dt.date) -> str:
    return d.isoformat()


def _flash(page) -> str:
    """The flashed messages of the page a form led to: waits for the next page's message (reading at
    once can catch the page before the navigation, which has none)."""
    page.locator(".flash").first.wait_for(timeout=15000)
    return " ".join(page.locator(".flash").all_inner_texts())


def _choose_visit(page, label: str) -> None:
    """The assessment form, at the visit ``label``: through the page that asks which visit when
    there is one, else by the form's visit list."""
    chooser = page.get_by_role("link", name=label, exact=True)
    if chooser.count():
        chooser.click()
    visit = page.get_by_label("Visit", exact=True)
    if visit.count() and visit.evaluate("e => e.tagName") == "SELECT":
        visit.select_option(label=label)


def test_coordinator_screens_enrols_and_randomizes_a_child(open_as, live):
    with live.sessions() as db:
        content = current(db).content
    day = today("Europe/Vienna")
    coord = open_as("coordinator", PHONE)
    coord.goto(live.url + "/")
    coord.get_by_role("link", name="Screen a child").click()
    coord.get_by_label("Site").select_option("AT01")
    coord.get_by_label("Screened on").fill(_iso(day - dt.timedelta(days=2)))
    for c in content["criteria"]:
        group = coord.get_by_role("group", name=c["question"])
        group.get_by_label("Yes" if c["qualifying_answer"] else "No", exact=True).check()
    coord.get_by_role("button", name="Record screening").click()
    coord.wait_for_url("**/enroll")
    assert "Eligible" in _flash(coord)

    coord.get_by_label("Consent date").fill(_iso(day - dt.timedelta(days=1)))
    coord.get_by_label("Date of birth").fill(_iso(day - dt.timedelta(days=5 * 365)))
    coord.get_by_label("Sex").select_option(index=1)
    coord.get_by_role("button", name="Enrol").click()
    assert "Enrolled as" in _flash(coord)
    study_id = re.search(r"Participant (\S+)", coord.locator("h1").inner_text()).group(1)
    assert study_id.startswith("AT01-")

    # the parent-reported baseline, by the coordinator
    coord.get_by_role("link", name="Enter SRS-2").click()
    _choose_visit(coord, "Baseline")
    coord.get_by_label("Performed on").fill(_iso(day))
    coord.get_by_label(re.compile("SRS-2 total T-score")).fill("70")
    coord.get_by_role("button", name="Save assessment").click()
    assert "saved" in _flash(coord)
    assert "Not ready" in coord.locator("main").inner_text()  # the primary outcome's baseline is the assessor's

    # the blinded baseline (the primary outcome), by the assessor
    assessor = open_as("assessor", PHONE)
    assessor.goto(f"{live.url}/participants/{study_id}")
    assessor.get_by_role("link", name="Enter ADOS-2").click()
    _choose_visit(assessor, "Baseline")
    assessor.get_by_label("Performed on").fill(_iso(day))
    assessor.get_by_label(re.compile("^Social affect score")).fill("12")
    assessor.get_by_label(re.compile("^Restricted and repetitive behaviour score")).fill("4")
    assessor.get_by_label(re.compile("^Calibrated severity score")).fill("6")
    assessor.get_by_role("button", name="Save assessment").click()
    assert "saved" in _flash(assessor)

    coord.reload()
    coord.get_by_label(re.compile("I confirm the child is eligible")).check()
    coord.get_by_role("button", name="Randomize").click()
    assert f"{study_id} is randomized" in _flash(coord)
    facts = coord.locator("dl.facts").inner_text()
    assert "Allocation" in facts and "not randomized" not in facts


def test_therapist_logs_a_session(open_as, live):
    study_id, held = live.ids["in_course"], live.ids["session_day"]
    page = open_as("therapist", PHONE)
    page.goto(live.url + "/participants")
    page.get_by_role("link", name=study_id).click()
    page.get_by_role("link", name="Log a session").click()
    page.get_by_label("Date").fill(_iso(held))
    page.get_by_label("Attendance").select_option("attended")
    page.get_by_label("Minutes").fill("35")
    techniques = page.get_by_role("group", name="Techniques")
    techniques.get_by_label("songs").check()
    techniques.get_by_label("free improvisation").check()
    page.get_by_label("Child engagement").select_option("4")
    page.get_by_role("button", name="Log session").click()
    assert "Session logged" in _flash(page)
    row = page.locator("tr", has_text=format_date(held, "medium", locale="en"))  # the page's day, by Babel
    assert row.count() == 1 and "Songs" in row.inner_text() and "35" in row.inner_text()


def test_assessor_enters_a_two_month_assessment_with_a_guess(open_as, live):
    study_id = live.ids["due_month2"]
    page = open_as("assessor", PHONE)
    page.goto(live.url + "/visits")
    page.get_by_role("link", name=study_id).first.click()
    page.get_by_role("link", name="Enter ADOS-2").click()
    _choose_visit(page, "2 months")
    page.get_by_label("Performed on").fill(_iso(today("Europe/Vienna")))
    page.get_by_label(re.compile("^Social affect score")).fill("10")
    page.get_by_label(re.compile("^Restricted and repetitive behaviour score")).fill("3")
    page.get_by_label(re.compile("^Calibrated severity score")).fill("5")
    page.locator("select[name=allocation_guess]").select_option("music_therapy")
    page.locator("select[name=guess_confidence]").select_option("2")
    page.get_by_role("button", name="Save assessment").click()
    assert "saved" in _flash(page), page.locator("main").inner_text()[:2000]
    row = page.get_by_role("region", name="Assessments").locator("tr", has_text="2 months").filter(has_text="ADOS-2")
    assert row.count() == 1 and "10" in row.inner_text() and "outside window" not in row.inner_text()


def test_coordinator_answers_a_query(open_as, live):
    ref = live.ids["query_ref"]  # the query's number at its site (AT01-Q1), never its id
    page = open_as("coordinator", PHONE)
    page.goto(live.url + "/queries")
    page.get_by_role("link", name=ref, exact=True).click()
    assert page.url.endswith(f"/queries/{ref}")
    page.get_by_label("Answer", exact=True).fill("Checked against the signed consent form: the date is right.")
    page.get_by_role("button", name="Answer").click()
    assert "Answered" in _flash(page)
    assert "Checked against the signed consent form" in page.locator("main table").first.inner_text()


def test_the_follow_up_form_opens_on_the_visit_due_and_warns_of_an_unusual_value_before_saving(open_as, live):
    """The coordinator opens the SRS-2 for the child whose 2-month visit is due: the form is at
    "2 months" (not the protocol's first visit), and a T-score below the usual range is not saved
    until the coordinator confirms it on the form."""
    study_id = live.ids["due_month2"]
    page = open_as("coordinator", PHONE)
    page.goto(live.url + f"/participants/{study_id}")
    page.get_by_role("link", name=re.compile("^Enter SRS-2")).first.click()
    visit = page.get_by_label("Visit", exact=True)
    assert visit.evaluate("e => e.options[e.selectedIndex].text") == "2 months"
    page.get_by_label("Performed on").fill(_iso(today("Europe/Vienna")))
    page.get_by_label(re.compile("^SRS-2 total T-score")).fill("40")
    page.get_by_role("button", name=re.compile("^Save")).click()
    confirm = page.get_by_label(re.compile("^A value is outside the range the protocol expects"))
    confirm.wait_for(timeout=15000)
    main = page.locator("main").inner_text()
    assert "SRS-2 total T-score" in main and "40" in page.get_by_label(re.compile("^SRS-2 total T-score")).input_value()
    other = page.context.new_page()  # the child's page beside the form: nothing saved yet
    other.goto(live.url + f"/participants/{study_id}")
    rows = other.get_by_role("region", name="Assessments").locator("tr", has_text="2 months").filter(has_text="SRS-2")
    assert rows.count() == 0, "saved before the unusual value was confirmed"
    other.close()
    page.get_by_label(re.compile("^A value is outside the range the protocol expects")).check()
    page.get_by_role("button", name=re.compile("^Save")).click()
    assert "saved" in _flash(page), page.locator("main").inner_text()[:2000]
    rows = page.get_by_role("region", name="Assessments").locator("tr", has_text="2 months").filter(has_text="SRS-2")
    assert rows.count() == 1 and "40" in rows.inner_text()


ENTRY_LINKS = ("Screen a child", "Enter SRS-2", "Record an adverse event", "Status event", "Deviation")


def test_manager_signs_a_soft_lock_every_page_says_so_and_lifting_it_reopens_entry(open_as, live):
    manager = open_as("manager", PHONE)
    coord = open_as("coordinator", PHONE)
    child = f"{live.url}/participants/{live.ids['due_month2']}"
    coord.goto(child)
    for name in ENTRY_LINKS[1:]:
        assert coord.get_by_role("link", name=name, exact=True).count() == 1, name
    try:
        manager.goto(live.url + "/locks")
        manager.get_by_label("Lock", exact=True).select_option("soft")
        manager.get_by_label("Your password (electronic signature)").fill(PASSWORD["manager"])
        manager.get_by_role("button", name="Sign and lock").click()
        assert "Signed and locked" in _flash(manager)
        banner = manager.get_by_role("region", name="Database lock")
        assert "soft-locked" in banner.inner_text() and "Mona Manager" in banner.inner_text()

        for path in ("/", "/participants", child.removeprefix(live.url), "/screenings", "/queries"):
            coord.goto(live.url + path)
            text = coord.get_by_role("region", name="Database lock").inner_text()
            assert "Data entry is closed" in text and "soft-locked" in text, path
            for name in ENTRY_LINKS:
                assert coord.get_by_role("link", name=name, exact=True).count() == 0, (path, name)
        coord.goto(f"{live.url}/queries/{live.ids['query']}")
        assert coord.get_by_role("button", name="Answer").count() == 0

        manager.goto(live.url + "/locks")
        manager.get_by_label("Reason for lifting the lock").fill("Data entry continues: the lock was a rehearsal.")
        manager.locator("#lift-password").fill(PASSWORD["manager"])
        manager.get_by_label("I understand that lifting the lock reopens data entry at every site.").check()
        manager.get_by_role("button", name="Sign and lift").click()
        assert "Lock lifted" in _flash(manager)
        assert manager.get_by_role("region", name="Database lock").count() == 0
    finally:
        _lift_if_locked(live)

    coord.goto(child)
    assert coord.get_by_role("region", name="Database lock").count() == 0
    for name in ENTRY_LINKS[1:]:
        assert coord.get_by_role("link", name=name, exact=True).count() == 1, name
    coord.goto(live.url + "/")
    assert coord.get_by_role("link", name="Screen a child").count() == 1


def _lift_if_locked(live) -> None:
    """A failed lock test leaves the other tests of this server an open database."""
    with live.sessions() as db:
        lock_id = active_lock_id(db)
        if lock_id is not None:
            manager = db.execute(select(User).where(User.email == "manager@demo.trial")).scalar_one()
            lift_lock(db, manager, lock_id, "Cleaning up after a failed browser test.", PASSWORD["manager"])
            db.commit()


def test_lifting_and_unblinding_are_separate_and_unblinding_needs_its_confirmation(open_as, live):
    with live.sessions() as db:  # a hard lock with its bundles built, as the worker leaves it
        manager_user = db.execute(select(User).where(User.email == "manager@demo.trial")).scalar_one()
        # the demo's casebooks wait for their investigators' signatures: accepted here,
        # this test is about lifting and unblinding, not about the sign-offs
        lk = create_lock(db, manager_user, "hard", "Rehearsal of the final lock.", PASSWORD["manager"], True,
                         accept_unsigned=True)
        build_now(db, manager_user, lk)
        db.commit()
        lock_id = lk.id
    try:
        manager = open_as("manager")
        manager.goto(live.url + "/locks")
        lift = manager.get_by_role("region", name=f"Lift lock {lock_id}")
        unblind = manager.get_by_role("region", name="Unblind the trial")
        assert lift.count() == 1 and unblind.count() == 1
        # each section has its own explanation, signature, confirmation and button, and only its own
        assert "reopens data entry" in lift.inner_text() and "snapshot" in lift.inner_text()
        assert lift.get_by_role("button", name="Sign and lift").count() == 1
        assert lift.get_by_role("button", name="Sign and ask to unblind").count() == 0
        assert "cannot be taken back" in unblind.inner_text()
        assert unblind.get_by_role("button", name="Sign and ask to unblind").count() == 1
        assert unblind.get_by_role("button", name="Sign and lift").count() == 0
        box = unblind.get_by_label("I understand that unblinding reveals every child's arm and cannot be taken back.")
        assert box.count() == 1 and not box.is_checked()

        # the box unticked: the browser does not send the form
        unblind.get_by_label("Your password (electronic signature)").fill(PASSWORD["manager"])
        unblind.get_by_role("button", name="Sign and ask to unblind").click()
        assert box.evaluate("e => !e.validity.valid")
        refused = manager.locator(".flash.error", has_text="The trial was not unblinded: tick the box")
        assert refused.count() == 0
        with live.sessions() as db:
            assert get_design(db).unblinded_at is None
        # and sent anyway (the browser's check removed), the server refuses it and changes nothing
        box.evaluate("e => e.removeAttribute('required')")
        unblind.get_by_role("button", name="Sign and ask to unblind").click()
        refused.wait_for()  # the page the refusal led back to (the Locks page has a notice of its own)
        with live.sessions() as db:
            assert get_design(db).unblinded_at is None and active_lock_id(db) == lock_id
        assert manager.get_by_role("region", name="Unblind the trial").count() == 1
    finally:
        _lift_if_locked(live)
