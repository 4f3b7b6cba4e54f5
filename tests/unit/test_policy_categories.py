"""Code lists (categories) and bins in dataset policies: validated at load with a sentence that
names the file and line, generalised as a grant generalises the column, and the one truth the
DP block's categories agree with."""

from __future__ import annotations

from pathlib import Path

import pytest

from spe.ingest import synth
from spe.ingest.policy import (
    ColumnClass,
    ColumnPolicy,
    ColumnType,
    Generalisation,
    PolicyError,
    column_kind,
    generalised_categories,
    load_policy,
)

HEAD = """\
dataset: coded
title: Coded
holder: Holder Agency
conditions: For tests.
columns:
  fnr: {class: person_id}
"""


def _load(tmp_path: Path, columns: str, tail: str = "") -> object:
    path = tmp_path / "coded.yaml"
    path.write_text(HEAD + columns + tail)
    return load_policy(path)


def test_categories_keep_their_order_and_int_columns_get_ints(tmp_path):
    policy = _load(
        tmp_path,
        "  sex: {class: quasi_identifier, categories: [M, F]}\n"
        "  year: {class: attribute, type: int64, categories: [2019, -1, +3]}\n"
        '  diabetes: {class: attribute, categories: [0, 1, "no"]}\n'
        "  wage: {class: attribute, type: float64, bins: [0, 0.5, 1e6]}\n",
    )
    assert policy.column("sex").categories == ("M", "F")
    assert policy.column("year").categories == (2019, -1, 3)
    assert policy.column("diabetes").categories == ("0", "1", "no")  # text column: text
    assert policy.column("wage").bins == (0.0, 0.5, 1e6)


@pytest.mark.parametrize(
    ("column", "message"),
    [
        ("sex: {class: attribute, categories: []}", "must be a non-empty list"),
        ("sex: {class: attribute, categories: F}", "must be a non-empty list"),
        ("sex: {class: attribute, categories: [F, M, F]}", "list 'F' twice"),
        ("y: {class: attribute, type: int64, categories: [1, 01]}", "list '01' twice"),
        ("y: {class: attribute, type: int64, categories: [2019, a]}", "'a' is not a whole number"),
        ('y: {class: attribute, type: int64, categories: ["2019"]}', "not a whole number"),
        ("y: {class: attribute, type: int64, categories: [1.5]}", "not a whole number"),
        ("sex: {class: attribute, categories: [" + "x" * 65 + "]}", "longer than 64 characters"),
        ('sex: {class: attribute, categories: [" F"]}', "without surrounding spaces"),
        ('sex: {class: attribute, categories: ["a\\x00b"]}', "control characters"),
        ("sex: {class: attribute, categories: [[F]]}", "must be a single value"),
        ("d: {class: attribute, type: date, categories: [2020-01-01]}", "no code list"),
        ("w: {class: attribute, type: float64, categories: [1.5]}", "give a numeric column bins"),
        ("name: {class: direct_identifier, categories: [a]}", "only a quasi_identifier or"),
        ("w: {class: attribute, type: int64, bins: [1, 1]}", "strictly increasing"),
        ("w: {class: attribute, type: int64, bins: [2, 1]}", "strictly increasing"),
        ("w: {class: attribute, type: int64, bins: [1]}", "at least two edges"),
        ("w: {class: attribute, type: int64, bins: [1, .inf]}", "not a number"),
        ("w: {class: attribute, type: int64, bins: [1, x]}", "'x' is not a number"),
        ("w: {class: attribute, bins: [1, 2]}", "only an int64 or float64 column has bins"),
    ],
)
def test_a_wrong_code_list_or_bins_is_refused_with_file_line_and_fix(tmp_path, column, message):
    with pytest.raises(PolicyError, match=r"coded.yaml, line \d+: .*" + _escape(message)):
        _load(tmp_path, f"  {column}\n")


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_at_most_10000_categories(tmp_path):
    many = ", ".join(str(i) for i in range(10_001))
    with pytest.raises(PolicyError, match=r"has 10,001 entries; at most 10,000"):
        _load(tmp_path, f"  y: {{class: attribute, type: int64, categories: [{many}]}}\n")
    fits = ", ".join(str(i) for i in range(10_000))
    policy = _load(tmp_path, f"  y: {{class: attribute, type: int64, categories: [{fits}]}}\n")
    assert len(policy.column("y").categories) == 10_000


def test_text_without_a_code_list_is_free_text(tmp_path):
    policy = _load(
        tmp_path,
        "  employer: {class: quasi_identifier}\n"
        "  industry: {class: attribute, categories: [a, b]}\n"
        "  wage: {class: attribute, type: int64}\n"
        "  name: {class: direct_identifier}\n",
    )
    assert policy.column("employer").free_text
    assert not policy.column("industry").free_text
    assert not policy.column("wage").free_text and not policy.column("name").free_text


