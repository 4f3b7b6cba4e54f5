"""A small aggregate-only dataset ('health') granted to project 'study', for the DP tests.

Its policy is written into a policies folder of the test's own (terms and disclosure rules are
the repository's), which SPE_POLICIES_DIR points at.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, synthetic_numbers

HEALTH_POLICY = """\
dataset: health
title: Health survey
description: Test health survey, one row per person.
holder: Holder Agency
conditions: For tests.
access: aggregate_only
one_row_per_person: true
encoding: utf-8
identifiers:
  allow_synthetic: true
  allow_d_number: true
columns:
  fnr: {{class: person_id}}
  sex: {{class: quasi_identifier, categories: [F, M]}}
  county: {{class: quasi_identifier, categories: ["03", "46", "50"]}}
  age: {{class: attribute, type: int64}}
  bmi: {{class: attribute, type: float64}}
  diabetes: {{class: attribute, categories: ["0", "1"]}}
  visits: {{class: attribute, type: int64}}
dp:
  epsilon_total: {total}
  variables:
    sex: {{categories: [F, M]}}
    county: {{categories: ["03", "46", "50"]}}
    age: {{min: 0, max: 110}}
    bmi: {{min: 10, max: 60}}
    diabetes: {{categories: ["0", "1"]}}
"""
VARIABLES = ["sex", "county", "age", "bmi", "diabetes", "visits"]


def policies_folder(base: Path, total: float = 1.0) -> Path:
    folder = base / "policies"
    (folder / "datasets").mkdir(parents=True, exist_ok=True)
    for part in ("terms", "sdc"):
        if not (folder / part).exists():
            os.symlink(REPO / "policies" / part, folder / part)
    (folder / "datasets" / "health.yaml").write_text(HEALTH_POLICY.format(total=total))
    return folder


def write_health_csv(path: Path, persons: int) -> Path:
    numbers = synthetic_numbers(persons, start=100_000)
    lines = ["fnr,sex,county,age,bmi,diabetes,visits"]
    for i, number in enumerate(numbers):
        lines.append(
            f"{number},{'FM'[i % 2]},{['03', '46', '50'][i % 3]},{i % 90},"
            f"{20 + (i % 17) * 0.5},{int(i % 7 == 0)},{i % 5}"
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def make_health(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, persons: int = 300, total: float = 1.0
) -> dict[str, Any]:
    """Ingest 'health' (aggregate-only), grant it to the approved project 'study', extract it;
    'researcher' has accepted the terms. Needs the ``world`` (and, for rows, ``people``)."""
    from spe.accounts.service import accept_terms, get_user
    from spe.config import reset_settings
    from spe.db import transaction
    from spe.ingest.pipeline import ingest
    from spe.ingest.policy import load_policy
    from spe.projects.extracts import extract, grant_dataset
    from spe.projects.models import ProjectStatus
    from spe.projects.service import approve_project, get_project

    folder = policies_folder(tmp_path, total)
    monkeypatch.setenv("SPE_POLICIES_DIR", str(folder))
    reset_settings()
    policy = load_policy(folder / "datasets" / "health.yaml")
    ingest("reviewer", write_health_csv(tmp_path / "health.csv", persons), policy)
    with transaction() as s:
        study = get_project(s, "study")
        reviewer = get_user(s, "reviewer")
        grant_dataset(s, reviewer, study, "health", VARIABLES)
        if study.status != ProjectStatus.APPROVED:
            approve_project(s, reviewer, study)
        accept_terms(s, get_user(s, "researcher"))
    extract("study", "health")
    return {"policies": folder, "persons": persons}
