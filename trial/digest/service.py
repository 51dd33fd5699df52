"""The weekly digest: one e-mail a week to every active user who holds the coordinator or the
assessor role at a site and has not opted out (``User.weekly_digest``), queued in the outbox
(``mail_outbox``) in the user's language by the daily checks (`trial checks run`).

Per site of the user (where the user is a coordinator or an assessor): the visits of the forms
the user enters there that are due now or open within the next seven days (the "due this week"
worklist: study id, the protocol's visit label, the window's days) and the number of open queries
waiting for the user's answer, with links to that worklist and to the queries. The visits are the
same for every arm and the queries counted are those the user may see (an assessor's: only
queries on blinded forms), so nothing in a digest names or hints at an arm; an assessor's digest
is blinded-safe.

When it is sent: on the first run of the checks on or after the Monday of a week (any day of that
week, if none was sent yet); ``User.digest_week`` then records that Monday, so running the checks
daily, or twice a day, sends one digest a week. A user with nothing to be told (no visit coming
due, no query waiting) gets no e-mail and the week stays unmarked: a later run in the same week
sends the digest once there is something to tell. Nothing is queued under a lock in force (the
data are frozen) nor without an e-mail relay (TRIAL_SMTP_URL: the digest is e-mail only), and
then no week is marked either."""
from __future__ import annotations

import datetime as dt

from babel.dates import format_date
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from trial.auth.models import RoleAssignment, User
from trial.catalogue import N_, Label, Msg, in_language
from trial.notify.models import MailMessage
from trial.notify.service import FOOTER, absolute, smtp_url
from trial.outcomes.service import worklist
from trial.protocol.service import current as current_protocol
from trial.protocol.service import labels as protocol_labels
from trial.queries.service import listing_query
from trial.sites.models import Site
from trial.timeline import today
from trial.trialstate.service import active_lock_id

DIGEST_ROLES = ("coordinator", "assessor")
OPT_OUT = N_("You receive this digest once a week. To stop it, untick \"Send me the weekly digest\" on the "
             "Language page of your account.")


def week_of(day: dt.date) -> dt.date:
    """The Monday of ``day``'s week: the week a digest is sent for."""
    return day - dt.timedelta(days=day.weekday())


def recipients(db: Session, week: dt.date) -> list[User]:
    """The active users who want the digest, hold the coordinator or assessor role at a site and
    have had none for ``week`` yet."""
    holders = select(RoleAssignment.user_id).where(RoleAssignment.role.in_(DIGEST_ROLES),
                                                   RoleAssignment.site_id.is_not(None))
    return list(db.execute(select(User).where(
        User.active.is_(True), User.weekly_digest.is_(True), User.id.in_(holders),
        (User.digest_week.is_(None)) | (User.digest_week < week)).order_by(User.id)).scalars())


def site_digest(db: Session, user: User, site: Site, on: dt.date | None) -> dict:
    """What the digest tells ``user`` of one site: the visits coming due (this week's worklist,
    as the user sees it) and how many open queries wait for the user's answer there."""
    visits = worklist(db, user, "week", site_code=site.code, on=on)
    waiting = listing_query(db, user, site_code=site.code, status="open", mine=True).subquery()
    return {"site": site, "queries": db.execute(select(func.count()).select_from(waiting)).scalar_one(),
            "visits": [{"study_id": v["study_id"], "visit": v["visit"], "label": v["label"],
                        "opens": dt.date.fromisoformat(v["window_start"]),
                        "closes": dt.date.fromisoformat(v["window_end"])} for v in visits]}


def _site_lines(part: dict) -> list:
    """The digest's lines of one site (messages, translated when the e-mail is written)."""
    site = part["site"]
    lines = ["", Msg(N_("%(code)s (%(name)s)"), code=site.code, name=site.name)]
    if part["visits"]:
        lines.append(N_("Visits coming due in the next seven days:"))
        lines += [Msg(N_("- %(study_id)s: %(visit)s, window %(opens)s to %(closes)s"), study_id=v["study_id"],
                      visit=Label("visit", v["visit"], v["label"]), opens=v["opens"], closes=v["closes"])
                  for v in part["visits"]]
    else:
        lines.append(N_("No visits coming due in the next seven days."))
    lines.append(Msg(N_("Queries waiting for your answer: %(count)s"), count=part["queries"]))
    lines.append(Msg(N_("This week's visits: %(link)s"), link=absolute(f"/visits?kind=week&site={site.code}")))
    lines.append(Msg(N_("Your queries: %(link)s"), link=absolute(f"/queries?status=open&mine=1&site={site.code}")))
    return lines


def compose(user: User, parts: list[dict], week: dt.date, content: dict) -> tuple[str, str]:
    """The digest's subject and body in the user's language (the protocol's visit labels in it
    too, where the protocol gives them; the days in its format)."""
    language = user.language
    words = protocol_labels(content, language)
    locale = (language or "en").replace("-", "_")

    def say(message) -> str:
        return in_language(message, language, day=lambda d: format_date(d, "medium", locale=locale),
                           plabel=lambda kind, key: words.get(kind, {}).get(key))
    lines = [Msg(N_("Hello %(name)s,"), name=user.name), "",
             N_("Your weekly digest: the visits coming due in the next seven days and the queries waiting for your "
                "answer, at each of your sites.")]
    for part in parts:
        lines += _site_lines(part)
    lines += ["", OPT_OUT, FOOTER]
    subject = say(Msg(N_("Weekly digest for the week of %(week)s"), week=week))
    return subject, "\n".join(say(line) if line else "" for line in lines)


def queue_digests(db: Session, on: dt.date | None = None) -> int:
    """Queue this week's digest for every user due one (see the module's text); ``on``: the day
    (default: today, UTC, for the week; each site's today for its worklist). Returns how many
    were queued. Same transaction as the caller's; sent by the outbox after the commit."""
    if active_lock_id(db) is not None or not smtp_url():
        return 0
    week = week_of(on or today())
    content = current_protocol(db).content
    queued = 0
    for user in recipients(db, week):
        sites = db.execute(select(Site).where(Site.id.in_(user.site_ids(*DIGEST_ROLES))).order_by(Site.code)).scalars()
        parts = [site_digest(db, user, site, on) for site in sites]
        if not any(p["visits"] or p["queries"] for p in parts):
            continue  # nothing to tell: no e-mail, and the week stays open for a later run
        subject, body = compose(user, parts, week, content)
        db.add(MailMessage(recipient=user.email, subject=subject[:300], body=body, kind="digest", user_id=user.id))
        user.digest_week = week
        queued += 1
    return queued
