"""Code lists at ingest: a value outside its column's declared categories, or a kept text value
with a control character, is quarantined with its line and reason; ingest defects of issue 16
(nested Parquet columns, all rows rejected) are refused with one sentence, publish nothing and
leave an audit event."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from spe.audit.models import AuditEvent
from spe.catalogue.models import Dataset, DatasetVersion
from spe.db import transaction
from spe.ingest.pipeline import IngestError, ingest, read_quarantine
from spe.ingest.policy import load_policy
from spe.ingest.store import read_version_at
from spe.storage import data_storage
from tests.conftest import synthetic_numbers

POLICY = """\
dataset: {name}
title: Coded ({name})
holder: Holder Agency
conditions: For tests.
encoding: utf-8
identifiers:
  allow_synthetic: true
columns:
  fnr: {{class: person_id}}
  name: {{class: direct_identifier}}
  municipality: {{class: quasi_identifier, categories: ["0301", "4601"]}}
  year: {{class: attribute, type: int64, categories: [2019, 2020]}}
  note: {{class: attribute}}
"""


def _policy(folder: Path, name: str = "coded"):
    path = folder / f"{name}.yaml"
    path.write_text(POLICY.format(name=name))
    return load_policy(path)


def _csv(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    numbers = synthetic_numbers(len(rows))
    lines = ["fnr,name,municipality,year,note"]
    for number, (name, municipality, year, note) in zip(numbers, rows, strict=True):
        lines.append(f"{number},{name},{municipality},{year},{note}")
    path.write_bytes(("\n".join(lines) + "\n").encode())
    return path


def _quarantine(dataset: str) -> list[str]:
    with transaction() as s:
        version = s.scalar(select(DatasetVersion).join(Dataset).where(Dataset.name == dataset))
        return read_quarantine(s, version).strip().splitlines()


def _events(action: str) -> list[AuditEvent]:
    with transaction() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def test_value_outside_its_code_list_is_quarantined_with_its_line_and_reason(world, tmp_path):
    rows = [("a", "0301", "2019", "x"), ("b", "9999", "2019", "x"), ("c", "4601", "2020", "x")]
    rows += [("d", " 0301", "2020", "x"), ("e", "", "2020", "x")]  # not trimmed; empty is missing
    result = ingest("reviewer", _csv(tmp_path / "c.csv", rows), _policy(tmp_path))
    assert result.accepted == 3
    assert result.rejected == {"not_in_code_list": 2}
    assert result.report["rejected_by_column"] == {"not_in_code_list:municipality": 2}
    lines = _quarantine("coded")
    assert len(lines) == 2
    assert lines[0].startswith("3,")  # the header is line 1: row b is line 3
    assert "municipality '9999' is not in the code list of policy coded.yaml" in lines[0]
    assert lines[1].startswith("5,") and "municipality ' 0301' is not in" in lines[1]
    kept = read_version_at(result.path)
    assert sorted(v for v in kept["municipality"].to_pylist() if v) == ["0301", "4601"]


def test_int_categories_compare_as_numbers(world, tmp_path):
    rows = [("a", "0301", "2019", "x"), ("b", "0301", "+2020", "x"), ("c", "0301", "02019", "x")]
    rows += [("d", "0301", "2018", "x"), ("e", "0301", "20190", "x")]
    result = ingest("reviewer", _csv(tmp_path / "i.csv", rows), _policy(tmp_path))
    assert result.accepted == 3
    assert result.rejected == {"not_in_code_list": 2}
    lines = _quarantine("coded")
    assert "year '2018' is not in the code list" in lines[0]
    assert "year '20190' is not in the code list" in lines[1]
    years = read_version_at(result.path)["year"].to_pylist()
    assert years == [2019, 2020, 2019]


def test_control_characters_in_kept_text_are_quarantined_tab_is_kept(world, tmp_path):
    rows = [
        ("a", "0301", "2019", "plain"),
        ("b", "0301", "2019", "nul\x00inside"),
        ("c", "0301", "2019", "escape\x1b[2J"),
        ("d", "0301", "2019", "c1\u009bcontrol"),
        ("e", "0301", "2019", "del\x7f"),
        ("f", "0301", "2019", '"tab\tinside"'),
        ("g", "0301", "2019", "degree 40°"),  # 0xC2 0xB0: printable, kept
        ("nul\x00in a dropped column", "0301", "2019", "ok"),  # dropped: not checked
    ]
    result = ingest("reviewer", _csv(tmp_path / "ctl.csv", rows), _policy(tmp_path))
    assert result.accepted == 4
    assert result.rejected == {"control_character": 4}
    lines = _quarantine("coded")
    assert [line.split(",")[0] for line in lines] == ["3", "4", "5", "6"]
    assert "note holds the control character U+0000 at character 4" in lines[0]
    assert "U+001B" in lines[1] and "U+009B" in lines[2] and "U+007F" in lines[3]
    notes = read_version_at(result.path)["note"].to_pylist()
    assert notes == ["plain", "tab\tinside", "degree 40°", "ok"]


def test_control_characters_in_parquet_text_are_quarantined(world, tmp_path):
    numbers = synthetic_numbers(3)
    table = pa.table(
        {
            "fnr": numbers,
            "name": ["x"] * 3,
            "municipality": ["0301"] * 3,
            "year": [2019] * 3,
            "note": ["fine", "line\nbreak", "carriage\rreturn"],
        }
    )
    pq.write_table(table, tmp_path / "ctl.parquet")
    result = ingest("reviewer", tmp_path / "ctl.parquet", _policy(tmp_path))
    assert result.accepted == 1 and result.rejected == {"control_character": 2}


@pytest.mark.parametrize(
    "nested",
    [
        pa.array([[1], [2]], pa.list_(pa.int64())),
        pa.array([{"a": 1}, {"a": 2}], pa.struct([("a", pa.int64())])),
        pa.array([[("k", 1)], [("k", 2)]], pa.map_(pa.string(), pa.int64())),
    ],
    ids=["list", "struct", "map"],
)
def test_nested_parquet_column_is_refused_with_a_sentence_naming_it(world, tmp_path, nested):
    table = pa.table(
        {
            "fnr": synthetic_numbers(2),
            "name": ["x", "y"],
            "municipality": ["0301", "4601"],
            "year": [2019, 2020],
            "note": nested,
        }
    )
    pq.write_table(table, tmp_path / "nested.parquet")
    with pytest.raises(IngestError) as caught:
        ingest("reviewer", tmp_path / "nested.parquet", _policy(tmp_path, "nested"))
    message = caught.value.message
    assert message.startswith("nested.parquet has the nested column 'note'")
    assert "internal error" not in message and message.count(". ") == 0
    with transaction() as s:
        assert s.scalar(select(Dataset).where(Dataset.name == "nested")) is None
    (event,) = _events("dataset.ingest_refused")
    assert json.loads(event.details)["sentence"] == message and event.dataset == "nested"


def test_ingest_whose_every_row_is_rejected_publishes_nothing_and_says_so(world, tmp_path):
    policy = _policy(tmp_path)
    good = ingest("reviewer", _csv(tmp_path / "good.csv", [("a", "0301", "2019", "x")]), policy)
    assert good.version == 1
    rows = [("a", "1103", "2019", "x"), ("b", "0301", "1999", "x"), ("c", "5001", "2019", "x")]
    with pytest.raises(IngestError) as caught:
        ingest("reviewer", _csv(tmp_path / "bad.csv", rows), policy)
    assert caught.value.message == (
        "No row of bad.csv was accepted (3 rejected: not_in_code_list in municipality 2, "
        "not_in_code_list in year 1), so nothing was published; fix the extract or the policy "
        "and ingest it again."
    )
    with transaction() as s:
        versions = list(s.scalars(select(DatasetVersion)))
    assert [v.version for v in versions] == [1]  # no empty version became the newest
    leftovers = list(data_storage().root.rglob("bad*")) + [
        p for p in data_storage().root.rglob(".tmp-*")
    ]
    assert leftovers == []
    (event,) = _events("dataset.ingest_refused")
    details = json.loads(event.details)
    assert details["rows_read"] == 3 and details["rejected"] == {"not_in_code_list": 3}
    assert details["source"] == "bad.csv"


def test_parquet_without_rows_publishes_nothing(world, tmp_path):
    table = pa.table(
        {
            "fnr": pa.array([], pa.string()),
            "name": pa.array([], pa.string()),
            "municipality": pa.array([], pa.string()),
            "year": pa.array([], pa.int64()),
            "note": pa.array([], pa.string()),
        }
    )
    pq.write_table(table, tmp_path / "empty.parquet")
    with pytest.raises(IngestError, match=r"^empty.parquet has no data rows; nothing was"):
        ingest("reviewer", tmp_path / "empty.parquet", _policy(tmp_path, "emptypq"))
    with transaction() as s:
        assert s.scalar(select(Dataset).where(Dataset.name == "emptypq")) is None


def test_shipped_policies_take_the_synthetic_registry_without_a_category_rejection(world, tmp_path):
    """The demo's data (spe/ingest/synth.py, spe/dp/synth.py) fits every shipped code list."""
    from spe.dp.synth import write_health_csv
    from spe.ingest.synth import generate_registry

    registry = tmp_path / "registry"
    generate_registry(registry, 3000, seed=5)
    write_health_csv(registry / "population.csv", registry / "health.csv")
    shipped = Path(__file__).resolve().parents[2] / "policies" / "datasets"
    for name in ("population", "income", "education", "employment", "health"):
        text = (shipped / f"{name}.yaml").read_text()
        policy_path = tmp_path / f"{name}.yaml"
        policy_path.write_text(text.replace("Demo Registry Agency", "Holder Agency"))
        policy = load_policy(policy_path)
        assert any(c.categories for c in policy.columns), name
        result = ingest("reviewer", registry / f"{name}.csv", policy)
        assert result.accepted > 0
        assert "not_in_code_list" not in result.rejected, (name, result.rejected)
        assert "control_character" not in result.rejected, (name, result.rejected)
