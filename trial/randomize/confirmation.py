"""The randomization confirmation for the child's file: a one-page PDF with the study id, the site,
the strata, the moment of randomization in the site's time zone, the arm, who randomized, and the
allocation's verification digest.

Only a reader who may learn this child's allocation gets it (``trial.scope.can_see_arm`` and the
participant's visibility, ``trial.participants.service.check_visible``); anyone else, an unknown
study id and a child not yet randomized all get the same 404, so that the answer tells nothing.

The digest is SHA-256 over the UTF-8 text ``commitment|stratum|slot|arm|study id``: the
randomization's commitment (recorded when it opened), the stratum's key, the slot the allocation
took in it, the arm's protocol key and the study id. After unblinding anyone can regenerate the
stratum's list from the revealed seed (`trial randomization verify`), read the arm at that slot and
recompute the digest from the printed text: a confirmation whose digest matches was made from the
committed list.

No Flask here: the caller says which language (the web page's, or the API user's stored one).
Fonts: DejaVu Sans (Latin, Hebrew) and a Korean TrueType font (Nanum Gothic, UnDotum or Baekmuk)
embedded when found (Debian's fonts-dejavu-core and fonts-nanum); otherwise Helvetica, and
ReportLab's Adobe-Korea1 CID font for Korean. Hebrew is laid out right to left (see
:func:`visual`).
"""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import io
import os
import unicodedata
import zoneinfo
from dataclasses import dataclass
from types import SimpleNamespace

from babel.dates import format_datetime
from sqlalchemy import select
from sqlalchemy.orm import Session

from trial.auth.models import RoleAssignment, User
from trial.catalogue import N_, RTL_LANGUAGES, Msg, in_language, translator
from trial.errors import Forbidden, NotFound
from trial.notify import service as notify
from trial.notify.models import MailMessage
from trial.participants.models import Allocation, Participant
from trial.participants.service import allocation_of, check_visible
from trial.protocol.service import current as current_protocol
from trial.protocol.service import labels as protocol_labels
from trial.randomize.models import RandomizationDesign, Stratum
from trial.scope import can_see_arm
from trial.sites.models import Site

DIGEST_FORMAT = "commitment|stratum|slot|arm|study id"


def digest_text(commitment: str, stratum: str, slot: int, arm: str, study_id: str) -> str:
    """The text the verification digest is taken over (printed on the confirmation)."""
    return f"{commitment}|{stratum}|{slot}|{arm}|{study_id}"


