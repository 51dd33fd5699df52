"""A simulated TIME-A trial with a known truth, as a lock's tables (ADSL and the status events, their
variables named as trial.exports.dataset names them), for the tests of the SAP's analyses.

The truth (``Truth``): children are compliers or never-takers (``never_share`` of the music-therapy
children never attend: a "not received" event); in a complier the allocated therapy lowers ADOS
social affect by ``effect`` at 5 months (half of it at 2 months), whatever the frequency, plus
``high_extra`` for three sessions a week. The intention-to-treat effect of the pooled arms is then
``effect * (1 - never_share) + high_extra * (1 - never_share) / 2`` and the complier-average causal
effect of the pooled arms ``effect + high_extra / 2``; sessions attended scale nothing else (the
dose-response slope among compliers is driven by the frequency only). Sites have random effects,
children a random intercept; about ``missing`` of the follow-ups are missing (some recorded as not
done with a reason), some out of window; secondary outcomes move with the primary's latent child
effect and have effects of their own (``secondary_effects``).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import random
from pathlib import Path

from trial.exports.dataset import YESNO, Table, Var, _adsl_outcome_vars, arm_codes, dummy_arm_codes
from trial.protocol.schema import parse

PROTOCOL = Path(__file__).resolve().parent.parent / "config" / "protocols" / "time-a.toml"
CONTENT = parse(PROTOCOL.read_text())
DUMMY_WEIGHTS = {"A": 1, "B": 1, "C": 2}  # C stands for usual care (the reference arm's weight)


@dataclasses.dataclass
class Truth:
    effect: float = -2.0          # complier effect of music therapy at 5 months (social affect; lower is better)
    high_extra: float = -0.5      # more for three sessions a week
    never_share: float = 0.15     # music-therapy children who never attend
    missing: float = 0.13         # share of follow-up assessments missing
    out_of_window: float = 0.06   # share of follow-up assessments performed outside their window
    secondary_effects: dict = dataclasses.field(default_factory=lambda: {
        ("ados2", "rrb"): -0.6, ("ados2", "css"): -0.1, ("srs2", "total_t"): -3.0})

    def itt_pooled(self) -> float:
        return (self.effect + self.high_extra / 2) * (1 - self.never_share)

    def cace_pooled(self) -> float:
        return self.effect + self.high_extra / 2


VISIT_DAY = {"baseline": -10, "month2": 61, "month5": 152, "month12": 365}
REASONS = ["refused", "child_unwell", "family_could_not_attend", "lost_to_follow_up"]


def simulate(n: int = 600, seed: int = 11, truth: Truth | None = None, blinded: bool = False,
             content: dict = CONTENT) -> dict[str, Table]:
    """The tables ``adsl`` and ``events`` of a simulated lock (unblinded unless ``blinded``: then the
    arm is a dummy code A/B/C (C standing for usual care) and the delivered intervention is absent)."""
    truth = truth or Truth()
    rng = random.Random(seed)
    sites = {f"S{i}": rng.gauss(0, 1.0) for i in range(1, 7)}
    order = ["low", "high", "usual", "usual"]
    ivars = _adsl_outcome_vars(content)
    plan = {"low": 21, "high": 64, "usual": 0}
    start0 = dt.date(2025, 1, 6)
    rows, events = [], []
    for i in range(n):
        site = sorted(sites)[i % 6]
        arm = order[rng.randrange(4)]
        music = arm != "usual"
        never = music and rng.random() < truth.never_share
        child = rng.gauss(0, 2.0)
        start = start0 + dt.timedelta(days=rng.randrange(700))
        took = 0.0 if never else 1.0
        eff = (truth.effect + (truth.high_extra if arm == "high" else 0.0)) * took if music else 0.0
        died = rng.random() < 0.004
        withdrew = not died and rng.random() < 0.03
        exit_day = rng.randrange(40, 330) if (died or withdrew) else None
        latent = {"baseline": 0.0, "month2": eff / 2, "month5": eff, "month12": eff * 0.8}
        outcome_vals: list = []
        form_missing: dict = {}
        for var in ivars:
            if var.field:  # a value
                ins, fld, vk = var.instrument, var.field, var.visit
                base = {"social_affect": 12.0, "rrb": 4.0, "css": 7.0, "total_t": 75.0}[fld]
                scale = {"social_affect": 1.0, "rrb": 0.3, "css": 0.35, "total_t": 2.5}[fld]
                sec = truth.secondary_effects.get((ins, fld), 0.0) * (latent[vk] / truth.effect if truth.effect else 0)
                mean = base + scale * (sites[site] + child) + (latent[vk] if fld == "social_affect" else sec)
                if (ins, vk) not in form_missing:  # a form is entered whole or not at all
                    gone = exit_day is not None and VISIT_DAY[vk] > exit_day
                    form_missing[(ins, vk)] = vk != "baseline" and (gone or rng.random() < truth.missing)
                miss = form_missing[(ins, vk)]
                val = None if miss else round(mean + rng.gauss(0, 1.5 * scale), 2)
                if val is not None and var.type == "int":
                    val = round(val)
                outcome_vals.append(val)
            else:
                kind = "dt" if var.type == "date" else "ow" if var.type == "int" else "nr"
                outcome_vals.append(kind)  # filled below from the values of the same (instrument, visit)
        # the per-form columns: a date and a window flag where a value was entered, a reason for some not done
        row_out, last_vals = [], []
        for var, val in zip(ivars, outcome_vals):
            if var.field:
                row_out.append(val)
                last_vals.append(val)
                continue
            got = any(v is not None for v in last_vals)
            day = start + dt.timedelta(days=VISIT_DAY[var.visit])
            if val == "dt":
                row_out.append(day.isoformat() if got else None)
            elif val == "ow":
                row_out.append((1 if rng.random() < truth.out_of_window and var.visit != "baseline" else 0) if got else None)
            else:
                row_out.append(None if got or rng.random() < 0.5 else rng.choice(REASONS))
                last_vals = []
        sessplan = plan[arm]
        sessatt = 0 if (never or not music) else min(sessplan, max(1, int(rng.gauss(0.8, 0.15) * sessplan)))
        dose = round(sessatt / sessplan, 3) if sessplan else None
        prim = row_out[next(k for k, v in enumerate(ivars) if v.primary)]
        has_prim = int(prim is not None)
        pp = int(has_prim and (not music or (dose is not None and dose >= 0.5)))
        exitdt = (start + dt.timedelta(days=exit_day)).isoformat() if exit_day is not None else None
        exitrsn = "died" if died else "withdrawn" if withdrew else None
        sid = f"{site}-{i:04d}"
        code = _dummy(arm, rng) if blinded else arm
        row = [sid, site, site, site, code, start.isoformat(), exitdt, exitrsn, *row_out]
        if not blinded:
            row += [sessatt, 0, sessplan, dose]
        row += [1, has_prim] + ([] if blinded else [pp])
        rows.append(tuple(row))
        if never and not blinded:
            events.append((sid, "not_received", (start + dt.timedelta(days=30)).isoformat(), ""))
        if exitrsn:
            events.append((sid, exitrsn, exitdt, ""))
    arm_var = Var("arm", "Arm", "str", codes=arm_codes(content)) if not blinded else \
        Var("arm", "Arm code: DUMMY allocation (blinded)", "str", codes=dummy_arm_codes(content, DUMMY_WEIGHTS))
    vars_ = [Var("studyid", "Study ID", "str"), Var("site", "Site code", "str"), Var("stratum", "Stratum", "str"),
             Var("c_site", "Stratum as corrected: site", "str"), arm_var,
             Var("randdt", "Date of randomization (site's calendar)", "date"),
             Var("exitdt", "Date the child left the trial", "date"), Var("exitrsn", "Why the child left", "str"),
             *ivars]
    if not blinded:
        vars_ += [Var("sessatt", "Sessions attended in the course", "int"), Var("sessout", "Sessions after", "int"),
                  Var("sessplan", "Sessions planned", "int"), Var("dose", "Dose", "float")]
    vars_ += [Var("ittfl", "ITT", "int", codes=YESNO), Var("primfl", "Has the primary outcome", "int", codes=YESNO)]
    if not blinded:
        vars_.append(Var("ppfl", "Per protocol", "int", codes=YESNO))
    ev_vars = [Var("studyid", "Study ID", "str"), Var("evtype", "Event", "str"), Var("evdt", "Date", "date"),
               Var("reason", "Reason", "str")]
    meta = {"dummy_weights": dict(DUMMY_WEIGHTS)} if blinded else {}
    return {"adsl": Table("adsl", "Analysis dataset", vars_, rows, meta=meta),
            "events": Table("events", "Status events", ev_vars, sorted(events))}


def _dummy(arm: str, rng: random.Random) -> str:
    """A dummy code unrelated to the arm (C has the reference arm's weight)."""
    return rng.choice(["A", "B", "C", "C"])
