"""What loading a protocol version would do, without doing it (``trial protocol load --dry-run``):
the version is loaded, every child re-planned and the missing-form check run inside a savepoint
that is then rolled back, so the consequences are the real ones and nothing is kept."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from trial import cache
from trial.errors import Conflict, ValidationError
from trial.outcomes.service import check_missing_forms, missing_form_candidates
from trial.participants.models import Participant
from trial.protocol import diff
from trial.protocol.service import current, load_text
from trial.visitplan.models import PlannedVisit
from trial.visitplan.service import replan_all


@dataclass
class Preview:
    """The outcome of a dry run: the differences, or the problems that refuse the file."""
    version: int | None = None
    changes: list[str] = field(default_factory=list)
    replanned: int = 0       # children whose plan would change
    newly_due: int = 0       # forms added to children's plans
    queries: int = 0         # missing-form queries the version would open (on the day given; today)
    problems: dict[str, str] = field(default_factory=dict)
    message: str = ""


def _plans(db: Session) -> dict[tuple[int, str], tuple]:
    return {(r.participant_id, r.visit): (r.opens, r.closes, r.blinded_forms, r.other_forms)
            for r in db.execute(select(PlannedVisit)).scalars()}


def preview(db: Session, actor, text: str, source_name: str = "protocol", on: dt.date | None = None) -> Preview:
    """What loading ``text`` would change (the same checks as a load: an admin, nothing locked, a
    valid file, the amendment rules), computed in a savepoint and rolled back."""
    old = current(db)
    old_content, before = old.content, _plans(db)
    out = Preview()
    sp = db.begin_nested()
    try:
        # the queries due anyway are raised first (and rolled back with the rest), so that the
        # count after the load is the amendment's own
        check_missing_forms(db, missing_form_candidates(db, select(Participant), on), on)
        pv = load_text(db, actor, text, source_name)
        out.version = pv.version
        out.changes = diff.describe(old_content, pv.content) if pv.version != old.version else []
        replan_all(db)
        after = _plans(db)
        out.replanned = len({pid for pid, _ in set(before) | set(after) if before.get((pid, _)) != after.get((pid, _))})
        out.newly_due = sum(max(0, (a[2] + a[3]) - (before.get(k, (0, 0, 0, 0))[2] + before.get(k, (0, 0, 0, 0))[3]))
                            for k, a in after.items())
        out.queries = check_missing_forms(db, missing_form_candidates(db, select(Participant), on), on)
    except (ValidationError, Conflict) as e:
        out.problems, out.message = dict(e.fields), str(e)
    finally:
        sp.rollback()
        db.info.pop("protocol", None)
        cache.form_rules.clear()  # rules worked out for the version that was not kept
    return out
