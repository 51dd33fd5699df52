"""Trial sites."""
