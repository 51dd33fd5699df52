"""Outcome assessments entered from the protocol's instruments."""
