"""The randomization confirmation (issue 25): the PDF for the child's file carries the study id,
the site, the arm's label in the reader's language and the allocation's verification digest; it is
there for the unblinded roles of the child's site only, and everyone else, an unknown study id and
a child not yet randomized get one and the same 404."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile

import pytest
from sqlalchemy import select

from tests.helpers import PASSWORD
from trial.auth.models import User
from trial.participants.models import Allocation
from trial.randomize.models import RandomizationDesign, Stratum

SEED = bytes(range(32))
ARM_EN = {"low": "Music therapy, 1 session per week", "high": "Music therapy, 3 sessions per week",
          "usual": "Enhanced usual care"}
ARM_DE = {"low": "Musiktherapie, 1 Sitzung pro Woche", "high": "Musiktherapie, 3 Sitzungen pro Woche",
          "usual": "Erweiterte Standardversorgung"}
needs_pdftotext = pytest.mark.skipif(shutil.which("pdftotext") is None, reason="pdftotext (poppler-utils) is not installed")


def pdf_text(data: bytes) -> str:
    out = subprocess.run(["pdftotext", "-layout", "-", "-"], input=data, capture_output=True, check=True)
    return out.stdout.decode("utf-8")


def url(study_id: str) -> str:
    return f"/participants/{study_id}/randomization.pdf"


@pytest.fixture()
def randomized(world, db):
    """A child randomized at AT01 by the site's coordinator (through the API), and one not yet."""
    world.open(SEED)
    p = world.ready()
    assert world.api("POST", f"/participants/{p.study_id}/randomize", "coordinator").status_code == 201
    waiting = world.ready()
    db.commit()
    return p, waiting


def expected_digest(db, p) -> tuple[str, str]:
    a = db.execute(select(Allocation).where(Allocation.participant_id == p.id)).scalar_one()
    stratum = db.get(Stratum, a.stratum_id).key
    commitment = db.execute(select(RandomizationDesign.commitment)).scalar_one()
    db.commit()
    assert stratum == "site=AT01"
    return hashlib.sha256(f"{commitment}|{stratum}|{a.seq}|{a.arm}|{p.study_id}".encode()).hexdigest(), a.arm


@needs_pdftotext
def test_the_pdf_carries_the_study_id_site_arm_and_digest(world, db, randomized):
    p, _ = randomized
    r = world.api("GET", url(p.study_id), "coordinator")
    assert r.status_code == 200 and r.mimetype == "application/pdf"
    assert r.data.startswith(b"%PDF")
    digest, arm = expected_digest(db, p)
    text = pdf_text(r.data)
    assert p.study_id in text
    assert "AT01" in text and "Vienna" in text
    assert ARM_EN[arm] in text
    assert digest in text
    assert "Coordinator" in text  # who randomized, by name
    assert "Europe/" in text or "UTC" in text  # the time zone named
    # the manager (unblinded, every site) may print it too
    assert world.api("GET", url(p.study_id), "manager").status_code == 200


@needs_pdftotext
def test_the_confirmation_is_in_the_readers_language(world, db, app, randomized):
    p, _ = randomized
    _, arm = expected_digest(db, p)
    user = db.execute(select(User).where(User.email == "coordinator@example.org")).scalar_one()
    user.language = "de"
    db.commit()
    api = pdf_text(world.api("GET", url(p.study_id), "coordinator").data)
    assert ARM_DE[arm] in api and ARM_EN[arm] not in api
    web = app.test_client()
    assert web.post("/login", data={"email": "coordinator@example.org", "password": PASSWORD}).status_code == 302
    r = web.get(url(p.study_id))
    assert r.status_code == 200 and r.mimetype == "application/pdf"
    assert ARM_DE[arm] in pdf_text(r.data)


def test_blinded_readers_and_other_sites_get_the_404_of_an_unknown_child(world, db, randomized):
    p, waiting = randomized
    unknown = world.api("GET", url("AT01-9999"), "coordinator")
    assert unknown.status_code == 404
    for who in ("assessor", "statistician", "admin", "coordinator_no"):
        r = world.api("GET", url(p.study_id), who)
        assert (r.status_code, r.data) == (unknown.status_code, unknown.data), who
        other = world.api("GET", url("AT01-9999"), who)
        assert (other.status_code, other.data) == (unknown.status_code, unknown.data), who
    # not randomized yet: the same 404, even for the site's coordinator
    r = world.api("GET", url(waiting.study_id), "coordinator")
    assert (r.status_code, r.data) == (unknown.status_code, unknown.data)


