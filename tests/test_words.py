"""Words, never keys: every refusal of the services is a catalogue message (so each reader gets it
in their language, with the protocol's words for its keys), and rendered in each of the seven
languages it shows no protocol key and, off English, no English.

Two halves: a reading of the source (every ``raise`` of a domain error, every reason given for a
field, every lead of a refusal is a catalogue text or a composed :class:`trial.catalogue.Msg`,
never an f-string or a bare literal the catalogue does not have), and the refusals a site meets
every day, provoked through the services and rendered in each language."""
from __future__ import annotations

import ast
import datetime as dt
import re
from pathlib import Path

import pytest

from trial.catalogue import LANGUAGES, Joined, Msg, in_language
from trial.errors import DomainError
from trial.protocol.service import current, labels

ROOT = Path(__file__).resolve().parent.parent
TRIAL = ROOT / "trial"
# the calls whose value is a catalogue message (or composes one from catalogue messages)
CATALOGUE_CALLS = {"Msg", "N_", "refusal", "refuse", "_refuse", "_refusal", "term", "terms", "as_msg"}
# a dict the services fill with the reasons for the fields at fault
REASON_DICTS = {"errors", "fields", "problems"}


def _error_classes(trees: dict[Path, ast.Module]) -> set[str]:
    """DomainError and every class that derives from it, by name, across the package."""
    names, grew = {"DomainError"}, True
    while grew:
        grew = False
        for tree in trees.values():
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and node.name not in names and any(
                        (getattr(b, "id", None) or getattr(b, "attr", None)) in names for b in node.bases):
                    names.add(node.name)
                    grew = True
    return names


def _constants(tree: ast.Module) -> dict[str, ast.expr]:
    """The module's top-level names bound once, with what they are bound to."""
    return {t.id: node.value for node in tree.body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


def _is_catalogued(node: ast.expr | None, consts: dict[str, ast.expr]) -> bool:
    """A catalogue message, a composed one, or a name for one: never an f-string, a literal or a
    text glued together (which no catalogue holds)."""
    if node is None or isinstance(node, ast.Constant) and node.value is None:
        return True
    if isinstance(node, ast.Call):
        name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
        return name in CATALOGUE_CALLS
    if isinstance(node, ast.IfExp):
        return _is_catalogued(node.body, consts) and _is_catalogued(node.orelse, consts)
    if isinstance(node, ast.Name):
        bound = consts.get(node.id)
        return bound is None or _is_catalogued(bound, consts)  # a local: what it holds is checked where it is set
    if isinstance(node, (ast.Attribute, ast.Subscript)):
        return True  # a text from a table of catalogue texts (LEAD, LABELS[...]) or an error passed on
    return False  # str, f-string, concatenation, .join, .format


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)[:120]}"


def _refusal_faults(path: Path, tree: ast.Module, errors: set[str]) -> list[str]:
    consts, faults = _constants(tree), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            call = node.exc
            name = getattr(call.func, "id", None) or getattr(call.func, "attr", None)
            if name not in errors:
                continue
            given = list(call.args[:2]) + [k.value for k in call.keywords if k.arg in ("message", "fields", "lead")]
            for arg in given:
                if isinstance(arg, ast.Dict):
                    faults += [_where(path, v) for v in arg.values if not _is_catalogued(v, consts)]
                elif not _is_catalogued(arg, consts):
                    faults.append(_where(path, arg))
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Subscript):
            target = node.targets[0].value
            if isinstance(target, ast.Name) and target.id in REASON_DICTS and not _is_catalogued(node.value, consts):
                faults.append(_where(path, node))
        elif isinstance(node, ast.Call) and (getattr(node.func, "id", None) or getattr(node.func, "attr", None)) in (
                "refuse", "refusal", "_refuse", "_refusal") and node.args and not _is_catalogued(node.args[0], consts):
            faults.append(_where(path, node))
    return faults


