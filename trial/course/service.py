"""Sessions of the music-therapy arms, parent counselling for all, dose and adherence.

Session data is allocation data (the arms differ in frequency): every reader here must be
unblinded for the participant's site (trial.scope.can_see_arm)."""
from __future__ import annotations

import datetime as dt
import functools

from sqlalchemy import and_, case, delete, func, insert, select
from sqlalchemy.orm import Session

from trial import cache
from trial.audit import service as audit
from trial.catalogue import N_, Joined, Label, Msg, term, terms
from trial.consent import service as consent_service
from trial.consent import withdrawal
from trial.course.models import ATTENDANCE, PRESENT, ChildGoal, CounsellingSession, CourseTally, TherapySession
from trial.credentials import service as credentials
from trial.dataquality.service import clear_verification
from trial.db import utcnow
from trial.errors import Conflict, Forbidden, NotFound, ValidationError
from trial.paging import Page, PageRequest, ordered, paginate, sort_key
from trial.participants.models import Allocation, Participant
from trial.participants.service import allocation_of, ensure_accepts_data, events_of, get_participant, randomization_day
from trial.protocol.service import current as current_protocol
from trial.protocol.service import labels as protocol_labels
from trial.scope import can_see_arm, require_site_role, visible_site_ids
from trial.sites.models import Site
from trial.timeline import course_window, local_date, planned_sessions, today
from trial.trialstate.service import active_lock_id, ensure_writable
from trial.validation import clinical_date, refusal, refuse, text
from trial.visitplan.models import PlannedVisit
from trial.visitplan.service import ensure_current


def _arm(content: dict, key: str) -> dict:
    return next(a for a in content["arms"] if a["key"] == key)


# the session's fields as the web form names them: every message names a field by its label
LABELS = {"held_on": N_("Date"), "attendance": N_("Attendance"), "minutes": N_("Minutes"), "techniques": N_("Techniques"),
          "engagement": N_("Child engagement"), "note": N_("Short note"), "reason": N_("Reason for the correction"),
          "present": N_("Present"), "goals": N_("Goals worked on"), "goal": N_("Goal"), "description": N_("Description"),
          "set_on": N_("Set on"), "video_recorded": N_("Video-recorded")}
SESSION_FIELDS = ("held_on", "attendance", "minutes", "techniques", "engagement", "note", "present", "goals")
# an unknown session or goal and one the caller may not know of: the same answer (its id not repeated)
NO_SESSION = N_("No such session.")
NO_GOAL = N_("No such goal.")
MAX_MINUTES = 240


def _refuse(what: str, errors: dict[str, str]) -> None:
    """One 400 naming every bad field by its label (``errors`` keep the field names, for forms)."""
    if errors:
        raise refusal(what, errors, LABELS)


def _checked(data: dict, content: dict, site_today, errors: dict[str, str], child_goals: set[str] | None = None) -> dict:
    """A session's fields checked as a whole (new, or as a correction leaves it): the problems go
    to ``errors``. An attended session lasts more than 0 minutes; a cancelled session, or one the
    child did not come to, lasted none."""
    held = clinical_date(data.get("held_on"), "held_on", errors, site_today)
    attendance = data.get("attendance")
    if attendance not in ATTENDANCE:
        errors["attendance"] = Msg(N_("must be one of %(allowed)s"), allowed=terms("attendance", ATTENDANCE))
    minutes = data.get("minutes")
    _check_minutes(attendance, minutes, errors)
    techniques = _checked_techniques(data.get("techniques"), content, errors)
    present = data.get("present")
    if present is not None and present not in PRESENT:
        errors["present"] = Msg(N_("must be one of %(allowed)s"), allowed=terms("present", PRESENT))
    elif present is not None and attendance in ATTENDANCE and attendance != "attended":
        errors["present"] = N_("must be empty when the session did not take place")
    goals = _checked_goals(data.get("goals") or [], attendance, child_goals, content, errors)
    engagement = data.get("engagement")
    if engagement is not None and (isinstance(engagement, bool) or not isinstance(engagement, int) or not 1 <= engagement <= 5):
        errors["engagement"] = N_("must be a whole number from 1 (none) to 5 (fully engaged)")
    note = text(data.get("note"), "note", errors, 1000)
    return {"held_on": held, "attendance": attendance, "minutes": minutes, "techniques": sorted(set(techniques)),
            "engagement": engagement, "note": note, "present": present, "goals": sorted(set(goals))}