MUNICIPALITY = ColumnPolicy(
    "municipality",
    ColumnClass.QUASI_IDENTIFIER,
    categories=("5001", "0301", "4601", "4602"),
)
BIRTH = ColumnPolicy("birth_date", ColumnClass.QUASI_IDENTIFIER, ColumnType.DATE)


def test_generalised_categories_follow_the_grant():
    assert generalised_categories(MUNICIPALITY, None) == MUNICIPALITY.categories
    assert generalised_categories(MUNICIPALITY, Generalisation.COUNTY) == ("03", "46", "50")
    assert generalised_categories(BIRTH, Generalisation.YEAR) is None
    assert generalised_categories(BIRTH, None) is None
    free = ColumnPolicy("m", ColumnClass.QUASI_IDENTIFIER)
    assert generalised_categories(free, Generalisation.COUNTY) is None
    # Generalised at ingest already: the held column is the county; a county grant keeps it.
    held = ColumnPolicy(
        "m",
        ColumnClass.QUASI_IDENTIFIER,
        generalise=Generalisation.COUNTY,
        categories=("0301", "4601"),
    )
    assert generalised_categories(held, None) == ("03", "46")
    assert generalised_categories(held, Generalisation.COUNTY) == ("03", "46")


def test_column_kind_is_year_for_a_date_made_a_year():
    assert column_kind(BIRTH, Generalisation.YEAR) == "year"
    assert column_kind(BIRTH, None) == "date"
    assert column_kind(MUNICIPALITY, Generalisation.COUNTY) == "string"
    year_at_ingest = ColumnPolicy(
        "b", ColumnClass.QUASI_IDENTIFIER, ColumnType.DATE, generalise=Generalisation.YEAR
    )
    assert column_kind(year_at_ingest, None) == "year"
    assert column_kind(ColumnPolicy("w", ColumnClass.ATTRIBUTE, ColumnType.FLOAT), None) == "float"
    assert column_kind(ColumnPolicy("w", ColumnClass.ATTRIBUTE, ColumnType.INT), None) == "int"


def test_a_generalisation_that_does_not_fit_the_column_is_refused():
    with pytest.raises(PolicyError, match=r"'municipality' \(string\) cannot be generalised"):
        generalised_categories(MUNICIPALITY, Generalisation.YEAR)
    with pytest.raises(PolicyError, match="needs a string column"):
        column_kind(BIRTH, Generalisation.COUNTY)


DP_HEAD = """\
dataset: coded
title: Coded
holder: Holder Agency
conditions: For tests.
access: aggregate_only
one_row_per_person: true
columns:
  fnr: {class: person_id}
  sex: {class: quasi_identifier, categories: [F, M]}
  county: {class: quasi_identifier}
  age: {class: attribute, type: int64}
dp:
  epsilon_total: 1.0
"""


def test_dp_variables_take_the_columns_categories(tmp_path):
    path = tmp_path / "coded.yaml"
    path.write_text(DP_HEAD + "  variables:\n    age: {min: 0, max: 110}\n")
    dp = load_policy(path).dp
    assert dp is not None and dp.variables["sex"].categories == ("F", "M")
    assert "county" not in dp.variables  # free text: nothing to derive


def test_dp_categories_that_differ_from_the_column_are_refused(tmp_path):
    path = tmp_path / "coded.yaml"
    path.write_text(DP_HEAD + "  variables:\n    sex: {categories: [F, M, X]}\n")
    with pytest.raises(PolicyError, match=r"line 15: dp.variables.sex.categories differ"):
        load_policy(path)
    path.write_text(DP_HEAD + "  variables:\n    sex: {categories: [M, F]}\n")
    assert load_policy(path).dp.variables["sex"].categories == ("M", "F")  # same list
    path.write_text(DP_HEAD + "  variables:\n    county: {categories: ['03']}\n")
    with pytest.raises(PolicyError, match=r"the column has no code list; declare them once"):
        load_policy(path)


def test_shipped_policies_declare_code_lists_and_the_dp_block_agrees():
    shipped = Path(__file__).resolve().parents[2] / "policies" / "datasets"
    policies = {p.stem: load_policy(p) for p in shipped.glob("*.yaml")}
    population = policies["population"]
    assert population.column("sex").categories == ("F", "M")
    generated = {code for code, _name, _people in synth.MUNICIPALITIES}
    assert set(population.column("municipality").categories) == generated
    industries = {code for code, _weight in synth.INDUSTRIES}
    assert set(policies["employment"].column("industry").categories) == industries
    levels = {str(level) for level in range(len(synth.NUS_COMPLETION_AGE))}
    assert set(policies["education"].column("level").categories) == levels
    assert policies["income"].column("year").categories == synth.INCOME_YEARS
    assert policies["employment"].column("employer_orgnr").free_text
    health = policies["health"]
    county = generalised_categories(population.column("municipality"), Generalisation.COUNTY)
    assert health.column("county").categories == county
    assert health.dp is not None
    for name in ("sex", "county", "diabetes"):
        column = health.column(name).categories
        assert set(health.dp.variables[name].categories) == {str(c) for c in column}
