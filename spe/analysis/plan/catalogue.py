"""What a plan may read: the project's extracts, their versions, granted columns and kinds.

The control plane builds a ``Catalogue`` from the project's grants; a workspace reads the same
information from the ``catalogue.json`` that extraction writes beside each ``data.parquet``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spe.analysis.plan.errors import PlanError

KINDS = ("int", "float", "string", "date", "bool", "year")
NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Dataset names as spe.analysis.data and the dataset policies accept them (never SQL text).
DATASET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
CATALOGUE_FILE = "catalogue.json"
PROJECT_FILE = "project.json"
MAX_TEXT = 64


@dataclass(frozen=True)
class ColumnInfo:
    """One granted column: its kind, and the code list or bin edges its policy declares."""

    name: str
    kind: str  # "int" | "float" | "string" | "date" | "bool" | "year"
    categories: tuple[str | int, ...] | None = None
    bins: tuple[float, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "categories": list(self.categories) if self.categories is not None else None,
            "bins": list(self.bins) if self.bins is not None else None,
        }

    @classmethod
    def from_json(cls, data: Any) -> ColumnInfo:
        if not isinstance(data, dict) or set(data) - {"name", "kind", "categories", "bins"}:
            raise PlanError("A column of the catalogue is not an object with name and kind.")
        name, kind = data.get("name"), data.get("kind")
        categories, bins = data.get("categories"), data.get("bins")
        if not isinstance(name, str) or kind not in KINDS:
            raise PlanError(f"The catalogue's column {name!r} has no valid kind ({kind!r}).")
        if categories is not None:
            if not isinstance(categories, list) or not all(
                isinstance(c, str | int) and not isinstance(c, bool) for c in categories
            ):
                raise PlanError(f"The catalogue's categories of {name!r} must be a list of codes.")
            categories = tuple(categories)
        if bins is not None:
            if not isinstance(bins, list) or not all(
                isinstance(b, int | float) and not isinstance(b, bool) and math.isfinite(b)
                for b in bins
            ):
                raise PlanError(f"The catalogue's bins of {name!r} must be a list of numbers.")
            bins = tuple(float(b) for b in bins)
        return cls(name, kind, categories, bins)


@dataclass(frozen=True)
class SourceInfo:
    """A project's extract of one dataset: its version, file and granted columns."""

    dataset: str
    version: int
    path: Path | None
    person_column: str
    columns: Mapping[str, ColumnInfo] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The ``catalogue.json`` written beside the extract (without the path: it is local)."""
        return {
            "dataset": self.dataset,
            "version": self.version,
            "person_column": self.person_column,
            "columns": [c.to_json() for c in self.columns.values()],
        }

    @classmethod
    def from_json(cls, data: Any, path: Path | None) -> SourceInfo:
        """The source described by ``data`` (a parsed ``catalogue.json``), read from ``path``."""
        keys = {"dataset", "version", "person_column", "columns"}
        if not isinstance(data, dict) or set(data) != keys:
            raise PlanError(
                "A catalogue.json must hold exactly dataset, version, person_column and columns; "
                "extract the dataset again."
            )
        dataset, version = data["dataset"], data["version"]
        person, columns = data["person_column"], data["columns"]
        if not isinstance(dataset, str) or not DATASET_NAME.match(dataset):
            raise PlanError(f"The catalogue names no valid dataset ({dataset!r}).")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise PlanError(f"The catalogue of {dataset!r} has no valid version ({version!r}).")
        if not isinstance(person, str) or not NAME.match(person):
            raise PlanError(f"The catalogue of {dataset!r} has no valid person column.")
        if not isinstance(columns, list):
            raise PlanError(f"The catalogue of {dataset!r} must list its columns.")
        infos = [ColumnInfo.from_json(c) for c in columns]
        return cls(dataset, version, path, person, {c.name: c for c in infos})


@dataclass(frozen=True)
class Catalogue:
    """The sources a project's plans may read, by dataset name."""

    project: str
    sources: Mapping[str, SourceInfo]


def _data_dir() -> Path:
    from spe.config import get_settings

    return Path(get_settings().workspace_data_dir)


def workspace_catalogue(data_dir: Path | None = None) -> Catalogue:
    """The catalogue of the extracts mounted in this workspace (``<dataset>/catalogue.json``).

    The project slug comes from ``project.json`` in the data folder, else from the ``project``
    each ``catalogue.json`` names ("" when neither says).
    """
    root = data_dir or _data_dir()
    project = ""
    project_file = root / PROJECT_FILE
    if project_file.is_file():
        try:
            data = json.loads(project_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PlanError(f"The project file {project_file} cannot be read ({exc}).") from None
        if not isinstance(data, dict) or not isinstance(data.get("project"), str):
            raise PlanError(f"The project file {project_file} does not name the project.")
        project = data["project"]
    sources: dict[str, SourceInfo] = {}
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            parquet = folder / "data.parquet"
            if not parquet.is_file():
                continue
            described = folder / CATALOGUE_FILE
            if not described.is_file():
                raise PlanError(
                    f"The dataset {folder.name!r} has no {CATALOGUE_FILE}, so plans cannot use "
                    "it; ask the data holder to extract it again."
                )
            try:
                data = json.loads(described.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise PlanError(f"The file {described} cannot be read ({exc}).") from None
            # Extraction names the project in each catalogue.json (the sandbox's /data holds
            # only the datasets' folders); a project.json, where present, says it once.
            named = data.pop("project", None) if isinstance(data, dict) else None
            if isinstance(named, str) and not project_file.is_file():
                if project and named != project:
                    raise PlanError(
                        f"The datasets of this workspace name two projects ({project!r} and "
                        f"{named!r}); ask the operator to restart the workspace."
                    )
                project = named
            source = SourceInfo.from_json(data, parquet)
            sources[source.dataset] = source
    return Catalogue(project, sources)
