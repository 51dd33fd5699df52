"""Reports a trial publishes with CONSORT 2025: the baseline table by arm, recruitment and
follow-up dates, intervention as delivered, numbers with primary-outcome data at each visit, and
the blinding indexes: Bang's per arm, James' over the arms, and Bang's per assessor."""
from __future__ import annotations

import math
from collections import Counter

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from trial.course.models import TherapySession
from trial.exports.consort import POOLED_KEY, POOLED_LABEL, remember
from trial.exports.dataset import assessor_code
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
    guesses = _guesses(db, memo)
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


def _guesses(db: Session, memo: dict | None) -> list:
    """Every allocation guess with the child's arm, the visit, the confidence and who entered it."""
    return remember(memo, "guesses", lambda: db.execute(
        select(Allocation.arm, Assessment.visit, Assessment.allocation_guess, Assessment.guess_confidence,
               Assessment.entered_by_id)
        .join(Assessment, Assessment.participant_id == Allocation.participant_id)
        .where(Assessment.allocation_guess.is_not(None))).all())


def _is_right(arm: str, guess: str, music: set[str]) -> bool | None:
    """Whether a guess names the child's kind of arm (music therapy or not); None for 'unsure'."""
    return None if guess not in (MUSIC, USUAL) else (guess == MUSIC) == (arm in music)


def james(table: list[list[int]]) -> tuple[float | None, float | None]:
    """James' blinding index with its standard error (James, Bloch, Lee, Kraemer and Fuller 1996,
    Stat Med 15:1421-1434; as Bang, Ni and Davis 2004 restate it), over the arms, from the 3 x 2
    table of guesses (rows: guessed music therapy, guessed usual care, unsure) by arm (columns:
    music therapy, usual care). A kappa-type index of disagreement, a correct guess weighing 0 and
    a wrong one 1, among the guesses that are not 'unsure' (Kd = (Po - Pe) / Pe), then BI = (1 +
    Pdk + (1 - Pdk) Kd) / 2: 1 = complete blinding (every guess 'unsure', or every guess wrong), 0.5
    = as by chance, 0 = complete unblinding. Every guess 'unsure' gives 1 with SE 0 (James 1996);
    an index that cannot be computed (no wrong guess is expected) gives (None, None)."""
    n = sum(map(sum, table))
    if not n:
        return None, None
    p = [[x / n for x in row] for row in table]
    dk = p[2][0] + p[2][1]
    if dk == 1:
        return 1.0, 0.0
    rows, cols = [p[i][0] + p[i][1] for i in (0, 1)], [p[0][j] + p[1][j] for j in (0, 1)]
    w = ((0, 1), (1, 0))  # disagreement weights: the guess (row) against the arm (column)
    expected = sum(w[i][j] * rows[i] * cols[j] for i in (0, 1) for j in (0, 1))
    if expected == 0:
        return None, None
    po = sum(w[i][j] * p[i][j] for i in (0, 1) for j in (0, 1)) / (1 - dk)
    pe = expected / (1 - dk) ** 2
    kd = (po - pe) / pe
    num = sum(p[i][j] * (1 - dk) ** 2 * ((1 - dk) * w[i][j] - (1 + kd) * sum(w[k][j] * rows[k] + w[i][k] * cols[k]
                                                                            for k in (0, 1))) ** 2
              for i in (0, 1) for j in (0, 1))
    var = num / (4 * expected ** 2) + dk * (1 - dk) - (1 - dk) * (1 + kd) * (dk + (1 - dk) * (1 + kd) / 4)
    return (1 + dk + (1 - dk) * kd) / 2, math.sqrt(max(var, 0.0) / n)


