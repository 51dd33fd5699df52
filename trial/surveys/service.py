"""Parents' surveys: the coordinator sends an instrument the parents answer; the parent opens the
link without an account and the answers become the visit's assessment.

The link's token is 32 bytes: HMAC-SHA256 under the secret key (``TRIAL_SECRET_KEY``) of a random
32-byte nonce. The database keeps the nonce and the token's SHA-256, never the token, so whoever
reads the database without the key cannot open a survey, while a reminder can repeat the link the
family already has. A new key invalidates the links not yet answered (a resend issues new ones).

A survey is ``sent``, ``opened`` (the parent loaded it), ``completed``, ``revoked`` (by the
coordinator, or by a withdrawal of consent to the follow-up) or ``expired`` (past ``expires_at``: the
close of the visit's window; the baseline's: enrollment plus the baseline window, or the child's
randomization, whichever comes first). The parent's side answers 404 for an unknown link (the same
whatever exists), 409 ``already_submitted`` once answered, 410 ``expired`` once expired or revoked,
429 when a link or an address has tried too often (counted in ``survey_attempt`` so that every app
server shares the limit)."""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import re
import secrets
import zoneinfo
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from trial import settings
from trial.audit import service as audit
from trial.auth.service import EMAIL_RE
from trial.catalogue import LANGUAGES, N_, Joined, Label, Msg, in_language
from trial.config import secret_key
from trial.consent import service as consent_service
from trial.consent import withdrawal
from trial.consent.models import Survey, SurveyAttempt
from trial.db import lock_for_update
from trial.errors import Conflict, DomainError, Locked, NotFound, ValidationError
from trial.notify import service as notify_service
from trial.notify.models import MailMessage
from trial.notify.service import PENDING, absolute, notify, smtp_url, users_with_role
from trial.outcomes import notdone
from trial.outcomes.service import enter_assessment, validate_values
from trial.participants.models import FINAL_EVENTS, Assessment, Participant, StatusEvent
from trial.participants.service import allocation_of, ensure_accepts_data, get_participant, randomization_day
from trial.protocol.schema import respondent_of
from trial.protocol.service import current as current_protocol
from trial.protocol.service import labels as protocol_labels
from trial.protocol.service import units_in
from trial.scope import require_site_role
from trial.sites.models import Site
from trial.timeline import local_date, utc_now, visit_window
from trial.trialstate.service import active_lock_id, ensure_writable
from trial.validation import has_control, refuse, text

PROVENANCE = "parent (survey)"      # the audit trail's actor for what a parent's survey writes
SENDERS = ("coordinator",)
STATUSES = ("sent", "opened", "completed", "expired", "revoked")
OPEN = ("sent", "opened")
FIRST_NAME_MAX = 100
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")   # 32 bytes, URL-safe base64 without padding
ADDRESS_WINDOW = dt.timedelta(minutes=15)
LINK_WINDOW = dt.timedelta(hours=1)
UNKNOWN = N_("This link is not valid. Please check that you copied the whole link, or ask the study team for a "
             "new one.")
GONE = N_("This questionnaire can no longer be answered: the link has expired or was withdrawn. Please contact "
          "the study team.")
DONE = N_("This questionnaire has already been answered. Thank you.")
TOO_MANY = N_("Too many attempts. Please wait a few minutes and try again.")
LOCKED = N_("The questionnaire cannot be saved at the moment. Please try again later.")
STAFF_SIGNED_IN = N_("You are signed in to the trial system in this browser: sign out to answer the questionnaire as "
                     "the parent (the answers must be the family's own).")
ATTEMPTS_KEPT = max(ADDRESS_WINDOW, LINK_WINDOW)  # older attempts count for no limit: `trial checks run` purges them
MAIL_KIND = "survey"  # an e-mail's kind is "survey:<id>": its link is filled in only when it is sent
LINK_MARK = "{{survey-link}}"  # what the outbox keeps in place of the link


class SurveyGone(DomainError):
    status, code = 410, "expired"


class AlreadySubmitted(Conflict):
    code = "already_submitted"


class AnswersLost(SurveyGone):
    """The parent's answers could not become the assessment for the child's state (410 to the
    parent, who is told nothing of it); :func:`after_refusal` records it and tells the coordinators."""

    def __init__(self, message, survey_id: int, why):
        super().__init__(message)
        self.survey_id, self.why = survey_id, why


class TooManyAttempts(DomainError):
    status, code = 429, "rate_limited"

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


# --- the link -----------------------------------------------------------------------------------

