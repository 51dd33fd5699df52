"""Treatment fidelity: which sessions are rated, the ratings, and adherence by therapist and site.

The sample is drawn per therapist to the same standard as the randomization: a fresh seed from
the operating system's CSPRNG, recorded with the population it was drawn from and audited, so
anyone can derive it again (:func:`derive`, ``trial fidelity verify``). Each attended session a
therapist led enters exactly one draw's population (the first draw after it was logged); the
draw takes ``ceil(share × population)`` sessions, those with the smallest HMAC-SHA256 of their id
under the seed. A sampled session is rated on the protocol's fidelity items by a credentialed
therapist who did not lead it and may read that site's allocations. Everything here reveals the
allocation (only music-therapy arms have sessions): managers and therapists only."""
from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
from collections.abc import Callable

from sqlalchemy import Text, cast, func, or_, select
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.auth.models import RoleAssignment, User
from trial.catalogue import N_, Joined, Label, Msg
from trial.course.models import ChildGoal, TherapySession
from trial.course.service import NO_SESSION
from trial.credentials import service as credentials
from trial.db import utcnow
from trial.errors import Conflict, Forbidden, NotFound
from trial.fidelity.models import FidelityDraw, FidelityRating, FidelitySample
from trial.participants.models import Allocation, Participant
from trial.protocol.service import current as current_protocol
from trial.scope import can_see_arm, require_role, require_site_role, visible_site_ids
from trial.sites.models import Site
from trial.timeline import today
from trial.trialstate.service import ensure_writable
from trial.validation import refuse, text


def scale(db: Session) -> dict:
    f = current_protocol(db).content.get("fidelity")
    if not f:
        raise Conflict(N_("The protocol defines no fidelity scale."))
    return f


# --- the draw --------------------------------------------------------------------------------

def population_sha256(population: list[int]) -> str:
    return hashlib.sha256(json.dumps(sorted(population), separators=(",", ":")).encode()).hexdigest()


def derive(seed: str, population: list[int], size: int) -> list[int]:
    """The sample a seed draws from a population: the ``size`` session ids with the smallest
    HMAC-SHA256(seed, id), ascending by id. A pure function of its arguments."""
    key = bytes.fromhex(seed)
    ranked = sorted(population, key=lambda sid: hmac.new(key, str(sid).encode(), hashlib.sha256).digest())
    return sorted(ranked[:size])


def size_for(share: float, n: int) -> int:
    return min(n, math.ceil(round(share * n, 9))) if n else 0


def draw(db: Session, actor, therapist: User | None = None,
         seed_for: Callable[[int], str] | None = None) -> list[FidelityDraw]:
    """Draw the sessions to rate from every therapist's sessions not yet in a draw (or one
    therapist's): one audited draw per therapist who has any. Each seed is fresh from the CSPRNG;
    only a loader of synthetic data (the demo, for the same sample at every reset) passes
    ``seed_for(therapist_id)`` returning a 64-hex-digit seed, recorded and audited the same way."""
    require_role(db, actor, "manager")
    ensure_writable(db)
    share = scale(db)["share"]
    held: dict[int, set[int]] = {}
    for tid, pop in db.execute(select(FidelityDraw.therapist_id, FidelityDraw.population)):
        held.setdefault(tid, set()).update(pop)
    # (issue 28) a session known not to be video-recorded cannot be rated; one whose recording was
    # not said (None: logged before the form asked, or without the field) is drawn as before
    q = (select(TherapySession.logged_by_id, TherapySession.id)
         .where(TherapySession.attendance == "attended", TherapySession.logged_by_id.is_not(None),
                or_(TherapySession.video_recorded.is_(None), TherapySession.video_recorded.is_(True)))
         .order_by(TherapySession.id))
    if therapist is not None:
        q = q.where(TherapySession.logged_by_id == therapist.id)
    pops: dict[int, list[int]] = {}
    for tid, sid in db.execute(q):
        if sid not in held.get(tid, ()):
            pops.setdefault(tid, []).append(sid)
    emails = dict(db.execute(select(User.id, User.email).where(User.id.in_(list(pops) or [0]))).all())
    out = []
    for tid, population in sorted(pops.items()):
        seed = seed_for(tid) if seed_for is not None else secrets.token_hex(32)
        size = size_for(share, len(population))
        sample = derive(seed, population, size)
        d = FidelityDraw(therapist_id=tid, seed=seed, share=share, size=size, population=population,
                         population_sha256=population_sha256(population), drawn_by_id=getattr(actor, "id", None),
                         drawn_at=utcnow())
        db.add(d)
        db.flush()
        for sid in sample:
            db.add(FidelitySample(session_id=sid, draw_id=d.id))
        audit.created(db, actor, "fidelity_draw", d.id, {
            "therapist": emails.get(tid), "seed": seed, "share": share, "population": len(population),
            "population_sha256": d.population_sha256, "size": size, "sample": sample}, reveals_allocation=True)
        out.append(d)
    db.flush()
    return out