def _check_minutes(attendance, minutes, errors: dict[str, str]) -> None:
    """A whole number of minutes up to MAX_MINUTES: more than 0 for an attended session, none for
    a session that did not take place."""
    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, int) or not 0 <= minutes <= MAX_MINUTES):
        errors["minutes"] = Msg(N_("must be a whole number of minutes from 0 to %(max)s"), max=MAX_MINUTES)
    elif attendance == "attended" and not minutes:
        errors["minutes"] = Msg(N_("is required for an attended session (more than 0 minutes, at most %(max)s)"),
                                max=MAX_MINUTES)
    elif attendance in ATTENDANCE and attendance != "attended" and minutes:
        errors["minutes"] = Msg(N_("must be empty (or 0) when Attendance is %(attendance)s: the session did not take "
                                   "place"), attendance=term("attendance", attendance))


def _words(content: dict, kind: str, keys) -> Joined:
    """The protocol's words for its keys of ``kind`` (technique, goal), comma-separated, each in
    the reader's language; a key the protocol does not have (a typing error) as it was given."""
    words = protocol_labels(content)[kind]
    return Joined([Label(kind, k, words[k]) if k in words else str(k) for k in keys], ", ")


def _checked_techniques(techniques, content: dict, errors: dict[str, str]) -> list:
    """The techniques used, a list drawn from the protocol's (none when the list is bad)."""
    allowed = content["course"]["techniques"]
    if not isinstance(techniques, list) or any(not isinstance(t, str) or t not in allowed for t in techniques):
        bad = [str(t) for t in techniques if t not in allowed] if isinstance(techniques, list) else []
        errors["techniques"] = (Msg(N_("must be a list drawn from the protocol's techniques (%(allowed)s): %(bad)s "
                                       "is not one of them"), allowed=_words(content, "technique", allowed),
                                    bad=", ".join(bad))
                                if bad else Msg(N_("must be a list drawn from the protocol's techniques (%(allowed)s)"),
                                                allowed=_words(content, "technique", allowed)))
        return []
    return techniques


def _checked_goals(goals, attendance, child_goals: set[str] | None, content: dict, errors: dict[str, str]) -> list:
    """The goals worked on: goals set for this child (when ``child_goals`` is given), and none for
    a session that did not take place (none either when the list is bad)."""
    if not isinstance(goals, list) or any(not isinstance(g, str) for g in goals):
        errors["goals"] = N_("must be a list of the child's goals")
        return []
    if child_goals is not None and any(g not in child_goals for g in goals):
        bad = sorted(set(goals) - set(child_goals))
        errors["goals"] = (Msg(N_("are not goals set for this child: %(bad)s (the child's goals: %(goals)s)"),
                               bad=_words(content, "goal", bad), goals=_words(content, "goal", sorted(child_goals)))
                           if child_goals else
                           Msg(N_("cannot be given: no goals are set for this child yet (%(bad)s)"),
                               bad=_words(content, "goal", bad)))
        return []
    if goals and attendance in ATTENDANCE and attendance != "attended":
        errors["goals"] = N_("must be empty when the session did not take place")
    return goals


def _after_randomization(what: str, held, start) -> None:
    """``what``: the lead, a catalogue text ("The session was not saved")."""
    if held < start:
        raise ValidationError(Msg(N_("%(what)s: Date is before randomization (%(day)s)"), what=Msg(what), day=start),
                              {"held_on": Msg(N_("is before randomization (%(day)s)"), day=start)})


def _no_other_session_on(db: Session, p: Participant, held, except_id: int | None = None) -> None:
    q = select(TherapySession.id).where(TherapySession.participant_id == p.id, TherapySession.held_on == held)
    if except_id is not None:
        q = q.where(TherapySession.id != except_id)
    if db.execute(q).first():
        raise Conflict(Msg(N_("A session on %(day)s is already logged for %(study_id)s."), day=held, study_id=p.study_id),
                       {"held_on": N_("another session on this day")})


