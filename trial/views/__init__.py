"""The web pages: one blueprint per area, thin over the services (forms in trial.forms)."""
from trial.views import (
                         access,
                         admin,
                         audit,
                         auth,
                         consent,
                         course,
                         dashboard,
                         datamanagement,
                         enrollment,
                         grants,
                         intervention,
                         lock,
                         main,
                         mfa,
                         ops,
                         outcomes,
                         sso,
                         status,
)

BLUEPRINTS = (auth.bp, main.bp, admin.bp, grants.bp, audit.bp, enrollment.bp, course.bp, status.bp, outcomes.bp,
              dashboard.bp, lock.bp, datamanagement.bp, intervention.bp, sso.bp, mfa.bp,
              access.bp, ops.bp, consent.bp)
