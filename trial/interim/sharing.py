"""The de-identified sharing bundle of a locked, unblinded trial (ICMJE data-sharing statements;
funders' policies): the unblinded bundle's tables with the identifiers, the calendar and every
free text taken out, and a disclosure report of the rarest combinations of quasi-identifiers.

What is done to the tables (the bundle's README says the same, for the reader):
- The children: only the randomized ones. The study id is replaced by a pseudonymous id
  (``pid``: C00001, ... given in a random order drawn from the operating system's CSPRNG; nothing
  of the study id goes into it, and no key is kept: a new bundle draws new ids). Rows are sorted
  by their values, so their order tells nothing of the study ids' order either.
- The calendar: every date and date-time becomes the number of days from the child's
  randomization (the ADSL's randomization day, the site's calendar); a date of a row that belongs
  to no randomized child (a screening nobody randomized) is left empty. The date of birth is
  dropped; the age in months at randomization (``agerand``, as API.md's contract says) and its band
  (``ageband``, AGE_BANDS; what the disclosure report counts) stand in its place. The files'
  timestamps are a fixed 1 January 1980, not the lock's day.
- Free text: every text variable that is not a coded one (its values a key of a fixed list) is
  dropped, unless it is one of the few whose values the system makes (KEPT_TEXT); the tables that
  are free text or staff administration are left out whole (DROPPED_TABLES). New tables and
  variables are handled by the same rules: a text the rules do not know is dropped, not kept.
- Staff and internal numbers: who did what (e-mail addresses, therapists' codes) is dropped with
  the free text; the records' numbers that link tables (an adverse event's number, ...) are
  renumbered in a random order; the randomization list's slots are dropped.
- Sites: each site gets a random code (S01, S02, ... in a random order), everywhere the site's
  code appears (the site, the stratum). The country is added only when it does not narrow anyone
  down: when every combination of country, sex and age band has at least K_MIN children and every
  country has at least two sites (a country with one site would name it); else it is left out.

The disclosure report: k, the number of children, for each combination of the pseudonymous site,
sex and age band (AGE_BANDS); the combinations with k below K_MIN and their children listed for
review before the bundle is shared (disclosure.csv and disclosure.json in the bundle; the list of
those children, by pid, is the manager's alone: ``review_csv``, from SharingBundle.disclosure, never
in the bundle). By default the site of every child in a combination with k below K_MIN is
suppressed (left empty wherever it appears) before the bundle is made, and k is counted on the
data as shipped. The screening log is left out whole (children never randomized); the consent's
language and signer are dropped (quasi-identifiers the k report does not count).

The tables come from the database while the hard lock holds (the data it froze) and each one's
CSV is checked against the lock's unblinded bundle's manifest before anything is made: the shared
data are exactly the locked bundle's tables.
"""
from __future__ import annotations

import collections
import datetime as dt
import hashlib
import importlib
import io
import json
import logging
import os
import re
import secrets
import socket
import sys
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.catalogue import N_, Msg
from trial.db import make_engine, make_session_factory, notify, read_only_session, utcnow
from trial.detached import spawn_detached
from trial.errors import Conflict, NotFound
from trial.exports import formats
from trial.exports.dataset import ANALYSIS_TABLES, Table, Var, build_tables
from trial.interim.models import SharingBundle
from trial.lock.models import DataLock, LockBundle
from trial.lock.service import BUILD_CHANNEL
from trial.participants.service import age_in_months
from trial.scope import CliActor, require_role
from trial.sites.models import Site
from trial.trialstate.models import TrialState
from trial.trialstate.service import active_lock_id

log = logging.getLogger("trial.sharing")

K_MIN = 3
# age at randomization, in months: (lowest, highest or None, label); TIME-A takes children of 4 years
# 0 months to 6 years 11 months, so the bands are its years of age, with one below and one above
AGE_BANDS = ((0, 47, "under 48 months"), (48, 59, "48-59 months"), (60, 71, "60-71 months"),
             (72, 83, "72-83 months"), (84, None, "84 months or more"))
UNKNOWN_BAND = "unknown"
STALE = dt.timedelta(minutes=30)  # a build not finished after this is taken for dead (its worker stopped)
STAMP = (1980, 1, 1, 0, 0, 0)  # every file's timestamp in the zip: fixed, no calendar day of the trial
FILE_WHEN = dt.datetime(1980, 1, 1)  # the Stata and SAS files' creation stamp, likewise
PREFIX = "sharing/"

