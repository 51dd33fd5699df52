"""The record status grid (participants x forms at each visit), the manager's overview, and
recruitment and visit completeness (the trial's on the manager's home, a site's on its page) with
their charts. All built only from arm-independent data: enrollment, randomization dates, visits
and assessments."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session

from trial import cache
from trial.audit import service as audit
from trial.dashboard import charts
from trial.dataquality.models import DataQuery
from trial.errors import Forbidden
from trial.monitoring.service import marks, may_read_marks
from trial.outcomes.service import schedule
from trial.paging import PageRequest, ordered, paginate, sort_key
from trial.participants.models import Allocation, Assessment, Participant, Screening
from trial.participants.service import participant_query, participant_sorts, participant_views, status_expression
from trial.protocol.service import current as current_protocol
from trial.queries.service import badges as query_badges
from trial.queries.service import form_badges
from trial.safety.models import AdverseEvent
from trial.scope import require_role, require_site_role, visible_site_ids
from trial.sites.models import Site
from trial.sites.service import get_by_code
from trial.timeline import local_date, today
from trial.visitplan.models import PlannedVisit

# the state of one form in the grid (with whether it is queried or verified shown beside it)
CELL_STATES = ("entered", "entered_out_of_window", "due", "missing", "upcoming", "not_expected", "not_yet_randomized")
FROM_VISIT = {"due": "due", "overdue": "missing", "missing": "missing", "upcoming": "upcoming",
              "not_expected": "not_expected", "not_yet_randomized": "not_yet_randomized", "done": "missing",
              "done_out_of_window": "missing", "not_done": "not_expected"}


def grid_columns(db: Session, actor) -> list[dict]:
    """The grid's columns: each instrument at each visit where it is taken, in the protocol's
    order, limited to the instruments this reader's roles enter or read."""
    content = current_protocol(db).content
    if actor.has_role("manager", "monitor", "statistician", "admin"):
        readable = {i["key"] for i in content["instruments"]}
    else:
        roles = {r.role for r in actor.roles}
        readable = {i["key"] for i in content["instruments"] if (i["blinded"] and "assessor" in roles)
                    or (not i["blinded"] and "coordinator" in roles)}
    return [{"visit": v["key"], "visit_label": v["label"], "instrument": i["key"],
             "label": i["label"].split(" (")[0], "blinded": i["blinded"]}  # "ADOS-2"
            for v in content["visits"] for i in content["instruments"] if v["key"] in i["visits"] and i["key"] in readable]


def status_grid(db: Session, actor, req: PageRequest, site_code: str | None = None, search: str | None = None,
                status: str | None = None) -> dict:
    """A page of the record status grid: one row per participant, one cell per instrument per
    visit with the form's state (entered, entered out of window, due, missing, upcoming, not
    expected), its open queries and, for monitors and managers, whether it is source-verified.
    Built from arm-independent data only; the page's participants are chosen, sorted and counted
    in the database, and each page costs a fixed number of queries."""
    allowed = {"study_id": Participant.study_id, "site": participant_sorts(db, actor)["site"],
               "status": status_expression(db, actor)}
    sort = sort_key(req.sort, allowed, "study_id")
    page = paginate(db, ordered(participant_query(db, actor, site_code, search, status), sort, allowed, Participant.id),
                    req, sort=sort, key=Participant.id)
    people = page.items
    views = {v["study_id"]: v for v in participant_views(db, actor, people)}
    sched = schedule(db, actor, people)
    columns = grid_columns(db, actor)
    ids = [p.id for p in people]
    entered = _entered_forms(db, ids)
    shows_marks = may_read_marks(actor)
    standing = marks(db, ids) if shows_marks else {}
    queried = form_badges(db, actor, ids)
    badges = query_badges(db, actor, ids)  # as this user may see the queries: an assessor only its own kind
    enterers = _enterers(actor, columns)
    rows = []
    for p in people:
        visit_state = {c["visit"]: c for c in sched[p.id]}
        cells = [_grid_cell(p, col, visit_state[col["visit"]], entered.get((p.id, col["visit"], col["instrument"])),
                            queried, standing if shows_marks else None, enterers) for col in columns]
        rows.append({"study_id": p.study_id, "site": views[p.study_id]["site"], "status": views[p.study_id]["status"],
                     "queries": badges.get(p.id, 0), "cells": cells})
    return {"columns": columns, "visits": _spans(columns), "page": page.map(lambda _: rows), "marks": shows_marks,
            "states": CELL_STATES}


