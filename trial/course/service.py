"""Sessions of the music-therapy arms, parent counselling for all, dose and adherence.

Session data is allocation data (the arms differ in frequency): every reader here must be
unblinded for the participant's site (trial.scope.can_see_arm)."""
from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.course.models import ATTENDANCE, CounsellingSession, TherapySession
from trial.errors import Conflict, Forbidden, NotFound, ValidationError
from trial.participants.models import Allocation, Participant
from trial.participants.service import allocation_of, ensure_accepts_data, get_participant, randomization_day
from trial.protocol.service import current as current_protocol
from trial.scope import can_see_arm, require_site_role, visible_site_ids
from trial.sites.models import Site
from trial.timeline import course_window, planned_sessions, today
from trial.trialstate.service import ensure_writable
from trial.validation import clinical_date, text


def _arm(content: dict, key: str) -> dict:
    return next(a for a in content["arms"] if a["key"] == key)


def log_session(db: Session, actor, study_id: str, data: dict) -> TherapySession:
    p = get_participant(db, actor, study_id, for_update=True)  # concurrent duplicates queue here
    require_site_role(db, actor, p.site_id, "therapist")
    ensure_writable(db)
    content = current_protocol(db).content
    alloc = allocation_of(db, p.id)
    if alloc is None:
        raise Conflict(f"{p.study_id} is not randomized; sessions start with the course.")
    if _arm(content, alloc.arm)["sessions_per_week"] == 0:
        raise Conflict(f"{p.study_id} is not in a music-therapy arm: no sessions are logged for this child.")
    errors: dict[str, str] = {}
    held = clinical_date(data.get("held_on"), "held_on", errors, today(p.site.timezone))
    attendance = data.get("attendance")
    if attendance not in ATTENDANCE:
        errors["attendance"] = f"must be one of {', '.join(ATTENDANCE)}"
    minutes = data.get("minutes")
    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, int) or not 0 <= minutes <= 240):
        errors["minutes"] = "must be a whole number of minutes from 0 to 240"
    if attendance == "attended" and not minutes and minutes is not None:
        errors["minutes"] = "an attended session lasts more than 0 minutes"
    techniques = data.get("techniques") or []
    allowed = content["course"]["techniques"]
    if not isinstance(techniques, list) or any(t not in allowed for t in techniques):
        errors["techniques"] = f"must be a list drawn from {', '.join(allowed)}"
    engagement = data.get("engagement")
    if engagement is not None and (isinstance(engagement, bool) or not isinstance(engagement, int) or not 1 <= engagement <= 5):
        errors["engagement"] = "must be a whole number from 1 (none) to 5 (fully engaged)"
    note = text(data.get("note"), "note", errors, 1000)
    if errors:
        raise ValidationError("The session was not saved: " + "; ".join(f"{k} {v}" for k, v in errors.items()), errors)
    ensure_accepts_data(db, p, "session", held)
    start = randomization_day(db, p, alloc)
    if held < start:
        raise ValidationError("The session was not saved: held_on is before randomization",
                              {"held_on": f"is before randomization ({start.isoformat()})"})
    if db.execute(select(TherapySession.id).where(TherapySession.participant_id == p.id,
                                                  TherapySession.held_on == held)).first():
        raise Conflict(f"A session on {held.isoformat()} is already logged for {p.study_id}.")
    _, end = course_window(start, content["course"]["months"])
    s = TherapySession(participant_id=p.id, held_on=held, attendance=attendance, minutes=minutes,
                       techniques=sorted(set(techniques)), engagement=engagement, note=note,
                       outside_course=held > end, logged_by_id=getattr(actor, "id", None))
    db.add(s)
    db.flush()
    audit.created(db, actor, "therapy_session", s.id, {"participant": p.study_id, "held_on": held, "attendance": attendance,
                                                       "minutes": minutes, "techniques": s.techniques,
                                                       "engagement": engagement, "note": s.note,
                                                       "outside_course": s.outside_course}, reveals_allocation=True)
    return s


def log_counselling(db: Session, actor, study_id: str, data: dict) -> CounsellingSession:
    p = get_participant(db, actor, study_id, for_update=True)
    require_site_role(db, actor, p.site_id, "coordinator")
    ensure_writable(db)
    errors: dict[str, str] = {}
    held = clinical_date(data.get("held_on"), "held_on", errors, today(p.site.timezone))
    attended = data.get("attended", True)
    if not isinstance(attended, bool):
        errors["attended"] = "must be true or false"
    note = text(data.get("note"), "note", errors, 1000)
    if errors:
        raise ValidationError("The counselling session was not saved: " + "; ".join(f"{k} {v}" for k, v in errors.items()), errors)
    ensure_accepts_data(db, p, "counselling", held)
    planned = current_protocol(db).content["course"]["parent_counselling_sessions"]
    done = db.execute(select(func.count()).select_from(CounsellingSession).where(
        CounsellingSession.participant_id == p.id)).scalar()
    if done >= planned:
        raise Conflict(f"All {planned} parent-counselling sessions of the protocol are already logged for {p.study_id}.")
    if db.execute(select(CounsellingSession.id).where(CounsellingSession.participant_id == p.id,
                                                      CounsellingSession.held_on == held)).first():
        raise Conflict(f"A counselling session on {held.isoformat()} is already logged for {p.study_id}.")
    c = CounsellingSession(participant_id=p.id, number=done + 1, held_on=held, attended=attended, note=note,
                           logged_by_id=getattr(actor, "id", None))
    db.add(c)
    db.flush()
    audit.created(db, actor, "counselling_session", c.id, {"participant": p.study_id, "number": c.number,
                                                           "held_on": held, "attended": attended})
    return c


