"""Loading, versioning and reading the protocol."""
from __future__ import annotations

import copy
import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer

from trial import cache
from trial.audit import service as audit
from trial.catalogue import N_, Msg
from trial.db import PROJECT_ROOT
from trial.errors import Conflict, NotFound, ValidationError
from trial.protocol.models import ProtocolVersion
from trial.protocol.schema import ProtocolError, amendment_problems, parse
from trial.scope import require_role
from trial.trialstate.service import ensure_writable, randomization_opened

DEFAULT_PROTOCOL = PROJECT_ROOT / "config" / "protocols" / "time-a.toml"
NO_PROTOCOL = N_("No protocol is loaded; run `trial db upgrade` or `trial protocol load PATH`.")


def current(db: Session) -> ProtocolVersion:
    """The current protocol version, read once per transaction (versions are immutable rows)."""
    cached = db.info.get("protocol")
    if cached is not None and cached in db:
        return cached
    pv = db.execute(select(ProtocolVersion).order_by(ProtocolVersion.version.desc()).limit(1)
                    .options(defer(ProtocolVersion.source))).scalar_one_or_none()
    db.info["protocol"] = pv
    if pv is None:
        raise NotFound(NO_PROTOCOL)
    return pv


def latest_sha_column():
    """The current version's SHA-256, as a scalar subquery to read along with something else."""
    return (select(ProtocolVersion.sha256).order_by(ProtocolVersion.version.desc()).limit(1)
            .scalar_subquery().label("protocol_sha256"))


def content_by_sha(db: Session, sha: str | None) -> dict[str, Any]:
    """The parsed content of the protocol text with this SHA-256, read once per process (the
    content is a pure function of the text: trial.cache). For hot paths that read the SHA with
    :func:`latest_sha_column`; treat the result as read-only."""
    if sha is None:
        raise NotFound(NO_PROTOCOL)
    return cache.protocol_content.get(sha, lambda: db.execute(
        select(ProtocolVersion.content).where(ProtocolVersion.sha256 == sha)
        .order_by(ProtocolVersion.version.desc()).limit(1)).scalar_one())


def version(db: Session, number: int | None = None) -> ProtocolVersion:
    """Version ``number`` (the one in force when None)."""
    if number is None:
        return current(db)
    pv = db.execute(select(ProtocolVersion).where(ProtocolVersion.version == number)).scalar_one_or_none()
    if pv is None:
        raise NotFound(Msg(N_("There is no protocol version %(number)s."), number=number))
    return pv


def versions(db: Session, actor) -> list[ProtocolVersion]:
    """Every protocol version, newest first (admins; amendments are loaded with `trial protocol load`)."""
    require_role(db, actor, "admin")
    return list(db.execute(select(ProtocolVersion).order_by(ProtocolVersion.version.desc())).scalars())


def load_text(db: Session, actor, text: str, source_name: str = "protocol") -> ProtocolVersion:
    """Validate and store a protocol as the new current version (no-op if identical)."""
    require_role(db, actor, "admin")
    ensure_writable(db)
    try:
        content = parse(text)
    except ProtocolError as e:
        # the file's problems by their path in the file, in the schema's own (English) words: an
        # administrator's, at the command line (trial.protocol.schema)
        problems = dict(e.errors)
        raise ValidationError(Msg(N_("%(source)s: %(problems)s"), source=source_name, problems=str(e)), problems) from e
    sha = hashlib.sha256(text.encode()).hexdigest()
    latest = db.execute(select(ProtocolVersion).order_by(ProtocolVersion.version.desc()).limit(1)).scalar_one_or_none()
    if latest is not None:
        if latest.sha256 == sha:
            return latest
        _check_amendment(db, latest.content, content)
    version = (db.execute(select(func.max(ProtocolVersion.version))).scalar() or 0) + 1
    pv = ProtocolVersion(version=version, trial_key=content["trial"]["key"], source=text, sha256=sha,
                         content=content, loaded_by=getattr(actor, "email", str(actor)))
    db.add(pv)
    db.flush()
    db.info["protocol"] = pv
    audit.created(db, actor, "protocol_version", version, {"trial_key": pv.trial_key, "sha256": sha,
                                                           "amendment": content["trial"]["amendment"],
                                                           "source_name": source_name})
    return pv


