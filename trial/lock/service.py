"""Locks, electronic signatures and unblinding.

A soft lock freezes data entry; a hard lock also builds the locked dataset bundles. While a lock
is in force every clinical write refuses with 423 (trial.trialstate.service.ensure_writable,
called by every write service). Unblinding is a signed event after a hard lock: it reveals the
seed.
"""
from __future__ import annotations

import datetime as dt
import errno
import logging
import secrets

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from trial.audit import anchors
from trial.audit import service as audit
from trial.catalogue import N_, Msg, term
from trial.dataquality.models import DataQuery
from trial.dataquality.service import shown_queries
from trial.db import notify, read_only_session, utcnow
from trial.errors import Conflict, NotFound, ValidationError
from trial.esign.models import Signature
from trial.esign.service import sign
from trial.exports.bundle import VARIANTS, build_bundles, seal_name
from trial.exports.consort import consort
from trial.lock.models import AWAITING, DataLock, LockBuild, LockBundle, UnblindingRequest
from trial.oversight import signoff
from trial.protocol.service import current as current_protocol
from trial.scope import CliActor, is_blinded, require_role
from trial.trialstate.service import active_lock_id, lock_message
from trial.trialstate.service import state as trial_state
from trial.validation import refuse, text

KINDS = ("soft", "hard")
BUILD_CHANNEL = "trial_lock_build"  # the NOTIFY channel that wakes a waiting `trial worker`
log = logging.getLogger("trial.lock")


def new_dummy_seed() -> str:
    """The seed of a hard lock's dummy allocation: 32 bytes from the operating system's CSPRNG."""
    return secrets.token_hex(32)


def active_lock(db: Session) -> DataLock | None:
    lock_id = active_lock_id(db)
    return db.get(DataLock, lock_id) if lock_id else None


def _notice(lock: DataLock, sig: Signature) -> Msg:
    return Msg(N_("%(state)s (lock %(id)s, signed by %(name)s on %(when)s UTC)"),
               state=Msg(N_("soft-locked") if lock.kind == "soft" else N_("hard-locked")), id=lock.id,
               name=sig.printed_name, when=f"{lock.created_at:%Y-%m-%d %H:%M}")


def banner(db: Session) -> Msg | None:
    """What every page says while a lock is in force, in words each reader's language can give
    (the 423 answers keep the English text stored with the trial state); None while open."""
    lock = active_lock(db)
    if lock is None:
        return None
    return lock_message(_notice(lock, db.get(Signature, lock.signature_id)))


class OpenQueries(Conflict):
    code = "open_queries"


class UnsignedCasebooks(Conflict):
    code = "unsigned_casebooks"


