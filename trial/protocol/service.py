"""Loading, versioning and reading the protocol."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer

from trial.audit import service as audit
from trial.auth.scope import require_role
from trial.db import PROJECT_ROOT
from trial.errors import Conflict, NotFound, ValidationError
from trial.protocol.models import ProtocolVersion
from trial.protocol.schema import ProtocolError, parse

DEFAULT_PROTOCOL = PROJECT_ROOT / "config" / "protocols" / "time-a.toml"


def current(db: Session) -> ProtocolVersion:
    """The current protocol version, read once per transaction (versions are immutable rows)."""
    cached = db.info.get("protocol")
    if cached is not None and cached in db:
        return cached
    pv = db.execute(select(ProtocolVersion).order_by(ProtocolVersion.version.desc()).limit(1)
                    .options(defer(ProtocolVersion.source))).scalar_one_or_none()
    db.info["protocol"] = pv
    if pv is None:
        raise NotFound("No protocol is loaded; run `trial db upgrade` or `trial protocol load PATH`.")
    return pv


_CONTENT_BY_SHA: dict[str, dict[str, Any]] = {}


def latest_sha_column():
    """The current version's SHA-256, as a scalar subquery to read along with something else."""
    return (select(ProtocolVersion.sha256).order_by(ProtocolVersion.version.desc()).limit(1)
            .scalar_subquery().label("protocol_sha256"))


def content_by_sha(db: Session, sha: str | None) -> dict[str, Any]:
    """The parsed content of the protocol text with this SHA-256, read once per process (the
    content is a pure function of the text). For hot paths that read the SHA with
    :func:`latest_sha_column`; treat the result as read-only."""
    if sha is None:
        raise NotFound("No protocol is loaded; run `trial db upgrade` or `trial protocol load PATH`.")
    content = _CONTENT_BY_SHA.get(sha)
    if content is None:
        content = db.execute(select(ProtocolVersion.content).where(ProtocolVersion.sha256 == sha)
                             .order_by(ProtocolVersion.version.desc()).limit(1)).scalar_one()
        if len(_CONTENT_BY_SHA) > 64:
            _CONTENT_BY_SHA.clear()
        _CONTENT_BY_SHA[sha] = content
    return content


def versions(db: Session, actor) -> list[ProtocolVersion]:
    """Every protocol version, newest first (admins; amendments are loaded with `trial protocol load`)."""
    require_role(db, actor, "admin")
    return list(db.execute(select(ProtocolVersion).order_by(ProtocolVersion.version.desc())).scalars())


def load_text(db: Session, actor, text: str, source_name: str = "protocol") -> ProtocolVersion:
    """Validate and store a protocol as the new current version (no-op if identical)."""
    require_role(db, actor, "admin")
    from trial.lock.service import ensure_writable
    ensure_writable(db)
    try:
        content = parse(text)
    except ProtocolError as e:
        raise ValidationError(f"{source_name}: {e}", {e.key: e.problem}) from e
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


def _check_amendment(db: Session, old: dict, new: dict) -> None:
    """Once randomization is open the arms and the randomization design are fixed."""
    from trial.randomize.models import RandomizationDesign
    opened = db.execute(select(RandomizationDesign.id)).first() is not None
    if not opened:
        return
    if old["trial"]["key"] != new["trial"]["key"]:
        raise Conflict("An amendment cannot change the trial key.")
    for part in ("arms", "randomization"):
        if old[part] != new[part]:
            raise Conflict(f"Randomization is open: an amendment cannot change '{part}'.", {part: "fixed once randomization is open"})


def load_file(db: Session, actor, path: str | Path) -> ProtocolVersion:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ValidationError(f"Cannot read protocol file {p}: {e.strerror}", {"path": e.strerror or "unreadable"}) from e
    return load_text(db, actor, text, source_name=p.name)


def ensure_default(db: Session, actor) -> ProtocolVersion | None:
    if db.execute(select(ProtocolVersion.id)).first() is None:
        return load_file(db, actor, DEFAULT_PROTOCOL)
    return None


def public_view(db: Session, pv: ProtocolVersion) -> dict[str, Any]:
    """The protocol as API.md shows it."""
    from trial.sites.service import list_sites
    c = pv.content
    site_levels = [s.code for s in list_sites(db)]
    return {
        "version": pv.version,
        "trial": c["trial"],
        "arms": [{k: a[k] for k in ("key", "label", "weight", "sessions_per_week")} for a in c["arms"]],
        # block sizes are left out: with the ratio they would help predict the end of a block
        "randomization": {"method": c["randomization"]["method"],
                          "factors": [{"key": f["key"], "levels": site_levels if f["key"] == "site" else f["levels"]}
                                      for f in c["randomization"]["factors"]]},
        "criteria": c["criteria"],
        "eligibility": c["eligibility"],
        "course": c["course"],
        "visits": [{k: v[k] for k in ("key", "label", "day", "window_before", "window_after", "primary")} for v in c["visits"]],
        "instruments": [{"key": i["key"], "label": i["label"], "blinded": i["blinded"], "visits": i["visits"],
                         "fields": [{k: f[k] for k in ("key", "label", "type", "min", "max", "required", "units", "choices")}
                                    for f in i["fields"]]} for i in c["instruments"]],
        "primary_outcome": c["primary_outcome"],
    }
