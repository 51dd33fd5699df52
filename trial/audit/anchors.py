"""The audit chain's head anchored outside the database: `trial audit anchor` (daily, and at every
hard lock's signing) appends it to an append-only file, best on another volume; `trial audit verify
--anchors FILE` then finds a chain cut back behind an anchor, however the database was rewritten
without the audit key (the tail deleted and an earlier, genuine head row put back; the head row
deleted; a hard lock's seals deleted).

A restore (`trial backup restore`) appends a marker line, ``{"restore": true, "backup_created_at",
"head": the restored head, "after_hold": the head after the hold's audit record, "at"}``: the chain
was set back to the backup's head on purpose, so the anchors written before the marker beyond the
restored head are superseded (reported as such, not as failures); the marker itself is checked
against the chain like an anchor (its heads carry the audit key's MAC, and the head after the hold
ties it to the restored database, not to another copy of the same backup)."""
from __future__ import annotations

import errno
import fcntl
import hmac
import json
import logging
import os
from dataclasses import dataclass, field
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
    exist: made on the wrong volume it would not be the copy outside the database).

    Whole or not at all: under an exclusive lock (flock) of the file, every byte is written (a short
    write, as on a nearly full disk, is continued); on failure the file is cut back to its size
    before and the OSError raised. A file that does not end in a newline (a line cut by a crash)
    gets one first, so the cut line stays a line of its own and this one is whole."""
    if make_folder:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = (json.dumps(line, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and _last_byte(path, size) != b"\n":
            data = b"\n" + data
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                if n <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                view = view[n:]
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, size)
                os.fsync(fd)
            except OSError:
                log.error("%s: a line could not be written whole and the file could not be cut back to %d bytes",
                          path, size)
            raise
    finally:
        os.close(fd)  # (releases the lock)


def _last_byte(path: Path, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1)


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
    superseded: list[str] = field(default_factory=list)  # anchors set aside by a later restore marker
    restores: int = 0  # restore markers read


def _is_anchor(line) -> bool:
    return isinstance(line, dict) and {"seq", "hash", "seals"} <= line.keys()


def is_restore_marker(line) -> bool:
    return (isinstance(line, dict) and line.get("restore") is True and _is_anchor(line.get("head"))
            and (line.get("after_hold") is None or _is_anchor(line["after_hold"])))


def read_anchors(path: Path) -> list[tuple[int, dict | None]]:
    """The anchor file's lines, numbered from 1: anchors and restore markers (None: a line that is neither)."""
    out = []
    for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
            out.append((n, line if _is_anchor(line) or is_restore_marker(line) else None))
        except ValueError:
            out.append((n, None))
    return out


def check_anchors(db: Session, path: Path, before: str | None = None) -> AnchorCheck:
    """Every anchor of the file against the chain as it is: each problem names the anchor's line.
    An anchor followed by a restore marker whose restored head is behind it is superseded (listed,
    not a problem); the markers are checked like anchors. ``before``: only the lines written before
    that time (``at``, as "YYYY-MM-DDTHH:MM:SSZ"; a backup's ``created_at``)."""
    if not path.is_file():
        return AnchorCheck(False, 0, [f"{path}: no such anchor file"])
    h = AuditHead.__table__
    head = db.execute(select(h.c.seq, h.c.hash).where(h.c.id == 1)).first()
    eps = epochs(db)
    lines = read_anchors(path)
    if before is not None:
        lines = [(n, line) for n, line in lines if line is None or str(line.get("at", "")) < before]
    markers = [(i, n, line) for i, (n, line) in enumerate(lines) if is_restore_marker(line)]
    problems, superseded = [], []
    for i, (n, line) in enumerate(lines):
        if line is None:
            problems.append(f"{path.name} line {n}: not an anchor (JSON with seq, hash and seals) nor a restore marker")
        elif is_restore_marker(line):
            for what, a in (("restored head", line["head"]), ("head after the hold", line.get("after_hold"))):
                if a is None:
                    continue
                why = (f"its {what} carries no MAC" if not a.get("mac") else _against(db, head, eps, a))
                if why:
                    problems.append(f"{path.name} line {n} (the marker of a restore): {why}; not a restore of "
                                    "this database")
                    break
        else:
            by = next((mn for j, mn, m in markers if j > i and int(line["seq"]) > int(m["head"]["seq"])), None)
            if by is not None:
                superseded.append(f"{path.name} line {n} (record {line['seq']}): superseded by the restore of "
                                  f"line {by}")
                continue
            why = _against(db, head, eps, line)
            if why:
                problems.append(f"{path.name} line {n}: {why}")
    return AnchorCheck(not problems, len(lines), problems, superseded, len(markers))


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
