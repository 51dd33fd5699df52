"""Sites: created and edited by admins, every change audited."""
from __future__ import annotations

import re
import zoneinfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.catalogue import LANGUAGES, N_, Msg
from trial.errors import Conflict, NotFound
from trial.scope import require_role, visible_site_ids
from trial.sites.models import Site
from trial.trialstate.service import ensure_writable
from trial.validation import refusal, text

CODE_RE = re.compile(r"^[A-Z]{2}[0-9]{2}$")
FIELDS = ("name", "country", "timezone", "target", "is_open", "languages")


def _clean(data: dict, creating: bool) -> dict:
    errors: dict[str, str] = {}
    out: dict = {}
    if creating:
        code = str(data.get("code") or "").strip().upper()
        if not CODE_RE.match(code):
            errors["code"] = N_("must be two letters and two digits, e.g. AT01")
        out["code"] = code
    if "name" in data or creating:
        out["name"] = text(data.get("name"), "name", errors, 200, required=True)
    if data.get("country") not in (None, ""):
        cc = str(data["country"]).strip().upper()
        if not re.fullmatch(r"[A-Z]{2}", cc):
            errors["country"] = N_("must be a two-letter ISO 3166 country code")
        out["country"] = cc
    if data.get("timezone") not in (None, ""):
        tz = str(data["timezone"]).strip()
        try:
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            errors["timezone"] = Msg(N_("unknown time zone %(tz)s"), tz=repr(tz))
        out["timezone"] = tz
    if data.get("target") not in (None, ""):
        try:
            target = int(data["target"])
            if not 0 <= target <= 100_000:
                raise ValueError
            out["target"] = target
        except (TypeError, ValueError):
            errors["target"] = N_("must be a whole number, 0 or more (at most 100000)")
    if "is_open" in data:
        out["is_open"] = bool(data["is_open"])
    if data.get("languages") not in (None, ""):
        langs = _languages(data["languages"], errors)
        if langs is not None:
            out["languages"] = langs
    if errors:
        raise refusal(N_("The site was not saved"), errors)
    return out


def _languages(value, errors: dict) -> list[str] | None:
    """A site's languages: a list of the web UI's language codes (or a form's "de, en"), each once,
    the one the site consents in by default first; None (and the reason in ``errors``) otherwise."""
    langs = [x.strip() for x in value.split(",") if x.strip()] if isinstance(value, str) else value
    allowed = ", ".join(LANGUAGES)
    if not isinstance(langs, list) or not langs or not all(isinstance(x, str) for x in langs):
        errors["languages"] = Msg(N_("must be a list of languages, the default first (of %(allowed)s)"),
                                  allowed=allowed)
        return None
    langs = [x.strip().replace("-", "_") for x in langs]  # pt-BR as the browsers write it is pt_BR
    unknown = [x for x in langs if x not in LANGUAGES]
    if unknown:
        errors["languages"] = Msg(N_("%(codes)s: not a language of the system (one of %(allowed)s)"),
                                  codes=", ".join(repr(x[:20]) for x in unknown), allowed=allowed)
        return None
    twice = sorted({x for x in langs if langs.count(x) > 1})
    if twice:
        errors["languages"] = Msg(N_("%(codes)s given more than once: name each language once, the default first"),
                                  codes=", ".join(twice))
        return None
    return langs


def list_sites(db: Session) -> list[Site]:
    return list(db.execute(select(Site).order_by(Site.code)).scalars())


def visible_sites(db: Session, actor) -> list[Site]:
    """The sites whose data ``actor`` may read, for a site filter."""
    ids = visible_site_ids(db, actor)
    return [s for s in list_sites(db) if ids is None or s.id in ids]


def get_by_code(db: Session, code: str) -> Site:
    site = db.execute(select(Site).where(Site.code == (code or "").upper())).scalar_one_or_none()
    if site is None:
        raise NotFound(Msg(N_("No site with code %(code)s."), code=repr(code)))
    return site


def create_site(db: Session, actor, data: dict) -> Site:
    require_role(db, actor, "admin")
    ensure_writable(db)
    values = _clean(data, creating=True)
    if db.execute(select(Site.id).where(Site.code == values["code"])).first():
        raise Conflict(Msg(N_("A site with code %(code)s already exists."), code=values["code"]),
                       {"code": N_("already exists")})
    site = Site(code=values["code"], name=values["name"], country=values.get("country"),
                timezone=values.get("timezone", "UTC"), target=values.get("target", 0), is_open=True,
                languages=values.get("languages"))
    db.add(site)
    db.flush()
    audit.created(db, actor, "site", site.code, {k: getattr(site, k) for k in ("code",) + FIELDS})
    return site


def update_site(db: Session, actor, code: str, data: dict, reason: str | None = None) -> Site:
    require_role(db, actor, "admin")
    ensure_writable(db)
    site = get_by_code(db, code)
    values = _clean(data, creating=False)
    changes = {k: (getattr(site, k), v) for k, v in values.items() if getattr(site, k) != v}
    for k, (_, v) in changes.items():
        setattr(site, k, v)
    if changes:
        audit.record(db, actor, "update", "site", site.code, changes, reason=reason)
    return site
