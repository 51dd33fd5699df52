"""Signing: both credentials at the moment of signing (the logged-in identity and the password
again; for a user enrolled in two-factor sign-in a current code as well, 21 CFR 11.200's two
distinct components beside the identity), the meaning in the signer's words, audited in the same
transaction."""
from __future__ import annotations

from sqlalchemy.orm import Session

from trial.audit import service as audit
from trial.auth import mfa
from trial.auth.service import check_password
from trial.catalogue import N_
from trial.db import utcnow
from trial.errors import Forbidden, ValidationError
from trial.esign.models import Signature
from trial.scope import is_cli
from trial.validation import refuse, text


def sign(db: Session, actor, password: str, meaning: str, purpose: str, code: str | None = None) -> Signature:
    """``code``: the current code of the signer's authenticator app, required (400 naming
    ``code`` when missing or wrong) when the signer enrolled in two-factor sign-in."""
    if is_cli(actor) or getattr(actor, "id", None) is None:
        raise Forbidden(N_("An electronic signature needs a user; the command line cannot sign."))
    errors: dict[str, str] = {}
    meaning = text(meaning, "meaning", errors, 500)
    if meaning is None and "meaning" not in errors:
        errors["meaning"] = N_("is required: what does this signature mean?")
    if not isinstance(password, str) or not password:
        errors["password"] = N_("is required to sign")
    if mfa.is_enrolled(actor) and not (isinstance(code, str) and code.strip()):
        errors["code"] = N_("is required to sign: the current code of your authenticator app")
    refuse(N_("Not signed"), errors)
    if actor.must_change_password:
        raise Forbidden(N_("Your password was reset by an administrator: change it before you sign."))
    if not check_password(actor, password):
        raise ValidationError(N_("Not signed: the password is wrong."), {"password": N_("is wrong")})
    mfa.check_for_signature(db, actor, code)
    sig = Signature(user_id=actor.id, printed_name=actor.name, email=actor.email, meaning=meaning,
                    purpose=purpose, signed_at=utcnow())
    db.add(sig)
    db.flush()
    audit.created(db, actor, "signature", sig.id, {"printed_name": sig.printed_name, "meaning": sig.meaning,
                                                   "purpose": purpose, "signed_at": sig.signed_at})
    return sig