def log_session(db: Session, actor, study_id: str, data: dict) -> TherapySession:
    p = get_participant(db, actor, study_id, for_update=True)  # concurrent duplicates queue here
    require_site_role(db, actor, p.site_id, "therapist")
    ensure_writable(db)
    content = current_protocol(db).content
    alloc = allocation_of(db, p.id)
    if alloc is None:
        raise Conflict(Msg(N_("%(study_id)s is not randomized; sessions start with the course."), study_id=p.study_id))
    if _arm(content, alloc.arm)["sessions_per_week"] == 0:
        raise Conflict(Msg(N_("%(study_id)s is not in a music-therapy arm: no sessions are logged for this child."),
                           study_id=p.study_id))
    errors: dict[str, str] = {}
    v = _checked({**data, "techniques": data.get("techniques", [])}, content, today(p.site.timezone), errors,
                 child_goals=active_goals(db, p.id))
    video = _checked_video(db, p, data.get("video_recorded"), errors)
    _refuse(N_("The session was not saved"), errors)
    held = v["held_on"]
    credentials.ensure_valid(db, actor, held)
    ensure_accepts_data(db, p, "session", held)
    consent_service.ensure_consented(db, p)
    withdrawal.ensure_session_allowed(db, p, held)
    start = randomization_day(db, p, alloc)
    _after_randomization(N_("The session was not saved"), held, start)
    _no_other_session_on(db, p, held)
    _, end = course_window(start, content["course"]["months"])
    s = TherapySession(participant_id=p.id, outside_course=held > end, logged_by_id=getattr(actor, "id", None),
                       video_recorded=video, **v)
    db.add(s)
    db.flush()
    audit.created(db, actor, "therapy_session", s.id, {"participant": p.study_id, "held_on": held,
                                                       "attendance": s.attendance, "minutes": s.minutes,
                                                       "techniques": s.techniques, "engagement": s.engagement,
                                                       "note": s.note, "outside_course": s.outside_course,
                                                       "present": s.present, "goals": s.goals,
                                                       **({} if video is None else {"video_recorded": video})},
                  reveals_allocation=True)
    recount(db, [p.id])
    return s


def _checked_video(db: Session, p: Participant, value, errors: dict[str, str]) -> bool | None:
    """Whether the session was video-recorded (issue 28): optional (None: not said); True only
    when the family gave the consent option ``video_recording``."""
    if value is None:
        return None
    if not isinstance(value, bool):
        errors["video_recorded"] = N_("must be true or false")
        return None
    if value and withdrawal.gave_option(db, p.id, "video_recording") is not True:
        errors["video_recorded"] = N_("the family did not consent to video recording of sessions")
        return None
    return value


def _counts():
    """SQL: (participant id, attended in the course, logged) per child, from the sessions."""
    return (select(TherapySession.participant_id,
                   func.sum(case((and_(TherapySession.attendance == "attended", TherapySession.outside_course.is_(False)), 1),
                                 else_=0)),
                   func.count())
            .group_by(TherapySession.participant_id))


def recount(db: Session, participant_ids: list[int]) -> None:
    """Count these children's sessions again into their tallies (in the writer's transaction)."""
    ids = sorted(set(participant_ids))
    if not ids:
        return
    db.flush()
    db.execute(delete(CourseTally).where(CourseTally.participant_id.in_(ids)))
    rows = [{"participant_id": pid, "attended": int(a or 0), "logged": int(n)}
            for pid, a, n in db.execute(_counts().where(TherapySession.participant_id.in_(ids)))]
    if rows:
        db.execute(insert(CourseTally), rows)


def recount_all(db: Session) -> int:
    """Every child's tally from the sessions (for sessions loaded in bulk). Returns the children counted."""
    db.execute(delete(CourseTally))
    rows = [{"participant_id": pid, "attended": int(a or 0), "logged": int(n)} for pid, a, n in db.execute(_counts())]
    if rows:
        db.execute(insert(CourseTally), rows)
    return len(rows)


def tally_stale(db: Session) -> list[int]:
    """The children whose tally differs from their sessions (empty when every tally is right)."""
    want = {pid: (int(a or 0), int(n)) for pid, a, n in db.execute(_counts())}
    have = {t.participant_id: (t.attended, t.logged) for t in db.execute(select(CourseTally)).scalars()}
    return sorted(pid for pid in set(want) | set(have) if want.get(pid) != have.get(pid))


def session_for_correction(db: Session, actor, session_id: int, for_update: bool = False) -> tuple[TherapySession, Participant]:
    """The session and its child, for the therapist of the site who corrects it. A session the
    actor may not know of (another site, a blinded role) answers 404 like one that does not exist:
    that a session exists tells of the allocation."""
    s = db.get(TherapySession, session_id)
    if s is None or not can_see_arm(db, actor, db.get(Participant, s.participant_id).site_id):
        raise NotFound(NO_SESSION)
    p = get_participant(db, actor, db.get(Participant, s.participant_id).study_id, for_update=for_update)
    require_site_role(db, actor, p.site_id, "therapist")
    if for_update:
        db.refresh(s)  # what another correction committed while this one waited for the row
    return s, p


def session_values(s: TherapySession) -> dict:
    return {"held_on": s.held_on, "attendance": s.attendance, "minutes": s.minutes, "techniques": list(s.techniques or []),
            "engagement": s.engagement, "note": s.note, "present": s.present, "goals": list(s.goals or [])}


