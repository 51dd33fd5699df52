"""The allocation journal against the database: randomization held after a restore, and `trial
randomization reconcile`, which replays from the journals what the restored database lacks.

A backup restored loses the allocations made after it was taken, and randomizing those children
again would give many of them another arm than the one their site was told. So a restore holds
randomization (:func:`hold_randomization`, called by `trial backup restore`) until the journal
(trial.randomize.journalfile: one JSON line per committed allocation, kept outside the database)
has been reconciled, or an operator has signed that no allocation was lost (``none_lost``).

Reconciling merges the journals' lines (one journal per app server; identical lines once), in
order of time and audit number, and for each line:

- the database has the child's allocation in that slot with the arm whose digest the line carries:
  present. Any difference (another slot, another arm) is a conflict;
- the slot is held by another child (or reserved for one): a conflict;
- the child is there without its allocation: the allocation is replayed into the same slot with
  the arm whose digest matches (found with the sealed seed: the line names no arm), at the line's
  time, with the child's visit plan and its audit record (action ``reconcile``);
- the child is not there (enrolled after the backup): its slot and arm are reserved
  (:class:`AllocationReservation`) for its study id, and the site's study-id counter is moved past
  it; the site enters the child again (the screening with the same log number gives the same study
  id, trial.enrollment) and randomizing it then allocates the reserved slot.

Each stratum's counter is moved past the slots replayed or reserved (its list extended from the
seed when they lie past its end, audited). Nothing is changed when any line conflicts (all are
reported) or on a dry run. Then the hold is cleared, audited with the counts.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.auth.models import User
from trial.catalogue import N_
from trial.db import insert_ignore, lock_for_update, utcnow
from trial.errors import Conflict, Forbidden, NotFound, ValidationError
from trial.participants.models import Allocation, Participant, Screening, SiteSequence
from trial.protocol.service import current as current_protocol
from trial.randomize import journalfile
from trial.randomize.models import AllocationReservation, Stratum
from trial.randomize.service import _arms, _new_stratum, _site_id_of, get_design, master_seed, stratum_key, stratum_list
from trial.scope import is_cli
from trial.sites.models import Site
from trial.trialstate.service import ensure_writable, state
from trial.visitplan.service import plan_new

FIELDS = ("v", "study_id", "site", "stratum", "seq", "arm_digest", "at", "audit_seq", "design", "screening_log_number",
          "idempotency_key_sha256", "randomized_by")
DIGEST_PREFIX = len('{"arm_digest": "') + 64 + 1  # a fragment this long names its allocation's digest whole


hold_randomization = journalfile.hold_randomization  # (where check_writable holds too)


# --- the report --------------------------------------------------------------------------------

@dataclass
class Reserved:
    study_id: str
    site: str
    screening_log_number: str | None


@dataclass
class Report:
    """What reconciling found (and, unless ``dry_run`` or conflicting, did)."""
    dry_run: bool = False
    none_lost: bool = False
    journals: list[str] = field(default_factory=list)
    lines: int = 0  # distinct lines read
    duplicates: int = 0  # identical lines dropped (the same line in two journals)
    present: list[str] = field(default_factory=list)
    replayed: list[str] = field(default_factory=list)
    reserved: list[Reserved] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    hold: str | None = None  # the hold in force when it ran
    hold_cleared: bool = False

    @property
    def ok(self) -> bool:
        return not self.conflicts


@dataclass
class _Line:
    source: str  # "journal.jsonl line 7"
    data: dict
    at: dt.datetime

    @property
    def study_id(self) -> str:
        return self.data["study_id"]

    @property
    def slot(self) -> tuple[str, int]:
        return self.data["stratum"], self.data["seq"]


@dataclass
class _Known:
    """An allocation or reservation the database has (or this run plans): where and which arm."""
    stratum: str
    seq: int
    arm: str
    what: str  # "allocation" / "reservation" / "line"


@dataclass
class _Plan:
    line: _Line
    arm: str
    participant: Participant | None  # None: reserve
    site: Site


# --- reconciling --------------------------------------------------------------------------------

def reconcile(db: Session, actor, journal_paths, none_lost: bool = False, dry_run: bool = False,
              operator_statement: str | None = None, operator: str | None = None) -> Report:
    """Reconcile the database with the allocation journals (``journal_paths``), or record the
    operator's signed statement that no allocation was lost (``none_lost``, with ``operator`` and
    ``operator_statement``), and open randomization again. Command line only. A report with
    conflicts (or a dry run) has changed nothing; the caller commits otherwise."""
    if not is_cli(actor):
        raise Forbidden(N_("Only the command line reconciles the allocation journal."))
    paths = [Path(p) for p in (journal_paths or [])]
    if none_lost and paths:
        raise ValidationError(N_("Either replay the journals or sign that no allocation was lost, not both."))
    if not none_lost and not paths:
        raise ValidationError(N_("Give the allocation journal of every app server, or sign that no allocation "
                                 "was lost."))
    st = state(db, update=True)  # FOR UPDATE: no allocation is made meanwhile
    ensure_writable(db)  # (a lock in force: 423)
    design = get_design(db)
    report = Report(dry_run=dry_run, none_lost=none_lost, journals=[str(p) for p in paths], hold=st.randomization_hold)
    if none_lost:  # (also before randomization was ever opened: a restore holds it all the same)
        return _sign_none_lost(db, actor, st, report, operator, operator_statement)
    if design is None:
        raise NotFound(N_("Randomization was never opened."))
    lines = _read(paths, design.commitment, report)
    if not lines and not report.conflicts:
        report.conflicts.append("the journal(s) given hold no allocation line: an empty journal proves nothing (the "
                                "wrong file, or a journal lost); if no allocation was ever made, sign it with "
                                "--none-lost")
    plans = _classify(db, design, lines, report)
    _holes(db, lines, report)
    if report.conflicts or dry_run:
        return report
    _apply(db, actor, design, plans)
    _advance_all_study_ids(db, lines)
    _clear_hold(db, actor, st, report,
                f"reconciled with the allocation journal(s) {', '.join(p.name for p in paths)}: {report.lines} "
                f"line(s); present {len(report.present)}, replayed {len(report.replayed)}, reserved "
                f"{len(report.reserved)}")
    return report


def _sign_none_lost(db: Session, actor, st, report: Report, operator: str | None, statement: str | None) -> Report:
    who, said = (operator or "").strip(), (statement or "").strip()
    if not who or not said:
        raise ValidationError(N_("Signing that no allocation was lost needs the operator's name and a statement."))
    if st.randomization_hold is None:
        raise Conflict(N_("Randomization is not held: there is nothing to reconcile."))
    if not report.dry_run:
        _clear_hold(db, actor, st, report, f"{who} signed that no allocation was lost after the restore: {said}"[:2000])
    return report


def _clear_hold(db: Session, actor, st, report: Report, reason: str) -> None:
    changes = ({"randomization_hold": (st.randomization_hold, None), "randomization_hold_at": (st.randomization_hold_at, None)}
               if st.randomization_hold is not None else None)
    st.randomization_hold, st.randomization_hold_at = None, None
    db.flush()
    audit.record(db, actor, "reconcile", "trial_state", st.id, changes, reason=reason)
    report.hold_cleared = changes is not None


def _read(paths: list[Path], commitment: str, report: Report) -> list[_Line]:
    """The journals' lines, identical ones once, in order of (time, audit number); what cannot be
    read, is not a regular file, or was written under another design, is a conflict. Lines glued
    together by a cut write are split; a cut fragment is a warning when its allocation is whole in
    some journal, else a conflict."""
    seen: set[str] = set()
    out: list[_Line] = []
    fragments: list[tuple[str, str]] = []
    for path in paths:
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):
                report.conflicts.append(f"{path}: not a regular file (a journal is the file TRIAL_ALLOCATION_JOURNAL "
                                        "names)")
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            report.conflicts.append(f"{path}: cannot be read ({e.strerror or e})")
            continue
        for n, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            for k, (data, piece) in enumerate(_pieces(raw)):
                where = f"{path.name} line {n}" + (f" (part {k + 1})" if k else "")
                if data is None:
                    fragments.append((where, piece))
                    continue
                why = _malformed(data)
                if why:
                    report.conflicts.append(f"{where}: {why}")
                    continue
                if data["design"] != commitment:
                    report.conflicts.append(f"{where}: written under another randomization (design "
                                            f"{data['design'][:12]}..., this database's is {commitment[:12]}...): refused")
                    continue
                canonical = json.dumps(data, sort_keys=True)
                if canonical in seen:
                    report.duplicates += 1
                    continue
                seen.add(canonical)
                out.append(_Line(where, data, dt.datetime.strptime(data["at"], "%Y-%m-%dT%H:%M:%SZ")))
    for where, piece in fragments:
        whole = [x for x in seen if x.startswith(piece)] if len(piece) >= DIGEST_PREFIX else []
        if whole:
            report.warnings.append(f"{where}: a line cut short by a crash, whole elsewhere "
                                   f"({json.loads(whole[0])['study_id']}): ignored")
        else:
            report.conflicts.append(f"{where}: not a journal line (not JSON: a line cut short by a crash, and its "
                                    "allocation is whole in no journal given)")
    out.sort(key=lambda x: (x.at, x.data["audit_seq"]))
    report.lines = len(out)
    return out


def _pieces(raw: str) -> list[tuple[dict | None, str]]:
    """A journal line split into its JSON objects (a cut write glues the next line to the cut one):
    (object, text) for each whole one, (None, text) for each fragment."""
    decoder = json.JSONDecoder()
    out: list[tuple[dict | None, str]] = []
    i, n = 0, len(raw)
    while i < n:
        try:
            data, end = decoder.raw_decode(raw, i)
        except ValueError:
            nxt = raw.find("{", i + 1)
            end = n if nxt < 0 else nxt
            out.append((None, raw[i:end].strip()))
        else:
            out.append((data, raw[i:end]) if isinstance(data, dict) else (None, raw[i:end]))
        i = end
        while i < n and raw[i].isspace():
            i += 1
    return out


def _holes(db: Session, lines: list[_Line], report: Report) -> None:
    """Each stratum's slots from the restored counter to the highest journalled slot must each have a
    line, an allocation or a reservation: a slot with none is a line missing (a journal not given,
    or cut), a conflict naming it."""
    top: dict[str, int] = {}
    have: dict[str, set[int]] = {}
    for x in lines:
        key, seq = x.slot
        top[key] = max(top.get(key, 0), seq)
        have.setdefault(key, set()).add(seq)
    if not top:
        return
    s = Stratum.__table__
    ids = dict(db.execute(select(s.c.key, s.c.id).where(s.c.key.in_(list(top)))).all())
    last = dict(db.execute(select(s.c.key, s.c.last_seq).where(s.c.key.in_(list(top)))).all())
    for table in (Allocation.__table__, AllocationReservation.__table__):
        for sid, seq in db.execute(select(table.c.stratum_id, table.c.seq).where(table.c.stratum_id.in_(list(ids.values())))):
            key = next(k for k, v in ids.items() if v == sid)
            have[key].add(seq)
    for key in sorted(top):
        missing = [seq for seq in range(last.get(key, 0) + 1, top[key]) if seq not in have[key]]
        for seq in missing[:20]:
            report.conflicts.append(f"stratum {key} slot {seq}: no journal line, allocation or reservation for it "
                                    "although later slots are journalled: a journal is missing or cut")
        if len(missing) > 20:
            report.conflicts.append(f"stratum {key}: {len(missing) - 20} more slot(s) without a line")


def _malformed(data) -> str | None:
    if isinstance(data, dict) and data.get("v") not in (None, journalfile.VERSION):
        return f"journal line version {data['v']!r}, this system reads {journalfile.VERSION}"
    if not isinstance(data, dict) or set(FIELDS) - set(data):
        return "not a journal line (fields missing)"
    if data.get("v") != journalfile.VERSION:
        return f"journal line version {data['v']!r}, this system reads {journalfile.VERSION}"
    if not isinstance(data["seq"], int) or data["seq"] < 1 or not isinstance(data["audit_seq"], int):
        return "not a journal line (slot or audit number not a positive whole number)"
    if not all(isinstance(data[k], str) for k in ("study_id", "site", "stratum", "arm_digest", "at")):
        return "not a journal line (a field is not text)"
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data["at"]):
        return f"not a journal line (time {data['at']!r})"
    return None


def _taken(db: Session) -> tuple[dict[str, _Known], dict[tuple[str, int], str]]:
    """What the database already holds: each study id's slot (allocation or reservation), and
    each slot's holder."""
    strata_keys = dict(db.execute(select(Stratum.id, Stratum.key)).all())
    known: dict[str, _Known] = {}
    slots: dict[tuple[str, int], str] = {}
    for sid, stratum_id, seq, arm in db.execute(select(Allocation.study_id, Allocation.stratum_id, Allocation.seq,
                                                       Allocation.arm)):
        known[sid] = _Known(strata_keys[stratum_id], seq, arm, "allocation")
        slots[(strata_keys[stratum_id], seq)] = sid
    for sid, stratum_id, seq, arm in db.execute(select(AllocationReservation.study_id, AllocationReservation.stratum_id,
                                                       AllocationReservation.seq, AllocationReservation.arm)):
        known.setdefault(sid, _Known(strata_keys[stratum_id], seq, arm, "reservation"))
        slots.setdefault((strata_keys[stratum_id], seq), sid)
    return known, slots


