"""Adverse events, recorded by the site's coordinator; every step audited (as revealing: an AE can
tell the arm). A serious event notifies every manager at once and runs a 24-hour clock until one
acknowledges it by recording its report (to whom, when, the reference; further reports may follow);
a fatal one records the child's death in the same transaction."""
from __future__ import annotations

import datetime as dt
import zoneinfo
from collections import Counter

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.auth.models import User
from trial.catalogue import N_, Msg, label, term
from trial.course.models import TherapySession
from trial.dataquality.service import clear_verification
from trial.db import utcnow
from trial.errors import Conflict, Forbidden, NotFound
from trial.notify.service import SAE, notify, settle, users_with_role
from trial.paging import Page, PageRequest, ordered, paginate, sort_key
from trial.participants.models import FINAL_EVENTS, Allocation, Participant, StatusEvent
from trial.participants.service import events_of, get_participant, may_see
from trial.protocol.service import current as current_protocol
from trial.safety.models import (
    EXPECTEDNESS,
    OUTCOMES,
    RELATED,
    RELATEDNESS,
    REPORT_HOURS,
    REPORTED_TO,
    RESOLVED,
    SERIOUSNESS,
    SEVERITIES,
    AdverseEvent,
    AdverseEventFollowUp,
    AdverseEventReport,
)
from trial.scope import require_role, require_site_role, visible_site_ids
from trial.sites.models import Site
from trial.status.service import record_event
from trial.timeline import course_window, local_date, today
from trial.trialstate.service import ensure_writable
from trial.validation import clinical_date, parse_moment, refuse, text

READERS = ("coordinator", "monitor", "investigator", "manager")
REPORT_GRACE = dt.timedelta(minutes=5)  # a reporter's clock a little ahead of the server's is not "the future"


def _choice(data: dict, key: str, allowed: tuple, errors: dict, required: bool = True):
    v = data.get(key)
    if v is None and not required:
        return None
    if v not in allowed:
        errors[key] = Msg(N_("must be one of %(allowed)s"), allowed=", ".join(allowed))  # API.md's words
        return None
    return v


def _resolution(outcome: str | None, resolved_on, onset, day, errors: dict) -> dt.date | None:
    resolved = clinical_date(resolved_on, "resolved_on", errors, day, required=False,
                             not_before=(onset, N_("the onset")) if onset else None)
    if outcome in RESOLVED and resolved is None and "resolved_on" not in errors:
        errors["resolved_on"] = (N_("is required: the date of death") if outcome == "fatal"
                                 else Msg(N_("is required when the outcome is %(outcome)s"), outcome=term("ae_outcome", outcome)))
    if outcome in ("recovering", "not_recovered") and resolved is not None:
        errors["resolved_on"] = Msg(N_("is for a resolved event, not one that is %(outcome)s"),
                                    outcome=term("ae_outcome", outcome))
    return resolved


def record(db: Session, actor, study_id: str, data: dict) -> AdverseEvent:
    """Record an adverse event of a child at the coordinator's site: check the report, check it
    fits the child's exit from the trial, then write and audit it (as revealing); a fatal event
    records the death and a serious one notifies every manager, in the same transaction."""
    p = get_participant(db, actor, study_id, for_update=True)
    require_site_role(db, actor, p.site_id, "coordinator")
    ensure_writable(db)
    ev = _event_values(data, today(p.site.timezone), p.consent_date)
    died = _check_exits(db, p, ev)
    now = utcnow()
    ae = AdverseEvent(participant_id=p.id, site_id=p.site_id, term=ev["term"], onset=ev["onset"],
                      severity=ev["severity"], serious=ev["serious"], seriousness=sorted(set(ev["seriousness"])),
                      relatedness=ev["relatedness"], expectedness=ev["expectedness"], outcome=ev["outcome"],
                      resolved_on=ev["resolved_on"], description=ev["description"],
                      reported_by_id=getattr(actor, "id", None), reported_at=now,
                      report_due=now + dt.timedelta(hours=REPORT_HOURS) if ev["serious"] else None)
    db.add(ae)
    db.flush()
    audit.created(db, actor, "adverse_event", ae.id, {
        "participant": p.study_id, "term": ev["term"], "onset": ev["onset"], "severity": ev["severity"],
        "serious": ev["serious"], "seriousness": ae.seriousness, "relatedness": ev["relatedness"],
        "expectedness": ev["expectedness"], "outcome": ev["outcome"], "resolved_on": ev["resolved_on"],
        "description": ev["description"]}, reveals_allocation=True)
    if ev["outcome"] == "fatal" and died is None:
        _record_death(db, actor, p, ae)
    if ev["serious"]:
        _notify_serious(db, p, ae)
    return ae


