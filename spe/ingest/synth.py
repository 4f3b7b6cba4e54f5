"""A synthetic Norwegian-style registry to develop, demo and benchmark against: never real people.

``generate_registry`` writes population, income, education and employment CSV files plus a
ground-truth manifest of the deliberate defects, deterministically for a seed, chunk by chunk.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from spe.ingest.identifiers import (
    K1_WEIGHTS,
    K2_WEIGHTS,
    SYNTHETIC_MONTH_OFFSET,
    IdentifierRules,
    IdKind,
    Reason,
    check_fnr_array,
    individual_numbers,
    make_fnr,
    make_orgnr,
)

GENERATOR_VERSION = "1"
CHUNK_PERSONS = 200_000  # part of the output's definition: a seed's files depend on it

REFERENCE_DATE = dt.date(2023, 12, 31)  # the register's "as of": nobody is born later
OLDEST_BIRTH = dt.date(1924, 1, 1)
INCOME_YEARS = tuple(range(2019, 2024))
FIRST_EMPLOYMENT = dt.date(2000, 1, 1)

# Deliberate defects of population.csv. Rates apply per chunk, with at least one of each kind
# in every chunk; counts are per run. Every defect is listed in the manifest.
BAD_CHECK_DIGIT_RATE = 0.001  # the last digit of a valid number changed
DUPLICATE_ROW_RATE = 0.0005  # an exact copy of an earlier row of the same chunk
MISSING_VALUE_RATE = 0.001  # empty cells, half in column fnr, half in column municipality
MISSING_VALUE_COLUMNS = ("fnr", "municipality")
D_NUMBER_COUNT = 2  # valid D-numbers (day + 40, ordinary month): the person's own identifier
H_NUMBER_COUNT = 2  # valid H-numbers (month + 40): likewise
MALFORMED_COUNT = 4  # half cut to 10 digits, half with a letter in place of a digit
DOMINANT_EARNER_RATE = 0.001  # capital income in the hundreds of millions: (n, k) rules fire

POPULATION = "population.csv"
INCOME = "income.csv"
EDUCATION = "education.csv"
EMPLOYMENT = "employment.csv"
MANIFEST = "manifest.json"
COLUMNS = {
    POPULATION: ("fnr", "name", "address", "birth_date", "sex", "municipality"),
    INCOME: ("fnr", "year", "wage_income", "capital_income"),
    EDUCATION: ("fnr", "level", "completed_year"),
    EMPLOYMENT: ("fnr", "employer_orgnr", "industry", "start_date", "end_date"),
}

# Kommune numbers of the 2024 structure with rounded populations (the weights): the big cities
# and a tail of the smallest municipalities, so that tables have small cells.
MUNICIPALITIES: tuple[tuple[str, str, int], ...] = (
    ("0301", "Oslo", 717_700),
    ("4601", "Bergen", 291_000),
    ("5001", "Trondheim", 214_500),
    ("1103", "Stavanger", 149_000),
    ("3201", "Bærum", 130_000),
    ("4204", "Kristiansand", 116_000),
    ("3301", "Drammen", 103_000),
    ("3203", "Asker", 97_000),
    ("3205", "Lillestrøm", 90_000),
    ("3107", "Fredrikstad", 84_000),
    ("1108", "Sandnes", 82_000),
    ("5501", "Tromsø", 78_000),
    ("3907", "Sandefjord", 65_000),
    ("3105", "Sarpsborg", 59_000),
    ("3905", "Tønsberg", 58_000),
    ("4003", "Skien", 56_000),
    ("1804", "Bodø", 53_000),
    ("3103", "Moss", 51_000),
    ("3909", "Larvik", 48_000),
    ("4203", "Arendal", 45_800),
    ("1106", "Haugesund", 38_000),
    ("4001", "Porsgrunn", 37_000),
    ("1506", "Molde", 32_900),
    ("3403", "Hamar", 32_000),
    ("3101", "Halden", 31_800),
    ("3305", "Ringerike", 31_000),
    ("3407", "Gjøvik", 30_800),
    ("3405", "Lillehammer", 29_000),
    ("3303", "Kongsberg", 28_000),
    ("1833", "Rana", 26_000),
    ("5503", "Harstad", 24_800),
    ("5006", "Steinkjer", 24_500),
    ("1505", "Kristiansund", 24_000),
    ("1806", "Narvik", 21_600),
    ("5601", "Alta", 21_500),
    ("5025", "Røros", 5_600),
    ("1811", "Bindal", 1_400),
    ("1857", "Værøy", 720),
    ("5052", "Leka", 560),
    ("1144", "Kvitsøy", 520),
    ("4633", "Fedje", 520),
    ("1856", "Røst", 460),
    ("1835", "Træna", 450),
    ("5043", "Røyrvik", 430),
    ("4629", "Modalen", 390),
    ("1151", "Utsira", 200),
)

MALE_NAMES = (
    "Ole",
    "Lars",
    "Jan",
    "Per",
    "Bjørn",
    "Kjell",
    "Knut",
    "Arne",
    "Svein",
    "Thomas",
    "Hans",
    "Geir",
    "Martin",
    "Erik",
    "Jon",
    "Andreas",
    "Anders",
    "Magnus",
    "Jonas",
    "Kristian",
    "Nils",
    "Emil",
    "Henrik",
    "Odd",
    "Terje",
    "Tor",
    "Rune",
    "Morten",
    "Stian",
    "Sindre",
    "Jakob",
    "Filip",
    "Noah",
    "Oskar",
    "William",
    "Aksel",
    "Håkon",
    "Øyvind",
)
FEMALE_NAMES = (
    "Anne",
    "Inger",
    "Kari",
    "Marit",
    "Ingrid",
    "Liv",
    "Eva",
    "Berit",
    "Astrid",
    "Bjørg",
    "Hilde",
    "Anna",
    "Solveig",
    "Marianne",
    "Randi",
    "Ida",
    "Nina",
    "Maria",
    "Elisabeth",
    "Kristin",
    "Silje",
    "Ingeborg",
    "Sofie",
    "Nora",
    "Emma",
    "Ella",
    "Olivia",
    "Sara",
    "Thea",
    "Maja",
    "Åse",
    "Tone",
    "Grete",
    "Hege",
    "Sigrid",
)
SURNAMES = (
    "Hansen",
    "Johansen",
    "Olsen",
    "Larsen",
    "Andersen",
    "Pedersen",
    "Nilsen",
    "Kristiansen",
    "Jensen",
    "Karlsen",
    "Johnsen",
    "Pettersen",
    "Eriksen",
    "Berg",
    "Haugen",
    "Hagen",
    "Johannessen",
    "Andreassen",
    "Jacobsen",
    "Dahl",
    "Jørgensen",
    "Halvorsen",
    "Henriksen",
    "Lund",
    "Sørensen",
    "Jakobsen",
    "Moen",
    "Gundersen",
    "Iversen",
    "Strand",
    "Solberg",
    "Svendsen",
    "Eide",
    "Knutsen",
    "Martinsen",
    "Paulsen",
    "Bakken",
    "Kristoffersen",
    "Mathisen",
    "Lie",
    "Amundsen",
    "Nguyen",
    "Rasmussen",
    "Ali",
    "Lunde",
    "Solheim",
    "Berge",
    "Moe",
    "Ødegård",
    "Bakke",
    "Sæther",
    "Haugland",
)
STREETS = (
    "Storgata",
    "Kirkegata",
    "Skolegata",
    "Kongens gate",
    "Dronningens gate",
    "Strandgata",
    "Parkveien",
    "Skogveien",
    "Fjellveien",
    "Sjøgata",
    "Nygata",
    "Torggata",
    "Bjørkeveien",
    "Granveien",
    "Furuveien",
    "Solbakken",
    "Åsveien",
    "Bakkeveien",
    "Industriveien",
    "Stasjonsveien",
    "Havnegata",
    "Prinsens gate",
    "Rådhusgata",
    "Elvegata",
    "Hageveien",
    "Markveien",
    "Tunveien",
    "Løkkeveien",
    "Øvre gate",
    "Lyngveien",
)
# SN2007 (NACE) industry codes with rough weights of employment.
INDUSTRIES: tuple[tuple[str, int], ...] = (
    ("47.111", 8),
    ("56.101", 4),
    ("62.010", 5),
    ("84.110", 6),
    ("85.201", 6),
    ("85.310", 3),
    ("85.421", 3),
    ("86.101", 7),
    ("86.211", 2),
    ("87.101", 4),
    ("88.911", 4),
    ("41.200", 4),
    ("43.210", 3),
    ("49.410", 2),
    ("06.100", 1),
    ("09.101", 1),
    ("03.211", 1),
    ("64.190", 1),
    ("68.209", 1),
    ("69.201", 1),
    ("70.220", 2),
    ("71.129", 2),
    ("47.730", 1),
    ("55.101", 2),
    ("35.111", 1),
    ("80.100", 1),
    ("81.210", 2),
    ("78.200", 2),
)
# NUS level: the age at which it is typically completed, and its share by cohort.
NUS_COMPLETION_AGE = (0, 13, 16, 17, 19, 20, 23, 25, 31)
NUS_SHARE_BORN_BEFORE_1960 = (0.01, 0.02, 0.27, 0.06, 0.38, 0.02, 0.16, 0.07, 0.01)
NUS_SHARE_BORN_1960_ON = (0.005, 0.0, 0.19, 0.08, 0.33, 0.03, 0.24, 0.11, 0.015)

_EPOCH = dt.date(1970, 1, 1)
_FIRST_DAY = (OLDEST_BIRTH - _EPOCH).days
_LAST_DAY = (REFERENCE_DATE - _EPOCH).days
_CSV = pacsv.WriteOptions(quoting_style="none", quoting_header="none")
_CHECK_RULES = IdentifierRules(allow_synthetic=True, allow_d_number=True, allow_h_number=True)


def _date_parts(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Year, month, day of days since 1970-01-01."""
    as_dates = days.astype("datetime64[D]")
    months = as_dates.astype("datetime64[M]")
    year = months.astype("datetime64[Y]").astype(np.int64) + 1970
    month = months.astype(np.int64) % 12 + 1
    day = (as_dates - months.astype("datetime64[D]")).astype(np.int64) + 1
    return year, month, day


