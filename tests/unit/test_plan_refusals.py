"""Plans the validator refuses, with the sentence it says, and plans that try to read elsewhere.

Written from where a hostile researcher stands: the plan document is theirs, byte for byte.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from spe.analysis.plan import (
    Catalogue,
    ColumnInfo,
    PlanError,
    SourceInfo,
    evaluate,
    plan_hash,
    validate,
)
from tests.unit.test_plan_evaluate import make_extracts


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    return make_extracts(tmp_path_factory.mktemp("extracts"))


INCOME: dict[str, Any] = {"op": "scan", "dataset": "income", "version": 3, "columns": None}
COUNT = {
    "command": "crosstab",
    "index": ["county"],
    "columns": ["year"],
    "values": None,
    "agg": "count",
    "safe": None,
}


def plan(frame: dict[str, Any] = INCOME, output: dict[str, Any] = COUNT, **top: Any) -> dict:
    return {"spe_plan": 1, "project": "demo-project", "frame": frame, "output": output, **top}


def refused(document: Any, catalogue: Catalogue) -> str:
    with pytest.raises(PlanError) as caught:
        validate(document, catalogue)
    message = caught.value.message
    assert message.endswith(".") and "\n" not in message and "Traceback" not in message
    return message


def where(condition: dict[str, Any]) -> dict[str, Any]:
    return {"op": "filter", "input": INCOME, "where": condition}


# -- sources ---------------------------------------------------------------------------------
def test_a_plan_from_another_project_is_refused(catalogue: Catalogue) -> None:
    document = {**plan(), "project": "other-project"}
    assert refused(document, catalogue) == (
        "This plan was made in project 'other-project', not in 'demo-project'; build it again "
        "in this project's workspace."
    )


def test_an_unknown_dataset_is_refused(catalogue: Catalogue) -> None:
    frame = {**INCOME, "dataset": "health"}
    assert refused(plan(frame), catalogue) == (
        "The dataset 'health' is not one of this project's extracts (income, population); "
        "scan one of those."
    )


def test_another_version_of_a_dataset_is_refused(catalogue: Catalogue) -> None:
    frame = {**INCOME, "version": 2}
    assert refused(plan(frame), catalogue) == (
        "version 2 of income is not this project's extract (it has version 3); scan it again."
    )


def test_an_ungranted_column_is_refused(catalogue: Catalogue) -> None:
    frame = {**INCOME, "columns": ["wage", "national_id"]}
    message = refused(plan(frame), catalogue)
    assert message.startswith("The column 'national_id' of income is not granted to this project")


# -- the closed language -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (
            {"op": "sql", "query": "SELECT * FROM read_csv('/etc/passwd')"},
            "There is no frame operation 'sql'; use scan, filter, derive, select, join, window "
            "or quantile_group.",
        ),
        (
            where({"fn": "max", "args": [{"col": "wage"}]}),
            "There is no function 'max' in the plan language; the functions are",
        ),
        (
            {
                "op": "window",
                "input": INCOME,
                "order_by": "year",
                "columns": {"top": {"fn": "max", "of": "wage", "n": 1}},
            },
            "There is no window function 'max'; use lag, lead, diff or cum_sum",
        ),
    ],
)
def test_an_operation_outside_the_language_is_refused(
    catalogue: Catalogue, frame: dict[str, Any], expected: str
) -> None:
    assert refused(plan(frame), catalogue).startswith(expected)


def test_extra_fields_are_refused_at_every_level(catalogue: Catalogue) -> None:
    assert refused({**plan(), "comment": "x"}, catalogue) == (
        "The plan has the unknown field 'comment'; a plan holds only the fields of its language."
    )
    frame = {**INCOME, "pickle": "gASVAAAAAAAAAAA="}
    assert "unknown field 'pickle'" in refused(plan(frame), catalogue)
    output = {**COUNT, "labels": ["a"]}
    assert "unknown field 'labels'" in refused(plan(output=output), catalogue)
    condition = {"fn": "eq", "args": [{"col": "year"}, {"lit": 2020}], "udf": "lambda x: x"}
    assert "unknown field 'udf'" in refused(plan(where(condition)), catalogue)


def test_missing_fields_and_wrong_types_are_refused(catalogue: Catalogue) -> None:
    frame = {k: v for k, v in INCOME.items() if k != "version"}
    assert refused(plan(frame), catalogue) == "The scan lacks the field 'version'."
    assert "whole number" in refused(plan({**INCOME, "version": "3"}), catalogue)
    assert "not a column name" in refused(plan({**INCOME, "columns": [3]}), catalogue)


@pytest.mark.parametrize("text", ["__import__('os')", "1; DROP TABLE income", "x' OR '1'='1"])
def test_code_looking_strings_are_refused_everywhere(catalogue: Catalogue, text: str) -> None:
    # as a literal compared with a category column: not one of its categories
    literal = where({"fn": "eq", "args": [{"col": "county"}, {"lit": text}]})
    assert refused(plan(literal), catalogue).startswith(f"{text!r} is not a category of 'county'")
    # as a literal value of a derived column: no free text at all
    derive = {"op": "derive", "input": INCOME, "columns": {"note": {"lit": text}}}
    assert refused(plan(derive), catalogue).startswith("Text is allowed only as a declared")
    # as a column name, a dataset name and a derived column's name
    column = where({"fn": "is_null", "args": [{"col": text}]})
    assert "is not a column name" in refused(plan(column), catalogue)
    assert "is not a dataset name" in refused(plan({**INCOME, "dataset": text}), catalogue)
    named = {"op": "derive", "input": INCOME, "columns": {text: {"col": "wage"}}}
    assert "is not a column name" in refused(plan(named), catalogue)
    # as a function or an output command
    assert "There is no function" in refused(plan(where({"fn": text, "args": []})), catalogue)
    assert "no output command" in refused(plan(output={"command": text}), catalogue)


def test_a_string_literal_must_be_a_declared_category(catalogue: Catalogue) -> None:
    condition = {"fn": "is_in", "args": [{"col": "county"}, {"values": ["03", "99"]}]}
    assert refused(plan(where(condition)), catalogue) == (
        "'99' is not a category of 'county'; use one of its declared categories (03, 11, 15, 50)."
    )
    # text against a column without categories
    condition = {"fn": "eq", "args": [{"col": "wage"}, {"lit": "high"}]}
    assert refused(plan(where(condition)), catalogue).startswith(
        "The column 'wage' declares no categories, so it cannot be compared with text"
    )
    # a declared category passes
    validate(plan(where({"fn": "eq", "args": [{"col": "county"}, {"lit": "11"}]})), catalogue)


def test_type_errors_are_refused(catalogue: Catalogue) -> None:
    arithmetic = where(
        {"fn": "gt", "args": [{"fn": "add", "args": [{"col": "county"}, {"lit": 1}]}, {"lit": 2}]}
    )
    assert refused(plan(arithmetic), catalogue) == (
        "add needs numbers, not string; cast or choose another column."
    )
    not_a_condition = where({"fn": "add", "args": [{"col": "wage"}, {"lit": 1}]})
    assert refused(plan(not_a_condition), catalogue) == (
        "A filter's condition must be true or false (a comparison)."
    )


# -- grouping keys and the grid ----------------------------------------------------------------
def test_a_grouping_key_must_be_a_category_or_a_bin(catalogue: Catalogue) -> None:
    numeric = {**COUNT, "index": ["wage"]}
    assert refused(plan(output=numeric), catalogue) == (
        "The column 'wage' cannot label a table: it is a number (labels must be public "
        "categories or grid bins); cut it into bins with .bin(width=...) first."
    )
    case = {
        "op": "derive",
        "input": INCOME,
        "columns": {
            "group": {
                "case": [[{"fn": "gt", "args": [{"col": "wage"}, {"lit": 0}]}, {"col": "rid"}]],
                "otherwise": {"lit": 0},
            }
        },
    }
    message = refused(plan(case, {**COUNT, "index": ["group"]}), catalogue)
    assert message.startswith("The column 'group' cannot label a table: it is a number")
    population = {"op": "scan", "dataset": "population", "version": 1, "columns": None}
    renamed = {"op": "derive", "input": population, "columns": {"pid": {"col": "person"}}}
    free_text = {"op": "select", "input": renamed, "columns": ["pid", "sex"]}
    text_key = plan(free_text, {**COUNT, "index": ["pid"], "columns": ["sex"]})
    assert refused(text_key, catalogue) == (
        "The column 'pid' cannot label a table: it is text without declared categories (labels "
        "must be public categories or grid bins); group by a column whose categories the "
        "dataset policy declares."
    )
    # a copy of a category keeps its labels; a year column and a bin are keys
    copy_ok = {
        "op": "derive",
        "input": INCOME,
        "columns": {"where": {"col": "county"}, "band": {"bin": {"col": "wage"}, "width": 10000}},
    }
    validate(plan(copy_ok, {**COUNT, "index": ["where", "band"], "columns": ["year"]}), catalogue)


def test_off_grid_edges_are_refused_with_the_nearest_grid_values(catalogue: Catalogue) -> None:
    derive = {
        "op": "derive",
        "input": INCOME,
        "columns": {"band": {"bin": {"col": "wage"}, "edges": [0, 1000, 12345.678]}},
    }
    assert refused(plan(derive), catalogue) == (
        "12345.678 is not on the policy grid of bin edges (1, 2 or 5 times a power of ten); the "
        "nearest grid values are 10000 and 20000."
    )
    hist = {"command": "hist", "column": "wage", "edges": [0, 0.30000001], "by": [], "safe": None}
    assert refused(plan(output=hist), catalogue) == (
        "0.30000001 is not on the policy grid of histogram edges (1, 2 or 5 times a power of "
        "ten); the nearest grid values are 0.2 and 0.5."
    )
    width = {"command": "hist", "column": "wage", "width": 3, "by": [], "safe": None}
    assert refused(plan(output=width), catalogue).startswith("3 is not on the policy grid")
    # the catalogue's own edges of a column pass, as do grid edges
    declared = {
        "command": "hist",
        "column": "wage",
        "edges": [-1e4, 0, 1e4, 1e5, 1e6],
        "by": [],
        "safe": None,
    }
    validate(plan(output=declared), catalogue)


# -- size --------------------------------------------------------------------------------------
def test_oversized_plans_are_refused(catalogue: Catalogue) -> None:
    deep: dict[str, Any] = {"col": "wage"}
    for _ in range(40):
        deep = {"fn": "abs", "args": [deep]}
    condition = {"fn": "gt", "args": [deep, {"lit": 0}]}
    assert refused(plan(where(condition)), catalogue) == (
        "The plan is nested deeper than 32 nodes; simplify it or split it into steps."
    )
    wide = {
        "fn": "and",
        "args": [{"fn": "gt", "args": [{"col": "wage"}, {"lit": i}]} for i in range(16)],
    }
    many = {"fn": "or", "args": [wide] * 16}
    assert refused(plan(where({"fn": "or", "args": [many] * 8})), catalogue) == (
        "The plan has more than 2000 nodes; simplify it."
    )
    values = {"fn": "is_in", "args": [{"col": "hours"}, {"values": list(range(80_000))}]}
    assert refused(plan(where(values)), catalogue).startswith("The plan is ")
    assert "more than 262144" in refused(json.dumps(plan(where(values))), catalogue)


def test_the_plan_hash_is_the_sha256_of_the_canonical_json(catalogue: Catalogue) -> None:
    import hashlib

    document = plan()
    reordered = json.loads(json.dumps(document, sort_keys=False))
    reordered = dict(reversed(list(reordered.items())))
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert plan_hash(reordered) == hashlib.sha256(canonical.encode()).hexdigest()
    assert validate(document, catalogue).sha256 == plan_hash(document)


# -- reading what is not the project's ---------------------------------------------------------
def test_a_plan_cannot_read_a_file_outside_the_catalogue(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.parquet"
    pd.DataFrame({"pid": ["p0001"], "wage": [123456.0]}).to_parquet(secret)
    # a dataset name that is a path is not a dataset name
    for trick in (str(secret), "../secret", "income.parquet' UNION SELECT * FROM '/etc/passwd"):
        assert "is not a dataset name" in refused(plan({**INCOME, "dataset": trick}), catalogue)
    # a catalogue entry whose file moved is not read elsewhere; and the connection reads only
    # the catalogue's files even when SQL text could be slipped in (it cannot: values are bound)
    checked = validate(plan(), catalogue)
    moved = Catalogue(
        "demo-project",
        {
            **catalogue.sources,
            "income": SourceInfo(
                "income",
                3,
                tmp_path / "nowhere.parquet",
                "pid",
                catalogue.sources["income"].columns,
            ),
        },
    )
    with pytest.raises(PlanError, match="is not available here"):
        evaluate(checked, moved)


def test_the_evaluators_connection_refuses_other_files(
    catalogue: Catalogue, tmp_path: Path
) -> None:
    from spe.analysis.plan.evaluate import _connection

    secret = tmp_path / "secret.parquet"
    pd.DataFrame({"x": [1]}).to_parquet(secret)
    allowed = [Path(catalogue.sources["income"].path).resolve()]
    import duckdb

    with _connection(allowed, "256MB", 1, None) as con:
        assert con.execute(
            "SELECT count(*) FROM read_parquet($p)", {"p": str(allowed[0])}
        ).fetchone()
        for sql in (
            f"SELECT * FROM read_parquet('{secret}')",
            "SELECT * FROM read_csv('/etc/passwd')",
            f"COPY (SELECT 1) TO '{tmp_path / 'out.csv'}'",
            "INSTALL httpfs",
        ):
            with pytest.raises(duckdb.Error):
                con.execute(sql)
        with pytest.raises(duckdb.Error, match="locked"):
            con.execute("SET enable_external_access=true")
    assert not (tmp_path / "out.csv").exists()


def test_a_string_literal_reaches_sql_only_as_a_bound_parameter(catalogue: Catalogue) -> None:
    from spe.analysis.plan.evaluate import compile_plan

    condition = {"fn": "eq", "args": [{"col": "county"}, {"lit": "11"}]}
    checked = validate(plan(where(condition)), catalogue)
    sql, params = compile_plan(checked, {"income": Path("/data/income.parquet")})
    assert "'11'" not in sql and "/data/income.parquet" not in sql
    assert "11" in params.values() and "/data/income.parquet" in params.values()


# -- memory ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_plan_over_the_memory_cap_spills_or_is_refused_never_killed(tmp_path: Path) -> None:
    n = 3_000_000
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "pid": np.char.add("p", (rng.integers(0, 300_000, n)).astype(str)),
            "year": rng.integers(2000, 2024, n),
            "wage": rng.lognormal(10, 1, n),
        }
    )
    path = tmp_path / "big.parquet"
    frame.to_parquet(path, index=False)
    del frame
    big = Catalogue(
        "p",
        {
            "big": SourceInfo(
                "big",
                1,
                path,
                "pid",
                {"year": ColumnInfo("year", "year"), "wage": ColumnInfo("wage", "float")},
            )
        },
    )
    document = {
        "spe_plan": 1,
        "project": "p",
        "frame": {
            "op": "quantile_group",
            "input": {
                "op": "window",
                "input": {"op": "scan", "dataset": "big", "version": 1, "columns": None},
                "order_by": "year",
                "columns": {"growth": {"fn": "diff", "of": "wage", "n": 1}},
            },
            "name": "decile",
            "of": "wage",
            "groups": 10,
            "within": ["year"],
        },
        "output": {
            "command": "crosstab",
            "index": ["decile"],
            "columns": ["year"],
            "values": "growth",
            "agg": "mean",
            "safe": None,
        },
    }
    checked = validate(copy.deepcopy(document), big)
    spill = tmp_path / "spill"
    spill.mkdir()
    try:
        evidence = evaluate(checked, big, memory_limit="64MB", threads=1, temp_directory=spill)
    except PlanError as exc:
        assert exc.message.startswith("The plan needs more memory than the evaluator's cap of 64MB")
    else:
        assert len(evidence.frame) == n
