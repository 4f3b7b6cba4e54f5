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

Values (``values``). The export check passes what each person contributed to a server-computed
sum or mean cell (spe.exports.checking.with_values); ``record_release`` keeps them per release
and as one map per holder and sum space, sealed under the platform key (the extract may be
destroyed with its project; the history must not forget), and ``load_value_maps`` reads them
back for the p % rule. A person with no known value (an output the workspace computed) or two
disagreeing ones (in two cells of a table, or two years under one column) has none: a
determined total that needs it goes to a reviewer.

Limits. Only the upper protection level is asked of bounds, not the lower one; bounds on sums
are computed only where every person's value in the space is known (else skipped). A sum space
is one value per person: a table whose persons fall in several cells (by year) is audited as
if each person had one value, and their values are unknown, so its totals go to reviewers.
The p % rule is asked of single atoms; unions of atoms only below the threshold. Released numbers
are taken as exact (rounded releases are audited as if exact, which is conservative). DP
answers take no part. Cells whose persons the server does not know cannot be audited. Cost
grows with the number of atoms squared (dense basis).

Public entry points: ``NewCell``, ``History``, ``audit``, ``AuditResult``, ``Finding``,
``record_release``, ``load_history``, ``load_value_maps``, ``ValueMap`` and
``contributions_of``.
"""

from spe.sdc.audit.expert import AuditResult, Finding, audit, audit_output
from spe.sdc.audit.history import COUNT_SPACE, History, NewCell, ReleaseInfo, sum_space
from spe.sdc.audit.store import load_histories, load_history, load_value_maps, record_release
from spe.sdc.audit.values import ValueMap, contributions_of

__all__ = [
    "COUNT_SPACE",
    "AuditResult",
    "Finding",
    "History",
    "NewCell",
    "ReleaseInfo",
    "ValueMap",
    "audit",
    "audit_output",
    "contributions_of",
    "load_histories",
    "load_history",
    "load_value_maps",
    "record_release",
    "sum_space",
]