def _classify(db: Session, design, lines: list[_Line], report: Report) -> list[_Plan]:
    """Each line: present, to replay, to reserve, or a conflict (added to the report)."""
    master = master_seed(db, design)
    arms = [a for a, _ in _arms(design.design)]

    def digest(x: _Line, arm: str) -> str:
        return journalfile.arm_digest(master, x.data, arm)

    known, slots = _taken(db)
    sites = {s.code: s for s in db.execute(select(Site)).scalars()}
    wanted = sorted({x.study_id for x in lines})
    people = {p.study_id: (p, number) for p, number in db.execute(
        select(Participant, Screening.log_number).outerjoin(Screening, Screening.id == Participant.screening_id)
        .where(Participant.study_id.in_(wanted)))} if wanted else {}
    plans: list[_Plan] = []
    for x in lines:
        sid, (key, seq), d = x.study_id, x.slot, x.data["arm_digest"]
        k = known.get(sid)
        if k is not None:
            if (k.stratum, k.seq) != (key, seq):
                report.conflicts.append(f"{x.source}: {sid} has its {k.what} in stratum {k.stratum} slot {k.seq}, the "
                                        f"journal says stratum {key} slot {seq}")
            elif digest(x, k.arm) != d:
                report.conflicts.append(f"{x.source}: {sid} (stratum {key} slot {seq}) has another arm in the "
                                        f"{'database' if k.what != 'line' else 'journals'} than the journal's line")
            else:
                report.present.append(sid)
            continue
        holder = slots.get((key, seq))
        arm = next((a for a in arms if digest(x, a) == d), None)
        site = sites.get(x.data["site"])
        p, number = people.get(sid, (None, None))
        problem = (f"the slot {seq} of stratum {key} that the journal gives {sid} is held by {holder}"
                   if holder is not None else _new_line_problem(design, master, x, arm, site, p, number))
        if problem:
            report.conflicts.append(f"{x.source}: {problem}")
            continue
        known[sid] = _Known(key, seq, arm, "line")
        slots[(key, seq)] = sid
        plans.append(_Plan(x, arm, p, site))
        if p is not None:
            report.replayed.append(sid)
        else:
            report.reserved.append(Reserved(sid, site.code, x.data["screening_log_number"]))
    return plans