def _token_of(nonce: str) -> str:
    mac = hmac.new(secret_key().encode(), b"survey-link:" + bytes.fromhex(nonce), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_link(s: Survey) -> str:
    s.token_nonce = secrets.token_hex(32)
    token = _token_of(s.token_nonce)
    s.token_hash = token_hash(token)
    return token


def link_path(token: str) -> str:
    """The parent's page: at the site's root, no login."""
    return f"/s/{token}"


def link_of(token: str) -> str:
    return absolute(link_path(token))


def token_for_reminder(s: Survey) -> str | None:
    """The link the family was sent, re-derived from the nonce and the key; None when the key has
    changed since (the link no longer matches: a resend issues a new one)."""
    if not s.token_nonce:
        return None
    token = _token_of(s.token_nonce)
    return token if hmac.compare_digest(token_hash(token), s.token_hash) else None


# --- windows and statuses -----------------------------------------------------------------------

def _end_of_day_utc(day: dt.date, tz: str) -> dt.datetime:
    """The first instant after ``day`` at the site, in naive UTC (how the database keeps times)."""
    local = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), zoneinfo.ZoneInfo(tz or "UTC"))
    return local.astimezone(dt.UTC).replace(tzinfo=None)


def survey_window(db: Session, p: Participant, visit: dict) -> tuple[dt.date, dt.date] | None:
    """The days (at the site) a survey of ``visit`` may be answered: a later visit's window; the
    baseline from enrollment for as long as the baseline window lasts. None when the visit cannot
    take data now (a baseline of a randomized child, a later visit of a child not randomized)."""
    alloc = allocation_of(db, p.id)
    if visit["key"] == "baseline":
        if alloc is not None:
            return None
        opens = local_date(p.enrolled_at, p.site.timezone)
        return opens, opens + dt.timedelta(days=int(visit.get("window_before") or 0) or 60)
    if alloc is None:
        return None
    lo, _, hi = visit_window(visit, randomization_day(db, p, alloc))
    return lo, hi


def status_of(s: Survey, now: dt.datetime | None = None) -> str:
    if s.status in ("completed", "revoked"):
        return s.status
    return "expired" if (now or utc_now()) >= s.expires_at else s.status


def _instrument(content: dict, key: Any) -> dict | None:
    return next((i for i in content["instruments"] if i["key"] == key), None) if isinstance(key, str) else None


def parent_instruments(content: dict) -> list[dict]:
    """The instruments the parents answer (those a survey may carry)."""
    return [i for i in content["instruments"] if respondent_of(i) == "parent"]


def _label(kind: str, item: dict) -> Label:
    return Label(kind, item["key"], item["label"])


def words_in(content: dict, language: str | None):
    """A ``plabel(kind, key)`` for the protocol's words in ``language`` (English where it gives
    none; None for a key it does not have): a survey's labels, an e-mail's, outside a request."""
    table = protocol_labels(content, language)
    return lambda kind, key: table.get(kind, {}).get(key)


def say_in(message: Any, content: dict, language: str | None) -> str:
    """A message or a protocol ``Label`` in ``language``, with the protocol's words in it."""
    plabel = words_in(content, language)
    if isinstance(message, Label):
        return plabel(message.kind, message.key) or str(message)
    return in_language(message, language, plabel=plabel)


# --- the coordinator's side ---------------------------------------------------------------------

def _check_body(db: Session, content: dict, p: Participant, data: Any) -> tuple[dict, dict, str, str | None, str | None]:
    data = data if isinstance(data, dict) else {}
    errors: dict[str, Any] = {}
    ins = _instrument(content, data.get("instrument"))
    parents = parent_instruments(content)
    if ins is None or respondent_of(ins) != "parent":
        errors["instrument"] = (Msg(N_("must be one of: %(allowed)s"),
                                    allowed=Joined([_label("instrument", i) for i in parents], ", ")) if parents else
                                Msg(N_("no instrument of the protocol is answered by the parents")))
    visits = {v["key"]: v for v in content["visits"]}
    visit = visits.get(data.get("visit")) if isinstance(data.get("visit"), str) else None
    if visit is None:
        errors["visit"] = Msg(N_("must be one of: %(allowed)s"),
                              allowed=Joined([_label("visit", v) for v in content["visits"]], ", "))
    elif ins is not None and visit["key"] not in ins["visits"]:
        errors["visit"] = Msg(N_("%(form)s is not collected at %(visit)s"), form=_label("instrument", ins),
                              visit=_label("visit", visit))
    language = data.get("language")
    if language is None:
        language = consent_service.site_language(p.site)
    elif language not in LANGUAGES:
        errors["language"] = Msg(N_("must be one of: %(allowed)s"), allowed=", ".join(LANGUAGES))
    email = data.get("email")
    if email is not None and not (isinstance(email, str) and email.strip() == "") :
        if not isinstance(email, str) or not EMAIL_RE.match(email.strip()) or has_control(email) or len(email) > 254:
            errors["email"] = Msg(N_("is not an e-mail address"))
        else:
            email = email.strip()
            if (why := _cannot_email()) is not None:
                errors["email"] = why
    else:
        email = None
    first_name = text(data.get("first_name"), "first_name", errors, FIRST_NAME_MAX)
    refuse(N_("The survey was not sent"), errors)
    return ins, visit, language, email, first_name


