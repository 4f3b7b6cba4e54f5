"""The server's own computation of what leaves: plan outputs evaluated on the extract.

A plan output carries a declarative analysis, never numbers: the control plane validates it
against the project's catalogue, evaluates it on the project's extract files, checks every cell
and writes the released file itself. Workspace-computed outputs are checked only as advice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spe.exports.errors import ExportInputError

PLAN_SUFFIX = ".plan.json"
DP_SUFFIX = ".dp.json"
MAX_PLAN_BYTES = 256 << 10

SERVER = "server"
WORKSPACE = "workspace"
DP = "dp"

WORKSPACE_NOTICE = (
    "Computed in the workspace: the server could not recompute these numbers; the disclosure "
    "report below rests on the workspace's own evidence."
)


@dataclass(frozen=True)
class ServerCheck:
    """The outcome of a server-computed output: its verdict and the file the server wrote."""

    name: str
    kind: str
    checkable: bool
    status: Any  # spe.sdc.Verdict
    reasons: list[str]
    report: dict[str, Any]
    released: list[Any]
    datasets: list[str]
    file_name: str = ""
    data: bytes = b""
    computed_by: str = SERVER
    plan_sha256: str | None = None
    auto_release: bool = True  # a DP answer: whether its dataset's policy lets it leave alone
    cells: list[Any] = field(default_factory=list)  # for the cumulative audit (spe.sdc.audit)
    notes: list[str] = field(default_factory=list)


def released_name(output_name: str) -> str:
    """The name of the file the server writes for a plan or DP output (``x.plan.json`` ->
    ``x.csv``)."""
    for suffix in (PLAN_SUFFIX, DP_SUFFIX):
        if output_name.endswith(suffix):
            return output_name[: -len(suffix)] + ".csv"
    return output_name


def read_plan(data: bytes, name: str) -> Any:
    """The plan document in ``data`` (a file named ``name``), or one sentence saying what is
    wrong with it."""
    if len(data) > MAX_PLAN_BYTES:
        raise ExportInputError(
            f"{name} is larger than {MAX_PLAN_BYTES >> 10} KiB; a plan is a short description "
            "of an analysis. Make the analysis smaller."
        )
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ExportInputError(
            f"{name} is not a readable plan (JSON); record the analysis again with spe.analysis."
        ) from None


def validate_plan(document: Any, catalogue: Any, name: str) -> Any:
    """The validated plan, or an ExportInputError with the validator's sentence."""
    from spe.analysis.plan import PlanError, validate

    try:
        return validate(document, catalogue)
    except PlanError as exc:
        raise ExportInputError(f"{name} cannot be exported: {exc.message}") from None


# Given a checked table and the datasets it reads, the earlier released numbers that are sums
# of its cells (spe.sdc.safe.PublishedSum), for its safe version.
Linked = Callable[[Any, Sequence[str]], list[Any]]


@dataclass(frozen=True)
class PlanResult:
    """A plan evaluated and checked by the server: its hash, evidence and computed output."""

    sha256: str
    evidence: Any  # spe.analysis.plan.evaluate.Evidence
    computed: Any  # spe.analysis.outputs.Computed


def compute_plan(
    name: str,
    document: Any,
    catalogue: Any,
    rules: Any,
    released: Sequence[Any],
    *,
    memory_mb: int,
    threads: int,
    temp_dir: Path | None = None,
    person_maps: Sequence[Path] = (),
    linked: Linked | None = None,
) -> PlanResult:
    """Validate and evaluate ``document`` on the project's extract and compute its output;
    raises ExportInputError (the plan) or AnalysisError (the data, or no safe version).

    A safe version by suppression is protected together with the earlier released numbers that
    ``linked`` finds for its table (linked tables): never with anything the workspace sent."""
    from spe.analysis.outputs import compute
    from spe.analysis.plan import evaluate, plan_hash

    sha = plan_hash(document)
    plan = validate_plan(document, catalogue, name)
    evidence = evaluate(
        plan,
        catalogue,
        memory_limit=f"{memory_mb}MB",
        threads=threads,
        temp_directory=temp_dir,
        person_maps=maps_of_persons(document["frame"], person_maps),
    )
    computed = compute(evidence.command, evidence.frame, evidence.spec, rules, released)
    if linked is not None:
        computed = _linked_safe_version(computed, evidence.datasets, linked)
    return PlanResult(sha, evidence, computed)


