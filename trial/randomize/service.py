"""Opening the trial's randomization, allocating, and verifying allocations after unblinding.

Allocation takes the stratum's next slot in order inside one transaction that locks the
participant's row and then the stratum's row (``FOR UPDATE`` on PostgreSQL; SQLite's
``BEGIN IMMEDIATE`` already serializes writers), writes the allocation and its audit record.
Unique (stratum, seq) and unique participant are the backstops.
"""
from __future__ import annotations

import datetime as dt
import functools
import hmac
import itertools
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from trial import cache
from trial.audit import service as audit
from trial.cache import prebuilt
from trial.catalogue import N_, Joined, Label, Msg
from trial.config import seal_key
from trial.db import insert_ignore, utcnow
from trial.errors import Conflict, NotFound, ValidationError
from trial.notify.service import smtp_url
from trial.participants.models import FINAL_EVENTS, Allocation, Assessment, Participant, Screening, StatusEvent
from trial.participants.service import NO_PARTICIPANT, check_visible
from trial.protocol.models import ProtocolVersion
from trial.protocol.service import content_by_sha, latest_sha_column
from trial.protocol.service import current as current_protocol
from trial.randomize import confirmation, journalfile, lists, minimization
from trial.randomize.models import AllocationReservation, RandomizationDesign, SealedSeed, Stratum
from trial.scope import is_cli, require_role, require_site_role
from trial.sites.models import Site
from trial.trialstate.models import TrialState
from trial.trialstate.service import check_writable, ensure_writable, writable_query
from trial.trialstate.service import state as trial_state
from trial.visitplan.service import plan_new

MINIMIZATION_STRATUM = "minimization"


# --- seed sealing ----------------------------------------------------------------------------

def _fernet(key: str | None = None) -> Fernet:
    return Fernet((key or seal_key()).encode())


def seal(seed: bytes, key: str | None = None) -> bytes:
    return _fernet(key).encrypt(seed)


def unseal(ciphertext: bytes, key: str | None = None) -> bytes:
    """The seed sealed in ``ciphertext``, opened with ``key`` (default: TRIAL_SEAL_KEY); a key that
    does not open it is a Conflict."""
    return _unseal_cached(bytes(ciphertext), key or seal_key())


@functools.lru_cache(maxsize=8)
def _unseal_cached(ciphertext: bytes, key: str) -> bytes:
    try:
        return _fernet(key).decrypt(ciphertext)
    except InvalidToken as e:
        raise Conflict(N_("The randomization seed cannot be unsealed with this seal key (TRIAL_SEAL_KEY differs "
                          "from the one used when randomization was opened).")) from e


def master_seed(db: Session, design: RandomizationDesign | DesignView) -> bytes:
    """The sealed seed, for allocation inside this process only. Never returned to a user. Its
    ciphertext is kept per (design, commitment): the seed never changes once sealed; when the key
    in force no longer opens the kept ciphertext (the seed was re-sealed under a new key by
    `trial randomization rotate-seal-key` since it was read), it is read again."""
    name = (design.id, design.commitment)
    ciphertext = cache.sealed_seeds.get(name, lambda: _ciphertext(db, design.id))
    try:
        return _unseal_cached(ciphertext, seal_key())
    except Conflict:
        fresh = _ciphertext(db, design.id)
        if fresh == ciphertext:
            raise
        cache.sealed_seeds.drop(name)
        return _unseal_cached(cache.sealed_seeds.get(name, lambda: fresh), seal_key())


def _ciphertext(db: Session, design_id: int) -> bytes:
    return bytes(db.execute(select(SealedSeed.ciphertext).where(SealedSeed.design_id == design_id)).scalar_one())


# --- design ----------------------------------------------------------------------------------

def get_design(db: Session) -> RandomizationDesign | None:
    return db.execute(select(RandomizationDesign).limit(1)).scalar_one_or_none()


@dataclass(frozen=True)
class DesignView:
    """What allocation needs of the design row: the parts that never change once it is opened."""
    id: int
    method: str
    design: dict
    commitment: str


def _design_columns():
    return (select(RandomizationDesign.id).limit(1).scalar_subquery().label("design_id"),
            select(RandomizationDesign.commitment).limit(1).scalar_subquery().label("design_commitment"))


