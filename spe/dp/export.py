"""DP answers taken out of SPE: the server's half. A ``<name>.dp.json`` in an export request
names a query of the ledger; what leaves is the answer the ledger recorded (noisy figures,
intervals, epsilon, mechanism), written here as CSV, never anything the workspace wrote."""

from __future__ import annotations

import csv
import io
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from spe.dp.errors import DPError, DPPolicyError
from spe.dp.models import DPQuery
from spe.projects.models import Project

MARKER = "spe_dp_answer"
FORMAT_VERSION = 1
SUFFIX = ".dp.json"


@dataclass(frozen=True)
class DPExport:
    """What the export check releases for a DP answer: the CSV it writes itself, a small report
    for the review record, and whether the dataset's policy lets it leave without reviewers."""

    csv: bytes
    report: dict[str, Any] = field(default_factory=dict)
    auto_release_allowed: bool = False

    @property
    def datasets(self) -> list[str]:
        """The dataset the answer is about (the export request's datasets)."""
        return [str(self.report["dataset"])] if self.report.get("dataset") else []


def read_reference(data: bytes) -> str:
    """The query id in a ``.dp.json`` file's bytes; DPError when it is not one."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DPError(
            "This .dp.json file is not a saved DP answer; save answers with answer.save(name)."
        ) from None
    if (
        not isinstance(doc, dict)
        or set(doc) != {MARKER, "query"}
        or doc[MARKER] != FORMAT_VERSION
        or not isinstance(doc["query"], str)
    ):
        raise DPError(
            'A .dp.json file holds exactly {"spe_dp_answer": 1, "query": "<query id>"}; save '
            "answers with answer.save(name)."
        )
    return str(doc["query"])


def _not_ours(project: Project, query_id: object) -> DPError:
    # One sentence for unknown ids and other projects' queries: never say which it was.
    return DPError(
        f"{str(query_id)[:64]!r} is not a DP query answered in project {project.slug}; export "
        "only answers your project received (answer.save(name) records the right id)."
    )


def exported_answer(session: Session, project: Project | str, query_id: str) -> DPExport:
    """The recorded answer of ``query_id`` as CSV, if it is an answered query of ``project``."""
    from spe.dp.service import _project, dataset_policy

    project = _project(session, project)
    try:
        key = uuid.UUID(str(query_id))
    except ValueError:
        raise _not_ours(project, query_id) from None
    row = session.get(DPQuery, key)
    if row is None or row.project_id != project.id:
        raise _not_ours(project, query_id)
    if row.status != "released":
        raise DPError(
            f"The DP query {query_id} was refused (no budget was spent on it), so it has no "
            "answer to export; export an answered query."
        )
    answer = json.loads(row.result)
    dataset = str(answer.get("dataset") or json.loads(row.spec).get("dataset"))
    try:
        policy = dataset_policy(dataset)
        assert policy.dp is not None
        allowed, reason = policy.dp.auto_release, str(policy.path)
    except DPPolicyError as exc:
        allowed, reason = False, exc.message
    report = {
        "kind": "dp_answer",
        "query": str(key),
        "dataset": dataset,
        "query_kind": answer["kind"],
        "spec": json.loads(row.spec),
        "epsilon": answer["epsilon"],
        "mechanism": answer["mechanism"],
        "noise_scale": answer.get("noise_scale"),
        "asked_by": row.username,
        "asked_at": row.created_at.isoformat(),
        "cells": len(answer.get("values") or []),
        "auto_release": allowed,
        "decided_by": (
            f"the dataset policy allows DP answers out without review ({reason})"
            if allowed
            else f"the dataset policy sends DP answers to reviewers ({reason})"
        ),
        "computed_by": "the server (DP ledger): the answer it gave, noisy figures only",
    }
    return DPExport(answer_csv(answer), report, allowed)


def _cell(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else str(value)


def answer_csv(answer: dict[str, Any]) -> bytes:
    """One row per cell: its labels, the noisy value and 95 % interval, and the query's kind,
    dataset, epsilon, mechanism and noise scale (the same on every row)."""
    by = [str(b) for b in answer.get("by") or []]
    values = list(answer.get("values") or [])
    labels = answer.get("labels") or [[] for _ in values]
    intervals = answer.get("interval95")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = [*by, "value"]
    if intervals:
        header += ["low95", "high95"]
    header += ["kind", "dataset", "epsilon", "mechanism", "noise_scale", "query"]
    writer.writerow(header)
    for i, value in enumerate(values):
        row = [_cell(v) for v in (labels[i] if i < len(labels) else [])][: len(by)]
        row += [""] * (len(by) - len(row))
        row.append(_cell(value))
        if intervals:
            row += [_cell(intervals[i][0]), _cell(intervals[i][1])]
        row += [
            _cell(answer.get("kind")),
            _cell(answer.get("dataset")),
            _cell(answer.get("epsilon")),
            _cell(answer.get("mechanism")),
            _cell(answer.get("noise_scale")),
            _cell(answer.get("query")),
        ]
        writer.writerow(row)
    return out.getvalue().encode("utf-8")