def _event_values(data: dict, day: dt.date, consent_date: dt.date) -> dict:
    """The fields of an adverse event report, checked (``day`` is today at the site), or 400
    naming each bad one."""
    errors: dict[str, str] = {}
    what = text(data.get("term"), "term", errors, 200, required=True)  # (not `term`: the catalogue's function)
    onset = clinical_date(data.get("onset"), "onset", errors, day, not_before=(consent_date, N_("consent")))
    severity = _choice(data, "severity", SEVERITIES, errors)
    serious = data.get("serious")
    if not isinstance(serious, bool):
        errors["serious"] = N_("must be true or false")
    seriousness = data.get("seriousness") or []
    if not isinstance(seriousness, list) or any(s not in SERIOUSNESS for s in seriousness):
        errors["seriousness"] = Msg(N_("must be a list drawn from %(allowed)s"), allowed=", ".join(SERIOUSNESS))
    elif serious is True and not seriousness:
        errors["seriousness"] = N_("is required for a serious event: which criteria make it serious?")
    elif serious is False and seriousness:
        errors["seriousness"] = N_("is only for a serious event")
    relatedness = _choice(data, "relatedness", RELATEDNESS, errors)
    expectedness = _choice(data, "expectedness", EXPECTEDNESS, errors, required=False)
    outcome = _choice(data, "outcome", OUTCOMES, errors)
    resolved = _resolution(outcome, data.get("resolved_on"), onset, day, errors)
    description = text(data.get("description"), "description", errors, 4000)
    if outcome == "fatal" and serious is False:
        errors["serious"] = N_("a fatal event is serious (criterion: death)")
    if outcome == "fatal" and serious and "death" not in seriousness and "seriousness" not in errors:
        errors["seriousness"] = N_("a fatal event has the criterion death")
    refuse(N_("The adverse event was not recorded"), errors)
    return {"term": what, "onset": onset, "severity": severity, "serious": serious, "seriousness": seriousness,
            "relatedness": relatedness, "expectedness": expectedness, "outcome": outcome, "resolved_on": resolved,
            "description": description}


def _check_exits(db: Session, p: Participant, ev: dict):
    """The child's recorded death (or None), once the event fits the child's exit: a fatal event
    gives the recorded day of death; after a withdrawal nothing is accepted, after another exit
    no event that began later."""
    died = _death_event(db, p)
    final = next((e for e in events_of(db, [p.id]).get(p.id, []) if e.type in FINAL_EVENTS), None)
    fatal, resolved = ev["outcome"] == "fatal", ev["resolved_on"]
    if fatal and died is not None and died.on != resolved:
        raise Conflict(Msg(N_("%(study_id)s's death is recorded on %(died)s; this event gives %(resolved)s. Correct one "
                              "of the two dates first."), study_id=p.study_id, died=died.on, resolved=resolved),
                       {"resolved_on": Msg(N_("differs from the recorded death (%(died)s)"), died=died.on)})
    if final is not None and not (fatal and died is not None) and (final.type == "withdrawn" or ev["onset"] > final.on):
        raise Conflict(Msg(N_("%(study_id)s: %(event)s on %(day)s; no further data is accepted."), study_id=p.study_id,
                           event=term("event", final.type), day=final.on))
    return died