def james_index(db: Session, blinded: bool, memo: dict | None = None) -> list[dict]:
    """James' blinding index per visit over the arms (the music-therapy arms against those
    without sessions), with its standard error and Wald 95% interval kept within 0 and 1. None
    for a blinded reader: which guess is right depends on the arm (a blinded bundle's guesses are
    pooled, and an index on its dummy allocation would only measure chance)."""
    if blinded:
        return []
    content = current_protocol(db).content
    music = {a["key"] for a in content["arms"] if a["sessions_per_week"] > 0}
    guesses = _guesses(db, memo)
    out = []
    for v in [v["key"] for v in content["visits"] if any(g.visit == v["key"] for g in guesses)]:
        mine = [g for g in guesses if g.visit == v]
        table = [[sum(1 for g in mine if g.allocation_guess == guess and (g.arm in music) == in_music)
                  for in_music in (True, False)] for guess in (MUSIC, USUAL, "unsure")]
        right = Counter(_is_right(g.arm, g.allocation_guess, music) for g in mine)
        est, se = james(table)
        out.append({"arm": POOLED_KEY, "visit": v, "n": len(mine), "correct": right[True], "incorrect": right[False],
                    "unsure": right[None], "james_index": _r(est), "james_se": _r(se),
                    "james_ci_low": _r(None if est is None else max(0.0, est - Z95 * se)),
                    "james_ci_high": _r(None if est is None else min(1.0, est + Z95 * se))})
    return out


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def blinding_table(db: Session, blinded: bool, memo: dict | None = None) -> dict:
    """reports/blinding_index.csv: unblinded, Bang's index per arm and visit (index "bang") and
    James' over the arms per visit (index "james", arm "all"), each in columns of its own; blinded,
    the guesses pooled per visit as bang_index gives them, and no index."""
    bang = bang_index(db, blinded, memo)
    if blinded:
        cols = list(bang[0]) if bang else ["arm", "n", "unsure", "bang_index"]
        return {"columns": cols, "rows": [[r[k] for k in cols] for r in bang]}
    rows = [{"index": "bang", **r} for r in bang] + [{"index": "james", **r} for r in james_index(db, blinded, memo)]
    cols = ["index", "arm", "visit", "n", "correct", "incorrect", "unsure", "bang_index", "ci_low", "ci_high",
            "weighted_index", "weighted_ci_low", "weighted_ci_high", "james_index", "james_se", "james_ci_low",
            "james_ci_high"]
    return {"columns": cols, "rows": [[r.get(k) for k in cols] for r in rows]}


def bang_by_assessor(db: Session, memo: dict | None = None) -> dict:
    """reports/blinding_by_assessor.csv (unblinded only): Bang's index of each assessor's guesses
    per arm, the visits pooled, so that an assessor who guesses right too often can be looked for;
    the assessor by code (trial.exports.dataset.assessor_code), never by name. Each guess counts
    once: a child guessed at two visits counts twice, and the interval assumes the guesses are
    independent (said in the CSV's ``visits`` column, the same on every row)."""
    content = current_protocol(db).content
    music = {a["key"] for a in content["arms"] if a["sessions_per_week"] > 0}
    rights: dict[tuple, list[bool | None]] = {}
    for g in _guesses(db, memo):
        rights.setdefault((g.entered_by_id, g.arm), []).append(_is_right(g.arm, g.allocation_guess, music))
    rows = []
    for who in sorted({who for who, _ in rights}, key=lambda x: (x is None, x or 0)):
        for a in content["arms"]:
            mine = rights.get((who, a["key"]))
            if mine:
                right = Counter(mine)
                bi, lo, hi = _index([{True: 1.0, False: -1.0, None: 0.0}[r] for r in mine])
                rows.append([assessor_code(who), a["key"], len(mine), right[True], right[False], right[None], bi, lo, hi,
                             BY_ASSESSOR_VISITS])
    return {"columns": ["assessor", "arm", "n", "correct", "incorrect", "unsure", "bang_index", "ci_low", "ci_high",
                        "visits"], "rows": rows}


BY_ASSESSOR_VISITS = ("pooled: n counts guesses, a child guessed at two visits counts twice; the CI assumes the "
                      "guesses independent")


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
