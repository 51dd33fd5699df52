"""Data cuts: a consistent snapshot of the live data for the data monitoring committee's interim
look, built in the background like a hard lock's bundle, locking nothing and refusing nothing.

The snapshot is ONE read transaction: on PostgreSQL REPEATABLE READ, READ ONLY (its snapshot
exported to the build's helper process, which reads the sessions in the same snapshot:
trial.exports.bundle.share_snapshot); on SQLite one deferred read transaction (WAL: a snapshot
that holds no write lock). Writers go on meanwhile: nothing is locked and nothing refused.

What a cut stores (``DataCut.content``, a zip with fixed timestamps; its SHA-256 is the cut's
digest, recorded with the audit trail's head at the snapshot and the protocol version):

- ``bundle-unblinded.zip``: the UNBLINDED bundle of the cut, byte for byte what a hard lock's
  unblinded bundle holds (the same tables, formats, loaders and the primary analysis), made by
  trial.exports.bundle from the snapshot. A cut keeps only the unblinded tables: the closed report
  needs the arms, and the open report is pooled (its figures are computed from the same snapshot
  at the build and stored without the arms, below). No route serves this file: it is read only
  to make the closed report, for the committee.
- ``open.json``: the open report's figures, pooled over the arms (trial.interim.reports).
- ``closed.json``: the closed report's figures, by arm, with the interim primary analysis.
- ``look.json``: the look: whether the manager asked for a formal interim look (``formal``; a
  practice or safety-only cut is no look and spends no alpha) and the information fraction
  observed, for the later cuts' spending.
- ``README.txt``: what the cut is.

While a cut is being built its ``content`` holds the request's options (JSON: ``{"request":
{"formal": ...}}``), which the build reads and carries into ``look.json`` (no column of its own).

The stored zip is never read whole to serve a report: :class:`_Blob` reads the zip's directory
and the one member asked for in ranges from the database (``substr``), so a reader of the open
report fetches no byte of the closed report or of the unblinded tables.

The stored parts are served only through :func:`open_part` (open: manager, statistician, dmc)
and :func:`closed_part` (dmc only; each opening audited). No Flask here.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
import time
import zipfile

from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.audit.models import AuditHead
from trial.auth import mfa
from trial.auth.models import User
from trial.catalogue import N_, Msg
from trial.db import notify, read_only_session, utcnow
from trial.errors import Conflict, NotFound
from trial.esign.service import sign
from trial.exports.bundle import SNAPSHOT_KEY, build_bundle
from trial.interim import reports
from trial.interim.models import DataCut, DmcRecommendation
from trial.lock.service import BUILD_CHANNEL
from trial.protocol.models import ProtocolVersion
from trial.protocol.service import current as current_protocol
from trial.scope import CliActor, require_role
from trial.validation import refuse
from trial.validation import text as text_field

log = logging.getLogger("trial.interim")

STALE = dt.timedelta(seconds=120)  # a cut whose builder has not reported for this long is taken for dead
READERS = ("manager", "statistician", "dmc")  # the cuts' list and the open report
BUNDLE = "bundle-unblinded.zip"
OPEN, CLOSED, README, LOOK = "open.json", "closed.json", "README.txt", "look.json"
UNBLINDED_READERS = ("manager", "dmc")  # see a cut's progress, times and digest; the others only its state


class CutNotReady(Conflict):
    code = "cut_not_ready"


# --- the cut as a lock, for the bundle's builder ----------------------------------------------------

@dataclasses.dataclass
class _AsLock:
    """What trial.exports.bundle reads of a hard lock, for a cut (it is no lock: ``id`` names the
    cut, ``version`` says what it is)."""
    id: str
    created_at: dt.datetime
    protocol_version: int
    version: str = "none: a data cut, nothing locked"
    kind: str = "cut"
    dummy_seed: str | None = None
    accepted_open_queries: list | None = None
    parent_lock_id: int | None = None


@dataclasses.dataclass
class _AsSignature:
    printed_name: str
    email: str
    signed_at: dt.datetime
    meaning: str


# --- asking for a cut, reading its state --------------------------------------------------------------

def request_cut(db: Session, actor, label, formal=None) -> DataCut:
    """A manager asks for a cut (202: built in the background). Nothing is locked. ``formal``
    (default false): the cut is one of the protocol's formal interim looks, which spend the alpha;
    any other cut (a practice run, a safety review) is no look: its closed report gives the
    boundary a look would have had, and the later looks do not count it."""
    require_role(db, actor, "manager")
    errors: dict = {}
    label = text_field(label, "label", errors, 200, required=True)
    if formal is None:
        formal = False
    elif not isinstance(formal, bool):
        errors["formal"] = N_("must be true or false")
    refuse(N_("The data cut was not taken"), errors)
    cut = DataCut(label=label, status="building", progress=0.0, requested_by_id=getattr(actor, "id", None),
                  created_at=utcnow(), content=json.dumps({"request": {"formal": formal}}).encode())
    db.add(cut)
    db.flush()
    audit.created(db, actor, "data_cut", cut.id, {"label": label, "status": "building", "formal": formal})
    notify(db, BUILD_CHANNEL)  # a `trial worker` kept running (TRIAL_LOCK_BUILDER=external) wakes at the commit
    return cut


def _request(db: Session, cut_id: int) -> dict:
    """The options a building cut was asked for with (kept in its content until the build)."""
    raw = db.execute(select(DataCut.content).where(DataCut.id == cut_id, DataCut.status == "building")).scalar()
    try:
        return json.loads(raw)["request"] if raw else {}
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return {}


def _moment(t: dt.datetime | None) -> str | None:
    return t.isoformat(timespec="seconds") + "Z" if t else None


def _state(cut: DataCut, now: dt.datetime) -> str:
    """building, ready or failed; a build whose builder went silent (STALE), or that no builder took up
    within twice that, is failed for every reader (a new cut is taken instead)."""
    if cut.status != "building":
        return cut.status
    silent = cut.heartbeat < now - STALE if cut.heartbeat is not None else cut.created_at < now - 2 * STALE
    return "failed" if silent else "building"


def _info(db: Session, actor, cut: DataCut, recs: dict[int, list[DmcRecommendation]]) -> dict:
    """A cut as a reader sees it. A blinded reader (the statistician) sees its state only (building,
    ready, failed): the build's progress, its snapshot's time and its digest follow how long the
    unblinded tables took to make and what they hold."""
    state = _state(cut, utcnow())
    out = {"id": cut.id, "label": cut.label, "created_at": _moment(cut.created_at), "status": state}
    if not actor.has_role(*UNBLINDED_READERS):
        return out
    out["progress"] = round(cut.progress or 0.0, 3)
    if state == "ready":
        # the digest is over the unblinded tables and the audit trail's size follows the sessions logged
        # (music therapy only): for unblinded readers only, as a lock's bundle says its seal
        out.update(snapshot_at=_moment(cut.snapshot_at), protocol_version=cut.protocol_version, sha256=cut.sha256,
                   audit_seq=cut.audit_seq)
        look = _look(db, cut)
        out.update(formal=look.get("formal"), information_fraction=look.get("information_fraction"))
    # the committee's recommendations, as text (never the closed report), newest first, each signed
    listed = [{"id": r.id, "decision": r.decision, "text": r.text, "signed_at": _moment(r.signed_at),
               "signed_by": db.get(User, r.signed_by_id).name, "signature": r.signature_id}
              for r in recs.get(cut.id, [])]
    out["recommendations"] = listed
    out["recommendation"] = listed[0] if listed else None
    return out


def _recommendations(db: Session, ids: list[int]) -> dict[int, list[DmcRecommendation]]:
    """Every recommendation on each cut, newest first."""
    if not ids:
        return {}
    out: dict[int, list[DmcRecommendation]] = {}
    for r in db.execute(select(DmcRecommendation).where(DmcRecommendation.data_cut_id.in_(ids))
                        .order_by(DmcRecommendation.signed_at.desc(), DmcRecommendation.id.desc())).scalars():
        out.setdefault(r.data_cut_id, []).append(r)
    return out


def list_cuts(db: Session, actor) -> list[dict]:
    require_role(db, actor, *READERS)
    cuts = list(db.execute(select(DataCut).order_by(DataCut.id.desc())).scalars())
    recs = _recommendations(db, [c.id for c in cuts])
    return [_info(db, actor, c, recs) for c in cuts]


def _cut(db: Session, cut_id: int) -> DataCut:
    cut = db.get(DataCut, cut_id)
    if cut is None:
        raise NotFound(Msg(N_("No data cut %(id)s."), id=cut_id))
    return cut


def cut_info(db: Session, actor, cut_id: int) -> dict:
    require_role(db, actor, *READERS)
    cut = _cut(db, cut_id)
    return _info(db, actor, cut, _recommendations(db, [cut.id]))


def _ready(db: Session, cut_id: int, actor=None) -> DataCut:
    cut = _cut(db, cut_id)
    state = _state(cut, utcnow())
    if state == "failed":
        raise CutNotReady(Msg(N_("Data cut %(id)s could not be built: take a new one."), id=cut_id))
    if state != "ready":
        if actor is not None and not actor.has_role(*UNBLINDED_READERS):  # (no progress for a blinded reader)
            raise CutNotReady(Msg(N_("Data cut %(id)s is being built: ask again later."), id=cut_id))
        raise CutNotReady(Msg(N_("Data cut %(id)s is being built (%(done)s%% done): ask again in a moment."),
                              id=cut_id, done=f"{100 * (cut.progress or 0):.0f}"))
    return cut


class _Blob(io.RawIOBase):
    """A cut's stored zip, read in ranges from the database (``substr``), never whole: the zip's
    directory at its end and the bytes of the member asked for, nothing else (``spans``: the ranges
    read)."""

    def __init__(self, db: Session, cut_id: int):
        super().__init__()
        self.db, self.cut_id, self.pos = db, cut_id, 0
        self.size = db.execute(select(func.length(DataCut.content)).where(DataCut.id == cut_id)).scalar() or 0
        self.spans: list[tuple[int, int]] = []

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else self.size + offset
        return self.pos

    def readinto(self, b) -> int:
        n = min(len(b), max(self.size - self.pos, 0))
        if n <= 0:
            return 0
        data = bytes(self.db.execute(select(func.substr(DataCut.content, self.pos + 1, n))
                                     .where(DataCut.id == self.cut_id)).scalar())
        b[:len(data)] = data
        self.spans.append((self.pos, len(data)))
        self.pos += len(data)
        return len(data)


def _part(db: Session, cut: DataCut, name: str) -> bytes:
    """One member of a cut's zip, read from the database without the others."""
    with zipfile.ZipFile(_Blob(db, cut.id)) as z:
        return z.read(f"cut-{cut.id}/{name}")


