"""The one place that decides what a user may do and see: roles, sites and blinding.

Views, the API and the CLI never repeat these rules; services call them.
"""
from __future__ import annotations

import getpass
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from trial.catalogue import N_
from trial.errors import Forbidden
from trial.trialstate.service import trial_unblinded

UNBLINDED_SITE_ROLES = ("coordinator", "therapist", "monitor", "investigator")
SITE_ROLES = ("coordinator", "therapist", "assessor", "monitor", "investigator")


@dataclass
class CliActor:
    """The operator at the command line: has direct database access, so acts with every role.
    Audited under its own name."""

    email: str = field(default_factory=lambda: f"cli:{getpass.getuser()}")
    id: None = None
    name: str = "command line"

    def has_role(self, *roles: str) -> bool:
        return True

    def role_names(self) -> set[str]:
        return {"admin", "manager", "coordinator"}

    def site_ids(self, *roles: str) -> set[int]:
        return set()


def is_cli(actor) -> bool:
    return isinstance(actor, CliActor)


def require_role(db: Session, actor, *roles: str) -> None:
    if actor is None or not actor.has_role(*roles):
        raise Forbidden(N_("Your role does not allow this."))


def require_site_role(db: Session, actor, site_id: int, *roles: str) -> None:
    """The actor must hold one of ``roles`` at ``site_id`` (site-scoped roles) or globally."""
    if is_cli(actor):
        return
    if actor is None:
        raise Forbidden(N_("Your role does not allow this."))
    for r in actor.roles:
        if r.role in roles and (r.site_id is None or r.site_id == site_id):
            return
    raise Forbidden(N_("Your role does not allow this at that site."))


def visible_site_ids(db: Session, actor, *roles: str) -> set[int] | None:
    """Sites whose clinical records the actor may read through ``roles``; ``None`` = all sites.
    Admins see no clinical data at all."""
    if is_cli(actor):
        return None
    if actor.has_role("manager", "statistician") and (not roles or set(roles) & {"manager", "statistician"}):
        return None
    wanted = tuple(r for r in (roles or SITE_ROLES) if r in SITE_ROLES)
    return actor.site_ids(*wanted)


def can_see_arm(db: Session, actor, site_id: int | None) -> bool:
    """May this actor learn the allocation of a participant at ``site_id``?"""
    if is_cli(actor):
        return True
    if actor is None or actor.has_role("admin"):  # an admin stays blinded, whatever else it holds
        return False
    if site_id is not None and site_id in actor.site_ids("assessor"):
        return False
    if actor.has_role("manager"):
        return True
    if site_id is not None and site_id in actor.site_ids(*UNBLINDED_SITE_ROLES):
        return True
    if actor.has_role("statistician"):
        return trial_unblinded(db)
    return False


def is_blinded(db: Session, actor) -> bool:
    """Blinded for the trial as a whole: anyone who is not a manager or an unblinded statistician,
    and anyone who assesses anywhere."""
    if is_cli(actor):
        return False
    if actor is None or actor.has_role("assessor", "admin"):
        return True
    if actor.has_role("manager"):
        return False
    if actor.has_role("statistician"):
        return not trial_unblinded(db)
    return True
