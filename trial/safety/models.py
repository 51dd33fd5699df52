from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, Boolean, Date, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from trial.db import Base, utcnow

SEVERITIES = ("mild", "moderate", "severe")
SERIOUSNESS = ("death", "life_threatening", "hospitalisation", "disability", "congenital_anomaly", "other_important")
RELATEDNESS = ("not_related", "unlikely", "possible", "probable", "definite")
RELATED = ("possible", "probable", "definite")
EXPECTEDNESS = ("expected", "unexpected")
OUTCOMES = ("recovering", "recovered", "recovered_with_sequelae", "not_recovered", "fatal", "unknown")
RESOLVED = ("recovered", "recovered_with_sequelae", "fatal")
REPORT_HOURS = 24
# to whom a serious adverse event is reported (a report to any of them stops the 24-hour clock)
REPORTED_TO = ("ethics_committee", "authority", "sponsor")


class AdverseEvent(Base):
    __tablename__ = "adverse_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participant.id"), index=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("site.id"), index=True)
    term: Mapped[str] = mapped_column(String(200))
    onset: Mapped[dt.date] = mapped_column(Date)
    severity: Mapped[str] = mapped_column(String(10))
    serious: Mapped[bool] = mapped_column(Boolean, index=True)
    seriousness: Mapped[list] = mapped_column(JSON, default=list)
    relatedness: Mapped[str] = mapped_column(String(15))
    expectedness: Mapped[str | None] = mapped_column(String(12))
    outcome: Mapped[str] = mapped_column(String(25))
    resolved_on: Mapped[dt.date | None] = mapped_column(Date)
    description: Mapped[str | None] = mapped_column(Text)
    reported_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    reported_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # a serious event must be reported within 24 hours; the clock runs until a manager acknowledges
    report_due: Mapped[dt.datetime | None] = mapped_column(DateTime)
    acknowledged_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    acknowledged_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    follow_ups: Mapped[list[AdverseEventFollowUp]] = relationship(order_by="AdverseEventFollowUp.id", lazy="selectin")
    reports: Mapped[list[AdverseEventReport]] = relationship(order_by="AdverseEventReport.id", lazy="selectin")


class AdverseEventFollowUp(Base):
    __tablename__ = "adverse_event_follow_up"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adverse_event_id: Mapped[int] = mapped_column(ForeignKey("adverse_event.id"), index=True)
    on: Mapped[dt.date] = mapped_column(Date)
    outcome: Mapped[str] = mapped_column(String(25))
    resolved_on: Mapped[dt.date | None] = mapped_column(Date)
    text: Mapped[str] = mapped_column(Text)
    recorded_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    recorded_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class AdverseEventReport(Base):
    """A serious adverse event reported onwards: to whom, when (as the reporter says), and the
    reference number the recipient gave; recorded by whom and when (UTC)."""
    __tablename__ = "adverse_event_report"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adverse_event_id: Mapped[int] = mapped_column(ForeignKey("adverse_event.id"), index=True)
    reported_to: Mapped[str] = mapped_column(String(20))
    reported_at: Mapped[dt.datetime] = mapped_column(DateTime)
    reference: Mapped[str] = mapped_column(String(80))
    recorded_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    recorded_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