def _look(db: Session, cut: DataCut) -> dict:
    """A ready cut's look: {formal, information_fraction, ...} ({} for a cut without one)."""
    if cut.status != "ready":
        return {}
    try:
        return json.loads(_part(db, cut, LOOK))
    except (KeyError, ValueError, zipfile.BadZipFile):
        return {}


def open_part(db: Session, actor, cut_id: int) -> tuple[DataCut, dict]:
    """The open report's figures (pooled): manager, statistician, dmc."""
    require_role(db, actor, *READERS)
    cut = _ready(db, cut_id, actor)
    return cut, json.loads(_part(db, cut, OPEN))


def closed_part(db: Session, actor, cut_id: int, what: str) -> tuple[DataCut, dict]:
    """The closed report's figures (by arm): the data monitoring committee ONLY (the manager too is
    refused). Each opening is audited: who saw which cut's closed report, when, as what."""
    require_role(db, actor, "dmc")
    cut = _ready(db, cut_id)
    data = json.loads(_part(db, cut, CLOSED))
    audit.record(db, actor, "open_closed_report", "data_cut", cut.id, reason=f"closed report ({what})")
    return cut, data


# --- building -------------------------------------------------------------------------------------------

@contextlib.contextmanager
def snapshot_session(session_factory):
    """One read transaction over the live data, locking nothing: PostgreSQL REPEATABLE READ, READ
    ONLY, its snapshot exported for the build's helper; SQLite a deferred read transaction."""
    with read_only_session(session_factory) as s:
        if s.get_bind().dialect.name == "postgresql":
            s.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
            s.info[SNAPSHOT_KEY] = s.execute(text("SELECT pg_export_snapshot()")).scalar()
        try:
            yield s
        finally:
            s.info.pop(SNAPSHOT_KEY, None)
            s.rollback()