def _entered_forms(db: Session, ids: list[int]) -> dict[tuple[int, str, str], Assessment]:
    """The forms entered for these participants by (participant, visit, instrument); of two, the
    later performed."""
    entered: dict[tuple[int, str, str], Assessment] = {}
    if ids:
        for a in db.execute(select(Assessment).where(Assessment.participant_id.in_(ids))
                            .order_by(Assessment.performed_on, Assessment.id)).scalars():
            entered[(a.participant_id, a.visit, a.instrument)] = a
    return entered


def _enterers(actor, columns: list[dict]) -> dict[tuple[int, bool], set[str]]:
    """Who may open the entry form, by (site, blinded): the instruments the reader enters there;
    assessors enter blinded instruments, coordinators the others."""
    return {(r.site_id, blinded): {c["instrument"] for c in columns if c["blinded"] == blinded}
            for r in actor.roles for blinded in (True, False)
            if (r.role == "assessor" and blinded) or (r.role == "coordinator" and not blinded)}


def _grid_cell(p: Participant, col: dict, v: dict, a: Assessment | None, queried: dict, standing: dict | None,
               enterers: dict) -> dict:
    """One cell of the grid: the form ``a`` entered (or, when none is, the state its visit ``v``
    gives), its open queries, whether it is verified (None when the reader sees no marks:
    ``standing`` is None), its window and whether the reader may enter it."""
    if a is not None:
        cell = {"state": "entered_out_of_window" if a.out_of_window else "entered", "assessment_id": a.id,
                "on": a.performed_on.isoformat(), "queries": queried.get((p.id, "assessment", a.id), 0),
                "verified": (p.id, "assessment", a.id) in standing if standing is not None else None}
    else:
        not_done = col["instrument"] in v.get("instruments_not_done", ())  # recorded not done: nothing more expected
        cell = {"state": "not_expected" if not_done else FROM_VISIT.get(v["status"], "upcoming"), "assessment_id": None,
                "queries": queried.get((p.id, col["visit"], col["instrument"]), 0), "verified": None}
    cell["window"] = (v.get("window_start"), v.get("window_end"))
    cell["enters"] = col["instrument"] in enterers.get((p.site_id, col["blinded"]), ())
    return cell


def _spans(columns: list[dict]) -> list[dict]:
    """The visits over the grid's columns, each with how many columns it spans."""
    out: list[dict] = []
    for c in columns:
        if out and out[-1]["visit"] == c["visit"]:
            out[-1]["span"] += 1
        else:
            out.append({"visit": c["visit"], "label": c["visit_label"], "span": 1})
    return out


def home_summary(db: Session, actor) -> dict:
    """Counts for the start page: screened / enrolled / randomized per visible site. No per-arm
    figure, for anyone."""
    if actor.has_role("admin") and not actor.has_role("coordinator", "therapist", "assessor", "monitor", "manager", "statistician"):
        return {"admin": True}
    sites = visible_site_ids(db, actor)
    site_rows = db.execute(select(Site).order_by(Site.code)).scalars().all()
    site_rows = [s for s in site_rows if sites is None or s.id in sites]
    ids = [s.id for s in site_rows]

    def counts(q):
        return dict(db.execute(q.where(q.selected_columns[0].in_(ids)).group_by(q.selected_columns[0])).all())
    screened = counts(select(Screening.site_id, func.count()))
    enrolled = counts(select(Participant.site_id, func.count()))
    randomized = counts(select(Participant.site_id, func.count()).join(Allocation, Allocation.participant_id == Participant.id))
    return {"sites": [{"code": s.code, "name": s.name, "target": s.target, "screened": screened.get(s.id, 0),
                       "enrolled": enrolled.get(s.id, 0), "randomized": randomized.get(s.id, 0),
                       "page": may_open_site(db, actor, s.id)} for s in site_rows]}


