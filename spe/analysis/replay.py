"""Server-side replay of a recorded output: recompute it from its evidence and check it again.

The control plane calls ``check_output`` for every output of an export request. Nothing computed
in the workspace is trusted: the table is recomputed from the evidence rows with the server's
rules and released tables, and the exported file must equal it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spe.analysis.csvtable import Comparison, CSVParseError, compare
from spe.analysis.data import check_safe_name
from spe.analysis.errors import AnalysisError, OutputSpecError
from spe.analysis.outputs import Computed, compute, used_columns
from spe.analysis.recording import sha256_of
from spe.analysis.sidecar import Sidecar, validate_sidecar
from spe.sdc import ReleasedTable, Rules, Verdict

# The project's persons: all of them, or a function returning which of the given ids exist.
KnownPersons = Collection[str] | Callable[[list[str]], Collection[str]]


@dataclass
class OutputCheck:
    """The server's verdict on one output of an export request."""

    name: str
    kind: str  # "table" | "model" | "survival" | "file"
    checkable: bool  # False for outputs rules cannot read (images, text, unknown files)
    status: Verdict
    reasons: list[str]  # sentences a researcher can act on (empty when PASS)
    report: dict[str, Any]  # per cell: labels, value, persons, failing rules with numbers
    released: list[ReleasedTable] = field(default_factory=list)  # store when released
    datasets: list[str] = field(default_factory=list)
    cells: list[Any] = field(default_factory=list)  # for the cumulative audit (spe.sdc.audit)


def check_plain_file(name: str, path: Path) -> OutputCheck:
    """A file that is not a recorded output: the rules cannot read it, so a reviewer must."""
    check_safe_name(name, "file name")
    path = Path(path)
    size = path.stat().st_size if path.is_file() else None
    reason = (
        f"{name} is not an output recorded by spe.analysis, so the disclosure rules cannot read "
        "it; a reviewer must look at it."
    )
    report = {
        "kind": "file",
        "name": name,
        "status": Verdict.REVIEW.value,
        "checkable": False,
        "size_bytes": size,
        "sha256": sha256_of(path) if size is not None else None,
        "suffix": path.suffix.lower(),
    }
    return OutputCheck(name, "file", False, Verdict.REVIEW, [reason], report)


def _path(files: Mapping[str, Path], file_name: str, sidecar: Sidecar) -> Path:
    path = files.get(file_name)
    if path is None or not Path(path).is_file():
        raise OutputSpecError(
            f"The output {sidecar.name!r} names the file {file_name!r}, which is not among the "
            "request's files; add it to the request or record the output again."
        )
    return Path(path)


def _read_evidence(path: Path) -> pd.DataFrame:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pandas()
    except Exception as exc:  # pyarrow raises many types on a broken or hostile file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AnalysisError(f"its evidence cannot be read as Parquet ({first})") from None


def _evidence_problems(
    evidence: pd.DataFrame,
    sidecar: Sidecar,
    known_persons: KnownPersons | None,
) -> list[str]:
    spec = sidecar.spec
    person = spec["person_id"]
    expected = [*([person] if person else []), *used_columns(sidecar.command, spec)]
    columns = [str(c) for c in evidence.columns]
    if len(set(columns)) != len(columns) or set(columns) != set(expected):
        return [
            f"The evidence of {sidecar.name!r} holds the columns {', '.join(columns) or 'none'} "
            f"where the output needs exactly {', '.join(expected)}; record the output again."
        ]
    if not person:
        return []
    ids = evidence[person]
    text_like = pd.api.types.is_string_dtype(ids.dtype) or ids.dtype == object
    if ids.isna().any():
        return [f"The evidence of {sidecar.name!r} has rows without a person; record it again."]
    if not text_like or not ids.map(lambda v: isinstance(v, str)).all():
        return [
            f"The person column {person!r} of the evidence of {sidecar.name!r} does not hold "
            "pseudonyms (text); load the data with spe.analysis.load and record it again."
        ]
    if (ids.str.strip() == "").any():
        return [f"The evidence of {sidecar.name!r} has rows with an empty person; record it again."]
    if known_persons is not None:
        distinct = [str(p) for p in pd.unique(ids.to_numpy(dtype=object))]
        known: Collection[str]
        if callable(known_persons):  # asks the data which of these persons it holds
            known = set(known_persons(distinct))
        elif isinstance(known_persons, set | frozenset):
            known = known_persons
        else:
            known = set(known_persons)
        unknown = sum(1 for p in distinct if p not in known)
        if unknown:
            return [
                f"{unknown} persons in the evidence of {sidecar.name!r} are not persons of the "
                "project's data: the output was not computed from the project's extracts."
            ]
    return []


