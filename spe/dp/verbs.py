"""The airlock's DP verbs: a query, the project's budgets, and which datasets are aggregate-only.

The workspace (and so the user and project) comes from the socket the request arrived on.
"""

from __future__ import annotations

from typing import Any

from spe.dp.errors import DPError
from spe.workspaces.registry import RunningWorkspace


def dp_query(ws: RunningWorkspace, request: dict[str, Any]) -> dict[str, Any]:
    from spe.dp.service import ask

    spec = {k: v for k, v in request.items() if k != "op"}
    return {"ok": True, **ask(ws.username, ws.project, spec)}


def dp_budget(ws: RunningWorkspace, _request: dict[str, Any]) -> dict[str, Any]:
    from spe.accounts.service import get_user
    from spe.db import readonly
    from spe.dp.service import budgets

    with readonly() as session:
        return {"ok": True, "budgets": budgets(session, get_user(session, ws.username), ws.project)}


def dp_datasets(ws: RunningWorkspace, _request: dict[str, Any]) -> dict[str, Any]:
    from spe.db import readonly
    from spe.dp.service import _project, aggregate_only_datasets

    with readonly() as session:
        return {
            "ok": True,
            "datasets": aggregate_only_datasets(session, _project(session, ws.project)),
        }


def dp_variables(ws: RunningWorkspace, request: dict[str, Any]) -> dict[str, Any]:
    from spe.accounts.service import get_user
    from spe.db import readonly
    from spe.dp.service import variables

    dataset = request.get("dataset")
    if not isinstance(dataset, str) or not dataset:
        raise DPError("Name the dataset whose variables you want to see.")
    with readonly() as session:
        user = get_user(session, ws.username)
        return {"ok": True, **variables(session, user, ws.project, dataset)}


def refuse_rows_load(ws: RunningWorkspace, dataset: str) -> None:
    """Raise WrongAccessPath when a workspace records a rows load of an aggregate-only dataset."""
    from spe.db import readonly
    from spe.dp.service import refuse_rows_read

    with readonly() as session:
        refuse_rows_read(session, ws.project, dataset)


VERBS = {
    "dp": dp_query,
    "dp_budget": dp_budget,
    "dp_datasets": dp_datasets,
    "dp_variables": dp_variables,
}
