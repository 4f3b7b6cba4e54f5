"""Declarative analyses (plans): a closed JSON language, its validator and its one evaluator.

A plan names the project's extracts, row operations from a fixed set and one output command;
``validate`` checks it against the project's catalogue, ``evaluate`` computes its evidence rows
with DuckDB, and ``spe.analysis.outputs.compute`` turns them into the checked output.
"""

from spe.analysis.plan.catalogue import (
    Catalogue,
    ColumnInfo,
    SourceInfo,
    workspace_catalogue,
)
from spe.analysis.plan.document import PLAN_VERSION, Plan, canonical_json, plan_hash, validate
from spe.analysis.plan.errors import PlanError
from spe.analysis.plan.evaluate import Evidence, evaluate
from spe.analysis.plan.record import PLAN_SUFFIX, record_plan

__all__ = [
    "PLAN_SUFFIX",
    "PLAN_VERSION",
    "Catalogue",
    "ColumnInfo",
    "Evidence",
    "Plan",
    "PlanError",
    "SourceInfo",
    "canonical_json",
    "evaluate",
    "plan_hash",
    "record_plan",
    "validate",
    "workspace_catalogue",
]