def _new_line_problem(design, master: bytes, x: _Line, arm: str | None, site: Site | None, p: Participant | None,
                      number: str | None) -> str | None:
    """Why a line the database lacks cannot be replayed or reserved (None: it can)."""
    sid, (key, seq) = x.study_id, x.slot
    if arm is None:
        return ("no arm gives the line's digest with this randomization's seed (a line altered, or not written by "
                "this system)")
    if design.method == "permuted_blocks" and stratum_list(design.design, master, key).arm_at(seq) != arm:
        return f"the list of stratum {key} has another arm at slot {seq}"
    if p is not None and (p.enrolled_at.replace(microsecond=0) > x.at
                          or (x.data["screening_log_number"] or number) and x.data["screening_log_number"] != number):
        return (f"{sid} in the database is another child than the journal's (enrolled after the journal's "
                "randomization, or another screening log number)")
    if site is None:
        return f"no site {x.data['site']} in the database"
    if p is not None and p.site_id != site.id:
        return f"{sid} is at another site in the database than the journal's {site.code}"
    if p is not None and stratum_key(design.design, site.code, p.strata or {}) != key:
        return f"{sid}'s strata in the database give another stratum than the journal's {key}"
    if design.method == "permuted_blocks" and key.split("|")[0] != f"site={site.code}":
        return f"the stratum {key} is not one of site {site.code}"
    return None