def session_view(s: TherapySession) -> dict:
    return {"id": s.id, "held_on": s.held_on.isoformat(), "attendance": s.attendance, "minutes": s.minutes,
            "techniques": s.techniques, "engagement": s.engagement, "note": s.note, "outside_course": s.outside_course,
            "present": s.present, "goals": list(s.goals or [])}


def correct_session(db: Session, actor, session_id: int, data: dict) -> TherapySession:
    """Change a logged session (the fields given; the others stay as recorded) with a required
    reason. The whole session must still be valid; the old values stay in the audit trail, one
    record per changed field with the reason, and a source-verification mark is cleared."""
    s, p = session_for_correction(db, actor, session_id, for_update=True)
    ensure_writable(db)
    content = current_protocol(db).content
    errors: dict[str, str] = {}
    reason = text(data.get("reason"), "reason", errors, 500)
    if reason is None and "reason" not in errors:
        errors["reason"] = N_("is required for a correction")
    for k in sorted(set(data) - set(SESSION_FIELDS) - {"reason"}):
        errors[k] = N_("is not a field of a session that can be corrected")
    old = session_values(s)
    goals = active_goals(db, p.id) | set(old["goals"])  # a goal no longer pursued stays on the sessions that had it
    v = _checked({**old, **{k: data[k] for k in SESSION_FIELDS if k in data}}, content, today(p.site.timezone), errors,
                 child_goals=goals)
    _refuse(N_("The correction was not saved"), errors)
    changes = {k: (old[k], v[k]) for k in SESSION_FIELDS if old[k] != v[k]}
    if not changes:
        raise ValidationError(N_("The correction changes nothing: every field is as recorded."), {})
    if "held_on" in changes:
        _check_move(db, p, s, v["held_on"], content, changes)
    for k, (_, new) in changes.items():
        setattr(s, k, new)
    audit.record(db, actor, "correct", "therapy_session", s.id, changes, reason=reason, reveals_allocation=True)
    clear_verification(db, actor, "session", s.id, p, f"corrected: {reason}")
    recount(db, [p.id])
    return s


def _check_move(db: Session, p: Participant, s: TherapySession, held, content: dict, changes: dict) -> None:
    """A session moved to the day ``held``: after randomization, on a day with no other session,
    before the child's exit, with the session's therapist credentialed that day; whether it now
    falls outside the course joins ``changes``."""
    alloc = allocation_of(db, p.id)
    start = randomization_day(db, p, alloc)
    _after_randomization(N_("The correction was not saved"), held, start)
    _no_other_session_on(db, p, held, except_id=s.id)
    _session_date_allowed(db, p, held)
    if s.logged_by_id is not None and credentials.required(db) and credentials.valid_on(db, s.logged_by_id, held) is None:
        raise credentials.NoCredential(
            Msg(N_("The correction was not saved: the therapist who led the session held no credential valid on %(day)s."),
                day=held), {"held_on": Msg(N_("no credential of the session's therapist is valid on %(day)s"),
                                           day=held)})
    _, end = course_window(start, content["course"]["months"])
    if s.outside_course != (held > end):
        changes["outside_course"] = (s.outside_course, held > end)


def _session_date_allowed(db: Session, p: Participant, held) -> None:
    """A session moved to another day must not fall on or after the day the child withdrew, died
    or stopped the intervention (a correction of a session as it was held is always possible)."""
    for e in events_of(db, [p.id]).get(p.id, []):
        if e.type in _NO_MOVE and held >= e.on:
            raise Conflict(Msg(_NO_MOVE[e.type], study_id=p.study_id, on=e.on, day=held),
                           {"held_on": Msg(N_("is on or after %(day)s"), day=e.on)})
    withdrawal.ensure_session_allowed(db, p, held)


# the events no session is moved past, each a whole sentence for the catalogue
_NO_MOVE = {
    "withdrawn": N_("%(study_id)s: withdrawn on %(on)s; a session cannot be moved to %(day)s, on or after that day."),
    "died": N_("%(study_id)s: died on %(on)s; a session cannot be moved to %(day)s, on or after that day."),
    "discontinued_intervention": N_("%(study_id)s: the intervention was discontinued on %(on)s; a session cannot be "
                                    "moved to %(day)s, on or after that day."),
    "not_received": N_("%(study_id)s: the intervention was not received (%(on)s); a session cannot be moved to "
                       "%(day)s, on or after that day."),
}


