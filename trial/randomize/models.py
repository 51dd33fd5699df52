from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from trial.db import Base, utcnow


class RandomizationDesign(Base):
    """Created once, when the trial opens. The seed is sealed (encrypted with the seal key) in
    :class:`SealedSeed`; ``revealed_seed`` is filled only at unblinding."""

    __tablename__ = "randomization_design"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    method: Mapped[str] = mapped_column(String(20))
    protocol_version: Mapped[int] = mapped_column(Integer)
    design: Mapped[dict] = mapped_column(JSON)
    commitment: Mapped[str] = mapped_column(String(64))
    opened_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    opened_by: Mapped[str] = mapped_column(String(200))
    unblinded_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    revealed_seed: Mapped[str | None] = mapped_column(String(64))


class SealedSeed(Base):
    __tablename__ = "sealed_seed"

    design_id: Mapped[int] = mapped_column(ForeignKey("randomization_design.id"), primary_key=True)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)


class Stratum(Base):
    """One allocation sequence: a site (and other factor levels) for permuted blocks, or the
    single sequence of a minimization trial. Its row is the lock every allocation takes."""

    __tablename__ = "stratum"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("site.id"))
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    blocks: Mapped[int] = mapped_column(Integer, default=0)
    length: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class AllocationReservation(Base):
    """A slot the allocation journal shows was given to a child the restored database lacks
    (enrolled or randomized after the backup): `trial randomization reconcile` reserves it, with its
    arm, so that the child, entered again under its study id, gets the arm the site was told, and
    no other child can take that slot or that study id."""

    __tablename__ = "allocation_reservation"
    __table_args__ = (UniqueConstraint("stratum_id", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[str] = mapped_column(String(20), unique=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("site.id"))
    stratum_id: Mapped[int] = mapped_column(ForeignKey("stratum.id"))
    seq: Mapped[int] = mapped_column(Integer)
    arm: Mapped[str] = mapped_column(String(50))
    screening_log_number: Mapped[str | None] = mapped_column(String(40))
    randomized_at: Mapped[dt.datetime] = mapped_column(DateTime)
    journal_line: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    used_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class AllocationJournalPending(Base):
    """An allocation's journal line, written in the allocation's own transaction and deleted once
    the line is appended to the journal file (trial.randomize.journalfile): a line that a process
    could not append (killed between the COMMIT and the append, a full disk) stays here and is
    appended by the next process that looks."""

    __tablename__ = "allocation_journal_pending"

    allocation_id: Mapped[int] = mapped_column(ForeignKey("allocation.id"), primary_key=True)
    line: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class RandomizationError(Base):
    """A randomization error (``wrong_stratum``: a stratification factor entered wrong, with the
    value as randomized and the correct one; ``ineligible``; ``randomized_twice``). The allocation
    never changes (intention to treat); the analysis uses the corrected strata."""

    __tablename__ = "randomization_error"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    participant_id: Mapped[int] = mapped_column(ForeignKey("participant.id"), index=True)
    kind: Mapped[str] = mapped_column(String(30))
    field: Mapped[str | None] = mapped_column(String(50))
    as_randomized: Mapped[str | None] = mapped_column(String(100))
    correct_value: Mapped[str | None] = mapped_column(String(100))
    text: Mapped[str] = mapped_column(Text)
    recorded_by_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    recorded_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
