"""The record status grid (participants x forms at each visit) and the recruitment chart. Both are built
only from arm-independent data: enrollment, randomization dates, visits and assessments."""
from __future__ import annotations

from html import escape

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from trial.monitoring.service import marks, may_read_marks
from trial.outcomes.service import schedule
from trial.paging import PageRequest, ordered, paginate, sort_key
from trial.participants.models import Allocation, Assessment, Participant, Screening
from trial.participants.service import participant_query, participant_sorts, participant_views, status_expression
from trial.protocol.service import current as current_protocol
from trial.queries.service import badges as query_badges
from trial.queries.service import form_badges
from trial.scope import visible_site_ids
from trial.sites.models import Site

# the state of one form in the grid (with whether it is queried or verified shown beside it)
CELL_STATES = ("entered", "entered_out_of_window", "due", "missing", "upcoming", "not_expected", "not_yet_randomized")
FROM_VISIT = {"due": "due", "overdue": "missing", "missing": "missing", "upcoming": "upcoming",
              "not_expected": "not_expected", "not_yet_randomized": "not_yet_randomized", "done": "missing",
              "done_out_of_window": "missing"}


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
                    req, sort=sort)
    people = page.items
    views = {v["study_id"]: v for v in participant_views(db, actor, people)}
    sched = schedule(db, actor, people)
    columns = grid_columns(db, actor)
    ids = [p.id for p in people]
    entered: dict[tuple[int, str, str], Assessment] = {}
    if ids:
        for a in db.execute(select(Assessment).where(Assessment.participant_id.in_(ids))
                            .order_by(Assessment.performed_on, Assessment.id)).scalars():
            entered[(a.participant_id, a.visit, a.instrument)] = a
    shows_marks = may_read_marks(actor)
    standing = marks(db, ids) if shows_marks else {}
    queried = form_badges(db, actor, ids)
    badges = query_badges(db, actor, ids)  # as this user may see the queries: an assessor only its own kind
    # who may open the entry form: assessors enter blinded instruments, coordinators the others
    enterers = {(r.site_id, blinded): {c["instrument"] for c in columns if c["blinded"] == blinded}
                for r in actor.roles for blinded in (True, False)
                if (r.role == "assessor" and blinded) or (r.role == "coordinator" and not blinded)}
    rows = []
    for p in people:
        visit_state = {c["visit"]: c for c in sched[p.id]}
        cells = []
        for col in columns:
            v = visit_state[col["visit"]]
            a = entered.get((p.id, col["visit"], col["instrument"]))
            if a is not None:
                cell = {"state": "entered_out_of_window" if a.out_of_window else "entered", "assessment_id": a.id,
                        "on": a.performed_on.isoformat(), "queries": queried.get((p.id, "assessment", a.id), 0),
                        "verified": (p.id, "assessment", a.id) in standing if shows_marks else None}
            else:
                cell = {"state": FROM_VISIT.get(v["status"], "upcoming"), "assessment_id": None,
                        "queries": queried.get((p.id, col["visit"], col["instrument"]), 0), "verified": None}
            cell["window"] = (v.get("window_start"), v.get("window_end"))
            cell["enters"] = col["instrument"] in enterers.get((p.site_id, col["blinded"]), ())
            cells.append(cell)
        rows.append({"study_id": p.study_id, "site": views[p.study_id]["site"], "status": views[p.study_id]["status"],
                     "queries": badges.get(p.id, 0), "cells": cells})
    return {"columns": columns, "visits": _spans(columns), "page": page.map(lambda _: rows), "marks": shows_marks,
            "states": CELL_STATES}


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
                       "enrolled": enrolled.get(s.id, 0), "randomized": randomized.get(s.id, 0)} for s in site_rows]}


def recruitment_svg(db: Session, actor) -> str:
    """Horizontal bars per site: target (outline), enrolled and randomized (filled)."""
    sites = home_summary(db, actor).get("sites", [])
    bar_h, gap, left, width = 18, 10, 70, 460
    top = 30
    scale = max([s["target"] for s in sites] + [s["enrolled"] for s in sites] + [1])
    height = top + len(sites) * (bar_h + gap) + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 80}" height="{height}" '
           f'viewBox="0 0 {left + width + 80} {height}" role="img" aria-label="Recruitment against target by site" '
           'font-family="sans-serif" font-size="12">',
           '<text x="0" y="16" font-weight="bold">Recruitment against target</text>']
    for i, s in enumerate(sites):
        y = top + i * (bar_h + gap)
        w_t = width * s["target"] / scale
        w_e = width * s["enrolled"] / scale
        w_r = width * s["randomized"] / scale
        out += [f'<text x="0" y="{y + 13}">{escape(s["code"])}</text>',
                f'<rect x="{left}" y="{y}" width="{w_t:.1f}" height="{bar_h}" fill="none" stroke="#5e6b78"/>',
                f'<rect x="{left}" y="{y + 3}" width="{w_e:.1f}" height="{bar_h - 6}" fill="#90caf9"/>',
                f'<rect x="{left}" y="{y + 3}" width="{w_r:.1f}" height="{bar_h - 6}" fill="#1f5f8b"/>',
                f'<text x="{left + max(w_t, w_e) + 6:.1f}" y="{y + 13}">{s["randomized"]} / {s["target"]}</text>']
    y = top + len(sites) * (bar_h + gap) + 10
    out += [f'<rect x="{left}" y="{y}" width="12" height="10" fill="#1f5f8b"/><text x="{left + 16}" y="{y + 9}">randomized</text>',
            f'<rect x="{left + 100}" y="{y}" width="12" height="10" fill="#90caf9"/><text x="{left + 116}" y="{y + 9}">enrolled</text>',
            f'<rect x="{left + 190}" y="{y}" width="12" height="10" fill="none" stroke="#5e6b78"/><text x="{left + 206}" y="{y + 9}">target</text>',
            "</svg>"]
    return "\n".join(out)