def _zip(cut: DataCut, readme: str, open_data: dict, closed_data: dict, bundle: bytes, look: dict) -> bytes:
    """The cut's zip: its README, its look, the open and the closed report's figures, and the unblinded
    tables (last: the small members come first)."""
    buf = io.BytesIO()
    stamp = max(cut.created_at.timetuple()[:6], (1980, 1, 1, 0, 0, 0))
    with zipfile.ZipFile(buf, "w") as z:
        for name, data, how in ((README, readme.encode(), zipfile.ZIP_DEFLATED),
                                (LOOK, json.dumps(look, indent=1, sort_keys=True).encode(), zipfile.ZIP_DEFLATED),
                                (OPEN, json.dumps(open_data, indent=1, sort_keys=True).encode(), zipfile.ZIP_DEFLATED),
                                (CLOSED, json.dumps(closed_data, indent=1, sort_keys=True).encode(), zipfile.ZIP_DEFLATED),
                                (BUNDLE, bundle, zipfile.ZIP_STORED)):  # (a zip already)
            info = zipfile.ZipInfo(f"cut-{cut.id}/{name}", date_time=stamp)
            info.compress_type, info.external_attr = how, 0o444 << 16
            z.writestr(info, data)
    return buf.getvalue()


def build_content(db: Session, cut: DataCut, requester: User | None, progress=None,
                  parallel: bool = False, formal: bool = False) -> dict:
    """Read the cut from ``db`` (one transaction: the caller's snapshot) and make its content.
    Returns the values to store: content, sha256, snapshot_at, audit_seq, protocol_version."""
    say = progress or (lambda share: None)
    snapshot_at = utcnow()
    head = db.execute(select(AuditHead.seq).where(AuditHead.id == 1)).scalar() or 0  # (the snapshot's first read)
    pv = current_protocol(db)
    lock = _AsLock(id=f"cut{cut.id}", created_at=cut.created_at, protocol_version=pv.version)
    who = requester.name if requester else "command line"
    sig = _AsSignature(who, requester.email if requester else "", cut.created_at,
                       f"Data cut {cut.id} ({cut.label}): a consistent snapshot of the live data for the data "
                       f"monitoring committee; nothing was locked")
    t0 = time.perf_counter()
    bundle, bundle_sha, _ = build_bundle(db, lock, sig, blinded=False, progress=lambda s: say(0.8 * s),
                                         parallel=parallel)
    say(0.85)
    t1 = time.perf_counter()
    content = pv.content
    open_data = reports.open_data(db, content, snapshot_at)
    say(0.9)
    t2 = time.perf_counter()
    closed_data = reports.closed_data(db, content, bundle, snapshot_at, _previous_fractions(db, cut), formal)
    say(0.95)
    log.info("data cut %s: the unblinded tables in %.1f s, the open report's figures in %.1f s, the closed "
             "report's in %.1f s", cut.id, t1 - t0, t2 - t1, time.perf_counter() - t2)
    meta = {"cut": cut.id, "label": cut.label, "created_at": _moment(cut.created_at), "snapshot_at": _moment(snapshot_at),
            "audit_seq": head, "protocol_version": pv.version, "trial": content["trial"]["name"]}
    open_data["cut"] = closed_data["cut"] = meta
    look = {"formal": formal, "information_fraction": closed_data.get("information_fraction"),
            "observed_primary": closed_data.get("observed_primary"),
            "planned_primary_n": closed_data.get("planned_sample_size"),
            "planned_from": closed_data.get("planned_from"), "snapshot_at": meta["snapshot_at"]}
    data = _zip(cut, _readme(meta, bundle_sha), open_data, closed_data, bundle, look)
    return {"content": data, "sha256": hashlib.sha256(data).hexdigest(), "snapshot_at": snapshot_at,
            "audit_seq": head, "protocol_version": pv.version}