def _design_view(db: Session, design_id: int, commitment: str) -> DesignView:
    """The design row, read once per process (trial.cache): it never changes once opened, and its
    commitment (a hash over the design and the seed) with its id names it."""
    def load():
        row = db.execute(select(RandomizationDesign.method, RandomizationDesign.design)
                         .where(RandomizationDesign.id == design_id, RandomizationDesign.commitment == commitment)).one()
        return DesignView(design_id, row.method, row.design, commitment)
    return cache.designs.get((design_id, commitment), load)


def _arms(design: dict) -> tuple[tuple[str, int], ...]:
    return tuple((a["key"], a["weight"]) for a in design["arms"])


def stratum_key(design: dict, site_code: str, strata: dict) -> str:
    if design["method"] == "minimization":
        return MINIMIZATION_STRATUM
    parts = [f"site={site_code}"] + [f"{f['key']}={strata[f['key']]}" for f in design["factors"] if f["key"] != "site"]
    return "|".join(parts)


def _stratum_keys_for_sites(design: dict, site_codes: list[str]) -> list[str]:
    if design["method"] == "minimization":
        return [MINIMIZATION_STRATUM]
    others = [f for f in design["factors"] if f["key"] != "site"]
    combos = list(itertools.product(*[[(f["key"], lv) for lv in f["levels"]] for f in others])) or [()]
    return [stratum_key(design, code, dict(c)) for code in site_codes for c in combos]


def stratum_list(design: dict, master: bytes, key: str) -> lists.StratumList:
    return lists.stratum_list(master, key, _arms(design), tuple(design["block_sizes"]))


def open_randomization(db: Session, actor, seed: bytes | None = None) -> RandomizationDesign:
    """Generate the lists from a fresh CSPRNG seed, record the commitment, seal the seed."""
    require_role(db, actor, "admin", "manager")
    ensure_writable(db)
    if get_design(db) is not None:
        raise Conflict(N_("Randomization is already open; lists are generated once per trial."))
    pv = current_protocol(db)
    c = pv.content
    master = seed or lists.new_master_seed()
    design = {"trial": c["trial"]["key"], "protocol_version": pv.version, "method": c["randomization"]["method"],
              "arms": [{"key": a["key"], "weight": a["weight"]} for a in c["arms"]],
              "block_sizes": c["randomization"]["block_sizes"], "factors": c["randomization"]["factors"],
              "minimization": c["randomization"]["minimization"],
              "initial_blocks": c["randomization"]["initial_blocks"],
              "extension_blocks": c["randomization"]["extension_blocks"],
              "stratum_derivation": "HMAC-SHA256(seed, 'stratum:' + key); block i from HMAC-DRBG label 'block:i'"}
    sites = [s.code for s in db.execute(select(Site).order_by(Site.code)).scalars()]
    strata = {}
    if design["method"] == "permuted_blocks":
        for key in _stratum_keys_for_sites(design, sites):
            sl = stratum_list(design, master, key)
            strata[key] = lists.list_digest([a for b in sl.blocks(design["initial_blocks"]) for a in b])
    design["initial_strata"] = strata
    commit = lists.commitment(design, master)
    row = RandomizationDesign(method=design["method"], protocol_version=pv.version, design=design, commitment=commit,
                              opened_by=getattr(actor, "email", str(actor)))
    db.add(row)
    db.flush()
    db.add(SealedSeed(design_id=row.id, ciphertext=seal(master)))
    trial_state(db, update=True).randomization_opened_at = row.opened_at or utcnow()
    for key in _stratum_keys_for_sites(design, sites):
        _new_stratum(db, design, master, key, _site_id_of(db, key))
    db.flush()
    audit.created(db, actor, "randomization", row.id, {"method": row.method, "protocol_version": pv.version,
                                                       "commitment": commit, "strata": len(strata) or 1})
    return row


def _site_id_of(db: Session, key: str) -> int | None:
    if key == MINIMIZATION_STRATUM:
        return None
    code = key.split("|")[0].split("=", 1)[1]
    return db.execute(select(Site.id).where(Site.code == code)).scalar_one()


def _new_stratum(db: Session, design: dict, master: bytes, key: str, site_id: int | None) -> None:
    blocks = design["initial_blocks"] if design["method"] == "permuted_blocks" else 0
    length = stratum_list(design, master, key).length_of_blocks(blocks) if blocks else 0
    insert_ignore(db, Stratum.__table__, {"key": key, "site_id": site_id, "last_seq": 0, "blocks": blocks,
                                          "length": length, "created_at": utcnow()})


# --- allocation ------------------------------------------------------------------------------

