"""Which project statuses allow which changes, and who owns a project in each status.

Permissions (who may) live in spe.accounts.permissions; this module answers whether the
project's *state* allows the change. A test proves the tables cover every status.
"""

from __future__ import annotations

import datetime as dt
import enum

from spe.errors import SPEError
from spe.projects.models import Project, ProjectStatus


class ProjectStateError(SPEError):
    pass


class Owner(enum.StrEnum):
    APPLICANT = "applicant"  # the researcher who applied waits; the holder must act
    HOLDER = "holder"
    NOBODY = "nobody"


# Whose move it is in each status.
STATUS_OWNER: dict[ProjectStatus, Owner] = {
    ProjectStatus.PENDING: Owner.HOLDER,
    ProjectStatus.APPROVED: Owner.APPLICANT,
    ProjectStatus.CLOSED: Owner.NOBODY,
}

# The statuses a project may move to from each status.
TRANSITIONS: dict[ProjectStatus, frozenset[ProjectStatus]] = {
    ProjectStatus.PENDING: frozenset({ProjectStatus.APPROVED, ProjectStatus.CLOSED}),
    ProjectStatus.APPROVED: frozenset({ProjectStatus.CLOSED}),
    ProjectStatus.CLOSED: frozenset(),
}


def check_transition(project: Project, to: ProjectStatus) -> None:
    if to not in TRANSITIONS[project.status]:
        raise ProjectStateError(
            f"Project {project.slug} is {project.status.value} and cannot become {to.value}."
        )


def check_members_can_change(project: Project) -> None:
    if project.status == ProjectStatus.CLOSED:
        raise ProjectStateError(f"Project {project.slug} is closed; its members cannot change.")


def is_open_for_work(project: Project, today: dt.date | None = None) -> bool:
    today = today or dt.datetime.now(dt.UTC).date()
    return (
        project.status == ProjectStatus.APPROVED and project.start_date <= today <= project.end_date
    )