def _previous_fractions(db: Session, cut: DataCut) -> list[float]:
    """The information fractions observed at the earlier formal looks (the ready cuts asked for as
    formal interim looks, in the order of their snapshots; a practice cut is no look): the looks
    already taken, for the spending at this one."""
    out = []
    for c in db.execute(select(DataCut).where(DataCut.id != cut.id, DataCut.status == "ready",
                                              DataCut.snapshot_at.is_not(None))
                        .order_by(DataCut.snapshot_at, DataCut.id)).scalars():
        look = _look(db, c)
        f = look.get("information_fraction")
        if look.get("formal") is True and isinstance(f, (int, float)) and 0 < f < 1 and (not out or f > out[-1]):
            out.append(float(f))
    return out


def _readme(meta: dict, bundle_sha: str) -> str:
    return "\n".join([
        "Data cut (interim look for the data monitoring committee)",
        "=========================================================",
        f"Trial: {meta['trial']}",
        f"Cut: {meta['cut']} ({meta['label']}), asked for at {meta['created_at']}",
        f"Snapshot: {meta['snapshot_at']}, one read transaction of the live data (nothing was locked)",
        f"Audit trail head at the snapshot: record {meta['audit_seq']}",
        f"Protocol version: {meta['protocol_version']}",
        "",
        f"{BUNDLE}  the UNBLINDED tables of the snapshot, as a hard lock's unblinded bundle holds them",
        f"           (sha256 {bundle_sha}); its README's 'lock' is this cut: nothing was locked",
        f"{OPEN}    the open report's figures, pooled over the arms",
        f"{CLOSED}  the closed report's figures, by arm, for the data monitoring committee only",
        f"{LOOK}    the look: formal interim look or not, and the information fraction observed",
        "",
    ])