@dataclass
class Result:
    allocation: Allocation
    participant: Participant
    created: bool
    arm_label: str = ""

    def body(self) -> dict:
        return {"study_id": self.participant.study_id, "arm": self.allocation.arm, "arm_label": self.arm_label,
                "randomized_at": self.allocation.randomized_at.isoformat(timespec="seconds") + "Z"}


def not_ready_reasons(db: Session, p: Participant) -> list[str]:
    """Why this participant cannot be randomized yet (empty = ready)."""
    pv = current_protocol(db)
    return _readiness(db, p, get_design(db), pv.content, pv.sha256).reasons


@prebuilt
def _readiness_stmt(dialect: str):
    final = (select(StatusEvent).where(StatusEvent.participant_id == bindparam("pid"), StatusEvent.type.in_(FINAL_EVENTS))
             .order_by(StatusEvent.on).limit(1))
    return select(
        Site.code, Site.is_open, Site.timezone, Site.name,
        select(Screening.log_number).where(Screening.id == bindparam("screening_id")).scalar_subquery(),
        select(ProtocolVersion.version).where(ProtocolVersion.sha256 == bindparam("sha"))
        .order_by(ProtocolVersion.version.desc()).limit(1).scalar_subquery(),
        select(Screening.outcome).where(Screening.id == bindparam("screening_id")).scalar_subquery(),
        select(Assessment.values).where(Assessment.participant_id == bindparam("pid"), Assessment.visit == "baseline",
                                        Assessment.instrument == bindparam("instrument")).scalar_subquery(),
        final.with_only_columns(StatusEvent.type).scalar_subquery(),
        final.with_only_columns(StatusEvent.on).scalar_subquery(),
    ).where(Site.id == bindparam("site_id"))


@dataclass
class Readiness:
    site_code: str
    site_timezone: str
    protocol_version: int  # the version of the protocol whose SHA-256 was given
    reasons: list[str]
    protocol_sha: str = ""
    site_name: str = ""
    log_number: str | None = None  # the screening log's number of the child (the allocation journal's line)


def _readiness(db: Session, p: Participant, design: RandomizationDesign | DesignView | None,
               protocol: dict, sha: str) -> Readiness:
    """The site's code and time zone, the protocol's version number and the reasons the
    participant is not ready, in one query."""
    prim = protocol["primary_outcome"]
    row = db.execute(_readiness_stmt(db), {"pid": p.id, "screening_id": p.screening_id, "site_id": p.site_id,
                                           "instrument": prim["instrument"], "sha": sha}).one()
    code, is_open, tz, name, log_number, version, outcome, baseline, final_type, final_on = row
    reasons = []
    if outcome != "eligible":
        reasons.append(Msg(N_("the screening is not eligible")))
    if p.consent_date is None:
        reasons.append(Msg(N_("consent is not recorded")))
    if not baseline or baseline.get(prim["field"]) is None:
        ins = next((i for i in protocol["instruments"] if i["key"] == prim["instrument"]), {})
        field = next((f for f in ins.get("fields", []) if f["key"] == prim["field"]), {})
        visit = next((v for v in protocol["visits"] if v["key"] == "baseline"), {"label": "Baseline"})
        reasons.append(Msg(N_("%(form)s (%(visit)s): %(field)s is not recorded"),
                           visit=Label("visit", "baseline", visit["label"]),
                           field=Label("field", f"{prim['instrument']}.{prim['field']}", field.get("label", prim["field"])),
                           form=Label("instrument", prim["instrument"], ins.get("label", prim["instrument"]))))
    if not is_open:
        reasons.append(Msg(N_("site %(site)s is closed"), site=code))
    if final_type:
        day = final_on if isinstance(final_on, dt.date) else dt.date.fromisoformat(str(final_on))
        reasons.append(Msg(N_("withdrawn on %(day)s") if final_type == "withdrawn" else N_("died on %(day)s"), day=day))
    if design is not None:
        missing = [f for f in design.design["factors"] if f["key"] != "site" and f["key"] not in (p.strata or {})]
        if missing:
            reasons.append(Msg(N_("the stratification factor %(factor)s is not recorded"),
                               factor=Joined([Label("factor", f["key"], f.get("label") or f["key"]) for f in missing],
                                             ", ")))
    return Readiness(code, tz, version, reasons, sha, name, log_number)