def create_lock(db: Session, actor, kind: str, meaning: str, password: str, accept_open_queries: bool = False,
                code: str | None = None, accept_unsigned: bool = False) -> DataLock:
    """Sign a lock. A hard lock while queries are not closed is refused (409 open_queries, their
    ids in the fields) unless the signer accepts them, which is recorded with the signature; so is
    one while casebooks at a site that has an investigator wait for the investigator's signature
    (409 unsigned_casebooks, their study ids in the fields, unless ``accept_unsigned``)."""
    require_role(db, actor, "manager")
    if kind not in KINDS:
        raise ValidationError(N_("kind must be soft or hard"), {"kind": N_("must be soft or hard")})
    if not isinstance(accept_open_queries, bool):
        raise ValidationError(N_("accept_open_queries must be true or false"),
                              {"accept_open_queries": N_("must be true or false")})
    if not isinstance(accept_unsigned, bool):
        raise ValidationError(N_("accept_unsigned must be true or false"),
                              {"accept_unsigned": N_("must be true or false")})
    state = trial_state(db, update=True)
    current = db.get(DataLock, state.active_lock_id) if state.active_lock_id else None
    if current is not None and (current.kind == "hard" or kind == "soft"):
        raise Conflict(Msg(N_("A hard lock (lock %(id)s) is already in force.") if current.kind == "hard"
                           else N_("A soft lock (lock %(id)s) is already in force."), id=current.id))
    open_queries, addendum, unsigned = [], None, []
    if kind == "hard":
        unsigned, meaning = _unsigned_check(db, meaning, accept_unsigned)
        open_queries, meaning = _hard_lock_checks(db, meaning, accept_open_queries)
        addendum = open_addendum_of(db)
    sig = sign(db, actor, password, meaning, "addendum_lock" if addendum else f"{kind}_lock", code)
    version = None
    if kind == "hard":
        version = (db.execute(select(func.count()).select_from(DataLock).where(DataLock.kind == "hard")).scalar() or 0) + 1
    lock = DataLock(kind=kind, version=version, signature_id=sig.id, protocol_version=current_protocol(db).version,
                    created_at=sig.signed_at, dummy_seed=new_dummy_seed() if kind == "hard" else None,
                    accepted_open_queries=[q.id for q in open_queries] or None, accepted_unsigned=unsigned or None,
                    parent_lock_id=addendum.parent_lock_id if addendum else None)
    db.add(lock)
    db.flush()
    if current is not None:  # a soft lock is superseded by the hard lock
        current.lifted_at, current.lift_reason, current.lift_signature_id = sig.signed_at, f"superseded by hard lock {lock.id}", sig.id
        audit.record(db, actor, "lift", "data_lock", current.id, {"lifted_at": (None, current.lifted_at)},
                     reason=current.lift_reason)
    state.active_lock_id, state.lock_notice = lock.id, _notice(lock, sig)
    audit.created(db, actor, "data_lock", lock.id, {"kind": kind, "version": version, "signature": sig.id,
                                                   "parent_lock_id": lock.parent_lock_id})
    if addendum is not None:
        _close_addendum(db, actor, addendum, lock, sig)
    if lock.accepted_open_queries:  # which queries were open can tell of sessions and AEs: unblinded readers only
        audit.record(db, actor, "accept_open_queries", "data_lock", lock.id,
                     {"accepted_open_queries": (None, lock.accepted_open_queries)}, reveals_allocation=True)
    if lock.accepted_unsigned:
        audit.record(db, actor, "accept_unsigned", "data_lock", lock.id,
                     {"accepted_unsigned": (None, lock.accepted_unsigned)},
                     reason=f"signed with {len(unsigned)} casebooks waiting for their investigator's signature",
                     reveals_allocation=True)  # (which casebooks wait follows what they cover, as accept_open_queries)
    if kind == "hard":
        _seal_and_queue_builds(db, lock)
    return lock


def _unsigned_check(db: Session, meaning: str, accept_unsigned: bool) -> tuple[list[str], str]:
    """Casebooks at the sites that have an investigator, waiting for the investigator's signature:
    refused (409 unsigned_casebooks, their study ids in the fields) unless accepted, which the
    signature's meaning then says. Sites with no investigator are not held."""
    unsigned = signoff.unsigned_casebooks(db)
    if unsigned and not accept_unsigned:
        waiting = {sid: N_("waits for the investigator's signature") for sid in unsigned}
        raise UnsignedCasebooks(Msg(N_("%(n)s casebooks wait for their investigator's signature. Have them signed "
                                       "first, or sign the hard lock accepting them (accept_unsigned), which is "
                                       "recorded with the signature and in the bundle's README."), n=len(unsigned)),
                                waiting)
    if unsigned:
        # (the ids are in the lock's row and the unblinded README; the meaning stays short)
        meaning = (f"{(meaning or '').strip()[:380]} [accepting {len(unsigned)} casebooks not signed by their "
                   "investigator]")[:500] if isinstance(meaning, str) else meaning
    return unsigned, meaning


def open_addendum_of(db: Session) -> DataLock | None:
    """The addendum opened after the unblinding and not yet closed by a hard lock (at most one)."""
    return db.execute(select(DataLock).where(DataLock.kind == "addendum", DataLock.lifted_at.is_(None))
                      .order_by(DataLock.id.desc()).limit(1)).scalar()


def _close_addendum(db: Session, actor, addendum: DataLock, lock: DataLock, sig: Signature) -> None:
    """The hard lock that closes an addendum's corrections: the addendum's window ends with it,
    and the new lock names the hard lock the addendum corrects (its bundle's README says so)."""
    addendum.lifted_at, addendum.lift_signature_id = sig.signed_at, sig.id
    addendum.lift_reason = f"closed by hard lock {lock.id}"
    audit.record(db, actor, "close_addendum", "data_lock", addendum.id, {"lifted_at": (None, addendum.lifted_at)},
                 reason=addendum.lift_reason)


