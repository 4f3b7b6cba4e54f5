"""The analysis library researchers import in a workspace, and the replay the export review runs.

``load`` reads a project extract and remembers its person column; ``crosstab``, ``pivot_table``,
``describe``, ``hist``, ``ols``, ``logit``, ``probit`` and ``survival`` return an ``Output`` (the
pandas result, its disclosure report and verdict) and record it in the outbox with its evidence.
``spe.analysis.replay.check_output`` recomputes a recorded output on the server.
"""

from spe.analysis.data import available_datasets, load, use
from spe.analysis.errors import AnalysisError, OutputSpecError
from spe.analysis.helpers import (
    crosstab,
    describe,
    hist,
    logit,
    ols,
    pivot_table,
    probit,
    survival,
)
from spe.analysis.output import Output
from spe.analysis.recording import outbox
from spe.analysis.replay import OutputCheck, check_output, check_plain_file

__all__ = [
    "AnalysisError",
    "Output",
    "OutputCheck",
    "OutputSpecError",
    "available_datasets",
    "check_output",
    "check_plain_file",
    "crosstab",
    "describe",
    "hist",
    "load",
    "logit",
    "ols",
    "outbox",
    "pivot_table",
    "probit",
    "survival",
    "use",
]

# Plans: the declarative analyses the server recomputes itself (spe.analysis.plan).
from spe.analysis.plan.builder import (
    Frame,
    coalesce,
    col,
    cum_sum,
    diff,
    lag,
    lead,
    lit,
    scan,
    when,
)

__all__ += ["Frame", "coalesce", "col", "cum_sum", "diff", "lag", "lead", "lit", "scan", "when"]