def randomize(db: Session, actor, study_id: str, idempotency_key: str | None = None, at=None) -> Result:
    """Allocate the next slot. ``at`` (a UTC datetime) is honoured only for the command-line
    operator loading synthetic or migrated data (the demo); users always randomize now.

    The hot path is nine statements: the participant locked with its existing allocation (if
    any) and any slot reserved for it (trial.randomize.journal); the trial state held FOR SHARE with
    the current protocol and design and the randomization hold read alongside; the readiness facts
    (with the site's time zone and the protocol's version number); the stratum's slot taken by one
    ``UPDATE ... RETURNING`` (which locks it); the allocation inserted; the child's visit plan
    inserted (one multi-row INSERT, trial.visitplan); and the audit record (two statements, see
    :func:`audit.record`).

    When ``TRIAL_ALLOCATION_JOURNAL`` is set, the journal must open for appending before a slot is
    taken (else 503, nothing allocated), the allocation's line is written into the journal's outbox
    in this transaction (a tenth statement) and appended right after the commit
    (trial.randomize.journalfile). When mail is configured, the site's coordinators get a
    confirmation e-mail, queued in this transaction (trial.randomize.confirmation)."""
    _check_idempotency_key(idempotency_key)
    # 1. lock the participant: concurrent requests for one child queue here
    p, existing_id, reservation_id = _lock_participant(db, actor, study_id)
    require_site_role(db, actor, p.site_id, "coordinator")
    if existing_id is not None:  # a retry gets its answer even if a lock has come since
        answer = _retry_answer(db, p, existing_id, idempotency_key)
        journalfile.append_pending(db, existing_id)  # (its COMMIT's outcome was unknown, or its append failed)
        return answer
    protocol, design_row, ready = _ready_to_allocate(db, p)
    design = design_row.design
    master = master_seed(db, design_row)
    key = stratum_key(design, ready.site_code, p.strata or {})
    journalfile.check_writable(db)  # the journal opens for appending, or nothing is allocated
    when = at if (at is not None and is_cli(actor)) else utcnow()
    if reservation_id is not None:  # entered again after a restore: the slot and arm the site was told
        slot, arm, details, when = _reserved_slot(db, actor, reservation_id, key, p, design_row, master)
    else:
        # 2. take the stratum's next slot: the UPDATE locks its row until commit, so slots go in order
        slot = _take_slot(db, actor, design, master, key, p.site_id)
        arm, details = _arm_at_slot(db, actor, design, master, key, slot, p)
    stratum = db.identity_map.get(db.identity_key(Stratum, slot.id))
    if stratum is not None:  # a Stratum loaded earlier in this session must not keep stale values
        db.expire(stratum)
    # 3. write the allocation, the child's visit plan and the audit record, in this transaction
    alloc = _insert_allocation(db, actor, p, slot, arm, details, idempotency_key, when)
    plan_new(db, p.id, p.site_id, alloc.randomized_at, ready.site_timezone, protocol, ready.protocol_version,
             ready.protocol_sha)
    records = audit.record(db, actor, "randomize", "allocation", p.study_id,
                           {"allocation": (None, {"arm": arm, "stratum": key, "seq": slot.last_seq,
                                                  "randomized_at": alloc.randomized_at.isoformat()})},
                           reason=RESERVED_REASON if reservation_id is not None else None, reveals_allocation=True)
    if journalfile.journal_path() is not None:  # (the line into the outbox: one INSERT)
        journalfile.queue(db, alloc.id, journalfile.line(
            master, design_row.commitment, study_id=p.study_id, site=ready.site_code, stratum=key, seq=slot.last_seq,
            arm=arm, at=alloc.randomized_at, audit_seq=records[0]["seq"], screening_log_number=ready.log_number,
            idempotency_key=idempotency_key, randomized_by=alloc.randomized_by_id))
    if smtp_url():  # (mail off: not a statement more)
        confirmation.queue_mail(db, confirmation.Confirmation(
            p.study_id, ready.site_code, ready.site_name, ready.site_timezone or "UTC",
            {"site": ready.site_code, **(p.strata or {})}, arm, alloc.randomized_at,
            None if is_cli(actor) else getattr(actor, "name", None), key, slot.last_seq, design_row.commitment),
            protocol, p.site_id)
    return Result(alloc, p, True, _arm_label(protocol, arm))


RESERVED_REASON = ("the slot and arm reserved by `trial randomization reconcile` from the allocation journal: "
                   "this child was randomized before the database was restored from a backup")


@dataclass(frozen=True)
class _Slot:
    id: int
    last_seq: int