def _notify_serious(db: Session, p: Participant, ae: AdverseEvent) -> None:
    """Every manager told of a serious event at once, with its reporting deadline."""
    site = db.get(Site, p.site_id)
    criteria = ", ".join("%(c" + str(i) + ")s" for i in range(len(ae.seriousness)))  # each in the reader's words
    notify(db, users_with_role(db, "manager"),
           Msg(N_("Serious adverse event at %(site)s: %(study_id)s, %(term)s (onset %(day)s, %(criteria)s). To be "
                  "reported by %(due)s UTC; acknowledge it on its page."),
               site=site.code, study_id=p.study_id, term=ae.term, day=ae.onset,
               criteria=Msg(criteria, **{f"c{i}": Msg(label("seriousness", c)) for i, c in enumerate(ae.seriousness)}),
               due=f"{ae.report_due:%Y-%m-%d %H:%M}"),
           subject=Msg(N_("SAE at %(site)s: %(study_id)s"), site=site.code, study_id=p.study_id),
           link=f"/adverse-events/{ae.id}", kind=SAE)


def _death_event(db: Session, p: Participant):
    return next((e for e in events_of(db, [p.id]).get(p.id, []) if e.type == "died"), None)


def _record_death(db: Session, actor, p: Participant, ae: AdverseEvent) -> None:
    record_event(db, actor, p.study_id, {"type": "died", "on": ae.resolved_on,
                                         "reason": f"fatal serious adverse event (AE {ae.id})"})


NO_AE = N_("No such adverse event.")  # an unknown one and one the caller may not see: the same answer


def _get(db: Session, actor, ae_id: int) -> tuple[AdverseEvent, Participant]:
    ae = db.get(AdverseEvent, ae_id)
    p = db.get(Participant, ae.participant_id) if ae is not None else None
    if ae is None or not may_see(db, actor, p):  # site scoping: another site's event is not there
        raise NotFound(NO_AE)
    return ae, p


def follow_up(db: Session, actor, ae_id: int, data: dict) -> AdverseEventFollowUp:
    ae, p = _get(db, actor, ae_id)
    require_site_role(db, actor, p.site_id, "coordinator")
    ensure_writable(db)
    if ae.outcome in RESOLVED:
        raise Conflict(Msg(N_("Adverse event %(id)s is resolved (%(outcome)s on %(day)s)."), id=ae.id,
                           outcome=term("ae_outcome", ae.outcome), day=ae.resolved_on))
    day = today(p.site.timezone)
    errors: dict[str, str] = {}
    on = clinical_date(data.get("on"), "on", errors, day, not_before=(ae.onset, N_("the onset")))
    outcome = _choice(data, "outcome", OUTCOMES, errors)
    resolved = _resolution(outcome, data.get("resolved_on"), ae.onset, day, errors)
    note = text(data.get("text"), "text", errors, 4000, required=True)
    if outcome == "fatal" and not ae.serious:
        errors["outcome"] = N_("a fatal outcome makes the event serious: record it as a new serious event")
    refuse(N_("The follow-up was not recorded"), errors)
    died = _death_event(db, p)
    if outcome == "fatal" and died is not None and died.on != resolved:
        raise Conflict(Msg(N_("%(study_id)s's death is recorded on %(died)s; this follow-up gives %(resolved)s."),
                           study_id=p.study_id, died=died.on, resolved=resolved),
                       {"resolved_on": Msg(N_("differs from the recorded death (%(died)s)"), died=died.on)})
    fu = AdverseEventFollowUp(adverse_event_id=ae.id, on=on, outcome=outcome, resolved_on=resolved, text=note,
                              recorded_by_id=getattr(actor, "id", None))
    db.add(fu)
    changes = {k: (getattr(ae, k), v) for k, v in (("outcome", outcome), ("resolved_on", resolved)) if getattr(ae, k) != v}
    ae.outcome, ae.resolved_on = outcome, resolved
    if outcome == "fatal" and died is None and "death" not in ae.seriousness:  # its criterion, audited with it
        changes["seriousness"] = (ae.seriousness, sorted(set(ae.seriousness) | {"death"}))
        ae.seriousness = changes["seriousness"][1]
    db.flush()
    # the follow-up itself (its day and text) as an entity of its own, so that the trail holds every
    # field of its row (`trial audit verify --data`); the event's changes, with the text as reason
    audit.created(db, actor, "adverse_event_follow_up", fu.id, {"adverse_event": ae.id, "on": on, "outcome": outcome,
                                                                "resolved_on": resolved, "text": note},
                  reveals_allocation=True)
    audit.record(db, actor, "follow_up", "adverse_event", ae.id, changes or {"follow_up": (None, fu.id)},
                 reason=note, reveals_allocation=True)
    if changes:
        clear_verification(db, actor, "adverse_event", ae.id, p, f"follow-up {fu.id}: {note}")
    if outcome == "fatal" and died is None:
        _record_death(db, actor, p, ae)
    return fu