def _cannot_email() -> Msg | None:
    """Why an invitation cannot be e-mailed now, or None: without a mail relay nothing would be
    sent, without TRIAL_BASE_URL its link would not work outside this server."""
    if not smtp_url():
        return Msg(N_("cannot be used: this system sends no e-mail (no mail relay is configured); give the family "
                      "the link or its QR code instead"))
    if not (settings.current().base_url or "").strip():
        return Msg(N_("cannot be used: the system's address (TRIAL_BASE_URL) is not set, so a link in an e-mail "
                      "would not work; give the family the link or its QR code instead"))
    return None


def send_survey(db: Session, actor, study_id: str, data: Any) -> tuple[Survey, str]:
    """Send a survey (the site's coordinator): the instrument must be one the parents answer and be
    collected at the visit (400 naming each bad field); the visit's survey window must be open today
    at the site, the form not yet entered, no other link of it outstanding, the family's consent in
    order and the follow-up not withdrawn (409 saying which). Returns the survey and its token (the
    only time the token exists outside the family's link). With an e-mail address (and a mail relay)
    the invitation is queued in the family's language. Audited (never the address or the name)."""
    p = get_participant(db, actor, study_id, for_update=True)
    require_site_role(db, actor, p.site_id, *SENDERS)
    ensure_writable(db)
    content = current_protocol(db).content
    ins, visit, language, email, first_name = _check_body(db, content, p, data)
    day = local_date(utc_now(), p.site.timezone)
    ensure_accepts_data(db, p, "assessment", day)
    consent_service.ensure_consented(db, p)
    _ensure_open(db, p, ins, visit, day)
    window = survey_window(db, p, visit)
    s = Survey(participant_id=p.id, visit=visit["key"], instrument=ins["key"], language=language, email=email,
               first_name=first_name, status="sent", created_by_id=getattr(actor, "id", None),
               expires_at=_end_of_day_utc(window[1], p.site.timezone), sent_at=utc_now(), token_hash="")
    token = _new_link(s)
    db.add(s)
    db.flush()
    audit.created(db, actor, "survey", s.id, {"participant": p.study_id, "visit": s.visit, "instrument": s.instrument,
                                              "language": language, "by_email": email is not None,
                                              "expires_at": s.expires_at})
    if email:
        _queue_mail(db, s, token, p.site, reminder=False)
    return s, token


def _ensure_open(db: Session, p: Participant, ins: dict, visit: dict, day: dt.date, other_than: int | None = None) -> None:
    window = survey_window(db, p, visit)
    if window is None:
        raise Conflict(Msg(N_("%(visit)s of %(study_id)s takes no data now: the baseline is before randomization, "
                              "later visits after it."), visit=_label("visit", visit), study_id=p.study_id))
    opens, closes = window
    if day < opens:
        raise Conflict(Msg(N_("The window of %(visit)s opens on %(day)s: the survey can be sent from then on."),
                           visit=_label("visit", visit), day=opens), {"visit": Msg(N_("opens on %(day)s"), day=opens)})
    if day > closes:
        raise Conflict(Msg(N_("The window of %(visit)s closed on %(day)s."), visit=_label("visit", visit), day=closes),
                       {"visit": Msg(N_("closed on %(day)s"), day=closes)})
    if visit["key"] != "baseline":
        withdrawal.ensure_visit_allowed(db, p, opens)
    ended = withdrawal.follow_up_ended(db, [p.id]).get(p.id)
    if ended is not None and day >= ended:  # (the parent's side refuses such a link: never send one)
        raise Conflict(Msg(N_("%(study_id)s: the family withdrew consent to the follow-up on %(day)s: no further "
                              "surveys."), study_id=p.study_id, day=ended))
    if db.execute(select(Assessment.id).where(Assessment.participant_id == p.id, Assessment.visit == visit["key"],
                                              Assessment.instrument == ins["key"])).first():
        raise Conflict(Msg(N_("%(form)s at %(visit)s is already recorded for %(study_id)s."),
                           form=_label("instrument", ins), visit=_label("visit", visit), study_id=p.study_id))
    notdone.ensure_not_done_absent(db, p, ins, visit)  # a form recorded as not done gets no survey (409)
    now = utc_now()
    for other in db.execute(select(Survey).where(Survey.participant_id == p.id, Survey.visit == visit["key"],
                                                 Survey.instrument == ins["key"], Survey.status.in_(OPEN))).scalars():
        if other.id != other_than and status_of(other, now) in OPEN:
            raise Conflict(Msg(N_("A survey of %(form)s at %(visit)s is already out (sent %(day)s): resend or revoke it."),
                               form=_label("instrument", ins), visit=_label("visit", visit),
                               day=local_date(other.sent_at or other.created_at, p.site.timezone)))


