"""The synthetic registry: deterministic, valid unless listed, defective exactly where listed."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from spe.ingest import synth
from spe.ingest.identifiers import (
    CODE_OF_KIND,
    REASON_CODES,
    IdentifierRules,
    IdKind,
    birth_date,
    check_fnr_array,
    check_orgnr_array,
)
from spe.ingest.synth import generate_registry

SYNTHETIC_ONLY = IdentifierRules(allow_synthetic=True)
EVERY_KIND = IdentifierRules(allow_synthetic=True, allow_d_number=True, allow_h_number=True)
STRING_COLUMNS = ("fnr", "municipality", "employer_orgnr", "level", "industry", "name", "address")
PERSONS = 2000
SEED = 11


class Registry:
    def __init__(self, folder: Path, manifest: dict[str, Any]) -> None:
        self.folder = folder
        self.manifest = manifest

    def table(self, name: str) -> pa.Table:
        header = (self.folder / name).read_text(encoding="utf-8").split("\n", 1)[0].split(",")
        types = {c: pa.string() for c in STRING_COLUMNS if c in header}
        return pacsv.read_csv(
            self.folder / name, convert_options=pacsv.ConvertOptions(column_types=types)
        )

    def lines(self, name: str) -> list[str]:
        """Data lines, so that lines[row - 1] is the manifest's 1-based row."""
        return (self.folder / name).read_text(encoding="utf-8").splitlines()[1:]

    def defects(self, **match: Any) -> list[dict[str, Any]]:
        return [d for d in self.manifest["defects"] if all(d.get(k) == v for k, v in match.items())]


def _generate(
    folder: Path, persons: int, seed: int, chunk: int | None = None, progress: Any = None
) -> Registry:
    with pytest.MonkeyPatch.context() as patch:
        if chunk is not None:
            patch.setattr(synth, "CHUNK_PERSONS", chunk)
        manifest = generate_registry(folder, persons, seed, progress)
    return Registry(folder, manifest)