def recruitment_svg(db: Session, actor, words: dict[str, str], fmt_number=None, rtl: bool = False) -> str:
    """Horizontal bars per visible site: target (outline), enrolled and randomized (filled).
    ``words`` gives the chart's texts in the reader's language (title, randomized, enrolled,
    target); ``fmt_number`` writes a count; ``rtl`` for a language written right to left."""
    sites = home_summary(db, actor).get("sites", [])
    return charts.bars_svg(sites, charts.Say(words, number=fmt_number or str, rtl=rtl))


# --- the manager's dashboard -----------------------------------------------------------------

def overview(db: Session, actor, on: dt.date | None = None) -> dict:
    """The trial at a glance for the trial manager, per site and in total: randomized against
    target; retention at each post-randomization visit (children whose window has closed or who
    have every form of it entered, and of them those with every form entered); data completeness (forms entered of the forms expected
    so far); forms overdue; open queries; serious adverse events (and those not resolved).
    Pooled over the arms. Read from the visit plan and a few grouped counts: the cost does not
    grow with the pages of any list."""
    require_role(db, actor, "manager")
    head = audit.head(db)  # before the data: see trial.cache.AsOf
    protocol = current_protocol(db)
    sites = list(db.execute(select(Site).order_by(Site.code)).scalars())
    days = {s.id: on or today(s.timezone) for s in sites}
    key = ("overview", head, protocol.sha256, tuple(sorted(days.items())))
    return cache.summaries.get(key, lambda: _overview(db, protocol.content, sites, days))


def _overview(db: Session, content: dict, sites: list[Site], days: dict[int, dt.date]) -> dict:
    """The overview's figures, per site and in total (see :func:`overview`)."""
    visits = [v for v in content["visits"] if v["key"] != "baseline"]
    retention, forms = _plan_counts(db, sites, days)
    randomized = dict(db.execute(select(Participant.site_id, func.count()).join(
        Allocation, Allocation.participant_id == Participant.id).group_by(Participant.site_id)).all())
    queries = dict(db.execute(select(DataQuery.site_id, func.count()).where(DataQuery.status == "open")
                              .group_by(DataQuery.site_id)).all())
    saes = {sid: (n, unresolved) for sid, n, unresolved in db.execute(
        select(AdverseEvent.site_id, func.count(), func.sum(case((AdverseEvent.resolved_on.is_(None), 1), else_=0)))
        .where(AdverseEvent.serious.is_(True)).group_by(AdverseEvent.site_id))}

    def row(code, name, target, ids):
        f = {k: sum(forms.get(i, {}).get(k, 0) for i in ids) for k in ("expected", "entered", "overdue")}
        ret = []
        for v in visits:
            due = sum(retention.get((i, v["key"]), {}).get("due", 0) for i in ids)
            done = sum(retention.get((i, v["key"]), {}).get("complete", 0) for i in ids)
            ret.append({"visit": v["key"], "due": due, "complete": done, "share": done / due if due else None})
        n = sum(randomized.get(i, 0) for i in ids)
        return {"code": code, "name": name, "target": target, "randomized": n,
                "share_of_target": n / target if target else None, "retention": ret,
                "forms_expected": f["expected"], "forms_entered": f["entered"],
                "completeness": f["entered"] / f["expected"] if f["expected"] else None, "overdue": f["overdue"],
                "queries": sum(queries.get(i, 0) for i in ids), "saes": sum(saes.get(i, (0, 0))[0] for i in ids),
                "saes_unresolved": sum(int(saes.get(i, (0, 0))[1] or 0) for i in ids)}
    return {"visits": [v["key"] for v in visits],
            "sites": [row(s.code, s.name, s.target, [s.id]) for s in sites],
            "total": row(None, None, sum(s.target for s in sites), [s.id for s in sites])}


def _site_today(days: dict[int, dt.date]):
    """Each planned visit's site's today (from ``days``, by site id), as an SQL expression."""
    pv = PlannedVisit
    return case(*[(pv.site_id == sid, day) for sid, day in days.items()], else_=None)


def _visit_complete():
    """A planned visit with every form entered, as an SQL condition."""
    pv = PlannedVisit
    return and_(pv.blinded_entered == pv.blinded_forms, pv.other_entered == pv.other_forms)


