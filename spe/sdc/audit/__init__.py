"""The cumulative disclosure audit: every released cell of a data holder, from any project, as a
linear statistic over a holder-wide person space, and the audit of a new output against them.

Public entry points: ``NewCell``, ``History``, ``audit``, ``AuditResult``, ``Finding``,
``record_release`` and ``load_history``.
"""

from spe.sdc.audit.expert import AuditResult, Finding, audit, audit_output
from spe.sdc.audit.history import COUNT_SPACE, History, NewCell, ReleaseInfo, sum_space

__all__ = [
    "COUNT_SPACE",
    "AuditResult",
    "Finding",
    "History",
    "NewCell",
    "ReleaseInfo",
    "audit",
    "audit_output",
    "sum_space",
]