def _apply(db: Session, actor, design, plans: list[_Plan]) -> None:
    """Write what :func:`_classify` planned: strata moved past their slots (lists extended, audited),
    allocations replayed with their visit plans, slots reserved; each audited."""
    if not plans:
        return
    master = master_seed(db, design)
    pv = current_protocol(db)
    tzs = {p.site.id: p.site.timezone or "UTC" for p in plans}
    wanted = {p.line.data["randomized_by"] for p in plans if isinstance(p.line.data["randomized_by"], int)}
    by = {uid: uid for uid in db.execute(select(User.id).where(User.id.in_(wanted))).scalars()} if wanted else {}
    top: dict[str, int] = {}
    for p in plans:
        key, seq = p.line.slot
        top[key] = max(top.get(key, 0), seq)
    ids = {key: _advance_stratum(db, actor, design, master, key, seq) for key, seq in top.items()}
    for p in plans:
        x, (key, seq) = p.line, p.line.slot
        entry = {"arm": p.arm, "stratum": key, "seq": seq, "randomized_at": x.at.isoformat()}
        origin = f"{x.source}, randomized at {x.data['at']} (audit record {x.data['audit_seq']} before the restore)"
        if p.participant is not None:
            child = p.participant
            db.execute(Allocation.__table__.insert().values(
                participant_id=child.id, study_id=child.study_id, site_id=child.site_id, stratum_id=ids[key], seq=seq,
                arm=p.arm, details=None, randomized_at=x.at,
                # the journal keeps the key's SHA-256 only: a retry with the original key is matched by hashing it
                idempotency_key=(f"sha256:{x.data['idempotency_key_sha256']}" if x.data["idempotency_key_sha256"]
                                 else None),
                randomized_by_id=by.get(x.data["randomized_by"])))
            plan_new(db, child.id, child.site_id, x.at, tzs[child.site_id], pv.content, pv.version, pv.sha256)
            audit.record(db, actor, "reconcile", "allocation", child.study_id, {"allocation": (None, entry)},
                         reason=f"replayed from the allocation journal: {origin}", reveals_allocation=True)
        else:
            db.add(AllocationReservation(study_id=x.study_id, site_id=p.site.id, stratum_id=ids[key], seq=seq, arm=p.arm,
                                         screening_log_number=x.data["screening_log_number"], randomized_at=x.at,
                                         journal_line=x.data, created_at=utcnow()))
            _advance_study_ids(db, p.site, x.study_id)
            audit.record(db, actor, "reserve", "allocation_reservation", x.study_id,
                         {"site": (None, p.site.code), "stratum": (None, key), "seq": (None, seq), "arm": (None, p.arm),
                          "screening_log_number": (None, x.data["screening_log_number"])},
                         reason=f"the child is not in the restored database; its slot is kept from the allocation "
                                f"journal: {origin}", reveals_allocation=True)
    db.flush()


