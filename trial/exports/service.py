"""What the web and the API call for reports: one place decides blinded (pooled over the arms) or
not (by arm)."""
from __future__ import annotations

from sqlalchemy.orm import Session

from trial.catalogue import N_, Msg
from trial.exports import drawing, reports
from trial.exports.consort import consort
from trial.protocol.service import current as current_protocol
from trial.scope import is_blinded, require_role


def consort_counts(db: Session, actor, site: str | None = None) -> dict:
    return consort(db, actor, site)


def _title(db: Session, site: str | None) -> Msg:
    key = current_protocol(db).content["trial"]["key"].upper()
    if site:
        return Msg(N_("CONSORT flow diagram: %(trial)s, site %(site)s"), trial=key, site=site.upper())
    return Msg(N_("CONSORT flow diagram: %(trial)s"), trial=key)


def consort_svg(db: Session, actor, site: str | None = None, say=None) -> str:
    """The diagram as SVG; ``say`` gives its words in the reader's language (a web page's)."""
    title = _title(db, site)
    return drawing.svg(consort(db, actor, site), (say or str)(title), say)


def consort_pdf(db: Session, actor, site: str | None = None) -> bytes:
    c = consort(db, actor, site)
    table = reports.baseline_table(db, is_blinded(db, actor))
    return drawing.pdf(c, _title(db, site), [("Baseline characteristics by arm (Table 1)", table)])


def baseline_csv(db: Session, actor) -> bytes:
    require_role(db, actor, "manager", "statistician")
    return reports.table_csv(reports.baseline_table(db, is_blinded(db, actor)))


def summary(db: Session, actor) -> dict:
    require_role(db, actor, "manager", "statistician")
    blinded = is_blinded(db, actor)
    out = reports.trial_facts(db, blinded)
    out["blinding_index"] = reports.bang_index(db, blinded)
    out["blinded"] = blinded
    return out