def log_counselling(db: Session, actor, study_id: str, data: dict) -> CounsellingSession:
    p = get_participant(db, actor, study_id, for_update=True)
    require_site_role(db, actor, p.site_id, "coordinator")
    ensure_writable(db)
    errors: dict[str, str] = {}
    held = clinical_date(data.get("held_on"), "held_on", errors, today(p.site.timezone))
    attended = data.get("attended", True)
    if not isinstance(attended, bool):
        errors["attended"] = N_("must be true or false")
    note = text(data.get("note"), "note", errors, 1000)
    if errors:
        raise refusal(N_("The counselling session was not saved"), errors)
    ensure_accepts_data(db, p, "counselling", held)
    consent_service.ensure_consented(db, p)
    planned = current_protocol(db).content["course"]["parent_counselling_sessions"]
    done = db.execute(select(func.count()).select_from(CounsellingSession).where(
        CounsellingSession.participant_id == p.id)).scalar()
    if done >= planned:
        raise Conflict(Msg(N_("All %(n)s parent-counselling sessions of the protocol are already logged for "
                              "%(study_id)s."), n=planned, study_id=p.study_id))
    if db.execute(select(CounsellingSession.id).where(CounsellingSession.participant_id == p.id,
                                                      CounsellingSession.held_on == held)).first():
        raise Conflict(Msg(N_("A counselling session on %(day)s is already logged for %(study_id)s."),
                           day=held, study_id=p.study_id))
    c = CounsellingSession(participant_id=p.id, number=done + 1, held_on=held, attended=attended, note=note,
                           logged_by_id=getattr(actor, "id", None))
    db.add(c)
    db.flush()
    audit.created(db, actor, "counselling_session", c.id, {"participant": p.study_id, "number": c.number,
                                                           "held_on": held, "attended": attended, "note": note})
    return c


def sessions_of(db: Session, actor, study_id: str) -> tuple[Participant, list[TherapySession]]:
    p = get_participant(db, actor, study_id)
    if not can_see_arm(db, actor, p.site_id):
        raise Forbidden(N_("Session logs reveal the allocation; your role is blinded."))
    rows = db.execute(select(TherapySession).where(TherapySession.participant_id == p.id)
                      .order_by(TherapySession.held_on)).scalars().all()
    return p, list(rows)


def dose(db: Session, p: Participant, alloc: Allocation, content: dict, sessions: list[TherapySession],
         start: dt.date | None = None) -> dict:
    """Sessions planned, logged and attended in the course, and the dose (attended / planned);
    ``start``, the randomization day, when the caller knows it already."""
    arm = _arm(content, alloc.arm)
    start = start or randomization_day(db, p, alloc)
    _, end = course_window(start, content["course"]["months"])
    planned = planned_sessions(arm["sessions_per_week"], start, end)
    attended = sum(1 for s in sessions if s.attendance == "attended" and not s.outside_course)
    return {"planned": planned, "attended": attended, "logged": len(sessions),
            "dose": round(attended / planned, 3) if planned else None,
            "course_start": start.isoformat(), "course_end": end.isoformat()}


def _adherence_sites(db: Session, actor, site_code: str | None) -> list[int]:
    """The sites whose children's arms the actor may read (and, given, only that site)."""
    if not actor.has_role("manager", "coordinator", "therapist", "monitor"):
        raise Forbidden(N_("Adherence by arm reveals allocations; your role is blinded."))
    sites = visible_site_ids(db, actor, "coordinator", "therapist", "monitor", "manager")
    return sorted(sid for sid, code in db.execute(select(Site.id, Site.code)).all()
                  if (sites is None or sid in sites) and can_see_arm(db, actor, sid)
                  and (not site_code or code == site_code.upper()))


@functools.lru_cache(maxsize=8192)
def _planned(sessions_per_week: int, start: dt.date, months: int) -> int:
    """The sessions a course starting on ``start`` plans (a pure function: kept per process)."""
    return planned_sessions(sessions_per_week, *course_window(start, months))


def _attended():
    return func.coalesce(select(CourseTally.attended).where(CourseTally.participant_id == Allocation.participant_id)
                         .scalar_subquery(), 0)


def adherence_by_arm(db: Session, actor, site_code: str | None = None) -> list[dict]:
    """Dose received per arm (unblinded managers; coordinators, therapists and monitors for their
    sites). The attended sessions come from each child's tally (one row a child, kept by the
    session writers). The planned number depends only on the arm and the course's first day (the
    randomization day in the site's calendar, which the visit plan holds as the first visit's
    target less its day), so the children are grouped by both in the database and the dose worked
    out once per group: the mean of attended / planned over the children is the sum over the
    groups of the group's attended / planned, over the number of children."""
    protocol = current_protocol(db)
    ensure_current(db, writable=active_lock_id(db) is None)
    head = audit.head(db)  # before the data: see trial.cache.AsOf
    sites = _adherence_sites(db, actor, site_code)
    return cache.summaries.get(("adherence", head, protocol.sha256, tuple(sites)),
                               lambda: _adherence_by_arm(db, protocol.content, sites))