def _advance_stratum(db: Session, actor, design, master: bytes, key: str, seq: int) -> int:
    """The stratum's id, its counter moved to at least ``seq`` and (permuted blocks) its list extended
    from the seed past ``seq``, audited; a stratum the restored database lacks is made, audited."""
    t = Stratum.__table__
    row = db.execute(lock_for_update(select(t.c.id, t.c.last_seq, t.c.blocks, t.c.length).where(t.c.key == key),
                                     db.get_bind())).one_or_none()
    if row is None:
        _new_stratum(db, design.design, master, key, _site_id_of(db, key))
        row = db.execute(select(t.c.id, t.c.last_seq, t.c.blocks, t.c.length).where(t.c.key == key)).one()
        audit.record(db, actor, "create", "stratum", key, {"blocks": (None, row.blocks), "length": (None, row.length)},
                     reason="a stratum the restored database lacks, met in the allocation journal")
    values = {}
    if seq > row.last_seq:
        values["last_seq"] = seq
    if design.method == "permuted_blocks" and seq > row.length:
        sl = stratum_list(design.design, master, key)
        blocks, length = row.blocks, row.length
        while length < seq:
            blocks += design.design["extension_blocks"]
            length = sl.length_of_blocks(blocks)
        values.update(blocks=blocks, length=length)
        audit.record(db, actor, "extend", "stratum", key, {"blocks": (row.blocks, blocks), "length": (row.length, length)},
                     reason="list extended with new blocks from the seed: a slot from the allocation journal lies "
                            "past its end")
    if values:
        db.execute(update(t).where(t.c.id == row.id).values(**values))
        stale = db.identity_map.get(db.identity_key(Stratum, row.id))
        if stale is not None:
            db.expire(stale)
    return row.id


def _advance_all_study_ids(db: Session, lines: list[_Line]) -> None:
    """Each site's study-id counter moved past the highest study id of that site in the journals:
    a child enrolled after the backup, and not in it, keeps its number from a new child."""
    top: dict[str, str] = {}
    for x in lines:
        site, number = x.data["site"], x.study_id.rsplit("-", 1)[-1]
        if number.isdigit() and int(number) > int(top.get(site, "0-0").rsplit("-", 1)[-1]):
            top[site] = x.study_id
    sites = {s.code: s for s in db.execute(select(Site).where(Site.code.in_(list(top)))).scalars()} if top else {}
    for code, study_id in top.items():
        if code in sites:
            _advance_study_ids(db, sites[code], study_id)


def _advance_study_ids(db: Session, site: Site, study_id: str) -> None:
    """The site's study-id counter moved past ``study_id``'s number, so no new child takes it."""
    number = study_id.rsplit("-", 1)[-1]
    if not number.isdigit():
        return
    t = SiteSequence.__table__
    insert_ignore(db, t, {"site_id": site.id, "last_number": 0})
    db.execute(update(t).where(t.c.site_id == site.id, t.c.last_number < int(number)).values(last_number=int(number)))
