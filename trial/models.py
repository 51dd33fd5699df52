"""Imports every package's models so the metadata (and Alembic) sees the whole schema."""
from trial.audit.models import AuditAnchor, AuditHead, AuditKeyEpoch, AuditRecord, AuditSeal  # noqa: F401
from trial.auth.models import (  # noqa: F401
    AccessReview,
    ApiToken,
    LoginAttempt,
    MfaRecoveryCode,
    PasswordReset,
    RoleAssignment,
    RoleGrant,
    User,
)
from trial.consent.models import Consent, ConsentWithdrawal, Survey, SurveyAttempt  # noqa: F401
from trial.course.models import ChildGoal, CounsellingSession, CourseTally, TherapySession  # noqa: F401
from trial.credentials.models import Credential  # noqa: F401
from trial.dataquality.models import DataQuery, QueryMessage, Verification  # noqa: F401
from trial.db import Base
from trial.esign.models import Signature  # noqa: F401
from trial.fidelity.models import FidelityDraw, FidelityRating, FidelitySample  # noqa: F401
from trial.interim.models import DataCut, DmcRecommendation, SharingBundle  # noqa: F401
from trial.lock.models import DataLock, LockBuild, LockBundle, UnblindingRequest  # noqa: F401
from trial.notify.models import MailMessage, Notification  # noqa: F401
from trial.outcomes.models import BlindingBreak, NotDone  # noqa: F401
from trial.oversight.models import ArchiveJob, CasebookSignoff  # noqa: F401
from trial.participants.models import Allocation, Assessment, Participant, Screening, SiteSequence, StatusEvent  # noqa: F401
from trial.protocol.models import ProtocolVersion  # noqa: F401
from trial.randomize.models import (  # noqa: F401
    AllocationJournalPending,
    AllocationReservation,
    RandomizationDesign,
    RandomizationError,
    SealedSeed,
    Stratum,
)
from trial.safety.models import AdverseEvent, AdverseEventFollowUp, AdverseEventReport  # noqa: F401
from trial.sites.models import Site  # noqa: F401
from trial.status.models import Deviation  # noqa: F401
from trial.trialstate.models import TrialState  # noqa: F401
from trial.visitplan.models import PlannedVisit, VisitPlanState  # noqa: F401

metadata = Base.metadata

# the casebook sign-offs' audit hook (a later change to covered data invalidates a signature):
# registered wherever the models are (the app factory and the CLI import this module)
import trial.oversight.signoff  # noqa: F401
