"""The query workflow: raise, answer (with a correction, linked), close, reopen; lists and counts
as each role may see them. Every step audited; the site's answering role is notified of a new
query (in-app, and by e-mail when a relay is configured)."""
from __future__ import annotations

import datetime as dt
import re

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.catalogue import N_, Msg, term
from trial.dataquality.models import QUERY_STATES, DataQuery, QueryMessage
from trial.dataquality.service import next_numbers, query_ref, target_text
from trial.db import lock_for_update, utcnow
from trial.errors import Conflict, Forbidden, NotFound, ValidationError
from trial.notify.service import notify, settle, users_with_role
from trial.outcomes.service import correct_assessment
from trial.paging import Page, PageRequest, ordered, paginate, sort_key
from trial.participants.models import Assessment, Participant
from trial.participants.service import get_participant
from trial.protocol.service import current as current_protocol
from trial.queries import targets
from trial.scope import is_cli, require_site_role, visible_site_ids
from trial.sites.models import Site
from trial.trialstate.service import ensure_writable
from trial.validation import MAX_ID, refuse, text

RAISERS = ("manager", "monitor")
NO_QUERY = N_("No such query.")  # an unknown query and one the caller may not see: the same answer
ASSESSOR_WARNING = N_("Assessors read the queries on the assessments they enter: write nothing about sessions, "
                      "the arm or the intervention in a query on an assessment.")


def _who(actor) -> str:
    return getattr(actor, "email", None) or str(actor)


def raise_query(db: Session, actor, data: dict) -> DataQuery:
    errors: dict[str, str] = {}
    study_id = data.get("study_id")
    if not isinstance(study_id, str) or not study_id.strip():
        raise ValidationError(Msg(N_("The query was not raised: %(field)s is required"), field="study_id"),
                              {"study_id": N_("is required")})
    p = get_participant(db, actor, study_id)
    require_site_role(db, actor, p.site_id, *RAISERS)
    ensure_writable(db)
    target = targets.resolve(db, actor, p, data.get("on"))
    body = text(data.get("text"), "text", errors, 2000, required=True)
    refuse(N_("The query was not raised"), errors)
    now = utcnow()
    number = next_numbers(db, [p.site_id])[p.site_id]  # its site's next (what users are shown, never the id)
    q = DataQuery(number=number, participant_id=p.id, site_id=p.site_id, kind=target.kind, target_id=target.id,
                  field=target.field, visit=target.visit, instrument=target.instrument, text=body, status="open",
                  origin="manual",
                  answer_role=target.answer_role, assessor_visible=target.assessor_visible,
                  raised_by_id=getattr(actor, "id", None), raised_by=_who(actor), raised_at=now, updated_at=now)
    db.add(q)
    db.flush()
    db.add(QueryMessage(query_id=q.id, action="raise", text=body, by_id=getattr(actor, "id", None), by=_who(actor), at=now))
    audit.created(db, actor, "query", q.id, {"participant": p.study_id, "on": target_text(q.kind, q.target_id, q.field),
                                            "origin": "manual", "text": body}, reveals_allocation=not q.assessor_visible)
    ref = query_ref(p.site.code, q.number)  # in the words' %(id)s: users are shown the site's number, not the id
    notify(db, users_with_role(db, q.answer_role, p.site_id),
           Msg(N_("Query %(id)s on %(study_id)s (%(record)s) waits for your answer: %(text)s"),
               id=ref, study_id=p.study_id, record=target.label, text=body),
           subject=Msg(N_("Query %(id)s on %(study_id)s"), id=ref, study_id=p.study_id), link=query_link(q, p.site.code))
    return q


def ref_of(db: Session, q: DataQuery) -> str:
    """What users are shown of a query (``AT01-Q17``)."""
    return query_ref(db.get(Site, q.site_id).code, q.number)


def query_link(q: DataQuery, site_code: str) -> str:
    """The query's page as notifications and e-mails link to it: by its number at its site."""
    return f"/queries/{query_ref(site_code, q.number)}"


def _settle(db: Session, q: DataQuery, p: Participant) -> None:
    """The notices that the query waits for an answer no longer hold (their links by number, or
    by id: those written before queries were numbered)."""
    settle(db, query_link(q, p.site.code))
    settle(db, f"/queries/{q.id}")


REF_RE = re.compile(r"^([A-Z]{2}[0-9]{2})-Q([0-9]{1,9})$")
ID_RE = re.compile(r"^[0-9]{1,10}$")


