"""Locked dataset bundles (CSV, ODM, XPT, DTA), CONSORT counts, drawings and reports."""