def acknowledge(db: Session, actor, ae_id: int, data: dict) -> AdverseEvent:
    """A manager records that a serious event was reported (to whom, when, the recipient's
    reference): the acknowledgement and the first report in one audit record. The 24-hour clock
    stops only with a report; none is acknowledged without one."""
    require_role(db, actor, "manager")
    ae, p = _get(db, actor, ae_id)
    ensure_writable(db)
    if not ae.serious:
        raise Conflict(Msg(N_("Adverse event %(id)s is not serious: there is no report clock to stop."), id=ae.id))
    if ae.acknowledged_at is not None:
        raise Conflict(Msg(N_("Adverse event %(id)s was acknowledged on %(at)s UTC."), id=ae.id,
                           at=f"{ae.acknowledged_at:%Y-%m-%d %H:%M}"))
    values = _report_values(data, ae, p.site.timezone)
    first = _add_report(db, actor, ae, values)
    ae.acknowledged_at, ae.acknowledged_by_id = first.recorded_at, getattr(actor, "id", None)
    settle(db, f"/adverse-events/{ae.id}")  # the notices that it waits to be reported no longer hold
    audit.record(db, actor, "acknowledge", "adverse_event", ae.id,
                 {"acknowledged_at": (None, ae.acknowledged_at), **_report_changes(first)}, reveals_allocation=True)
    return ae


def report(db: Session, actor, ae_id: int, data: dict) -> AdverseEventReport:
    """A further report of an acknowledged serious event (e.g. to the authority after the ethics
    committee), audited."""
    require_role(db, actor, "manager")
    ae, p = _get(db, actor, ae_id)
    ensure_writable(db)
    if not ae.serious:
        raise Conflict(Msg(N_("Adverse event %(id)s is not serious: it is not reported onwards."), id=ae.id))
    if ae.acknowledged_at is None:
        raise Conflict(Msg(N_("Adverse event %(id)s is not acknowledged yet: acknowledge it with its first report."),
                           id=ae.id))
    values = _report_values(data, ae, p.site.timezone)
    if any((r.reported_to, r.reference) == (values["reported_to"], values["reference"]) for r in ae.reports):
        raise Conflict(Msg(N_("The report to %(to)s with the reference %(reference)s is recorded already."),
                           to=Msg(label("reported_to", values["reported_to"])), reference=values["reference"]))
    rep = _add_report(db, actor, ae, values)
    audit.record(db, actor, "report", "adverse_event", ae.id, _report_changes(rep), reveals_allocation=True)
    return rep


def _report_values(data: dict, ae: AdverseEvent, tz: str | None) -> dict:
    """A report's fields, checked, or 400 naming each bad one: to whom (one of REPORTED_TO); when
    (see ``trial.validation.parse_moment``: the web form's time is the site's wall clock), not in
    the future and not before the onset (at the site); the recipient's reference (at most 80)."""
    errors: dict[str, str] = {}
    to = _choice(data, "reported_to", REPORTED_TO, errors)
    at = parse_moment(data.get("reported_at"), "reported_at", errors, tz)
    now = utcnow()
    if at is not None and at > now + REPORT_GRACE:
        errors["reported_at"] = Msg(N_("%(moment)s is in the future (it is %(now)s at the site)"),
                                    moment=_at_site(at, tz), now=_at_site(now, tz))
    elif at is not None and local_date(at, tz) < ae.onset:
        errors["reported_at"] = Msg(N_("is before %(what)s (%(day)s)"), what=Msg(N_("the onset")), day=ae.onset)
    reference = text(data.get("reference"), "reference", errors, 80, required=True)
    refuse(N_("The report was not recorded"), errors)
    return {"reported_to": to, "reported_at": at.replace(microsecond=0), "reference": reference}


def _at_site(moment: dt.datetime, tz: str | None) -> str:
    """A UTC moment as the wall-clock time at the site, the zone named."""
    local = moment.replace(tzinfo=dt.UTC).astimezone(zoneinfo.ZoneInfo(tz or "UTC"))
    return f"{local:%Y-%m-%d %H:%M} ({tz or 'UTC'})"


