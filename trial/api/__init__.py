"""JSON API under /api/v1 (contract: shared/API.md), one module per area. Every route is declared
with trial.api.routing.route, which also records it in the OpenAPI document."""
from trial.api import clinical, closeout, course, datamanagement, grants, interim, intervention, lock, missing, platform, sharing, signoffs, surveys  # noqa: F401  (routes join the blueprint)
from trial.api.routing import bp

__all__ = ["bp"]