@pytest.fixture(scope="module", params=["one_chunk", "three_chunks"])
def registry(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """2,000 persons in one chunk; 30,000 in three (row numbers cross chunk boundaries)."""
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "one_chunk":
        return _generate(folder, PERSONS, SEED)
    return _generate(folder, 30_000, SEED, chunk=11_000)


# --------------------------------------------------------------------------- determinism


def _file_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    first = _generate(tmp_path / "a", 3000, 5, chunk=1000)
    second = _generate(tmp_path / "b", 3000, 5, chunk=1000)
    assert _file_bytes(first.folder) == _file_bytes(second.folder)
    assert len(_file_bytes(first.folder)) == 5


def test_different_seeds_give_different_files(tmp_path: Path) -> None:
    first = _file_bytes(_generate(tmp_path / "a", 500, 5).folder)
    second = _file_bytes(_generate(tmp_path / "b", 500, 6).folder)
    for name in ("population.csv", "income.csv", "education.csv", "employment.csv"):
        assert first[name] != second[name]


# --------------------------------------------------------------------------- the manifest


def test_manifest_counts_and_hashes_match_the_files(registry: Registry) -> None:
    manifest = registry.manifest
    assert json.loads((registry.folder / "manifest.json").read_text(encoding="utf-8")) == manifest
    persons = manifest["persons"]
    assert manifest["seed"] == SEED and persons in (PERSONS, 30_000)
    assert manifest["generator_version"] == synth.GENERATOR_VERSION
    assert set(manifest["files"]) == set(synth.COLUMNS)
    for name, info in manifest["files"].items():
        data = (registry.folder / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == info["sha256"]
        assert len(registry.lines(name)) == info["rows"]
        assert data.split(b"\n", 1)[0].decode() == ",".join(info["columns"])
        assert data.decode("utf-8")  # UTF-8 throughout
    population_rows = manifest["files"]["population.csv"]["rows"]
    assert population_rows == persons + len(registry.defects(kind="duplicate_row"))
    assert manifest["defect_rates"]["bad_check_digit"] == synth.BAD_CHECK_DIGIT_RATE


def test_manifest_lists_every_kind_of_defect(registry: Registry) -> None:
    totals = registry.manifest["defect_totals"]
    assert totals["d_number"] == synth.D_NUMBER_COUNT
    assert totals["h_number"] == synth.H_NUMBER_COUNT
    assert totals["malformed_ten_digits"] + totals["malformed_letter"] == synth.MALFORMED_COUNT
    for kind in ("bad_check_digit", "duplicate_row", "missing_value"):
        assert totals[kind] >= 1
    assert {d["column"] for d in registry.defects(kind="missing_value")} == {
        "fnr",
        "municipality",
    }


# --------------------------------------------------------------------------- identifiers


def test_every_fnr_not_listed_is_a_valid_unique_synthetic_number(registry: Registry) -> None:
    population = registry.table("population.csv")
    reasons, kinds = check_fnr_array(population["fnr"], SYNTHETIC_ONLY)
    listed = {d["row"] for d in registry.defects(column="fnr")}
    copies = {d["row"] for d in registry.defects(kind="duplicate_row")}
    clean = np.array([row not in listed for row in range(1, population.num_rows + 1)])
    assert (reasons[clean] == 0).all()
    assert (kinds[clean] == CODE_OF_KIND[IdKind.SYNTHETIC]).all()
    assert clean.sum() == population.num_rows - len(listed)
    distinct = [
        v
        for row, v in enumerate(population["fnr"].to_pylist(), start=1)
        if row not in listed and row not in copies
    ]
    assert len(distinct) == len(set(distinct))


def test_every_listed_defect_is_there_and_caught_with_its_reason(registry: Registry) -> None:
    population = registry.table("population.csv")
    lines = registry.lines("population.csv")
    fnr = population["fnr"].to_pylist()
    municipality = population["municipality"].to_pylist()
    reasons, _ = check_fnr_array(population["fnr"], SYNTHETIC_ONLY)
    every_kind, _ = check_fnr_array(population["fnr"], EVERY_KIND)
    for defect in registry.manifest["defects"]:
        assert defect["file"] == "population.csv"
        row = defect["row"]
        if defect["column"] == "fnr":
            assert (fnr[row - 1] or None) == defect["value"]
            assert REASON_CODES[int(reasons[row - 1])] == defect["expected_reason"], defect
            if defect["kind"] in ("d_number", "h_number"):
                assert every_kind[row - 1] == 0  # valid numbers, refused only by policy
        elif defect["column"] == "municipality":
            assert municipality[row - 1] in (None, "")
            assert lines[row - 1].endswith(",")
        else:
            assert defect["kind"] == "duplicate_row"
            assert defect["duplicate_of"] < row
            assert lines[row - 1] == lines[defect["duplicate_of"] - 1]
    missing_fnr = registry.defects(kind="missing_value", column="fnr")
    assert all(lines[d["row"] - 1].startswith(",") for d in missing_fnr)


def test_only_listed_rows_are_duplicates(registry: Registry) -> None:
    lines = registry.lines("population.csv")
    seen: dict[str, int] = {}
    duplicates = {}
    for row, line in enumerate(lines, start=1):
        if line in seen:
            duplicates[row] = seen[line]
        else:
            seen[line] = row
    listed = {d["row"]: d["duplicate_of"] for d in registry.defects(kind="duplicate_row")}
    assert duplicates == listed


def test_birth_date_and_sex_agree_with_the_number(registry: Registry) -> None:
    population = registry.table("population.csv")
    reasons, _ = check_fnr_array(population["fnr"], EVERY_KIND)
    births = population["birth_date"].to_pylist()
    for i, (number, sex) in enumerate(
        zip(population["fnr"].to_pylist(), population["sex"].to_pylist(), strict=True)
    ):
        if reasons[i] == 0:
            assert birth_date(number) == births[i]
            assert int(number[8]) % 2 == (1 if sex == "M" else 0)
    assert min(births) >= synth.OLDEST_BIRTH and max(births) <= synth.REFERENCE_DATE


def test_other_files_use_the_persons_valid_identifiers(registry: Registry) -> None:
    population = registry.table("population.csv")
    reasons, _ = check_fnr_array(population["fnr"], EVERY_KIND)
    known = set(np.array(population["fnr"].to_pylist(), dtype=object)[reasons == 0])
    for name in ("income.csv", "education.csv", "employment.csv"):
        column = registry.table(name)["fnr"]
        assert (check_fnr_array(column, EVERY_KIND)[0] == 0).all(), name
        # persons whose population row is defective still appear elsewhere under their number
        unknown = set(column.to_pylist()) - known
        assert len(unknown) <= len(registry.defects(column="fnr")), name


# --------------------------------------------------------------------------- contents


def _municipality_of(registry: Registry) -> dict[str, str]:
    population = registry.table("population.csv")
    return {
        f: m
        for f, m in zip(
            population["fnr"].to_pylist(), population["municipality"].to_pylist(), strict=True
        )
        if f and m
    }


def test_capital_income_is_dominated_by_a_few_earners_somewhere(registry: Registry) -> None:
    municipality = _municipality_of(registry)
    income = registry.table("income.csv")
    cells: dict[tuple[str, int], list[int]] = defaultdict(list)
    for f, year, capital in zip(
        income["fnr"].to_pylist(),
        income["year"].to_pylist(),
        income["capital_income"].to_pylist(),
        strict=True,
    ):
        if f in municipality:
            cells[municipality[f], year].append(capital)
    dominated = [
        cell
        for cell, values in cells.items()
        if len(values) >= 3 and sum(sorted(values)[-2:]) >= 0.9 * sum(values) > 0
    ]
    assert dominated, "no municipality-year where the top two hold 90 % of capital income"
    assert set(income["year"].to_pylist()) == set(synth.INCOME_YEARS)
    assert min(income["wage_income"].to_pylist()) == 0  # non-workers


def test_small_municipalities_give_small_cells(registry: Registry) -> None:
    population = registry.table("population.csv")
    counts: dict[str, int] = defaultdict(int)
    for code in population["municipality"].to_pylist():
        if code:
            counts[code] += 1
    assert all(re.fullmatch(r"\d{4}", code) for code in counts)
    assert set(counts) <= {code for code, _, _ in synth.MUNICIPALITIES}
    assert counts["0301"] > 300
    assert any(0 < count < 10 for count in counts.values())


def test_employment_has_valid_employers_and_sane_spells(registry: Registry) -> None:
    employment = registry.table("employment.csv")
    assert (check_orgnr_array(employment["employer_orgnr"]) == 0).all()
    assert all(re.fullmatch(r"\d\d\.\d\d\d", code) for code in employment["industry"].to_pylist())
    starts = employment["start_date"].to_pylist()
    ends = employment["end_date"].to_pylist()
    assert any(end is None for end in ends)  # ongoing spells
    assert all(end is None or start <= end for start, end in zip(starts, ends, strict=True))
    assert all(dt.date(2000, 1, 1) <= start <= synth.REFERENCE_DATE for start in starts)
    spells: dict[str, int] = defaultdict(int)
    for number in employment["fnr"].to_pylist():
        spells[number] += 1
    assert max(spells.values()) <= 3


def test_education_levels_are_nus_codes(registry: Registry) -> None:
    education = registry.table("education.csv")
    levels = education["level"].to_pylist()
    assert set(levels) <= {str(level) for level in range(9)}
    assert len(set(levels)) >= 6
    years = education["completed_year"].to_pylist()
    assert all((year is None) == (level == "0") for year, level in zip(years, levels, strict=True))


# --------------------------------------------------------------------------- progress and speed


def test_progress_is_reported_after_each_chunk(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    _generate(
        tmp_path, 1000, 1, chunk=400, progress=lambda done, total: calls.append((done, total))
    )
    assert calls == [(400, 1000), (800, 1000), (1000, 1000)]


def test_refuses_an_empty_registry(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one person"):
        generate_registry(tmp_path, 0, 1)


def test_a_tiny_registry_still_works(tmp_path: Path) -> None:
    registry = _generate(tmp_path, 3, 1)
    assert registry.manifest["files"]["population.csv"]["rows"] >= 3


def test_a_small_registry_is_fast(tmp_path: Path) -> None:
    started = time.perf_counter()
    generate_registry(tmp_path, PERSONS, 2)
    assert time.perf_counter() - started < 3.0


@pytest.mark.slow
def test_a_million_persons_timing(tmp_path: Path) -> None:
    started = time.perf_counter()
    manifest = generate_registry(tmp_path, 1_000_000, 1)
    elapsed = time.perf_counter() - started
    print(f"generate_registry: 1,000,000 persons in {elapsed:.1f} s")
    assert manifest["files"]["population.csv"]["rows"] > 1_000_000
    population = pacsv.read_csv(
        tmp_path / "population.csv",
        convert_options=pacsv.ConvertOptions(column_types={"fnr": pa.string()}),
    )
    reasons, _ = check_fnr_array(population["fnr"], SYNTHETIC_ONLY)
    assert (reasons != 0).sum() == len([d for d in manifest["defects"] if d["column"] == "fnr"])
    assert elapsed < 60