def _survey_for(db: Session, actor, survey_id: int, for_update: bool = False) -> tuple[Survey, Participant]:
    """The survey and its child if ``actor`` may see the child, else 404."""
    q = select(Survey).where(Survey.id == survey_id)
    s = db.execute(lock_for_update(q, db.get_bind()) if for_update else q).scalar_one_or_none()
    if s is None:
        raise NotFound(N_("No such survey."))
    try:
        p = get_participant(db, actor, db.get(Participant, s.participant_id).study_id, for_update=for_update)
    except NotFound:
        raise NotFound(N_("No such survey.")) from None
    return s, p


def get_survey(db: Session, actor, survey_id: int) -> tuple[Survey, Participant]:
    """A survey and its child if ``actor`` may see the child (else 404, as for no such survey)."""
    return _survey_for(db, actor, survey_id)


def surveys_of(db: Session, actor, study_id: str) -> list[Survey]:
    """A participant's surveys, newest first (the readers of consents: coordinator, monitor,
    manager; 403 for other roles)."""
    p = get_participant(db, actor, study_id)
    require_site_role(db, actor, p.site_id, *consent_service.READERS)
    return list(db.execute(select(Survey).where(Survey.participant_id == p.id)
                           .order_by(Survey.created_at.desc(), Survey.id.desc())).scalars())


def revoke_survey(db: Session, actor, survey_id: int) -> Survey:
    """Revoke a survey's link (the site's coordinator): 409 once answered; revoking a revoked or
    expired one changes nothing. Audited."""
    s, p = _survey_for(db, actor, survey_id, for_update=True)
    require_site_role(db, actor, p.site_id, *SENDERS)
    ensure_writable(db)
    if s.status == "completed":
        raise Conflict(N_("This survey was answered: its values are the assessment, corrected like any form."))
    if s.status != "revoked":
        _revoke(db, actor, s, p)
    return s


def _revoke(db: Session, actor, s: Survey, p: Participant, reason: str | None = None) -> None:
    old = s.status
    s.status, s.revoked_at = "revoked", utc_now()
    audit.record(db, actor, "update", "survey", s.id, {"status": (old, "revoked")}, reason=reason)


def resend_survey(db: Session, actor, survey_id: int, data: Any = None) -> tuple[Survey, str]:
    """A new link for an outstanding survey (the old one stops working): by e-mail again when the
    survey has an address (``email`` in ``data`` replaces it), and the reminders start again. 409
    once answered, revoked or expired. Audited."""
    s, p = _survey_for(db, actor, survey_id, for_update=True)
    require_site_role(db, actor, p.site_id, *SENDERS)
    ensure_writable(db)
    if status_of(s) not in OPEN:
        raise Conflict(Msg(N_("This survey is %(status)s: send a new one instead."),
                           status=Msg(_STATUS_WORDS[status_of(s)])))
    data = data if isinstance(data, dict) else {}
    errors: dict[str, Any] = {}
    email = data.get("email", s.email)
    if email is not None and (not isinstance(email, str) or not EMAIL_RE.match(email.strip()) or has_control(email)
                              or len(email) > 254):
        errors["email"] = Msg(N_("is not an e-mail address"))
    elif email and (why := _cannot_email()) is not None:
        errors["email"] = why
    refuse(N_("The survey was not sent again"), errors)
    # what a new link needs, as for a first one (the child's state, the consent, the window, the form
    # not yet entered), this link itself aside
    content = current_protocol(db).content
    ins, visit = _instrument(content, s.instrument), next((v for v in content["visits"] if v["key"] == s.visit), None)
    if ins is None or visit is None:
        raise Conflict(Msg(N_("This survey is %(status)s: send a new one instead."), status=Msg(_STATUS_WORDS["expired"])))
    day = local_date(utc_now(), p.site.timezone)
    ensure_accepts_data(db, p, "assessment", day)
    consent_service.ensure_consented(db, p)
    _ensure_open(db, p, ins, visit, day, other_than=s.id)
    old_status = s.status
    token = _new_link(s)
    s.email = email.strip() if email else None
    s.status, s.sent_at, s.reminders_sent, s.last_reminder_at = "sent", utc_now(), 0, None
    changes = {"link": ("replaced", "new")}
    if old_status != "sent":
        changes["status"] = (old_status, "sent")
    audit.record(db, actor, "update", "survey", s.id, changes, reason="resent")
    if s.email:
        _queue_mail(db, s, token, p.site, reminder=False)
    return s, token