def _adherence_by_arm(db: Session, content: dict, sites: list[int]) -> list[dict]:
    first = next(v for v in content["visits"] if v["key"] != "baseline")
    minimum = content["course"]["min_attended_sessions"]
    attended = func.coalesce(CourseTally.attended, 0)
    rows = db.execute(  # the plan holds the site: neither the participants nor their allocation rows are read twice
        select(Allocation.arm, PlannedVisit.target, func.count(), func.sum(attended),
               func.sum(case((attended >= minimum, 1), else_=0)))
        .join(PlannedVisit, and_(PlannedVisit.participant_id == Allocation.participant_id, PlannedVisit.visit == first["key"]))
        .outerjoin(CourseTally, CourseTally.participant_id == Allocation.participant_id)
        .where(PlannedVisit.site_id.in_(sites))
        .group_by(Allocation.arm, PlannedVisit.target)).all()
    arms = {a["key"]: a for a in content["arms"]}
    agg = {k: {"participants": 0, "attended": 0, "dose_sum": 0.0, "dosed": 0, "minimum": 0} for k in arms}
    for arm, target, n, total, reached in rows:
        a = agg.setdefault(arm, {"participants": 0, "attended": 0, "dose_sum": 0.0, "dosed": 0, "minimum": 0})
        a["participants"] += n
        spw = arms.get(arm, {}).get("sessions_per_week")
        if not spw:
            continue
        planned = _planned(spw, target - dt.timedelta(days=first["day"]), content["course"]["months"])
        a["attended"] += int(total or 0)
        a["minimum"] += int(reached or 0)
        if planned:
            a["dose_sum"] += int(total or 0) / planned
            a["dosed"] += n
    out = []
    for arm in content["arms"]:
        a, music = agg[arm["key"]], bool(arm["sessions_per_week"])
        out.append({"arm": arm["key"], "label": arm["label"], "participants": a["participants"],
                    "sessions_attended": a["attended"],
                    "mean_dose": round(a["dose_sum"] / a["dosed"], 3) if a["dosed"] else None,
                    "received_minimum": a["minimum"] if music else None})
    return out


# the allocation carries the child's study id and site: the list reads that table alone, a page (and
# its count) in study-id order from its index, however many children the trial has
ADHERENCE_SORTS = {"study_id": Allocation.study_id, "arm": Allocation.arm, "attended": _attended(),
                   "randomized_at": Allocation.randomized_at}


def adherence_page(db: Session, actor, req: PageRequest, site_code: str | None = None, arm: str | None = None,
                   search: str | None = None) -> Page:
    """A page of the music-therapy participants' dose (study id, arm, sessions attended and
    planned, dose), filtered, sorted and counted in the database."""
    content = current_protocol(db).content
    music = [a["key"] for a in content["arms"] if a["sessions_per_week"]]
    q = select(Allocation).where(Allocation.site_id.in_(_adherence_sites(db, actor, site_code)),
                                 Allocation.arm.in_(music))
    if arm:
        if arm not in music:
            raise ValidationError(N_("arm must be a music-therapy arm."), {"arm": N_("not a music-therapy arm")})
        q = q.where(Allocation.arm == arm)
    if search:
        q = q.where(Allocation.study_id.contains(search.strip().upper(), autoescape=True))
    sort = sort_key(req.sort, ADHERENCE_SORTS, "study_id")
    page = paginate(db, ordered(q, sort, ADHERENCE_SORTS, Allocation.participant_id), req, sort=sort,
                    key=Allocation.participant_id)
    ids = [a.participant_id for a in page.items]
    tallies = {t.participant_id: t for t in db.execute(select(CourseTally).where(CourseTally.participant_id.in_(ids))).scalars()}
    labels = {a["key"]: a["label"] for a in content["arms"]}
    tzs = dict(db.execute(select(Site.id, Site.timezone)).all())
    return page.map(lambda rows: [{"study_id": a.study_id, "arm": a.arm, "arm_label": labels.get(a.arm, a.arm),
                                   **planned_dose(content, a, local_date(a.randomized_at, tzs[a.site_id]),
                                                  tallies.get(a.participant_id))}
                                  for a in rows])


