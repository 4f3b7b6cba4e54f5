"""Generated project extracts for benchmarks/analysis.py: income and population, cached on disk.

Written once per size under var/bench/analysis/ (gitignored) chunk by chunk with pyarrow, then
reused: the person column is the project pseudonym as extracts store it (32 hex characters).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GENERATOR_VERSION = "1"
REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "var" / "bench" / "analysis"
PERSON = "person_id"  # spe.ingest.pipeline.PERSON_COLUMN
YEARS = (2019, 2020, 2021, 2022, 2023)  # every person has an income row in each year
YEAR = 2022  # the year the query keeps
REFERENCE_YEAR = YEAR  # birth years 1923..2022: ages 0..99 in the kept year, 10 bands
SEXES = ("F", "M")
# 20 two-digit county codes (the extracts generalise municipality to its first two digits),
# with Zipf-like sizes so that the small counties make small cells.
COUNTIES = tuple(
    f"{code:02d}"
    for code in (3, 11, 15, 18, 31, 32, 33, 34, 39, 40, 42, 46, 50, 55, 56, 12, 14, 16, 17, 19)
)
CHUNK_PERSONS = 250_000
ROW_GROUP = 262_144  # what spe.projects.extracts writes per batch


@dataclass(frozen=True)
class Extracts:
    """The two Parquet files of one size and how they were made."""

    income: Path
    population: Path
    income_rows: int
    persons: int
    generation_seconds: float
    generated_now: bool


def _hex(raw: Any) -> Any:
    """(n, 16) uint8 → (n, 32) uint8 of lower-case hex digits (as spe.keys.pseudonyms.to_hex)."""
    import numpy as np

    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    out = np.empty((raw.shape[0], 32), dtype=np.uint8)
    out[:, 0::2] = digits[raw >> 4]
    out[:, 1::2] = digits[raw & 15]
    return out


def _strings(hexes: Any, n: int) -> Any:
    """A pyarrow string array of n 32-character values from their bytes (as the extracts do)."""
    import numpy as np
    import pyarrow as pa

    offsets = np.arange(0, 32 * (n + 1), 32, dtype=np.int32)
    return pa.StringArray.from_buffers(
        n,
        pa.py_buffer(offsets),
        pa.py_buffer(np.ascontiguousarray(hexes).tobytes()),
    )


def _chunk(seed: int, index: int, persons: int) -> tuple[Any, Any]:
    """One chunk's population rows and income rows (persons x years), both as Arrow tables."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng([seed, index])
    hexes = _hex(np.frombuffer(rng.bytes(16 * persons), dtype=np.uint8).reshape(persons, 16))
    birth_year = rng.integers(REFERENCE_YEAR - 99, REFERENCE_YEAR + 1, persons)
    day_of_year = rng.integers(0, 365, persons)
    epoch_days = (birth_year - 1970) * 365.2425 + day_of_year
    weights = 1.0 / np.arange(1, len(COUNTIES) + 1)
    county = rng.choice(len(COUNTIES), persons, p=weights / weights.sum())
    sex = rng.integers(0, 2, persons)
    population = pa.table(
        {
            PERSON: _strings(hexes, persons),
            "birth_date": pa.array(epoch_days.astype(np.int32), pa.int32()).cast(pa.date32()),
            "sex": pa.array(np.array(SEXES, dtype=object)[sex], pa.string()),
            "county": pa.array(np.array(COUNTIES, dtype=object)[county], pa.string()),
        }
    )
    k = len(YEARS)
    person = np.repeat(np.arange(persons), k)
    year = np.tile(np.array(YEARS, dtype=np.int32), persons)
    age = year - birth_year[person]
    level = rng.lognormal(np.log(450_000), 0.6, persons)[person]
    works = (age >= 16) & (age < 75) & (rng.random(len(person)) < 0.8)
    wage = np.rint(level * 1.035 ** (year - YEARS[0]) * works).astype(np.int64)
    capital = np.rint(rng.lognormal(np.log(6_000), 1.6, len(person))).astype(np.int64)
    income = pa.table(
        {
            PERSON: _strings(hexes[person], len(person)),
            "year": pa.array(year, pa.int32()),
            "wage_income": pa.array(wage),
            "capital_income": pa.array(capital),
        }
    )
    return population, income


def ensure(income_rows: int, seed: int = 13, cache: Path = CACHE) -> Extracts:
    """The extracts with ``income_rows`` income rows (``income_rows / 5`` persons), made once."""
    import pyarrow.parquet as pq

    persons = max(income_rows // len(YEARS), 1)
    folder = cache / f"v{GENERATOR_VERSION}-seed{seed}-{persons * len(YEARS)}"
    manifest = folder / "manifest.json"
    if manifest.exists():
        made = json.loads(manifest.read_text())
        return Extracts(
            folder / "income.parquet",
            folder / "population.parquet",
            made["income_rows"],
            made["persons"],
            made["generation_seconds"],
            False,
        )
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.perf_counter()
    writers: dict[str, Any] = {}
    done = 0
    index = 0
    try:
        while done < persons:
            n = min(CHUNK_PERSONS, persons - done)
            for name, table in zip(("population", "income"), _chunk(seed, index, n), strict=True):
                if name not in writers:
                    writers[name] = pq.ParquetWriter(
                        tmp / f"{name}.parquet",
                        table.schema,
                        compression="zstd",
                    )
                writers[name].write_table(table, row_group_size=ROW_GROUP)
            done += n
            index += 1
            print(
                f"[analysis] generating {persons * len(YEARS):,} income rows: "
                f"{100 * done / persons:.0f} %",
                file=sys.stderr,
                flush=True,
            )
    finally:
        for writer in writers.values():
            writer.close()
    seconds = time.perf_counter() - started
    made = {
        "generator": GENERATOR_VERSION,
        "seed": seed,
        "income_rows": persons * len(YEARS),
        "persons": persons,
        "generation_seconds": round(seconds, 2),
    }
    (tmp / "manifest.json").write_text(json.dumps(made) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return Extracts(
        folder / "income.parquet",
        folder / "population.parquet",
        persons * len(YEARS),
        persons,
        seconds,
        True,
    )