_STATUS_WORDS = {"sent": N_("sent"), "opened": N_("opened"), "completed": N_("completed"), "expired": N_("expired"),
                 "revoked": N_("revoked")}


def status_words(status: str) -> str:
    return _STATUS_WORDS[status]


def as_dict(s: Survey, link: str | None = None, now: dt.datetime | None = None) -> dict:
    """A survey as the API answers it (``link`` only when just sent or resent: it is not kept)."""
    out = {"id": s.id, "visit": s.visit, "instrument": s.instrument, "language": s.language,
           "status": status_of(s, now), "expires_at": s.expires_at.isoformat() + "Z",
           "sent_at": s.sent_at.isoformat() + "Z" if s.sent_at else None,
           "opened_at": s.opened_at.isoformat() + "Z" if s.opened_at else None,
           "completed_at": s.completed_at.isoformat() + "Z" if s.completed_at else None,
           "revoked_at": s.revoked_at.isoformat() + "Z" if s.revoked_at else None,
           "emailed": s.email is not None, "reminders_sent": s.reminders_sent}
    if link is not None:
        out["link"] = link
    return out


# --- e-mail ---------------------------------------------------------------------------------------

INVITE_SUBJECT = N_("A questionnaire for you from the study team")
INVITE = N_("Dear parent,\n\nthe study team asks you to answer a short questionnaire (%(form)s)%(about)s. Please "
            "open this link on your phone or computer:\n\n%(link)s\n\nThe link is for you only and works until "
            "%(day)s. Your answers are saved when you send the form.\n\nThank you.")
REMINDER_SUBJECT = N_("Reminder: a questionnaire from the study team")
REMINDER = N_("Dear parent,\n\na reminder: the study team asks you to answer a short questionnaire (%(form)s)"
              "%(about)s. Please open this link:\n\n%(link)s\n\nThe link works until %(day)s. If you have already "
              "answered it, thank you, and please ignore this message.")
ABOUT = N_(" about %(name)s")
PARENT_FOOTER = N_("This message was sent by the study's data system at the request of your study team. Please "
                   "do not reply to it; contact your study team with any question.")


def _queue_mail(db: Session, s: Survey, token: str, site: Site, reminder: bool) -> bool:
    """The invitation (or a reminder) in the family's language, through the outbox. Nothing of the
    trial beyond the questionnaire's name, the child's first name if given, and the link's last day."""
    if not smtp_url() or not s.email:
        return False
    content = current_protocol(db).content
    ins = _instrument(content, s.instrument) or {"key": s.instrument, "label": s.instrument}
    last = local_date(s.expires_at - dt.timedelta(seconds=1), site.timezone)
    about = Msg(ABOUT, name=s.first_name) if s.first_name else ""
    body = Msg(REMINDER if reminder else INVITE, form=_label("instrument", ins), about=about,
               link=LINK_MARK, day=last)  # the link only when sent (_fill_link): the outbox never holds one
    db.add(MailMessage(recipient=s.email, subject=in_language(REMINDER_SUBJECT if reminder else INVITE_SUBJECT,
                                                              s.language)[:300],
                       body=say_in(body, content, s.language) + "\n\n" + in_language(PARENT_FOOTER, s.language),
                       kind=f"{MAIL_KIND}:{s.id}", site_id=site.id))
    db.info[PENDING] = True
    return True


def _fill_link(db: Session, m: MailMessage) -> str | None:
    """A survey e-mail's body as sent: its link re-derived from the survey's nonce and the key
    (:func:`token_for_reminder`), the current one; None once the survey may no longer be answered
    (answered, revoked, expired, or the key changed): such an e-mail is not sent."""
    try:
        s = db.get(Survey, int(m.kind.partition(":")[2]))
    except ValueError:
        return None
    token = token_for_reminder(s) if s is not None and status_of(s) in OPEN and s.email == m.recipient else None
    return m.body.replace(LINK_MARK, link_of(token)) if token and LINK_MARK in m.body else None


notify_service.FILLERS[MAIL_KIND] = _fill_link


def _count_reminder(db: Session, s: Survey, now: dt.datetime) -> bool:
    """Count the reminder before it is queued, on the condition that nobody counted it meanwhile: of
    two runs at once the second waits for the first's row, then finds it counted (False). One
    reminder, never two."""
    done = s.reminders_sent
    claimed = db.execute(update(Survey).where(Survey.id == s.id, Survey.reminders_sent == done)
                         .values(reminders_sent=done + 1, last_reminder_at=now)
                         .execution_options(synchronize_session=False)).rowcount
    db.refresh(s)
    return claimed == 1


