"""One row per randomized participant and post-randomization visit: the window in the site's
calendar and, for each kind of form (the blinded ones the assessors enter, the others the
coordinators enter), how many the protocol takes there and how many are entered. A derived index,
never clinical data: every fact in it is re-derived from the allocation, the assessments and the
status events by :func:`trial.visitplan.service.replan`."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, Date, DateTime, ForeignKey, Index, Integer, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from trial.db import Base


OPEN_VISITS = {"ix_planned_visit_open_other": "ended IS false AND other_entered < other_forms",
               "ix_planned_visit_open_blinded": "ended IS false AND blinded_entered < blinded_forms",
               "ix_planned_visit_open": "ended IS false AND (other_entered < other_forms OR blinded_entered < blinded_forms)"}


class PlannedVisit(Base):
    __tablename__ = "planned_visit"
    __table_args__ = (UniqueConstraint("participant_id", "visit"),
                      Index("ix_planned_visit_worklist", "ended", "closes"),
                      # the out-of-window worklist: the few visits with a form entered outside the window
                      Index("ix_planned_visit_late", "site_id", postgresql_where=text("blinded_late OR other_late"),
                            sqlite_where=text("blinded_late OR other_late")),
                      # the due and overdue worklists: the visits still missing a form of the kind the reader
                      # enters, in the lists' order, with what their filter reads (a page and its count from
                      # the index, no sort of the plan; migration 0017)
                      *(Index(name, "visit_idx", "randomized_at", "participant_id", postgresql_where=text(where),
                              sqlite_where=text(where), postgresql_include=["site_id", "opens", "closes", "visit"])
                        for name, where in OPEN_VISITS.items()))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participant.id"), index=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("site.id"))
    visit: Mapped[str] = mapped_column(String(32))
    visit_idx: Mapped[int] = mapped_column(Integer)  # the visit's place in the protocol
    randomized_at: Mapped[dt.datetime] = mapped_column(DateTime)
    # the window, in the site's calendar (the randomization day is the site's local date)
    opens: Mapped[dt.date] = mapped_column(Date)
    target: Mapped[dt.date] = mapped_column(Date)
    closes: Mapped[dt.date] = mapped_column(Date)
    # the child withdrew or died on or before the window closed: the visit is no longer expected
    ended: Mapped[bool] = mapped_column(Boolean, default=False)
    blinded_forms: Mapped[int] = mapped_column(Integer)       # forms the assessors enter here
    blinded_entered: Mapped[int] = mapped_column(Integer, default=0)
    blinded_late: Mapped[bool] = mapped_column(Boolean, default=False)   # one entered outside the window
    other_forms: Mapped[int] = mapped_column(Integer)         # forms the coordinators enter here
    other_entered: Mapped[int] = mapped_column(Integer, default=0)
    other_late: Mapped[bool] = mapped_column(Boolean, default=False)
    protocol_version: Mapped[int] = mapped_column(Integer)  # the protocol whose visits planned it


class VisitPlanState(Base):
    """One row: what the whole plan was derived under (the protocol version and the sites' time
    zones, which set every window's days); a read finding another state re-plans everyone."""
    __tablename__ = "visit_plan_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    protocol_version: Mapped[int] = mapped_column(Integer)
    sites_key: Mapped[str] = mapped_column(String(64))  # sha256 of the sites' ids and time zones