def _reserved_slot(db: Session, actor, reservation_id: int, key: str, p: Participant, design: DesignView,
                   master: bytes):
    """The slot reserved for ``p`` (its study id) by reconcile: (slot, arm, details, randomized_at),
    the reservation marked used (audited). The reservation must be the journal line's, proven with
    the seed (a reservation written into the database by hand is refused), and its stratum the one the
    child's strata give now: else the strata were entered again otherwise than at randomization,
    refused naming both."""
    r = db.get(AllocationReservation, reservation_id)
    reserved_key = db.execute(select(Stratum.key).where(Stratum.id == r.stratum_id)).scalar_one()
    if reserved_key != key:
        raise Conflict(Msg(N_("%(study_id)s was randomized before the database was restored, in the stratum "
                              "%(reserved)s, but its strata as entered now give %(now)s: correct them to those it "
                              "was randomized with."), study_id=p.study_id, reserved=reserved_key, now=key))
    if not _reservation_proven(r, reserved_key, design, master):
        raise Conflict(Msg(N_("The slot reserved for %(study_id)s does not match the allocation journal's line it "
                              "claims to come from (it was not made by `trial randomization reconcile`): nothing "
                              "was allocated. Please tell the trial manager."), study_id=p.study_id))
    now = utcnow()
    r.used_at = now
    audit.record(db, actor, "use", "allocation_reservation", p.study_id, {"used_at": (None, now)},
                 reason="the child entered again after the restore is randomized to its reserved slot")
    return _Slot(r.stratum_id, r.seq), r.arm, None, r.randomized_at


def _reservation_proven(r: AllocationReservation, reserved_key: str, design: DesignView, master: bytes) -> bool:
    """Is the reservation what its journal line says, with the digest the seed gives its arm (and,
    for permuted blocks, the list's arm at its slot)?"""
    line = r.journal_line if isinstance(r.journal_line, dict) else {}
    digest = line.get("arm_digest")
    if (not isinstance(digest, str) or line.get("design") != design.commitment or line.get("study_id") != r.study_id
            or line.get("stratum") != reserved_key or line.get("seq") != r.seq):
        return False
    if not hmac.compare_digest(journalfile.arm_digest(master, line, r.arm), digest):
        return False
    return design.method != "permuted_blocks" or stratum_list(design.design, master, reserved_key).arm_at(r.seq) == r.arm


def held(hold_at) -> Conflict:
    """The refusal while randomization is held after a restore (trial.randomize.journal)."""
    day = (hold_at or utcnow()).date()
    return Conflict(Msg(N_("Randomization is closed since the database was restored from a backup on %(day)s, until "
                           "the allocation journal is reconciled: the trial manager runs `trial randomization "
                           "reconcile`."), day=day))


def _check_idempotency_key(idempotency_key: str | None) -> None:
    if idempotency_key is not None and (not idempotency_key.strip() or len(idempotency_key) > 200):
        raise ValidationError(N_("Idempotency-Key must be 1 to 200 characters."),
                              {"Idempotency-Key": N_("1 to 200 characters")})


def _retry_answer(db: Session, p: Participant, existing_id: int, idempotency_key: str | None) -> Result:
    """The answer to a retry of the request that randomized ``p`` (the same Idempotency-Key); any
    other request for a randomized child is refused: a child is never re-randomized."""
    existing = db.get(Allocation, existing_id)
    if idempotency_key and existing.idempotency_key in (idempotency_key, replayed_key(idempotency_key)):
        return Result(existing, p, False, _arm_label(current_protocol(db).content, existing.arm))
    raise Conflict(Msg(N_("%(study_id)s is already randomized; a child is never re-randomized."), study_id=p.study_id))


def replayed_key(idempotency_key: str | None) -> str | None:
    """How an allocation replayed from the journal keeps its Idempotency-Key: the journal holds only
    its SHA-256, so a retry with the original key is matched by hashing it."""
    digest = journalfile.key_hash(idempotency_key)
    return f"sha256:{digest}" if digest else None


def _ready_to_allocate(db: Session, p: Participant) -> tuple[dict, DesignView, Readiness]:
    """The protocol and the design in force (the trial state held FOR SHARE: refuses a locked
    trial) and the participant's readiness; refuses before randomization opens, and a child not
    ready with every reason why."""
    sha, design_id, commitment, hold, hold_at = check_writable(db, _state_stmt(db))
    if design_id is None:
        raise Conflict(N_("Randomization is not open yet (run `trial randomization open`)."))
    if hold is not None:
        raise held(hold_at)
    protocol, design_row = content_by_sha(db, sha), _design_view(db, design_id, commitment)
    ready = _readiness(db, p, design_row, protocol, sha)
    if ready.reasons:
        raise Conflict(Msg(N_("%(study_id)s cannot be randomized: %(reasons)s."), study_id=p.study_id,
                           reasons=Joined(ready.reasons)))
    return protocol, design_row, ready


