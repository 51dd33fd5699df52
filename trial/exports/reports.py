"""Reports a trial publishes with CONSORT 2025: the baseline table by arm, recruitment and
follow-up dates, intervention as delivered, numbers with primary-outcome data at each visit, and
Bang's blinding index per arm."""
from __future__ import annotations

import math
from collections import Counter

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from trial.course.models import TherapySession
from trial.exports.consort import POOLED_KEY, POOLED_LABEL, remember
from trial.exports.formats import csv_bytes
from trial.participants.models import Allocation, Assessment, Participant, Screening
from trial.participants.service import age_in_months
from trial.protocol.service import current as current_protocol
from trial.sites.models import Site

MUSIC, USUAL = "music_therapy", "usual_care"


Z95 = 1.959963984540054


def _index(scores: list[float]) -> tuple[float | None, float | None, float | None]:
    """The mean of the guesses' scores with its Wald 95% interval (Bang, Ni and Davis 2004: the
    variance of BI = p_c(1 - p_c) + p_i(1 - p_i) + 2 p_c p_i over n, which is the variance of the
    scores +1 / -1 / 0 over n), kept within -1 and 1."""
    n = len(scores)
    if not n:
        return None, None, None
    mean = sum(scores) / n
    var = sum((x - mean) ** 2 for x in scores) / n
    half = Z95 * math.sqrt(var / n)
    return round(mean, 3), round(max(-1.0, mean - half), 3), round(min(1.0, mean + half), 3)


def bang_index(db: Session, blinded: bool, memo: dict | None = None) -> list[dict]:
    """Bang's blinding index per arm and per visit (a child is guessed at each follow-up visit:
    the visits are not pooled): BI = (correct - incorrect) / n, 1 = every guess right
    (unblinded), 0 = as by chance, -1 = every guess the opposite; 'unsure' counts in n only. With
    its 95% confidence interval, and the variant weighted by the assessor's confidence (a guess
    of confidence c on the 1-5 scale counts c / 5). Music-therapy arms are guessed right with
    'music_therapy', arms without sessions with 'usual_care'. A blinded reader gets the guesses
    pooled over the arms per visit, without an index (which guess is right depends on the arm)."""
    content = current_protocol(db).content
    arms = content["arms"]
    music = {a["key"] for a in arms if a["sessions_per_week"] > 0}
    guesses = remember(memo, "guesses", lambda: db.execute(
        select(Allocation.arm, Assessment.visit, Assessment.allocation_guess, Assessment.guess_confidence)
        .join(Assessment, Assessment.participant_id == Allocation.participant_id)
        .where(Assessment.allocation_guess.is_not(None))).all())
    visits = [v["key"] for v in content["visits"] if any(g.visit == v["key"] for g in guesses)]
    out = []
    if blinded:
        for v in visits:
            g = Counter(x.allocation_guess for x in guesses if x.visit == v)
            out.append({"arm": POOLED_KEY, "visit": v, "n": sum(g.values()), "guessed_music_therapy": g[MUSIC],
                        "guessed_usual_care": g[USUAL], "unsure": g["unsure"], "bang_index": None})
        return out
    for a in arms:
        right, wrong = (MUSIC, USUAL) if a["key"] in music else (USUAL, MUSIC)
        for v in visits:
            mine = [x for x in guesses if x.arm == a["key"] and x.visit == v]
            g = Counter(x.allocation_guess for x in mine)
            score = [1.0 if x.allocation_guess == right else -1.0 if x.allocation_guess == wrong else 0.0 for x in mine]
            weighted = [s * (x.guess_confidence or 0) / 5 for s, x in zip(score, mine)]
            bi, lo, hi = _index(score)
            wbi, wlo, whi = _index(weighted)
            out.append({"arm": a["key"], "visit": v, "n": len(mine), "correct": g[right], "incorrect": g[wrong],
                        "unsure": g["unsure"], "bang_index": bi, "ci_low": lo, "ci_high": hi,
                        "weighted_index": wbi, "weighted_ci_low": wlo, "weighted_ci_high": whi})
    return out


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "—"
    mean = math.fsum(values) / len(values)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return f"{mean:.1f} ({sd:.1f})"


