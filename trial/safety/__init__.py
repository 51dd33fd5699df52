"""Adverse events: the coordinator's report, follow-ups until resolved, the 24-hour clock of a
serious one until a manager acknowledges it. Never shown to assessors: an AE can reveal the arm
(one that happened during a session, say)."""