def find(db: Session, actor, ref: str) -> DataQuery:
    """A query by what a page's address names: its number at its site (``AT01-Q17``), or its id
    (the links of notices written before queries were numbered); 404 alike for an unknown one
    and for one the caller may not see."""
    m = REF_RE.match((ref or "").upper())
    if m:
        query_id = db.execute(select(DataQuery.id).join(Site, Site.id == DataQuery.site_id)
                              .where(Site.code == m[1], DataQuery.number == int(m[2]))).scalar()
    else:
        query_id = int(ref) if ID_RE.match(ref or "") and int(ref) <= MAX_ID else None
    if query_id is None:
        raise NotFound(NO_QUERY)
    return get(db, actor, query_id)


def _load(db: Session, actor, query_id: int, for_update: bool = False) -> tuple[DataQuery, Participant]:
    stmt = select(DataQuery).where(DataQuery.id == query_id)
    q = db.execute(lock_for_update(stmt, db.get_bind()) if for_update else stmt).scalar_one_or_none()
    if q is None or not may_see(db, actor, q):
        raise NotFound(NO_QUERY)
    return q, db.get(Participant, q.participant_id)


def respond(db: Session, actor, query_id: int, data: dict) -> QueryMessage:
    """The answering role's reply; with ``correction: {values}`` (assessment queries) the values
    are corrected in the same transaction, the correction's audit carrying the query as reason."""
    q, p = _load(db, actor, query_id, for_update=True)
    require_site_role(db, actor, p.site_id, q.answer_role)
    ensure_writable(db)
    if q.status == "closed":
        raise Conflict(Msg(N_("Query %(id)s is closed; the raiser's role may reopen it."),
                           id=query_ref(p.site.code, q.number)))
    errors: dict[str, str] = {}
    body = text(data.get("text"), "text", errors, 2000, required=True)
    correction = data.get("correction")
    if correction is not None and not isinstance(correction, dict):
        errors["correction"] = N_("must be an object {values: {field: value}}")
    elif correction is not None and (q.kind != "assessment" or q.target_id is None):
        errors["correction"] = N_("only a query on an entered assessment can carry a correction")
    refuse(N_("The answer was not saved"), errors)
    changes = None
    if correction is not None:
        before = dict(_assessment_values(db, q.target_id))
        ref = query_ref(p.site.code, q.number)
        a = correct_assessment(db, actor, q.target_id, {"values": correction.get("values"),
                                                        "reason": f"answer to query {ref}: {body}"[:500]})
        changes = {k: [before.get(k), v] for k, v in a.values.items() if before.get(k) != v}
    now = utcnow()
    msg = QueryMessage(query_id=q.id, action="response", text=body, correction=changes,
                       by_id=getattr(actor, "id", None), by=_who(actor), at=now)
    db.add(msg)
    old = q.status
    q.status, q.updated_at = "answered", now
    db.flush()
    audit.record(db, actor, "respond", "query", q.id, {"status": (old, "answered"), "response": (None, body)},
                 reveals_allocation=not q.assessor_visible)
    _settle(db, q, p)
    return msg


def _assessment_values(db: Session, assessment_id: int) -> dict:
    return db.execute(select(Assessment.values).where(Assessment.id == assessment_id)).scalar() or {}


def close(db: Session, actor, query_id: int, data: dict | None = None) -> DataQuery:
    return _set_state(db, actor, query_id, "closed", data or {})


def reopen(db: Session, actor, query_id: int, data: dict | None = None) -> DataQuery:
    return _set_state(db, actor, query_id, "open", data or {})


def _set_state(db: Session, actor, query_id: int, state: str, data: dict) -> DataQuery:
    q, p = _load(db, actor, query_id, for_update=True)
    require_site_role(db, actor, p.site_id, *RAISERS)
    ensure_writable(db)
    errors: dict[str, str] = {}
    note = text(data.get("text"), "text", errors, 2000)
    refuse(N_("Not saved"), errors)
    ref = query_ref(p.site.code, q.number)
    if state == "closed" and q.status == "closed":
        raise Conflict(Msg(N_("Query %(id)s is already closed."), id=ref))
    if state == "open" and q.status == "open":  # an answered query may be sent back; an open one is open
        raise Conflict(Msg(N_("Query %(id)s is %(status)s, not closed: there is nothing to reopen."), id=ref,
                           status=term("query_status", q.status)))
    now = utcnow()
    old = q.status
    q.status, q.updated_at = state, now
    if state == "closed":
        q.open_key = None
    elif q.check_key and not db.execute(select(DataQuery.id).where(DataQuery.open_key == q.check_key)).first():
        q.open_key = q.check_key
    db.add(QueryMessage(query_id=q.id, action="close" if state == "closed" else "reopen", text=note,
                        by_id=getattr(actor, "id", None), by=_who(actor), at=now))
    db.flush()
    audit.record(db, actor, "close" if state == "closed" else "reopen", "query", q.id, {"status": (old, state)},
                 reason=note, reveals_allocation=not q.assessor_visible)
    if state == "closed":
        _settle(db, q, p)
    if state == "open":
        notify(db, users_with_role(db, q.answer_role, p.site_id),
               Msg(N_("Query %(id)s on %(study_id)s was reopened: %(text)s"), id=ref, study_id=p.study_id, text=note)
               if note else Msg(N_("Query %(id)s on %(study_id)s was reopened."), id=ref, study_id=p.study_id),
               subject=Msg(N_("Query %(id)s on %(study_id)s reopened"), id=ref, study_id=p.study_id),
               link=query_link(q, p.site.code))
    return q