@dataclass
class _IndividualSlots:
    """Valid individual numbers per birth date, handed out in order so none repeats.

    A number's check digits depend on its date only through two sums mod 11, so the valid
    individual numbers for a date are a table row indexed by (century band, sums, sex).
    """

    band: np.ndarray  # per date index: 0 = 1924-1939, 1 = 1940-1999, 2 = 2000-
    sum1: np.ndarray  # per date: weighted sum of its six digits for k1, mod 11
    sum2: np.ndarray  # for k2
    table: np.ndarray  # (band, sum1, sum2, sex, slot) -> individual number
    capacity: np.ndarray  # (band, sum1, sum2, sex) -> valid slots
    used: np.ndarray = field(init=False)  # per (date index, sex): slots handed out

    def __post_init__(self) -> None:
        self.used = np.zeros(len(self.band) * 2, np.int32)

    @classmethod
    def build(cls) -> _IndividualSlots:
        days = np.arange(_FIRST_DAY, _LAST_DAY + 1)
        year, month, day = _date_parts(days)
        digits = np.stack(
            [
                day // 10,
                day % 10,
                (month + SYNTHETIC_MONTH_OFFSET) // 10,
                (month + SYNTHETIC_MONTH_OFFSET) % 10,
                (year % 100) // 10,
                year % 10,
            ]
        )
        sum1 = (np.array(K1_WEIGHTS[:6])[:, None] * digits).sum(axis=0) % 11
        sum2 = (np.array(K2_WEIGHTS[:6])[:, None] * digits).sum(axis=0) % 11
        bands = [1924, 1940, 2000]  # a year of each band of the century table
        band = np.searchsorted(bands, year, side="right") - 1

        candidates = [np.array(individual_numbers(y)[::-1]) for y in bands]  # issued downwards
        width = max(len(c) for c in candidates)
        table = np.zeros((3, 11, 11, 2, width), np.int16)
        capacity = np.zeros((3, 11, 11, 2), np.int32)
        for b, individuals in enumerate(candidates):
            i1, i2, i3 = individuals // 100, individuals // 10 % 10, individuals % 10
            part1 = K1_WEIGHTS[6] * i1 + K1_WEIGHTS[7] * i2 + K1_WEIGHTS[8] * i3
            part2 = K2_WEIGHTS[6] * i1 + K2_WEIGHTS[7] * i2 + K2_WEIGHTS[8] * i3
            for s1 in range(11):
                k1 = (11 - (s1 + part1) % 11) % 11
                for s2 in range(11):
                    k2 = (11 - (s2 + part2 + K2_WEIGHTS[9] * k1) % 11) % 11
                    for sex in (0, 1):
                        valid = individuals[(k1 != 10) & (k2 != 10) & (i3 % 2 == sex)]
                        table[b, s1, s2, sex, : len(valid)] = valid
                        capacity[b, s1, s2, sex] = len(valid)
        return cls(band, sum1, sum2, table, capacity)

    def assign(self, date_index: np.ndarray, sex: np.ndarray) -> np.ndarray:
        """Individual numbers for these people; a full date moves a person a day earlier."""
        individual = np.zeros(len(date_index), np.int16)
        pending = np.arange(len(date_index))
        while pending.size:
            keys = date_index[pending] * 2 + sex[pending]
            order = np.argsort(keys, kind="stable")
            keys = keys[order]
            first = np.r_[True, keys[1:] != keys[:-1]]
            starts = np.flatnonzero(first)
            rank = np.arange(len(keys)) - np.repeat(starts, np.diff(np.r_[starts, len(keys)]))
            slot = self.used[keys] + rank
            d, s = keys // 2, keys % 2
            cell = (self.band[d], self.sum1[d], self.sum2[d], s)
            fits = slot < self.capacity[cell]
            individual[pending[order[fits]]] = self.table[(*(c[fits] for c in cell), slot[fits])]
            self.used += np.bincount(keys[fits], minlength=len(self.used)).astype(np.int32)
            pending = pending[order[~fits]]
            date_index[pending] -= 1
            if pending.size and date_index[pending].min() < 0:
                raise RuntimeError("the synthetic population is too large for its birth dates")
        return individual