def _take_slot(db: Session, actor, design: dict, master: bytes, key: str, site_id: int):
    """The stratum's next slot (id, last_seq, blocks, length), taken by one UPDATE that locks its
    row; a stratum first met here (a site added after opening) is created from the same seed,
    audited."""
    slot = db.execute(_take_slot_stmt(db), {"stratum_key": key}).one_or_none()
    if slot is None:  # a site added after opening: its list comes from the same seed
        _new_stratum(db, design, master, key, site_id)
        slot = db.execute(_take_slot_stmt(db), {"stratum_key": key}).one()
        audit.record(db, actor, "create", "stratum", key, {"blocks": (None, slot.blocks), "length": (None, slot.length)},
                     reason="first participant of a stratum added after randomization opened")
    return slot


def _arm_at_slot(db: Session, actor, design: dict, master: bytes, key: str, slot, p: Participant) -> tuple[str, dict | None]:
    """The arm of the slot taken and the minimization's details (None for permuted blocks): the
    stratum's list, extended (audited) with new blocks from the seed when the slot is past its
    end; or minimization over the allocations so far."""
    if design["method"] != "permuted_blocks":
        return _minimize(db, design, master, slot.last_seq, p)
    sl = stratum_list(design, master, key)
    if slot.last_seq > slot.length:
        stratum_t = Stratum.__table__
        blocks = slot.blocks + design["extension_blocks"]
        length = sl.length_of_blocks(blocks)
        db.execute(update(stratum_t).where(stratum_t.c.id == slot.id).values(blocks=blocks, length=length))
        audit.record(db, actor, "extend", "stratum", key, {"blocks": (slot.blocks, blocks), "length": (slot.length, length)},
                     reason="list exhausted: extended with new blocks from the seed")
    return sl.arm_at(slot.last_seq), None


def _insert_allocation(db: Session, actor, p: Participant, slot, arm: str, details: dict | None,
                       idempotency_key: str | None, randomized_at) -> Allocation:
    """Write the allocation through Core (one INSERT, no unit-of-work flush); the answer is a
    transient Allocation carrying the row written."""
    values = {"participant_id": p.id, "study_id": p.study_id, "site_id": p.site_id, "stratum_id": slot.id,
              "seq": slot.last_seq, "arm": arm, "details": details, "idempotency_key": idempotency_key,
              "randomized_by_id": getattr(actor, "id", None), "randomized_at": randomized_at}
    new_id = db.execute(_insert_allocation_stmt(db), values).scalar_one()
    return Allocation(id=new_id, **values)  # transient: the row is written; this carries the answer


def _arm_label(protocol: dict, arm: str) -> str:
    return next((a["label"] for a in protocol["arms"] if a["key"] == arm), arm)


@prebuilt
def _participant_stmt(dialect: str):
    existing = (select(Allocation.id).where(Allocation.participant_id == Participant.id)
                .scalar_subquery().label("allocation_id"))
    r = AllocationReservation
    reserved = (select(r.id).where(r.study_id == Participant.study_id, r.site_id == Participant.site_id,
                                   r.used_at.is_(None)).scalar_subquery().label("reservation_id"))
    q = (select(Participant, existing, reserved).where(Participant.study_id == bindparam("study_id"))
         .execution_options(populate_existing=True))
    return q if dialect == "sqlite" else q.with_for_update(of=Participant.__table__)


@prebuilt
def _state_stmt(dialect: str):
    t = TrialState.__table__
    return writable_query(dialect, latest_sha_column(), *_design_columns(), t.c.randomization_hold,
                          t.c.randomization_hold_at)


@prebuilt
def _take_slot_stmt(dialect: str):
    t = Stratum.__table__
    return (update(t).where(t.c.key == bindparam("stratum_key")).values(last_seq=t.c.last_seq + 1)
            .returning(t.c.id, t.c.last_seq, t.c.blocks, t.c.length))


@prebuilt
def _insert_allocation_stmt(dialect: str):
    t = Allocation.__table__
    return insert(t).returning(t.c.id)


def _lock_participant(db: Session, actor, study_id: str) -> tuple[Participant, int | None, int | None]:
    """The participant, locked (FOR UPDATE on PostgreSQL), with the id of its allocation if it
    has one and of the unused slot reserved for its study id if there is one, in one statement;
    the same visibility checks as ``get_participant``."""
    row = db.execute(_participant_stmt(db), {"study_id": (study_id or "").upper()}).one_or_none()
    if row is None:
        raise NotFound(NO_PARTICIPANT)
    check_visible(db, actor, row[0])
    return row[0], row[1], row[2]


