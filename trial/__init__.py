"""TIME-A-style multi-site trial management and randomization system.

The house is built in layers that import one way only, from the top down (checked by
import-linter, see ``[tool.importlinter]`` in pyproject.toml):

    trial.cli                     the command line
    trial.app                     the application factory
    trial.views | trial.api       the faces: web pages and the JSON API
    trial.forms                   the web forms
    trial.http | trial.demo | trial.models   request plumbing; the demo loader; every model
    trial.websession | trial.ops  a web session's life: idle end, absolute lifetime, known devices;
                                  readiness checks, metrics and the JSON log for the operators
    trial.lock | trial.dashboard | trial.digest   signed locks and unblinding; home page, grid,
                                  charts; the weekly digest e-mail of visits due and queries waiting
    trial.exports                 bundles, CONSORT, reports (no sessions for blinded readers)
    trial.monitoring              source verification marks
    trial.queries                 the query workflow: raise, answer, close, reopen; who sees which
    trial.safety                  adverse events, follow-ups, the 24-hour SAE clock
    trial.course | trial.outcomes | trial.status      what happens after randomization
    trial.enrollment | trial.randomize                 screening and enrolment; allocation
    trial.dataquality | trial.visitplan   automatic queries and verification marks; each child's visit
                                  windows and forms (the worklists' index), both kept by the writers
    trial.participants            the child's record: lookup, visibility, allocation, status
    trial.grants | trial.notify   countersigned role grants; in-app and e-mail notifications
    trial.esign                   electronic signatures
    trial.auth                    users, roles, passwords, tokens, throttling
    trial.sites | trial.protocol  sites; the protocol as data
    trial.audit                   the keyed, append-only audit trail
    trial.scope                   who may see what: roles, sites, blinding
    trial.trialstate              the trial as a whole: the lock in force, opened, unblinded
    trial.migrate | trial.config  running the migrations; the app's settings and keys
    trial.db | trial.cache | trial.paging | trial.policy | trial.timeline | trial.validation | trial.version
                                  (trial.validation: the limits of raw input, as checks and as the
                                  annotated types the API's declared bodies are made of)
    trial.catalogue               the words for the system's keys; composed messages (Msg); languages
    trial.errors
    trial.settings                every TRIAL_* variable, declared once (pydantic-settings)

The protocol file (trial.protocol.schema), the API's request bodies and answers
(trial.api.bodies, trial.api.answers) and the settings (trial.settings) are declared once as typed
models; the protocol's JSON Schema, the OpenAPI document and README's configuration table are
generated from those declarations.

A lower layer never imports a higher one: what every layer needs of the trial as a whole lives
low, in trial.trialstate, and what every clinical domain needs of a child in trial.participants.
Siblings separated by ``|`` do not import each other.
"""
from __future__ import annotations

from trial.version import __version__  # noqa: F401


def create_app(config: dict | None = None):
    """The Flask application (trial.app.create_app). Imported when called, so that ``import
    trial.randomize.lists`` (the CLI, the benchmarks) does not load Flask and every blueprint."""
    from trial.app import create_app as factory  # deferred: the whole web stack, on a cold path
    return factory(config)


def serving_app(config: dict | None = None):
    """The app as gunicorn and `trial serve` serve it: refuses to start on an old schema or keys
    that are not the database's (trial.app.serving_app). Imported when called, like create_app."""
    from trial.app import serving_app as factory  # deferred: the whole web stack, on a cold path
    return factory(config)
