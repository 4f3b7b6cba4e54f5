"""Every table, imported in one place so Alembic and tests see the whole schema."""

from spe.accounts.models import ApiToken, Organisation, RoleGrant, TermsAcceptance, User
from spe.audit.models import AuditCheckpoint, AuditEvent
from spe.catalogue.models import Dataset, DatasetVersion, Variable
from spe.db.base import Base
from spe.dp.models import DPBudget, DPQuery
from spe.exports.models import (
    ExportFile,
    ExportOutput,
    ExportRequest,
    ReleasedCells,
    ReviewComment,
    ReviewVote,
)
from spe.jobs.models import Job
from spe.keys.models import WrappedKey
from spe.projects.models import (
    Project,
    ProjectExtract,
    ProjectGrant,
    ProjectMember,
    ProjectMemberRequest,
)
from spe.sdc.audit.models import SDCHistorySnapshot, SDCRelease, SDCReleaseCells
from spe.workspaces.models import Workspace
from spe.workspaces.quota import QuotaWindow

__all__ = [
    "ApiToken",
    "AuditCheckpoint",
    "AuditEvent",
    "Base",
    "DPBudget",
    "DPQuery",
    "Dataset",
    "DatasetVersion",
    "ExportFile",
    "ExportOutput",
    "ExportRequest",
    "Job",
    "Organisation",
    "Project",
    "ProjectExtract",
    "ProjectGrant",
    "ProjectMember",
    "ProjectMemberRequest",
    "QuotaWindow",
    "ReleasedCells",
    "ReviewComment",
    "ReviewVote",
    "RoleGrant",
    "SDCHistorySnapshot",
    "SDCRelease",
    "SDCReleaseCells",
    "TermsAcceptance",
    "User",
    "Variable",
    "Workspace",
    "WrappedKey",
]
