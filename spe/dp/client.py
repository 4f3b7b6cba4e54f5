"""The notebook side of DP queries: build the request, send it through the airlock, show the
answer. Runs in every kernel, so it imports only the standard library (pandas for ``.table()``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TIMEOUT_SECONDS = 300.0  # a model over millions of rows may take a while on the worker


class DPQueryError(RuntimeError):
    """The query was refused or could not be answered; the message says why and what to do."""


def call(
    request: dict[str, Any], path: Path | None = None, timeout: float = TIMEOUT_SECONDS
) -> dict[str, Any]:
    """Send one request to the airlock and return its answer; DPQueryError unless it is ok.

    The workspace's one airlock client carries it: a unix socket on one machine, TCP with the
    pod's token on Kubernetes."""
    from spe.workspaces.client import AirlockUnavailable
    from spe.workspaces.client import call as airlock_call

    try:
        return airlock_call(request, path, timeout=timeout)
    except AirlockUnavailable as exc:
        raise DPQueryError(str(exc)) from None


def _where(where: Mapping[str, Any] | Sequence[Any] | None) -> list[list[Any]]:
    """{'sex': 'F', 'county': ['03', '46'], 'age': ('>=', 18)} -> [[column, op, value], ...]."""
    if where is None:
        return []
    if isinstance(where, Mapping):
        out = []
        for column, cond in where.items():
            if isinstance(cond, tuple) and len(cond) == 2 and isinstance(cond[0], str):
                out.append([column, cond[0], cond[1]])
            elif isinstance(cond, list | set | frozenset):
                out.append([column, "in", sorted(cond) if isinstance(cond, set) else list(cond)])
            else:
                out.append([column, "==", cond])
        return out
    return [list(item) for item in where]


def _by(by: str | Sequence[str] | None) -> list[str]:
    if by is None:
        return []
    return [by] if isinstance(by, str) else list(by)


class DPResult:
    """A differentially private answer: values per cell, the epsilon it spent, its mechanism,
    noise scale and (where defined) 95 % intervals, and the budget that remains."""

    def __init__(self, answer: Mapping[str, Any]) -> None:
        self.raw = dict(answer)
        self.kind: str = answer["kind"]
        self.dataset: str = answer.get("dataset", "")
        self.epsilon: float = answer["epsilon"]
        self.mechanism: str = answer["mechanism"]
        self.noise_scale = answer.get("noise_scale")
        self.sensitivity = answer.get("sensitivity")
        self.by: list[str] = list(answer.get("by") or [])
        self.labels: list[list[Any]] = answer.get("labels") or [[]]
        self.values: list[Any] = list(answer["values"])
        self.interval95 = answer.get("interval95")
        self.remaining: float | None = answer.get("remaining")
        self.notes: list[str] = list(answer.get("notes") or [])

    @property
    def value(self) -> Any:
        """The single value of a query without group-by."""
        if len(self.values) != 1:
            raise DPQueryError("This answer has several cells; use .values or .table().")
        return self.values[0]

    def table(self) -> Any:
        """The answer as a pandas DataFrame (one row per cell)."""
        import pandas as pd

        rows = []
        for i, value in enumerate(self.values):
            row = dict(zip(self.by, self.labels[i] if self.labels else [], strict=False))
            row["value"] = value
            if self.interval95:
                row["low95"], row["high95"] = self.interval95[i]
            rows.append(row)
        return pd.DataFrame(rows)

    def _header(self) -> str:
        scale = self.noise_scale
        if isinstance(scale, dict):
            scale_text = ", ".join(f"{k} {v:.4g}" for k, v in scale.items())
        else:
            scale_text = "n/a" if scale is None else f"{scale:.4g}"
        return (
            f"DP {self.kind} of {self.dataset!r}: epsilon {self.epsilon:g} spent, mechanism "
            f"{self.mechanism}, noise scale {scale_text}; budget remaining "
            f"{self.remaining if self.remaining is not None else '?'}"
        )

    def __repr__(self) -> str:
        lines = [self._header()]
        for i, value in enumerate(self.values[:50]):
            label = ", ".join(f"{b}={v}" for b, v in zip(self.by, self.labels[i], strict=False))
            interval = ""
            if self.interval95:
                lo, hi = self.interval95[i]
                interval = f"  (95 %: {lo:.6g} .. {hi:.6g})"
            lines.append(f"  {label or 'all'}: {value:.6g}{interval}")
        if len(self.values) > 50:
            lines.append(f"  ... {len(self.values) - 50} more cells: use .table()")
        return "\n".join(lines)

    def save(self, name: str) -> Path:
        """Write ``<outbox>/<name>.dp.json``, naming this answer's query in the ledger: exported,
        the server releases the answer it recorded (the noisy figures, never a copy from here)."""
        return save(self, name)

    def _repr_html_(self) -> str:
        import html

        return f"<p>{html.escape(self._header())}</p>" + self.table().to_html(index=False)