def maps_of_persons(frame: Any, person_maps: Sequence[Path]) -> list[Path]:
    """The one person-space map the engine needs for a validated plan's evidence: that of the
    dataset with the fewest map rows among those whose persons include every evidence row's
    (a scan; what filters, derivations and windows keep; both sides of an inner join, the left
    side of a left join). A map has a row per extract row and the engine makes its pairs
    distinct before joining, so each map left out saves a pass over its rows (an income map of
    10 M rows against the population's 2 M, or 0.6 to 1 CPU s per 2 M rows). All maps when none
    of those is found.

    Maps are laid out as ``.../person-space/<dataset>/<key>/persons.parquet``
    (spe.projects.extracts.person_space_files)."""
    import pyarrow.parquet as pq

    def covering(node: Any) -> set[str]:
        if not isinstance(node, dict):
            return set()
        if node.get("op") == "scan":
            return {str(node.get("dataset"))}
        if node.get("op") == "join":
            left = covering(node.get("left"))
            return left | covering(node.get("right")) if node.get("how") == "inner" else left
        return covering(node.get("input"))

    datasets = covering(frame)
    chosen = [Path(p) for p in person_maps if Path(p).parent.parent.name in datasets]
    if not chosen:
        return [Path(p) for p in person_maps]
    return [min(chosen, key=lambda p: pq.ParquetFile(p).metadata.num_rows)]


def _linked_safe_version(computed: Any, datasets: Sequence[str], linked: Linked) -> Any:
    """``computed`` with its suppression safe version made again against the earlier releases
    that are sums of its cells (unchanged when there are none). Only one-table outputs of
    counts or sums have such a safe version; a safe version that cannot be made is refused."""
    import dataclasses

    from spe.analysis.errors import AnalysisError
    from spe.sdc.errors import SDCError
    from spe.sdc.safe import safe_version

    safe = computed.safe
    if safe is None or safe.method != "suppress" or len(computed.parts) != 1:
        return computed
    report = computed.parts[0].report
    if report.agg not in ("count", "sum") or report.person_id is None:
        return computed
    try:
        sums = linked(report, datasets)
        if not sums:
            return computed
        protected = safe_version(report, "suppress", linked=sums)
    except SDCError as exc:
        raise AnalysisError(exc.message) from None
    table = protected.table
    table.columns.name = computed.table.columns.name  # as compute() publishes it
    return dataclasses.replace(computed, safe=protected, table=table)


def evaluate_plan(
    name: str,
    document: Any,
    catalogue: Any,
    rules: Any,
    released: Sequence[Any],
    *,
    memory_mb: int,
    threads: int,
    temp_dir: Path | None = None,
    person_maps: Sequence[Path] = (),
    linked: Linked | None = None,
) -> ServerCheck:
    """Evaluate ``document`` on the project's extract, check every cell, write the CSV."""
    from spe.analysis.errors import AnalysisError
    from spe.analysis.plan import plan_hash

    try:
        result = compute_plan(
            name,
            document,
            catalogue,
            rules,
            released,
            memory_mb=memory_mb,
            threads=threads,
            temp_dir=temp_dir,
            person_maps=person_maps,
            linked=linked,
        )
    except ExportInputError as exc:
        return _refused(name, exc.message, plan_hash(document))
    except AnalysisError as exc:
        return _refused(name, f"{name} cannot be evaluated: {exc.message}", plan_hash(document))
    return server_check(name, result)


def server_check(name: str, result: PlanResult) -> ServerCheck:
    """The check of an evaluated plan: verdict, report, released cells and the server's CSV."""
    import dataclasses

    from spe.analysis.output import Output
    from spe.sdc import Verdict

    computed, evidence, sha = result.computed, result.evidence, result.sha256
    withheld = computed.withheld_of_plan()  # as the workspace's preview leaves them out
    file = Output(computed, None, list(evidence.datasets), [], withheld)
    status = computed.status(withheld)
    report = computed.report(withheld)
    report["name"] = name
    report["status"] = status.value
    report["computed_by"] = SERVER
    report["plan_sha256"] = sha
    released = computed.released_tables(name, withheld)
    # audit_cells builds the same person sets again through released_tables (a sort of every
    # (cell, person) pair: 0.4 to 1.5 CPU s at 2 M evidence rows); a copy hands it these.
    once = dataclasses.replace(computed)
    once.released_tables = lambda *_args, **_kwargs: released
    return ServerCheck(
        name=name,
        kind=computed.kind,
        checkable=True,
        status=status,
        reasons=computed.reasons(withheld) if status != Verdict.PASS else [],
        report=report,
        released=released,
        datasets=list(evidence.datasets),
        cells=with_values(once.audit_cells(name, evidence.datasets, withheld), computed, evidence),
        file_name=released_name(name),
        data=file.to_spe_csv().encode("utf-8"),
        plan_sha256=sha,
    )