def test_the_web_pdf_refuses_blinded_readers_as_an_unknown_child(app, randomized):
    p, _ = randomized
    web = app.test_client()
    assert web.post("/login", data={"email": "assessor@example.org", "password": PASSWORD}).status_code == 302
    web.get("/")  # what the login flashed is shown there, not on the pages compared
    refused, unknown = web.get(url(p.study_id)), web.get(url("AT01-9999"))
    assert refused.status_code == unknown.status_code == 404
    assert refused.data == unknown.data


def test_the_participant_page_links_the_confirmation_for_the_coordinator_only(app, world, db):
    world.open(SEED)
    p = world.ready()
    coordinator = app.test_client()
    assert coordinator.post("/login", data={"email": "coordinator@example.org", "password": PASSWORD}).status_code == 302
    page = coordinator.get(f"/participants/{p.study_id}").get_data(as_text=True)
    assert "Randomization confirmation (PDF)" not in page  # not randomized yet
    # randomized on the web: the page it lands on offers the confirmation first
    r = coordinator.post(f"/participants/{p.study_id}/randomize", data={"confirm": "y", "idempotency_key": "k1"})
    assert r.status_code == 302 and "randomized=1" in r.headers["Location"]
    page = coordinator.get(r.headers["Location"]).get_data(as_text=True)
    assert page.count("Randomization confirmation (PDF)") == 2
    assert url(p.study_id) in page
    page = coordinator.get(f"/participants/{p.study_id}").get_data(as_text=True)
    assert page.count("Randomization confirmation (PDF)") == 1
    assessor = app.test_client()
    assert assessor.post("/login", data={"email": "assessor@example.org", "password": PASSWORD}).status_code == 302
    page = assessor.get(f"/participants/{p.study_id}").get_data(as_text=True)
    assert "Randomization confirmation (PDF)" not in page and "randomization.pdf" not in page


@needs_pdftotext
@pytest.mark.parametrize("language", ["he", "ko"])
def test_hebrew_and_korean_are_drawn_in_embedded_fonts(world, db, randomized, language):
    """Hebrew and Korean come out as text (read back in logical order), drawn in an embedded font
    that has their letters, not as boxes; Hebrew pages are laid out from the right."""
    from trial.protocol.service import current, labels
    from trial.randomize import confirmation
    p, _ = randomized
    digest, arm = expected_digest(db, p)
    arm_label = labels(current(db).content, language)["arm"][arm]
    assert arm_label != ARM_EN[arm]
    regular, _bold, _mono = confirmation.fonts(language)
    if regular in ("Helvetica", "HYGothic-Medium"):
        pytest.skip(f"no TrueType font with the letters of {language} on this machine (fonts-dejavu-core, fonts-nanum)")
    user = db.execute(select(User).where(User.email == "coordinator@example.org")).scalar_one()
    user.language = language
    db.commit()
    data = world.api("GET", url(p.study_id), "coordinator").data
    assert arm_label in pdf_text(data) and digest in pdf_text(data)
    if shutil.which("pdffonts"):
        from reportlab.pdfbase import pdfmetrics
        face = pdfmetrics.getFont(regular).face.name
        face = face.decode() if isinstance(face, bytes) else face
        with tempfile.NamedTemporaryFile(suffix=".pdf") as f:
            f.write(data)
            f.flush()
            listed = subprocess.run(["pdffonts", f.name], capture_output=True, check=True).stdout.decode()
        assert any(face in row and " yes " in row for row in listed.splitlines()), listed


def test_visual_order_of_a_hebrew_line():
    from trial.randomize.confirmation import visual
    assert visual("Study ID AT01-0007") == "Study ID AT01-0007"  # no right-to-left letter: as it is
    assert visual("אתר: AT01") == "AT01 :רתא"
    assert visual("מזהה (AT01-0007)") == "(AT01-0007) ההזמ"