def _store(db: Session, actor, cut_id: int, made: dict, worker: str | None) -> bool:
    q = update(DataCut).where(DataCut.id == cut_id, DataCut.status == "building")
    if worker is not None:
        q = q.where(DataCut.worker == worker)
    done = db.execute(q.values(status="ready", progress=1.0, finished_at=utcnow(), heartbeat=utcnow(), error=None,
                               content=made["content"], sha256=made["sha256"], snapshot_at=made["snapshot_at"],
                               audit_seq=made["audit_seq"], protocol_version=made["protocol_version"])).rowcount
    if not done:
        return False
    audit.record(db, actor, "build", "data_cut", cut_id,
                 {"status": ("building", "ready"), "sha256": (None, made["sha256"]),
                  "audit_seq": (None, made["audit_seq"]), "protocol_version": (None, made["protocol_version"])})
    return True


def build_inline(db: Session, actor, cut_id: int) -> None:
    """Build a cut in this session and transaction (TRIAL_LOCK_BUILDER=inline: the tests and a
    single-process setup); the caller commits."""
    bind = db.get_bind()
    if isinstance(bind, Engine) and bind.dialect.name == "postgresql" and not db.in_transaction():
        # one snapshot here too: this transaction REPEATABLE READ (a session bound to a connection already
        # in a transaction, the tests', reads in that one)
        db.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    cut = _cut(db, cut_id)
    formal = _request(db, cut_id).get("formal") is True
    cut.started_at, cut.worker = utcnow(), "inline"
    requester = db.get(User, cut.requested_by_id) if cut.requested_by_id else None
    made = build_content(db, cut, requester, formal=formal)
    _store(db, actor, cut_id, made, None)


def failed(db: Session, cut_id: int, why: str) -> None:
    """A cut whose build could not start or failed: failed with the reason; the caller commits."""
    db.execute(update(DataCut).where(DataCut.id == cut_id, DataCut.status == "building")
               .values(status="failed", finished_at=utcnow(), error=why[:2000]))


def fail_stale(db: Session) -> list[int]:
    """Persist "failed" for the builds every reader already takes for failed (:func:`_state`): a
    builder silent for STALE, or a cut no builder took up within twice that. A failed cut stays
    failed: its builder, should it come back, cannot store it (:func:`_store`); a new cut is taken
    instead. The caller commits. Returns the cuts failed."""
    now = utcnow()
    silent = (DataCut.status == "building") & (
        (DataCut.heartbeat.is_not(None) & (DataCut.heartbeat < now - STALE))
        | (DataCut.heartbeat.is_(None) & (DataCut.created_at < now - 2 * STALE)))
    ids = list(db.execute(select(DataCut.id).where(silent)).scalars())
    if ids:
        db.execute(update(DataCut).where(DataCut.id.in_(ids), silent).values(
            status="failed", finished_at=now, error="its builder stopped reporting (or none took it up): take a new cut"))
    return ids


def claim(db: Session, worker: str, cut_id: int | None = None) -> int | None:
    """Take a cut waiting to be built: one conditional update, so two builders never build the same
    one. A silent build is not taken over: it is failed first (:func:`fail_stale`). Commits.
    Returns the cut's id, or None."""
    fail_stale(db)
    now = utcnow()
    claimable = (DataCut.status == "building") & DataCut.worker.is_(None)
    q = select(DataCut.id).where(claimable).order_by(DataCut.id).limit(1)
    if cut_id is not None:
        q = q.where(DataCut.id == cut_id)
    target = db.execute(q).scalar()
    taken = target is not None and db.execute(update(DataCut).where(DataCut.id == target, claimable).values(
        worker=worker, heartbeat=now, started_at=now, progress=0.0, error=None)).rowcount == 1
    db.commit()
    return target if taken else None


