"""Users, roles, sessions, API tokens and the access policy."""