def planned_dose(content: dict, alloc: Allocation, start: dt.date, tally: CourseTally | None) -> dict:
    """As :func:`dose`, from the child's tally instead of its sessions."""
    _, end = course_window(start, content["course"]["months"])
    planned = planned_sessions(_arm(content, alloc.arm)["sessions_per_week"], start, end)
    attended = tally.attended if tally else 0
    return {"planned": planned, "attended": attended, "logged": tally.logged if tally else 0,
            "dose": round(attended / planned, 3) if planned else None,
            "course_start": start.isoformat(), "course_end": end.isoformat()}


def participant_course(db: Session, actor, study_id: str) -> dict:
    p, rows = sessions_of(db, actor, study_id)
    alloc = allocation_of(db, p.id)
    if alloc is None:
        raise NotFound(Msg(N_("%(study_id)s is not randomized."), study_id=p.study_id))
    content = current_protocol(db).content
    out = {"study_id": p.study_id, "arm": alloc.arm,
           "sessions": [session_view(s) for s in rows],
           "counselling": counselling_of(db, p)}
    if _arm(content, alloc.arm)["sessions_per_week"]:
        out["dose"] = dose(db, p, alloc, content, rows)
        out["goals"] = goals_view(db, p, rows)
    return out


# --- individual goals ------------------------------------------------------------------------

GOAL_DESCRIPTION_MAX = 500


def active_goals(db: Session, participant_id: int) -> set[str]:
    return set(db.execute(select(ChildGoal.goal).where(ChildGoal.participant_id == participant_id,
                                                       ChildGoal.active.is_(True))).scalars())


def goals_view(db: Session, p: Participant, sessions: list[TherapySession]) -> list[dict]:
    """The child's goals, each with how often an attended session worked on it."""
    addressed: dict[str, int] = {}
    for s in sessions:
        if s.attendance == "attended":
            for g in s.goals or []:
                addressed[g] = addressed.get(g, 0) + 1
    rows = db.execute(select(ChildGoal).where(ChildGoal.participant_id == p.id).order_by(ChildGoal.id)).scalars()
    return [{"id": g.id, "goal": g.goal, "description": g.description, "active": g.active, "set_on": g.set_on.isoformat(),
             "sessions": addressed.get(g.goal, 0)} for g in rows]


def _music_child(db: Session, actor, study_id: str, role: str = "therapist") -> tuple[Participant, Allocation, dict]:
    p = get_participant(db, actor, study_id, for_update=True)
    if not can_see_arm(db, actor, p.site_id):
        raise Forbidden(N_("A child's goals reveal the allocation; your role is blinded."))
    require_site_role(db, actor, p.site_id, role)
    ensure_writable(db)
    content = current_protocol(db).content
    alloc = allocation_of(db, p.id)
    if alloc is None or not _arm(content, alloc.arm)["sessions_per_week"]:
        raise Conflict(Msg(N_("%(study_id)s is not in a music-therapy arm: no goals are set for this child."),
                           study_id=p.study_id))
    return p, alloc, content


def set_goals(db: Session, actor, study_id: str, data: dict) -> list[ChildGoal]:
    """Record goals of a child (therapist of the site), after the first attended (assessment)
    session: ``{goals: [{goal, description?}]}`` with keys from the protocol's list. A goal the
    child has already is refused (revise it instead); one no longer pursued is taken up again."""
    p, _, content = _music_child(db, actor, study_id)
    allowed = [g["key"] for g in content.get("goals", [])]
    errors: dict[str, str] = {}
    items = data.get("goals")
    if not allowed:
        raise Conflict(N_("The protocol lists no individual goals."))
    picked = _picked_goals(items, content, errors)
    site_today = today(p.site.timezone)
    set_on = clinical_date(data.get("set_on"), "set_on", errors, site_today, required=False) or site_today
    refuse(N_("The goals were not saved"), errors,
           {"goals": N_("Goals"), "description": N_("Description"), "set_on": N_("Set on")})
    _check_after_first_session(db, p, set_on)
    existing = {g.goal: g for g in db.execute(select(ChildGoal).where(ChildGoal.participant_id == p.id)).scalars()}
    return [_set_goal(db, actor, p, existing.get(key), key, desc, set_on, content) for key, desc in picked]


def _picked_goals(items, content: dict, errors: dict[str, str]) -> list[tuple[str, str | None]]:
    """The goals listed, each (key, description), checked: at least one, each one of the
    protocol's and listed once."""
    allowed = [g["key"] for g in content.get("goals", [])]
    if not isinstance(items, list) or not items:
        errors["goals"] = N_("must list at least one goal")
        items = []
    picked: list[tuple[str, str | None]] = []
    for i, it in enumerate(items):
        if not isinstance(it, dict) or it.get("goal") not in allowed:
            errors["goals"] = Msg(N_("item %(n)s: the goal must be one of the protocol's goals (%(allowed)s)"),
                                  n=i + 1, allowed=_words(content, "goal", allowed))
            continue
        desc = text(it.get("description"), "description", errors, GOAL_DESCRIPTION_MAX)
        if it["goal"] in [g for g, _ in picked]:
            errors["goals"] = Msg(N_("%(goal)s is listed twice"), goal=_words(content, "goal", [it["goal"]]))
        picked.append((it["goal"], desc))
    return picked