def _synthetic_numbers(birth_days: np.ndarray, individual: np.ndarray) -> np.ndarray:
    """Synthetic fødselsnummer (month + 80) as an (n, 11) array of ASCII codes."""
    year, month, day = _date_parts(birth_days)
    month = month + SYNTHETIC_MONTH_OFFSET
    individual = individual.astype(np.int64)
    digits = np.stack(
        [
            day // 10,
            day % 10,
            month // 10,
            month % 10,
            (year % 100) // 10,
            year % 10,
            individual // 100,
            individual // 10 % 10,
            individual % 10,
        ],
        axis=1,
    )
    k1 = (11 - (digits @ np.array(K1_WEIGHTS[:9])) % 11) % 11
    k2 = (11 - (digits @ np.array(K2_WEIGHTS[:9]) + K2_WEIGHTS[9] * k1) % 11) % 11
    if (k1 == 10).any() or (k2 == 10).any():
        raise RuntimeError("an individual number without check digits was handed out")
    return (np.column_stack([digits, k1, k2]) + 48).astype(np.uint8)


def _strings(codes: np.ndarray) -> pa.Array:
    """Fixed-width ASCII codes (n, width) as an Arrow string array, without a Python loop."""
    n, width = codes.shape
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.StringArray.from_buffers(
        n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(codes).tobytes())
    )


