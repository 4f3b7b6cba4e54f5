"""The workspace outbox: each output as ``<name>.csv``, its evidence and its sidecar, atomically.

Each file is written to a hidden temporary name and renamed into place. The sidecar is the
commit record: it is removed first and written last, so an output exists exactly when its sidecar
does, and its CSV and evidence are then complete.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

import pandas as pd

from spe.analysis.data import check_safe_name
from spe.analysis.errors import AnalysisError, OutputSpecError
from spe.analysis.sidecar import (
    CSV_SUFFIX,
    EVIDENCE_SUFFIX,
    SIDECAR_SUFFIX,
    SIDECAR_VERSION,
    utc_now,
    validate_sidecar,
)


def outbox_dir() -> Path:
    """The outbox folder (``SPE_OUTBOX_DIR``), created when missing."""
    from spe.config import get_settings

    path = Path(get_settings().outbox_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AnalysisError(f"The outbox folder {path} cannot be created ({exc}).") from None
    return path


def default_name(command: str) -> str:
    """A fresh name: the command, the UTC time and a random suffix (two kernels never clash)."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    return f"{command}-{stamp}-{secrets.token_hex(3)}"


def _temporary(folder: Path, final: str) -> Path:
    return folder / f".{final}.{secrets.token_hex(4)}.tmp"


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_output(
    name: str,
    *,
    kind: str,
    command: str,
    csv_text: str,
    evidence: Any,
    spec: dict[str, Any],
    datasets: list[str],
    report: dict[str, Any],
) -> Path:
    """Record one output in the outbox; returns the sidecar's path.

    ``evidence`` is a pyarrow Table (the rows the output was computed from).
    """
    import pyarrow.parquet as pq

    check_safe_name(name, "output name")
    folder = outbox_dir()
    csv_name, evidence_name = name + CSV_SUFFIX, name + EVIDENCE_SUFFIX
    sidecar_path = folder / (name + SIDECAR_SUFFIX)
    temps: list[Path] = []
    try:
        csv_tmp = _temporary(folder, csv_name)
        temps.append(csv_tmp)
        _write_durably(csv_tmp, csv_text.encode("utf-8"))
        evidence_tmp = _temporary(folder, evidence_name)
        temps.append(evidence_tmp)
        pq.write_table(evidence, evidence_tmp, compression="zstd")
        with open(evidence_tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        sidecar = {
            "spe_output": SIDECAR_VERSION,
            "name": name,
            "kind": kind,
            "command": command,
            "file": csv_name,
            "file_sha256": sha256_of(csv_tmp),
            "evidence": evidence_name,
            "evidence_sha256": sha256_of(evidence_tmp),
            "spec": spec,
            "datasets": datasets,
            "created": utc_now(),
            "report": report,
        }
        validate_sidecar(sidecar)  # never record what the replay would refuse
        sidecar_tmp = _temporary(folder, sidecar_path.name)
        temps.append(sidecar_tmp)
        text = json.dumps(sidecar, ensure_ascii=False, indent=1, allow_nan=False, default=str)
        _write_durably(sidecar_tmp, text.encode("utf-8"))
        # Unpublish the old output (if any) before its files change under it.
        sidecar_path.unlink(missing_ok=True)
        os.replace(csv_tmp, folder / csv_name)
        os.replace(evidence_tmp, folder / evidence_name)
        os.replace(sidecar_tmp, sidecar_path)
        temps.clear()
    finally:
        for temp in temps:
            with contextlib.suppress(OSError):
                temp.unlink()
    return sidecar_path


def read_sidecar(path: Path) -> dict[str, Any]:
    """The parsed sidecar at ``path`` (not validated)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OutputSpecError(f"The sidecar {Path(path).name} cannot be read ({exc}).") from None
    if not isinstance(data, dict):
        raise OutputSpecError(f"The sidecar {Path(path).name} is not a JSON object.")
    return data


def outbox() -> pd.DataFrame:
    """The outputs recorded in the outbox, oldest first: name, command, status, files."""
    folder = outbox_dir()
    rows: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*" + SIDECAR_SUFFIX)):
        try:
            sidecar = validate_sidecar(read_sidecar(path))
        except OutputSpecError as exc:
            rows.append(
                {
                    "name": path.name[: -len(SIDECAR_SUFFIX)],
                    "command": None,
                    "kind": None,
                    "status": "invalid",
                    "created": None,
                    "file": None,
                    "datasets": [],
                    "problem": exc.message,
                }
            )
            continue
        rows.append(
            {
                "name": sidecar.name,
                "command": sidecar.command,
                "kind": sidecar.kind,
                "status": sidecar.report.get("status"),
                "created": sidecar.created,
                "file": sidecar.file,
                "datasets": sidecar.datasets,
                "problem": None,
            }
        )
    columns = ["name", "command", "kind", "status", "created", "file", "datasets", "problem"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values("created", na_position="last", kind="stable").reset_index(drop=True)
