"""Who a participant is, as every domain above needs it: lookup with visibility (site scoping and,
for therapists, the music-therapy arms), the allocation, the status from the events, whether the
record still accepts data, the randomization day, and the view of a participant each role may
see (the arm only for unblinded readers)."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import and_, case, exists, or_, select
from sqlalchemy.orm import Session

from trial.catalogue import N_, Msg, terms
from trial.db import lock_for_update
from trial.errors import Conflict, Forbidden, NotFound, ValidationError
from trial.paging import Page, PageRequest, ordered, paginate, sort_key
from trial.participants.models import (
    ARM_REVEALING_EVENTS,
    FINAL_EVENTS,
    Allocation,
    Assessment,
    Participant,
    StatusEvent,
)
from trial.protocol.service import current as current_protocol
from trial.scope import can_see_arm, is_cli, visible_site_ids
from trial.sites.models import Site
from trial.sites.service import get_by_code
from trial.timeline import local_date

# a final event's refusal of any further data, a whole sentence each for the catalogue
FINAL_WORDS = {"withdrawn": N_("%(study_id)s: withdrawn on %(day)s; no further data is accepted."),
               "died": N_("%(study_id)s: died on %(day)s; no further data is accepted.")}
# the intervention's end, after which no session is accepted (the child is still followed up)
STOPPED_WORDS = {
    "discontinued_intervention": N_("%(study_id)s: the intervention was discontinued on %(day)s; no sessions after "
                                    "that date (the child is still followed up)."),
    "not_received": N_("%(study_id)s: the intervention was not received (%(day)s); no sessions after that date "
                       "(the child is still followed up)."),
}


def final_refusal(p: Participant, e: StatusEvent) -> Conflict:
    """The refusal of new data for a participant withdrawn or deceased (``e``, a final event)."""
    return Conflict(Msg(FINAL_WORDS[e.type], study_id=p.study_id, day=e.on))


def age_in_months(born: dt.date, on: dt.date) -> int:
    months = (on.year - born.year) * 12 + (on.month - born.month)
    return months - (1 if on.day < born.day else 0)


def _music_arms(db: Session) -> set[str]:
    return {a["key"] for a in current_protocol(db).content["arms"] if a["sessions_per_week"] > 0}


# the one answer to a study id that does not exist and to one the caller may not see (the id is
# not repeated: the same bytes for both, so that nobody learns from it which children exist)
NO_PARTICIPANT = N_("No such participant.")


def get_participant(db: Session, actor, study_id: str, for_update: bool = False) -> Participant:
    """The participant if ``actor`` may see it (else 404, as for a study id that does not
    exist). ``for_update`` locks its row until the transaction ends."""
    q = select(Participant).where(Participant.study_id == (study_id or "").upper())
    p = db.execute(lock_for_update(q, db.get_bind()) if for_update else q).scalar_one_or_none()
    if p is None:
        raise NotFound(NO_PARTICIPANT)
    check_visible(db, actor, p)
    return p


def may_see(db: Session, actor, p: Participant) -> bool:
    """Whether ``actor`` may see this participant: staff of its site (a therapist who is not also
    the site's coordinator or monitor: only while the child is in a music-therapy arm), the
    trial-wide readers, the command line."""
    sites = visible_site_ids(db, actor)
    if sites is not None and p.site_id not in sites:
        return False
    if not is_cli(actor) and _therapist_only(actor, p.site_id):
        alloc = allocation_of(db, p.id)
        return alloc is not None and alloc.arm in _music_arms(db)
    return True


def check_visible(db: Session, actor, p: Participant) -> None:
    """404 for a participant ``actor`` may not see (another site's, a usual-care child for a
    therapist), the very answer to a study id that does not exist: a 403 would say that the
    child exists."""
    if not may_see(db, actor, p):
        raise NotFound(NO_PARTICIPANT)


def _therapist_only(actor, site_id: int) -> bool:
    """A therapist at this site who is not also its coordinator (nor a manager) sees only
    children in music-therapy arms; trial-wide roles such as admin add nothing here."""
    if actor.has_role("manager"):
        return False
    here = {r.role for r in actor.roles if r.site_id == site_id}
    return "therapist" in here and not here & {"coordinator", "monitor"}


def visible_participants(db: Session, actor, site_code: str | None = None) -> list[Participant]:
    """Every participant ``actor`` may see (for the whole-trial readers: checks, exports)."""
    return list(db.execute(participant_query(db, actor, site_code).order_by(Participant.study_id)).scalars())


STATUSES = ("enrolled", "randomized", "not_received", "discontinued_intervention", "lost_to_follow_up",
            "withdrawn", "died")


def statuses_for(db: Session, actor) -> tuple[str, ...]:
    """The statuses a reader may filter by: a reader who sees no arm never meets the statuses
    that only an intervention can give (nor is offered them)."""
    if arm_site_ids(db, actor):
        return STATUSES
    return tuple(s for s in STATUSES if s not in ARM_REVEALING_EVENTS)


def arm_site_ids(db: Session, actor) -> set[int]:
    """The sites at which ``actor`` may learn the allocation."""
    return {sid for sid in db.execute(select(Site.id)).scalars() if can_see_arm(db, actor, sid)}


def status_expression(db: Session, actor):
    """The participant's status word as SQL, as ``status_label`` computes it from the events this
    reader may see: events about the intervention count only at sites where the reader sees arms
    (for anyone else the child stays "randomized")."""
    arm_sites = sorted(arm_site_ids(db, actor))

    def has(t: str):
        cond = exists().where(StatusEvent.participant_id == Participant.id, StatusEvent.type == t)
        return and_(cond, Participant.site_id.in_(arm_sites)) if t in ARM_REVEALING_EVENTS else cond
    allocated = exists().where(Allocation.participant_id == Participant.id)
    return case(*[(has(t), t) for t in ("died", "withdrawn", "lost_to_follow_up", "discontinued_intervention",
                                         "not_received")], (allocated, "randomized"), else_="enrolled")


def participant_query(db: Session, actor, site_code: str | None = None, search: str | None = None,
                      status: str | None = None, arm: str | None = None):
    """A select of the participants ``actor`` may see, filtered in the database: by site, by a
    study-id fragment, by status and (for readers who see arms, at the sites where they do) by
    arm. Therapists who are not also coordinators or monitors of a site see only its children in
    a music-therapy arm."""
    sites = visible_site_ids(db, actor)
    q = select(Participant)
    if sites is not None:
        q = q.where(Participant.site_id.in_(sorted(sites)))
    if site_code:
        site = get_by_code(db, site_code)
        if sites is not None and site.id not in sites:
            raise Forbidden(N_("You do not work at that site."))
        q = q.where(Participant.site_id == site.id)
    if not is_cli(actor) and actor.has_role("therapist"):
        therapist_only = sorted(sid for sid in actor.site_ids("therapist") if _therapist_only(actor, sid))
        if therapist_only:
            music = select(Allocation.participant_id).where(Allocation.arm.in_(sorted(_music_arms(db))))
            q = q.where(or_(Participant.site_id.not_in(therapist_only), Participant.id.in_(music)))
    if search:
        q = q.where(Participant.study_id.contains(search.strip().upper(), autoescape=True))
    if status:
        if status not in STATUSES:
            raise ValidationError(Msg(N_("status must be one of: %(allowed)s."), allowed=terms("status", STATUSES)),
                                  {"status": N_("an unknown status")})
        q = q.where(status_expression(db, actor) == status)
    if arm:
        arms = {a["key"] for a in current_protocol(db).content["arms"]}
        arm_sites = sorted(arm_site_ids(db, actor))
        if arm not in arms or not arm_sites:
            raise ValidationError(N_("arm is not an arm you may filter by."), {"arm": N_("not an arm you may filter by")})
        q = q.where(Participant.site_id.in_(arm_sites),
                    Participant.id.in_(select(Allocation.participant_id).where(Allocation.arm == arm)))
    return q


def participant_sorts(db: Session, actor) -> dict:
    """The columns of the participants list a reader may sort by (the arm only for readers who
    see arms; a blinded reader's sort by arm would group the children by allocation)."""
    randomized_at = select(Allocation.randomized_at).where(Allocation.participant_id == Participant.id).scalar_subquery()
    site_code = select(Site.code).where(Site.id == Participant.site_id).scalar_subquery()
    sorts = {"study_id": Participant.study_id, "site": site_code, "consent_date": Participant.consent_date,
             "sex": Participant.sex, "status": status_expression(db, actor), "randomized_on": randomized_at}
    arm_sites = sorted(arm_site_ids(db, actor))
    if arm_sites:
        sorts["arm"] = (select(Allocation.arm).where(Allocation.participant_id == Participant.id,
                                                      Participant.site_id.in_(arm_sites)).scalar_subquery())
    return sorts


def _music_only_sites(db: Session, actor, site_code: str | None) -> list[int] | None:
    """The sites a participants list covers when ``actor`` sees only the children in a music-therapy
    arm at every one of them (a therapist who is not also a coordinator or monitor there), else
    None."""
    if is_cli(actor) or not actor.has_role("therapist"):
        return None
    sites = visible_site_ids(db, actor)
    if sites is None:
        return None
    if site_code:
        sites = sites & {get_by_code(db, site_code).id}
    return sorted(sites) if sites and all(_therapist_only(actor, sid) for sid in sites) else None


def page_participants(db: Session, actor, req: PageRequest, site_code: str | None = None, search: str | None = None,
                      status: str | None = None, arm: str | None = None) -> Page:
    """One page of the participants ``actor`` may see, filtered, sorted and counted in the database.
    A therapist who sees only music-therapy children at every site of the list gets them, in
    study-id order, from the allocations' index (each allocation carries its child's study id and
    site): the page and its count cost the same however many children the trial has."""
    allowed = participant_sorts(db, actor)
    sort = sort_key(req.sort, allowed, "study_id")
    query = participant_query(db, actor, site_code, search, status, arm)  # (refuses what the reader may not ask)
    music_sites = None if status or arm or sort.lstrip("-") != "study_id" else _music_only_sites(db, actor, site_code)
    if music_sites is None:
        return paginate(db, ordered(query, sort, allowed, Participant.id), req, sort=sort, key=Participant.id)
    keys = select(Allocation.participant_id).where(Allocation.site_id.in_(music_sites),
                                                   Allocation.arm.in_(sorted(_music_arms(db))))
    if search:
        keys = keys.where(Allocation.study_id.contains(search.strip().upper(), autoescape=True))
    keys = ordered(keys, sort, {"study_id": Allocation.study_id}, Allocation.participant_id)
    return paginate(db, ordered(select(Participant), sort, allowed, Participant.id), req, sort=sort,
                    key=Participant.id, keys=keys)


def participant_views(db: Session, actor, rows: list[Participant]) -> list[dict]:
    """What ``actor`` may see of each participant: the arm only for unblinded roles."""
    if not rows:
        return []
    allocs = allocations_for(db, [p.id for p in rows])
    codes = dict(db.execute(select(Site.id, Site.code)).all())
    tzs = dict(db.execute(select(Site.id, Site.timezone)).all())
    arms = {a["key"]: a["label"] for a in current_protocol(db).content["arms"]}
    baseline = baseline_done(db, [p.id for p in rows])
    events = events_of(db, [p.id for p in rows])
    out = []
    for p in rows:
        a = allocs.get(p.id)
        unblinded = a is not None and can_see_arm(db, actor, p.site_id)
        # events about the intervention would tell a blinded reader the child had one to receive
        evs = [e for e in events.get(p.id, []) if unblinded or e.type not in ARM_REVEALING_EVENTS]
        d = {"study_id": p.study_id, "site": codes[p.site_id], "status": status_label(a is not None, evs),
             "consent_date": p.consent_date.isoformat(), "date_of_birth": p.date_of_birth.isoformat(),
             "sex": p.sex, "strata": p.strata, "enrolled_at": p.enrolled_at.isoformat() + "Z",
             "baseline_primary_recorded": p.id in baseline,
             "randomized_on": local_date(a.randomized_at, tzs[p.site_id]).isoformat() if a else None}
        d["events"] = [{"type": e.type, "on": e.on.isoformat()} for e in evs]
        if unblinded:
            d["arm"] = a.arm
            d["arm_label"] = arms.get(a.arm, a.arm)
        out.append(d)
    return out


def allocation_of(db: Session, participant_id: int) -> Allocation | None:
    return db.execute(select(Allocation).where(Allocation.participant_id == participant_id)).scalar_one_or_none()


def allocations_for(db: Session, participant_ids: list[int]) -> dict[int, Allocation]:
    if not participant_ids:
        return {}
    out = {}
    for chunk in range(0, len(participant_ids), 900):
        ids = participant_ids[chunk:chunk + 900]
        out.update({a.participant_id: a for a in db.execute(select(Allocation).where(Allocation.participant_id.in_(ids))).scalars()})
    return out


def events_of(db: Session, participant_ids: list[int]) -> dict[int, list[StatusEvent]]:
    out: dict[int, list[StatusEvent]] = {}
    if participant_ids:
        for e in db.execute(select(StatusEvent).where(StatusEvent.participant_id.in_(participant_ids))
                            .order_by(StatusEvent.on, StatusEvent.id)).scalars():
            out.setdefault(e.participant_id, []).append(e)
    return out


def status_label(randomized: bool, events: list[StatusEvent]) -> str:
    """One status word: the weightiest event, else randomized/enrolled."""
    types = {e.type for e in events}
    for t in ("died", "withdrawn", "lost_to_follow_up", "discontinued_intervention", "not_received"):
        if t in types:
            return t
    return "randomized" if randomized else "enrolled"


def ensure_accepts_data(db: Session, p: Participant, what: str, on: dt.date | None = None) -> None:
    """Refuse new data for a withdrawn (or deceased) participant; refuse sessions after the
    intervention was discontinued or not received."""
    for e in events_of(db, [p.id]).get(p.id, []):
        if e.type in FINAL_EVENTS:
            raise final_refusal(p, e)
        if what == "session" and e.type in STOPPED_WORDS and (on is None or on >= e.on):
            raise Conflict(Msg(STOPPED_WORDS[e.type], study_id=p.study_id, day=e.on))


def randomization_day(db: Session, p: Participant, alloc: Allocation | None = None) -> dt.date | None:
    alloc = alloc or allocation_of(db, p.id)
    if alloc is None:
        return None
    return local_date(alloc.randomized_at, db.get(Site, p.site_id).timezone)


def baseline_done(db: Session, participant_ids: list[int]) -> set[int]:
    """Participants whose baseline primary outcome is recorded."""
    prim = current_protocol(db).content["primary_outcome"]
    if not participant_ids:
        return set()
    rows = db.execute(select(Assessment.participant_id, Assessment.values).where(
        Assessment.participant_id.in_(participant_ids), Assessment.visit == "baseline",
        Assessment.instrument == prim["instrument"])).all()
    return {pid for pid, values in rows if values.get(prim["field"]) is not None}