def verify(db: Session) -> list[str]:
    """Every draw derived again from its seed and population: the problems (empty when each
    sample is what its seed draws and no sampled session was added or removed)."""
    problems = []
    samples: dict[int, list[int]] = {}
    for sid, did in db.execute(select(FidelitySample.session_id, FidelitySample.draw_id)):
        samples.setdefault(did, []).append(sid)
    for d in db.execute(select(FidelityDraw).order_by(FidelityDraw.id)).scalars():
        if population_sha256(d.population) != d.population_sha256:
            problems.append(f"draw {d.id}: the population differs from the one drawn from")
        if d.size != size_for(d.share, len(d.population)):
            problems.append(f"draw {d.id}: the size is not the protocol's share of the population")
        want = derive(d.seed, d.population, d.size)
        if sorted(samples.get(d.id, [])) != want:
            problems.append(f"draw {d.id}: the sample on record is not what the seed draws ({want})")
    return problems


def draw_view(d: FidelityDraw, email: str | None, sample: list[int]) -> dict:
    return {"id": d.id, "therapist": email, "seed": d.seed, "share": d.share, "population": d.population,
            "population_sha256": d.population_sha256, "size": d.size, "sample": sorted(sample),
            "drawn_at": d.drawn_at.isoformat(timespec="seconds") + "Z"}


def draws(db: Session, actor) -> list[dict]:
    require_role(db, actor, "manager")
    samples: dict[int, list[int]] = {}
    for sid, did in db.execute(select(FidelitySample.session_id, FidelitySample.draw_id)):
        samples.setdefault(did, []).append(sid)
    emails = dict(db.execute(select(User.id, User.email)).all())
    return [draw_view(d, emails.get(d.therapist_id), samples.get(d.id, []))
            for d in db.execute(select(FidelityDraw).order_by(FidelityDraw.id)).scalars()]


# --- ratings ---------------------------------------------------------------------------------

LABELS = {"scores": N_("Ratings"), "note": N_("Note")}


def _sampled_session(db: Session, actor, session_id: int) -> tuple[TherapySession, Participant]:
    s = db.get(TherapySession, session_id)
    p = db.get(Participant, s.participant_id) if s else None
    if s is None or not can_see_arm(db, actor, p.site_id):
        raise NotFound(NO_SESSION)
    return s, p


def rate(db: Session, actor, session_id: int, data: dict) -> FidelityRating:
    """Rate a sampled session (a therapist who may read the site's allocations, holds a credential
    valid today and did not lead the session): every item of the protocol's scale, whole numbers
    in its range. Bad input names the item and changes nothing."""
    s, p, f, on = _ratable(db, actor, session_id)
    scores, note = _checked_scores(f, data)
    items = [i["key"] for i in f["items"]]
    mean = round(sum(scores[k] for k in items) / len(items), 3)
    r = FidelityRating(session_id=s.id, rater_id=actor.id, rated_on=on, scores=scores,
                       mean=mean, adherent=mean >= f["threshold"], note=note, rated_at=utcnow())
    db.add(r)
    db.flush()
    audit.created(db, actor, "fidelity_rating", r.id, {"session": s.id, "participant": p.study_id, "scores": r.scores,
                                                      "mean": mean, "adherent": r.adherent, "note": note},
                  reveals_allocation=True)
    return r


def _ratable(db: Session, actor, session_id: int) -> tuple[TherapySession, Participant, dict, object]:
    """Whether the actor may rate the session now (or why not): returns the session, its child,
    the protocol's scale and the day of the rating (the site's)."""
    if not actor.has_role("therapist"):
        raise Forbidden(N_("Fidelity ratings are made by credentialed music therapists."))
    s, p = _sampled_session(db, actor, session_id)
    require_site_role(db, actor, p.site_id, "therapist")  # a therapist of that site, not another role there
    ensure_writable(db)
    f = scale(db)
    if db.get(FidelitySample, s.id) is None:
        raise Conflict(Msg(N_("Session %(id)s was not drawn for a fidelity rating."), id=s.id))
    if s.logged_by_id == getattr(actor, "id", None):
        raise Forbidden(N_("You led this session: another therapist rates it."))
    on = today(db.get(Site, p.site_id).timezone)
    credentials.ensure_valid(db, actor, on, N_("The rating was not saved"))
    if db.execute(select(FidelityRating.id).where(FidelityRating.session_id == s.id)).first():
        raise Conflict(Msg(N_("Session %(id)s is rated already."), id=s.id))
    return s, p, f, on