def _plan_counts(db: Session, sites: list[Site], days: dict[int, dt.date]) -> tuple[dict, dict]:
    """From the visit plan in one grouped query: retention by (site, visit): children due (window
    closed or every form entered) and complete; forms by site: expected so far, entered, overdue."""
    pv = PlannedVisit
    retention: dict[tuple[int, str], dict] = {}
    forms: dict[int, dict] = {}
    if not sites:
        return retention, forms
    closed = pv.closes < _site_today(days)
    complete = _visit_complete()
    entered = pv.blinded_entered + pv.other_entered
    missing = pv.blinded_forms + pv.other_forms - entered
    still = and_(pv.ended.is_(False), closed)
    for site_id, visit, due, done, ent, overdue in db.execute(
            select(pv.site_id, pv.visit, func.sum(case((or_(closed, complete), 1), else_=0)),
                   func.sum(case((complete, 1), else_=0)), func.sum(entered),
                   func.sum(case((still, missing), else_=0))).group_by(pv.site_id, pv.visit)):
        retention[(site_id, visit)] = {"due": int(due or 0), "complete": int(done or 0)}
        # expected so far: what is entered, and what is missing from a closed window of a child still in the trial
        f = forms.setdefault(site_id, {"expected": 0, "entered": 0, "overdue": 0})
        f["entered"] += int(ent or 0)
        f["overdue"] += int(overdue or 0)
        f["expected"] += int(ent or 0) + int(overdue or 0)
    return retention, forms


def recruitment_over_time_svg(db: Session, actor, words: dict[str, str], fmt_month=None, fmt_number=None,
                              rtl: bool = False) -> str:
    """Cumulative randomizations by month at each site against its target, one small panel per
    site (and the trial in total), as SVG drawn here (no script, no CDN). ``words`` gives the
    chart's texts in the reader's language (title, randomized, target, total, of); ``fmt_month``
    formats a month's first day for the axis, ``fmt_number`` a count; ``rtl`` for a language
    written right to left."""
    require_role(db, actor, "manager")
    sites = list(db.execute(select(Site).order_by(Site.code)).scalars())
    months = _randomized_by_month(db, sites)
    all_months = sorted({m for per in months.values() for m in per} | {today().replace(day=1)})
    panels = [(s.code, s.target, months.get(s.id, {})) for s in sites]
    panels.append((words["total"], sum(s.target for s in sites), _summed(months.values())))
    say = charts.Say(words, fmt_month or charts.iso_month, fmt_number or str, rtl)
    return charts.panels_svg(panels, all_months[0], all_months[-1], say)


def _summed(pers) -> dict[dt.date, int]:
    """Counts by month added up over several sites'."""
    total: dict[dt.date, int] = {}
    for per in pers:
        for m, n in per.items():
            total[m] = total.get(m, 0) + n
    return total


def _randomized_by_month(db: Session, sites: list[Site]) -> dict[int, dict[dt.date, int]]:
    """Randomizations by site and month (its first day, in the site's calendar), at these sites."""
    tzs = {s.id: s.timezone for s in sites}
    months: dict[int, dict[dt.date, int]] = {s.id: {} for s in sites}
    for site_id, at in db.execute(select(Participant.site_id, Allocation.randomized_at)
                                  .join(Allocation, Allocation.participant_id == Participant.id)
                                  .where(Participant.site_id.in_(list(tzs)))):
        d = local_date(at, tzs.get(site_id, "UTC")).replace(day=1)
        months.setdefault(site_id, {})[d] = months.setdefault(site_id, {}).get(d, 0) + 1
    return months


# --- one scope's recruitment and visit completeness: the trial (the manager's home) or a site (its page)

SITE_PAGE_ROLES = ("coordinator", "monitor", "manager")  # a site's page: the managers, its coordinators and monitors


def may_open_site(db: Session, actor, site_id: int) -> bool:
    """May ``actor`` open the page of the site ``site_id``?"""
    try:
        require_site_role(db, actor, site_id, *SITE_PAGE_ROLES)
    except Forbidden:
        return False
    return True