@dataclass(frozen=True)
class FormRule:
    """When a form (an instrument at a visit) became part of the protocol: ``since`` None for a
    form of the first version (every child); else the effective date of the amendment that added
    it, and whether it applies to every child whose window had not closed by then (``applies_to =
    "all"`` on the visit or the instrument) or only to children randomized on or after it."""
    since: dt.date | None = None
    everyone: bool = False

    def applies(self, start: dt.date, closes: dt.date) -> bool:
        """Is the form due for a child randomized on ``start`` whose window closes on ``closes``?
        A window that closed before the amendment never becomes missing or overdue."""
        return self.since is None or start >= self.since or (self.everyone and closes >= self.since)


ALWAYS = FormRule()
# the reasons a form is recorded as not done when the protocol names none (``[[missing_reasons]]``)
DEFAULT_MISSING_REASONS = [{"key": "other", "label": "Other", "needs_text": True}]


def forms_of(content: dict[str, Any]) -> set[tuple[str, str]]:
    """Every (visit, instrument) form after baseline that the protocol collects."""
    return {(v, ins["key"]) for ins in content["instruments"] for v in ins["visits"] if v != "baseline"}


def effective_from(pv: ProtocolVersion) -> dt.date:
    """The day a version's additions apply from: its ``effective_from``, else the day it was loaded (UTC)."""
    given = pv.content.get("effective_from")
    return dt.date.fromisoformat(given) if given else pv.loaded_at.date()


def form_rules(db: Session, version: int | None = None, sha: str | None = None) -> dict[tuple[str, str], FormRule]:
    """Each form of the version in force (or of ``version`` with text ``sha``, as a hot path read
    them) that an amendment added, with its rule; forms not named here are in every child's plan.
    Worked out from the versions once per process and version (versions never change)."""
    if version is None or sha is None:
        pv = current(db)
        version, sha = pv.version, pv.sha256
    return cache.form_rules.get((version, sha), lambda: _form_rules(db, version))


def _form_rules(db: Session, upto: int) -> dict[tuple[str, str], FormRule]:
    versions = list(db.execute(select(ProtocolVersion).where(ProtocolVersion.version <= upto)
                               .order_by(ProtocolVersion.version)).scalars())
    pv = versions[-1]
    seen = forms_of(versions[0].content)
    added: dict[tuple[str, str], dt.date] = {}
    for v in versions[1:]:
        for form in sorted(forms_of(v.content) - seen):
            added.setdefault(form, effective_from(v))
        seen |= forms_of(v.content)
    everyone = {v["key"] for v in pv.content["visits"] if v.get("applies_to") == "all"} | \
               {i["key"] for i in pv.content["instruments"] if i.get("applies_to") == "all"}
    return {form: FormRule(since, form[0] in everyone or form[1] in everyone)
            for form, since in added.items() if form in forms_of(pv.content)}


def _check_amendment(db: Session, old: dict, new: dict) -> None:
    """Once randomization is open the amendment rules apply (declared beside the models:
    :func:`trial.protocol.schema.amendment_problems`)."""
    if randomization_opened(db) is None:
        return
    for part, _why in amendment_problems(old, new):  # the schema's words, here as catalogue texts
        if part == "trial.key":
            raise Conflict(N_("An amendment cannot change the trial key."))
        raise Conflict(Msg(N_("Randomization is open: an amendment cannot change '%(part)s'."), part=part),
                       {part: N_("fixed once randomization is open")})


def load_warnings(content: dict[str, Any]) -> list[str]:
    """What loading the protocol should say though the file is valid (the load goes on): each
    randomization factor its primary analysis does not adjust for. ICH E9 (section 5.7) and EMA's
    guideline on adjustment for baseline covariates (EMA/CHMP/295050/2013): the factors of a
    stratified randomization (or of minimization) belong in the primary model. In English: an
    administrator's, at the command line, like the schema's words."""
    analysis = content.get("analysis")
    if not analysis:
        return []
    adjusted = set(analysis.get("adjust") or [])
    return [f"randomization factor '{f['key']}' is not in [analysis] adjust: the primary model leaves it out. "
            "ICH E9 (5.7) and EMA's guideline on adjustment for baseline covariates (EMA/CHMP/295050/2013) ask "
            "for the stratification factors in the primary analysis; add it to adjust, or say in the SAP why not."
            for f in content["randomization"]["factors"] if f["key"] not in adjusted]


