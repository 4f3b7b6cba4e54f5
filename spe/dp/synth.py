"""A synthetic health survey for the aggregate-only demo: one row per person of the synthetic
population register (never real people), with sex, county, age, BMI, blood pressure, diabetes
and GP visits. Deterministic for a seed."""

from __future__ import annotations

from pathlib import Path

HEALTH_COLUMNS = ["fnr", "sex", "county", "age", "bmi", "systolic_bp", "diabetes", "gp_visits"]


def write_health_csv(population_csv: Path, out: Path, seed: int = 2026) -> int:
    """Write health.csv for the persons of the synthetic ``population_csv``; returns its rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    people = pcsv.read_csv(
        population_csv,
        convert_options=pcsv.ConvertOptions(
            column_types={
                "fnr": pa.string(),
                "municipality": pa.string(),
                "sex": pa.string(),
                "birth_date": pa.string(),
            },
            include_columns=["fnr", "sex", "birth_date", "municipality"],
        ),
    )
    n = people.num_rows
    rng = np.random.default_rng(seed)
    year = pc.utf8_slice_codeunits(pc.fill_null(people["birth_date"], "1980"), 0, 4)
    age = np.clip(
        2024 - pc.cast(year, pa.int64(), safe=False).to_numpy(zero_copy_only=False), 0, 110
    )
    county = pc.utf8_slice_codeunits(pc.fill_null(people["municipality"], "0301"), 0, 2)
    bmi = np.round(np.clip(rng.normal(22 + age / 12, 4.0), 14, 55), 1)
    systolic = np.round(np.clip(rng.normal(110 + age * 0.45, 14), 80, 220)).astype(np.int64)
    risk = 1 / (1 + np.exp(-(-7.5 + 0.06 * age + 0.12 * (bmi - 25))))
    diabetes = (rng.random(n) < risk).astype(np.int64).astype(str)
    visits = rng.poisson(1 + age / 25).astype(np.int64)
    table = pa.table(
        {
            "fnr": people["fnr"],
            "sex": pc.fill_null(people["sex"], "F"),
            "county": county,
            "age": pa.array(age, pa.int64()),
            "bmi": pa.array(bmi),
            "systolic_bp": pa.array(systolic),
            "diabetes": pa.array(diabetes),
            "gp_visits": pa.array(visits),
        }
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    pcsv.write_csv(table, out, pcsv.WriteOptions(quoting_style="none"))
    return n