def _join(*parts: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise(*parts, " ")


@dataclass
class _Employers:
    orgnr: pa.Array
    industry: pa.Array

    @classmethod
    def build(cls, persons: int, rng: np.random.Generator) -> _Employers:
        count = min(max(50, persons // 25), 100_000)
        bases = rng.choice(20_000_000, size=count * 2, replace=False) + 80_000_000
        numbers = [n for n in (make_orgnr(int(b)) for b in bases) if n is not None][:count]
        codes = [code for code, _ in INDUSTRIES]
        weights = np.array([w for _, w in INDUSTRIES], float)
        industry = rng.choice(len(codes), size=len(numbers), p=weights / weights.sum())
        return cls(pa.array(numbers), pc.take(pa.array(codes), pa.array(industry)))


@dataclass
class _Specials:
    """Global person indices of the rare defects, chosen once per run."""

    d_number: set[int]
    h_number: set[int]
    malformed: dict[int, str]  # person index -> "ten_digits" | "letter"

    @classmethod
    def choose(cls, persons: int, rng: np.random.Generator) -> _Specials:
        wanted = D_NUMBER_COUNT + H_NUMBER_COUNT + MALFORMED_COUNT
        chosen = [int(i) for i in rng.choice(persons, size=min(wanted, persons), replace=False)]
        d = set(chosen[:D_NUMBER_COUNT])
        h = set(chosen[D_NUMBER_COUNT : D_NUMBER_COUNT + H_NUMBER_COUNT])
        malformed_rows = chosen[D_NUMBER_COUNT + H_NUMBER_COUNT :]
        malformed = {
            row: ("ten_digits" if i % 2 == 0 else "letter") for i, row in enumerate(malformed_rows)
        }
        return cls(d, h, malformed)


class _CsvSink:
    """One output file: header once, rows appended chunk by chunk, hashed as written."""

    def __init__(self, path: Path) -> None:
        self.name = path.name
        self.file: BinaryIO = path.open("wb")
        self.sha256 = hashlib.sha256()
        self.rows = 0
        self.header_written = False

    def write(self, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        options = (
            _CSV
            if not self.header_written
            else pacsv.WriteOptions(include_header=False, quoting_style="none")
        )
        pacsv.write_csv(table, sink, options)
        data = sink.getvalue()
        self.sha256.update(data)
        self.file.write(data)
        self.rows += table.num_rows
        self.header_written = True

    def close(self) -> dict[str, Any]:
        self.file.close()
        return {"rows": self.rows, "sha256": self.sha256.hexdigest()}


def _rng(seed: int, *key: int) -> np.random.Generator:
    """An independent stream per purpose and chunk, so chunks do not depend on one another."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


_EMPLOYER_STREAM, _SPECIAL_STREAM, _CHUNK_STREAM = 1, 2, 3


def generate_registry(
    out_dir: Path,
    persons: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write the synthetic registry into ``out_dir`` and return its manifest.

    Files: population.csv, income.csv, education.csv, employment.csv (UTF-8, ',' delimited,
    a header row) and manifest.json, which lists every deliberate defect by file, 1-based data
    row, column and kind. The same seed and size give byte-identical files.
    """
    if persons < 1:
        raise ValueError("a synthetic registry needs at least one person")
    if seed < 0:
        raise ValueError("the seed is a non-negative integer")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    slots = _IndividualSlots.build()
    employers = _Employers.build(persons, _rng(seed, _EMPLOYER_STREAM))
    specials = _Specials.choose(persons, _rng(seed, _SPECIAL_STREAM))
    sinks = {name: _CsvSink(out_dir / name) for name in COLUMNS}
    defects: list[dict[str, Any]] = []
    try:
        for chunk, start in enumerate(range(0, persons, CHUNK_PERSONS)):
            size = min(CHUNK_PERSONS, persons - start)
            chunk_rng = _rng(seed, _CHUNK_STREAM, chunk)
            tables, chunk_defects = _generate_chunk(
                chunk_rng, start, size, sinks[POPULATION].rows, slots, employers, specials
            )
            for name, table in tables.items():
                sinks[name].write(table)
            defects.extend(chunk_defects)
            if progress is not None:
                progress(start + size, persons)
    finally:
        files = {name: sink.close() for name, sink in sinks.items()}
    for name, info in files.items():
        info["columns"] = list(COLUMNS[name])

    counts: dict[str, int] = {}
    for defect in defects:
        counts[defect["kind"]] = counts.get(defect["kind"], 0) + 1
    manifest = {
        "generator": "spe.ingest.synth",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "persons": persons,
        "chunk_persons": CHUNK_PERSONS,
        "reference_date": REFERENCE_DATE.isoformat(),
        "income_years": list(INCOME_YEARS),
        "identifiers": (
            "Synthetic fødselsnummer: month + 80 with valid classic check digits, unique per "
            "person; the D- and H-number persons carry those numbers in every file."
        ),
        "files": files,
        "defect_rates": {
            "bad_check_digit": BAD_CHECK_DIGIT_RATE,
            "duplicate_row": DUPLICATE_ROW_RATE,
            "missing_value": MISSING_VALUE_RATE,
        },
        "dominant_earner_rate": DOMINANT_EARNER_RATE,
        "defect_counts_per_run": {
            "d_number": D_NUMBER_COUNT,
            "h_number": H_NUMBER_COUNT,
            "malformed": MALFORMED_COUNT,
        },
        "missing_value_columns": list(MISSING_VALUE_COLUMNS),
        "expected_reasons_under": "allow_synthetic only (IdentifierRules(allow_synthetic=True))",
        "defect_totals": counts,
        "defects": defects,
        "municipalities": {code: name for code, name, _ in MUNICIPALITIES},
    }
    (out_dir / MANIFEST).write_text(
        json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return manifest


def _generate_chunk(
    rng: np.random.Generator,
    first_person: int,
    n: int,
    rows_before: int,
    slots: _IndividualSlots,
    employers: _Employers,
    specials: _Specials,
) -> tuple[dict[str, pa.Table], list[dict[str, Any]]]:
    # --- who: sex, birth date (ages 0-99 on the reference date), a unique identifier
    sex = rng.integers(0, 2, n)  # 1 = male: odd individual number
    age_weights = np.array(
        [0.85] * 10
        + [0.95] * 10
        + [1.05] * 40
        + [0.95] * 10
        + [0.7] * 10
        + [0.3] * 10
        + [0.06] * 10
    )
    age = rng.choice(100, size=n, p=age_weights / age_weights.sum())
    birth_year = REFERENCE_DATE.year - age
    year_start = (birth_year - 1970).astype("datetime64[Y]").astype("datetime64[D]")
    days_in_year = 365 + (
        (birth_year % 4 == 0) & ((birth_year % 100 != 0) | (birth_year % 400 == 0))
    )
    birth_days = year_start.astype(np.int64) + (rng.random(n) * days_in_year).astype(np.int64)
    date_index = birth_days - _FIRST_DAY
    individual = slots.assign(date_index, sex)
    birth_days = date_index + _FIRST_DAY
    codes = _synthetic_numbers(birth_days, individual)
    identity = _strings(codes)
    identity = _special_identities(identity, first_person, n, birth_days, individual, sex, specials)
    reasons, _kinds = check_fnr_array(identity, _CHECK_RULES, REFERENCE_DATE)
    if reasons.any():
        raise RuntimeError("the generator made an invalid identifier")
    birth_year = _date_parts(birth_days)[0]

    # --- population register
    first_names = np.where(
        sex == 1,
        rng.integers(0, len(MALE_NAMES), n),
        len(MALE_NAMES) + rng.integers(0, len(FEMALE_NAMES), n),
    )
    name = _join(
        pc.take(pa.array(MALE_NAMES + FEMALE_NAMES), pa.array(first_names)),
        pc.take(pa.array(SURNAMES), pa.array(rng.integers(0, len(SURNAMES), n))),
    )
    house = np.minimum(1 + rng.geometric(0.04, n), 250)
    address = _join(
        pc.take(pa.array(STREETS), pa.array(rng.integers(0, len(STREETS), n))),
        pc.cast(pa.array(house), pa.string()),
    )
    weights = np.array([p for _, _, p in MUNICIPALITIES], float)
    municipality_index = rng.choice(len(MUNICIPALITIES), size=n, p=weights / weights.sum())
    municipality = pc.take(pa.array([c for c, _, _ in MUNICIPALITIES]), municipality_index)
    population = {
        "fnr": identity,
        "name": name,
        "address": address,
        "birth_date": pa.array(birth_days.astype(np.int32), pa.int32()).cast(pa.date32()),
        "sex": pc.take(pa.array(["F", "M"]), pa.array(sex)),
        "municipality": municipality,
    }
    population_table, defects = _with_defects(
        rng, population, codes, first_person, n, rows_before, specials
    )

    tables = {
        POPULATION: population_table,
        INCOME: _income(rng, identity, birth_year, n),
        EDUCATION: _education(rng, identity, birth_year, n),
        EMPLOYMENT: _employment(rng, identity, birth_days, employers, n),
    }
    return tables, defects


def _special_identities(
    identity: pa.Array,
    first_person: int,
    n: int,
    birth_days: np.ndarray,
    individual: np.ndarray,
    sex: np.ndarray,
    specials: _Specials,
) -> pa.Array:
    """Give the D- and H-number persons of this chunk their numbers (valid, ordinary month)."""
    rows: list[int] = []
    numbers: list[str] = []
    groups = ((IdKind.D_NUMBER, specials.d_number), (IdKind.H_NUMBER, specials.h_number))
    for kind, people in groups:
        for person in sorted(p for p in people if first_person <= p < first_person + n):
            row = person - first_person
            born = _EPOCH + dt.timedelta(days=int(birth_days[row]))
            candidates = individual_numbers(born.year)
            start = candidates.index(int(individual[row]))
            sex_letter = "M" if sex[row] == 1 else "F"
            for step in range(0, len(candidates), 2):  # the same parity keeps the same sex
                number = make_fnr(
                    born, candidates[(start + step) % len(candidates)], sex_letter, kind
                )
                if number is not None and number not in numbers:
                    rows.append(row)
                    numbers.append(number)
                    break
    if not rows:
        return identity
    mask = np.zeros(n, bool)
    mask[rows] = True
    ordered = [numbers[i] for i in np.argsort(rows)]
    return pc.replace_with_mask(identity, pa.array(mask), pa.array(ordered, pa.string()))


def _with_defects(
    rng: np.random.Generator,
    columns: dict[str, pa.Array],
    codes: np.ndarray,
    first_person: int,
    n: int,
    rows_before: int,
    specials: _Specials,
) -> tuple[pa.Table, list[dict[str, Any]]]:
    """Population rows with this chunk's defects, and the manifest entries describing them."""
    special_rows: dict[int, str] = {}
    for person in specials.d_number:
        special_rows[person - first_person] = "d_number"
    for person in specials.h_number:
        special_rows[person - first_person] = "h_number"
    for person, how in specials.malformed.items():
        special_rows[person - first_person] = f"malformed_{how}"
    special_rows = {row: kind for row, kind in special_rows.items() if 0 <= row < n}

    def at_least_one(rate: float) -> int:
        return max(1, round(rate * n))

    wanted = {
        "bad_check_digit": at_least_one(BAD_CHECK_DIGIT_RATE),
        "missing_fnr": at_least_one(MISSING_VALUE_RATE / 2),
        "missing_municipality": at_least_one(MISSING_VALUE_RATE / 2),
        "duplicate_row": at_least_one(DUPLICATE_ROW_RATE),
    }
    ordinary = np.setdiff1d(np.arange(n), np.fromiter(special_rows, int, len(special_rows)))
    total = min(sum(wanted.values()), len(ordinary))
    picked = rng.choice(ordinary, size=total, replace=False)
    chosen: dict[str, np.ndarray] = {}
    at = 0
    for kind, count in wanted.items():
        chosen[kind] = np.sort(picked[at : at + count])
        at += count

    fnr_changes: dict[int, str | None] = {}
    for row in chosen["bad_check_digit"]:
        digits = codes[row].tobytes().decode()
        wrong = (int(digits[10]) + 1 + int(rng.integers(0, 9))) % 10
        fnr_changes[int(row)] = digits[:10] + str(wrong)
    for row in chosen["missing_fnr"]:
        fnr_changes[int(row)] = None
    identity = columns["fnr"]
    for row, kind in special_rows.items():
        if kind == "malformed_ten_digits":
            fnr_changes[row] = identity[row].as_py()[:10]
        elif kind == "malformed_letter":
            value = identity[row].as_py()
            at = int(rng.integers(0, 11))
            letter = "ABCDEFGHJKLMNOPRSTUVWXYZ"[int(rng.integers(0, 24))]
            fnr_changes[row] = value[:at] + letter + value[at + 1 :]
    columns = dict(columns)
    columns["fnr"] = _replace(identity, fnr_changes)
    columns["municipality"] = _replace(
        columns["municipality"], {int(r): None for r in chosen["missing_municipality"]}
    )

    # duplicates: a copy of row j inserted before a later original row (or at the end)
    sources = chosen["duplicate_row"]
    insert_before = sources + 1 + (rng.random(len(sources)) * (n - sources)).astype(np.int64)
    sort_keys = np.concatenate([np.arange(n) * 2, insert_before * 2 - 1])
    order = np.argsort(sort_keys, kind="stable")
    take = np.concatenate([np.arange(n), sources])[order]
    position = np.empty(n + len(sources), np.int64)
    position[order] = np.arange(len(order))  # where each original row and copy ended up
    table = pa.table(columns).take(pa.array(take))

    def row_number(original_row: int) -> int:
        return rows_before + int(position[original_row]) + 1

    entries: list[dict[str, Any]] = []
    for row in chosen["bad_check_digit"]:
        entries.append(_defect(row_number(row), "fnr", "bad_check_digit", Reason.BAD_CHECK_DIGIT))
    for row in chosen["missing_fnr"]:
        entries.append(_defect(row_number(row), "fnr", "missing_value", Reason.MISSING))
    for row in chosen["missing_municipality"]:
        entries.append(_defect(row_number(row), "municipality", "missing_value", None))
    for row, kind in special_rows.items():
        if kind == "d_number":
            entries.append(_defect(row_number(row), "fnr", kind, Reason.D_NUMBER_NOT_ALLOWED))
        elif kind == "h_number":
            entries.append(_defect(row_number(row), "fnr", kind, Reason.H_NUMBER_NOT_ALLOWED))
        else:
            entries.append(_defect(row_number(row), "fnr", kind, Reason.NOT_11_DIGITS))
    for copy, source in enumerate(sources):
        entry = _defect(rows_before + int(position[n + copy]) + 1, None, "duplicate_row", None)
        entry["duplicate_of"] = row_number(int(source))
        entries.append(entry)
    for entry in entries:
        if entry["column"] == "fnr":
            entry["value"] = table["fnr"][entry["row"] - rows_before - 1].as_py()
    entries.sort(key=lambda e: e["row"])
    return table, entries


def _defect(row: int, column: str | None, kind: str, reason: Reason | None) -> dict[str, Any]:
    return {
        "file": POPULATION,
        "row": row,
        "column": column,
        "kind": kind,
        "expected_reason": reason.value if reason is not None else None,
    }


def _replace(array: pa.Array, changes: dict[int, str | None]) -> pa.Array:
    if not changes:
        return array
    mask = np.zeros(len(array), bool)
    rows = sorted(changes)
    mask[rows] = True
    return pc.replace_with_mask(
        array, pa.array(mask), pa.array([changes[r] for r in rows], pa.string())
    )


def _income(
    rng: np.random.Generator, identity: pa.Array, birth_year: np.ndarray, n: int
) -> pa.Table:
    """Wage and capital income per person aged 17 or more in each year."""
    wage_level = rng.lognormal(np.log(520_000), 0.45, n)
    has_capital = rng.random(n) < 0.55
    capital_level = rng.lognormal(np.log(6_000), 1.6, n) * has_capital
    dominant = np.zeros(n, bool)
    adults = np.flatnonzero(birth_year <= INCOME_YEARS[0] - 18)
    if adults.size:
        count = min(max(1, round(DOMINANT_EARNER_RATE * n)), adults.size)
        dominant[rng.choice(adults, size=count, replace=False)] = True
    capital_level = np.where(dominant, rng.lognormal(np.log(4e8), 0.8, n), capital_level)

    years = np.array(INCOME_YEARS)
    person = np.repeat(np.arange(n), len(years))
    year = np.tile(years, n)
    age = year - birth_year[person]
    keep = age >= 17
    person, year, age = person[keep], year[keep], age[keep]
    work_share = np.select(
        [age < 20, age < 25, age < 62, age < 67, age < 70], [0.45, 0.7, 0.85, 0.6, 0.25], 0.03
    )
    works = rng.random(len(person)) < work_share
    youth = np.where(age < 25, 0.45, 1.0)
    wage = (
        wage_level[person]
        * youth
        * 1.035 ** (year - years[0])
        * rng.lognormal(0.0, 0.08, len(person))
        * works
    )
    capital = capital_level[person] * rng.lognormal(0.0, 0.5, len(person))
    return pa.table(
        {
            "fnr": pc.take(identity, pa.array(person)),
            "year": pa.array(year, pa.int32()),
            "wage_income": pa.array(np.rint(wage).astype(np.int64)),
            "capital_income": pa.array(np.rint(capital).astype(np.int64)),
        }
    )


def _education(
    rng: np.random.Generator, identity: pa.Array, birth_year: np.ndarray, n: int
) -> pa.Table:
    """Highest completed NUS level of everyone aged 16 or more."""
    person = np.flatnonzero(REFERENCE_DATE.year - birth_year >= 16)
    born = birth_year[person]
    older = rng.choice(9, size=len(person), p=NUS_SHARE_BORN_BEFORE_1960)
    younger = rng.choice(9, size=len(person), p=NUS_SHARE_BORN_1960_ON)
    level = np.where(born < 1960, older, younger)
    completion_age = np.array(NUS_COMPLETION_AGE)
    age_now = REFERENCE_DATE.year - born
    level = np.minimum(level, np.searchsorted(completion_age, age_now, side="right") - 1)
    completed = born + completion_age[level] + rng.integers(0, 4, len(person))
    completed = np.minimum(completed, REFERENCE_DATE.year)
    return pa.table(
        {
            "fnr": pc.take(identity, pa.array(person)),
            "level": pc.cast(pa.array(level), pa.string()),
            "completed_year": pa.array(completed, pa.int32(), mask=level == 0),
        }
    )


def _employment(
    rng: np.random.Generator,
    identity: pa.Array,
    birth_days: np.ndarray,
    employers: _Employers,
    n: int,
) -> pa.Table:
    """0-3 employment spells per person aged 16 or more, the last one possibly ongoing."""
    age = (_LAST_DAY - birth_days) / 365.25
    shares = np.where(
        (age >= 20)[:, None] & (age < 67)[:, None],
        [0.1, 0.45, 0.3, 0.15],
        np.where(
            (age >= 16)[:, None] & (age < 20)[:, None], [0.5, 0.4, 0.1, 0.0], [0.7, 0.25, 0.05, 0.0]
        ),
    )
    spells = (rng.random(n)[:, None] > np.cumsum(shares, axis=1)).sum(axis=1)
    spells[age < 16] = 0
    first_day = (FIRST_EMPLOYMENT - _EPOCH).days
    start = np.maximum(birth_days + int(16 * 365.25), first_day) + rng.exponential(3 * 365, n)

    persons, starts, ends, spell_number = [], [], [], []
    for number in range(3):
        length = rng.exponential(5 * 365, n) + 30
        end = start + length
        active = (spells > number) & (start <= _LAST_DAY)
        persons.append(np.flatnonzero(active))
        starts.append(start[active])
        ends.append(end[active])
        spell_number.append(np.full(active.sum(), number))
        start = end + rng.exponential(0.5 * 365, n) + 1
    person = np.concatenate(persons)
    order = np.lexsort((np.concatenate(spell_number), person))
    person = person[order]
    start_day = np.concatenate(starts)[order].astype(np.int64)
    end_day = np.concatenate(ends)[order].astype(np.int64)
    employer = (len(employers.orgnr) * rng.random(len(person)) ** 3).astype(np.int64)
    return pa.table(
        {
            "fnr": pc.take(identity, pa.array(person)),
            "employer_orgnr": pc.take(employers.orgnr, pa.array(employer)),
            "industry": pc.take(employers.industry, pa.array(employer)),
            "start_date": pa.array(start_day.astype(np.int32), pa.int32()).cast(pa.date32()),
            "end_date": pa.array(
                np.minimum(end_day, _LAST_DAY).astype(np.int32),
                pa.int32(),
                mask=end_day > _LAST_DAY,
            ).cast(pa.date32()),
        }
    )
