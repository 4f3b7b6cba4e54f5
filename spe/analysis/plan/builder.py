"""The researcher's fluent API: ``sa.scan("income").filter(...).crosstab(...)`` builds a plan.

Every call only adds to the plan document; an output method validates it against the
workspace's catalogue, evaluates it with the same evaluator the server uses, checks it with the
workspace's rules and records the plan (``NAME.plan.json``) for export.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spe.analysis.errors import AnalysisError
from spe.analysis.output import Output
from spe.analysis.plan.catalogue import Catalogue, workspace_catalogue
from spe.analysis.plan.document import PLAN_VERSION, validate, validate_frame
from spe.analysis.plan.errors import PlanError
from spe.analysis.plan.evaluate import evaluate, evaluate_frame
from spe.analysis.plan.record import PLAN_SUFFIX, record_plan

PLAN_NOTE = "computed by the plan evaluator; the server recomputes it on export"
Columns = str | Sequence[str]


# -- expressions ----------------------------------------------------------------------------
def _node(value: Any) -> dict[str, Any]:
    """A builder value as an expression node: Expr as is, Python and numpy scalars as literals."""
    if isinstance(value, Expr):
        return value.node
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return {"lit": value}
    if isinstance(value, numbers.Real):
        return {"lit": float(value)}
    raise PlanError(
        f"{type(value).__name__} cannot go into a plan; use sa.col('name'), numbers, true/false "
        "or a declared category."
    )


def _fn(name: str, *args: Any, **extra: Any) -> Expr:
    return Expr({"fn": name, "args": [_node(a) for a in args], **extra})


class Expr:
    """An expression of the plan language; Python's operators build it, nothing runs."""

    __hash__ = None  # type: ignore[assignment]  # == builds an expression, so no hashing

    def __init__(self, node: dict[str, Any]) -> None:
        self.node = node

    def __repr__(self) -> str:
        return f"Expr({self.node!r})"

    def __bool__(self) -> bool:
        raise PlanError(
            "A plan expression has no truth value in Python; combine conditions with &, | and ~ "
            "(not and, or, not) and compare ranges with .between(a, b)."
        )

    # arithmetic
    def __add__(self, other: Any) -> Expr:
        return _fn("add", self, other)

    def __radd__(self, other: Any) -> Expr:
        return _fn("add", other, self)

    def __sub__(self, other: Any) -> Expr:
        return _fn("sub", self, other)

    def __rsub__(self, other: Any) -> Expr:
        return _fn("sub", other, self)

    def __mul__(self, other: Any) -> Expr:
        return _fn("mul", self, other)

    def __rmul__(self, other: Any) -> Expr:
        return _fn("mul", other, self)

    def __truediv__(self, other: Any) -> Expr:
        return _fn("div", self, other)

    def __rtruediv__(self, other: Any) -> Expr:
        return _fn("div", other, self)

    def __neg__(self) -> Expr:
        return _fn("neg", self)

    # comparisons
    def __eq__(self, other: Any) -> Expr:  # type: ignore[override]
        return _fn("eq", self, other)

    def __ne__(self, other: Any) -> Expr:  # type: ignore[override]
        return _fn("ne", self, other)

    def __lt__(self, other: Any) -> Expr:
        return _fn("lt", self, other)

    def __le__(self, other: Any) -> Expr:
        return _fn("le", self, other)

    def __gt__(self, other: Any) -> Expr:
        return _fn("gt", self, other)

    def __ge__(self, other: Any) -> Expr:
        return _fn("ge", self, other)

    # conditions
    def __and__(self, other: Any) -> Expr:
        return _fn("and", self, other)

    def __rand__(self, other: Any) -> Expr:
        return _fn("and", other, self)

    def __or__(self, other: Any) -> Expr:
        return _fn("or", self, other)

    def __ror__(self, other: Any) -> Expr:
        return _fn("or", other, self)

    def __invert__(self) -> Expr:
        return _fn("not", self)

    def is_in(self, values: Sequence[Any]) -> Expr:
        if isinstance(values, str):
            values = [values]
        return Expr(
            {"fn": "is_in", "args": [self.node, {"values": [_node(v)["lit"] for v in values]}]}
        )

    def between(self, lower: Any, upper: Any) -> Expr:
        """lower <= self <= upper (both ends included)."""
        return _fn("between", self, lower, upper)

    def is_null(self) -> Expr:
        return _fn("is_null", self)

    # functions
    def abs(self) -> Expr:
        return _fn("abs", self)

    def log(self) -> Expr:
        """The natural logarithm; null for zero and negative values."""
        return _fn("log", self)

    def exp(self) -> Expr:
        return _fn("exp", self)

    def sqrt(self) -> Expr:
        """The square root; null for negative values."""
        return _fn("sqrt", self)

    def round(self, ndigits: int = 0) -> Expr:
        return _fn("round", self, ndigits)

    def clip(self, lower: float, upper: float) -> Expr:
        return _fn("clip", self, lower, upper)

    def cast(self, to: str) -> Expr:
        """'int' (towards zero) or 'float'."""
        return _fn("cast", self, to=to)

    def year(self) -> Expr:
        return _fn("year", self)

    def month(self) -> Expr:
        return _fn("month", self)

    def bin(self, width: float | None = None, edges: Sequence[float] | None = None) -> Expr:
        """Cut into grid bins: ``width`` (1, 2 or 5 times a power of ten) or ``edges`` on the
        grid; labels '[a, b)'. Values outside the edges are left out of tables."""
        if (width is None) == (edges is None):
            raise PlanError("Give bin either width=... or edges=[...].")
        if width is not None:
            return Expr({"bin": self.node, "width": _node(width)["lit"]})
        return Expr({"bin": self.node, "edges": [_node(e)["lit"] for e in edges or ()]})


