"""Which export-request statuses allow which moves, and whose move it is in each status.

Permissions (who may) live in spe.exports.permissions; this module answers whether the
request's *state* allows the change. A test proves the tables cover every status once.
"""

from __future__ import annotations

import enum

from spe.exports.errors import ExportStateError
from spe.exports.models import ExportRequest, RequestStatus

S = RequestStatus


class Owner(enum.StrEnum):
    AUTHOR = "author"  # the researcher must act
    REVIEWER = "reviewer"  # the data holder's reviewers must act
    SYSTEM = "system"  # the control plane is working on it
    NOBODY = "nobody"  # final


STATUS_OWNER: dict[RequestStatus, Owner] = {
    S.CHECKING: Owner.SYSTEM,
    S.IN_REVIEW: Owner.REVIEWER,
    S.CHANGES_REQUESTED: Owner.AUTHOR,
    S.RELEASED: Owner.AUTHOR,  # the author downloads; a reviewer may still revoke
    S.REJECTED: Owner.NOBODY,
    S.WITHDRAWN: Owner.NOBODY,
    S.REVOKED: Owner.NOBODY,
}

TRANSITIONS: dict[RequestStatus, frozenset[RequestStatus]] = {
    S.CHECKING: frozenset({S.IN_REVIEW, S.RELEASED, S.WITHDRAWN}),
    # IN_REVIEW -> CHECKING: the author accepts the server-computed safe version of a failing
    # table (actions.accept_safe_version); the changed round must be checked again before any
    # reviewer sees it, and the open round's votes stay with that round. Resubmitting outputs
    # from the outbox still waits for the reviewers (actions.resubmit asks for
    # CHANGES_REQUESTED itself).
    S.IN_REVIEW: frozenset({S.CHECKING, S.RELEASED, S.REJECTED, S.CHANGES_REQUESTED, S.WITHDRAWN}),
    S.CHANGES_REQUESTED: frozenset({S.CHECKING, S.WITHDRAWN}),
    S.RELEASED: frozenset({S.REVOKED}),
    S.REJECTED: frozenset(),
    S.WITHDRAWN: frozenset(),
    S.REVOKED: frozenset(),
}

_WHY_NOT = {
    S.CHECKING: "its files are still being checked",
    S.IN_REVIEW: "it is waiting for review",
    S.CHANGES_REQUESTED: "the reviewers asked for changes; resubmit it or withdraw it",
    S.RELEASED: "it has been released",
    S.REJECTED: "it was rejected",
    S.WITHDRAWN: "it was withdrawn",
    S.REVOKED: "its release was revoked",
}


def describe_status(request: ExportRequest) -> str:
    return _WHY_NOT[request.status]


def check_transition(request: ExportRequest, to: RequestStatus, doing: str) -> None:
    """Raise ExportStateError, saying why, unless the request may move to ``to``."""
    if to not in TRANSITIONS[request.status]:
        raise ExportStateError(
            f"Request {short_id(request)} cannot be {doing}: {_WHY_NOT[request.status]}."
        )


def is_open(request: ExportRequest) -> bool:
    return bool(TRANSITIONS[request.status])


def short_id(request: ExportRequest) -> str:
    return str(request.id)[:8]