# tables left out whole, and why
DROPPED_TABLES = {
    "sessnote": "therapists' notes on sessions: free text",
    "queries": "data queries: free text, and who raised them (staff)",
    "querymsg": "the queries' threads: free text, and who wrote them (staff)",
    "verif": "source-data verification marks: staff and their reasons (free text)",
    "fiddraw": "the fidelity draws: the therapists (staff) and the draws' seeds (administration)",
    "screen": "the screening log: children never randomized (who consented to no sharing), and the screening "
              "of the randomized ones adds nothing to the analysis",
}
# text variables whose values the system makes (keys, lists of keys, the protocol's labels): kept;
# every other text that is not coded is dropped
KEPT_TEXT = {
    "armlbl": "the arm's label from the protocol",
    "failcrit": "the protocol's eligibility criteria not met (keys)",
    "techniq": "the protocol's techniques (keys)",
    "goals": "the protocol's goals (keys)",
    "seriousn": "the seriousness criteria (keys)",
    "document": "the protocol's consent document (key)",
    "factor": "a stratification factor's name (key)",
    "stratum": "the randomization stratum (its site pseudonymised)",
    "site": "the site (pseudonymised)",
}
KEPT_TEXT_PREFIXES = ("c_",)  # the ADSL's strata as corrected (keys; the site pseudonymised)
# variables dropped whatever their type, and why
DROPPED_VARS = {
    "brthdt": "the date of birth: ageband (the age band at randomization) stands in its place",
    "slot": "the place in the randomization list: it tells the order of randomization",
    "lognum": "the site's screening-log number: an identifier at the site",
    "repref": "the reference number of a report's recipient: an identifier outside the trial",
    "language": "the language a consent was read in: with the site it narrows a family down (a quasi-identifier "
                "the disclosure report does not count)",
    "signer": "who signed a consent (parent, guardian): it tells the family's circumstances (a quasi-identifier the "
              "disclosure report does not count)",
}
AGE_VAR = "ageband"
RENUMBERED = ("aeid", "scrid", "drawid", "qid", "targetid")  # internal record numbers: renumbered at random
CHILD = "studyid"
PID = "pid"
UNLINKED_KEPT: set[str] = set()  # tables whose rows of no randomized child are kept (none: the screening log is left out)
SITE_VARS = ("site", "stratum")  # (and the ADSL's corrected strata, c_*): a child's site, blanked when suppressed


class NotUnblinded(Conflict):
    code = "not_unblinded"


class SharingNotReady(Conflict):
    code = "sharing_not_ready"


# --- the requests ----------------------------------------------------------------------------------

def _sharable_lock(db: Session, lock_id: int) -> DataLock:
    """The hard lock to share: it exists (404), the trial is unblinded, the lock holds (its data are
    the ones it froze) and its unblinded bundle is built (409 otherwise)."""
    lock = db.get(DataLock, lock_id)
    if lock is None or lock.kind != "hard":
        raise NotFound(Msg(N_("No hard lock %(id)s."), id=lock_id))
    unblinded_at = db.execute(select(TrialState.unblinded_at).where(TrialState.id == 1)).scalar()
    if unblinded_at is None:
        raise NotUnblinded(N_("The trial is not unblinded: a sharing bundle is made only after the final lock and the "
                              "unblinding."))
    if active_lock_id(db) != lock.id:
        raise Conflict(Msg(N_("Lock %(id)s is not in force: its data may have changed since. Ask for the sharing bundle "
                              "of the hard lock in force."), id=lock_id))
    if db.execute(select(LockBundle.id).where(LockBundle.lock_id == lock.id,
                                              LockBundle.variant == "unblinded")).first() is None:
        raise Conflict(Msg(N_("The unblinded bundle of lock %(id)s is not built yet: ask again when it is ready."),
                           id=lock_id))
    return lock


def latest(db: Session, lock_id: int) -> SharingBundle | None:
    return db.execute(select(SharingBundle).where(SharingBundle.lock_id == lock_id)
                      .order_by(SharingBundle.id.desc()).limit(1)).scalar()


def watch(db: Session) -> None:
    """A build not finished STALE after it was asked for is failed (its worker stopped); the
    caller commits."""
    db.execute(update(SharingBundle).where(SharingBundle.status == "building",
                                           SharingBundle.created_at < utcnow() - STALE)
               .values(status="failed", finished_at=utcnow(),
                       error=f"not finished within {int(STALE.total_seconds() // 60)} minutes: the worker stopped "
                             "(see instance/worker.log); ask for the bundle again"))


def request_sharing(db: Session, actor, lock_id: int) -> SharingBundle:
    """The manager asks for the sharing bundle of the hard lock in force, after the unblinding:
    a SharingBundle "building" (audited); building it is the caller's next step (:func:`run`
    in a worker, :func:`build_inline` in the tests)."""
    require_role(db, actor, "manager")
    lock = _sharable_lock(db, lock_id)
    watch(db)
    last = latest(db, lock.id)
    if last is not None and last.status == "building":
        raise SharingNotReady(Msg(N_("The sharing bundle of lock %(id)s is being built: wait for it."), id=lock_id))
    sb = SharingBundle(lock_id=lock.id, status="building", progress=0.0, requested_by_id=getattr(actor, "id", None),
                       created_at=utcnow())
    db.add(sb)
    db.flush()
    audit.record(db, actor, "request_sharing", "sharing_bundle", sb.id,
                 {"lock_id": (None, lock.id), "status": (None, "building")},
                 reason="de-identified bundle for data sharing")
    notify(db, BUILD_CHANNEL)  # a `trial worker` kept running (TRIAL_LOCK_BUILDER=external) wakes at the commit
    return sb


