"""The cumulative disclosure audit of an export: each output's cells as linear statistics in the
holder's person space, audited against everything the holder has released from any project
(spe.sdc.audit), and recorded in the same transaction as the release.

The check computes every table on evidence whose person column has been mapped to the holder's
person space (spe.projects.extracts.person_space_of), so the persons behind a cell are the same
numbers whichever project released it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Earlier:
    """An output of the same request checked before this one: it counts as released."""

    name: str
    cells: list[Any]


def audit(
    holder: str,
    request_id: str,
    project: str,
    title: str,
    cells: Sequence[Any],
    earlier: Sequence[Earlier],
    rules: Any,
) -> Any:
    """Audit ``cells`` against the holder's releases and this request's earlier outputs."""
    from spe.db import readonly
    from spe.sdc.audit import ReleaseInfo, audit_output, load_histories

    if not cells:
        return None
    with readonly() as session:
        histories = load_histories(session, holder, cells)
    if any(h.n_atoms > MAX_ATOMS for h in histories.values()):
        return _too_large(cells, histories)
    now = dt.datetime.now(dt.UTC)
    for before in earlier:
        info = ReleaseInfo(request_id, project, f"{title}: {before.name}", now, before.name)
        for space, history in list(histories.items()):
            histories[space] = history.extended(info, before.cells)
    return audit_output(histories, cells, rules.threshold, rules.p_percent)


# The audit's cost grows with the square of the atoms (a dense basis): past this many, an
# output goes to a reviewer instead of waiting (never passes unaudited).
MAX_ATOMS = 50_000


def _too_large(cells: Sequence[Any], histories: dict[str, Any]) -> Any:
    """Every cell to a reviewer, with one sentence, when the history is too large to audit."""
    from spe.sdc import Verdict
    from spe.sdc.audit import AuditResult, Finding

    result = AuditResult("", len(cells))
    sentence = (
        "The data holder's releases are too many and too finely cut for the cumulative audit "
        "to finish here; a reviewer must look."
    )
    for space in histories:
        result.findings.append(Finding(0, Verdict.REVIEW, space, "review", (), sentence))
    return result


def with_audit(check: Any, result: Any) -> Any:
    """``check`` with the audit's verdict folded in: its findings become reasons (each names
    the earlier releases, never a count or a membership) and the worst verdict wins."""
    from spe.sdc import Verdict

    if result is None:
        return check
    findings = [f.to_dict() for f in result.findings]
    report = dict(check.report)
    report["cumulative_audit"] = {"status": result.status.value, "findings": findings}
    if not result.findings:
        return dataclasses.replace(check, report=report)
    status = max(check.status, result.status, key=lambda v: v.severity)
    sentences = list(dict.fromkeys(f.sentence for f in result.findings))
    reasons = [*check.reasons, *sentences] if status != Verdict.PASS else []
    report["status"] = status.value
    return dataclasses.replace(check, status=status, reasons=reasons, report=report)


def record(
    session: Any,
    holder: str,
    request_id: str,
    project: str,
    title: str,
    released_at: dt.datetime,
    name: str,
    cells: Sequence[Any],
) -> None:
    """Enter a released output's cells in the holder's history (the caller's transaction)."""
    from spe.sdc.audit import ReleaseInfo, record_release

    if cells:
        info = ReleaseInfo(request_id, project, title, released_at, name)
        record_release(session, holder, info, list(cells))


PersonSpace = Callable[[Any], Any]