def _fail(sidecar: Sidecar, reasons: list[str], replay: dict[str, Any]) -> OutputCheck:
    report = {
        "kind": sidecar.kind,
        "command": sidecar.command,
        "name": sidecar.name,
        "status": Verdict.FAIL.value,
        "replay": replay,
    }
    return OutputCheck(
        sidecar.name, sidecar.kind, True, Verdict.FAIL, reasons, report, [], sidecar.datasets
    )


def check_output(
    sidecar: dict[str, Any],
    files: Mapping[str, Path],
    rules: Rules,
    released: Sequence[ReleasedTable] = (),
    *,
    known_persons: KnownPersons | None = None,
    person_space: Callable[[Any], Any] | None = None,
) -> OutputCheck:
    """Recompute a recorded output from its evidence with ``rules`` and check the exported file.

    ``files`` maps the file names the sidecar lists to local copies. Raises OutputSpecError when
    the sidecar is not a valid description or names a file that is not there. Everything else
    is a verdict: the file must equal the table recomputed from the evidence (labels as text,
    values within 1e-9 relative; model coefficients 1e-6), every published cell must pass
    ``rules`` and differ from every cell of ``released`` by no small group. ``known_persons``
    (the project's pseudonyms), when given, must contain every person of the evidence.
    """
    meta = validate_sidecar(sidecar)
    csv_path = _path(files, meta.file, meta)
    evidence_path = _path(files, meta.evidence, meta)
    reasons: list[str] = []
    replay: dict[str, Any] = {"file_sha256_matches": True, "evidence_sha256_matches": True}
    data = csv_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta.file_sha256:
        replay["file_sha256_matches"] = False
        reasons.append(
            f"{meta.file} was changed after spe.analysis recorded it (its SHA-256 differs from "
            "the sidecar's): export outputs as recorded, or record them again."
        )
    if sha256_of(evidence_path) != meta.evidence_sha256:
        replay["evidence_sha256_matches"] = False
        reasons.append(
            f"{meta.evidence} was changed after spe.analysis recorded it; record the output again."
        )
    try:
        evidence = _read_evidence(evidence_path)
    except AnalysisError as exc:
        return _fail(
            meta, [*reasons, f"The output {meta.name!r} cannot be checked: {exc}."], replay
        )
    problems = _evidence_problems(evidence, meta, known_persons)
    if problems:
        return _fail(meta, [*reasons, *problems], replay)
    person = meta.spec.get("person_id")
    if person_space is not None and person:
        # The same persons as every other release of the holder, for the cumulative audit.
        evidence[person] = person_space(evidence[person])
    try:
        computed = compute(meta.command, evidence, meta.spec, rules, released)
        return _verdict(meta, computed, data, reasons, replay)
    except AnalysisError as exc:
        why = str(exc)
    except Exception as exc:  # hostile evidence must end in a verdict, never a crashed review
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    return _fail(
        meta,
        [*reasons, f"The output {meta.name!r} cannot be recomputed from its evidence: {why}"],
        replay,
    )


def _verdict(
    meta: Sidecar,
    computed: Computed,
    data: bytes,
    reasons: list[str],
    replay: dict[str, Any],
) -> OutputCheck:
    withheld: np.ndarray | None = None
    comparison: Comparison | None = None
    try:
        found = compare(
            computed.table,
            data,
            withholdable=computed.withholdable if computed.withholdable.any() else None,
            rel_tol=computed.rel_tol,
        )
    except CSVParseError as exc:
        replay["file_matches"] = False
        reasons.append(f"{meta.file} cannot be read as a CSV table: {exc}.")
    else:
        comparison = found
        replay["file_matches"] = not found.problems
        replay["differing_cells"] = found.differing_cells
        if found.problems:
            reasons.append(
                f"{meta.file} does not match the table recomputed from its evidence: "
                + "; ".join(found.problems)
                + "."
            )
        if computed.withholdable.any():
            withheld = found.withheld
    replay["problems"] = list(reasons)
    status = computed.status(withheld)
    rule_reasons = computed.reasons(withheld)
    if meta.spec["person_id"] is None:
        status = max(status, Verdict.REVIEW, key=lambda v: v.severity)
        rule_reasons.append(
            "The output was recorded without a person column, so it counts rows, not persons: a "
            "reviewer must confirm that every row is a different person."
        )
    if reasons:
        status = Verdict.FAIL
    report = computed.report(withheld)
    report["name"] = meta.name
    report["status"] = status.value
    report["replay"] = replay
    released = computed.released_tables(meta.name, withheld) if comparison is not None else []
    cells = computed.audit_cells(meta.name, meta.datasets, withheld) if released else []
    return OutputCheck(
        name=meta.name,
        kind=meta.kind,
        checkable=True,
        status=status,
        reasons=[*reasons, *rule_reasons] if status != Verdict.PASS else [],
        report=report,
        released=released,
        datasets=meta.datasets,
        cells=cells,
    )