def status(db: Session, actor, lock_id: int) -> dict:
    """The newest sharing bundle of a lock: {lock_id, id, status, progress, created_at, finished_at,
    sha256, disclosure summary}; status None when none was asked for."""
    require_role(db, actor, "manager", "statistician")
    lock = db.get(DataLock, lock_id)
    if lock is None or lock.kind != "hard":
        raise NotFound(Msg(N_("No hard lock %(id)s."), id=lock_id))
    sb = latest(db, lock_id)
    if sb is None:
        return {"lock_id": lock_id, "id": None, "status": None, "progress": None}
    out = {"lock_id": lock_id, "id": sb.id, "status": sb.status, "progress": round(sb.progress or 0.0, 3),
           "created_at": _stamp(sb.created_at), "finished_at": _stamp(sb.finished_at), "sha256": sb.sha256}
    if sb.disclosure:
        d = sb.disclosure
        out["disclosure"] = {"k_min": d["k_min"], "children": d["children"], "combinations": len(d["combinations"]),
                             "below_k_min": len(d["below_k_min"]), "review_rows": len(d["review"]),
                             "country_kept": d["country_kept"]}
    if sb.status == "failed":
        out["error"] = sb.error
    return out


def _stamp(at: dt.datetime | None) -> str | None:
    return at.isoformat(timespec="seconds") + "Z" if at else None


def get_zip(db: Session, actor, lock_id: int) -> SharingBundle:
    """The ready sharing bundle of a lock, for the manager or the statistician (audited: who took
    the data out, when). 404 for an unknown lock or none asked for; 409 before the unblinding,
    while it is built, or when its build failed."""
    require_role(db, actor, "manager", "statistician")
    lock = db.get(DataLock, lock_id)
    if lock is None or lock.kind != "hard":
        raise NotFound(Msg(N_("No hard lock %(id)s."), id=lock_id))
    if db.execute(select(TrialState.unblinded_at).where(TrialState.id == 1)).scalar() is None:
        raise NotUnblinded(N_("The trial is not unblinded: a sharing bundle is made only after the final lock and the "
                              "unblinding."))
    watch(db)
    sb = latest(db, lock_id)
    if sb is None:
        raise NotFound(Msg(N_("No sharing bundle of lock %(id)s was asked for."), id=lock_id))
    if sb.status == "building":
        raise SharingNotReady(Msg(N_("The sharing bundle of lock %(id)s is being built (%(done)s%% done): ask again in "
                                     "a moment."), id=lock_id, done=f"{100 * (sb.progress or 0):.0f}"))
    if sb.status != "ready":
        raise SharingNotReady(Msg(N_("The sharing bundle of lock %(id)s could not be built: ask for it again."),
                                  id=lock_id))
    audit.record(db, actor, "download", "sharing_bundle", sb.id, reason=f"sharing bundle sha256 {sb.sha256}")
    return sb


# --- building ------------------------------------------------------------------------------------

def build_inline(db: Session, actor, bundle_id: int) -> str:
    """Build in this session and transaction (TRIAL_LOCK_BUILDER=inline: the tests); the caller
    commits. Returns the status."""
    sb = db.get(SharingBundle, bundle_id)
    try:
        made = build_content(db, db.get(DataLock, sb.lock_id))
    except Exception as e:  # recorded with the bundle
        log.exception("the sharing bundle %s failed", bundle_id)
        sb.status, sb.error, sb.finished_at = "failed", f"{type(e).__name__}: {e}"[:2000], utcnow()
        return "failed"
    _finish(db, actor, sb, made)
    return "ready"


def run(session_factory, bundle_id: int, worker: str) -> str:
    """Build a requested bundle in a worker process: read in a transaction of its own, progress in
    short ones, the result stored with its audit record. Returns the status."""

    def progress(share: float) -> None:
        with session_factory() as p:
            p.execute(update(SharingBundle).where(SharingBundle.id == bundle_id, SharingBundle.status == "building")
                      .values(progress=round(min(share, 0.99), 3)))
            p.commit()
    try:
        with read_only_session(session_factory) as rdb:
            sb = rdb.get(SharingBundle, bundle_id)
            if sb is None or sb.status != "building":
                return sb.status if sb else "unknown"
            made = build_content(rdb, rdb.get(DataLock, sb.lock_id), progress)
            rdb.rollback()
        with session_factory() as db:
            sb = db.get(SharingBundle, bundle_id)
            if sb.status != "building":
                return sb.status
            _finish(db, CliActor(f"worker {worker}"), sb, made)
            db.commit()
        return "ready"
    except Exception as e:  # recorded with the bundle, not lost
        log.exception("the sharing bundle %s failed", bundle_id)
        with session_factory() as db:
            db.execute(update(SharingBundle).where(SharingBundle.id == bundle_id, SharingBundle.status == "building")
                       .values(status="failed", error=f"{type(e).__name__}: {e}"[:2000], finished_at=utcnow()))
            db.commit()
        return "failed"


