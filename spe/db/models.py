"""Every table, imported in one place so Alembic and tests see the whole schema."""

from spe.accounts.models import Organisation, RoleGrant, TermsAcceptance, User
from spe.audit.models import AuditCheckpoint, AuditEvent
from spe.db.base import Base
from spe.keys.models import WrappedKey
from spe.projects.models import Project, ProjectMember

__all__ = [
    "AuditCheckpoint",
    "AuditEvent",
    "Base",
    "Organisation",
    "Project",
    "ProjectMember",
    "RoleGrant",
    "TermsAcceptance",
    "User",
    "WrappedKey",
]