def _scope(db: Session, actor, site_code: str | None) -> tuple[list[Site], Site | None]:
    """The sites of a scope: every site for the trial (the managers only), or the one site of
    ``site_code`` (for those who may open its page); a reader who may not is refused."""
    if site_code is None:
        require_role(db, actor, "manager")
        return list(db.execute(select(Site).order_by(Site.code)).scalars()), None
    site = get_by_code(db, site_code)
    require_site_role(db, actor, site.id, *SITE_PAGE_ROLES)
    return [site], site


def site_summary(db: Session, actor, site_code: str) -> dict:
    """The head of a site's page: its code, name, target, whether it is open, and how many children
    were screened, enrolled and randomized there (for those who may open its page)."""
    _, site = _scope(db, actor, site_code)
    row = next(r for r in home_summary(db, actor)["sites"] if r["code"] == site.code)
    return {**row, "open": site.is_open}


def progress(db: Session, actor, site_code: str | None = None) -> dict:
    """The trial's (or one site's) progress for the manager's home and a site's page, pooled over
    the arms: ``recruitment`` (see :func:`_recruitment`) and ``visits`` (see :func:`_completeness`).
    The trial in total is for the managers; a site for them and for its coordinators and monitors."""
    sites, site = _scope(db, actor, site_code)
    head = audit.head(db)  # before the data: see trial.cache.AsOf
    protocol = current_protocol(db)
    days = {s.id: today(s.timezone) for s in sites}
    month = today(site.timezone if site else None).replace(day=1)
    key = ("progress", head, protocol.sha256, site.id if site else None, month, tuple(sorted(days.items())))
    return cache.summaries.get(key, lambda: {"recruitment": _recruitment(db, sites, month),
                                             "visits": _completeness(db, protocol.content, days)})


def _recruitment(db: Session, sites: list[Site], month: dt.date) -> dict:
    """Randomizations by month at these sites, from the first month with one to ``month`` (the
    current one), every month listed (a month without any too): randomized that month,
    cumulative, and the cumulative share of the target (the sites' targets added up; None for a
    target of 0). No rows when nobody was randomized. The target is flat: the protocol and the
    sites give no recruitment period to draw a slope from."""
    per = _summed(_randomized_by_month(db, sites).values())
    months = charts.month_range(min(per), max(max(per), month)) if per else []
    target = sum(s.target for s in sites)
    rows = [{"month": m, "randomized": per.get(m, 0), "cumulative": n, "share": n / target if target else None}
            for m, n in zip(months, charts.running(per, months))]
    return {"target": target, "month": month, "rows": rows, "randomized": rows[-1]["cumulative"] if rows else 0,
            "share": rows[-1]["share"] if rows else None}


def _completeness(db: Session, content: dict, days: dict[int, dt.date]) -> list[dict]:
    """Per visit after randomization, in the protocol's order, over the sites of ``days`` (each
    site's today): visits due so far (every form entered, or the window open or closed for a
    child still in the trial: a child who withdrew or died before the window closed is no longer
    expected there), done (every form entered), open (in the window, not done), overdue (the
    window closed, not done) and completeness (done of due; None when none is due). From the
    visit plan in one grouped query; the same for every arm."""
    pv = PlannedVisit
    counts: dict[str, list[int]] = {}
    if days:
        on, complete, live = _site_today(days), _visit_complete(), pv.ended.is_(False)
        for visit, due, done, overdue in db.execute(
                select(pv.visit, func.sum(case((or_(complete, and_(live, pv.opens <= on)), 1), else_=0)),
                       func.sum(case((complete, 1), else_=0)),
                       func.sum(case((and_(live, pv.closes < on, ~complete), 1), else_=0)))
                .where(pv.site_id.in_(list(days))).group_by(pv.visit)):
            counts[visit] = [int(due or 0), int(done or 0), int(overdue or 0)]
    out = []
    for v in (v["key"] for v in content["visits"] if v["key"] != "baseline"):
        due, done, overdue = counts.get(v, [0, 0, 0])
        out.append({"visit": v, "due": due, "done": done, "open": due - done - overdue, "overdue": overdue,
                    "share": done / due if due else None})
    return out
