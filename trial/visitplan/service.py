"""Keeping the visit plan: :func:`replan` re-derives a participant's rows from the source
records (allocation, assessments, status events, withdrawals of consent to the follow-up, the
protocol in force) inside the writer's own transaction: at randomization, when a form is entered,
when a final status event or such a withdrawal is recorded.
A protocol amendment re-plans everyone (``trial protocol load``; and :func:`ensure_current`
before any read, in case a version was loaded another way). :func:`stale` compares the plan with
a fresh derivation, for the daily checks and the tests."""
from __future__ import annotations

import hashlib

from sqlalchemy import column, delete, insert, select, table
from sqlalchemy.orm import Session

from trial.consent.withdrawal import follow_up_ended
from trial.participants.models import FINAL_EVENTS, Allocation, Assessment, Participant, StatusEvent
from trial.protocol.service import ALWAYS, form_rules
from trial.protocol.service import current as current_protocol
from trial.sites.models import Site
from trial.timeline import local_date, visit_window
from trial.visitplan.models import PlannedVisit, VisitPlanState

BATCH = 2000  # participants re-planned per round trip when re-planning many
# the forms recorded as not done (trial.outcomes.models.NotDone, a layer above): settled as if entered
NOT_DONE = table("not_done", column("participant_id"), column("visit"), column("instrument"))


def _rows(pid: int, site_id: int, at, tz: str, content: dict, version: int, entered: dict, final_on,
          rules: dict) -> list[dict]:
    """The child's plan: a row per visit after baseline with the forms due there for this child (a
    form an amendment added only if it applies to the child: :class:`trial.protocol.service.FormRule`;
    a visit with none is not in the plan)."""
    start = local_date(at, tz)
    rows = []
    for idx, v in enumerate(content["visits"]):
        if v["key"] == "baseline":
            continue
        lo, target, hi = visit_window(v, start)
        forms = [ins for ins in content["instruments"]
                 if v["key"] in ins["visits"] and rules.get((v["key"], ins["key"]), ALWAYS).applies(start, hi)]
        if not forms and any(v["key"] in ins["visits"] for ins in content["instruments"]):
            continue
        row = {"participant_id": pid, "site_id": site_id, "visit": v["key"], "visit_idx": idx, "randomized_at": at,
               "opens": lo, "target": target, "closes": hi, "ended": final_on is not None and final_on <= hi,
               "blinded_forms": 0, "blinded_entered": 0, "blinded_late": False,
               "other_forms": 0, "other_entered": 0, "other_late": False, "protocol_version": version}
        for ins in forms:
            kind = "blinded" if ins["blinded"] else "other"
            row[f"{kind}_forms"] += 1
            late = entered.get((pid, v["key"], ins["key"]))
            if late is not None:
                row[f"{kind}_entered"] += 1
                row[f"{kind}_late"] = row[f"{kind}_late"] or bool(late)
        rows.append(row)
    return rows


def plan_new(db: Session, participant_id: int, site_id: int, randomized_at, tz: str, content: dict, version: int,
             sha: str) -> None:
    """The plan of a child randomized now (randomization's hot path: one INSERT; the amendments'
    rules are read once per process and version). A child is randomized with no form after the
    baseline and no final status event (randomization refuses one who withdrew or died), so
    nothing is entered or ended yet."""
    rules = form_rules(db, version, sha)
    db.execute(insert(PlannedVisit), _rows(participant_id, site_id, randomized_at, tz, content, version, {}, None, rules))


