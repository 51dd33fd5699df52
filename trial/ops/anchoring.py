"""`trial audit anchor` with its copy by e-mail: the head of the audit chain appended to the anchor
file (trial.audit.anchors) and, when a mail relay is configured, e-mailed to every manager (kind
``"anchor"``), whose inboxes are then a copy outside the database that nobody who writes the
database can cut back. Here, above both the audit trail and the outbox, because the audit trail
sits below the outbox in the layers."""
from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy.orm import Session

from trial.audit import anchors
from trial.catalogue import N_, Msg
from trial.notify.service import mail, users_with_role

ANCHOR = "anchor"  # the e-mails' kind
SUBJECT = N_("Audit trail anchored: record %(seq)s")
BODY = N_("The head of the trial's audit trail as it was anchored at %(at)s: record %(seq)s, %(records)s records, "
          "%(seals)s seals of hard locks. Keep this e-mail: it is a copy outside the database. Should the audit trail "
          "ever be doubted, the operator writes the line below into a file and runs `trial audit verify --anchors "
          "FILE`, which finds a trail cut back behind it.\n\n%(line)s")


def anchor_and_mail(db: Session, to: str | Path | None = None) -> tuple[Path, dict, int]:
    """Append the committed head to the anchor file (``to`` or TRIAL_AUDIT_ANCHORS) and queue its
    line to every active manager when mail is configured (sent after the caller's commit). Returns
    the file, the line and how many e-mails were queued."""
    path, line = anchors.anchor(db, to)
    words = {k: line[k] for k in ("seq", "records", "seals", "at")}
    queued = mail(db, users_with_role(db, "manager"), Msg(SUBJECT, seq=line["seq"]),
                  Msg(BODY, line=json.dumps(line, sort_keys=True), **words), kind=ANCHOR)
    return path, line, queued