def _minimize(db: Session, design: dict, master: bytes, seq: int, p: Participant) -> tuple[str, dict]:
    factors = [f["key"] for f in design["factors"]]
    site_codes = dict(db.execute(select(Site.id, Site.code)).all())
    prior = [(a.arm, _levels(factors, site_codes[pp.site_id], pp.strata)) for a, pp in db.execute(
        select(Allocation, Participant).join(Participant, Participant.id == Allocation.participant_id)
        .order_by(Allocation.seq)).all()]
    # a slot reserved from the allocation journal (its child not entered again yet) counts too; its
    # child's strata are not in the journal, so it counts for its site only
    prior += [(arm, _levels(factors, site_codes[site_id], {})) for arm, site_id in db.execute(
        select(AllocationReservation.arm, AllocationReservation.site_id).where(AllocationReservation.used_at.is_(None)))]
    u_pick, u_tie = minimization.draws(master, seq)
    m = design["minimization"]
    arm, details = minimization.choose(list(_arms(design)), factors, _levels(factors, site_codes[p.site_id], p.strata),
                                       prior, m["probability"], m["imbalance"], u_pick, u_tie)
    return arm, details


def _levels(factors: list[str], site_code: str, strata: dict) -> dict[str, str]:
    return {f: (site_code if f == "site" else (strata or {}).get(f, "")) for f in factors}


# --- verification ----------------------------------------------------------------------------

@dataclass
class Verification:
    ok: bool
    checked: int
    problems: list[str]


def verify(db: Session, actor, seed: bytes | None = None) -> Verification:
    """Regenerate every list from the revealed seed (or ``seed``), check the commitment and that
    each allocation took the right slot in order."""
    require_role(db, actor, "manager", "statistician")
    row = get_design(db)
    if row is None:
        raise NotFound(N_("Randomization was never opened."))
    if seed is None:
        if not row.revealed_seed:
            raise Conflict(N_("The trial is not unblinded: the seed is still sealed, so the lists cannot be verified yet."))
        seed = bytes.fromhex(row.revealed_seed)
    problems = _seal_problems(db, row, seed) + _commitment_problems(row, seed)
    checked = _check_allocations(db, row.design, seed, problems)
    return Verification(not problems, checked, problems)


def _seal_problems(db: Session, row: RandomizationDesign, seed: bytes) -> list[str]:
    """Does TRIAL_SEAL_KEY open the sealed seed, and is it the seed verified? (After a rotation of
    the seal key, the new key opens it and the old one no longer does.)"""
    try:
        sealed = unseal(_ciphertext(db, row.id))
    except Conflict:
        return [("the sealed seed cannot be unsealed with TRIAL_SEAL_KEY: it was re-sealed under another key "
                 "(trial randomization rotate-seal-key) or the key is wrong")]
    return [] if sealed == seed else ["the sealed seed is not the seed verified"]


def _commitment_problems(row: RandomizationDesign, seed: bytes) -> list[str]:
    """Does the seed with the design give the commitment, and each initial stratum's list the
    digest, recorded when randomization opened?"""
    design = row.design
    problems = []
    if lists.commitment(design, seed) != row.commitment:
        problems.append("the seed and the design do not match the commitment recorded when randomization opened")
    for key, digest in design.get("initial_strata", {}).items():
        sl = stratum_list(design, seed, key)
        if lists.list_digest([a for b in sl.blocks(design["initial_blocks"]) for a in b]) != digest:
            problems.append(f"stratum {key}: regenerated list differs from the committed list")
    return problems