def _hard_lock_checks(db: Session, meaning: str, accept_open_queries: bool) -> tuple[list, str]:
    """Before a hard lock is signed: the queries not closed (refused unless the signer accepts
    them, which the signature's meaning then says) and a CONSORT that reconciles. Returns the
    queries not closed and the meaning to sign."""
    open_queries = db.execute(select(DataQuery.id, DataQuery.status).where(DataQuery.status != "closed")
                              .order_by(DataQuery.id)).all()
    if open_queries and not accept_open_queries:
        states = {str(q.id): term("query_status", q.status) for q in open_queries}
        raise OpenQueries(Msg(N_("%(n)s queries are not closed. Close them first, or sign the hard lock accepting them "
                                 "(accept_open_queries), which is recorded with the signature."), n=len(open_queries)),
                          states)
    # data whose CONSORT does not reconcile would give no bundle: refused before anything is signed
    consort(db, CliActor())
    if open_queries:  # no count, no ids: blinded readers see the signature (the ids are with the lock)
        meaning = f"{(meaning or '').strip()[:440]} [accepting the queries not closed, listed with the lock]"
    return open_queries, meaning


def _seal_and_queue_builds(db: Session, lock: DataLock) -> None:
    """The chain as it stands at signing a hard lock, sealed: cutting it back below here is
    detected. The bundles are built after the commit, by a worker, while the lock holds; a worker
    kept running is woken at the commit (PostgreSQL; on SQLite it looks every few seconds)."""
    audit.seal(db, seal_name(lock))
    anchors.anchor_after_commit(db)  # the head appended to TRIAL_AUDIT_ANCHORS once this commits
    db.add_all([LockBuild(lock_id=lock.id, variant=v, status="building", progress=0.0, queued_at=utcnow())
                for v in VARIANTS])
    db.flush()
    notify(db, BUILD_CHANNEL)


# --- building the bundles ---------------------------------------------------------------------------

STALE = dt.timedelta(seconds=120)  # a build whose worker has not reported for this long is taken for dead
PICKUP = dt.timedelta(seconds=60)  # a build no worker has claimed this long after it was queued is started again


def _store(db: Session, actor, lock_id: int, variant: str, data: bytes, sha: str, manifest_sha: str) -> None:
    db.add(LockBundle(lock_id=lock_id, variant=variant, content=data, sha256=sha, manifest_sha256=manifest_sha))
    audit.created(db, actor, "lock_bundle", f"{lock_id}/{variant}", {"sha256": sha, "manifest_sha256": manifest_sha})


def build_now(db: Session, actor, lock: DataLock) -> None:
    """Build both bundles of a hard lock in this session, from one read of the database (the API's
    ``inline`` builder, used by the tests and by a single-process setup)."""
    sig = db.get(Signature, lock.signature_id)
    rows = {b.variant: b for b in db.execute(select(LockBuild).where(LockBuild.lock_id == lock.id)).scalars()}
    for variant, (data, sha, manifest_sha) in build_bundles(db, lock, sig).items():
        _store(db, actor, lock.id, variant, data, sha, manifest_sha)
        b = rows[variant]
        b.status, b.progress, b.finished_at = "ready", 1.0, utcnow()
    db.flush()


def claim_lock(db: Session, worker: str, lock_id: int | None = None) -> list[int]:
    """Take the variants of one hard lock waiting to be built (or whose worker stopped reporting),
    to be built together from one read: one conditional update takes them all, so two workers
    never build the same one, nor split a lock between them. Returns the LockBuild ids taken
    (none when nothing waits)."""
    now = utcnow()
    claimable = (LockBuild.status == "building") & (LockBuild.worker.is_(None) | LockBuild.heartbeat.is_(None)
                                                    | (LockBuild.heartbeat < now - STALE))
    q = select(LockBuild.lock_id).where(claimable).order_by(LockBuild.lock_id).limit(1)
    if lock_id is not None:
        q = q.where(LockBuild.lock_id == lock_id)
    target = db.execute(q).scalar()
    if target is None:
        db.commit()
        return []
    db.execute(update(LockBuild).where(LockBuild.lock_id == target, claimable)
               .values(worker=worker, heartbeat=now, started_at=now, progress=0.0, error=None))
    taken = list(db.execute(select(LockBuild.id).where(LockBuild.lock_id == target, LockBuild.worker == worker,
                                                       LockBuild.started_at == now, LockBuild.status == "building")
                            .order_by(LockBuild.id)).scalars())
    db.commit()
    return taken