def send_reminders(db: Session, now: dt.datetime | None = None) -> int:
    """Queue the reminders due (the protocol's ``[surveys] reminder_days`` after the link was
    sent) for outstanding surveys with an address, until answered, revoked or expired; never to a
    family that withdrew from the follow-up, nor while a lock is in force (the caller checks).
    Returns how many were queued."""
    now = now or utc_now()
    if not smtp_url():
        return 0
    days = (current_protocol(db).content.get("surveys") or {}).get("reminder_days", [3, 7])
    rows = db.execute(select(Survey).where(Survey.status.in_(OPEN), Survey.email.is_not(None),
                                           Survey.expires_at > now, Survey.reminders_sent < len(days))
                      .order_by(Survey.id)).scalars().all()
    pids = sorted({s.participant_id for s in rows})
    ended = withdrawal.follow_up_ended(db, pids)
    final = set(db.execute(select(StatusEvent.participant_id).where(StatusEvent.participant_id.in_(pids),
                                                                    StatusEvent.type.in_(FINAL_EVENTS))).scalars()) \
        if pids else set()
    n = 0
    for s in rows:
        if s.participant_id in ended or s.participant_id in final or s.sent_at is None or _entered(db, s):
            continue
        if now < s.sent_at + dt.timedelta(days=days[s.reminders_sent]):
            continue
        token = token_for_reminder(s)
        if token is None:
            continue
        p = db.get(Participant, s.participant_id)
        done = s.reminders_sent
        if not _count_reminder(db, s, now):
            continue
        _queue_mail(db, s, token, p.site, reminder=True)
        audit.record(db, None, "update", "survey", s.id, {"reminders_sent": (done, done + 1)}, reason="reminder")
        n += 1
    return n


# --- the parent's side ----------------------------------------------------------------------------

def address_key(addr: str | None) -> str | None:
    """The client as the address limit counts it: an IPv4 address, an IPv6 one's /64 (one
    household's or phone's network: its addresses change at will)."""
    if not addr:
        return None
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr[:64]
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _limited(db: Session, survey_id: int | None, addr: str | None, now: dt.datetime) -> None:
    """429 when the client address (an IPv6 one by its /64) tried too many unknown links in 15
    minutes, or the link was tried too often in an hour. A valid link is held only by its own
    count: a school's or a mobile network's shared address never blocks a family's link."""
    cfg = settings.current()
    key = address_key(addr)
    if key and survey_id is None:
        first, n = db.execute(select(func.min(SurveyAttempt.at), func.count()).where(
            SurveyAttempt.remote_addr == key, SurveyAttempt.outcome == "unknown",
            SurveyAttempt.at > now - ADDRESS_WINDOW)).one()
        if n >= cfg.survey_address_limit:
            raise TooManyAttempts(TOO_MANY, retry_after=_seconds_until(first + ADDRESS_WINDOW, now))
    if survey_id is not None:
        first, n = db.execute(select(func.min(SurveyAttempt.at), func.count()).where(
            SurveyAttempt.survey_id == survey_id, SurveyAttempt.outcome != "limited",
            SurveyAttempt.at > now - LINK_WINDOW)).one()
        if n >= cfg.survey_link_limit:
            raise TooManyAttempts(TOO_MANY, retry_after=_seconds_until(first + LINK_WINDOW, now))


def _seconds_until(when: dt.datetime, now: dt.datetime) -> int:
    return max(1, int((when - now).total_seconds()) + 1)


def _find(db: Session, token: Any, for_update: bool = False) -> Survey | None:
    if not isinstance(token, str) or not TOKEN_RE.match(token):
        return None
    q = select(Survey).where(Survey.token_hash == token_hash(token))
    if for_update:
        q = lock_for_update(q, db.get_bind()).execution_options(populate_existing=True)
    s = db.execute(q).scalar_one_or_none()
    # the hash alone is not enough: whoever may write the table could set one of his own; the token
    # must also be the key's MAC of the row's nonce (a row without a nonce opens nothing)
    if s is not None and not (s.token_nonce and hmac.compare_digest(_token_of(s.token_nonce), token)):
        return None
    return s


def note_attempt(db: Session, token: Any, addr: str | None, outcome: str) -> None:
    """Count an attempt (the caller commits it, also after a refusal it rolled back). One refused
    for the limit itself is not kept: it counts for no limit (the table does not grow while held)."""
    if outcome == "limited":
        return
    s = _find(db, token)
    db.add(SurveyAttempt(survey_id=s.id if s else None, remote_addr=address_key(addr), at=utc_now(),
                         outcome=outcome))


def purge_attempts(db: Session, now: dt.datetime | None = None) -> int:
    """Delete the attempts older than the longest window of the limits (they count for none);
    `trial checks run` does it. Returns how many."""
    cut = (now or utc_now()) - ATTEMPTS_KEPT
    return db.execute(delete(SurveyAttempt).where(SurveyAttempt.at < cut)
                      .execution_options(synchronize_session=False)).rowcount or 0


