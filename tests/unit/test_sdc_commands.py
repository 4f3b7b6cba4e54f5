"""The functions behind `spe sdc crosstab` and `spe sdc model`: files in, the CLI's JSON out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spe.sdc import (
    SDCInputError,
    crosstab_command,
    model_command,
    parse_columns,
    read_data,
)

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"


@pytest.fixture
def data(tmp_path: Path) -> pd.DataFrame:
    rng = np.random.default_rng(4)
    n = 600
    return pd.DataFrame(
        {
            "pid": [f"{x:032x}" for x in rng.integers(0, 2**60, n)],
            "sex": rng.choice(["F", "M"], n),
            "region": rng.choice(["North", "South", "East"], n, p=[0.49, 0.49, 0.02]),
            "income": rng.lognormal(12, 1, n),
            "age": rng.integers(20, 70, n),
        }
    )


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_crosstab_command_reads_csv_and_parquet_and_returns_the_contract(
    tmp_path: Path, data: pd.DataFrame, suffix: str
) -> None:
    path = tmp_path / f"data{suffix}"
    if suffix == ".csv":
        data.to_csv(path, index=False)
    else:
        data.to_parquet(path, index=False)
    report = crosstab_command(
        path,
        "sex",
        "region",
        values="income",
        agg="mean",
        person_id="pid",
        policies_dir=POLICIES,
    )
    out = json.loads(report.to_json())
    assert out["status"] == "fail"  # East has about 12 persons split over two sexes
    assert out["rules"]["sources"] == ["policies/sdc/default.yaml"]
    east = [c for c in out["cells"] if c["columns"] == ["East"]]
    assert all(c["status"] == "fail" for c in east)
    assert all(any(f["rule"] == "threshold" for f in c["failing"]) for c in east)


def test_crosstab_command_applies_a_researcher_policy_that_tightens(
    tmp_path: Path, data: pd.DataFrame
) -> None:
    path = tmp_path / "data.csv"
    data.to_csv(path, index=False)
    policy = tmp_path / "mine.yaml"
    policy.write_text("threshold: 200\n", encoding="utf-8")
    report = crosstab_command(
        path, "sex", "region", person_id="pid", policy=policy, policies_dir=POLICIES
    )
    assert report.rules.threshold == 200
    assert report.status == "fail"
    assert all(c.status == "fail" for c in report.cells)


def test_columns_are_given_as_comma_lists() -> None:
    assert parse_columns("sex, region") == ["sex", "region"]
    assert parse_columns(["sex,region", "age"]) == ["sex", "region", "age"]
    with pytest.raises(SDCInputError, match="at least one column"):
        parse_columns(" , ")


def test_model_command_fits_and_checks(tmp_path: Path, data: pd.DataFrame) -> None:
    path = tmp_path / "data.parquet"
    data.to_parquet(path, index=False)
    report = model_command(
        path, "income ~ age + sex", "ols", person_id="pid", policies_dir=POLICIES
    )
    out = json.loads(report.to_json())
    assert out["status"] == "pass"
    assert out["df_resid"] == len(data) - 3
    assert set(out["coefficients"]) == {"Intercept", "sex[T.M]", "age"}


def test_bad_files_are_refused_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(SDCInputError, match="There is no data file"):
        read_data(tmp_path / "absent.csv")
    picture = tmp_path / "table.png"
    picture.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(SDCInputError, match="neither CSV nor Parquet"):
        read_data(picture)
    fake = tmp_path / "fake.parquet"
    fake.write_text("a,b\n1,2\n")
    with pytest.raises(SDCInputError, match="cannot be read as Parquet"):
        read_data(fake)
    good = tmp_path / "good.csv"
    good.write_text("a,b\n1,2\n")
    with pytest.raises(SDCInputError, match="has no column 'c'; its columns are a, b"):
        read_data(good, ["a", "c"])
