"""The cumulative disclosure audit: every released cell of a data holder, from any project, as a
linear statistic over a holder-wide person space, and the audit of a new output against them.

Guarantee. A cell is a count, or a sum of one variable (a mean is both), over a set of persons
kept as keyed 64-bit hashes (the mapping to pseudonyms is never stored). Before an output leaves,
its cells are added to everything the holder has released, and it fails when some group of
fewer than the threshold persons has its count (for sums: its total) fixed by any linear
combination of released cells, across any number of tables and projects. Groups are unions of
atoms (persons in exactly the same cells). A single atom is determined when its indicator lies
in the row space of the cells x atoms matrix (Chin & Ozsoyoglu's audit expert, 1982); a union
when its indicator is orthogonal to the null space, which an exact integer program searches for
every group below the threshold. The row space is computed modulo a prime and then proved over
the rationals (null vectors lifted to integers and checked against the integer matrix by
Freivalds' test, error below 2^-45); if that proof fails, or a search is too large, the output
goes to a reviewer rather than passing. Only determinations the new output creates are
reported. A determined total of a larger group also fails when its largest value could be
estimated within p % by the second largest contributor (values needed; without them, review).
Reasons name the earlier releases involved by title and date, never a count or a membership.

Bounds (``bounds``). Counts are never negative, so an undetermined small group can still be
confined: per atom below the threshold linked to the new output, the intruder's largest count
over the released cells with every atom non-negative is sought (HiGHS); a group that cannot
reach the threshold fails, one that can passes only on an integer witness checked exactly, and
what the time budget does not settle goes to a reviewer. For sums with values given (none
negative), a total bounded from above within the p % rule's upper protection level fails.

Limits. Only the upper protection level is asked of bounds, not the lower one; the export check
gives no values, so bounds on sums are audited only where a caller gives them. Released numbers
are taken as exact (rounded releases are audited as if exact, which is conservative). DP
answers take no part. Cells whose persons the server does not know cannot be audited. Cost
grows with the number of atoms squared (dense basis).

Public entry points: ``NewCell``, ``History``, ``audit``, ``AuditResult``, ``Finding``,
``record_release`` and ``load_history``.
"""

from spe.sdc.audit.expert import AuditResult, Finding, audit, audit_output
from spe.sdc.audit.history import COUNT_SPACE, History, NewCell, ReleaseInfo, sum_space
from spe.sdc.audit.store import load_histories, load_history, record_release

__all__ = [
    "COUNT_SPACE",
    "AuditResult",
    "Finding",
    "History",
    "NewCell",
    "ReleaseInfo",
    "audit",
    "audit_output",
    "load_histories",
    "load_history",
    "record_release",
    "sum_space",
]
