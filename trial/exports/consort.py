"""CONSORT counts from one per-participant disposition table: every box is a count over it, so the
boxes add up by construction; :func:`reconcile` checks that they do and that every screening lands
in exactly one path, and fails loudly otherwise."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from trial.catalogue import N_, Joined, Label, Msg
from trial.consent.models import ConsentWithdrawal
from trial.course.models import TherapySession
from trial.errors import DomainError
from trial.outcomes.models import NotDone
from trial.outcomes.notdone import missing_reasons
from trial.participants.models import Allocation, Assessment, Participant, Screening, StatusEvent
from trial.protocol.service import current as current_protocol
from trial.scope import is_blinded, require_role
from trial.sites.models import Site
from trial.sites.service import get_by_code


class ConsortError(DomainError):
    """The flow diagram does not add up: the data are inconsistent. Fails loudly (500)."""
    status, code = 500, "consort_inconsistent"


@dataclass
class Row:
    screening_id: int
    site: str
    outcome: str
    study_id: str | None = None
    arm: str | None = None
    received: bool | None = None
    not_received_reason: str | None = None
    lost: str | None = None                  # reason, if lost to follow-up
    discontinued: str | None = None          # reason, if discontinued / withdrawn
    analysed: bool = False
    excluded_reason: str | None = None
    withdrawal: str | None = None            # a withdrawal of consent's box (WITHDRAWAL_BOXES), if any
    path: list[str] = field(default_factory=list)


def disposition(db: Session, site_code: str | None = None) -> list[Row]:
    """One row per screening (at the site, when given), in screening order: its outcome and, for an
    enrolled child, the allocation and what became of it; with the screening's path through the
    diagram."""
    content = current_protocol(db).content
    arms = {a["key"]: a for a in content["arms"]}
    minimum = content["course"]["min_attended_sessions"]
    facts = _Facts(db, content["primary_outcome"], content)
    q = select(Screening.id, Screening.site_id, Screening.outcome).order_by(Screening.id)
    if site_code:
        q = q.join(Site, Site.id == Screening.site_id).where(Site.code == site_code.upper())
    rows = []
    for s in db.execute(q).all():
        row = Row(s.id, facts.codes[s.site_id], s.outcome)
        p = facts.parts.get(s.id)
        if p is not None:
            row.study_id = p.study_id
            arms_of = facts.allocs.get(p.id, [])
            if len(arms_of) > 1:
                raise ConsortError(Msg(N_("CONSORT does not reconcile: %(study_id)s has %(n)s allocations"),
                                       study_id=p.study_id, n=len(arms_of)))
            if arms_of:
                row.arm = arms_of[0]
                _follow(row, p.id, facts, arms[row.arm]["sessions_per_week"] > 0, minimum)
        _add_path(row, s.outcome)
        rows.append(row)
    return rows


class _Facts:
    """What the disposition reads of every child: the site codes, the participants by screening,
    their allocations, sessions attended in the course, status events, and who has the primary
    outcome."""

    def __init__(self, db: Session, prim: dict, content: dict | None = None):
        self.codes = dict(db.execute(select(Site.id, Site.code)).all())
        self.parts = {p.screening_id: p for p in db.execute(select(Participant.id, Participant.study_id,
                                                                   Participant.screening_id)).all()}
        self.allocs: dict[int, list] = {}
        for a in db.execute(select(Allocation.participant_id, Allocation.arm)).all():
            self.allocs.setdefault(a.participant_id, []).append(a.arm)
        self.attended = dict(db.execute(select(TherapySession.participant_id, func.count()).where(
            TherapySession.attendance == "attended", TherapySession.outside_course.is_(False))
            .group_by(TherapySession.participant_id)).all())
        self.events: dict[int, list] = {}
        for e in db.execute(select(StatusEvent.participant_id, StatusEvent.type, StatusEvent.reason)
                            .order_by(StatusEvent.id)).all():
            self.events.setdefault(e.participant_id, []).append(e)
        scopes: dict[int, set] = {}
        for pid, scope in db.execute(select(ConsentWithdrawal.participant_id, ConsentWithdrawal.scope)).all():
            scopes.setdefault(pid, set()).add(scope)
        # a child's withdrawals of consent as one box: "all", or both partial scopes, is complete
        self.withdrawal = {pid: ("all" if "all" in s or len(s) > 1 else next(iter(s))) for pid, s in scopes.items()}
        self.primary = {pid for pid, values in db.execute(select(Assessment.participant_id, Assessment.values).where(
            Assessment.visit == prim["visit"], Assessment.instrument == prim["instrument"])).all()
            if values.get(prim["field"]) is not None}
        # the primary outcome's form recorded as not done: why (the protocol's reason, in English)
        words = {r["key"]: r["label"] for r in missing_reasons(content or {})}
        self.not_done = {pid: words.get(reason, reason) for pid, reason in db.execute(
            select(NotDone.participant_id, NotDone.reason).where(
                NotDone.visit == prim["visit"], NotDone.instrument == prim["instrument"])).all()}


def _follow(row: Row, p_id: int, facts: _Facts, sessions: bool, minimum: int) -> None:
    """A randomized child's course: whether the allocated intervention was received (in an arm
    with sessions, at least ``minimum`` attended in the course), lost to follow-up, discontinued,
    analysed or excluded from the analysis (and why)."""
    evs = facts.events.get(p_id, [])
    not_rec = next((e for e in evs if e.type == "not_received"), None)
    if sessions:
        row.received = facts.attended.get(p_id, 0) >= minimum
        if not row.received:
            row.not_received_reason = not_rec.reason if not_rec else "no session attended"
    else:
        row.received = not_rec is None
        if not_rec:
            row.not_received_reason = not_rec.reason
    lost = next((e for e in evs if e.type == "lost_to_follow_up"), None)
    row.lost = lost.reason if lost else None
    disc = next((e for e in evs if e.type in ("discontinued_intervention", "withdrawn")), None)
    row.discontinued = disc.reason if disc else None
    row.analysed = p_id in facts.primary
    row.withdrawal = WITHDRAWAL_BOXES.get(facts.withdrawal.get(p_id))
    if not row.analysed:
        died = next((e for e in evs if e.type == "died"), None)
        withdrawn = next((e for e in evs if e.type == "withdrawn"), None)
        nd = facts.not_done.get(p_id)
        row.excluded_reason = ("died" if died else "withdrawn" if withdrawn else "lost to follow-up" if lost else
                               f"not done: {nd}" if nd else "no primary outcome")


# the withdrawals of consent by scope (issue 28), each child counted once by its widest withdrawal
WITHDRAWAL_BOXES = {"intervention": "discontinued_intervention", "follow_up": "withdrew_from_follow_up",
                    "all": "withdrew_completely"}


def _add_path(row: Row, outcome: str) -> None:
    """The paths the screening takes through the diagram (exactly one is allowed: reconcile checks)."""
    if row.arm is not None:
        row.path.append("randomized")
    if outcome == "not_eligible":
        row.path.append("not_meeting_inclusion_criteria")
    elif outcome == "declined":
        row.path.append("declined_to_participate")
    elif row.arm is None:
        row.path.append("other_reasons")


def counts(rows: list[Row], arms: list[dict]) -> dict:
    assessed = len(rows)
    randomized = [r for r in rows if r.arm is not None]
    excluded = Counter(r.path[0] for r in rows if r.arm is None and r.path)
    out = {"assessed_for_eligibility": assessed,
           "excluded": {"total": assessed - len(randomized),
                        "not_meeting_inclusion_criteria": excluded["not_meeting_inclusion_criteria"],
                        "declined_to_participate": excluded["declined_to_participate"],
                        "other_reasons": excluded["other_reasons"]},
           "randomized": len(randomized), "arms": {}}
    for arm in arms:
        members = [r for r in randomized if r.arm == arm["key"]]
        not_rec = [r for r in members if not r.received]
        lost = [r for r in members if r.lost]
        disc = [r for r in members if r.discontinued]
        excl = [r for r in members if not r.analysed]
        out["arms"][arm["key"]] = {
            "label": arm["label"],
            "allocated": len(members),
            "received_allocated_intervention": len(members) - len(not_rec),
            "did_not_receive_allocated_intervention": {"total": len(not_rec), "reasons": dict(sorted(Counter(r.not_received_reason for r in not_rec).items()))},
            "lost_to_follow_up": {"total": len(lost), "reasons": dict(sorted(Counter(r.lost for r in lost).items()))},
            "discontinued_intervention": {"total": len(disc), "reasons": dict(sorted(Counter(r.discontinued for r in disc).items()))},
            "analysed": len(members) - len(excl),
            "excluded_from_analysis": {"total": len(excl), "reasons": dict(sorted(Counter(r.excluded_reason for r in excl).items()))},
            "withdrawals_of_consent": {box: sum(1 for r in members if r.withdrawal == box)
                                       for box in WITHDRAWAL_BOXES.values()},
        }
    return out


def reconcile(rows: list[Row], c: dict) -> list[str]:
    """Every check the diagram must pass; an empty list means it adds up."""
    problems = []
    for r in rows:
        if len(r.path) != 1:
            problems.append(Msg(N_("screening %(id)s (%(study_id)s) lands in %(n)s paths: %(paths)s"), id=r.screening_id,
                                study_id=r.study_id or Msg(N_("not enrolled")), n=len(r.path),
                                paths=", ".join(r.path) or Msg(N_("none"))))
    ex = c["excluded"]
    if ex["total"] != ex["not_meeting_inclusion_criteria"] + ex["declined_to_participate"] + ex["other_reasons"]:
        problems.append(Msg(N_("excluded total %(n)s is not the sum of its reasons"), n=ex["total"]))
    if c["assessed_for_eligibility"] != ex["total"] + c["randomized"]:
        problems.append(Msg(N_("assessed %(assessed)s != excluded %(excluded)s + randomized %(randomized)s"),
                            assessed=c["assessed_for_eligibility"], excluded=ex["total"], randomized=c["randomized"]))
    if c["randomized"] != sum(a["allocated"] for a in c["arms"].values()):
        problems.append(N_("randomized is not the sum of the arms' allocations"))
    for key, a in c["arms"].items():
        arm = Label("arm", key, a.get("label") or key)
        d = a["did_not_receive_allocated_intervention"]
        if a["allocated"] != a["received_allocated_intervention"] + d["total"]:
            problems.append(Msg(N_("arm %(arm)s: allocated != received + did not receive"), arm=arm))
        if a["analysed"] + a["excluded_from_analysis"]["total"] != a["allocated"]:
            problems.append(Msg(N_("arm %(arm)s: analysed + excluded from analysis != allocated"), arm=arm))
        for box in ("did_not_receive_allocated_intervention", "lost_to_follow_up", "discontinued_intervention",
                    "excluded_from_analysis"):
            if sum(a[box]["reasons"].values()) != a[box]["total"]:
                problems.append(Msg(N_("arm %(arm)s: the reasons of %(box)s do not add up to its total"), arm=arm, box=box))
    return problems


def remember(memo: dict | None, key: str, make):
    """``make()``, kept in ``memo`` under ``key`` when one is given: a lock's bundles make the
    reports of both variants from the same data, read once (``memo`` lives for that build only)."""
    if memo is None:
        return make()
    if key not in memo:
        memo[key] = make()
    return memo[key]


def consort(db: Session, actor, site_code: str | None = None, blinded: bool | None = None, memo: dict | None = None) -> dict:
    """The CONSORT counts of API.md, overall or for one site; raises ConsortError if they do not
    reconcile. By arm for unblinded readers; pooled over the arms for blinded ones."""
    require_role(db, actor, "manager", "statistician")
    if site_code:
        get_by_code(db, site_code)
    blinded = is_blinded(db, actor) if blinded is None else blinded
    arms = current_protocol(db).content["arms"]
    rows = remember(memo, f"disposition {site_code}", lambda: disposition(db, site_code))
    c = counts(rows, arms)
    problems = reconcile(rows, c)
    if problems:
        raise ConsortError(Msg(N_("CONSORT does not reconcile: %(problems)s"),
                               problems=Joined(p if isinstance(p, Msg) else Msg(p) for p in problems)))
    return pool(c) if blinded else c


POOLED_KEY = "all"
POOLED_LABEL = "All arms (blinded)"
# Withheld even when pooled: a child randomized today counts as "did not receive" in a music arm
# (no session yet) and as "received" in usual care, so a running pooled count of these boxes
# gives each new allocation away; "discontinued intervention" exists only where there is one.
WITHHELD = ("received_allocated_intervention", "did_not_receive_allocated_intervention", "discontinued_intervention")


def _merge(boxes: list[dict]) -> dict:
    reasons: Counter = Counter()
    for b in boxes:
        reasons.update(b["reasons"])
    return {"total": sum(b["total"] for b in boxes), "reasons": dict(sorted(reasons.items()))}


def pool(c: dict) -> dict:
    """The counts for a blinded reader: one column, ``all``, every box summed over the arms, and
    the boxes about receiving or stopping the intervention withheld (null)."""
    boxes = list(c["arms"].values())
    out = dict(c)
    out["arms"] = {POOLED_KEY: {
        "label": POOLED_LABEL,
        "allocated": sum(b["allocated"] for b in boxes),
        "received_allocated_intervention": None,
        "did_not_receive_allocated_intervention": {"total": None, "reasons": {}},
        # the reasons are free text written by unblinded staff, which can name the intervention
        "lost_to_follow_up": {"total": sum(b["lost_to_follow_up"]["total"] for b in boxes), "reasons": {}},
        "discontinued_intervention": {"total": None, "reasons": {}},
        "analysed": sum(b["analysed"] for b in boxes),
        "excluded_from_analysis": _merge([b["excluded_from_analysis"] for b in boxes]),
        # stopping the intervention withheld, as its box above; leaving the follow-up is pooled
        "withdrawals_of_consent": {"discontinued_intervention": None,
                                   **{k: sum(b["withdrawals_of_consent"][k] for b in boxes)
                                      for k in ("withdrew_from_follow_up", "withdrew_completely")}},
    }}
    out["withheld_while_blinded"] = list(WITHHELD) + ["lost_to_follow_up.reasons",
                                                      "withdrawals_of_consent.discontinued_intervention"]
    return out
