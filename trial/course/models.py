from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, Boolean, Date, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from trial.db import Base, utcnow

ATTENDANCE = ("attended", "cancelled", "no_show")
PRESENT = ("child", "child_and_parent")  # who took part in a session with the therapist


class TherapySession(Base):
    """A music-therapy session. Reveals the allocation (the arms differ in frequency): never shown
    to blinded users."""

    __tablename__ = "therapy_session"
    __table_args__ = (UniqueConstraint("participant_id", "held_on"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participant.id"), index=True)
    held_on: Mapped[dt.date] = mapped_column(Date)
    attendance: Mapped[str] = mapped_column(String(12))
    minutes: Mapped[int | None] = mapped_column(Integer)
    techniques: Mapped[list] = mapped_column(JSON, default=list)
    engagement: Mapped[int | None] = mapped_column(Integer)
    note: Mapped[str | None] = mapped_column(Text)
    outside_course: Mapped[bool] = mapped_column(Boolean, default=False)
    present: Mapped[str | None] = mapped_column(String(20))  # one of PRESENT
    goals: Mapped[list] = mapped_column(JSON, default=list)   # the child's goals (keys) the session worked on
    # video-recorded (only when the family's consent gave that option; the fidelity sample draws
    # from recorded sessions only); None: not asked (sessions logged before consents were kept)
    video_recorded: Mapped[bool | None] = mapped_column(Boolean)
    logged_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    logged_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class CounsellingSession(Base):
    """Parent counselling, given to the families of every arm (arm-independent)."""

    __tablename__ = "counselling_session"
    __table_args__ = (UniqueConstraint("participant_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participant.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    held_on: Mapped[dt.date] = mapped_column(Date)
    attended: Mapped[bool] = mapped_column(Boolean, default=True)
    note: Mapped[str | None] = mapped_column(Text)
    logged_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    logged_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class CourseTally(Base):
    """Each child's sessions counted: attended in the course, and logged in all. Kept by the
    session writers in their own transaction (``trial.course.service.recount``), so that the
    adherence summary and list read one row per child, not every session. Reveals the allocation
    like the sessions it counts."""

    __tablename__ = "course_tally"

    participant_id: Mapped[int] = mapped_column(ForeignKey("participant.id"), primary_key=True)
    attended: Mapped[int] = mapped_column(Integer, default=0)  # attended, within the course
    logged: Mapped[int] = mapped_column(Integer, default=0)    # every session logged, in the course or after


class ChildGoal(Base):
    """One of a child's individual goals (a key of the protocol's ``goals``), set by the therapist
    after the first (assessment) session, with a short description of what it means for this
    child. Revised in place (description, or no longer pursued), each change audited with its
    reason. Reveals the allocation: only children in a music-therapy arm have goals."""

    __tablename__ = "child_goal"
    __table_args__ = (UniqueConstraint("participant_id", "goal"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participant.id"), index=True)
    goal: Mapped[str] = mapped_column(String(32))
    description: Mapped[str | None] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    set_on: Mapped[dt.date] = mapped_column(Date)
    set_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    changed_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