def test_every_refusal_of_the_services_is_a_catalogue_message():
    trees = {p: ast.parse(p.read_text(), str(p)) for p in sorted(TRIAL.rglob("*.py"))}
    errors = _error_classes(trees)
    assert {"ValidationError", "Conflict", "NotFound", "Forbidden", "Locked"} <= errors
    faults = [f for path, tree in trees.items() for f in _refusal_faults(path, tree, errors)]
    assert not faults, (f"{len(faults)} refusals are not catalogue messages (write Msg(N_(\"...\"), ...) with "
                        "the protocol's words as Label values and the system's keys as term(kind, key)):\n"
                        + "\n".join(faults))


def test_the_reading_of_the_source_finds_what_it_must():
    src = '''
class Gone(NotFound):
    pass
LEAD = "The thing was not saved"
def f(x, errors):
    errors["a"] = f"is {x}"
    errors["b"] = N_("is fine")
    refuse(LEAD, errors)
    raise Gone(f"No thing {x}.")
    raise Conflict("Plain words.", {"c": "plain"})
    raise Conflict(Msg(N_("Thing %(x)s."), x=x), {"c": N_("fine")})
'''
    tree = ast.parse(src)
    errors = _error_classes({Path("x"): tree, **{Path("e"): ast.parse("class NotFound(DomainError): pass\n"
                                                                      "class Conflict(DomainError): pass")}})
    assert "Gone" in errors
    found = _refusal_faults(ROOT / "x.py", tree, errors)
    assert sorted(f.split(": ", 1)[1] for f in found) == sorted([
        "errors['a'] = f'is {x}'", "refuse(LEAD, errors)", "f'No thing {x}.'", "'Plain words.'", "'plain'"]), found


# --- the refusals of a site's day, in each language --------------------------------------------

def _keys(content: dict) -> set[str]:
    """The protocol's keys that are not words of any language (a key such as ``month2`` or
    ``social_affect``); plain-word keys (``low``, ``songs``) cannot be told from text."""
    keys = {v["key"] for v in content["visits"]} | {i["key"] for i in content["instruments"]}
    keys |= {f["key"] for i in content["instruments"] for f in i["fields"]} | {c["key"] for c in content["criteria"]}
    keys |= {a["key"] for a in content["arms"]} | set(content.get("course", {}).get("techniques", []))
    keys |= {g["key"] for g in content.get("goals", [])}
    return {k for k in keys if re.search(r"[_\d]", k)}