def _checked_scores(f: dict, data: dict) -> tuple[dict[str, int], str | None]:
    """The scores (every item of the scale, in its order) and the note; refused, naming each item
    that is wrong, unless they all are right."""
    errors: dict[str, str] = {}
    scores = data.get("scores")
    items = [i["key"] for i in f["items"]]
    words = {i["key"]: Label("fidelity_item", i["key"], i["label"]) for i in f["items"]}
    labels = {**LABELS, **words}
    if not isinstance(scores, dict):
        errors["scores"] = Msg(N_("must give a rating for each item: %(items)s"), items=Joined(words.values(), ", "))
        scores = {}
    for k in items:
        v = scores.get(k)
        if isinstance(v, bool) or not isinstance(v, int) or not f["min"] <= v <= f["max"]:
            errors[k] = Msg(N_("must be a whole number from %(min)s to %(max)s"), min=f["min"], max=f["max"])
    for k in sorted(set(scores) - set(items)):
        errors[k] = N_("is not an item of the protocol's fidelity scale")
    note = text(data.get("note"), "note", errors, 1000)
    refuse(N_("The rating was not saved"), errors, labels)
    return {k: scores[k] for k in items}, note


def due(db: Session, actor) -> list[dict]:
    """The sampled sessions still to rate that this therapist may rate (not their own, sites whose
    allocations they may read), oldest first."""
    if not actor.has_role("therapist", "manager"):
        raise Forbidden(N_("Fidelity ratings reveal the allocation; your role is blinded."))
    sites = visible_site_ids(db, actor, "therapist", "manager")
    q = (select(TherapySession.id, TherapySession.held_on, TherapySession.minutes, Participant.study_id,
                Participant.site_id, User.name)
         .join(FidelitySample, FidelitySample.session_id == TherapySession.id)
         .join(Participant, Participant.id == TherapySession.participant_id)
         .outerjoin(User, User.id == TherapySession.logged_by_id)
         .outerjoin(FidelityRating, FidelityRating.session_id == TherapySession.id)
         .where(FidelityRating.id.is_(None), TherapySession.logged_by_id != getattr(actor, "id", -1))
         .order_by(TherapySession.held_on, TherapySession.id))
    if sites is not None:
        q = q.where(Participant.site_id.in_(sites))
    codes = dict(db.execute(select(Site.id, Site.code)).all())
    return [{"session": sid, "held_on": held.isoformat(), "minutes": minutes, "study_id": study, "site": codes.get(site),
             "therapist": name} for sid, held, minutes, study, site, name in db.execute(q)
            if can_see_arm(db, actor, site)]


def report(db: Session, actor, site_code: str | None = None) -> dict:
    """Adherence to the improvisational principles, by therapist and site and by month of the
    session (manager): sessions sampled, rated and rated adherent."""
    require_role(db, actor, "manager")
    f = scale(db)
    q = (select(User.email, User.name, Site.code, TherapySession.held_on, FidelityRating.id, FidelityRating.adherent,
                FidelityRating.mean)
         .select_from(FidelitySample)
         .join(TherapySession, TherapySession.id == FidelitySample.session_id)
         .join(Participant, Participant.id == TherapySession.participant_id)
         .join(Site, Site.id == Participant.site_id)
         .join(User, User.id == TherapySession.logged_by_id)
         .outerjoin(FidelityRating, FidelityRating.session_id == FidelitySample.session_id))
    if site_code:
        q = q.where(Site.code == site_code.upper())
    rows: dict[tuple, dict] = {}
    months: dict[str, dict] = {}
    total = {"sampled": 0, "rated": 0, "adherent": 0}
    for email, name, code, held, rid, adherent, mean in db.execute(q):
        r = rows.setdefault((email, code), {"therapist": email, "name": name, "site": code, "sampled": 0, "rated": 0,
                                            "adherent": 0, "_means": []})
        m = months.setdefault(held.strftime("%Y-%m"), {"month": held.strftime("%Y-%m"), "rated": 0, "adherent": 0})
        for bucket in (r, total):
            bucket["sampled"] += 1
        if rid is not None:
            for bucket in (r, total, m):
                bucket["rated"] += 1
                bucket["adherent"] += int(bool(adherent))
            r["_means"].append(mean)
    by_therapist = []
    for key in sorted(rows):
        r = rows[key]
        means = r.pop("_means")
        r["mean_score"] = round(sum(means) / len(means), 2) if means else None
        r["share_adherent"] = round(r["adherent"] / r["rated"], 3) if r["rated"] else None
        by_therapist.append(r)
    return {"sampled": total["sampled"], "rated": total["rated"], "adherent": total["adherent"],
            "threshold": f["threshold"], "share": f["share"], "by_therapist": by_therapist,
            "by_month": [months[k] for k in sorted(months)]}


