"""The web pages' languages (en, de, it, nb, pt-BR, ko, he): every visible template string is
marked for translation, every catalogue has every message translated, the language comes from the
user's setting, else Accept-Language, else English, the protocol's words come in the page's
language (English the fallback), and dates and numbers follow Babel's locale data."""
from __future__ import annotations

import datetime as dt
import html
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from babel.dates import format_date
from babel.messages.pofile import read_po
from jinja2 import nodes
from sqlalchemy import func, select, text

from tests.helpers import CLI, PASSWORD
from trial.audit.models import AuditRecord
from trial.auth.models import User
from trial.catalogue import LABELS, LANGUAGES
from trial.protocol.schema import ProtocolError, parse, validate
from trial.protocol.service import DEFAULT_PROTOCOL, current, labels, load_text, localized

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "trial" / "templates"
TRANSLATIONS = ROOT / "trial" / "translations"
CATALOGUES = [lang for lang in LANGUAGES if lang != "en"]
TOML = DEFAULT_PROTOCOL.read_text()


def login(app, who: str, **headers):
    c = app.test_client()
    assert c.post("/login", data={"email": f"{who}@example.org", "password": PASSWORD}).status_code == 302
    if headers:
        c.environ_base.update({f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()})
    return c


# --- every template string is marked ------------------------------------------------------------

# visible text a template may show as it is: symbols, numbers, a version's "v", an example study ID
ALLOWED_TEXT = re.compile(r"^(v|[A-Z]{2}\d{2}-\d{4})$")
# attributes whose text a user reads (or a screen reader says)
VISIBLE_ATTRIBUTES = re.compile(r"""\b(title|alt|aria-label|placeholder|label)\s*=\s*("[^"]*"|'[^']*')""")
# strings of expressions that are never shown as words: HTML attributes and class names
ALLOWED_CONSTANTS = {"selected", "checked", "button", "button danger", "verified", "muted", "descending", "ascending"}
GETTEXT = {"_", "gettext", "ngettext", "pgettext", "npgettext"}
LETTER = re.compile(r"[^\W\d_]")


def _templates():
    return sorted(TEMPLATES.rglob("*.html"))


def _skeleton(env, source: str) -> str:
    """The template's own text (its data), with every tag and expression, every comment and the
    inside of every {% trans %} block replaced by a NUL."""
    out, in_trans, after_block_begin = [], False, False
    for _line, kind, value in env.lex(source):
        if kind == "block_begin":
            after_block_begin = True
            out.append("\0")
            continue
        if after_block_begin and kind == "name":
            in_trans = {"trans": True, "endtrans": False}.get(value, in_trans)
        after_block_begin = False if kind != "whitespace" else after_block_begin
        out.append(value if kind == "data" and not in_trans else "\0")
    return "".join(out)


def _words(text: str) -> list[str]:
    return [w for w in (html.unescape(p).strip() for p in text.split("\0"))
            if LETTER.search(w) and not ALLOWED_TEXT.match(w)]


def _unmarked_text(env, source: str) -> list[str]:
    skeleton = re.sub(r"<!--.*?-->", "\0", _skeleton(env, source), flags=re.DOTALL)
    found = []
    for tag in re.findall(r"<[^>]*>", skeleton):
        for _name, value in VISIBLE_ATTRIBUTES.findall(tag):
            found += [f"{_name}={w!r}" for w in _words(value[1:-1])]
    found += _words(re.sub(r"<[^>]*>", "\0", skeleton))
    return found


def _shown(expr) -> list[nodes.Const]:
    """The string constants an output expression shows as they are."""
    if isinstance(expr, nodes.Const):
        return [expr]
    if isinstance(expr, nodes.CondExpr):
        return _shown(expr.expr1) + (_shown(expr.expr2) if expr.expr2 is not None else [])
    if isinstance(expr, nodes.Filter):
        return _shown(expr.node) if expr.node is not None else []
    if isinstance(expr, nodes.Concat):
        return [c for n in expr.nodes for c in _shown(n)]
    return []


