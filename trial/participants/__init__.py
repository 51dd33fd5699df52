"""The participant's record and how each role may see it (see models.py and service.py)."""
