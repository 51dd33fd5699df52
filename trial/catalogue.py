"""The words a user reads for the system's own keys (statuses, event types, roles, adverse-event
codes, query states, visit states). What the protocol defines (arms, visits, instruments, fields,
criteria) takes its labels from the protocol; everything else comes from here, so that no page
shows an internal key. ``N_`` marks a string for the translation catalogue without translating
it here (this module has no request and no locale); pages translate the label when they show it."""
from __future__ import annotations

import datetime as dt
import functools
from pathlib import Path

from babel.support import NullTranslations, Translations

# The languages of the web UI (gettext locale names; pt_BR is served as pt-BR), each named in its
# own language for the language choice. English is the source language and the fallback.
LANGUAGES: dict[str, str] = {
    "en": "English", "de": "Deutsch", "it": "Italiano", "nb": "Norsk bokmål", "pt_BR": "Português (Brasil)",
    "ko": "한국어", "he": "עברית",
}
RTL_LANGUAGES = frozenset({"he"})


def N_(text: str) -> str:
    """Mark ``text`` for extraction into the translation catalogue; translated where it is shown."""
    return text


class Msg(str):
    """A message composed from a catalogue text and values, for the services (which have no
    request and no language): as a ``str`` it is the English text, which the API, the audit
    trail, the logs and the tests read; a page shows it in the reader's language
    (``trial.http.say``), an e-mail in the recipient's (:func:`translator`), each value that is
    itself a Msg translated too, and each date in the reader's format. ``words()`` is what is
    stored beside a stored text (a notification, an automatic query) so that it is shown in each
    reader's language later. The text is marked for the catalogue where it is written:
    ``Msg(N_("..."), ...)`` is extracted as ``Msg`` is a keyword of `make translations`."""
    template: str
    params: dict

    def __new__(cls, template: str, **params):
        obj = super().__new__(cls, template % {k: _english(v) for k, v in params.items()} if params else template)
        obj.template, obj.params = template, params
        return obj

    def translated(self, gettext, day=None, plabel=None) -> str:
        """The message in a language: ``gettext`` translates a catalogue text, ``day`` formats a
        date, ``plabel(kind, key)`` gives the protocol's word for one of its keys (a Label)."""
        text = gettext(self.template)
        if not self.params:
            return text
        return text % {k: _in(v, gettext, day, plabel) for k, v in self.params.items()}

    def words(self) -> dict:
        """The template and values as JSON (dates as ISO text), to store beside the text."""
        return {"template": self.template, "params": {k: _word(v) for k, v in self.params.items()}}

    @classmethod
    def from_words(cls, words: dict | None, text: str | None = None) -> "Msg | str | None":
        """The message stored as :meth:`words`; the stored text itself when there are none."""
        if not words or "template" not in words:
            return text
        return cls(words["template"], **{k: _unword(v) for k, v in (words.get("params") or {}).items()})


class Label(str):
    """The protocol's word for one of its keys (an instrument, a visit, a field) inside a Msg:
    English as a ``str``; in a page's language where the protocol gives one."""
    kind: str
    key: str

    def __new__(cls, kind: str, key: str, english: str):
        obj = super().__new__(cls, english)
        obj.kind, obj.key = kind, key
        return obj


class Joined(str):
    """Several values in one message, joined (``"; "`` by default), each shown in the reader's
    language as a value of a :class:`Msg` is: a refusal's reasons, a list of the protocol's
    words. As a ``str`` it is the English."""
    parts: tuple
    sep: str

    def __new__(cls, parts, sep: str = "; "):
        parts = tuple(parts)
        obj = super().__new__(cls, sep.join(_english(p) for p in parts))
        obj.parts, obj.sep = parts, sep
        return obj


def term(kind: str, key: str | None) -> "Msg":
    """The catalogue's word for one of the system's keys (a role, a status, a state) as a value of a
    message: English as a ``str``, in the reader's language where it is shown."""
    return Msg(label(kind, key))


def terms(kind: str, keys) -> Joined:
    """The catalogue's words for several keys, comma-separated, as a value of a message."""
    return Joined((term(kind, k) for k in keys), ", ")