def _add_report(db: Session, actor, ae: AdverseEvent, values: dict) -> AdverseEventReport:
    rep = AdverseEventReport(adverse_event_id=ae.id, recorded_by_id=getattr(actor, "id", None), recorded_at=utcnow(),
                             **values)
    db.add(rep)
    db.flush()
    ae.reports.append(rep)
    return rep


def _report_changes(rep: AdverseEventReport) -> dict:
    return {"report": (None, rep.id), "reported_to": (None, rep.reported_to),
            "reported_at": (None, rep.reported_at), "reference": (None, rep.reference)}


def _require_reader(db: Session, actor) -> None:
    if actor is None or not actor.has_role(*READERS):
        raise Forbidden(N_("Adverse events are for coordinators, monitors and managers."))


def listing_query(db: Session, actor, site_code: str | None = None, serious: bool | None = None,
                  search: str | None = None):
    _require_reader(db, actor)
    sites = visible_site_ids(db, actor, *READERS)
    q = select(AdverseEvent).join(Participant, Participant.id == AdverseEvent.participant_id)
    if sites is not None:
        q = q.where(AdverseEvent.site_id.in_(sorted(sites)))
    if site_code:
        q = q.join(Site, Site.id == AdverseEvent.site_id).where(Site.code == site_code.upper())
    if serious is not None:
        q = q.where(AdverseEvent.serious.is_(serious))
    if search:
        q = q.where(Participant.study_id.contains(search.strip().upper(), autoescape=True))
    return q


def listing(db: Session, actor, site_code: str | None = None, serious: bool | None = None) -> list[AdverseEvent]:
    q = listing_query(db, actor, site_code, serious).order_by(AdverseEvent.reported_at.desc(), AdverseEvent.id.desc())
    return list(db.execute(q.limit(2000)).scalars())


AE_SORTS = {"id": AdverseEvent.id, "onset": AdverseEvent.onset, "severity": AdverseEvent.severity,
            "serious": AdverseEvent.serious, "study_id": Participant.study_id, "reported_at": AdverseEvent.reported_at,
            "outcome": AdverseEvent.outcome}


def page(db: Session, actor, req: PageRequest, site_code: str | None = None, serious: bool | None = None,
         search: str | None = None) -> Page:
    """A page of the adverse events ``actor`` may read (newest report first unless sorted otherwise)."""
    q = listing_query(db, actor, site_code, serious, search)
    sort = sort_key(req.sort, AE_SORTS, "-reported_at")
    return paginate(db, ordered(q, sort, AE_SORTS, AdverseEvent.id), req, sort=sort, key=AdverseEvent.id)


def listing_of(db: Session, actor, p: Participant) -> list[AdverseEvent]:
    _require_reader(db, actor)
    return list(db.execute(select(AdverseEvent).where(AdverseEvent.participant_id == p.id)
                           .order_by(AdverseEvent.onset, AdverseEvent.id)).scalars())


def get(db: Session, actor, ae_id: int) -> AdverseEvent:
    _require_reader(db, actor)
    return _get(db, actor, ae_id)[0]


def clock(ae: AdverseEvent, now: dt.datetime | None = None) -> str | None:
    """The 24-hour reporting clock of a serious event, until a manager acknowledges it, which is
    recording its first report (to whom, when, the reference): it stops only then."""
    if not ae.serious or ae.acknowledged_at is not None or ae.report_due is None:
        return None
    left = ae.report_due - (now or utcnow())
    if left.total_seconds() <= 0:
        return f"report overdue by {_hours(-left)}"
    return f"report due in {_hours(left)}"


