"""The ``dp:`` block of a dataset policy: the dataset's budget (and each project's default share),
whether DP answers may be exported without review, and the public bounds and categories DP
queries rely on, declared by the data holder and never derived from the data."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from spe.policyfile import Located, pairs, suggest

_DP_KEYS = {"epsilon_total", "epsilon_per_project", "max_epsilon_per_query", "variables", "export"}
_EXPORT_KEYS = {"auto_release"}
_BOOLS = {"true": True, "false": False}
_VAR_KEYS = {"min", "max", "categories"}


@dataclass(frozen=True)
class VariableBounds:
    """A variable's public domain: numeric bounds, or the list of its categories."""

    name: str
    lower: float | None = None
    upper: float | None = None
    categories: tuple[str, ...] = ()

    @property
    def numeric(self) -> bool:
        return self.lower is not None and self.upper is not None


@dataclass(frozen=True)
class DPPolicy:
    """``epsilon_total``: the dataset's budget, shared by every project (the holder may change it
    with ``spe dp total``); ``epsilon_per_project``: what a project is allocated when it first
    uses the dataset, at most what is unallocated (default: all of it); ``auto_release``: an
    exported DP answer leaves without reviewers."""

    epsilon_total: float
    max_epsilon_per_query: float | None = None
    variables: dict[str, VariableBounds] = field(default_factory=dict)
    epsilon_per_project: float | None = None
    auto_release: bool = True

    @property
    def project_default(self) -> float:
        """A project's first allocation (before the cap of what is unallocated)."""
        if self.epsilon_per_project is None:
            return self.epsilon_total
        return self.epsilon_per_project


def _number(loc: Located, node: yaml.Node, what: str) -> float:
    if not isinstance(node, yaml.ScalarNode):
        raise loc.fail(node, f"{what} must be a number.")
    try:
        value = float(node.value)
    except ValueError:
        raise loc.fail(node, f"{what} must be a number, not {node.value!r}.") from None
    if not math.isfinite(value):
        raise loc.fail(node, f"{what} must be a finite number.")
    return value


def _variable(loc: Located, name: str, node: yaml.Node, columns: dict[str, Any]) -> VariableBounds:
    if name not in columns:
        raise loc.fail(
            node,
            f"dp.variables names {name!r}, which is not a column of the policy"
            f"{suggest(name, columns, '.')}",
        )
    values: dict[str, yaml.Node] = {}
    for key, key_node, value_node in pairs(loc, node, f"dp.variables.{name}"):
        if key not in _VAR_KEYS:
            raise loc.fail(
                key_node,
                f"dp.variables.{name} has an unknown key {key!r}; use min and "
                f"max, or categories{suggest(key, _VAR_KEYS, '.')}",
            )
        values[key] = value_node
    if "categories" in values:
        if "min" in values or "max" in values:
            raise loc.fail(node, f"dp.variables.{name}: give min and max, or categories, not both.")
        seq = values["categories"]
        if not isinstance(seq, yaml.SequenceNode) or not seq.value:
            raise loc.fail(seq, f"dp.variables.{name}.categories must be a non-empty list.")
        cats = []
        for item in seq.value:
            if not isinstance(item, yaml.ScalarNode):
                raise loc.fail(item, f"each category of {name!r} must be a single value.")
            cats.append(str(item.value))
        if len(set(cats)) != len(cats):
            raise loc.fail(seq, f"dp.variables.{name}.categories lists a category twice.")
        return VariableBounds(name, categories=tuple(cats))
    if "min" not in values or "max" not in values:
        raise loc.fail(node, f"dp.variables.{name} needs both min and max (or categories).")
    lower = _number(loc, values["min"], f"dp.variables.{name}.min")
    upper = _number(loc, values["max"], f"dp.variables.{name}.max")
    if not lower < upper:
        raise loc.fail(values["max"], f"dp.variables.{name}: max must be greater than min.")
    return VariableBounds(name, lower=lower, upper=upper)


def parse_dp(loc: Located, node: yaml.Node, columns: dict[str, Any]) -> DPPolicy:
    """Parse a policy's ``dp:`` block; ``columns`` maps column names to their class."""
    top: dict[str, yaml.Node] = {}
    for key, key_node, value_node in pairs(loc, node, "dp"):
        if key not in _DP_KEYS:
            raise loc.fail(key_node, f"dp has an unknown key {key!r}{suggest(key, _DP_KEYS, '.')}")
        top[key] = value_node
    if "epsilon_total" not in top:
        raise loc.fail(
            node, "dp needs epsilon_total: the dataset's privacy budget, shared by all projects."
        )
    total = _number(loc, top["epsilon_total"], "dp.epsilon_total")
    if total <= 0:
        raise loc.fail(top["epsilon_total"], "dp.epsilon_total must be greater than 0.")
    per_query = None
    if "max_epsilon_per_query" in top:
        per_query = _number(loc, top["max_epsilon_per_query"], "dp.max_epsilon_per_query")
        if per_query <= 0:
            raise loc.fail(top["max_epsilon_per_query"], "dp.max_epsilon_per_query must be > 0.")
    per_project = None
    if "epsilon_per_project" in top:
        per_project = _number(loc, top["epsilon_per_project"], "dp.epsilon_per_project")
        if not 0 < per_project <= total:
            raise loc.fail(
                top["epsilon_per_project"],
                "dp.epsilon_per_project must be greater than 0 and at most dp.epsilon_total.",
            )
    auto_release = True
    if "export" in top:
        for key, key_node, value_node in pairs(loc, top["export"], "dp.export"):
            if key not in _EXPORT_KEYS:
                raise loc.fail(
                    key_node,
                    f"dp.export has an unknown key {key!r}{suggest(key, _EXPORT_KEYS, '.')}",
                )
            if not (isinstance(value_node, yaml.ScalarNode) and value_node.value in _BOOLS):
                raise loc.fail(value_node, "dp.export.auto_release must be true or false.")
            auto_release = _BOOLS[value_node.value]
    variables: dict[str, VariableBounds] = {}
    if "variables" in top:
        for name, _key_node, value_node in pairs(loc, top["variables"], "dp.variables"):
            cls = str(columns.get(name, ""))
            if cls in ("person_id", "direct_identifier"):
                raise loc.fail(
                    value_node, f"{name!r} is a {cls}; DP queries never use identifiers."
                )
            variables[name] = _variable(loc, name, value_node, columns)
    return DPPolicy(total, per_query, variables, per_project, auto_release)