# --- who sees which queries ----------------------------------------------------------------------

ANSWERERS = ("coordinator", "therapist", "assessor")


def _visibility(db: Session, actor, stmt):
    """Restrict a select of DataQuery to what ``actor`` may see: a query reaches exactly the role
    that can answer it at its site, and the roles that raise and close queries. Managers every
    query, monitors their sites'; coordinators and therapists the queries they answer at their
    sites; assessors only queries on what assessors enter (never on sessions, events or adverse
    events)."""
    if is_cli(actor) or actor.has_role("manager"):
        return stmt
    conditions = []
    for role, extra in (("coordinator", DataQuery.answer_role == "coordinator"), ("monitor", None),
                        ("investigator", None),  # (the site's principal investigator reads as the monitor does)
                        ("therapist", DataQuery.answer_role == "therapist"),
                        # (assessor_visible: a plain test, the partial index's predicate)
                        ("assessor", DataQuery.assessor_visible & (DataQuery.answer_role == "assessor"))):
        sites = actor.site_ids(role)
        if sites:
            cond = DataQuery.site_id.in_(sorted(sites))
            conditions.append(cond if extra is None else cond & extra)
    if not conditions:
        return stmt.where(DataQuery.id.is_(None))
    return stmt.where(or_(*conditions))


def may_see(db: Session, actor, q: DataQuery) -> bool:
    return db.execute(_visibility(db, actor, select(DataQuery.id).where(DataQuery.id == q.id))).first() is not None


def _mine(actor):
    """The queries waiting for ``actor``'s answer: open, at a site where the user holds the role that answers them."""
    mine = [(role, sorted(actor.site_ids(role))) for role in ANSWERERS if actor.site_ids(role)]
    if not mine:
        return DataQuery.id.is_(None)
    return (DataQuery.status == "open") & or_(*[(DataQuery.answer_role == role) & DataQuery.site_id.in_(sites)
                                                 for role, sites in mine])


def listing_query(db: Session, actor, site_code: str | None = None, status: str | None = None,
                  study_id: str | None = None, search: str | None = None, mine: bool = False):
    """A select of the queries ``actor`` may see, filtered by site, status, a participant and a
    study-id fragment; ``mine``: only those waiting for the user's own answer (the home page's count)."""
    q = _visibility(db, actor, select(DataQuery))
    if mine and not is_cli(actor):
        q = q.where(_mine(actor))
    if study_id or search:  # the participant table only when the list is filtered by study id
        q = q.join(Participant, Participant.id == DataQuery.participant_id)
    if status is not None:
        if status not in QUERY_STATES:
            raise ValidationError(Msg(N_("%(field)s must be one of: %(allowed)s."), field="status",
                                      allowed=", ".join(QUERY_STATES)), {"status": N_("unknown status")})
        q = q.where(DataQuery.status == status)
    if site_code:
        q = q.join(Site, Site.id == DataQuery.site_id).where(Site.code == site_code.upper())
    if study_id:
        q = q.where(Participant.study_id == study_id.upper())
    if search:
        q = q.where(Participant.study_id.contains(search.strip().upper(), autoescape=True))
    return q


def listing(db: Session, actor, site_code: str | None = None, status: str | None = None, study_id: str | None = None,
            limit: int = 500) -> list[DataQuery]:
    q = listing_query(db, actor, site_code, status, study_id)
    return list(db.execute(q.order_by(DataQuery.raised_at.desc(), DataQuery.id.desc()).limit(limit)).scalars())


QUERY_SORTS = {"id": DataQuery.id, "raised_at": DataQuery.raised_at, "status": DataQuery.status,
               "site": DataQuery.site_id, "study_id": Participant.study_id, "kind": DataQuery.kind}


def page(db: Session, actor, req: PageRequest, site_code: str | None = None, status: str | None = None,
         search: str | None = None, mine: bool = False) -> Page:
    """A page of the queries ``actor`` may see (newest first unless sorted otherwise)."""
    sort = sort_key(req.sort, QUERY_SORTS, "-raised_at")
    q = listing_query(db, actor, site_code, status, search=search, mine=mine)
    if sort.lstrip("-") == "study_id" and not search:
        q = q.join(Participant, Participant.id == DataQuery.participant_id)
    return paginate(db, ordered(q, sort, QUERY_SORTS, DataQuery.id), req, sort=sort, key=DataQuery.id)