LOST = N_("A parent's answers to %(form)s at %(visit)s for %(study_id)s could not be saved: %(why)s Please ask the "
           "family for them again or record the form yourself.")


def after_refusal(db: Session, token: Any, addr: str | None, err: DomainError) -> None:
    """After a refusal was rolled back: its attempt counted, and answers that could not be saved
    for the child's state kept on the survey's trail (the reason, never the values) and told to the
    site's coordinators. The caller commits."""
    note_attempt(db, token, addr, outcome_of(err))
    if isinstance(err, AnswersLost):
        s = db.get(Survey, err.survey_id)
        p = db.get(Participant, s.participant_id)
        content = current_protocol(db).content
        ins = _instrument(content, s.instrument) or {"key": s.instrument, "label": s.instrument}
        visit = next((v for v in content["visits"] if v["key"] == s.visit), {"key": s.visit, "label": s.visit})
        audit.record(db, PROVENANCE, "answers_refused", "survey", s.id, None,
                     reason=f"survey {s.id}: not saved: {in_language(err.why, 'en')}"[:500])
        notify(db, users_with_role(db, "coordinator", p.site_id),
               Msg(LOST, form=_label("instrument", ins), visit=_label("visit", visit), study_id=p.study_id, why=err.why),
               link=f"/participants/{p.study_id}#surveys")


def outcome_of(err: DomainError | None) -> str:
    """The attempt's outcome for the rate limit, from the refusal (None: it succeeded)."""
    if err is None:
        return "ok"
    return {404: "unknown", 400: "invalid", 429: "limited"}.get(err.status, "gone")


def _usable(db: Session, s: Survey | None, p: Participant | None = None) -> Participant:
    """The child of a survey that may still be answered, else 404 / 409 / 410."""
    if s is None:
        raise NotFound(UNKNOWN)
    if s.status == "completed" or _entered(db, s):  # (entered by the staff meanwhile: from paper, by phone)
        raise AlreadySubmitted(DONE)
    if status_of(s) != s.status or s.status == "revoked":
        raise SurveyGone(GONE)
    p = p or db.get(Participant, s.participant_id)
    if _final(db, p.id):  # died, withdrawn: no more data
        raise SurveyGone(GONE)
    content = current_protocol(db).content
    visit = next((v for v in content["visits"] if v["key"] == s.visit), None)
    ins = _instrument(content, s.instrument)
    if visit is None or ins is None or survey_window(db, p, visit) is None:
        raise SurveyGone(GONE)
    if s.participant_id in withdrawal.follow_up_ended(db, [p.id]):
        raise SurveyGone(GONE)
    return p


def _entered(db: Session, s: Survey) -> bool:
    return db.execute(select(Assessment.id).where(Assessment.participant_id == s.participant_id,
                                                  Assessment.visit == s.visit,
                                                  Assessment.instrument == s.instrument)).first() is not None


def _final(db: Session, participant_id: int) -> bool:
    return db.execute(select(StatusEvent.id).where(StatusEvent.participant_id == participant_id,
                                                   StatusEvent.type.in_(FINAL_EVENTS))).first() is not None


def _field_view(ins: dict, f: dict, language: str | None = None) -> dict:
    out = {"key": f["key"], "label": Label("field", f"{ins['key']}.{f['key']}", f["label"]), "type": f["type"],
           "required": f.get("required", True)}
    for k in ("min", "max"):
        if f.get(k) is not None:
            out[k] = f[k]
    if f.get("units"):  # in the survey's language where the protocol gives it (units_labels)
        out["units"] = units_in(f, language)
    if f.get("choices"):
        out["choices"] = [{"key": c, "label": Label("choice", f"{ins['key']}.{f['key']}.{c}", c)} for c in f["choices"]]
    return out


def _lock_child(db: Session, s: Survey) -> Participant:
    """The survey's child, locked: always before the survey's row (the order of a withdrawal, a final
    status event, the staff's entry of the form), so that none of them waits on another."""
    return db.execute(lock_for_update(select(Participant).where(Participant.id == s.participant_id),
                                      db.get_bind())).scalar_one()


