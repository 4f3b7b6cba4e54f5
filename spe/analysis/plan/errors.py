"""The plan exception: a plan document that cannot be accepted or evaluated.

Each message is one sentence naming the problem and what to do about it.
"""

from __future__ import annotations

from spe.analysis.errors import AnalysisError


class PlanError(AnalysisError):
    """A plan is refused or cannot be evaluated; ``.message`` says why and what to change."""
