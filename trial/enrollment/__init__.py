"""Screening log and enrollment."""