def load_file(db: Session, actor, path: str | Path) -> ProtocolVersion:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        # the operating system's reason, as it gives it
        raise ValidationError(Msg(N_("Cannot read protocol file %(path)s: %(reason)s"), path=str(p), reason=e.strerror),
                              {"path": e.strerror if e.strerror else N_("unreadable")}) from e
    return load_text(db, actor, text, source_name=p.name)


def ensure_default(db: Session, actor) -> ProtocolVersion | None:
    if db.execute(select(ProtocolVersion.id)).first() is None:
        return load_file(db, actor, DEFAULT_PROTOCOL)
    return None


def _words(item: dict, locale: str | None, text: str = "label", table: str = "labels") -> str:
    """``item``'s ``text`` in ``locale`` (``pt_BR``; else its language, ``pt``), else in English."""
    translations = item.get(table) or {}
    if locale:
        for code in (locale, locale.split("_")[0]):
            if translations.get(code):
                return translations[code]
    return item.get(text) or item["key"]


def units_in(field: dict, locale: str | None) -> str:
    """A field's units in ``locale`` where the protocol gives them (``units_labels``), else as written."""
    return _words(field, locale, "units", "units_labels")


def _technique(content: dict[str, Any], key: str, locale: str | None) -> str:
    words = content.get("course", {}).get("technique_labels", {}).get(key) or {}
    return _words({"key": key, "label": words.get("en") or key.replace("_", " ").capitalize(), "labels": words}, locale)


def labels(content: dict[str, Any], locale: str | None = None) -> dict[str, dict[str, str]]:
    """The protocol's words for its own keys, in ``locale`` where the protocol gives them (English
    otherwise): arms, visits, instruments, fields (keyed "instrument.field"), criteria (their
    questions), stratification factors and techniques."""
    out: dict[str, dict[str, str]] = {
        "arm": {a["key"]: _words(a, locale) for a in content["arms"]},
        "visit": {v["key"]: _words(v, locale) for v in content["visits"]},
        "instrument": {i["key"]: _words(i, locale) for i in content["instruments"]},
        "field": {f"{i['key']}.{f['key']}": _words(f, locale) for i in content["instruments"] for f in i["fields"]},
        "unit": {f"{i['key']}.{f['key']}": _words(f, locale, "units", "units_labels")
                 for i in content["instruments"] for f in i["fields"] if f.get("units")},
        "criterion": {c["key"]: _words(c, locale, "question", "questions") for c in content.get("criteria", [])},
        "factor": {f["key"]: _words(f, locale) for f in content.get("randomization", {}).get("factors", [])},
    }
    out["technique"] = {t: _technique(content, t, locale) for t in content.get("course", {}).get("techniques", [])}
    out["credential"] = {c["key"]: _words(c, locale) for c in content.get("credentials", [])}
    out["goal"] = {g["key"]: _words(g, locale) for g in content.get("goals", [])}
    out["fidelity_item"] = {i["key"]: _words(i, locale) for i in content.get("fidelity", {}).get("items", [])}
    out["missing_reason"] = {r["key"]: _words(r, locale) for r in content.get("missing_reasons") or DEFAULT_MISSING_REASONS}
    out["signoff_milestone"] = {m["key"]: _words(m, locale) for m in content.get("signoff_milestones") or []}
    consent = content.get("consent") or {}
    out["consent_document"] = {d["key"]: _words(d, locale) for d in consent.get("documents", [])} or {
        "parental_consent": "Parental consent"}
    out["consent_option"] = {o["key"]: _words(o, locale) for d in consent.get("documents", [])
                             for o in d.get("options", [])}
    return out


def localized(content: dict[str, Any], locale: str | None) -> dict[str, Any]:
    """A copy of the protocol's content whose labels (and criteria's questions) are in ``locale``,
    for showing it; the keys, days and rules are the same. English content is returned as it is."""
    if not locale or locale == "en":
        return content
    out = copy.deepcopy(content)
    for part in ("arms", "visits", "instruments", "credentials", "goals"):
        for item in out.get(part, []):
            item["label"] = _words(item, locale)
    for ins in out["instruments"]:
        for f in ins["fields"]:
            f["label"] = _words(f, locale)
            if f.get("units"):
                f["units"] = _words(f, locale, "units", "units_labels")
    for item in out.get("fidelity", {}).get("items", []):
        item["label"] = _words(item, locale)
    for f in out.get("randomization", {}).get("factors", []):
        if f.get("label"):
            f["label"] = _words(f, locale)
    for c in out.get("criteria", []):
        c["question"] = _words(c, locale, "question", "questions")
    return out