CLAIMED = 0.001  # a bundle's progress once a builder took it (0: nobody has); no column of its own


def claim(db: Session, worker: str, bundle_id: int | None = None) -> int | None:
    """Take a sharing bundle waiting to be built (its progress still 0): one conditional update, so
    two builders (the process the app starts, a `trial worker`) never build the same one; a stale
    build is failed first (:func:`watch`). Commits. Returns the bundle's id, or None."""
    watch(db)
    q = select(SharingBundle.id).where(SharingBundle.status == "building", SharingBundle.progress == 0) \
        .order_by(SharingBundle.id).limit(1)
    if bundle_id is not None:
        q = q.where(SharingBundle.id == bundle_id)
    target = db.execute(q).scalar()
    taken = target is not None and db.execute(
        update(SharingBundle).where(SharingBundle.id == target, SharingBundle.status == "building",
                                    SharingBundle.progress == 0).values(progress=CLAIMED)).rowcount == 1
    db.commit()
    if taken:
        log.info("sharing bundle %s taken by %s", target, worker)
    return target if taken else None


def review_csv(db: Session, actor, lock_id: int) -> bytes:
    """The children of the newest ready sharing bundle whose combination of quasi-identifiers has k
    below K_MIN (pid, site, sex, age band, k), for the manager to review before the bundle is shared:
    kept out of the bundle itself (it points at the rarest children). The manager only; audited."""
    require_role(db, actor, "manager")
    sb = get_zip(db, actor, lock_id)
    rows = [[r["pid"], r["site"], r["sex"], r["age_band"], r["k"]] for r in (sb.disclosure or {}).get("review", [])]
    audit.record(db, actor, "download", "sharing_bundle", sb.id, reason="disclosure review list")
    return formats.csv_bytes(["pid", "site", "sex", "age_band", "k"], rows)


def _suppress_sites(out_tables: list[Table], ps: _Pseudonyms, children: dict[str, tuple], age: dict) -> int:
    """The site of every child whose combination of site, sex and age band has k below K_MIN is
    suppressed (left empty wherever it appears: the site, the stratum, the ADSL's corrected
    strata), so that the shipped data hold no combination rarer than the sex and age band alone
    make it. Returns how many children's site was suppressed; ``children`` is updated (site None)."""
    counts = collections.Counter((ps.site.get(children.get(sid, (None, None))[0]), children.get(sid, (None, None))[1],
                                  age_band(age.get(sid))) for sid in ps.kids)
    rare = {ps.pid[sid] for sid in ps.kids
            if counts[(ps.site.get(children.get(sid, (None, None))[0]), children.get(sid, (None, None))[1],
                       age_band(age.get(sid)))] < K_MIN}
    if not rare:
        return 0
    for t in out_tables:
        names = [v.name for v in t.vars]
        if PID not in names:
            continue
        pi = names.index(PID)
        blank = [i for i, n in enumerate(names) if n in SITE_VARS or n.startswith(KEPT_TEXT_PREFIXES)]
        if blank:
            t.rows = sorted((tuple(None if i in blank and r[pi] in rare else x for i, x in enumerate(r)) for r in t.rows),
                            key=_row_key)
    for sid in ps.kids:
        if ps.pid[sid] in rare:
            children[sid] = (None, children.get(sid, (None, None))[1])
    return len(rare)


def _finish(db: Session, actor, sb: SharingBundle, made: dict) -> None:
    sb.content, sb.sha256, sb.disclosure = made["content"], made["sha256"], made["disclosure"]
    sb.status, sb.progress, sb.finished_at, sb.error = "ready", 1.0, utcnow(), None
    d = made["disclosure"]
    audit.record(db, actor, "build", "sharing_bundle", sb.id,
                 {"status": ("building", "ready"), "sha256": (None, sb.sha256),
                  "manifest_sha256": (None, made["manifest_sha256"]),
                  "below_k_min": (None, len(d["below_k_min"]))})


def failed(db: Session, bundle_id: int, why: str) -> None:
    """A build that could not start or failed: failed with the reason; the caller commits."""
    db.execute(update(SharingBundle).where(SharingBundle.id == bundle_id, SharingBundle.status == "building")
               .values(status="failed", finished_at=utcnow(), error=why[:2000]))


def start_build(db: Session, actor, bundle_id: int, mode: str, url: str, instance: Path) -> None:
    """After the request committed: build inline (``mode`` "inline", TRIAL_LOCK_BUILDER=inline: in
    this session, committed here) or start a detached builder process (``python -m
    trial.interim.sharing ID``, its output appended to ``instance``/worker.log), as a data cut's
    and a lock's bundles are built. A failure is the bundle's state, with its reason."""
    if mode == "inline":
        try:
            build_inline(db, actor, bundle_id)
            db.commit()
        except Exception as e:  # (the request stands: its build's failure is its state)
            log.exception("the inline build of sharing bundle %s failed", bundle_id)
            db.rollback()
            failed(db, bundle_id, f"the build failed: {type(e).__name__}: {e}")
            db.commit()
        return
    if mode == "external":  # the `trial worker` kept running claims it (trial.cli.lock)
        return
    try:
        spawn_detached(["-m", "trial.interim.sharing", str(bundle_id)], url, instance)
    except OSError as e:
        log.error("the builder of sharing bundle %s could not be started: %s", bundle_id, e)
        db.rollback()
        failed(db, bundle_id, f"the builder could not be started: {type(e).__name__}: {e}")
        db.commit()