def first_report(ae: AdverseEvent) -> dict | None:
    """When a serious event was first reported against its 24-hour limit: ``in_time``, and the
    hours and minutes from its recording to the first report (in time) or past the limit (late)."""
    if not ae.serious or not ae.reports or ae.report_due is None:
        return None
    first = min(r.reported_at for r in ae.reports)
    in_time = first <= ae.report_due
    span = (first - ae.reported_at) if in_time else (first - ae.report_due)
    minutes = max(int(span.total_seconds()) // 60, 0)
    return {"in_time": in_time, "hours": minutes // 60, "minutes": str(minutes % 60).zfill(2)}


def _hours(td: dt.timedelta) -> str:
    h = int(td.total_seconds() // 3600)
    m = int(td.total_seconds() % 3600 // 60)
    return f"{h} h {m:02d} min"


def as_dict(db: Session, ae: AdverseEvent, codes: dict[int, str], study_ids: dict[int, str],
            people: dict[int, str] | None = None) -> dict:
    """An adverse event as the API answers it (``people``: the recorders' e-mails by id)."""
    return {"id": ae.id, "study_id": study_ids[ae.participant_id], "site": codes[ae.site_id], "term": ae.term,
            "onset": ae.onset.isoformat(), "severity": ae.severity, "serious": ae.serious,
            "seriousness": ae.seriousness, "relatedness": ae.relatedness, "expectedness": ae.expectedness,
            "outcome": ae.outcome, "resolved_on": ae.resolved_on.isoformat() if ae.resolved_on else None,
            "description": ae.description, "reported_at": _z(ae.reported_at), "report_due": _z(ae.report_due),
            "acknowledged_at": _z(ae.acknowledged_at), "clock": clock(ae),
            "follow_ups": [{"id": f.id, "on": f.on.isoformat(), "outcome": f.outcome,
                            "resolved_on": f.resolved_on.isoformat() if f.resolved_on else None, "text": f.text}
                           for f in ae.follow_ups],
            "reports": [report_dict(r, people or {}) for r in ae.reports]}


def report_dict(r: AdverseEventReport, people: dict[int, str]) -> dict:
    return {"id": r.id, "reported_to": r.reported_to, "reported_at": _z(r.reported_at), "reference": r.reference,
            "recorded_by": people.get(r.recorded_by_id), "recorded_at": _z(r.recorded_at)}


def report_view(db: Session, r: AdverseEventReport) -> dict:
    """One report as the API answers it."""
    who = db.get(User, r.recorded_by_id) if r.recorded_by_id else None
    return report_dict(r, {who.id: who.email} if who else {})


def _z(moment: dt.datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") + "Z" if moment else None


def recorders(db: Session, rows: list[AdverseEvent]) -> dict[int, str]:
    """The e-mails of those who recorded the events' reports, by id."""
    ids = {r.recorded_by_id for ae in rows for r in ae.reports if r.recorded_by_id}
    return dict(db.execute(select(User.id, User.email).where(User.id.in_(ids))).all()) if ids else {}


def views(db: Session, rows: list[AdverseEvent]) -> list[dict]:
    codes = dict(db.execute(select(Site.id, Site.code)).all())
    ids = {ae.participant_id for ae in rows}
    study_ids = dict(db.execute(select(Participant.id, Participant.study_id).where(Participant.id.in_(ids))).all()) if ids else {}
    people = recorders(db, rows)
    return [as_dict(db, ae, codes, study_ids, people) for ae in rows]


def waiting_for_acknowledgement(db: Session, actor) -> list[AdverseEvent]:
    if actor is None or not actor.has_role("manager"):
        return []
    return list(db.execute(select(AdverseEvent).where(AdverseEvent.serious.is_(True), AdverseEvent.acknowledged_at.is_(None))
                           .order_by(AdverseEvent.report_due)).scalars())


EXITS = ("withdrawn", "lost_to_follow_up", "died")  # a child's exit from the trial: the exposure stops there
DAYS_PER_MONTH = 30.4375  # 365.25 / 12


def summary_by_arm(db: Session, until: dt.date | None = None) -> list[dict]:
    """Per arm (for unblinded readers, in the unblinded bundle): participants with an event,
    events, serious ones, by severity, and the related ones (possibly, probably or definitely);
    then the exposure and the exposure-adjusted rates (see ``exposure``; ``until`` is the lock's
    day, today when not given): the children randomized, their child-months in the course and the
    sessions they attended in it, the events with onset within a child's exposure, their rate per
    100 child-months with its exact Poisson 95% interval, and per 100 sessions attended (empty
    for an arm without sessions, not 0)."""
    arms = current_protocol(db).content["arms"]
    rows = db.execute(select(AdverseEvent.participant_id, AdverseEvent.onset, AdverseEvent.severity, AdverseEvent.serious,
                             AdverseEvent.outcome, AdverseEvent.relatedness, Allocation.arm)
                      .join(Allocation, Allocation.participant_id == AdverseEvent.participant_id)).all()
    spans, sessions = exposure(db, until or today())
    by_arm: dict[str, dict] = {a["key"]: {} for a in arms}
    for pid, span in spans.items():
        by_arm.setdefault(span[0], {})[pid] = span
    out = []
    for a in arms:
        mine = [ae for ae in rows if ae.arm == a["key"]]
        sev = Counter(ae.severity for ae in mine)
        out.append({"arm": a["key"], "participants_with_event": len({ae.participant_id for ae in mine}),
                    "events": len(mine), "serious": sum(ae.serious for ae in mine),
                    "fatal": sum(ae.outcome == "fatal" for ae in mine),
                    "mild": sev["mild"], "moderate": sev["moderate"], "severe": sev["severe"],
                    "related": sum(ae.relatedness in RELATED for ae in mine),
                    **_rates(a, mine, by_arm[a["key"]], sessions)})
    return out


def exposure(db: Session, until: dt.date) -> tuple[dict[int, tuple[str, dt.date, dt.date]], dict[int, int]]:
    """Each randomized child's arm and exposure in the course, (arm, first day, last day): from
    the day of randomization (at the site) to the earliest of the course's last day, the child's
    exit (withdrawal, loss to follow-up, death) and ``until`` (the lock's day), both days counted;
    and the sessions each child attended within the course up to ``until``."""
    months = current_protocol(db).content["course"]["months"]
    exits = dict(db.execute(select(StatusEvent.participant_id, func.min(StatusEvent.on))
                            .where(StatusEvent.type.in_(EXITS)).group_by(StatusEvent.participant_id)).all())
    spans = {}
    for pid, arm, at, tz in db.execute(select(Allocation.participant_id, Allocation.arm, Allocation.randomized_at,
                                              Site.timezone).join(Site, Site.id == Allocation.site_id)):
        start = local_date(at, tz)
        spans[pid] = (arm, start, min(course_window(start, months)[1], exits.get(pid, until), until))
    sessions = dict(db.execute(select(TherapySession.participant_id, func.count())
                               .where(TherapySession.attendance == "attended", TherapySession.outside_course.is_(False),
                                      TherapySession.held_on <= until)
                               .group_by(TherapySession.participant_id)).all())
    return spans, sessions


def _rates(arm: dict, events: list, spans: dict[int, tuple[str, dt.date, dt.date]],
           sessions: dict[int, int]) -> dict:
    """An arm's exposure and its exposure-adjusted event rates (see summary_by_arm)."""
    days = sum(max((end - start).days + 1, 0) for _, start, end in spans.values())
    child_months = days / DAYS_PER_MONTH
    within = sum(1 for ae in events if ae.participant_id in spans
                 and spans[ae.participant_id][1] <= ae.onset <= spans[ae.participant_id][2])
    attended = sum(sessions.get(pid, 0) for pid in spans) if arm["sessions_per_week"] > 0 else None
    low, high = poisson_ci(within)
    per_month = 100 / child_months if child_months else None
    return {"children": len(spans), "child_months": round(child_months, 2), "sessions_attended": attended,
            "events_in_exposure": within,
            "rate_per_100_child_months": round(within * per_month, 3) if per_month else None,
            "rate_ci_low": round(low * per_month, 3) if per_month else None,
            "rate_ci_high": round(high * per_month, 3) if per_month else None,
            "rate_per_100_sessions": round(100 * within / attended, 3) if attended else None}


def poisson_ci(k: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Garwood) interval of a Poisson count ``k``: chi2(a/2; 2k) / 2 to chi2(1 - a/2;
    2k + 2) / 2, the lower limit 0 when k is 0."""
    from scipy.stats import chi2  # deferred: SciPy is loaded only when a report is made, not with the app
    a = 1 - level
    return (float(chi2.ppf(a / 2, 2 * k)) / 2 if k else 0.0), float(chi2.ppf(1 - a / 2, 2 * k + 2)) / 2
