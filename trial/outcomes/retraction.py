"""Retracting a form's record as not done, made by mistake (issue 29): a module of its own above
trial.outcomes.notdone and trial.outcomes.service, because reopening the form's missing-form check
needs both (the entry service imports notdone)."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.catalogue import N_, Msg
from trial.dataquality.models import DataQuery, QueryMessage
from trial.errors import NotFound
from trial.outcomes import notdone
from trial.outcomes.models import NotDone
from trial.outcomes.service import check_missing_forms
from trial.participants.models import Participant
from trial.participants.service import get_participant
from trial.protocol.service import current as current_protocol
from trial.scope import require_site_role
from trial.timeline import utc_now
from trial.trialstate.service import ensure_writable
from trial.validation import refusal, text
from trial.visitplan.service import replan


def retract_not_done(db: Session, actor, study_id: str, not_done_id, data: dict) -> dict:
    """Retract a form's record as not done, made by mistake, with a reason (the role that records
    it: the site's assessor for a blinded form, its coordinator otherwise): the row is deleted and
    its audit record (action ``delete``) keeps every value it had and the reason; the signatures
    covering it are invalidated by the audit hook; the missing-form check raises the form again
    (where its window has closed) in the same transaction. Returns what was retracted."""
    p = get_participant(db, actor, study_id, for_update=True)
    try:
        nd = db.get(NotDone, int(not_done_id))
    except (TypeError, ValueError):
        nd = None
    if nd is None or nd.participant_id != p.id:
        raise NotFound(notdone.NO_RECORD)
    content = current_protocol(db).content
    ins = next((i for i in content["instruments"] if i["key"] == nd.instrument), {"key": nd.instrument, "blinded": True})
    require_site_role(db, actor, p.site_id, notdone.enterer(ins))
    ensure_writable(db)
    errors: dict[str, str] = {}
    why = text((data if isinstance(data, dict) else {}).get("reason"), "reason", errors, notdone.MAX_RETRACT_REASON, required=True)
    if errors:
        raise refusal(notdone.RETRACT_LEAD, errors, {"reason": N_("Reason")})
    out = notdone.as_dict(nd, p.study_id)
    audit.record(db, actor, "delete", "not_done", nd.id,
                 {"participant": (p.study_id, None), "visit": (nd.visit, None), "instrument": (nd.instrument, None),
                  "reason": (nd.reason, None), "text": (nd.text, None)}, reason=why)
    db.delete(nd)
    db.flush()
    _reopen_missing_check(db, p, nd.visit, nd.instrument, content)
    if nd.visit != "baseline":
        replan(db, [p.id])  # the worklists list the form again
    return out


def _reopen_missing_check(db: Session, p: Participant, visit: str, instrument: str, content: dict) -> None:
    """The form is missing again: its missing-form query (closed by the record) is reopened, saying
    why; where none was raised yet, the check raises it once the window has closed."""
    q = db.execute(select(DataQuery).where(
        DataQuery.participant_id == p.id, DataQuery.origin == "check", DataQuery.kind == "assessment",
        DataQuery.target_id.is_(None), DataQuery.visit == visit, DataQuery.instrument == instrument,
        DataQuery.status == "closed").order_by(DataQuery.id.desc()).limit(1)).scalar()
    if q is None:
        check_missing_forms(db, [p])
        return
    ins = next((i for i in content["instruments"] if i["key"] == instrument), {"key": instrument, "label": instrument})
    vis = next((v for v in content["visits"] if v["key"] == visit), {"key": visit, "label": visit})
    why = Msg(N_("%(form)s at %(visit)s is missing again: its record as not done was retracted."),
              form=notdone.form_label(ins), visit=notdone.visit_label(vis))
    now = utc_now()
    q.status, q.open_key, q.updated_at = "open", notdone.missing_key(p.id, visit, instrument), now
    db.add(QueryMessage(query_id=q.id, action="reopen", text=str(why), words=why.words(), by=audit.SYSTEM, at=now))
    audit.record(db, audit.SYSTEM, "reopen", "query", q.id, {"status": ("closed", "open")}, reason=str(why))