def main(argv: list[str]) -> int:
    """``python -m trial.interim.sharing ID``: build that sharing bundle (started by the app)."""
    importlib.import_module("trial.models")  # every model mapped (the process starts with nothing loaded)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    bundle_id = int(argv[0])
    engine = make_engine()
    me = f"{socket.gethostname()}:{os.getpid()}"[:100]
    try:
        factory = make_session_factory(engine)
        with factory() as db:
            if claim(db, me, bundle_id) is None:
                log.info("sharing bundle %s: nothing to build (taken, or not waiting)", bundle_id)
                return 0
        state = run(factory, bundle_id, me)
    finally:
        engine.dispose()
    log.info("sharing bundle %s: %s", bundle_id, state)
    return 0 if state == "ready" else 1


# --- the de-identification -----------------------------------------------------------------------

def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _file_name(name: str, fmt: str) -> str:
    return f"analysis/{name}.{fmt}" if name in ANALYSIS_TABLES else f"{fmt}/{name}.{fmt}"


def _locked_manifest(db: Session, lock: DataLock) -> tuple[dict[str, str], str]:
    """The unblinded bundle's manifest (file -> sha256) and its own sha256."""
    content = db.execute(select(LockBundle.content).where(LockBundle.lock_id == lock.id,
                                                          LockBundle.variant == "unblinded")).scalar_one()
    with zipfile.ZipFile(io.BytesIO(content)) as z:
        name = next(n for n in z.namelist() if n.endswith("/manifest.sha256"))
        raw = z.read(name)
    sums = {}
    for line in raw.decode().splitlines():
        sha, _, path = line.partition("  ")
        sums[path] = sha
    return sums, _sha(raw)


def age_band(months: int | None) -> str:
    if months is None:
        return UNKNOWN_BAND
    for low, high, label in AGE_BANDS:
        if months >= low and (high is None or months <= high):
            return label
    return UNKNOWN_BAND


def _day(value) -> dt.date | None:
    if value in (None, ""):
        return None
    return dt.date.fromisoformat(str(value)[:10])


def _text_kept(v: Var) -> bool:
    return v.codes is not None or v.name in KEPT_TEXT or v.name.startswith(KEPT_TEXT_PREFIXES)


def _site_pattern(codes: list[str]) -> re.Pattern | None:
    if not codes:
        return None
    return re.compile(r"(?<![A-Za-z0-9])(" + "|".join(re.escape(c) for c in sorted(codes, key=len, reverse=True))
                      + r")(?![A-Za-z0-9])")


def _row_key(row: tuple) -> tuple:
    return tuple((0, "") if v is None else (1, v) if isinstance(v, (int, float)) else (2, str(v)) for v in row)


@dataclass
class _Pseudonyms:
    """The de-identification's keys, drawn at random: the children's pids, the sites' codes, the
    internal record numbers' new numbers, and the pattern that finds a site's code in a text."""
    kids: list[str]
    pid: dict[str, str]
    site: dict[str, str]
    pattern: re.Pattern | None
    renumber: dict[str, dict]


def _randomized_children(adsl: Table | None, particip: Table | None) -> tuple[dict[str, dt.date], dict[str, int | None]]:
    """The randomized children: their randomization day (the ADSL's, the site's calendar) and their
    age in months at randomization (the ADSL's, else from the date of birth)."""
    randomized: dict[str, dt.date] = {}
    age: dict[str, int | None] = {}
    if adsl is not None:
        ix = {v.name: i for i, v in enumerate(adsl.vars)}
        for r in adsl.rows:
            if r[ix["randdt"]]:
                randomized[r[ix[CHILD]]] = _day(r[ix["randdt"]])
                age[r[ix[CHILD]]] = r[ix["agerand"]] if "agerand" in ix else None
    if particip is not None:
        ix = {v.name: i for i, v in enumerate(particip.vars)}
        for r in particip.rows:
            sid, rd = r[ix[CHILD]], _day(r[ix["randdt"]]) if "randdt" in ix else None
            if rd is not None and sid not in randomized:
                randomized[sid] = rd
            if sid in randomized and age.get(sid) is None and "brthdt" in ix and r[ix["brthdt"]]:
                age[sid] = age_in_months(_day(r[ix["brthdt"]]), randomized[sid])
    return randomized, age


