"""Differencing: a new table against the tables already released from the same project."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from spe.sdc import (
    ReleasedTable,
    SafeVersionError,
    Verdict,
    check_table,
    hash_person_ids,
    safe_version,
)


@pytest.fixture(scope="module")
def population() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 400
    return pd.DataFrame(
        {
            "pid": [f"person-{i:05d}" for i in range(n)],
            "sex": rng.choice(["F", "M"], n),
            "region": rng.choice(["North", "South"], n),
            "age": rng.integers(20, 80, n),
            "everyone": "all",
        }
    )


@pytest.fixture(scope="module")
def by_sex(population: pd.DataFrame) -> ReleasedTable:
    report = check_table(population, "sex", "everyone", person_id="pid")
    assert report.status == Verdict.PASS
    return ReleasedTable.from_report(report, "persons by sex")


def test_a_subpopulation_three_persons_smaller_fails_and_names_the_pair(
    population: pd.DataFrame, by_sex: ReleasedTable
) -> None:
    three_women = population[population.sex == "F"].pid.iloc[:3]
    sub = population[~population.pid.isin(three_women)]
    report = check_table(sub, "sex", "everyone", person_id="pid", released=[by_sex])
    assert report.status == Verdict.FAIL
    women = next(c for c in report.cells if c.index == ("F",))
    (failing,) = women.failing
    assert failing.rule == "differencing"
    assert failing.numbers == {
        "released_table": "persons by sex",
        "released_cell": "sex=F, everyone=all",
        "difference": 3,
        "threshold": 10,
    }
    assert "isolates 3 persons, fewer than 10" in failing.sentence
    men = next(c for c in report.cells if c.index == ("M",))
    assert men.status == Verdict.PASS
    pair = next(p for p in report.differencing if p.kind == "cell")
    assert pair.to_dict()["cell"] == {"sex": "F", "everyone": "all"}
    assert pair.to_dict()["released_cell"] == {"sex": "F", "everyone": "all"}
    # The grand total (397 of 400 persons) is a derivable margin: it fails too, as a whole.
    margins = [o for o in report.table_outcomes if o.verdict == Verdict.FAIL]
    assert [o.numbers["margin"] for o in margins] == ["grand total"]
    assert report.to_dict()["differencing"][0]["released_table"] == "persons by sex"


def test_a_larger_population_by_a_few_persons_fails_too(
    population: pd.DataFrame, by_sex: ReleasedTable
) -> None:
    extra = pd.DataFrame(
        {
            "pid": ["new-1", "new-2"],
            "sex": ["M", "M"],
            "region": "North",
            "age": 30,
            "everyone": "all",
        }
    )
    report = check_table(
        pd.concat([population, extra]), "sex", "everyone", person_id="pid", released=[by_sex]
    )
    men = next(c for c in report.cells if c.index == ("M",))
    (failing,) = men.failing
    assert "contains cell sex=M, everyone=all" in failing.sentence
    assert failing.numbers["difference"] == 2


def test_unrelated_and_identical_tables_pass(
    population: pd.DataFrame, by_sex: ReleasedTable
) -> None:
    same = check_table(population, "sex", "everyone", person_id="pid", released=[by_sex])
    assert same.status == Verdict.PASS  # a difference of 0 reveals nobody
    young = population[population.age < 50]
    other = check_table(young, "region", "everyone", person_id="pid", released=[by_sex])
    assert other.status == Verdict.PASS
    (outcome,) = other.table_outcomes
    assert outcome.rule == "differencing" and outcome.verdict == Verdict.PASS


def test_a_difference_of_threshold_persons_or_more_passes(
    population: pd.DataFrame, by_sex: ReleasedTable
) -> None:
    ten_women = population[population.sex == "F"].pid.iloc[:10]
    sub = population[~population.pid.isin(ten_women)]
    report = check_table(sub, "sex", "everyone", person_id="pid", released=[by_sex])
    assert report.status == Verdict.PASS


def test_a_margin_of_the_new_table_is_checked_against_released_cells(
    population: pd.DataFrame, by_sex: ReleasedTable
) -> None:
    two_women = population[population.sex == "F"].pid.iloc[:2]
    sub = population[~population.pid.isin(two_women)]
    report = check_table(sub, "sex", "region", person_id="pid", released=[by_sex])
    # No single cell is within 10 persons of a released cell, but the row total of women is.
    assert all("differencing" not in {o.rule for o in c.failing} for c in report.cells)
    assert report.status == Verdict.FAIL
    margin = next(o for o in report.table_outcomes if o.verdict == Verdict.FAIL)
    assert margin.numbers["margin"] == "row total"
    assert margin.numbers["cell"] == "sex=F"
    with pytest.raises(SafeVersionError, match="hiding cells cannot change a total"):
        safe_version(report)


def test_overlapping_but_not_nested_cells_are_not_a_differencing_pair() -> None:
    released = ReleasedTable.from_person_sets("t1", {"a": [f"p{i}" for i in range(100)]})
    df = pd.DataFrame({"pid": [f"p{i}" for i in range(2, 102)], "x": "x", "y": "y"})
    report = check_table(df, "x", "y", person_id="pid", released=[released])
    assert report.status == Verdict.PASS


def test_without_a_person_column_differencing_goes_to_review(
    population: pd.DataFrame, by_sex: ReleasedTable
) -> None:
    report = check_table(population, "sex", "everyone", released=[by_sex])
    (outcome,) = report.table_outcomes
    assert outcome.verdict == Verdict.REVIEW
    assert "give person_id" in outcome.sentence
    assert report.status == Verdict.REVIEW


def test_released_cells_that_were_suppressed_are_not_kept(population: pd.DataFrame) -> None:
    report = check_table(population, "sex", "region", person_id="pid")
    mask = np.ones(report.shape, dtype=bool)
    mask[0, 0] = False
    released = ReleasedTable.from_report(report, "t", released_cells=mask)
    labels = set(released.labels)
    assert report.label(0) not in labels
    assert report.label(1) in labels
    assert (("sex", "F"),) in labels  # the row total is kept
    assert () in labels  # and the grand total


def test_released_tables_round_trip_through_bytes(by_sex: ReleasedTable) -> None:
    again = ReleasedTable.from_bytes(by_sex.to_bytes())
    assert again.name == by_sex.name
    assert again.labels == by_sex.labels
    assert (again.offsets == by_sex.offsets).all()
    assert (again.persons == by_sex.persons).all()
    for i in range(len(again)):
        cell = again.cell(i)
        assert (np.diff(cell) > 0).all()  # sorted, distinct
        assert cell.dtype == np.int64


def test_person_hashes_do_not_depend_on_id_type_or_padding() -> None:
    assert (hash_person_ids([123, 45]) == hash_person_ids(["123", "45"])).all()
    assert (hash_person_ids(np.array(["ab"], dtype="S8")) == hash_person_ids(["ab"])).all()
    hashed = hash_person_ids([f"{i:032x}" for i in range(10_000)])
    assert len(np.unique(hashed)) == 10_000


def test_integer_person_ids_match_released_string_ids(population: pd.DataFrame) -> None:
    df = population.assign(pid=np.arange(len(population)))
    released = ReleasedTable.from_report(check_table(df, "sex", "everyone", person_id="pid"), "t")
    as_text = df.assign(pid=df.pid.astype(str))
    dropped = as_text[as_text.sex == "F"].pid.iloc[:4]
    report = check_table(
        as_text[~as_text.pid.isin(dropped)], "sex", "everyone", person_id="pid", released=[released]
    )
    assert report.status == Verdict.FAIL


def test_many_released_tables_are_checked_quickly() -> None:
    rng = np.random.default_rng(5)
    n = 50_000
    df = pd.DataFrame(
        {
            "pid": rng.permutation(n),
            "a": rng.integers(0, 10, n),
            "b": rng.integers(0, 10, n),
            "c": rng.integers(0, 5, n),
        }
    )
    released = []
    for k in range(100):
        sub = df.sample(frac=0.9, random_state=k)
        released.append(
            ReleasedTable.from_report(check_table(sub, "a", "b", person_id="pid"), f"t{k}")
        )
    start = time.perf_counter()
    report = check_table(df, "a", ["b", "c"], person_id="pid", released=released)
    elapsed = time.perf_counter() - start
    assert report.n_cells == 500
    assert elapsed < 2, f"differencing against 100 released tables took {elapsed:.1f} s"
