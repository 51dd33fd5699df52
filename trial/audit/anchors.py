"""The audit chain's head anchored outside the database: `trial audit anchor` (daily, and at every
hard lock's signing) appends it to an append-only file, best on another volume; `trial audit verify
--anchors FILE` then finds a chain cut back behind an anchor, however the database was rewritten
without the audit key (the tail deleted and an earlier, genuine head row put back; the head row
deleted; a hard lock's seals deleted)."""
from __future__ import annotations

import hmac
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from trial import db as database
from trial import settings
from trial.audit.models import AuditHead, AuditRecord, AuditSeal
from trial.audit.service import epoch_at, epochs, head_mac
from trial.db import utcnow

log = logging.getLogger(__name__)
PENDING = "trial.audit_anchor_pending"


def anchor_file(to: str | Path | None = None) -> Path | None:
    """The anchor file: ``to``, else the setting ``TRIAL_AUDIT_ANCHORS`` (None: neither)."""
    path = to or settings.current().audit_anchors
    return Path(path) if path else None


def head_line(conn) -> dict:
    """The chain head as committed: number, hash and MAC of the head, how many records and seals."""
    h = AuditHead.__table__
    head = conn.execute(select(h.c.seq, h.c.hash, h.c.mac).where(h.c.id == 1)).first()
    records = conn.execute(select(func.count()).select_from(AuditRecord.__table__)).scalar()
    seals = conn.execute(select(func.count()).select_from(AuditSeal.__table__)).scalar()
    return {"seq": head.seq if head else 0, "hash": head.hash if head else "", "mac": head.mac if head else None,
            "records": records, "seals": seals, "at": utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")}


def append_line(path: Path, line: dict, make_folder: bool = True) -> None:
    """Append one JSON line, opened with O_APPEND and fsync'd (a new file gets mode 0600); the folder
    made (mode 0700) if missing, unless ``make_folder`` is False (the allocation journal's folder must
    exist: made on the wrong volume it would not be the copy outside the database)."""
    if make_folder:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(line, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def anchor(db: Session, to: str | Path | None = None) -> tuple[Path, dict]:
    """Append the committed head to the anchor file (``to`` or the setting). Reads on a connection
    of its own, so it anchors only what is committed and leaves the caller's session alone (a
    session bound to one connection, as in the tests, reads through itself)."""
    path = anchor_file(to)
    if path is None:
        raise ValueError("no anchor file: give --to FILE or set TRIAL_AUDIT_ANCHORS")
    bind = db.get_bind()
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            line = head_line(conn)
    else:
        line = head_line(db)
    append_line(path, line)
    return path, line


def anchor_after_commit(db: Session) -> None:
    """Anchor the head once this session's transaction commits (a hard lock's signing), when
    ``TRIAL_AUDIT_ANCHORS`` is set. The file is written after the commit, never inside it."""
    if settings.current().audit_anchors:
        db.info[PENDING] = True


def _after_commit(db: Session) -> None:
    if db.info.pop(PENDING, False):
        try:
            anchor(db)
        except Exception:  # the lock is committed (and sealed in the database); `trial audit anchor` repeats it
            log.exception("anchoring the audit head after a hard lock failed; run `trial audit anchor`")


database.after_commit_hooks.append(_after_commit)


# --- checking the chain against the anchors ------------------------------------------------------

@dataclass
class AnchorCheck:
    ok: bool
    anchors: int
    problems: list[str]


def read_anchors(path: Path) -> list[tuple[int, dict | None]]:
    """The anchor file's lines, numbered from 1 (None: a line that is not an anchor)."""
    out = []
    for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
            out.append((n, line if isinstance(line, dict) and {"seq", "hash", "seals"} <= line.keys() else None))
        except ValueError:
            out.append((n, None))
    return out


def check_anchors(db: Session, path: Path) -> AnchorCheck:
    """Every anchor of the file against the chain as it is: each problem names the anchor's line."""
    if not path.is_file():
        return AnchorCheck(False, 0, [f"{path}: no such anchor file"])
    h = AuditHead.__table__
    head = db.execute(select(h.c.seq, h.c.hash).where(h.c.id == 1)).first()
    eps = epochs(db)
    lines = read_anchors(path)
    problems = []
    for n, line in lines:
        why = "not an anchor (JSON with seq, hash and seals)" if line is None else _against(db, head, eps, line)
        if why:
            problems.append(f"{path.name} line {n}: {why}")
    return AnchorCheck(not problems, len(lines), problems)


def _against(db: Session, head, eps, a: dict) -> str | None:
    """What the chain lacks that the anchor ``a`` saw (None: nothing)."""
    seq, hash_ = int(a["seq"]), a["hash"]
    key = epoch_at(eps, seq).key
    if a.get("mac") and key is not None and not hmac.compare_digest(a["mac"], head_mac(seq, hash_, key)):
        return f"the anchor of record {seq} does not carry the audit key's MAC: not written by this deployment"
    top = db.execute(select(func.max(AuditRecord.seq))).scalar() or 0
    if seq and top < seq:
        return f"the chain ends at record {top}, shorter than the anchor's record {seq}: records were cut off the end"
    got = db.execute(select(AuditRecord.hash).where(AuditRecord.seq == seq)).scalar() if seq else hash_
    if got != hash_:
        return f"record {seq} has another hash than the anchor's: the chain was rewritten after it"
    if head is None:
        return "the chain head row is missing"
    if head.seq < seq or (head.seq == seq and head.hash != hash_):
        return f"the chain head (record {head.seq}) is behind the anchor's record {seq}: an earlier head was put back"
    seals = db.execute(select(func.count()).select_from(AuditSeal).where(AuditSeal.seq <= seq)).scalar()
    if seals < int(a["seals"]):
        return (f"{int(a['seals']) - seals} of the {a['seals']} seals the anchor counted are missing: a sealed "
                "lock lost its seal")
    return None