def _pct(k: int, n: int) -> str:
    return f"{k} ({100 * k / n:.1f}%)" if n else "0"


def baseline_table(db: Session, blinded: bool, memo: dict | None = None) -> dict:
    """Table 1 as a journal prints it: a column per arm headed with its label and N, and the total
    (one pooled column for a blinded reader); age and each baseline score as mean (SD) of those
    with data and a row of the number missing; sex and site as n (%)."""
    content = current_protocol(db).content
    arm_keys = [] if blinded else [a["key"] for a in content["arms"]]
    arm_label = {a["key"]: a["label"] for a in content["arms"]}
    rows = remember(memo, "baseline participants", lambda: db.execute(
        select(Participant.id, Participant.date_of_birth, Participant.consent_date, Participant.sex, Site.code, Allocation.arm)
        .join(Allocation, Allocation.participant_id == Participant.id).join(Site, Site.id == Participant.site_id)).all())
    base = remember(memo, "baseline values", lambda: _baseline_values(db))
    cols = {k: [r for r in rows if r.arm == k] for k in arm_keys}
    cols["all"] = list(rows)
    order = arm_keys + ["all"]

    def head(k):
        name = (POOLED_LABEL if blinded else "Total") if k == "all" else arm_label[k]
        return f"{name} (N = {len(cols[k])})"

    table = [["Characteristic"] + [head(k) for k in order],
             ["Age at consent, months, mean (SD)"] + [_mean_sd([age_in_months(r.date_of_birth, r.consent_date) for r in cols[k]])
                                                      for k in order]]
    table += _sex_rows(cols, order) + _site_rows(rows, cols, order) + _score_rows(content, rows, base, cols, order)
    return {"columns": table[0], "rows": table[1:],
            "notes": ["Mean (SD) of the participants with data; n (%) of the participants in the column.",
                      "Baseline: the assessment at the baseline visit (before randomization)."]}


def _baseline_values(db: Session) -> dict[int, dict[str, dict]]:
    """Each child's baseline assessments: the values by instrument."""
    base: dict[int, dict[str, dict]] = {}
    for pid, ins, values in db.execute(select(Assessment.participant_id, Assessment.instrument, Assessment.values)
                                       .where(Assessment.visit == "baseline")).all():
        base.setdefault(pid, {})[ins] = values
    return base


def _sex_rows(cols: dict[str, list], order: list[str]) -> list[list[str]]:
    """Sex, n (%) in each column (a row of the missing only when some are)."""
    table = [["Sex, n (%)"] + [""] * len(order)]
    for sex, word in (("female", "Female"), ("male", "Male")):
        table.append([f"  {word}"] + [_pct(sum(1 for r in cols[k] if r.sex == sex), len(cols[k])) for k in order])
    missing_sex = [sum(1 for r in cols[k] if r.sex not in ("female", "male")) for k in order]
    if any(missing_sex):
        table.append(["  Missing"] + [str(n) for n in missing_sex])
    return table


def _site_rows(rows: list, cols: dict[str, list], order: list[str]) -> list[list[str]]:
    """Site, n (%) in each column, the sites in the order of their codes."""
    table = [["Site, n (%)"] + [""] * len(order)]
    for site in sorted({r.code for r in rows}):
        table.append([f"  {site}"] + [_pct(sum(1 for r in cols[k] if r.code == site), len(cols[k])) for k in order])
    return table


