"""The exception family of differentially private queries and budgets.

Every message is one sentence saying what is wrong and what to do instead.
"""

from __future__ import annotations

from spe.errors import SPEError


class DPError(SPEError):
    """A differentially private query or budget action that cannot go ahead."""


class DPPolicyError(DPError):
    """A dataset policy does not declare what a DP query needs (bounds, categories, budget)."""


class BudgetExhausted(DPError):
    """The query's epsilon is more than the project has left for the dataset."""

    exit_code = 9


class WrongAccessPath(DPError):
    """A DP query on a rows dataset, or a rows read of an aggregate-only one."""