def _unmarked_constants(env, source: str) -> list[str]:
    """Strings in expressions outside _()/gettext: one an output shows as it is (``{{ 'yes' if x
    else 'no' }}``), and anywhere a string that reads as words (a capital letter or a space:
    ``('x.y', 'Participants', ...)``, a macro's label). strftime's format is not words."""
    found: list[str] = []

    def visit(node, shown: set[int]):
        if isinstance(node, nodes.Call):
            if isinstance(node.node, nodes.Name) and node.node.name in GETTEXT:
                return
            if isinstance(node.node, nodes.Getattr) and node.node.attr == "strftime":
                return
        if isinstance(node, nodes.Compare):  # (field.type == 'RadioField'): never shown
            return
        if isinstance(node, nodes.Output):
            for child in node.nodes:
                shown.update(id(c) for c in _shown(child))
        if isinstance(node, nodes.Const) and isinstance(node.value, str) and LETTER.search(node.value) \
                and node.value not in ALLOWED_CONSTANTS and (id(node) in shown or re.search(r"[A-Z\s]", node.value)):
            found.append(node.value)
        for child in node.iter_child_nodes():
            visit(child, shown)

    visit(env.parse(source), set())
    return found


@pytest.mark.parametrize("path", _templates(), ids=lambda p: str(p.relative_to(TEMPLATES)))
def test_every_visible_template_string_is_marked_for_translation(app, path):
    env = app.jinja_env
    source = path.read_text(encoding="utf-8")
    text = _unmarked_text(env, source)
    constants = _unmarked_constants(env, source)
    assert not text, f"{path.name}: text outside _() or {{% trans %}}: {text}"
    assert not constants, f"{path.name}: strings outside _(): {constants}"


def test_the_marking_test_finds_unmarked_strings(app):
    env = app.jinja_env
    assert _unmarked_text(env, "<p>Hello</p><a title=\"Open it\">{{ _('x') }}</a>") == ["title='Open it'", "Hello"]
    assert _unmarked_text(env, "<p>{{ _('Hello') }} – 12 {% trans %}Hi {{ n }}{% endtrans %}</p><!-- a note -->") == []
    assert _unmarked_constants(env, "{{ 'yes' if a else _('no') }}{% set x = [('k', 'Some words')] %}") == ["yes", "Some words"]
    assert _unmarked_constants(env, "{{ url_for('a.b', x='c') }}{{ d.strftime('%Y-%m-%d %H:%M') }}") == []


# --- every catalogue has every message, translated ----------------------------------------------