def open_survey(db: Session, token: Any, addr: str | None) -> dict:
    """What the parent's page shows: the instrument, the visit and the fields (labels in the
    survey's language are the caller's: ``Label``s), the language, the layout and the child's first
    name if the coordinator gave one; never a study id, an arm or another form. The first opening
    marks the survey ``opened`` (audited under the parent's provenance). Rate-limited."""
    now = utc_now()
    s = _find(db, token)
    _limited(db, s.id if s else None, addr, now)
    p = _usable(db, s)
    if s.status == "sent":  # about to be marked opened: the child, then the survey (as submit_survey, a withdrawal)
        p = _lock_child(db, s)
        s = _find(db, token, for_update=True)
        p = _usable(db, s, p)
    ins = _instrument(current_protocol(db).content, s.instrument)
    visit = next(v for v in current_protocol(db).content["visits"] if v["key"] == s.visit)
    if s.status == "sent" and active_lock_id(db) is None:  # (under a lock nothing is written: opened later)
        s.status, s.opened_at = "opened", s.opened_at or now
        audit.record(db, PROVENANCE, "update", "survey", s.id, {"status": ("sent", "opened")}, reason=f"survey {s.id}")
    return {"survey": s, "instrument": ins, "visit": visit, "language": s.language, "first_name": s.first_name,
            "layout": ins.get("survey_layout") or "whole_form",
            "fields": [_field_view(ins, f, s.language) for f in ins["fields"]],
            "expires_on": local_date(s.expires_at - dt.timedelta(seconds=1), p.site.timezone)}


def submit_survey(db: Session, token: Any, values: Any, addr: str | None) -> Survey:
    """The parent's answers become the visit's assessment, validated like staff entry (400 naming
    the fields; nothing saved), performed today at the site; out-of-window and soft-range checks
    raise their queries for the coordinator; the audit trail's actor is "parent (survey)" and its
    reason names the survey. 409 ``already_submitted`` the second time; 410 once expired, revoked,
    the window closed, the follow-up withdrawn or the form entered by the staff meanwhile."""
    now = utc_now()
    s = _find(db, token)
    _limited(db, s.id if s else None, addr, now)
    _usable(db, s)
    # the child first, then the survey (two submissions of one link queue here): the order a withdrawal
    # takes (participant, then its surveys), so that the two never wait on each other
    p = _lock_child(db, s)
    s = _find(db, token, for_update=True)
    _usable(db, s, p)
    content = current_protocol(db).content
    ins = _instrument(content, s.instrument)
    visit = next(v for v in content["visits"] if v["key"] == s.visit)
    validate_values(ins, values)  # 400 naming the fields, before anything about the child is looked at
    day = local_date(now, p.site.timezone)
    try:
        a = enter_assessment(db, PROVENANCE, p, ins, visit, day, {"values": values}, reason=f"survey {s.id}",
                             survey_id=s.id)
    except (ValidationError, Locked):
        raise
    except DomainError as e:  # the child's state: said to the coordinators (after_refusal), never to the parent
        if _entered(db, s):
            raise AlreadySubmitted(DONE) from e
        raise AnswersLost(GONE, s.id, e.message) from e
    old = s.status
    s.status, s.completed_at, s.assessment_id = "completed", now, a.id
    s.opened_at = s.opened_at or now
    audit.record(db, PROVENANCE, "update", "survey", s.id, {"status": (old, "completed"), "assessment": (None, a.id)},
                 reason=f"survey {s.id}")
    return s


# --- the coordinator's pages ----------------------------------------------------------------------

def survey_views(db: Session, actor, study_id: str) -> list[dict]:
    """A participant's surveys for the participant page (the readers of consents; 403 otherwise):
    each as :func:`as_dict` with its language's name, its last day at the site and whether it is
    still outstanding (a link the family may use)."""
    rows = surveys_of(db, actor, study_id)
    now = utc_now()
    out = []
    for s in rows:
        p = db.get(Participant, s.participant_id)
        view = as_dict(s, now=now)
        view.update(language_name=LANGUAGES.get(s.language, s.language), status_words=status_words(view["status"]),
                    outstanding=view["status"] in OPEN,
                    expires_on=local_date(s.expires_at - dt.timedelta(seconds=1), p.site.timezone))
        out.append(view)
    return out


def outstanding_link(db: Session, actor, survey_id: int) -> tuple[Survey, Participant, str]:
    """The current link of an outstanding survey, for the site's coordinator to print as a QR code
    (404 for a survey the actor may not see; 403 for another role; 409 when it is answered, revoked
    or expired, or the key has changed since it was sent: resend it)."""
    s, p = _survey_for(db, actor, survey_id)
    require_site_role(db, actor, p.site_id, *SENDERS)
    if status_of(s) not in OPEN:
        raise Conflict(Msg(N_("This survey is %(status)s: send a new one instead."),
                           status=Msg(_STATUS_WORDS[status_of(s)])))
    token = token_for_reminder(s)
    if token is None:
        raise Conflict(N_("This link no longer works (the system's key has changed): resend the survey."))
    # who saw the live link when (a staff member could answer in the family's place): audited
    audit.record(db, actor, "view_link", "survey", s.id, None, reason="the link and its QR code shown")
    return s, p, token


def from_surveys(db: Session, participant_id: int) -> set[int]:
    """The ids of a participant's assessments that a parent entered through a survey."""
    return set(db.execute(select(Survey.assessment_id).where(Survey.participant_id == participant_id,
                                                             Survey.assessment_id.is_not(None))).scalars())