def _check_allocations(db: Session, design: dict, seed: bytes, problems: list[str]) -> int:
    """Check every allocation, stratum by stratum in slot order, adding what is wrong to
    ``problems``; returns how many allocations were checked."""
    strata = {s.id: s for s in db.execute(select(Stratum)).scalars()}
    site_codes = dict(db.execute(select(Site.id, Site.code)).all())
    rows = db.execute(select(Allocation, Participant).join(Participant, Participant.id == Allocation.participant_id)
                      .order_by(Allocation.stratum_id, Allocation.seq)).all()
    # slots reserved from the allocation journal for children not entered again yet are taken too
    reserved = {(sid, seq) for sid, seq in db.execute(select(AllocationReservation.stratum_id, AllocationReservation.seq)
                                                        .where(AllocationReservation.used_at.is_(None)))}
    reservations = db.execute(select(AllocationReservation.seq, AllocationReservation.arm, AllocationReservation.site_id,
                                     AllocationReservation.created_at, AllocationReservation.used_at)).all()
    checked = 0
    prior: list = []  # (slot, arm, levels) of the allocations checked so far, for minimization
    for sid, group in itertools.groupby(rows, key=lambda r: r[0].stratum_id):
        st = strata[sid]
        expected = 1
        for alloc, p in group:
            checked += 1
            while (sid, expected) in reserved and alloc.seq != expected:
                expected += 1
            if alloc.seq != expected:
                problems.append(f"stratum {st.key}: {p.study_id} took slot {alloc.seq} but slot {expected} was next")
                expected = alloc.seq
            want_key = stratum_key(design, site_codes[p.site_id], p.strata or {})
            if want_key != st.key:
                problems.append(f"{p.study_id} is in stratum {st.key} but belongs to {want_key}")
            earlier = list(prior)
            want = _listed_arm(design, seed, st.key, alloc, site_codes[p.site_id], p.strata, prior)
            if alloc.arm != want:
                outstanding = [r for r in reservations if r.created_at <= alloc.randomized_at and r.seq != alloc.seq
                               and (r.used_at is None or r.used_at > alloc.randomized_at)]
                if design["method"] == "permuted_blocks" or not outstanding:
                    problems.append(f"{p.study_id} (stratum {st.key}, slot {alloc.seq}) has arm {alloc.arm} but the "
                                    f"list says {want}")
                elif alloc.arm != _with_reservations(design, seed, alloc, site_codes, p, earlier, outstanding):
                    problems.append(
                        f"{p.study_id} (slot {alloc.seq}) was allocated while a reservation was outstanding (slot(s) "
                        f"{', '.join(str(r.seq) for r in outstanding)}): minimization counted each reserved slot for "
                        f"its site only, and the seed re-derives neither arm {alloc.arm} nor {want} from the "
                        "allocations as they are now; check it by hand (README \"The allocation journal\")")
            expected += 1
        while (sid, expected) in reserved:
            expected += 1
        if st.last_seq != expected - 1:
            problems.append(f"stratum {st.key}: {expected - 1} allocations but the stratum records {st.last_seq} slots used")
    return checked


def _with_reservations(design: dict, seed: bytes, alloc: Allocation, site_codes: dict, p: Participant,
                       earlier: list, outstanding: list) -> str:
    """The arm minimization gives ``alloc`` with the reservations outstanding when it was made
    counted as randomization counted them (for their site only, their allocations not yet made)."""
    taken = {r.seq for r in outstanding}
    factors = [f["key"] for f in design["factors"]]
    prior = [(arm, levels) for seq, arm, levels in earlier if seq not in taken]
    prior += [(r.arm, _levels(factors, site_codes[r.site_id], {})) for r in outstanding]
    u_pick, u_tie = minimization.draws(seed, alloc.seq)
    m = design["minimization"]
    want, _ = minimization.choose(list(_arms(design)), factors, _levels(factors, site_codes[p.site_id], p.strata),
                                  prior, m["probability"], m["imbalance"], u_pick, u_tie)
    return want


def _listed_arm(design: dict, seed: bytes, key: str, alloc: Allocation, site_code: str, strata: dict,
                prior: list) -> str:
    """The arm the seed gives this allocation's slot: the stratum's list, or minimization over
    the allocations before it (``prior``: (slot, arm, levels), which this allocation then joins)."""
    if design["method"] == "permuted_blocks":
        return stratum_list(design, seed, key).arm_at(alloc.seq)
    factors = [f["key"] for f in design["factors"]]
    u_pick, u_tie = minimization.draws(seed, alloc.seq)
    m = design["minimization"]
    want, _ = minimization.choose(list(_arms(design)), factors, _levels(factors, site_code, strata),
                                  [(arm, levels) for _, arm, levels in prior], m["probability"], m["imbalance"],
                                  u_pick, u_tie)
    prior.append((alloc.seq, alloc.arm, _levels(factors, site_code, strata)))
    return want


def unseal_for_verification(db: Session, actor) -> bytes:
    """The sealed seed, for the unblinding step and tests that verify with the seed in hand."""
    if not is_cli(actor):
        require_role(db, actor, "manager")
    row = get_design(db)
    if row is None:
        raise NotFound(N_("Randomization was never opened."))
    return master_seed(db, row)