def _pseudonyms(tables: list[Table], randomized: dict, sites: dict, rng) -> _Pseudonyms:
    """The pseudonyms of the children, the sites and the internal record numbers, in a random order."""
    kids = sorted(randomized)
    numbers = list(range(1, len(kids) + 1))
    rng.shuffle(numbers)
    site_codes = sorted(sites)
    order = list(range(1, len(site_codes) + 1))
    rng.shuffle(order)
    width = max(2, len(str(len(site_codes))))
    renumber: dict[str, dict] = {}
    for name in RENUMBERED:
        values = sorted({r[i] for t in tables for i, v in enumerate(t.vars) if v.name == name for r in t.rows
                         if r[i] is not None})
        new = list(range(1, len(values) + 1))
        rng.shuffle(new)
        renumber[name] = dict(zip(values, new))
    return _Pseudonyms(kids, {sid: f"C{n:05d}" for sid, n in zip(kids, numbers)},
                       {code: f"S{n:0{width}d}" for code, n in zip(site_codes, order)},
                       _site_pattern(site_codes), renumber)


def _plan(t: Table, removed: list[str]) -> list[tuple[Var, int, str]]:
    """What becomes of each variable of a table: (output Var, source index, kind), the variables
    taken out added to ``removed`` with the reason."""
    linked = any(v.name == CHILD for v in t.vars)
    plan = []
    for i, v in enumerate(t.vars):
        if v.name == CHILD:
            plan.append((Var(PID, "Pseudonymous child ID (random)", "str"), i, "pid"))
        elif v.name in DROPPED_VARS:
            removed.append(f"{t.name}.{v.name}: {DROPPED_VARS[v.name]}")
        elif v.type in ("date", "datetime"):
            if not linked:
                removed.append(f"{t.name}.{v.name}: a calendar date of no child (no day to count from)")
                continue
            plan.append((Var(v.name, f"{v.label}: days from randomization", "int",
                             units="days from randomization (day 0)", source=v.source), i, "day"))
        elif v.type == "str" and not _text_kept(v):
            removed.append(f"{t.name}.{v.name}: {v.label} (free text, or who did it)")
        elif v.name in RENUMBERED:
            plan.append((replace(v), i, "renumber"))
        elif v.type == "str":
            plan.append((replace(v), i, "text"))
        else:
            plan.append((replace(v), i, "keep"))
        if (t.name == "particip" and v.name == "brthdt" and "agerand" not in {x.name for x in t.vars}) \
                or v.name == "agerand":
            plan.append((Var(AGE_VAR, "Age at randomization, band (months)", "str",
                             source="date of birth and randomization day"), i, "age"))
    return plan


def _cell(kind: str, value, name: str, sid, ref: dt.date | None, age: int | None, ps: _Pseudonyms):
    """One value of a row, de-identified as its plan's kind says."""
    if kind == "pid":
        return ps.pid.get(sid)
    if kind == "day":
        d = _day(value)
        return (d - ref).days if d is not None and ref is not None else None
    if kind == "age":
        return age_band(age)
    if kind == "renumber":
        return ps.renumber[name].get(value) if value is not None else None
    if kind == "text" and isinstance(value, str) and ps.pattern is not None:
        return ps.pattern.sub(lambda m: ps.site[m.group(1)], value)
    return value


def _deidentified_table(t: Table, plan: list, randomized: dict, age: dict, ps: _Pseudonyms,
                        children: dict[str, tuple]) -> Table:
    """A table's rows de-identified (those of children not randomized left out, unless the table
    keeps them) and sorted by their values; the participants' table also gives each child's site
    and sex (``children``)."""
    linked = any(v.name == CHILD for v in t.vars)
    child_ix = next((i for i, v in enumerate(t.vars) if v.name == CHILD), None)
    source_names = [v.name for v in t.vars]
    kept_names = [p[0].name for p in plan]
    rows = []
    for r in t.rows:
        sid = r[child_ix] if child_ix is not None else None
        known = sid in randomized
        if linked and not known and t.name not in UNLINKED_KEPT:
            continue
        rows.append(tuple(_cell(kind, r[i], t.vars[i].name, sid, randomized.get(sid), age.get(sid) if known else None, ps)
                          for _, i, kind in plan))
        if t.name == "particip" and known:
            children[sid] = (r[source_names.index("site")] if "site" in kept_names else None,
                             r[source_names.index("sex")] if "sex" in kept_names else None)
    rows.sort(key=_row_key)
    return Table(t.name, t.label, [p[0] for p in plan], rows, {})


def _disclosure(ps: _Pseudonyms, children: dict[str, tuple], age: dict) -> tuple[list, list, list]:
    """k for each combination of pseudonymous site, sex and age band over the randomized children:
    (the combinations, those below K_MIN, their children for review)."""
    counts = collections.Counter()
    child_key = {}
    for sid in ps.kids:
        site, sex = children.get(sid, (None, None))
        key = (ps.site.get(site, None), sex, age_band(age.get(sid)))
        child_key[sid] = key
        counts[key] += 1
    combos = [{"site": s, "sex": x, "age_band": b, "k": k} for (s, x, b), k in
              sorted(counts.items(), key=lambda kv: tuple("" if e is None else e for e in kv[0]))]
    below = [c for c in combos if c["k"] < K_MIN]
    review = sorted(({"pid": ps.pid[sid], "site": key[0], "sex": key[1], "age_band": key[2], "k": counts[key]}
                     for sid, key in child_key.items() if counts[key] < K_MIN), key=lambda r: r["pid"])
    return combos, below, review