def therapist_by_email(db: Session, email: str) -> User:
    u = db.execute(select(User).where(func.lower(User.email) == email.lower())).scalars().first()
    if u is None or not db.execute(select(RoleAssignment.id).where(RoleAssignment.user_id == u.id,
                                                                   RoleAssignment.role == "therapist")).first():
        raise NotFound(Msg(N_("No therapist %(email)s."), email=email))
    return u


# --- the intervention as delivered, by arm -----------------------------------------------------

def delivered_by_arm(db: Session, actor) -> dict:
    """CONSORT 2025's intervention as delivered, per arm (unblinded readers: managers, the command
    line): sessions attended in the course (the one definition used everywhere: attended and not
    after the five-month course; those after it are counted apart), minutes, technique categories,
    who was present, individual goals and how often sessions worked on them, and the fidelity
    ratings. Returns ``{"arms": [...], "columns": [...], "rows": [[measure, per arm...]]}``."""
    require_role(db, actor, "manager")
    content = current_protocol(db).content
    arms = content["arms"]
    stats = {a["key"]: {"allocated": 0, "children": set(), "attended": 0, "after": 0, "minutes": [], "active": 0,
                        "receptive": 0, "parent": 0, "with_goal": 0, "goal_children": set(), "goals": 0,
                        "rated": 0, "adherent": 0, "scores": [], "per_child": []} for a in arms}
    for arm, n in db.execute(select(Allocation.arm, func.count()).group_by(Allocation.arm)):
        if arm in stats:
            stats[arm]["allocated"] = n
    _count_sessions(db, stats, content["course"].get("technique_categories", {}))
    _count_goals_and_ratings(db, stats)
    _count_per_child(db, stats)
    columns = ["Measure"] + [f'{a["label"]} (N = {stats[a["key"]]["allocated"]})' for a in arms]
    out_rows = [[name] + [fn(stats[a["key"]]) if (a["sessions_per_week"] or i == 0) else "—"
                          for a in arms] for i, (name, fn) in enumerate(DELIVERED_MEASURES)]
    return {"arms": [a["key"] for a in arms], "columns": columns, "rows": out_rows,
            "definition": "A session delivered is one attended within the five-month course (from randomization); "
                          "sessions after the course are reported apart. Active techniques: improvisation, songs, "
                          "musical games; receptive: listening. Adherent: the mean of the fidelity items reaches "
                          f"the protocol's threshold ({content.get('fidelity', {}).get('threshold', '—')})."}


def _count_sessions(db: Session, stats: dict[str, dict], cats: dict[str, str]) -> None:
    """The attended sessions per arm, counted in the database in one pass over the sessions (a
    trial logs hundreds of thousands): a row per arm and kind of session (in the course or after
    it, minutes, techniques, who was present, goals worked on or not), with how many."""
    techniques_text, goals_text = cast(TherapySession.techniques, Text), cast(TherapySession.goals, Text)
    decoded: dict[str | None, list] = {}
    for arm, after, minutes, techniques, present, goals, n in db.execute(
            select(Allocation.arm, TherapySession.outside_course, TherapySession.minutes, techniques_text,
                   TherapySession.present, goals_text, func.count())
            .join(TherapySession, TherapySession.participant_id == Allocation.participant_id)
            .where(TherapySession.attendance == "attended")
            .group_by(Allocation.arm, TherapySession.outside_course, TherapySession.minutes, techniques_text,
                      TherapySession.present, goals_text)):
        s = stats.get(arm)
        if s is None:
            continue
        if after:
            s["after"] += n
            continue
        s["attended"] += n
        if minutes:
            s["minutes"].append((minutes, n))
        for text_ in (techniques, goals):
            if text_ not in decoded:
                decoded[text_] = json.loads(text_ or "null") or []
        kinds = {cats.get(t, "active") for t in decoded[techniques]}
        s["active"] += n * ("active" in kinds)
        s["receptive"] += n * ("receptive" in kinds)
        s["parent"] += n * (present == "child_and_parent")
        s["with_goal"] += n * bool(decoded[goals])


