"""The record status grid (participants x visits) and the recruitment chart. Both are built
only from arm-independent data: enrollment, randomization dates, visits and assessments."""
from __future__ import annotations

from html import escape

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from trial.monitoring.service import marks, may_read_marks
from trial.outcomes.service import schedule
from trial.participants.models import Allocation, Assessment, Participant, Screening
from trial.participants.service import participant_views, visible_participants
from trial.protocol.service import current as current_protocol
from trial.queries.service import badges as query_badges
from trial.scope import visible_site_ids
from trial.sites.models import Site

STATUS_COLOURS = {"done": "#2e7d32", "done_out_of_window": "#9ccc65", "due": "#f9a825", "overdue": "#c62828",
                  "upcoming": "#cfd8dc", "missing": "#c62828", "not_expected": "#eeeeee",
                  "not_yet_randomized": "#ffffff"}


def status_grid(db: Session, actor, site_code: str | None = None) -> dict:
    people = visible_participants(db, actor, site_code)
    views = {v["study_id"]: v for v in participant_views(db, actor, people)}
    sched = schedule(db, actor, people)
    visits = [{"key": v["key"], "label": v["label"]} for v in current_protocol(db).content["visits"]]
    ids = [p.id for p in people]
    badges = query_badges(db, actor, ids)  # as this user may see the queries: an assessor only its own kind
    forms = _forms(db, ids) if may_read_marks(actor) else None
    standing = marks(db, ids) if forms is not None else {}
    labels = {i["key"]: i["label"].split(" (")[0] for i in current_protocol(db).content["instruments"]}  # "ADOS-2"
    rows = []
    for p in people:
        cells = {c["visit"]: c for c in sched[p.id]}
        row_cells = []
        for v in visits:
            cell = dict(cells[v["key"]])
            if forms is not None:  # verified / not verified per form, for monitors and managers
                cell["forms"] = [{"label": labels.get(ins, ins), "verified": (p.id, "assessment", aid) in standing}
                                 for aid, ins in forms.get((p.id, v["key"]), [])]
            row_cells.append(cell)
        rows.append({"study_id": p.study_id, "site": views[p.study_id]["site"], "status": views[p.study_id]["status"],
                     "queries": badges.get(p.id, 0), "cells": row_cells})
    return {"visits": visits, "rows": rows, "colours": STATUS_COLOURS, "marks": forms is not None}


def _forms(db: Session, participant_ids: list[int]) -> dict[tuple[int, str], list[tuple[int, str]]]:
    out: dict[tuple[int, str], list[tuple[int, str]]] = {}
    if participant_ids:
        for aid, pid, visit, ins in db.execute(select(Assessment.id, Assessment.participant_id, Assessment.visit,
                                                      Assessment.instrument).where(Assessment.participant_id.in_(participant_ids))
                                               .order_by(Assessment.instrument)):
            out.setdefault((pid, visit), []).append((aid, ins))
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