def _country(out_tables: list[Table], sites: dict, ps: _Pseudonyms, children: dict[str, tuple],
             age: dict) -> tuple[bool, str]:
    """The country: added to the participants' table only when it narrows nobody down. Returns
    whether it was kept, and why (or why not)."""
    country_of = {code: sites.get(code) for code in sorted(sites)}
    by_country = collections.Counter()
    sites_in = collections.defaultdict(set)
    for sid in ps.kids:
        site, sex = children.get(sid, (None, None))
        c = country_of.get(site)
        by_country[(c, sex, age_band(age.get(sid)))] += 1
        sites_in[c].add(site)
    kept = bool(ps.kids) and None not in sites_in and all(k >= K_MIN for k in by_country.values()) \
        and all(len(s) >= 2 for s in sites_in.values())
    if kept:
        back = {v: k for k, v in ps.site.items()}
        for t in out_tables:
            if t.name == "particip":
                si = [v.name for v in t.vars].index("site")
                t.vars.append(Var("country", "Country (ISO 3166-1 alpha-2)", "str"))
                t.rows = sorted((r + (country_of.get(back.get(r[si])),) for r in t.rows), key=_row_key)
        return True, (f"kept: every combination of country, sex and age band has at least {K_MIN} children and every "
                      "country has at least two sites")
    reasons = []
    if any(k < K_MIN for k in by_country.values()):
        reasons.append(f"a combination of country, sex and age band has fewer than {K_MIN} children")
    if any(len(s) < 2 for s in sites_in.values()):
        reasons.append("a country has a single site, whose pseudonymous code the country would name")
    if None in sites_in:
        reasons.append("a site has no country recorded")
    return False, "left out: " + ("; ".join(reasons) or "no randomized child")


def deidentify(tables: list[Table], sites: dict[str, str | None], rng: secrets.SystemRandom | None = None) -> dict:
    """The de-identified tables and the disclosure report, from the unblinded bundle's tables and
    the sites' countries (code -> country). Returns {tables, disclosure, removed} (``removed``:
    what was taken out and why, for the README)."""
    rng = rng or secrets.SystemRandom()
    by_name = {t.name: t for t in tables}
    randomized, age = _randomized_children(by_name.get("adsl"), by_name.get("particip"))
    ps = _pseudonyms(tables, randomized, sites, rng)
    removed: dict[str, list[str]] = {"tables": [f"{n}: {why}" for n, why in DROPPED_TABLES.items() if n in by_name],
                                     "variables": []}
    children: dict[str, tuple] = {}  # each randomized child's (site, sex), from the participants' table
    out_tables = [_deidentified_table(t, _plan(t, removed["variables"]), randomized, age, ps, children)
                  for t in tables if t.name not in DROPPED_TABLES]
    country_kept, country_reason = _country(out_tables, sites, ps, children, age)
    suppressed = _suppress_sites(out_tables, ps, children, age)  # then k is counted on the data as shipped
    combos, below, review = _disclosure(ps, children, age)
    disclosure = {"quasi_identifiers": ["site", "sex", "age_band"], "k_min": K_MIN, "children": len(ps.kids),
                  "age_bands": [{"label": label, "from_months": low, "to_months": high} for low, high, label in AGE_BANDS],
                  "combinations": combos, "below_k_min": below, "review": review,
                  "country_kept": country_kept, "country": country_reason, "sites_suppressed": suppressed}
    return {"tables": out_tables, "disclosure": disclosure, "removed": removed}


def build_content(db: Session, lock: DataLock, progress=None) -> dict:
    """Read the lock's unblinded tables, check each against the unblinded bundle's manifest, and make
    the sharing bundle: {content (zip bytes), sha256, manifest_sha256, disclosure}."""
    say = progress or (lambda share: None)
    tables = build_tables(db, False)
    say(0.4)
    sums, locked_manifest = _locked_manifest(db, lock)
    for t in tables:
        name = _file_name(t.name, "csv")
        want = sums.get(name)
        if want is None or _sha(formats.to_csv(t)) != want:
            raise RuntimeError(f"the table {t.name} read now is not the one in lock {lock.id}'s unblinded bundle "
                               f"({name}): the data or the software changed since the lock; nothing was made")
    say(0.5)
    sites = dict(db.execute(select(Site.code, Site.country)).all())
    made = deidentify(tables, sites)
    say(0.6)
    return _zip(lock, made, locked_manifest, say)


