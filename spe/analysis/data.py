"""Loading the project's extracts in a workspace and remembering each frame's person column.

``load`` reads ``<workspace_data_dir>/<dataset>/data.parquet`` (or ``<dataset>.parquet``) and
marks the frame with its person column and dataset; ``use`` marks a frame built otherwise.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from spe.analysis.errors import AnalysisError
from spe.sdc.rules import Rules, Verdict, load_rules

PERSON_ATTR = "spe_person_id"
DATASET_ATTR = "spe_dataset"
DATASETS_ATTR = "spe_datasets"

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,119}$")
_DATASET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")  # as spe.sdc.rules accepts for policies


def check_safe_name(name: object, what: str = "name") -> str:
    """``name`` when it is a plain file name ([A-Za-z0-9._-], no path); else a readable error."""
    if not isinstance(name, str) or not SAFE_NAME.match(name) or name.endswith("."):
        raise AnalysisError(
            f"The {what} {name!r} is not allowed: use letters, digits, '.', '_' and '-' only "
            "(at most 120, starting with a letter or digit), with no folders in it."
        )
    return name


def _data_dir() -> Path:
    from spe.config import get_settings

    return Path(get_settings().workspace_data_dir)


def available_datasets(data_dir: Path | None = None) -> list[str]:
    """The datasets mounted in this workspace (folders with data.parquet, or *.parquet files)."""
    root = data_dir or _data_dir()
    if not root.is_dir():
        return []
    names = set()
    for entry in root.iterdir():
        if entry.is_dir() and (entry / "data.parquet").is_file():
            names.add(entry.name)
        elif entry.is_file() and entry.suffix == ".parquet":
            names.add(entry.stem)
    return sorted(names)


def dataset_path(name: str, data_dir: Path | None = None) -> Path:
    """The Parquet file of dataset ``name`` in the data mount; a readable error when missing."""
    check_safe_name(name, "dataset name")
    root = data_dir or _data_dir()
    for candidate in (root / name / "data.parquet", root / f"{name}.parquet"):
        if candidate.is_file():
            return candidate
    known = available_datasets(root)
    listed = ", ".join(known) if known else "none"
    raise AnalysisError(
        f"There is no dataset {name!r} in {root}; the datasets of this project are: {listed}."
    )


def load(
    name: str, person_id: str | None = None, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """The project's extract of dataset ``name`` as a DataFrame that remembers its person column.

    The person column is the extract's first column (the project pseudonym) unless
    ``person_id`` names another; it is always loaded, also when ``columns`` leaves it out.
    """
    import pyarrow.parquet as pq

    try:
        path = dataset_path(name)
    except AnalysisError:
        from spe.dp.client import aggregate_only_datasets

        if name in aggregate_only_datasets():
            raise AnalysisError(
                f"The dataset {name!r} is aggregate-only: its rows are not available in a "
                "workspace. Use spe.dp.* (count, mean, crosstab, ...: differentially private, "
                "each query spends privacy budget)."
            ) from None
        raise
    try:
        schema_names = pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises several types on a broken file
        raise AnalysisError(f"The dataset {name!r} cannot be read ({exc}).") from None
    if not schema_names:
        raise AnalysisError(f"The dataset {name!r} has no columns.")
    person = person_id or schema_names[0]
    wanted = [person, *(c for c in (columns or []) if c != person)] if columns else None
    for column in wanted or [person]:
        if column not in schema_names:
            raise AnalysisError(
                f"The dataset {name!r} has no column {column!r}; its columns are "
                f"{', '.join(schema_names)}."
            )
    frame = pq.read_table(path, columns=wanted).to_pandas()
    _record_load(name, list(frame.columns), len(frame))
    return use(frame, person_id=person, dataset=name)


def _record_load(name: str, columns: list[str], rows: int) -> None:
    """Tell the airlock what was read. Inside a workspace the airlock's folder is mounted, and a
    load that cannot be recorded is refused (also while the airlock is away); outside one
    (development, tests) there is nothing to tell."""
    from spe.config import get_settings
    from spe.workspaces.client import AirlockUnavailable, call

    socket = get_settings().workspace_airlock_socket
    if not socket.parent.is_dir():
        return
    try:
        call({"op": "load", "dataset": name, "columns": columns, "rows": rows}, socket)
    except AirlockUnavailable as exc:
        raise AnalysisError(
            f"Loading {name!r} could not be recorded in the audit log, so it was refused ({exc})."
        ) from None


def use(
    df: pd.DataFrame, person_id: str | None = None, dataset: str | Iterable[str] | None = None
) -> pd.DataFrame:
    """Declare ``df``'s person column and the datasets it came from (e.g. after a merge).

    Returns ``df`` itself, marked in ``df.attrs``; analysis helpers read the marks from there.
    """
    if person_id is not None:
        if person_id not in df.columns:
            raise AnalysisError(
                f"There is no column {person_id!r} to use as the person column; the columns are "
                f"{', '.join(map(str, df.columns))}."
            )
        df.attrs[PERSON_ATTR] = person_id
    if dataset is not None:
        names = [dataset] if isinstance(dataset, str) else list(dataset)
        for one in names:
            check_safe_name(one, "dataset name")
        df.attrs[DATASETS_ATTR] = list(dict.fromkeys(names))
        df.attrs[DATASET_ATTR] = names[0] if len(names) == 1 else None
    return df


@dataclass
class FrameContext:
    """What a helper knows about a frame: its person column, its datasets, and notes on both."""

    person_id: str | None
    datasets: list[str]
    notes: list[str] = field(default_factory=list)


def frame_context(df: pd.DataFrame, person_id: str | None) -> FrameContext:
    """The person column (given, else remembered) and datasets of ``df``, with notes."""
    if not isinstance(df, pd.DataFrame):
        raise AnalysisError(f"Give a pandas DataFrame, not {type(df).__name__}.")
    notes = []
    person: str | None
    if person_id is not None:
        if person_id not in df.columns:
            raise AnalysisError(
                f"There is no person column {person_id!r} in the data; the columns are "
                f"{', '.join(map(str, df.columns))}."
            )
        person = person_id
    else:
        remembered = df.attrs.get(PERSON_ATTR)
        person = remembered if isinstance(remembered, str) and remembered in df.columns else None
        if person is None:
            notes.append(
                "No person column is known for this data, so each row counts as a person: load "
                "it with spe.analysis.load or declare it with spe.analysis.use(df, person_id=...)."
            )
    datasets = df.attrs.get(DATASETS_ATTR)
    if not datasets and isinstance(df.attrs.get(DATASET_ATTR), str):
        datasets = [df.attrs[DATASET_ATTR]]
    datasets = [d for d in datasets or [] if isinstance(d, str)]
    if not datasets:
        notes.append(
            "The datasets this data came from are not known (pandas drops the marks in some "
            "operations): declare them with spe.analysis.use(df, dataset=[...])."
        )
    return FrameContext(person, datasets, notes)


def strictest(rules: Sequence[Rules]) -> Rules:
    """The rules that are at least as strict as each of ``rules`` (for data from several sets)."""
    if not rules:
        return Rules()
    out = rules[0]
    for other in rules[1:]:

        def worst(a: Verdict, b: Verdict) -> Verdict:
            return a if a.severity >= b.severity else b

        out = dataclasses.replace(
            out,
            threshold=max(out.threshold, other.threshold),
            dominance_n=max(out.dominance_n, other.dominance_n),
            dominance_k=min(out.dominance_k, other.dominance_k),
            p_percent=max(out.p_percent, other.p_percent),
            residual_dof=max(out.residual_dof, other.residual_dof),
            zeros=worst(out.zeros, other.zeros),
            full_cells=worst(out.full_cells, other.full_cells),
            negative_values=worst(out.negative_values, other.negative_values),
            extremes=worst(out.extremes, other.extremes),
            sources=tuple(dict.fromkeys((*out.sources, *other.sources))),
            notes=tuple(dict.fromkeys((*out.notes, *other.notes))),
        )
    return out


def workspace_rules(datasets: Sequence[str]) -> Rules:
    """The rules a workspace checks with (advisory: the export review rechecks on the server)."""
    from spe.config import get_settings

    policies = Path(get_settings().policies_dir)
    if not any((d / "default.yaml").is_file() for d in (policies / "sdc", policies)):
        return Rules()  # no policies in this workspace: the platform defaults
    names = [d for d in datasets if _DATASET_NAME.match(d)]
    if not names:
        return load_rules(policies)
    return strictest([load_rules(policies, dataset=name) for name in names])