def _english(v) -> str:
    return v.isoformat() if isinstance(v, (dt.date, dt.datetime)) else str(v)


def _in(v, gettext, day, plabel):
    if isinstance(v, Msg):
        return v.translated(gettext, day, plabel)
    if isinstance(v, Joined):
        return v.sep.join(str(_in(p, gettext, day, plabel)) for p in v.parts)
    if isinstance(v, Label):
        return (plabel(v.kind, v.key) if plabel else None) or str(v)
    if isinstance(v, dt.date) and not isinstance(v, dt.datetime):
        return day(v) if day else v.isoformat()
    return v


def _word(v):
    if isinstance(v, Msg):
        return {"msg": v.words()}
    if isinstance(v, Joined):
        return {"joined": [_word(p) for p in v.parts], "sep": v.sep}
    if isinstance(v, Label):
        return {"label": [v.kind, v.key, str(v)]}
    if isinstance(v, dt.date) and not isinstance(v, dt.datetime):
        return {"date": v.isoformat()}
    return v if isinstance(v, (int, float)) or v is None else str(v)


def _unword(v):
    if isinstance(v, dict) and "msg" in v:
        return Msg.from_words(v["msg"])
    if isinstance(v, dict) and "joined" in v:
        return Joined((_unword(p) for p in v["joined"]), v.get("sep", "; "))
    if isinstance(v, dict) and "label" in v:
        return Label(*v["label"])
    if isinstance(v, dict) and "date" in v:
        return dt.date.fromisoformat(v["date"])
    return v


TRANSLATIONS = Path(__file__).resolve().parent / "translations"


@functools.lru_cache(maxsize=16)
def translator(language: str | None):
    """The catalogue's ``gettext`` for a language (English, the source, when there is none or
    no such catalogue): for what is written outside a request, such as an e-mail in its
    recipient's language."""
    if not language or language == "en" or language not in LANGUAGES:
        return NullTranslations().gettext
    return Translations.load(str(TRANSLATIONS), [language]).gettext


def in_language(message, language: str | None, day=None, plabel=None) -> str:
    """``message`` (a Msg, or a fixed catalogue text) in ``language``."""
    gettext = translator(language)
    if isinstance(message, Msg):
        return message.translated(gettext, day, plabel)
    return gettext(message) if message else message