@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> dict:
    """The messages as `make translations` extracts them (babel.cfg, the same keywords)."""
    pot = tmp_path_factory.mktemp("i18n") / "messages.pot"
    keywords = re.search(r"^BABEL_KEYWORDS := (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    assert "Msg" in keywords and "refuse" in keywords
    subprocess.run([sys.executable, "-m", "babel.messages.frontend", "extract", "-F", "babel.cfg", *keywords,
                    "--no-location", "-o", str(pot), "."], cwd=ROOT, check=True, capture_output=True)
    with pot.open("rb") as f:
        return {(m.context, m.id): m for m in read_po(f) if m.id}


def test_extraction_finds_the_pages_words_and_the_catalogue_of_keys(extracted):
    ids = {mid for _ctx, mid in extracted}
    assert {"Participants", "Screening log", "Log in", "Randomize"} <= ids  # templates, forms
    assert {label for kind in LABELS.values() for label in kind.values()} <= ids  # trial/catalogue.py's N_
    assert ("%(num)s query", "%(num)s queries") in ids  # plurals
    assert ("allocation guess", "Correct") in extracted  # a word with a context


@pytest.mark.parametrize("lang", CATALOGUES)
def test_every_catalogue_translates_every_message(extracted, lang):
    with (TRANSLATIONS / lang / "LC_MESSAGES" / "messages.po").open("rb") as f:
        catalog = read_po(f, locale=lang)
    assert not catalog.fuzzy, f"{lang}: the catalogue's header is fuzzy (pybabel compile would skip it)"
    have = {(m.context, m.id): m for m in catalog if m.id}
    missing = sorted(map(str, set(extracted) - set(have)))
    stale = sorted(map(str, set(have) - set(extracted)))
    assert not missing, f"{lang} lacks messages (run make translations and translate them): {missing[:20]}"
    assert not stale, f"{lang} has messages no page uses any more (make translations drops them): {stale[:20]}"
    empty = [m.id for m in have.values() if not all(m.string if isinstance(m.string, tuple) else (m.string,))]
    fuzzy = [m.id for m in have.values() if m.fuzzy]
    assert not empty, f"{lang}: untranslated: {empty[:20]}"
    assert not fuzzy, f"{lang}: fuzzy: {fuzzy[:20]}"
    problems = [(m.id, [str(e) for e in errors]) for m, errors in catalog.check()]  # placeholders, plural forms
    assert not problems, f"{lang}: {problems[:10]}"


def test_the_compiled_catalogues_are_those_of_the_po_files():
    for lang in CATALOGUES:
        po = TRANSLATIONS / lang / "LC_MESSAGES" / "messages.po"
        mo = po.with_suffix(".mo")
        assert mo.exists() and mo.stat().st_mtime >= po.stat().st_mtime, f"{mo} missing or older than its .po"


def test_the_guess_words_marked_in_the_forms_follow_the_outcome_service():
    from trial.forms.enrollment import GUESS_WORDS
    from trial.outcomes.service import CONFIDENCE_CHOICES, GUESS_CHOICES, GUESS_LABELS
    words = set(GUESS_LABELS.values()) | set(GUESS_CHOICES.values()) | {v for v in CONFIDENCE_CHOICES.values()
                                                                         if LETTER.search(v)}
    assert words == set(GUESS_WORDS)


# --- which language ---------------------------------------------------------------------------

def _html_tag(body: str) -> str:
    return re.search(r"<html[^>]*>", body).group(0)


@pytest.mark.parametrize("header, lang, direction, word", [
    (None, "en", "ltr", "Log in"),
    ("de-DE,de;q=0.9,en;q=0.5", "de", "ltr", "Anmelden"),
    ("it", "it", "ltr", "Accedi"),
    ("nb-NO,nb;q=0.9", "nb", "ltr", "Logg inn"),
    ("no", "nb", "ltr", "Logg inn"),
    ("pt-BR,pt;q=0.8", "pt-BR", "ltr", "Entrar"),
    ("pt", "pt-BR", "ltr", "Entrar"),
    ("ko-KR", "ko", "ltr", "로그인"),
    ("he-IL,he;q=0.9", "he", "rtl", "כניסה"),
    ("fr-FR,fr;q=0.9", "en", "ltr", "Log in"),
    ("fr, de;q=0.5", "de", "ltr", "Anmelden"),
])
def test_accept_language_chooses_the_page_language_and_direction(world, client, header, lang, direction, word):
    r = client.get("/login", headers={"Accept-Language": header} if header else {})
    body = r.get_data(as_text=True)
    assert _html_tag(body) == f'<html lang="{lang}" dir="{direction}">'
    assert word in body
    assert r.headers["Content-Language"] == lang


def test_without_accept_language_the_pages_are_english(world, app):
    c = login(app, "coordinator")
    body = c.get("/participants").get_data(as_text=True)
    assert '<html lang="en" dir="ltr">' in body and "Screening log" in body and "Participants" in body


def test_a_german_page_is_german_through_and_through(world, app):
    c = login(app, "coordinator", **{"Accept-Language": "de"})
    body = c.get("/").get_data(as_text=True)
    assert '<html lang="de" dir="ltr">' in body
    for word in ("Teilnehmende", "Screening-Log", "Visiten", "Statusübersicht", "Abmelden", "Studienkoordination",
                 "Rekrutierung nach Zentrum"):
        assert word in body, word
    for word in ("Participants", "Log out", "Recruitment by site"):
        assert word not in body, word


def test_the_api_speaks_english_whatever_the_browser_asks(world):
    r = world.api("GET", "/participants/XX99-0001", "coordinator", headers={"Accept-Language": "de"})
    assert r.status_code == 404 and "Nicht" not in r.get_json()["error"]["message"]


def test_the_users_own_language_wins_over_the_browsers_and_is_audited(world, app, db):
    c = login(app, "coordinator", **{"Accept-Language": "de"})
    r = c.post("/language", data={"language": "it", "next": "/participants"})
    assert r.status_code == 302 and r.headers["Location"].endswith("/participants")
    body = c.get("/participants").get_data(as_text=True)
    assert '<html lang="it" dir="ltr">' in body and "Partecipanti" in body and "Teilnehmende" not in body
    assert "Lingua delle pagine ora: Italiano." in body  # the message after the change, already in Italian
    user = db.execute(select(User).where(User.email == "coordinator@example.org")).scalar_one()
    db.refresh(user)
    assert user.language == "it"
    rec = db.execute(select(AuditRecord).where(AuditRecord.entity == "user", AuditRecord.field == "language")).scalars().all()
    assert [(r.entity_id, r.old, r.new) for r in rec] == [("coordinator@example.org", None, "it")]
    # back to the browser's language
    c.post("/language", data={"language": ""})
    assert '<html lang="de"' in c.get("/participants").get_data(as_text=True)


def test_the_language_can_be_chosen_on_the_password_page_and_an_unknown_one_is_refused(world, app):
    c = login(app, "assessor")
    page = c.get("/password").get_data(as_text=True)
    assert 'action="/language"' in page and 'value="he"' in page and "עברית" in page
    assert c.post("/language", data={"language": "xx"}).status_code == 400
    c.post("/language", data={"language": "he", "next": "/password"})
    page = c.get("/password").get_data(as_text=True)
    assert '<html lang="he" dir="rtl">' in page and "שינוי סיסמה" in page


def test_the_catalogue_words_of_the_systems_keys_are_translated(world, app):
    world.ready()
    c = login(app, "coordinator", **{"Accept-Language": "pt-BR"})
    body = c.get("/participants").get_data(as_text=True)
    assert "Incluído" in body and "Feminino" in body  # the status and the sex of the child
    assert "Enrolled" not in body and "Female" not in body


# --- the protocol's words -----------------------------------------------------------------------

def test_the_protocol_gives_its_labels_in_every_language_of_the_pages():
    content = parse(TOML)
    for lang in CATALOGUES:
        words = labels(content, lang)
        english = labels(content)
        for kind in ("arm", "visit", "instrument", "field", "criterion", "technique"):
            assert words[kind].keys() == english[kind].keys()
            untranslated = [k for k in words[kind] if words[kind][k] == english[kind][k] and not
                            (lang in ("de", "nb") and kind == "visit" and k == "baseline")]  # "Baseline" is the word
            assert not untranslated, (lang, kind, untranslated)
    assert labels(content, "de")["visit"]["month2"] == "2 Monate"
    assert labels(content, "pt_BR")["arm"]["usual"] == "Cuidado usual aprimorado"
    assert labels(content, "en")["technique"]["musical_games"] == "Musical games"


def test_a_label_without_the_pages_language_falls_back_to_english():
    content = parse(TOML.replace('de = "12 Monate"\n', ""))
    assert labels(content, "de")["visit"]["month12"] == "12 months"
    assert labels(content, "it")["visit"]["month12"] == "12 mesi"
    assert localized(content, "de")["visits"][3]["label"] == "12 months"
    assert localized(content, "de")["visits"][1]["label"] == "2 Monate"
    assert localized(content, "en") is content


def _edited(edit) -> dict:
    raw = tomllib.loads(TOML)
    edit(raw)
    return raw


@pytest.mark.parametrize("edit, key, problem", [
    (lambda r: r["visits"][1]["labels"].update(Deutsch="2 Monate"), "visits[1].labels.Deutsch", "not a language tag"),
    (lambda r: r["visits"][1]["labels"].update(en="2 months"), "visits[1].labels.en", "English is the label itself"),
    (lambda r: r["visits"][1]["labels"].update(de=2), "visits[1].labels.de", "non-empty string"),
    (lambda r: r["visits"][1]["labels"].update(de=" "), "visits[1].labels.de", "non-empty string"),
    (lambda r: r["arms"][0].update(labels="Musiktherapie"), "arms[0].labels", "must be a dict"),
    (lambda r: r["criteria"][0].update(labels=r["criteria"][0].pop("questions")), "criteria[0].labels", "not a known key"),
    (lambda r: r["criteria"][0]["questions"].update(en="Is the child ...?"), "criteria[0].questions.en",
     "English is the question itself"),
    (lambda r: r["instruments"][0]["fields"][0]["labels"].update(**{"swedish language": "Social affekt"}),
     "instruments[0].fields[0].labels.swedish language", "not a language tag"),
    (lambda r: r["course"]["technique_labels"].update(drums={"de": "Trommeln"}), "course.technique_labels.drums",
     "not one of course.techniques"),
])
def test_protocol_translations_are_validated(edit, key, problem):
    with pytest.raises(ProtocolError) as exc:
        validate(_edited(edit))
    assert exc.value.key == key and problem in exc.value.problem


def test_a_language_may_be_written_pt_BR_or_pt_dash_BR_and_a_file_without_translations_keeps_its_content():
    assert parse(TOML.replace('pt_BR = "2 meses"', 'pt-BR = "2 meses"'))["visits"][1]["labels"]["pt_BR"] == "2 meses"

    def strip(raw):
        for part in ("arms", "visits", "instruments", "criteria"):
            for item in raw[part]:
                item.pop("labels", None), item.pop("questions", None)
                for f in item.get("fields", []):
                    f.pop("labels", None)
        raw["course"].pop("technique_labels")
    content = validate(_edited(strip))
    assert "labels" not in content["arms"][0] and "questions" not in content["criteria"][0]
    assert "technique_labels" not in content["course"] and "labels" not in content["instruments"][0]["fields"][0]
    assert labels(content, "de")["arm"]["low"] == "Music therapy, 1 session per week"
    assert labels(content, "de")["technique"]["musical_games"] == "Musical games"


def test_translating_the_arms_after_randomization_opened_is_not_a_design_change(world):
    world.open()
    pv = load_text(world.db, CLI, TOML.replace('de = "Erweiterte Standardversorgung"', 'de = "Erweiterte Regelversorgung"'))
    world.db.commit()
    assert pv.version == 2 and labels(current(world.db).content, "de")["arm"]["usual"] == "Erweiterte Regelversorgung"


def test_pages_show_the_protocols_words_in_their_language_with_english_as_fallback(world, app):
    p = world.ready()
    c = login(app, "coordinator", **{"Accept-Language": "de"})
    page = c.get(f"/participants/{p.study_id}").get_data(as_text=True)
    assert "Baseline" in page and "ADOS-2 (verblindete Beurteilung)" in page and "SRS-2 erfassen" in page
    assert "Wert Soziale Affektivität: 12" in page and "Social affect score" not in page
    form = c.get("/screenings/new").get_data(as_text=True)
    assert "Ist das Kind zwischen 4 Jahren 0 Monaten und 6 Jahren 11 Monaten alt?" in form
    # an amendment without the German word for a visit: that visit in English, the others in German
    load_text(world.db, CLI, TOML.replace('de = "5 Monate (primärer Endpunkt)"\n', ""))
    world.db.commit()
    grid = c.get("/dashboard/").get_data(as_text=True)
    assert "5 months (primary endpoint)" in grid and "2 Monate" in grid and "12 Monate" in grid
    english = login(app, "coordinator").get("/dashboard/").get_data(as_text=True)
    assert "2 months" in english and "2 Monate" not in english


def test_an_unblinded_reader_sees_the_arm_in_the_pages_language(world, app):
    world.open()
    p = world.ready()
    arm = world.randomize(p).allocation.arm
    c = login(app, "coordinator", **{"Accept-Language": "ko"})
    body = c.get("/participants").get_data(as_text=True)
    assert labels(current(world.db).content, "ko")["arm"][arm] in body


# --- dates and numbers ------------------------------------------------------------------------

def test_the_participants_list_and_the_status_grid_show_dates_by_the_locales_data(world, app):
    p = world.ready()
    consent = p.consent_date
    performed = dt.date.today() - dt.timedelta(days=20)  # world.baseline's assessment
    for lang, header in (("de", "de"), ("ko", "ko"), ("en", None), ("he", "he")):
        c = login(app, "coordinator", **({"Accept-Language": header} if header else {}))
        listing = c.get("/participants").get_data(as_text=True)
        assert html.escape(format_date(consent, "medium", locale=lang)) in listing, lang
        assert consent.isoformat() not in listing
        grid = login(app, "assessor", **({"Accept-Language": header} if header else {})).get("/dashboard/")
        assert html.escape(format_date(performed, "medium", locale=lang)) in grid.get_data(as_text=True), lang
    assert format_date(consent, "medium", locale="de") == consent.strftime("%d.%m.%Y")


def test_a_sites_day_stays_that_day_and_numbers_follow_the_locale(app):
    from trial.http import day, number, percent
    app.config["BABEL_DEFAULT_TIMEZONE"] = "Pacific/Auckland"  # a date is never moved to another zone
    with app.test_request_context("/", headers={"Accept-Language": "de"}):
        assert day(dt.date(2026, 3, 5)) == day("2026-03-05") == "05.03.2026"
        assert number(12345) == "12.345" and percent(0.5) == "50\xa0%" and percent(None) == "—"
        assert day(None) == "" and day("") == ""
    with app.test_request_context("/"):
        assert day(dt.date(2026, 3, 5)) == "Mar 5, 2026" and number(12345) == "12,345" and percent(0.5) == "50%"
        from flask_babel import force_locale
        with force_locale("de"):  # (an e-mail to a reader of another language, made within a request)
            assert day(dt.date(2026, 3, 5)) == "05.03.2026"
        assert day(dt.date(2026, 3, 5)) == "Mar 5, 2026", "a page's days are remembered per language"


# --- the messages the services compose --------------------------------------------------------

def test_a_refused_form_names_each_field_by_its_label_in_the_readers_language(world, app, db):
    from trial.participants.models import Screening
    c = login(app, "coordinator", **{"Accept-Language": "de"})
    future = (dt.date.today() + dt.timedelta(days=3)).isoformat()
    form = {"site": "AT01", "screened_on": future, "other_reason": ""}
    form.update({f"c_{c['key']}": "yes" if c["qualifying_answer"] else "no" for c in tomllib.loads(TOML)["criteria"]})
    before = db.execute(select(func.count()).select_from(Screening)).scalar()
    r = c.post("/screenings/new", data=form)
    page = r.get_data(as_text=True)
    assert r.status_code == 400
    assert "Das Screening wurde nicht gespeichert" in page  # the service's lead, in German
    summary = page[page.index('class="error-summary"'):page.index("</div>", page.index('class="error-summary"'))]
    assert 'href="#screened_on"' in summary and "liegt in der Zukunft" in summary  # linked to its field
    assert page.index('class="error-summary"') < page.index('name="screened_on"')
    for english in ("is in the future", "screened_on is", "screened_on 20", "was not saved"):
        assert english not in page, english
    assert db.execute(select(func.count()).select_from(Screening)).scalar() == before


def test_notifications_automatic_queries_and_the_lock_banner_follow_each_readers_language(world, app, db, monkeypatch):
    from trial.notify.models import MailMessage, Notification
    from trial.outcomes.service import check_missing_forms
    from trial.participants.models import Participant
    world.open(bytes(range(32)))
    p = world.ready()
    world.randomize(p)
    db.execute(text("UPDATE allocation SET randomized_at = :t WHERE participant_id = :p"),
               {"t": dt.datetime.combine(dt.date.today() - dt.timedelta(days=100), dt.time(12)), "p": p.id})
    from trial.visitplan.service import replan
    replan(db, [p.id])
    db.commit()
    # an automatic query: stored in English with its words; each page shows it in its reader's language
    assert check_missing_forms(db, [db.get(Participant, p.id)]) == 2
    db.commit()
    he = login(app, "coordinator", **{"Accept-Language": "he"}).get("/queries?status=open").get_data(as_text=True)
    assert "חסר: חלון הזמן נסגר" in he and "is missing" not in he
    assert "is missing: its window closed on" in world.api("GET", "/queries", "coordinator").get_data(as_text=True)
    # a notification and its e-mail in the recipient's own language (Korean), the audit trail in English
    coordinator = world.users["coordinator"]
    coordinator.language = "ko"
    db.commit()
    monkeypatch.setenv("TRIAL_SMTP_URL", "smtp://127.0.0.1:9")  # queued, not sent
    r = world.api("POST", "/queries", "monitor", json={"study_id": p.study_id, "on": {"kind": "participant"},
                                                       "text": "Please check the consent date."})
    assert r.status_code == 201
    n = db.execute(select(Notification).where(Notification.user_id == coordinator.id)).scalars().all()[-1]
    assert n.message.startswith(f"Query AT01-Q{r.get_json()['number']} on {p.study_id}") and n.words  # its site's number
    home = login(app, "coordinator").get("/").get_data(as_text=True)
    assert "답변을 기다립니다" in home and "waits for your answer" not in home
    mail = db.execute(select(MailMessage).where(MailMessage.recipient == coordinator.email)).scalars().all()[-1]
    assert "답변을 기다립니다" in mail.body and "임상시험 시스템" in mail.body and "쿼리" in mail.subject
    # the lock banner: Italian on the pages, English in the API's 423
    assert world.api("POST", "/locks", "manager", json={"kind": "soft", "password": PASSWORD,
                                                        "meaning": "Interim look"}).status_code == 201
    it = login(app, "monitor", **{"Accept-Language": "it"}).get("/participants").get_data(as_text=True)
    assert "Il database è bloccato provvisoriamente" in it and "no data can be entered" not in it
    refused = world.api("POST", f"/participants/{p.study_id}/events", "coordinator",
                        json={"type": "withdrawn", "on": dt.date.today().isoformat(), "reason": "x"})
    assert refused.status_code == 423 and "The database is soft-locked" in refused.get_json()["error"]["message"]


def test_the_consort_diagram_on_the_page_speaks_the_readers_language_and_the_pdf_stays_english(world, app):
    world.open(bytes(range(32)))
    world.randomize(world.ready())
    de = login(app, "manager", **{"Accept-Language": "de"}).get("/consort.svg")
    svg = de.get_data(as_text=True)
    assert de.status_code == 200 and "Auf Eignung geprüft (n=" in svg and "CONSORT-Flussdiagramm" in svg
    assert "Assessed for eligibility" not in svg
    en = login(app, "manager").get("/consort.svg").get_data(as_text=True)
    assert "Assessed for eligibility (n=" in en