def sessions_of(db: Session, actor, study_id: str) -> tuple[Participant, list[TherapySession]]:
    p = get_participant(db, actor, study_id)
    if not can_see_arm(db, actor, p.site_id):
        raise Forbidden("Session logs reveal the allocation; your role is blinded.")
    rows = db.execute(select(TherapySession).where(TherapySession.participant_id == p.id)
                      .order_by(TherapySession.held_on)).scalars().all()
    return p, list(rows)


def dose(db: Session, p: Participant, alloc: Allocation, content: dict, sessions: list[TherapySession]) -> dict:
    arm = _arm(content, alloc.arm)
    start = randomization_day(db, p, alloc)
    _, end = course_window(start, content["course"]["months"])
    planned = planned_sessions(arm["sessions_per_week"], start, end)
    attended = sum(1 for s in sessions if s.attendance == "attended" and not s.outside_course)
    return {"planned": planned, "attended": attended, "logged": len(sessions),
            "dose": round(attended / planned, 3) if planned else None,
            "course_start": start.isoformat(), "course_end": end.isoformat()}


def adherence_by_arm(db: Session, actor, site_code: str | None = None) -> list[dict]:
    """Dose received per arm (unblinded managers; coordinators and therapists for their sites)."""
    sites = visible_site_ids(db, actor, "coordinator", "therapist", "monitor", "manager")
    if not actor.has_role("manager", "coordinator", "therapist", "monitor"):
        raise Forbidden("Adherence by arm reveals allocations; your role is blinded.")
    content = current_protocol(db).content
    q = select(Participant, Allocation).join(Allocation, Allocation.participant_id == Participant.id)
    if sites is not None:
        q = q.where(Participant.site_id.in_(sites))
    if site_code:
        q = q.join(Site, Site.id == Participant.site_id).where(Site.code == site_code.upper())
    rows = [(p, a) for p, a in db.execute(q).all() if can_see_arm(db, actor, p.site_id)]
    sessions: dict[int, list[TherapySession]] = {}
    if rows:
        for s in db.execute(select(TherapySession).where(TherapySession.participant_id.in_([p.id for p, _ in rows]))).scalars():
            sessions.setdefault(s.participant_id, []).append(s)
    out = []
    for arm in content["arms"]:
        members = [(p, a) for p, a in rows if a.arm == arm["key"]]
        doses = [dose(db, p, a, content, sessions.get(p.id, [])) for p, a in members] if arm["sessions_per_week"] else []
        vals = [d["dose"] for d in doses if d["dose"] is not None]
        minimum = content["course"]["min_attended_sessions"]
        out.append({"arm": arm["key"], "label": arm["label"], "participants": len(members),
                    "sessions_attended": sum(d["attended"] for d in doses),
                    "mean_dose": round(sum(vals) / len(vals), 3) if vals else None,
                    "received_minimum": sum(1 for d in doses if d["attended"] >= minimum) if arm["sessions_per_week"] else None})
    return out


def participant_course(db: Session, actor, study_id: str) -> dict:
    p, rows = sessions_of(db, actor, study_id)
    alloc = allocation_of(db, p.id)
    if alloc is None:
        raise NotFound(f"{p.study_id} is not randomized.")
    content = current_protocol(db).content
    out = {"study_id": p.study_id, "arm": alloc.arm,
           "sessions": [{"id": s.id, "held_on": s.held_on.isoformat(), "attendance": s.attendance, "minutes": s.minutes,
                         "techniques": s.techniques, "engagement": s.engagement, "note": s.note,
                         "outside_course": s.outside_course} for s in rows],
           "counselling": counselling_of(db, p)}
    if _arm(content, alloc.arm)["sessions_per_week"]:
        out["dose"] = dose(db, p, alloc, content, rows)
    return out


def counselling_of(db: Session, p: Participant) -> list[dict]:
    rows = db.execute(select(CounsellingSession).where(CounsellingSession.participant_id == p.id)
                      .order_by(CounsellingSession.number)).scalars().all()
    return [{"number": c.number, "held_on": c.held_on.isoformat(), "attended": c.attended} for c in rows]