def get(db: Session, actor, query_id: int) -> DataQuery:
    return _load(db, actor, query_id)[0]


def as_dict(q: DataQuery, study_id: str, site: str) -> dict:
    """A query as the API answers it: ``id`` (the API's handle, API.md), and ``number`` and
    ``ref``, what users are shown (its number at its site)."""
    return {"id": q.id, "number": q.number, "ref": query_ref(site, q.number), "study_id": study_id, "site": site,
            "on": {"kind": q.kind, "id": q.target_id, "field": q.field, "visit": q.visit, "instrument": q.instrument},
            "text": q.text, "status": q.status, "origin": q.origin, "answer_role": q.answer_role,
            "raised_by": q.raised_by, "raised_at": q.raised_at.isoformat(timespec="seconds") + "Z",
            "updated_at": q.updated_at.isoformat(timespec="seconds") + "Z",
            "thread": [{"action": m.action, "by": m.by, "at": m.at.isoformat(timespec="seconds") + "Z", "text": m.text,
                        **({"correction": m.correction} if m.correction else {})} for m in q.messages]}


def about(protocol: dict, q: DataQuery) -> Msg:
    """What a query is about, in the protocol's words (each reader's language on a page)."""
    return targets.describe(protocol, q.kind, q.target_id, q.instrument, q.visit, q.field)


def views(db: Session, rows: list[DataQuery]) -> list[dict]:
    codes = dict(db.execute(select(Site.id, Site.code)).all())
    ids = {q.participant_id for q in rows}
    sids = dict(db.execute(select(Participant.id, Participant.study_id).where(Participant.id.in_(ids))).all()) if ids else {}
    protocol = current_protocol(db).content
    return [as_dict(q, sids[q.participant_id], codes[q.site_id])
            | {"about": about(protocol, q), "words": q.words, "thread_words": [m.words for m in q.messages]} for q in rows]


def age_days(q: DataQuery, now: dt.datetime | None = None) -> int:
    return ((now or utcnow()) - q.raised_at).days


def waiting_counts(db: Session, actor) -> dict:
    """For the home page: queries that wait for this user's answer, and (raisers) the open and
    answered ones at their sites."""
    if actor is None or is_cli(actor):
        return {}
    out = {}
    if any(actor.site_ids(role) for role in ANSWERERS):  # the count of the list it links to (mine=1)
        out["to_answer"] = db.execute(listing_query(db, actor, mine=True).with_only_columns(func.count())).scalar()
    if actor.has_role(*RAISERS):
        sites = visible_site_ids(db, actor, *RAISERS)
        base = select(DataQuery.status, func.count()).group_by(DataQuery.status)
        if sites is not None:
            base = base.where(DataQuery.site_id.in_(sorted(sites)))
        counts = dict(db.execute(base).all())
        out["open"], out["answered"] = counts.get("open", 0), counts.get("answered", 0)
    return out


def form_badges(db: Session, actor, participant_ids: list[int]) -> dict[tuple, int]:
    """Queries not yet closed on each form, as this user may see them: keyed by (participant id,
    "assessment", assessment id) for a query on an entered form and by (participant id, visit,
    instrument) for a missing form's query."""
    if not participant_ids:
        return {}
    stmt = _visibility(db, actor, select(DataQuery.participant_id, DataQuery.target_id, DataQuery.visit,
                                         DataQuery.instrument, func.count()).select_from(DataQuery))
    stmt = stmt.where(DataQuery.participant_id.in_(participant_ids), DataQuery.kind == "assessment",
                      DataQuery.status != "closed").group_by(DataQuery.participant_id, DataQuery.target_id,
                                                            DataQuery.visit, DataQuery.instrument)
    out: dict[tuple, int] = {}
    for pid, target, visit, ins, n in db.execute(stmt):
        key = (pid, "assessment", target) if target is not None else (pid, visit, ins)
        out[key] = out.get(key, 0) + n
    return out


def badges(db: Session, actor, participant_ids: list[int]) -> dict[int, int]:
    """Queries not yet closed per participant, as this user may see them."""
    if not participant_ids:
        return {}
    stmt = _visibility(db, actor, select(DataQuery.participant_id, func.count()).select_from(DataQuery))
    stmt = stmt.where(DataQuery.participant_id.in_(participant_ids), DataQuery.status != "closed").group_by(
        DataQuery.participant_id)
    return dict(db.execute(stmt).all())


def require_reader(db: Session, actor) -> None:
    if actor is None or not actor.has_role("coordinator", "therapist", "assessor", "monitor", "investigator", "manager"):
        raise Forbidden(N_("Queries are for the sites' staff, monitors and managers."))
