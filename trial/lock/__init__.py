"""Soft and hard database locks, electronic signatures and unblinding."""