def run(session_factory, cut_id: int, worker: str, parallel: bool = True) -> str:
    """Build a claimed cut from one snapshot and store it (its own transaction). Returns "ready",
    "failed" (also when the cut was failed meanwhile, as stale: it is not stored)."""
    def report(share: float) -> None:
        with session_factory() as p:
            p.execute(update(DataCut).where(DataCut.id == cut_id, DataCut.worker == worker,
                                            DataCut.status == "building")
                      .values(progress=round(min(share, 0.99), 3), heartbeat=utcnow()))
            p.commit()
    try:
        with session_factory() as db:
            cut = _cut(db, cut_id)
            formal = _request(db, cut_id).get("formal") is True
            requester = db.get(User, cut.requested_by_id) if cut.requested_by_id else None
            db.expunge_all()
            db.commit()
        t0 = time.perf_counter()
        with snapshot_session(session_factory) as r:
            made = build_content(r, cut, requester, report, parallel, formal)
        t1 = time.perf_counter()
        with session_factory() as db:
            if not _store(db, CliActor(f"worker {worker}"), cut_id, made, worker):
                db.rollback()
                log.warning("data cut %s was failed while it was built (stale): not stored", cut_id)
                return "failed"
            db.commit()
        log.info("data cut %s: built from its snapshot in %.1f s, stored in %.1f s", cut_id, t1 - t0,
                 time.perf_counter() - t1)
        return "ready"
    except Exception as e:
        why = f"{type(e).__name__}: {e}"
        log.exception("data cut %s failed", cut_id)
        with session_factory() as db:
            db.execute(update(DataCut).where(DataCut.id == cut_id, DataCut.worker == worker,
                                             DataCut.status == "building")
                       .values(status="failed", finished_at=utcnow(), error=why[:2000]))
            db.commit()
        return "failed"


# --- the committee's recommendation ---------------------------------------------------------------------

DECISIONS = ("continue", "modify", "stop_benefit", "stop_harm", "stop_futility")


def recommendation_form(db: Session, actor, cut_id: int) -> dict:
    """The cut as the committee's recommendation form shows it: the data monitoring committee only."""
    require_role(db, actor, "dmc")
    return cut_info(db, actor, cut_id)


class SecondFactorNeeded(Conflict):
    code = "second_factor_needed"


def recommend(db: Session, actor, cut_id: int, decision, text_, password, code=None) -> DmcRecommendation:
    """The committee's recommendation on a ready cut, e-signed with the password and the current
    code of the member's authenticator app: a member who has not enrolled a second factor is
    refused (409), a bad field or a wrong credential records nothing. The signature's meaning
    carries the SHA-256 of the recommendation's text, so the signature binds the words. Every
    recommendation is kept (a cut may have several: the manager reads them all, newest first)."""
    require_role(db, actor, "dmc")
    cut = _ready(db, cut_id)
    if not mfa.is_enrolled(actor):
        raise SecondFactorNeeded(N_("A recommendation is signed with a second factor: enrol your authenticator app "
                                    "(your account's two-factor page) before you sign."))
    errors: dict = {}
    if decision not in DECISIONS:
        errors["decision"] = N_("must be continue, modify, stop_benefit, stop_harm or stop_futility")
    words = text_field(text_, "text", errors, 5000, required=True)
    refuse(N_("The recommendation was not recorded"), errors)
    digest = hashlib.sha256(words.encode("utf-8")).hexdigest()
    sig = sign(db, actor, password, f"DMC recommendation on data cut {cut.id}: {decision}; text SHA-256 {digest}",
               "dmc_recommendation", code)
    rec = DmcRecommendation(data_cut_id=cut.id, decision=decision, text=words, signature_id=sig.id, signed_by_id=actor.id,
                            signed_at=sig.signed_at)
    db.add(rec)
    db.flush()
    audit.created(db, actor, "dmc_recommendation", rec.id, {"data_cut": cut.id, "decision": decision, "text": words,
                                                            "signature": sig.id})
    return rec


# --- the reports, as served -----------------------------------------------------------------------------

def _content_of(db: Session, cut: DataCut) -> dict:
    pv = db.execute(select(ProtocolVersion).where(ProtocolVersion.version == cut.protocol_version)).scalar_one()
    return pv.content


def open_report_pdf(db: Session, actor, cut_id: int, language: str) -> bytes:
    cut, data = open_part(db, actor, cut_id)
    return reports.open_pdf(data, _content_of(db, cut), language)


def closed_report(db: Session, actor, cut_id: int, fmt: str, language: str = "en") -> bytes | dict:
    """The closed report as PDF (``fmt`` "pdf", in ``language``) or its figures (JSON); audited."""
    cut, data = closed_part(db, actor, cut_id, fmt)
    if fmt == "json":
        return data
    return reports.closed_pdf(data, _content_of(db, cut), language)