LABELS: dict[str, dict[str, str]] = {
    "status": {
        "enrolled": N_("Enrolled"), "randomized": N_("Randomized"), "not_received": N_("Did not receive the intervention"),
        "discontinued_intervention": N_("Discontinued the intervention"), "lost_to_follow_up": N_("Lost to follow-up"),
        "withdrawn": N_("Withdrawn"), "died": N_("Died"),
    },
    "event": {
        "withdrawn": N_("Withdrawn"), "lost_to_follow_up": N_("Lost to follow-up"),
        "discontinued_intervention": N_("Discontinued the intervention"),
        "not_received": N_("Did not receive the intervention"), "died": N_("Died"),
    },
    "withdrawal_scope": {
        "intervention": N_("Stop the therapy sessions (still come to the assessments)"),
        "follow_up": N_("Stop the assessments and questionnaires (the therapy may go on)"),
        "all": N_("Stop everything (withdraw from the trial)"),
    },
    "data_use": {
        "keep": N_("Keep and analyse the data already collected"),
        "delete_unanalysed": N_("Delete the data already collected that has not been analysed, where the protocol allows it"),
    },
    "deviation": {
        "eligibility": N_("Eligibility"), "consent": N_("Consent"), "visit_out_of_window": N_("Visit out of window"),
        "intervention": N_("Intervention"), "assessment": N_("Assessment"), "blinding": N_("Blinding"), "other": N_("Other"),
    },
    "dmc_decision": {
        "continue": N_("Continue the trial unchanged"), "modify": N_("Continue with modifications"),
        "stop_benefit": N_("Stop: benefit shown"), "stop_harm": N_("Stop: harm"), "stop_futility": N_("Stop: futility"),
    },
    "role": {
        "coordinator": N_("Site coordinator"), "therapist": N_("Music therapist"), "assessor": N_("Blinded assessor"),
        "monitor": N_("Monitor"), "statistician": N_("Statistician"), "manager": N_("Trial manager"),
        "admin": N_("Administrator"), "investigator": N_("Site investigator"),
        "dmc": N_("Data monitoring committee"),
    },
    "visit_status": {
        "done": N_("Entered"), "done_out_of_window": N_("Entered out of window"), "due": N_("Due"),
        "overdue": N_("Overdue"), "upcoming": N_("Upcoming"), "missing": N_("Missing"),
        "not_expected": N_("Not expected"), "not_yet_randomized": N_("Not yet randomized"),
        "not_done": N_("Not done (reason recorded)"),
    },
    "randomization_error": {
        "wrong_stratum": N_("Randomized in the wrong stratum"), "ineligible": N_("Ineligible child randomized"),
        "randomized_twice": N_("Randomized twice"),
    },
    "query_status": {"open": N_("Open"), "answered": N_("Answered"), "closed": N_("Closed")},
    "query_step": {"raise": N_("Raised"), "response": N_("Answered"), "close": N_("Closed"), "reopen": N_("Reopened")},
    "query_kind": {
        "participant": N_("Participant"), "screening": N_("Screening"), "assessment": N_("Assessment"),
        "session": N_("Session"), "event": N_("Status event"), "adverse_event": N_("Adverse event"),
    },
    "severity": {"mild": N_("Mild"), "moderate": N_("Moderate"), "severe": N_("Severe")},
    "seriousness": {
        "death": N_("Results in death"), "life_threatening": N_("Life-threatening"),
        "hospitalisation": N_("Hospitalisation or its prolongation"), "disability": N_("Persistent disability"),
        "congenital_anomaly": N_("Congenital anomaly"), "other_important": N_("Other important medical event"),
    },
    "relatedness": {
        "not_related": N_("Not related"), "unlikely": N_("Unlikely related"), "possible": N_("Possibly related"),
        "probable": N_("Probably related"), "definite": N_("Definitely related"),
    },
    "expectedness": {"expected": N_("Expected"), "unexpected": N_("Unexpected")},
    "ae_outcome": {
        "recovering": N_("Recovering"), "recovered": N_("Recovered"), "recovered_with_sequelae": N_("Recovered with sequelae"),
        "not_recovered": N_("Not recovered"), "fatal": N_("Fatal"), "unknown": N_("Unknown"),
    },
    "reported_to": {  # to whom a serious adverse event is reported (trial.safety.models.REPORTED_TO)
        "ethics_committee": N_("Ethics committee"), "authority": N_("Competent authority"), "sponsor": N_("Sponsor"),
    },
    "screening_outcome": {
        "eligible": N_("Eligible"), "not_eligible": N_("Not eligible"), "declined": N_("Declined"), "other": N_("Other"),
    },
    "sex": {"female": N_("Female"), "male": N_("Male")},
    "lock_kind": {"soft": N_("Soft lock"), "hard": N_("Hard lock"), "addendum": N_("Addendum")},
    "unblinding_status": {"awaiting_countersignature": N_("Awaiting the countersignature"),
                          "countersigned": N_("Countersigned"), "withdrawn": N_("Withdrawn")},
    "attendance": {"attended": N_("Attended"), "cancelled": N_("Cancelled"), "no_show": N_("No show")},
    "grant_status": {"pending": N_("Pending"), "approved": N_("Approved"), "rejected": N_("Rejected"),
                     "withdrawn": N_("Request withdrawn")},
    "present": {"child": N_("The child alone"), "child_and_parent": N_("The child with a parent")},  # at a session
}


def label(kind: str, key: str | None) -> str:
    """The word for ``key`` of ``kind`` (untranslated); an unknown key is shown as it is, which a
    test of every kind's keys keeps from happening."""
    if key is None:
        return ""
    return LABELS.get(kind, {}).get(key, key)


def choices(kind: str, keys) -> list[tuple[str, str]]:
    """(key, label) pairs for a select or radio field."""
    return [(k, label(kind, k)) for k in keys]