def col(name: str) -> Expr:
    """The column ``name`` of the frame."""
    return Expr({"col": name})


def lit(value: Any) -> Expr:
    """A literal number, true/false, null, or a declared category."""
    return Expr(_node(value))


def coalesce(*values: Any) -> Expr:
    """The first of ``values`` that is not null."""
    return _fn("coalesce", *values)


class When:
    """``sa.when(cond).then(value)``: a branch of a case expression waiting for its value."""

    def __init__(self, branches: list[list[dict[str, Any]]], condition: Any) -> None:
        self._branches = branches
        self._condition = _node(condition)

    def then(self, value: Any) -> Then:
        return Then([*self._branches, [self._condition, _node(value)]])


class Then:
    """A case expression with its branches so far: add ``.when(...)`` or finish ``.otherwise``."""

    def __init__(self, branches: list[list[dict[str, Any]]]) -> None:
        self._branches = branches

    def when(self, condition: Any) -> When:
        return When(self._branches, condition)

    def otherwise(self, value: Any) -> Expr:
        return Expr({"case": self._branches, "otherwise": _node(value)})


def when(condition: Any) -> When:
    """``sa.when(c1).then(v1).when(c2).then(v2).otherwise(v)``: the first true branch's value."""
    return When([], condition)


@dataclasses.dataclass(frozen=True)
class WindowFn:
    """One within-person window column: lag, lead, diff or cum_sum of a column."""

    fn: str
    of: str
    n: int | None

    def node(self) -> dict[str, Any]:
        out: dict[str, Any] = {"fn": self.fn, "of": self.of}
        if self.n is not None:
            out["n"] = self.n
        return out


def lag(of: str, n: int = 1) -> WindowFn:
    """The value ``n`` rows earlier in the person's time order (null for the first rows)."""
    return WindowFn("lag", of, n)


def lead(of: str, n: int = 1) -> WindowFn:
    """The value ``n`` rows later in the person's time order."""
    return WindowFn("lead", of, n)


def diff(of: str, n: int = 1) -> WindowFn:
    """The value minus the one ``n`` rows earlier."""
    return WindowFn("diff", of, n)


def cum_sum(of: str) -> WindowFn:
    """The running total up to this row (nulls add nothing)."""
    return WindowFn("cum_sum", of, None)