def allocation_digest(commitment: str, stratum: str, slot: int, arm: str, study_id: str) -> str:
    """SHA-256 (hex) of :func:`digest_text`."""
    return hashlib.sha256(digest_text(commitment, stratum, slot, arm, study_id).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Confirmation:
    """What the confirmation says, in keys and values (the PDF puts them into words)."""
    study_id: str
    site_code: str
    site_name: str
    site_timezone: str
    strata: dict  # factor key -> level key (the child's recorded strata; site is the site code)
    arm: str
    randomized_at: dt.datetime  # UTC, naive, as stored
    randomized_by: str | None  # the user's printed name; None: the command-line operator
    stratum: str
    slot: int
    commitment: str

    @property
    def hashed_text(self) -> str:
        return digest_text(self.commitment, self.stratum, self.slot, self.arm, self.study_id)

    @property
    def digest(self) -> str:
        return allocation_digest(self.commitment, self.stratum, self.slot, self.arm, self.study_id)


NOT_FOUND = N_("No randomization confirmation for that study ID.")


def _refused() -> NotFound:
    """The one answer to everyone who may not have this confirmation, whatever the study id (it is
    not repeated: the same bytes for every child, known or not)."""
    return NotFound(NOT_FOUND)


def may_print(db: Session, actor, site_id: int, randomized: bool) -> bool:
    """Is the confirmation there for ``actor`` (the participant page's link)?"""
    return randomized and can_see_arm(db, actor, site_id)


def confirmation(db: Session, actor, study_id: str) -> Confirmation:
    """The confirmation's facts, for a reader who may learn this child's allocation; a 404 alike
    for an unknown study id, a child not yet randomized and any reader who may not."""
    p = db.execute(select(Participant).where(Participant.study_id == (study_id or "").upper())).scalar_one_or_none()
    if p is None or not can_see_arm(db, actor, p.site_id):
        raise _refused()
    try:
        check_visible(db, actor, p)
    except (Forbidden, NotFound):
        raise _refused() from None
    alloc: Allocation | None = allocation_of(db, p.id)
    if alloc is None:
        raise _refused()
    site = db.get(Site, p.site_id)
    stratum = db.get(Stratum, alloc.stratum_id)
    commitment = db.execute(select(RandomizationDesign.commitment).limit(1)).scalar_one()
    who = db.get(User, alloc.randomized_by_id) if alloc.randomized_by_id else None
    strata = {"site": site.code, **(p.strata or {})}
    return Confirmation(p.study_id, site.code, site.name, site.timezone or "UTC", strata, alloc.arm, alloc.randomized_at,
                        who.name if who else None, stratum.key, alloc.seq, commitment)


def confirmation_pdf(db: Session, actor, study_id: str, language: str | None) -> bytes:
    """The confirmation as a PDF in ``language`` (a key of trial.catalogue.LANGUAGES; English when
    None), for a reader who may have it (else the 404 of :func:`confirmation`)."""
    c = confirmation(db, actor, study_id)
    return render(c, current_protocol(db).content, language or "en")


# --- the e-mail to the site --------------------------------------------------------------------

MAIL_KIND = notify.NAMES_ARM  # checked again at each attempt to send: trial.notify.service._withhold
MAIL_INTRO = N_("A child of your site has been randomized. Keep this message with the child's file; the "
                "randomization confirmation (PDF) is on the participant's page.")


def queue_mail(db: Session, c: Confirmation, protocol: dict, site_id: int) -> int:
    """The confirmation by e-mail (when a relay is configured) to each active coordinator of the
    child's site who may learn its arm (``can_see_arm``: never an admin or the site's assessor,
    whatever other role they hold), in the recipient's language, queued in the allocation's
    transaction and sent after its commit; each leaves only if, when it is sent, its recipient is
    still active and may still learn the site's arms (the outbox checks it again at each attempt:
    ``user_id`` and ``site_id``). Returns how many were queued."""
    if not notify.smtp_url():
        return 0
    users = db.execute(select(User).join(RoleAssignment, RoleAssignment.user_id == User.id)
                       .where(RoleAssignment.role == "coordinator", RoleAssignment.site_id == site_id,
                              User.active.is_(True)).order_by(User.id)).unique().scalars().all()
    queued = 0
    for u in users:
        if not can_see_arm(db, u, site_id):
            continue
        language = u.language or "en"
        subject = in_language(Msg(N_("Randomization confirmation: %(study_id)s"), study_id=c.study_id), language)
        lines = "\n".join(f"{label}: {value}" for label, value in rows(c, protocol, language))
        link = notify.absolute(f"/participants/{c.study_id}")
        body = (f"{in_language(MAIL_INTRO, language)}\n\n{lines}\n\n{link}\n\n"
                f"{in_language(notify.FOOTER, language)}")
        db.add(MailMessage(recipient=u.email, subject=subject[:300], body=body, kind=MAIL_KIND, user_id=u.id,
                           site_id=site_id))
        queued += 1
    if queued:
        db.info[notify.PENDING] = True
    return queued


# --- fonts -----------------------------------------------------------------------------------

FONT_DIRS = ("/usr/share/fonts/truetype", "/usr/local/share/fonts", os.path.expanduser("~/.fonts"))
SANS = (("dejavu/DejaVuSans.ttf", "dejavu/DejaVuSans-Bold.ttf"),)
MONO = (("dejavu/DejaVuSansMono.ttf", "dejavu/DejaVuSansMono.ttf"),)
KOREAN = (("nanum/NanumGothic.ttf", "nanum/NanumGothicBold.ttf"), ("unfonts-core/UnDotum.ttf", "unfonts-core/UnDotumBold.ttf"),
          ("baekmuk/gulim.ttf", "baekmuk/gulim.ttf"))


def _find(candidates) -> tuple[str, str] | None:
    for regular, bold in candidates:
        for d in FONT_DIRS:
            r, b = os.path.join(d, regular), os.path.join(d, bold)
            if os.path.exists(r):
                return r, (b if os.path.exists(b) else r)
    return None


@functools.cache
def reportlab() -> SimpleNamespace:
    """ReportLab's modules, for every PDF the system draws (this confirmation, the casebooks, the
    CONSORT diagram and the baseline table, the data monitoring committee's reports), imported in
    this one place."""
    # deferred: ReportLab is loaded only when a PDF is drawn (a cold path), not with the app
    from reportlab import platypus
    from reportlab.graphics import shapes  # deferred, as above
    from reportlab.lib import colors, pagesizes, styles, units, utils  # deferred, as above
    from reportlab.pdfbase import cidfonts, pdfmetrics, ttfonts  # deferred, as above
    from reportlab.pdfgen import canvas  # deferred, as above
    return SimpleNamespace(platypus=platypus, shapes=shapes, colors=colors, pagesizes=pagesizes, styles=styles,
                           units=units, utils=utils, cidfonts=cidfonts, pdfmetrics=pdfmetrics, ttfonts=ttfonts,
                           canvas=canvas)


@functools.cache
def fonts(language: str) -> tuple[str, str, str]:
    """(regular, bold, monospace) font names for a language, registered with ReportLab once."""
    rl = reportlab()
    cidfonts, pdfmetrics, ttfonts = rl.cidfonts, rl.pdfmetrics, rl.ttfonts
    UnicodeCIDFont, TTFont = cidfonts.UnicodeCIDFont, ttfonts.TTFont

    def register(prefix: str, found) -> tuple[str, str] | None:
        if not found:
            return None
        names = (f"{prefix}", f"{prefix}-Bold")
        for name, path in zip(names, found):
            if name not in pdfmetrics.getRegisteredFontNames():
                pdfmetrics.registerFont(TTFont(name, path))
        return names

    mono = register("TrialMono", _find(MONO))
    mono_name = mono[0] if mono else "Courier"
    if language == "ko":
        korean = register("TrialKorean", _find(KOREAN))
        if korean:
            return korean[0], korean[1], mono_name
        pdfmetrics.registerFont(UnicodeCIDFont("HYGothic-Medium"))  # not embedded: the reader's viewer supplies it
        return "HYGothic-Medium", "HYGothic-Medium", mono_name
    sans = register("TrialSans", _find(SANS))
    return (sans[0], sans[1], mono_name) if sans else ("Helvetica", "Helvetica-Bold", mono_name)


# --- right to left ---------------------------------------------------------------------------

MIRROR = str.maketrans("()[]{}<>«»", ")(][}{><»«")


def _strong(ch: str) -> str | None:
    """'R' for a right-to-left letter, 'L' for a left-to-right letter or a digit, None for a neutral."""
    kind = unicodedata.bidirectional(ch)
    if kind in ("R", "AL"):
        return "R"
    if kind in ("L", "EN", "AN"):
        return "L"
    return None


def visual(text: str) -> str:
    """A line of a right-to-left paragraph (Hebrew) in the order it is drawn from left to right:
    runs of left-to-right text (Latin words, numbers, study ids, dates) keep their order inside;
    the runs, and the letters of each right-to-left run, are reversed, and brackets in them are
    mirrored. A neutral (space, punctuation) between two left-to-right characters belongs to them;
    any other takes the paragraph's direction. This is the Unicode bidirectional algorithm reduced
    to what one line of this document needs (no embeddings or explicit marks)."""
    if not any(_strong(ch) == "R" for ch in text):
        return text
    kinds = [_strong(ch) for ch in text]
    resolved = []
    for i, k in enumerate(kinds):
        if k is None:
            before = next((x for x in reversed(kinds[:i]) if x), "R")
            after = next((x for x in kinds[i + 1:] if x), "R")
            k = "L" if before == after == "L" else "R"
        resolved.append(k)
    runs: list[tuple[str, str]] = []
    for ch, k in zip(text, resolved):
        if runs and runs[-1][0] == k:
            runs[-1] = (k, runs[-1][1] + ch)
        else:
            runs.append((k, ch))
    return "".join(s if k == "L" else s[::-1].translate(MIRROR) for k, s in reversed(runs))


# --- the page --------------------------------------------------------------------------------

def _moment(c: Confirmation, language: str, gettext) -> str:
    """The moment of randomization in the site's time zone, the zone named with its offset."""
    zone = zoneinfo.ZoneInfo(c.site_timezone)
    local = c.randomized_at.replace(tzinfo=dt.UTC).astimezone(zone)
    offset = local.utcoffset() or dt.timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    utc_offset = f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    text = format_datetime(local, format="medium", tzinfo=zone, locale=language)
    return gettext(N_("%(moment)s (time zone %(zone)s, %(offset)s)")) % {"moment": text, "zone": c.site_timezone,
                                                                             "offset": utc_offset}


def rows(c: Confirmation, protocol: dict, language: str) -> list[tuple[str, str]]:
    """The confirmation's (label, value) lines in ``language``."""
    gettext = translator(language)
    words = protocol_labels(protocol, language)
    strata = []
    for f in protocol["randomization"]["factors"]:
        if f["key"] == "site":
            strata.append((gettext(N_("Site")), c.site_code))
        elif f["key"] in c.strata:
            strata.append((words["factor"].get(f["key"], f["key"]), str(c.strata[f["key"]]).replace("_", " ")))
    by = c.randomized_by or gettext(N_("the trial's operator (command line)"))
    out = [(gettext(N_("Study ID")), c.study_id),
           (gettext(N_("Site")), f"{c.site_code} – {c.site_name}"),
           (gettext(N_("Strata")), "; ".join(f"{k}: {v}" for k, v in strata)),
           (gettext(N_("Randomized at")), _moment(c, language, gettext)),
           (gettext(N_("Allocated arm")), words["arm"].get(c.arm, c.arm)),
           (gettext(N_("Randomized by")), by)]
    return out


class _Page:
    """An A4 page written top down, left to right or (Hebrew) right to left."""

    def __init__(self, cv, language: str, width: float, height: float, split):
        self.cv, self.split = cv, split
        self.regular, self.bold, self.mono = fonts(language)
        self.rtl = language in RTL_LANGUAGES
        self.left, self.right = 56, width - 56
        self.width = self.right - self.left
        self.y = height - 64

    def line(self, text: str, font: str, size: float, indent: float = 0, at: float | None = None, y=None) -> None:
        self.cv.setFont(font, size)
        y = self.y if y is None else y
        if self.rtl:
            self.cv.drawRightString((at if at is not None else self.right) - indent, y, visual(text))
        else:
            self.cv.drawString((at if at is not None else self.left) + indent, y, text)

    def para(self, text: str, font: str, size: float, w: float | None = None, indent: float = 0,
             lead: float | None = None, at: float | None = None, advance: bool = True) -> float:
        """``text`` wrapped to ``w``; the page moves down past it unless ``advance`` is False.
        Returns where it ends (the height below its last line)."""
        lead, y = lead or size * 1.35, self.y
        for part in self.split(text, font, size, w or self.width) or [""]:
            self.line(part, font, size, indent, at, y)
            y -= lead
        if advance:
            self.y = y
        return y

    def rule(self, before: float, after: float) -> None:
        self.y -= before
        self.cv.line(self.left, self.y, self.right, self.y)
        self.y -= after

    def code(self, text: str, size: float, lead: float) -> None:
        """Monospace text (a digest), read left to right in every language."""
        for part in self.split(text, self.mono, size, self.width):
            self.cv.setFont(self.mono, size)
            (self.cv.drawRightString(self.right, self.y, part) if self.rtl else
             self.cv.drawString(self.left, self.y, part))
            self.y -= lead


def render(c: Confirmation, protocol: dict, language: str) -> bytes:
    """The one A4 page: the title, the allocation's facts, the digest and how to check it."""
    rl = reportlab()
    pagesizes, utils, canvas = rl.pagesizes, rl.utils, rl.canvas
    gettext = translator(language)
    title = gettext(N_("Randomization confirmation"))
    buf = io.BytesIO()
    cv = canvas.Canvas(buf, pagesize=pagesizes.A4, invariant=1, pageCompression=1, lang=language.replace("_", "-"))
    cv.setTitle(f"{title} {c.study_id}")
    cv.setAuthor("TIME-A trial system")
    cv.setSubject(protocol["trial"].get("name", ""))
    cv.setLineWidth(0.8)
    page = _Page(cv, language, *pagesizes.A4, utils.simpleSplit)
    page.para(title, page.bold, 17, lead=22)
    page.para(protocol["trial"].get("name", ""), page.regular, 9.5, lead=13)
    page.rule(6, 22)
    _facts(page, rows(c, protocol, language))
    page.rule(8, 22)
    _verification(page, c, gettext)
    cv.showPage()
    cv.save()
    return buf.getvalue()


def _facts(page: _Page, facts) -> None:
    """The allocation's facts: a label and its value on each row."""
    label_w = 150
    for label, value in facts:  # each row as tall as the longer of its label and its value
        if page.rtl:
            end = page.para(label, page.bold, 10.5, label_w, at=page.right, advance=False)
            end = min(end, page.para(value, page.regular, 10.5, page.width - label_w - 12,
                                     at=page.right - label_w - 12, advance=False))
        else:
            end = page.para(label, page.bold, 10.5, label_w, advance=False)
            end = min(end, page.para(value, page.regular, 10.5, page.width - label_w - 12, indent=label_w + 12,
                                     advance=False))
        page.y = end - 6


def _verification(page: _Page, c: Confirmation, gettext) -> None:
    """The digest, the text it is the SHA-256 of, and how to check it after unblinding."""
    page.para(gettext(N_("Verification")), page.bold, 12, lead=18)
    page.para(gettext(N_("Allocation digest (SHA-256)")), page.bold, 10, lead=14)
    page.code(c.digest, 10, 14)  # one line: 64 characters fit
    page.y -= 6
    page.para(gettext(N_("Hashed text")), page.bold, 10, lead=14)
    page.code(c.hashed_text, 7.5, 10)
    page.y -= 8
    explanation = gettext(N_(
        "The digest is SHA-256 of the hashed text above: the commitment recorded when randomization opened, the "
        "stratum, the slot this allocation took in it (%(stratum)s, slot %(slot)s), the arm's key in the protocol and "
        "the study ID (%(format)s). After unblinding, regenerate the stratum's list from the revealed seed "
        "(trial randomization verify), take the arm at this slot and compute the digest again: if it matches, this "
        "allocation followed the committed list.")) % {"stratum": c.stratum, "slot": c.slot, "format": DIGEST_FORMAT}
    page.para(explanation, page.regular, 9, lead=12)
    page.y -= 16
    page.para(gettext(N_("This confirmation shows the allocation: keep it in the child's file, away from blinded "
                         "assessors.")), page.bold, 9, lead=12)
