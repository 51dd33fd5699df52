"""Separation of duties: an admin's grant of a role that sees allocations takes effect only when a
manager countersigns it (an electronic signature), never one's own grant nor one's own request."""
