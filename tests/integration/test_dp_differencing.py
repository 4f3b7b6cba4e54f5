"""A released DP answer is a released output for the disclosure engine (SQLite and PostgreSQL):
the export checks' differencing sees the persons behind each of its cells and flags a later
table that differs from one of them by a few persons."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from spe.db import readonly
from spe.exports.actions import released_tables
from spe.projects.extracts import current_extracts
from spe.projects.service import get_project
from spe.sdc.differencing import PersonSets, find_differencing, hash_person_ids
from spe.storage import data_storage
from tests.integration.dp_world import make_health
from tests.integration.test_dp_budget import ask_inline


def test_a_dp_answer_is_checked_against_like_an_exported_table(world, tmp_path, monkeypatch):
    make_health(tmp_path, monkeypatch, persons=200)
    ask_inline(
        {
            "kind": "count",
            "dataset": "health",
            "epsilon": 0.1,
            "by": ["sex"],
            "where": [["age", ">=", 10]],
        }
    )
    with readonly() as s:
        project = get_project(s, "study")
        tables = released_tables(s, project.id)
        path = data_storage().path(current_extracts(s, project)["health"].path)
    (table,) = [t for t in tables if t.name.startswith("dp:count:")]
    frame = pq.read_table(path).to_pandas()
    women = frame[(frame.sex == "F") & (frame.age >= 10)]["person_id"]
    assert [dict(label) for label in table.labels] == [{"sex": "F"}, {"sex": "M"}]
    expected = np.sort(hash_person_ids(np.asarray(women, dtype=object).astype("S")))
    assert np.array_equal(table.cell(0), expected)
    # A later table whose cell is those women but three: subtracting isolates three persons.
    fewer = expected[3:]
    new = PersonSets([(("group", "almost all women"),)], ["cell"], np.array([0, len(fewer)]), fewer)
    pairs = find_differencing(new, tables, threshold=10)
    assert any(p.released_table == table.name for p in pairs)
