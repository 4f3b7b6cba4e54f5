"""The sidecar ``<name>.spe.json`` that describes a recorded output, and its strict validation.

The workspace writes it; the server validates every key and type before it reads any file the
sidecar names, and refuses anything it does not know with a sentence saying what is wrong.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from spe.analysis.data import SAFE_NAME
from spe.analysis.errors import OutputSpecError
from spe.analysis.outputs import COMMANDS, SAFE_METHODS, used_columns
from spe.sdc.compute import AGGS

SIDECAR_VERSION = 1
SIDECAR_SUFFIX = ".spe.json"
CSV_SUFFIX = ".csv"
EVIDENCE_SUFFIX = ".evidence.parquet"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TOP_KEYS = (
    "spe_output",
    "name",
    "kind",
    "command",
    "file",
    "file_sha256",
    "evidence",
    "evidence_sha256",
    "spec",
    "datasets",
    "created",
    "report",
)
_MAX_COLUMN_NAME = 200
_MAX_EDGES = 1001


@dataclass(frozen=True)
class Sidecar:
    """A validated sidecar."""

    name: str
    kind: str
    command: str
    file: str
    file_sha256: str
    evidence: str
    evidence_sha256: str
    spec: dict[str, Any]
    datasets: list[str]
    created: str
    report: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"spe_output": SIDECAR_VERSION, **{k: getattr(self, k) for k in _TOP_KEYS[1:]}}


def _fail(name: str, text: str) -> OutputSpecError:
    return OutputSpecError(f"The sidecar of output {name!r} is not valid: {text}.")


# -- value checkers: each returns the value or raises with what it should be ----------------
Check = Callable[[str, str, Any], object]


def _column(out: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_COLUMN_NAME:
        raise _fail(out, f"spec.{key} must be a column name (text), not {value!r}")
    return value


def _column_or_null(out: str, key: str, value: Any) -> str | None:
    return None if value is None else _column(out, key, value)


def _columns(out: str, key: str, value: Any, *, non_empty: bool) -> list[str]:
    if not isinstance(value, list) or (non_empty and not value):
        need = "a non-empty list" if non_empty else "a list"
        raise _fail(out, f"spec.{key} must be {need} of column names")
    return [_column(out, key, v) for v in value]


def _some_columns(out: str, key: str, value: Any) -> list[str]:
    return _columns(out, key, value, non_empty=True)


def _any_columns(out: str, key: str, value: Any) -> list[str]:
    return _columns(out, key, value, non_empty=False)


def _agg(out: str, key: str, value: Any) -> str:
    if value not in AGGS:
        raise _fail(out, f"spec.{key} must be one of {', '.join(AGGS)}, not {value!r}")
    return str(value)


def _text(out: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(out, f"spec.{key} must be text")
    return value


def _edges(out: str, key: str, value: Any) -> list[float]:
    if not isinstance(value, list) or not 2 <= len(value) <= _MAX_EDGES:
        raise _fail(out, f"spec.{key} must be a list of 2 to {_MAX_EDGES} numbers")
    edges = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise _fail(out, f"spec.{key} holds {v!r}, which is not a finite number")
        edges.append(float(v))
    if any(b <= a for a, b in itertools.pairwise(edges)):
        raise _fail(out, f"spec.{key} must increase strictly")
    return edges


def _safe_table(out: str, key: str, value: Any) -> str | None:
    if value is not None and value not in SAFE_METHODS:
        raise _fail(out, f"spec.{key} must be null, 'suppress' or 'round', not {value!r}")
    return value


def _safe_describe(out: str, key: str, value: Any) -> str | None:
    if value not in (None, "suppress"):
        raise _fail(out, f"spec.{key} must be null or 'suppress' for describe, not {value!r}")
    return value


_TABLE: dict[str, Check] = {
    "index": _some_columns,
    "columns": _some_columns,
    "values": _column_or_null,
    "agg": _agg,
    "person_id": _column_or_null,
    "safe": _safe_table,
}
_MODEL: dict[str, Check] = {
    "formula": _text,
    "model": _text,
    "columns": _some_columns,
    "person_id": _column_or_null,
}
SPEC_KEYS: dict[str, dict[str, Check]] = {
    "crosstab": _TABLE,
    "pivot_table": {**_TABLE, "values": _column},
    "hist": {
        "column": _column,
        "edges": _edges,
        "by": _any_columns,
        "person_id": _column_or_null,
        "safe": _safe_table,
    },
    "describe": {
        "columns": _some_columns,
        "by": _any_columns,
        "person_id": _column_or_null,
        "safe": _safe_describe,
    },
    "ols": _MODEL,
    "logit": _MODEL,
    "probit": _MODEL,
    "survival": {
        "duration": _column,
        "event": _column,
        "by": _any_columns,
        "edges": _edges,
        "person_id": _column_or_null,
    },
}


def validate_spec(name: str, command: str, spec: Any) -> dict[str, Any]:
    """The spec of an output of ``command``, every key present, known and of the right type."""
    if not isinstance(spec, dict):
        raise _fail(name, "spec must be an object")
    keys = SPEC_KEYS[command]
    unknown = sorted(set(spec) - set(keys))
    if unknown:
        raise _fail(name, f"spec.{unknown[0]} is not a setting of {command}")
    missing = [k for k in keys if k not in spec]
    if missing:
        raise _fail(name, f"spec.{missing[0]} is missing")
    clean = {key: check(name, key, spec[key]) for key, check in keys.items()}
    if command in ("ols", "logit", "probit") and clean["model"] != command:
        raise _fail(name, f"spec.model is {clean['model']!r} but the command is {command!r}")
    if clean.get("safe") == "round" and clean.get("agg", "count") != "count":
        raise _fail(name, "a rounded safe version exists only for counts")
    if command == "crosstab" and clean["agg"] != "count" and clean["values"] is None:
        raise _fail(name, f"spec.agg {clean['agg']!r} needs spec.values")
    used = used_columns(command, clean)
    twice = sorted({c for c in used if used.count(c) > 1})
    if twice:
        raise _fail(name, f"the column {twice[0]!r} is named twice in the spec")
    if clean["person_id"] is not None and clean["person_id"] in used:
        raise _fail(name, "the person column cannot also be a column of the output")
    return clean


def validate_sidecar(data: Any) -> Sidecar:
    """A Sidecar from the parsed JSON, or OutputSpecError saying what is wrong."""
    if not isinstance(data, dict):
        raise OutputSpecError("The sidecar is not a JSON object; record the output again.")
    raw_name = data.get("name")
    name = raw_name if isinstance(raw_name, str) else "?"
    if not isinstance(raw_name, str) or not SAFE_NAME.match(raw_name) or raw_name.endswith("."):
        raise _fail(
            name if isinstance(raw_name, str) else repr(raw_name),
            "name must use letters, digits, '.', '_' and '-' only, with no folders in it",
        )
    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise _fail(name, f"{unknown[0]!r} is not a sidecar key")
    missing = [k for k in _TOP_KEYS if k not in data]
    if missing:
        raise _fail(name, f"{missing[0]!r} is missing")
    version = data["spe_output"]
    if isinstance(version, bool) or version != SIDECAR_VERSION:
        raise _fail(name, f"spe_output is {version!r}; this platform reads version 1")
    command = data["command"]
    if command not in COMMANDS:
        raise _fail(name, f"{command!r} is not an analysis command ({', '.join(COMMANDS)})")
    if data["kind"] != COMMANDS[command]:
        raise _fail(
            name, f"kind is {data['kind']!r} but a {command} output is a {COMMANDS[command]}"
        )
    if data["file"] != name + CSV_SUFFIX:
        raise _fail(name, f"file must be {name + CSV_SUFFIX!r}, not {data['file']!r}")
    if data["evidence"] != name + EVIDENCE_SUFFIX:
        raise _fail(name, f"evidence must be {name + EVIDENCE_SUFFIX!r}, not {data['evidence']!r}")
    for key in ("file_sha256", "evidence_sha256"):
        if not isinstance(data[key], str) or not _SHA256.match(data[key]):
            raise _fail(name, f"{key} must be 64 lower-case hexadecimal digits")
    datasets = data["datasets"]
    if not isinstance(datasets, list) or not all(
        isinstance(d, str) and SAFE_NAME.match(d) for d in datasets
    ):
        raise _fail(name, "datasets must be a list of dataset names")
    created = data["created"]
    try:
        when = dt.datetime.fromisoformat(created) if isinstance(created, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise _fail(name, "created must be an ISO 8601 time with its time zone")
    if not isinstance(data["report"], dict):
        raise _fail(name, "report must be an object")
    spec = validate_spec(name, command, data["spec"])
    return Sidecar(
        name=name,
        kind=data["kind"],
        command=command,
        file=data["file"],
        file_sha256=data["file_sha256"],
        evidence=data["evidence"],
        evidence_sha256=data["evidence_sha256"],
        spec=spec,
        datasets=list(datasets),
        created=created,
        report=data["report"],
    )


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()
