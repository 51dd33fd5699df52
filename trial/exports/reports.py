"""Reports a trial publishes with CONSORT 2025: the baseline table by arm, recruitment and
follow-up dates, intervention as delivered, numbers with primary-outcome data at each visit, and
Bang's blinding index per arm."""
from __future__ import annotations

import csv
import io
import statistics
from collections import Counter

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from trial.course.models import TherapySession
from trial.exports.consort import POOLED_KEY, POOLED_LABEL
from trial.participants.models import Allocation, Assessment, Participant, Screening
from trial.participants.service import age_in_months
from trial.protocol.service import current as current_protocol
from trial.sites.models import Site

MUSIC, USUAL = "music_therapy", "usual_care"


def bang_index(db: Session, blinded: bool) -> list[dict]:
    """Bang's blinding index per arm: BI = (correct - incorrect) / n over the assessors' guesses;
    1 = all guessed right (unblinded), 0 = random, -1 = all guessed the opposite. 'unsure' counts in
    n only. Music-therapy arms are correct with 'music_therapy', arms without sessions with
    'usual_care'. A blinded reader gets one pooled row of the guesses, without an index (which
    guess is correct depends on the arm)."""
    arms = current_protocol(db).content["arms"]
    music = {a["key"] for a in arms if a["sessions_per_week"] > 0}
    guesses = db.execute(select(Allocation.arm, Assessment.allocation_guess)
                         .join(Assessment, Assessment.participant_id == Allocation.participant_id)
                         .where(Assessment.allocation_guess.is_not(None))).all()
    if blinded:
        g = Counter(guess for _, guess in guesses)
        return [{"arm": POOLED_KEY, "n": sum(g.values()), "guessed_music_therapy": g[MUSIC],
                 "guessed_usual_care": g[USUAL], "unsure": g["unsure"], "bang_index": None}]
    out = []
    for a in arms:
        g = Counter(guess for arm, guess in guesses if arm == a["key"])
        right, wrong = (MUSIC, USUAL) if a["key"] in music else (USUAL, MUSIC)
        n = sum(g.values())
        out.append({"arm": a["key"], "n": n, "correct": g[right], "incorrect": g[wrong],
                    "unsure": g["unsure"], "bang_index": round((g[right] - g[wrong]) / n, 3) if n else None})
    return out


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "—"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.1f} ({sd:.1f})"


def _pct(k: int, n: int) -> str:
    return f"{k} ({100 * k / n:.0f}%)" if n else "0"


def baseline_table(db: Session, blinded: bool) -> dict:
    """Table 1: baseline characteristics by arm, n, mean (SD) and n (%); for a blinded reader one
    pooled column."""
    content = current_protocol(db).content
    arm_keys = [] if blinded else [a["key"] for a in content["arms"]]
    rows = db.execute(select(Participant.id, Participant.date_of_birth, Participant.consent_date, Participant.sex,
                             Site.code, Allocation.arm).join(Allocation, Allocation.participant_id == Participant.id)
                      .join(Site, Site.id == Participant.site_id)).all()
    base = {}
    for pid, ins, values in db.execute(select(Assessment.participant_id, Assessment.instrument, Assessment.values)
                                       .where(Assessment.visit == "baseline")).all():
        base.setdefault(pid, {})[ins] = values
    cols = {k: [r for r in rows if r.arm == k] for k in arm_keys}
    cols["all"] = list(rows)
    order = arm_keys + ["all"]
    table = [["Characteristic"] + [((POOLED_LABEL if blinded else "Total") if k == "all" else k) for k in order],
             ["Participants, n"] + [str(len(cols[k])) for k in order],
             ["Age, months, mean (SD)"] + [_mean_sd([age_in_months(r.date_of_birth, r.consent_date) for r in cols[k]]) for k in order]]
    for sex in ("female", "male"):
        table.append([f"Sex {sex}, n (%)"] + [_pct(sum(1 for r in cols[k] if r.sex == sex), len(cols[k])) for k in order])
    for site in sorted({r.code for r in rows}):
        table.append([f"Site {site}, n (%)"] + [_pct(sum(1 for r in cols[k] if r.code == site), len(cols[k])) for k in order])
    for ins in content["instruments"]:
        for f in ins["fields"]:
            if f["type"] in ("integer", "number"):
                table.append([f"{ins['key']} {f['label']}, mean (SD)"] + [
                    _mean_sd([base[r.id][ins["key"]][f["key"]] for r in cols[k]
                              if ins["key"] in base.get(r.id, {}) and base[r.id][ins["key"]].get(f["key"]) is not None])
                    for k in order])
                table.append(["  with data, n"] + [str(sum(1 for r in cols[k] if base.get(r.id, {}).get(ins["key"], {}).get(f["key"]) is not None)) for k in order])
    return {"columns": table[0], "rows": table[1:]}


def table_csv(t: dict) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(t["columns"])
    w.writerows(t["rows"])
    return buf.getvalue().encode("utf-8")


def trial_facts(db: Session, blinded: bool) -> dict:
    """Recruitment and follow-up dates, intervention as delivered (unblinded only), and numbers
    with primary-outcome data at each visit (by arm; pooled for a blinded reader)."""
    content = current_protocol(db).content
    prim = content["primary_outcome"]
    first_scr, last_scr = db.execute(select(func.min(Screening.screened_on), func.max(Screening.screened_on))).one()
    first_rand, last_rand = db.execute(select(func.min(Allocation.randomized_at), func.max(Allocation.randomized_at))).one()
    last_fu = db.execute(select(func.max(Assessment.performed_on)).where(Assessment.visit != "baseline")).scalar()
    per_visit = {}
    rows = db.execute(select(Allocation.arm, Assessment.visit, Assessment.values).join(
        Assessment, Assessment.participant_id == Allocation.participant_id).where(Assessment.instrument == prim["instrument"])).all()
    columns = [POOLED_KEY] if blinded else [a["key"] for a in content["arms"]]
    for v in content["visits"]:
        counts = Counter(POOLED_KEY if blinded else arm for arm, visit, values in rows
                         if visit == v["key"] and values.get(prim["field"]) is not None)
        per_visit[v["key"]] = {k: counts.get(k, 0) for k in columns}
    facts = {"recruitment": {"first_screening": first_scr.isoformat() if first_scr else None,
                             "last_screening": last_scr.isoformat() if last_scr else None,
                             "first_randomization": first_rand.date().isoformat() if first_rand else None,
                             "last_randomization": last_rand.date().isoformat() if last_rand else None,
                             "last_follow_up_assessment": last_fu.isoformat() if last_fu else None},
             "primary_outcome_data_by_visit": per_visit}
    if not blinded:
        delivered = dict(db.execute(select(Allocation.arm, func.count()).join(
            TherapySession, TherapySession.participant_id == Allocation.participant_id).where(
            TherapySession.attendance == "attended").group_by(Allocation.arm)).all())
        allocated = dict(db.execute(select(Allocation.arm, func.count()).group_by(Allocation.arm)).all())
        facts["sessions_delivered"] = {a["key"]: {"attended_sessions": delivered.get(a["key"], 0),
                                                  "participants": allocated.get(a["key"], 0),
                                                  "per_participant": round(delivered.get(a["key"], 0) / allocated[a["key"]], 1)
                                                  if allocated.get(a["key"]) else None}
                                       for a in content["arms"]}
    return facts