def _zip(lock: DataLock, made: dict, locked_manifest: str, say) -> dict:
    buf = io.BytesIO()
    sums: dict[str, str] = {}
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as z:
        def add(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(PREFIX + name, date_time=STAMP)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o444 << 16
            z.writestr(info, data)
            sums[name] = _sha(data)

        tables = made["tables"]
        for n, t in enumerate(tables, 1):
            add(_file_name(t.name, "csv"), formats.to_csv(t))
            stata, sas, _ = formats.columns(t)
            add(_file_name(t.name, "dta"), formats.to_dta(t, FILE_WHEN, stata))
            if t.rows:  # (a transport file of no observations is valid, but pandas.read_sas cannot read it)
                add(_file_name(t.name, "xpt"), formats.to_xpt(t, FILE_WHEN, sas)[0])
            say(0.6 + 0.35 * n / len(tables))
        add("dictionary.csv", formats.dictionary_csv(tables))
        d = made["disclosure"]
        add("disclosure.csv", formats.csv_bytes(["site", "sex", "age_band", "k", "below_k_min"],
                                                [[c["site"], c["sex"], c["age_band"], c["k"], int(c["k"] < K_MIN)]
                                                 for c in d["combinations"]]))
        # (the children to review, by pid, are the manager's, not the bundle's: review_csv)
        add("disclosure.json", json.dumps({k: v for k, v in d.items() if k != "review"}, indent=2,
                                          sort_keys=True).encode())
        add("README.txt", readme(lock, made, locked_manifest).encode())
        manifest = "".join(f"{sums[n]}  {n}\n" for n in sorted(sums)).encode()
        info = zipfile.ZipInfo(PREFIX + "manifest.sha256", date_time=STAMP)
        info.external_attr = 0o444 << 16
        z.writestr(info, manifest)
    content = buf.getvalue()
    return {"content": content, "sha256": _sha(content), "manifest_sha256": _sha(manifest), "disclosure": d}


def _readme_removed(d: dict, made: dict) -> list[str]:
    """The README's account of what was removed or changed, and why."""
    return [
        "What was removed or changed, and why",
        "------------------------------------",
        "- Names and study ids: no name is in the bundle; the study id is replaced by a pseudonymous id (pid),",
        "  given at random to each randomized child for this bundle alone (not derived from the study id; no key",
        "  is kept, so it cannot be traced back, and another bundle has other ids). Only randomized children are",
        "  included. Rows are sorted by their values, so their order tells nothing either.",
        "- Calendar dates: every date and date-time is replaced by the number of days from the child's",
        "  randomization (day 0 = the day of randomization at the site): dates identify people and events.",
        "  A date of a row of no randomized child (a screening nobody randomized) is left empty.",
        "- Date of birth: removed; the age in months at randomization (agerand) and its band (ageband) stand in",
        "  their place (an exact age narrows a child down).",
        "- Screening log: left out whole (children who were never randomized are not in the bundle at all).",
        "- The consent's language and signer: removed (with the site they narrow a family down).",
        f"- Site of rare children: for the {d.get('sites_suppressed', 0)} children whose combination of site, sex and",
        f"  age band had fewer than {K_MIN} children, the site (and stratum) is left empty.",
        "- Free text of every kind: removed (notes, descriptions, reasons, terms typed in, query texts), because",
        "  free text can name or describe a person. Kept are only the text variables whose values the system",
        "  makes (keys of fixed lists, the protocol's labels): " + ", ".join(sorted(KEPT_TEXT)) + ".",
        "- Staff: who entered, raised, verified or led something (e-mail addresses, therapists' codes) is removed.",
        "- Sites: each site has a random code (S01, ...) wherever its code appeared, the strata included.",
        f"- Country: {d['country']}.",
        "- Internal record numbers that link tables (" + ", ".join(RENUMBERED) + ") are renumbered in a random",
        "  order; file timestamps are a fixed 1 January 1980, not a day of the trial.",
        "",
        "Tables left out whole:",
        *(f"- {x}" for x in made["removed"]["tables"]),
        "",
        "Variables removed:",
        *(f"- {x}" for x in made["removed"]["variables"]),
        "",
    ]


def readme(lock: DataLock, made: dict, locked_manifest: str) -> str:
    d = made["disclosure"]
    bands = "; ".join(b["label"] for b in d["age_bands"])
    lines = [
        "De-identified data of the trial, for sharing",
        "=============================================",
        "",
        f"Made from the tables of hard lock {lock.id} (version {lock.version}), unblinded bundle, whose manifest has",
        f"the SHA-256 {locked_manifest}; every table was checked against that manifest before it was de-identified.",
        "Formats as in the bundle: CSV (csv/), Stata 15 (dta/), SAS transport v5 (xpt/; tables with rows), the",
        "analysis dataset under analysis/; dictionary.csv describes every variable. manifest.sha256 has the",
        "SHA-256 of every file.",
        "",
        *_readme_removed(d, made),
        "Disclosure report",
        "-----------------",
        "k is the number of children sharing a combination of the quasi-identifiers site, sex and age band (age at",
        f"randomization: {bands}), counted on the data as shipped (after the sites' suppression above).",
        f"disclosure.csv has k for every combination; a combination with k below {K_MIN} is marked. The list of",
        "its children is not in this bundle: the trial's manager reviews it before the data are shared.",
        "disclosure.json holds the same figures.",
        (f"{d['children']} children; {len(d['combinations'])} combinations; {len(d['below_k_min'])} with k below "
         f"{K_MIN} ({len(d['review'])} children to review)."),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