def _provoke(world, db) -> dict[str, DomainError]:
    """The refusals a site meets in a day, each provoked through the services as the pages do."""
    from trial.course import service as course
    from trial.enrollment import service as enrollment
    from trial.outcomes import service as outcomes
    from trial.queries import service as queries
    from trial.status import service as status
    from tests.helpers import backdate_randomization

    u = world.users
    got: dict[str, DomainError] = {}

    def catch(name, fn):
        try:
            fn()
        except DomainError as e:
            db.rollback()
            got[name] = e
        else:
            raise AssertionError(f"{name}: no refusal")

    world.open()
    music = {a["key"] for a in current(db).content["arms"] if a["sessions_per_week"]}
    arms = {}
    while not (music & set(arms) and set(arms) - music):
        p = world.ready()
        arms.setdefault(world.randomize(p).allocation.arm, p)
    p, usual = next(arms[a] for a in arms if a in music), next(arms[a] for a in arms if a not in music)
    backdate_randomization(db, dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(days=70))
    today = dt.date.today().isoformat()
    catch("baseline twice", lambda: outcomes.record_assessment(db, u["assessor"], p.study_id, {
        "visit": "baseline", "instrument": "ados2", "performed_on": today, "values": {"social_affect": 3, "rrb": 2, "css": 4}}))
    catch("unknown visit", lambda: outcomes.record_assessment(db, u["assessor"], p.study_id, {
        "visit": "week3", "instrument": "ados2", "performed_on": today, "values": {}}))
    catch("values out of range", lambda: outcomes.record_assessment(db, u["assessor"], p.study_id, {
        "visit": "month2", "instrument": "ados2", "performed_on": today, "values": {"social_affect": 99}}))
    catch("goals not set", lambda: course.log_session(db, u["therapist"], p.study_id, {
        "held_on": today, "attendance": "attended", "minutes": 30, "goals": ["eye_contact"]}))
    catch("unknown technique", lambda: course.log_session(db, u["therapist"], p.study_id, {
        "held_on": today, "attendance": "attended", "minutes": 30, "techniques": ["drumming_circle"]}))
    catch("a session in usual care", lambda: course.log_session(db, u["therapist"], usual.study_id, {
        "held_on": today, "attendance": "attended", "minutes": 30}))
    catch("an event before randomization", lambda: status.record_event(db, u["coordinator"], p.study_id, {
        "type": "withdrawn", "on": "2001-01-01", "reason": "moved"}))
    sc = world.screen()
    enrollment.enroll(db, u["coordinator"], {"screening_id": sc.id, "consent_date": today,
                                             "date_of_birth": "2020-01-01", "sex": "male"})
    db.commit()
    catch("enrolled twice", lambda: enrollment.enroll(db, u["coordinator"], {
        "screening_id": sc.id, "consent_date": today, "date_of_birth": "2020-01-01", "sex": "male"}))
    catch("screening answers missing", lambda: enrollment.record_screening(db, u["coordinator"], {
        "site": "AT01", "screened_on": today, "answers": {}}))
    q = queries.raise_query(db, u["manager"], {"study_id": p.study_id, "on": {"kind": "participant"}, "text": "Why?"})
    db.commit()
    catch("reopen an open query", lambda: queries.reopen(db, u["manager"], q.id, {}))
    catch("another site's child", lambda: outcomes.record_assessment(db, u["coordinator_no"], p.study_id, {
        "visit": "month2", "instrument": "srs2", "performed_on": today, "values": {"total_t": 60}}))
    return got


def _english_fragments(message: str) -> list[str]:
    """The template's own words (between its values) long enough to be telling."""
    template = message.template if isinstance(message, Msg) else message
    own = [f.strip() for f in re.split(r"%\(\w+\)s", template) if len(f.strip()) >= 12]
    values = message.params.values() if isinstance(message, Msg) else ()
    parts = [p for v in values for p in (v.parts if isinstance(v, Joined) else (v,))]
    return own + [f for p in parts if isinstance(p, Msg) for f in _english_fragments(p)]


def test_a_sites_refusals_in_each_language_show_the_protocols_words_and_no_english(world, db):
    content = current(db).content
    keys = _keys(content)
    refusals = _provoke(world, db)
    assert len(refusals) >= 10
    faults = []
    for lang in LANGUAGES:
        words = labels(content, lang)
        for name, e in refusals.items():
            shown = [e.message, *e.fields.values()]
            for message in shown:
                text = in_language(message, lang, plabel=lambda kind, key: words.get(kind, {}).get(key))
                leaked = sorted(k for k in keys if re.search(rf"(?<![\w.]){re.escape(k)}(?![\w])", text))
                if leaked:
                    faults.append(f"{lang} {name}: keys {leaked} in {text!r}")
                if lang != "en":
                    english = [f for f in _english_fragments(message) if f in text]
                    if english or text == str(message) and re.search(r"[a-z]{4}", text):
                        faults.append(f"{lang} {name}: English in {text!r}")
    assert not faults, "\n".join(faults)


@pytest.mark.parametrize("lang", [lang for lang in LANGUAGES if lang != "en"])
def test_a_composed_refusal_translates_its_lead_each_label_and_each_reason(lang):
    from trial.validation import refusal
    e = refusal("The session was not saved", {"minutes": "is required"}, {"minutes": "Minutes"})
    text = in_language(e.message, lang)
    assert str(e.message) == "The session was not saved: Minutes is required"
    assert "not saved" not in text and "required" not in text and text.count(":") >= 1