def save(answer: DPResult, name: str) -> Path:
    """Write ``<outbox>/<name>.dp.json`` = {"spe_dp_answer": 1, "query": "<query id>"}, atomically,
    for an export request; returns the file's path."""
    import json
    import os

    from spe.analysis.data import check_safe_name
    from spe.analysis.errors import AnalysisError
    from spe.analysis.recording import _temporary, _write_durably, outbox_dir

    query_id = answer.raw.get("query") if isinstance(answer, DPResult) else None
    if not isinstance(query_id, str) or not query_id:
        raise DPQueryError(
            "Save an answer that spe.dp returned (it names its query in the ledger)."
        )
    try:
        base = check_safe_name(name, "name")
        folder = outbox_dir()
    except AnalysisError as exc:
        raise DPQueryError(str(exc)) from None
    final = f"{base.removesuffix('.dp.json')}.dp.json"
    data = json.dumps({"spe_dp_answer": 1, "query": query_id}, sort_keys=True).encode()
    temporary = _temporary(folder, final)
    try:
        _write_durably(temporary, data)
        os.replace(temporary, folder / final)
    finally:
        temporary.unlink(missing_ok=True)
    return folder / final


def query(kind: str, dataset: str, epsilon: float, **spec: Any) -> DPResult:
    """Send one DP query; the answer comes back at once (no review) with the epsilon spent."""
    request = {"op": "dp", "kind": kind, "dataset": dataset, "epsilon": epsilon, **spec}
    try:
        return DPResult(call(request))
    except DPQueryError as exc:
        raise DPQueryError(str(exc)) from None  # one sentence, no airlock traceback


def count(dataset: str, *, where: Any = None, by: Any = None, epsilon: float = 0.1) -> DPResult:
    """The number of persons (per category of ``by``), with geometric noise."""
    return query("count", dataset, epsilon, where=_where(where), by=_by(by))


def sum(
    dataset: str, column: str, *, where: Any = None, by: Any = None, epsilon: float = 0.1
) -> DPResult:
    return query("sum", dataset, epsilon, column=column, where=_where(where), by=_by(by))


def mean(
    dataset: str, column: str, *, where: Any = None, by: Any = None, epsilon: float = 0.1
) -> DPResult:
    return query("mean", dataset, epsilon, column=column, where=_where(where), by=_by(by))


def var(
    dataset: str, column: str, *, where: Any = None, by: Any = None, epsilon: float = 0.1
) -> DPResult:
    return query("var", dataset, epsilon, column=column, where=_where(where), by=_by(by))


def quantile(
    dataset: str,
    column: str,
    q: float,
    *,
    where: Any = None,
    by: Any = None,
    epsilon: float = 0.1,
) -> DPResult:
    return query(
        "quantile", dataset, epsilon, column=column, quantile=q, where=_where(where), by=_by(by)
    )


def median(
    dataset: str, column: str, *, where: Any = None, by: Any = None, epsilon: float = 0.1
) -> DPResult:
    return query("median", dataset, epsilon, column=column, where=_where(where), by=_by(by))


def histogram(
    dataset: str, column: str, *, bins: int = 10, where: Any = None, epsilon: float = 0.1
) -> DPResult:
    return query("histogram", dataset, epsilon, column=column, bins=bins, where=_where(where))


def crosstab(
    dataset: str, rows: str, columns: str, *, where: Any = None, epsilon: float = 0.1
) -> DPResult:
    return query("crosstab", dataset, epsilon, by=[rows, columns], where=_where(where))


def linear_regression(
    dataset: str, target: str, features: Sequence[str], *, where: Any = None, epsilon: float = 0.5
) -> DPResult:
    return query(
        "linear_regression",
        dataset,
        epsilon,
        target=target,
        features=list(features),
        where=_where(where),
    )


def logistic_regression(
    dataset: str, target: str, features: Sequence[str], *, where: Any = None, epsilon: float = 0.5
) -> DPResult:
    return query(
        "logistic_regression",
        dataset,
        epsilon,
        target=target,
        features=list(features),
        where=_where(where),
    )


def budget() -> list[dict[str, Any]]:
    """This project's privacy budgets: per aggregate-only dataset, total, spent and remaining."""
    return list(call({"op": "dp_budget"})["budgets"])


def variables(dataset: str) -> Any:
    """The dataset's granted variables with their public bounds or categories (what ``by=``,
    ``column=`` and ``features=`` may use), as a pandas DataFrame; its caps in ``.attrs``."""
    import pandas as pd

    answer = call({"op": "dp_variables", "dataset": dataset})
    frame = pd.DataFrame(answer["variables"])
    frame.attrs["epsilon_total"] = answer["epsilon_total"]
    frame.attrs["max_epsilon_per_query"] = answer["max_epsilon_per_query"]
    return frame


def aggregate_only_datasets() -> list[str]:
    """The project's datasets queried only through spe.dp (none outside a workspace)."""
    from spe.config import get_settings
    from spe.workspaces.client import socket_path

    if not socket_path().parent.is_dir() and not get_settings().workspace_airlock_url:
        return []  # not in a workspace: no airlock to ask
    try:
        return list(call({"op": "dp_datasets"}, timeout=10.0)["datasets"])
    except DPQueryError:
        return []