def _check_after_first_session(db: Session, p: Participant, set_on) -> None:
    """Goals are set on or after the child's first attended (assessment) session."""
    first = db.execute(select(func.min(TherapySession.held_on)).where(
        TherapySession.participant_id == p.id, TherapySession.attendance == "attended")).scalar()
    if first is None:
        raise Conflict(Msg(N_("%(study_id)s: goals are set after the first (assessment) session, and no attended "
                              "session is logged yet."), study_id=p.study_id))
    if set_on < first:
        raise ValidationError(Msg(N_("The goals were not saved: Set on is before the first attended session (%(day)s)"),
                                  day=first),
                              {"set_on": Msg(N_("is before the first attended session (%(day)s)"), day=first)})


def _set_goal(db: Session, actor, p: Participant, g: ChildGoal | None, key: str, desc: str | None, set_on,
              content: dict) -> ChildGoal:
    """Set one goal, audited: a new one, or one no longer pursued taken up again (``g``); one the
    child has already is refused."""
    if g is not None and g.active:
        goal = _words(content, "goal", [key])
        raise Conflict(Msg(N_("%(study_id)s already has the goal %(goal)s: revise it instead."), study_id=p.study_id,
                           goal=goal), {"goals": Msg(N_("%(goal)s is set already"), goal=goal)})
    if g is None:
        g = ChildGoal(participant_id=p.id, goal=key, description=desc, active=True, set_on=set_on,
                      set_by_id=getattr(actor, "id", None))
        db.add(g)
        db.flush()
        audit.created(db, actor, "child_goal", g.id, {"participant": p.study_id, "goal": key, "description": desc,
                                                      "set_on": set_on},
                      reveals_allocation=True)
    else:
        changes = {"active": (False, True), "description": (g.description, desc)}
        g.active, g.description = True, desc
        audit.record(db, actor, "revise", "child_goal", g.id, changes, reason="taken up again", reveals_allocation=True)
    return g


def goal_for_revision(db: Session, actor, goal_id: int) -> tuple[ChildGoal, str]:
    """The goal and its child's study id, for the site's therapist (404 for anyone who may not
    read the child's allocation, as if there were no such goal)."""
    g = db.get(ChildGoal, goal_id)
    p = db.get(Participant, g.participant_id) if g else None
    if g is None or not can_see_arm(db, actor, p.site_id):
        raise NotFound(NO_GOAL)
    require_site_role(db, actor, p.site_id, "therapist")
    return g, p.study_id


def revise_goal(db: Session, actor, goal_id: int, data: dict) -> ChildGoal:
    """Change a goal's description or stop pursuing it (``active: false``), with a reason."""
    g, study_id = goal_for_revision(db, actor, goal_id)
    _music_child(db, actor, study_id)
    errors: dict[str, str] = {}
    reason = text(data.get("reason"), "reason", errors, 500, required=True)
    changes: dict[str, tuple] = {}
    if "description" in data:
        desc = text(data.get("description"), "description", errors, GOAL_DESCRIPTION_MAX)
        if desc != g.description:
            changes["description"] = (g.description, desc)
    if "active" in data:
        if not isinstance(data["active"], bool):
            errors["active"] = N_("must be true or false")
        elif data["active"] != g.active:
            changes["active"] = (g.active, data["active"])
    for k in sorted(set(data) - {"description", "active", "reason"}):
        errors[k] = N_("is not a field of a goal that can be revised")
    _refuse(N_("The goal was not revised"), errors)
    if not changes:
        raise ValidationError(N_("The revision changes nothing: the goal is as recorded."), {})
    for k, (_, new) in changes.items():
        setattr(g, k, new)
    g.changed_at = utcnow()
    audit.record(db, actor, "revise", "child_goal", g.id, changes, reason=reason, reveals_allocation=True)
    return g


def counselling_of(db: Session, p: Participant) -> list[dict]:
    rows = db.execute(select(CounsellingSession).where(CounsellingSession.participant_id == p.id)
                      .order_by(CounsellingSession.number)).scalars().all()
    return [{"number": c.number, "held_on": c.held_on.isoformat(), "attended": c.attended} for c in rows]
