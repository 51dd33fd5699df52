"""What a new password must be (NIST SP 800-63B, 5.1.1.2): at least MIN_LENGTH characters, any
characters (no composition rules: no "one digit and one capital"), not on a list of common or
breached passwords, not built from the user's own e-mail address or name, and not easy to guess.

The list and the estimate come from zxcvbn (Dropbox's estimator, the `zxcvbn` package): its 30,000
most common passwords of breach corpora are refused outright, and so is any password whose
estimate is below MIN_SCORE (3 of 0-4: about 10^8 guesses, "safely unguessable" against an online
attack and a slow hash such as ours), which catches the variants ("Password2026!", keyboard rows,
repetitions like aaaaaaaaaaaa, sequences like 1234567890ab, dictionary words with digits appended).
A long passphrase of unrelated words passes. Only the first SCORED characters are estimated (the
estimate grows with the length, and its run time too)."""
from __future__ import annotations

import re

from zxcvbn import zxcvbn
from zxcvbn.frequency_lists import FREQUENCY_LISTS

from trial.catalogue import N_, Msg

MIN_LENGTH = 12
MAX_LENGTH = 1000
MIN_SCORE = 3
SCORED = 100
PERSONAL_MIN = 4  # parts of the e-mail or name shorter than this are not refused (Li, Ann)
SERVICE_WORDS = ["trial", "time-a", "timea", "music", "therapy"]
_COMMON = frozenset(FREQUENCY_LISTS["passwords"])
_NOT_ALNUM = re.compile(r"[\W_]+")

TOO_SHORT = N_("The password must be at least %(n)s characters.")
TOO_LONG = N_("The password must be at most %(n)s characters.")
PERSONAL = N_("The password must not contain your e-mail address or your name.")
COMMON = N_("This password is on a list of common and breached passwords. Choose another: a few unrelated "
            "words make a good one.")
WEAK = N_("This password is too easy to guess (a common word or pattern, a keyboard row, a repetition or a "
          "sequence). Choose another: a few unrelated words make a good one.")


def _plain(text: str) -> str:
    return _NOT_ALNUM.sub("", text.lower())


def _personal(email: str | None, name: str | None) -> set[str]:
    """The user's own words: the e-mail's local part and the name, whole and in parts."""
    local = (email or "").split("@", 1)[0]
    words = {_plain(local), _plain(name or "")} | set(_NOT_ALNUM.split(local.lower())) | set(_NOT_ALNUM.split((name or "").lower()))
    return {w for w in words if len(w) >= PERSONAL_MIN}


def refusal(password, email: str | None = None, name: str | None = None) -> tuple[Msg | str, Msg | str] | None:
    """Why ``password`` may not be a new password of the user with ``email`` and ``name``: (the
    message, the field's reason); None when it may."""
    if not isinstance(password, str) or len(password) < MIN_LENGTH:
        return Msg(TOO_SHORT, n=MIN_LENGTH), Msg(N_("at least %(n)s characters"), n=MIN_LENGTH)
    if len(password) > MAX_LENGTH:
        return Msg(TOO_LONG, n=MAX_LENGTH), Msg(N_("at most %(n)s characters"), n=MAX_LENGTH)
    plain = _plain(password)
    own = _personal(email, name)
    if any(w in plain for w in own):
        return PERSONAL, N_("contains your e-mail address or name")
    if password.lower() in _COMMON or plain in _COMMON:
        return COMMON, N_("a common or breached password")
    if zxcvbn(password[:SCORED], user_inputs=sorted(own) + SERVICE_WORDS)["score"] < MIN_SCORE:
        return WEAK, N_("too easy to guess")
    return None
