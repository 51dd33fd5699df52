"""Admin pages: users, roles and sites (no clinical data)."""