def _count_goals_and_ratings(db: Session, stats: dict[str, dict]) -> None:
    """The individual goals per arm (how many, and the children who have one) and the fidelity
    ratings (how many, how many adherent, their scores)."""
    for arm, n in db.execute(select(Allocation.arm, func.count()).join(
            ChildGoal, ChildGoal.participant_id == Allocation.participant_id).group_by(Allocation.arm)):
        if arm in stats:
            stats[arm]["goals"] = n
    for arm, pid in db.execute(select(Allocation.arm, ChildGoal.participant_id).join(
            ChildGoal, ChildGoal.participant_id == Allocation.participant_id).distinct()):
        if arm in stats:
            stats[arm]["goal_children"].add(pid)
    for arm, adherent, mean in db.execute(select(Allocation.arm, FidelityRating.adherent, FidelityRating.mean)
                                          .join(TherapySession, TherapySession.id == FidelityRating.session_id)
                                          .join(Allocation, Allocation.participant_id == TherapySession.participant_id)):
        if arm in stats:
            stats[arm]["rated"] += 1
            stats[arm]["adherent"] += int(bool(adherent))
            stats[arm]["scores"].append(mean)


def _count_per_child(db: Session, stats: dict[str, dict]) -> None:
    """Each child's sessions in the course, by arm: the children who received at least one, and
    the count of every allocated child (0 when none were attended)."""
    in_course: dict[str, dict[int, int]] = {arm: {} for arm in stats}
    for arm, pid, n in db.execute(select(Allocation.arm, TherapySession.participant_id, func.count())
                                  .join(Allocation, Allocation.participant_id == TherapySession.participant_id)
                                  .where(TherapySession.attendance == "attended", TherapySession.outside_course.is_(False))
                                  .group_by(Allocation.arm, TherapySession.participant_id)):
        if arm in in_course:
            in_course[arm][pid] = n
    for arm, s in stats.items():
        counts = in_course[arm]
        s["children"] = set(counts)  # those who received at least one session in the course
        # every allocated child counts, with 0 sessions when none were attended
        s["per_child"] = list(counts.values()) + [0] * max(0, s["allocated"] - len(counts))


def _mean_sd(xs, counted=False) -> str:
    """Mean (SD) of values, or of (value, how many times) pairs."""
    pairs = xs if counted else [(x, 1) for x in xs]
    n = sum(c for _, c in pairs)
    if not n:
        return ""
    m = sum(x * c for x, c in pairs) / n
    sd = (sum(c * (x - m) ** 2 for x, c in pairs) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return f"{m:.1f} ({sd:.1f})"


def _pct(k, n) -> str:
    return f"{k} ({100 * k / n:.1f}%)" if n else ""


DELIVERED_MEASURES = (  # the rows of delivered_by_arm: each measure from an arm's counts
    ("Participants allocated", lambda s: str(s["allocated"])),
    ("Received at least one session in the course, n (%)", lambda s: _pct(len(s["children"]), s["allocated"])),
    ("Sessions attended in the course, total", lambda s: str(s["attended"])),
    ("Sessions attended in the course per participant, mean (SD)", lambda s: _mean_sd(s["per_child"])),
    ("Sessions attended after the course (not counted above)", lambda s: str(s["after"])),
    ("Minutes per attended session, mean (SD)", lambda s: _mean_sd(s["minutes"], counted=True)),
    ("Sessions with active techniques, n (%)", lambda s: _pct(s["active"], s["attended"])),
    ("Sessions with receptive techniques, n (%)", lambda s: _pct(s["receptive"], s["attended"])),
    ("Sessions with a parent present, n (%)", lambda s: _pct(s["parent"], s["attended"])),
    ("Participants with individual goals, n (%)", lambda s: _pct(len(s["goal_children"]), s["allocated"])),
    ("Individual goals set, total", lambda s: str(s["goals"])),
    ("Sessions that worked on a goal, n (%)", lambda s: _pct(s["with_goal"], s["attended"])),
    ("Sessions rated for fidelity", lambda s: str(s["rated"])),
    ("Rated sessions adherent to the principles, n (%)", lambda s: _pct(s["adherent"], s["rated"])),
    ("Fidelity score of rated sessions, mean (SD)", lambda s: _mean_sd(s["scores"])),
)