def run_build(session_factory, build_ids: list[int], worker: str) -> dict[str, str]:
    """Build the claimed variants of one lock from one read and store them. Returns each variant's
    final state ("ready" or "failed")."""
    return _build_and_store(session_factory, build_ids, {}, worker)[0]


def _build_and_store(session_factory, build_ids: list[int], compare: dict[str, str], worker: str,
                     lock_id: int | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Build, from one read of the database, the variants of ``build_ids`` (claimed: stored when
    made) and those of ``compare`` (variant: the stored bundle's sha256: built and compared,
    never replaced). The zips are made in a read-only session (on SQLite it does not hold the
    write lock, so the progress reports go on meanwhile) with helper processes
    (trial.exports.bundle), while the progress is reported in short transactions of another; the
    bundles, their audit records and the state "ready" then commit together. A build that raises
    is marked failed with its reason. Returns (each stored variant's state, each compared
    variant's outcome)."""
    with session_factory() as db:
        rows = db.execute(select(LockBuild.variant, LockBuild.lock_id).where(LockBuild.id.in_(build_ids))).all()
        db.commit()
    store = [v for v, _ in rows]
    lock_id = rows[0][1] if rows else lock_id
    try:
        with read_only_session(session_factory) as r:
            lock = r.get(DataLock, lock_id)
            built = build_bundles(r, lock, r.get(Signature, lock.signature_id), [*store, *compare],
                                  progress=_progress_reporter(session_factory, build_ids, worker), parallel=True)
        if not _store_built(session_factory, build_ids, worker, lock_id, store, built):
            return {v: "taken over by another worker" for v in store}, \
                {v: "not compared (taken over)" for v in compare}
        compared = {v: "same bytes" if built[v][1] == sha else
                    f"DIFFERENT bytes (stored {sha}, built {built[v][1]}): the stored bundle is kept" for v, sha in compare.items()}
        return {v: "ready" for v in store}, compared
    except Exception as e:  # noqa: BLE001  any failure of the build is recorded with the build, not lost
        why = failure_text(e, lock_id)
        log.error("the bundles of lock %s failed: %s", lock_id, why)
        if build_ids:
            with session_factory() as db:  # (a build another worker took over is its to finish)
                db.execute(update(LockBuild).where(LockBuild.id.in_(build_ids), LockBuild.worker == worker)
                           .values(status="failed", error=why[:2000], finished_at=utcnow()))
                db.commit()
        return {v: "failed" for v in store}, {v: f"failed: {why}" for v in compare}


def failure_text(e: BaseException, lock_id: int | None) -> str:
    """Why a build failed, for the operator: a full disk says so first (the helper processes report
    their errors as text, so the words are looked for too)."""
    text = f"{type(e).__name__}: {e}"
    if getattr(e, "errno", None) == errno.ENOSPC or "No space left" in text or "disk is full" in text:
        return (f"no space left on the disk while the bundle was written ({text}); free space, then "
                f"`trial lock rebuild {lock_id}` builds it again")
    return text


def _progress_reporter(session_factory, build_ids: list[int], worker: str):
    """The build's progress callback: each share done reported (at most 0.99, with a heartbeat)
    in a short transaction of its own, on the builds this worker still holds."""
    def report(share: float) -> None:
        with session_factory() as p:
            p.execute(update(LockBuild).where(LockBuild.id.in_(build_ids), LockBuild.worker == worker)
                      .values(progress=round(min(share, 0.99), 3), heartbeat=utcnow()))
            p.commit()
    return report


def _store_built(session_factory, build_ids: list[int], worker: str, lock_id: int, store: list[str],
                 built: dict) -> bool:
    """Store the bundles built of ``store`` with their audit records and the builds' state "ready",
    in one transaction; False (nothing stored) when another worker has taken the builds over."""
    with session_factory() as db:
        # still this worker's builds (one taken for dead and taken over is the other worker's now):
        # the state first, so that the bundles are stored only by the worker that holds the builds
        if build_ids and db.execute(update(LockBuild).where(LockBuild.id.in_(build_ids), LockBuild.worker == worker,
                                                            LockBuild.status == "building")
                                    .values(status="ready", progress=1.0, finished_at=utcnow(), heartbeat=utcnow(),
                                            error=None)).rowcount != len(build_ids):
            db.rollback()
            return False
        for variant in store:
            data, sha, manifest_sha = built[variant]
            if db.execute(select(LockBundle.id).where(LockBundle.lock_id == lock_id, LockBundle.variant == variant)).first():
                raise Conflict(Msg(N_("The blinded bundle of lock %(id)s exists already.") if variant == "blinded"
                                   else N_("The unblinded bundle of lock %(id)s exists already."), id=lock_id))
            _store(db, CliActor(f"worker {worker}"), lock_id, variant, data, sha, manifest_sha)
        db.commit()
    return True


def build_error(db: Session, build_id: int) -> str | None:
    """Why a build failed (for the worker's log and the operator)."""
    return db.execute(select(LockBuild.error).where(LockBuild.id == build_id)).scalar()


def build_status(db: Session, lock_id: int) -> dict:
    """A hard lock's bundles: building, ready or failed (a build whose worker has stopped
    reporting is failed: run `trial lock rebuild`), with the share done."""
    rows = list(db.execute(select(LockBuild).where(LockBuild.lock_id == lock_id).order_by(LockBuild.variant)).scalars())
    if not rows:
        return {"status": None, "progress": None, "error": None}
    now = utcnow()
    states = []
    for b in rows:
        dead = b.status == "building" and b.heartbeat is not None and b.heartbeat < now - STALE
        states.append("failed" if dead else b.status)
    status = "ready" if all(x == "ready" for x in states) else "failed" if "failed" in states else "building"
    silent = (f"the worker building it has not reported for {int(STALE.total_seconds())} s (taken for dead): the next "
              f"worker to start takes it over, or `trial lock rebuild {lock_id}` builds it")
    errors = [b.error or silent for b, x in zip(rows, states) if x == "failed"]
    return {"status": status, "progress": round(sum(b.progress for b in rows) / len(rows), 3),
            "error": "; ".join(errors) or None}


def watch_builds(db: Session) -> list[int]:
    """Builds nobody picked up (the worker the app started died before it claimed them, or could
    not start, or no `trial worker` runs): a build no worker has claimed PICKUP after it was queued
    is queued again, once (a note in its error says so; on PostgreSQL a waiting worker is woken);
    still unclaimed PICKUP later, it is failed, naming `trial lock rebuild ID`. A build whose
    worker went silent is another matter: failed for every reader after STALE (build_status) and
    taken over by the next worker that looks (claim_lock). Called wherever a lock's state is read
    (the locks pages and API, `trial lock status`, `trial checks run`). Returns the locks queued
    again, for which the caller starts a worker as after the signing; the caller commits."""
    now = utcnow()
    rows = db.execute(select(LockBuild.id, LockBuild.lock_id, LockBuild.queued_at, LockBuild.error, DataLock.created_at)
                      .join(DataLock, DataLock.id == LockBuild.lock_id)
                      .where(LockBuild.status == "building", LockBuild.worker.is_(None))).all()
    again, failed = set(), set()
    wait = int(PICKUP.total_seconds())
    for r in rows:
        if (r.queued_at or r.created_at) > now - PICKUP:
            continue
        same = (LockBuild.id == r.id, LockBuild.status == "building", LockBuild.worker.is_(None),
                LockBuild.queued_at.is_(None) if r.queued_at is None else LockBuild.queued_at == r.queued_at)
        if r.error is None:  # (one unclaimed build carries an error only once queued again)
            note = f"not picked up within {wait} s: queued again at {now:%Y-%m-%d %H:%M:%S} UTC"
            if db.execute(update(LockBuild).where(*same).values(queued_at=now, error=note)).rowcount:
                again.add(r.lock_id)
        else:
            why = (f"no worker picked the build up, {wait} s after the lock nor {wait} s after it was queued again "
                   f"(see the app's log and instance/worker.log; with TRIAL_LOCK_BUILDER=external, is `trial worker` "
                   f"running?): `trial lock rebuild {r.lock_id}` builds it")
            if db.execute(update(LockBuild).where(*same).values(status="failed", error=why,
                                                                  finished_at=now)).rowcount:
                failed.add(r.lock_id)
    if again:
        notify(db, BUILD_CHANNEL)
    for lock_id in sorted(again):
        log.warning("the bundles of lock %s were not picked up by a worker within %s s: queued again", lock_id, wait)
    for lock_id in sorted(failed):
        log.error("the bundles of lock %s were not picked up after being queued again: failed (`trial lock rebuild "
                  "%s` builds them)", lock_id, lock_id)
    return sorted(again)


def build_not_started(db: Session, lock_id: int, why: str, what: str = "the bundle worker could not be started") -> None:
    """The builds of a committed hard lock whose worker could not be started (the instance folder
    not writable, say), or whose inline build failed: failed at once with the reason, not left
    waiting; the caller commits."""
    db.execute(update(LockBuild).where(LockBuild.lock_id == lock_id, LockBuild.status == "building",
                                       LockBuild.worker.is_(None))
               .values(status="failed", finished_at=utcnow(),
                       error=(f"{what}: {why}; once that is repaired, `trial lock rebuild {lock_id}` builds the "
                              "bundles")[:2000]))


def rebuild(session_factory, actor, lock_id: int, worker: str) -> dict[str, str]:
    """`trial lock rebuild ID`: build the bundles of a hard lock again, while it holds (so the data
    are the ones it froze), from one read. A variant stored already is built and compared (it
    must give the same bytes; nothing is replaced); a failed or abandoned one is built and
    stored. Returns each variant's outcome."""
    with session_factory() as db:
        require_role(db, actor, "manager")
        lock = db.get(DataLock, lock_id)
        if lock is None or lock.kind != "hard":
            raise NotFound(Msg(N_("No hard lock %(id)s."), id=lock_id))
        if active_lock_id(db) != lock.id:
            raise Conflict(Msg(N_("Lock %(id)s is not in force: its data may have changed since, so its bundles cannot "
                                  "be built again."), id=lock_id))
        builds = {b.variant: b.id for b in db.execute(select(LockBuild).where(LockBuild.lock_id == lock_id)).scalars()}
        stored = dict(db.execute(select(LockBundle.variant, LockBundle.sha256).where(LockBundle.lock_id == lock_id)).all())
        missing = [b for v, b in builds.items() if v not in stored]
        if missing:
            db.execute(update(LockBuild).where(LockBuild.id.in_(missing))
                       .values(status="building", worker=worker, heartbeat=utcnow(), error=None))
        db.commit()
    made, compared = _build_and_store(session_factory, missing, {v: stored[v] for v in builds if v in stored}, worker,
                                      lock_id)
    return {v: made.get(v) or compared[v] for v in VARIANTS if v in builds}


def lift_lock(db: Session, actor, lock_id: int, reason: str, password: str, code: str | None = None) -> DataLock:
    require_role(db, actor, "manager")
    state = trial_state(db, update=True)
    lock = db.get(DataLock, lock_id)
    if lock is None:
        raise NotFound(Msg(N_("No lock %(id)s."), id=lock_id))
    if state.active_lock_id != lock.id:
        raise Conflict(Msg(N_("Lock %(id)s is not in force."), id=lock_id))
    _refuse_lift_after_unblinding(db, state, lock)
    if lock.kind == "hard" and build_status(db, lock.id)["status"] == "building":
        raise Conflict(Msg(N_("The bundles of lock %(id)s are still being built: lift it when they are ready (the data "
                              "must stay as the lock froze them until then)."), id=lock_id))
    errors: dict[str, str] = {}
    reason = text(reason, "reason", errors, 500, required=True)
    refuse(N_("The lock was not lifted"), errors)
    sig = sign(db, actor, password, f"Lift {lock.kind} lock {lock.id}: {reason}", f"lift_{lock.kind}_lock", code)
    lock.lifted_at, lock.lift_reason, lock.lift_signature_id = sig.signed_at, reason, sig.id
    state.active_lock_id, state.lock_notice = None, None
    audit.record(db, actor, "lift", "data_lock", lock.id, {"lifted_at": (None, lock.lifted_at)}, reason=lock.lift_reason)
    return lock


class Unblinded(Conflict):
    code = "unblinded"


def _refuse_lift_after_unblinding(db: Session, state, lock: DataLock) -> None:
    """A hard lock is never lifted once the trial is unblinded (data changed after the arms are
    known): a correction is an addendum (trial.lock.unblinding.open_addendum). Nor while an
    unblinding request signed under it waits for its countersignature."""
    if lock.kind != "hard":
        return
    if state.unblinded_at is not None:
        raise Unblinded(Msg(N_("The trial was unblinded on %(at)s UTC: a hard lock is not lifted after the unblinding. "
                               "A correction is made under an addendum, signed and audited, closed by a new hard lock "
                               "with its own bundle."), at=f"{state.unblinded_at:%Y-%m-%d %H:%M}"))
    waiting = db.execute(select(UnblindingRequest.id).where(UnblindingRequest.lock_id == lock.id,
                                                            UnblindingRequest.status == AWAITING)).scalar()
    if waiting is not None:
        raise Conflict(Msg(N_("Unblinding request %(id)s, signed under this lock, waits for its countersignature: "
                              "withdraw it before lifting the lock."), id=waiting))


def list_locks(db: Session, actor) -> list[dict]:
    require_role(db, actor, "manager", "statistician")
    variant = "blinded" if is_blinded(db, actor) else "unblinded"
    bundles = {b.lock_id: b.manifest_sha256 for b in db.execute(
        select(LockBundle).where(LockBundle.variant == variant)).scalars()}
    out = []
    for lock, sig in db.execute(select(DataLock, Signature).join(Signature, Signature.id == DataLock.signature_id)
                                .order_by(DataLock.id)).all():
        out.append({"id": lock.id, "kind": lock.kind, "version": lock.version,
                    "created_at": lock.created_at.isoformat(timespec="seconds") + "Z",
                    "signed_by": sig.printed_name, "meaning": sig.meaning,
                    "lifted_at": lock.lifted_at.isoformat(timespec="seconds") + "Z" if lock.lifted_at else None,
                    "lift_reason": lock.lift_reason, "manifest_sha256": bundles.get(lock.id),
                    "parent_lock_id": lock.parent_lock_id,
                    **({k: v for k, v in build_status(db, lock.id).items() if k != "error"} if lock.kind == "hard"
                       else {"status": None, "progress": None}),
                    "accepted_open_queries": shown_queries(db, lock.accepted_open_queries, variant == "blinded")})
    return out


def get_bundle(db: Session, actor, lock_id: int) -> LockBundle:
    require_role(db, actor, "manager", "statistician")
    lock = db.get(DataLock, lock_id)
    if lock is None or lock.kind != "hard":
        raise NotFound(Msg(N_("No hard lock %(id)s: bundles exist for hard locks only."), id=lock_id))
    variant = "blinded" if is_blinded(db, actor) else "unblinded"
    bundle = db.execute(select(LockBundle).where(LockBundle.lock_id == lock_id, LockBundle.variant == variant)).scalar()
    if bundle is None:
        st = build_status(db, lock_id)
        if st["status"] == "failed":  # (the reason is with the build and in the worker's log, not for every reader)
            raise BundleNotReady(Msg(N_("The bundle of lock %(id)s could not be built; “trial lock rebuild %(id)s” "
                                        "builds it again."), id=lock_id))
        raise BundleNotReady(Msg(N_("The bundle of lock %(id)s is being built (%(done)s%% done): ask again in a moment."),
                                 id=lock_id, done=f"{100 * (st['progress'] or 0):.0f}"))
    return bundle


class BundleNotReady(Conflict):
    code = "bundle_not_ready"


def lock_info(db: Session, actor, lock_id: int) -> dict:
    """One lock with its bundles' state (GET /locks/{id})."""
    require_role(db, actor, "manager", "statistician")
    for entry in list_locks(db, actor):
        if entry["id"] == lock_id:
            return entry
    raise NotFound(Msg(N_("No lock %(id)s."), id=lock_id))