def _score_rows(content: dict, rows: list, base: dict, cols: dict[str, list], order: list[str]) -> list[list[str]]:
    """Each numeric field of each instrument at baseline: mean (SD) of those with data, and the
    number missing."""
    table = []
    for ins in content["instruments"]:
        for f in ins["fields"]:
            if f["type"] in ("integer", "number"):
                units = f", {f['units']}" if f.get("units") else ""
                value = {r.id: base.get(r.id, {}).get(ins["key"], {}).get(f["key"]) for r in rows}  # once a child
                table.append([f"{ins['label']}: {f['label']}{units}, mean (SD)"] + [
                    _mean_sd([value[r.id] for r in cols[k] if value[r.id] is not None]) for k in order])
                table.append(["  Missing, n"] + [str(sum(1 for r in cols[k] if value[r.id] is None)) for k in order])
    return table


def table_csv(t: dict) -> bytes:
    """A table as CSV: the header row and the rows (a table's notes are in its PDF); text cells
    spreadsheet-safe (trial.exports.formats)."""
    return csv_bytes(t["columns"], t["rows"])


def trial_facts(db: Session, blinded: bool, memo: dict | None = None) -> dict:
    """Recruitment and follow-up dates, intervention as delivered (unblinded only), and numbers
    with primary-outcome data at each visit (by arm; pooled for a blinded reader)."""
    content = current_protocol(db).content
    prim = content["primary_outcome"]
    first_scr, last_scr = db.execute(select(func.min(Screening.screened_on), func.max(Screening.screened_on))).one()
    first_rand, last_rand = db.execute(select(func.min(Allocation.randomized_at), func.max(Allocation.randomized_at))).one()
    last_fu = db.execute(select(func.max(Assessment.performed_on)).where(Assessment.visit != "baseline")).scalar()
    per_visit = {}
    rows = remember(memo, "primary instrument", lambda: db.execute(select(Allocation.arm, Assessment.visit, Assessment.values).join(
        Assessment, Assessment.participant_id == Allocation.participant_id).where(Assessment.instrument == prim["instrument"])).all())
    columns = [POOLED_KEY] if blinded else [a["key"] for a in content["arms"]]
    counts = Counter((visit, POOLED_KEY if blinded else arm) for arm, visit, values in rows
                     if values.get(prim["field"]) is not None)
    for v in content["visits"]:
        per_visit[v["key"]] = {k: counts.get((v["key"], k), 0) for k in columns}
    facts = {"recruitment": {"first_screening": first_scr.isoformat() if first_scr else None,
                             "last_screening": last_scr.isoformat() if last_scr else None,
                             "first_randomization": first_rand.date().isoformat() if first_rand else None,
                             "last_randomization": last_rand.date().isoformat() if last_rand else None,
                             "last_follow_up_assessment": last_fu.isoformat() if last_fu else None},
             "primary_outcome_data_by_visit": per_visit}
    if not blinded:
        # one definition of a session delivered, as CONSORT's "received", the ADSL's sessatt and the
        # intervention-as-delivered table count it: attended within the five-month course
        counts: dict[tuple[str, bool], int] = {(arm, bool(outside)): n for arm, outside, n in db.execute(
            select(Allocation.arm, TherapySession.outside_course, func.count()).join(
                TherapySession, TherapySession.participant_id == Allocation.participant_id).where(
                TherapySession.attendance == "attended").group_by(Allocation.arm, TherapySession.outside_course)).all()}
        allocated = dict(db.execute(select(Allocation.arm, func.count()).group_by(Allocation.arm)).all())
        facts["sessions_delivered"] = {a["key"]: {
            "definition": "attended sessions within the course (randomization day to the day before the same date "
                          f"{content['course']['months']} months later)",
            "attended_sessions": counts.get((a["key"], False), 0),
            "attended_after_course": counts.get((a["key"], True), 0),
            "participants": allocated.get(a["key"], 0),
            "per_participant": round(counts.get((a["key"], False), 0) / allocated[a["key"]], 1)
            if allocated.get(a["key"]) else None} for a in content["arms"]}
    return facts
