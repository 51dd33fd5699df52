"""Therapists' credentials: who may deliver the intervention, and on which days."""
