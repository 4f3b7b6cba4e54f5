"""Issuing a workspace's pod-bound airlock token (audited) and the Secret that carries it.

The token names the workspace, its pod, project, user and namespace; the TCP airlock accepts it
only from that pod's address with matching labels (spe.workspaces.airlock_tcp).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from spe.audit import record, state_change
from spe.keys.workspace_tokens import ensure_workspace_token_key, issue_token
from spe.workspaces import kube_objects, layout


@state_change("workspace.token_issue")
def issue_workspace_token(
    session: Session,
    project: str,
    username: str,
    *,
    namespace: str,
    lifetime_seconds: int,
    role: str = "workspace",
    now: float | None = None,
) -> tuple[str, dict[str, Any]]:
    """A token for the (project, user) workspace's pod, held by ``role`` (the workspace
    container or the recorder sidecar); the event holds its claims, not it."""
    workspace = layout.workspace_id(project, username)
    if ensure_workspace_token_key(session):
        record(session, "system:k8s", "key.create", "key:workspace-token", {})
    token, claims = issue_token(
        session,
        workspace=workspace,
        pod=kube_objects.pod_name(project, username),
        project=project,
        user=username,
        namespace=namespace,
        lifetime_seconds=lifetime_seconds,
        role=role,
        now=now,
    )
    record(
        session,
        "system:k8s",
        "workspace.token_issue",
        f"workspace:{workspace}",
        {k: claims[k] for k in ("pod", "ns", "role", "iat", "exp", "jti")},
        project=project,
    )
    return token, claims