# -- frames ---------------------------------------------------------------------------------
def _names(value: Columns | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def scan(dataset: str, columns: Sequence[str] | None = None) -> Frame:
    """The project's extract of ``dataset`` (its person column always included)."""
    catalogue = workspace_catalogue()
    source = catalogue.sources.get(dataset)
    if source is None:
        known = ", ".join(sorted(catalogue.sources)) or "none"
        raise PlanError(
            f"There is no dataset {dataset!r} in this workspace; the datasets: {known}."
        )
    node = {
        "op": "scan",
        "dataset": dataset,
        "version": source.version,
        "columns": list(columns) if columns is not None else None,
    }
    return Frame(node)


class Frame:
    """A plan's frame: each method returns a new frame; outputs evaluate it."""

    def __init__(self, node: dict[str, Any]) -> None:
        self.node = node

    def __repr__(self) -> str:
        return f"Frame({self.node['op']}; .preview() shows the first rows)"

    # -- row operations ------------------------------------------------------------------------
    def filter(self, condition: Expr) -> Frame:
        return Frame({"op": "filter", "input": self.node, "where": _node(condition)})

    def derive(self, **columns: Any) -> Frame:
        """New or replaced columns: ``.derive(age=2022 - sa.col("birth_date").year())``."""
        if not columns:
            raise PlanError("derive needs at least one column: derive(name=expression).")
        return Frame(
            {
                "op": "derive",
                "input": self.node,
                "columns": {k: _node(v) for k, v in columns.items()},
            }
        )

    with_columns = derive

    def select(self, *columns: str | Sequence[str]) -> Frame:
        names: list[str] = []
        for c in columns:
            names += _names(c)
        return Frame({"op": "select", "input": self.node, "columns": names})

    def join(self, other: Frame, how: str = "inner") -> Frame:
        """Rows of both frames joined on the person pseudonym ('inner' or 'left')."""
        if not isinstance(other, Frame):
            raise PlanError("join takes another plan frame, such as sa.scan('population').")
        return Frame({"op": "join", "left": self.node, "right": other.node, "how": how})

    def window(self, order_by: str, **columns: WindowFn) -> Frame:
        """Within each person in ``order_by`` order: ``.window("year", prev=sa.lag("wage"))``."""
        for name, fn in columns.items():
            if not isinstance(fn, WindowFn):
                raise PlanError(f"{name}= must be sa.lag, sa.lead, sa.diff or sa.cum_sum.")
        return Frame(
            {
                "op": "window",
                "input": self.node,
                "order_by": order_by,
                "columns": {k: v.node() for k, v in columns.items()},
            }
        )

    def quantile_group(
        self, name: str, of: str, groups: int, within: Columns | None = None
    ) -> Frame:
        """Rank-based groups 1..groups of ``of`` (10 for deciles), within each ``within`` group."""
        return Frame(
            {
                "op": "quantile_group",
                "input": self.node,
                "name": name,
                "of": of,
                "groups": groups,
                "within": _names(within),
            }
        )

    # -- looking at it -------------------------------------------------------------------------
    def plan(self, output: dict[str, Any] | None = None) -> dict[str, Any]:
        """The plan document of this frame (with ``output`` when given)."""
        document: dict[str, Any] = {
            "spe_plan": PLAN_VERSION,
            "project": workspace_catalogue().project,
            "frame": self.node,
        }
        if output is not None:
            document["output"] = output
        return document

    def preview(self, n: int = 10) -> pd.DataFrame:
        """The first ``n`` rows, evaluated here (for looking only: what leaves is an output)."""
        catalogue = workspace_catalogue()
        checked = validate_frame(self.node, catalogue)
        return evaluate_frame(checked, catalogue, limit=int(n))

    # -- outputs -------------------------------------------------------------------------------
    def crosstab(
        self,
        index: Columns,
        columns: Columns,
        values: str | None = None,
        agg: str = "count",
        *,
        safe: str | None = None,
        name: str | None = None,
        record: bool = True,
    ) -> PlanOutput:
        """A frequency table (or ``agg`` of ``values``) of ``index`` by ``columns``."""
        return self._output(
            {
                "command": "crosstab",
                "index": _names(index),
                "columns": _names(columns),
                "values": values,
                "agg": agg,
                "safe": safe,
            },
            name,
            record,
        )

    def pivot_table(
        self,
        values: str,
        index: Columns,
        columns: Columns,
        agg: str = "mean",
        *,
        safe: str | None = None,
        name: str | None = None,
        record: bool = True,
    ) -> PlanOutput:
        return self._output(
            {
                "command": "pivot_table",
                "index": _names(index),
                "columns": _names(columns),
                "values": values,
                "agg": agg,
                "safe": safe,
            },
            name,
            record,
        )

    def hist(
        self,
        column: str,
        *,
        width: float | None = None,
        edges: Sequence[float] | None = None,
        by: Columns | None = None,
        safe: str | None = None,
        name: str | None = None,
        record: bool = True,
    ) -> PlanOutput:
        """Counts per grid bin of ``column`` (``width`` or ``edges``; the last bin closed)."""
        if (width is None) == (edges is None):
            raise PlanError("Give hist either width=... or edges=[...].")
        out: dict[str, Any] = {"command": "hist", "column": column, "by": _names(by), "safe": safe}
        if width is not None:
            out["width"] = _node(width)["lit"]
        else:
            out["edges"] = [_node(e)["lit"] for e in edges or ()]
        return self._output(out, name, record)

    def describe(
        self,
        columns: Columns,
        by: Columns | None = None,
        *,
        safe: str | None = None,
        name: str | None = None,
        record: bool = True,
    ) -> PlanOutput:
        out = {"command": "describe", "columns": _names(columns), "by": _names(by), "safe": safe}
        return self._output(out, name, record)

    def ols(self, formula: str, *, name: str | None = None, record: bool = True) -> PlanOutput:
        return self._output({"command": "ols", "formula": formula}, name, record)

    def logit(self, formula: str, *, name: str | None = None, record: bool = True) -> PlanOutput:
        return self._output({"command": "logit", "formula": formula}, name, record)

    def probit(self, formula: str, *, name: str | None = None, record: bool = True) -> PlanOutput:
        return self._output({"command": "probit", "formula": formula}, name, record)

    def survival(
        self,
        duration: str,
        event: str,
        edges: Sequence[float],
        by: Columns | None = None,
        *,
        name: str | None = None,
        record: bool = True,
    ) -> PlanOutput:
        """A Kaplan-Meier life table by the intervals ``edges`` (on the grid)."""
        out = {
            "command": "survival",
            "duration": duration,
            "event": event,
            "by": _names(by),
            "edges": [_node(e)["lit"] for e in edges],
        }
        return self._output(out, name, record)

    def _output(self, output: dict[str, Any], name: str | None, record: bool) -> PlanOutput:
        catalogue = workspace_catalogue()
        document = {
            "spe_plan": PLAN_VERSION,
            "project": catalogue.project,
            "frame": self.node,
            "output": output,
        }
        out = run_plan(document, catalogue)
        if record:
            out.record(name)
        elif name is not None:
            out.name = name
        return out


# -- the output -----------------------------------------------------------------------------
class PlanOutput(Output):
    """An Output computed from a plan; recording it writes the plan, which the server re-runs."""

    def __init__(self, *args: Any, document: dict[str, Any], sha256: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.document = document
        self.plan_hash = sha256

    def _headline(self) -> str:
        text = super()._headline()
        suffix = " - advisory; the export review checks again"
        if text.endswith(suffix):
            text = text[: -len(suffix)]
        return f"{text} - {PLAN_NOTE}"

    @property
    def report(self) -> dict[str, Any]:
        report = dict(super().report)
        report["computed_by"] = "plan"
        report["plan_sha256"] = self.plan_hash
        report["advisory"] = f"Checked in the workspace with its rules; {PLAN_NOTE}."
        return report

    def record(self, name: str | None = None) -> PlanOutput:
        """Write the plan to the outbox as ``NAME.plan.json``; returns self."""
        from spe.analysis.recording import default_name

        chosen = name if name is not None else self.name or default_name(self.command)
        self.path = record_plan(chosen, self.document)
        self.name = chosen
        return self

    @property
    def sidecar_path(self) -> Path | None:
        return self.path

    def safe(
        self, method: str = "suppress", *, record: bool | None = None, name: str | None = None
    ) -> PlanOutput:
        """The same plan with a safe version asked for (suppression or rounding)."""
        if self.kind != "table":
            raise AnalysisError(
                "There is no automatic safe version of a model or life table: use more data, "
                "fewer parameters or wider intervals."
            )
        if self.passed:
            return self
        output = {**self.document["output"], "safe": method}
        out = run_plan({**self.document, "output": output}, workspace_catalogue())
        if record is None:
            record = self.path is not None
        if record:
            out.record(name or (f"{self.name}-safe" if self.name else None))
        return out


def run_plan(document: dict[str, Any], catalogue: Catalogue) -> PlanOutput:
    """Validate, evaluate and check ``document`` in the workspace (not recorded)."""
    import pyarrow as pa

    from spe.analysis.data import workspace_rules
    from spe.analysis.outputs import compute

    plan = validate(document, catalogue)
    evidence = evaluate(plan, catalogue)
    computed = compute(
        evidence.command, evidence.frame, evidence.spec, workspace_rules(evidence.datasets)
    )
    withheld = computed.withheld_of_plan()
    table = pa.Table.from_pandas(evidence.frame, preserve_index=False)
    return PlanOutput(
        computed,
        table,
        evidence.datasets,
        [f"This output was {PLAN_NOTE}."],
        withheld,
        document=document,
        sha256=plan.sha256,
    )


__all__ = [
    "PLAN_SUFFIX",
    "Expr",
    "Frame",
    "PlanOutput",
    "coalesce",
    "col",
    "cum_sum",
    "diff",
    "lag",
    "lead",
    "lit",
    "run_plan",
    "scan",
    "when",
]