def derive(db: Session, participant_ids: list[int]) -> list[dict]:
    """The plan rows (one per post-randomization visit) of these participants, derived from the source records (no writes)."""
    if not participant_ids:
        return []
    pv = current_protocol(db)
    content = pv.content
    tzs = dict(db.execute(select(Site.id, Site.timezone)).all())
    allocs = db.execute(select(Allocation.participant_id, Allocation.randomized_at, Participant.site_id)
                        .join(Participant, Participant.id == Allocation.participant_id)
                        .where(Allocation.participant_id.in_(participant_ids))).all()
    if not allocs:
        return []
    ids = [a.participant_id for a in allocs]
    entered = {(pid, v, i): oow for pid, v, i, oow in db.execute(
        select(Assessment.participant_id, Assessment.visit, Assessment.instrument, Assessment.out_of_window)
        .where(Assessment.participant_id.in_(ids)))}
    for pid, v, i in db.execute(select(NOT_DONE.c.participant_id, NOT_DONE.c.visit, NOT_DONE.c.instrument)
                                .where(NOT_DONE.c.participant_id.in_(ids))):
        entered.setdefault((pid, v, i), False)  # a form not done: settled (the worklists stop listing it), not late
    final: dict[int, object] = {}
    for pid, on in db.execute(select(StatusEvent.participant_id, StatusEvent.on)
                              .where(StatusEvent.participant_id.in_(ids), StatusEvent.type.in_(FINAL_EVENTS))):
        final[pid] = min(on, final.get(pid, on))
    for pid, on in follow_up_ended(db, ids).items():  # a withdrawal of consent to the follow-up ends it too
        final[pid] = min(on, final.get(pid, on))
    rows = []
    rules = form_rules(db)
    for pid, at, site_id in allocs:
        rows += _rows(pid, site_id, at, tzs[site_id], content, pv.version, entered, final.get(pid), rules)
    return rows


def replan(db: Session, participant_ids: list[int]) -> int:
    """Re-derive these participants' plan rows (same transaction as the change that calls it).
    Returns how many rows they have now."""
    ids = sorted(set(participant_ids))
    n = 0
    for i in range(0, len(ids), BATCH):
        chunk = ids[i:i + BATCH]
        db.flush()  # the writer's pending rows first: the derivation reads them
        db.execute(delete(PlannedVisit).where(PlannedVisit.participant_id.in_(chunk)))
        rows = derive(db, chunk)
        if rows:
            db.execute(insert(PlannedVisit), rows)
        n += len(rows)
    return n


def sites_key(db: Session) -> str:
    """A digest of every site's time zone (a site's zone sets its children's local days)."""
    rows = db.execute(select(Site.id, Site.timezone).order_by(Site.id)).all()
    return hashlib.sha256(repr([tuple(r) for r in rows]).encode()).hexdigest()


def replan_all(db: Session) -> int:
    """Re-plan every randomized participant (after a protocol amendment or a change of a site's
    time zone, or for data loaded in bulk) and record what the plan was derived under. Returns
    the number of rows."""
    ids = list(db.execute(select(Allocation.participant_id).order_by(Allocation.participant_id)).scalars())
    db.execute(delete(PlannedVisit))
    n = replan(db, ids)
    state = db.get(VisitPlanState, 1) or VisitPlanState(id=1)
    state.protocol_version, state.sites_key = current_protocol(db).version, sites_key(db)
    db.add(state)
    db.flush()
    return n


def ensure_current(db: Session, writable: bool = True) -> bool:
    """Re-plan everyone if the plan was derived under another protocol version or other site
    time zones than those in force now (only where writes are allowed: under a lock neither can
    change). One row read when nothing changed. True if it re-planned."""
    if not writable:
        return False
    state = db.get(VisitPlanState, 1)
    if state is not None and state.protocol_version == current_protocol(db).version and state.sites_key == sites_key(db):
        return False
    replan_all(db)
    return True


def stale(db: Session, participant_ids: list[int] | None = None) -> list[tuple]:
    """The rows where the stored plan and a fresh derivation differ (empty when the plan is
    right), as (participant id, visit)."""
    if participant_ids is None:
        participant_ids = list(db.execute(select(Allocation.participant_id)).scalars())
    fields = ("site_id", "visit_idx", "randomized_at", "opens", "target", "closes", "ended", "blinded_forms",
              "blinded_entered", "blinded_late", "other_forms", "other_entered", "other_late", "protocol_version")
    want = {(r["participant_id"], r["visit"]): tuple(r[f] for f in fields)
            for i in range(0, len(participant_ids), BATCH) for r in derive(db, participant_ids[i:i + BATCH])}
    have = {}
    for i in range(0, len(participant_ids), BATCH):
        for r in db.execute(select(PlannedVisit).where(PlannedVisit.participant_id.in_(participant_ids[i:i + BATCH]))).scalars():
            have[(r.participant_id, r.visit)] = tuple(getattr(r, f) for f in fields)
    return sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