def with_values(cells: list[Any], computed: Any, evidence: Any) -> list[Any]:
    """The audit cells of a server-computed output, each sum or mean cell with what every
    person behind it contributed (spe.sdc.audit.NewCell.values), for the cumulative audit's
    p % rule. Values are the server's own, from the evidence it evaluated; they stay on the
    server (the audit's sealed store) and appear in nothing shown.

    A person whose rows fall in two cells of a table contributed different amounts to each:
    their value is NaN (unknown), and a total that needs it goes to a reviewer."""
    import dataclasses

    maps: dict[str, tuple[Any, Any]] = {}
    source = "+".join(sorted(evidence.datasets)) or "data"
    for part in computed.parts:
        report = part.report
        if report.agg not in ("sum", "mean") or report.person_id is None or not part.release:
            continue
        found = _person_values(report, evidence.frame)
        if found is None:
            continue
        variable = f"{source}.{report.values}"
        if variable in maps:  # two parts of one variable: keep a value only where both agree
            from spe.sdc.audit import ValueMap

            both = ValueMap(*maps[variable]).merged(ValueMap(*found))
            found = (both.persons, both.values)
        maps[variable] = found
    if not maps:
        return cells
    import numpy as np

    out = []
    for cell in cells:
        known = maps.get(cell.variable or "") if cell.kind in ("sum", "mean") else None
        if known is None:
            out.append(cell)
            continue
        persons, values = known
        at = np.minimum(np.searchsorted(persons, cell.persons), max(len(persons) - 1, 0))
        hit = persons[at] == cell.persons if len(persons) else np.zeros(len(cell.persons), bool)
        out.append(dataclasses.replace(cell, values=np.where(hit, values[at], np.nan)))
    return out


def _person_values(report: Any, frame: Any) -> tuple[Any, Any] | None:
    """(sorted person hashes, each one's total of the report's values over its rows), NaN for
    a person in two or more of the table's cells; None where the rows cannot be matched to the
    report's persons (then no value is known and the audit is stricter). Works on the report's
    dense person codes: no sort of (cell, person) pairs beyond the one the check made."""
    import numpy as np

    info, pairs = report.persons_info, report.stats.pairs
    if info is None or pairs is None or report.values not in frame.columns:
        return None
    labels = [*report.index, *report.columns]
    kept = frame[labels].notna().all(axis=1).to_numpy()
    codes = np.asarray(info.codes, dtype=np.int64)
    if len(codes) != int(kept.sum()):
        return None
    raw = frame[report.values].to_numpy(dtype=np.float64, na_value=np.nan)[kept]
    present = ~np.isnan(raw)
    size = int(info.size)
    totals = np.bincount(codes[present], weights=raw[present], minlength=size)
    seen = np.flatnonzero(np.bincount(codes[present], minlength=size))
    if not len(seen):
        return None
    if pairs.keys is not None:  # (cell, person) pairs: a person in two cells has two values
        cells_of = np.bincount(pairs.keys & np.int64((1 << pairs.bits) - 1), minlength=size)
        totals = np.where(cells_of > 1, np.nan, totals)
    # else every row is another person: one cell each
    # the hashes the report's own person sets are made of (TableReport.person_sets)
    hashes = np.asarray(report._hash_codes(seen), dtype=np.int64)
    order = np.argsort(hashes)
    return hashes[order], totals[seen][order]


def _refused(name: str, sentence: str, sha: str | None) -> ServerCheck:
    from spe.sdc import Verdict

    return ServerCheck(
        name=name,
        kind="table",
        checkable=True,
        status=Verdict.FAIL,
        reasons=[sentence],
        report={"name": name, "status": "fail", "computed_by": SERVER, "plan_sha256": sha},
        released=[],
        datasets=[],
        plan_sha256=sha,
    )


def dp_check(name: str, answer: Any) -> ServerCheck:
    """A DP answer filed for export: the file is the ledger's own record of the answer (noisy
    numbers only), so the server computed it; released without reviewers when the dataset's
    policy allows. ``answer`` is spe.dp's export of the answer, or the sentence why there is
    none."""
    from spe.sdc import Verdict

    if isinstance(answer, str):
        return _refused(name, f"{name} cannot be exported: {answer}", None)
    data = bytes(getattr(answer, "csv", b"") or getattr(answer, "data", b""))
    report = dict(getattr(answer, "report", {}) or {})
    report.update({"name": name, "status": "pass", "computed_by": DP})
    allowed = bool(getattr(answer, "auto_release_allowed", False))
    return ServerCheck(
        name=name,
        kind="table",
        checkable=True,
        status=Verdict.PASS,
        reasons=[],
        report=report,
        released=[],  # DP answers take no part in the exact audit
        datasets=sorted(getattr(answer, "datasets", []) or []),
        file_name=released_name(name),
        data=data,
        computed_by=DP,
        auto_release=allowed,
    )
