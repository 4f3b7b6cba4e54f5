"""The functions behind `spe sdc crosstab` and `spe sdc model`: read a file, load rules, check.

Each returns a report whose ``to_dict()`` is the command's JSON; the CLI only parses options,
calls one of these and prints the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from spe.sdc.check import ModelReport, TableReport, check_table
from spe.sdc.differencing import ReleasedTable
from spe.sdc.errors import SDCInputError
from spe.sdc.model import check_formula
from spe.sdc.rules import Rules, load_rules


def parse_columns(text: str | Sequence[str]) -> list[str]:
    """'sex, region' or ['sex', 'region'] -> ['sex', 'region'] (for --index and --columns)."""
    items = [text] if isinstance(text, str) else list(text)
    names = [name.strip() for item in items for name in item.split(",")]
    names = [name for name in names if name]
    if not names:
        raise SDCInputError("Give at least one column name, e.g. --index sex,region.")
    return names


def read_data(path: Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A CSV or Parquet file as a DataFrame (only ``columns`` when given, which is faster)."""
    path = Path(path)
    if not path.is_file():
        raise SDCInputError(f"There is no data file at {path}.")
    wanted = list(dict.fromkeys(columns)) if columns else None
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            schema_names = pq.read_schema(path).names
            _require(path, schema_names, wanted)
            table = pq.read_table(path, columns=wanted)
        elif suffix in (".csv", ".txt", ".gz"):
            import pyarrow.csv as pacsv

            with pacsv.open_csv(path) as reader:  # the header, to name a missing column
                _require(path, reader.schema.names, wanted)
            options = pacsv.ConvertOptions(include_columns=wanted) if wanted else None
            table = pacsv.read_csv(path, convert_options=options)
        else:
            raise SDCInputError(
                f"{path.name} is neither CSV nor Parquet; give a .csv or .parquet file."
            )
    except SDCInputError:
        raise
    except KeyError as exc:
        raise SDCInputError(f"{path.name} has no column {exc}.") from None
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError and others on bad files
        raise SDCInputError(
            f"{path.name} cannot be read as {'Parquet' if suffix in ('.parquet', '.pq') else 'CSV'}"
            f": {str(exc).splitlines()[0]}"
        ) from None
    frame = table.to_pandas()
    _require(path, list(frame.columns), wanted)
    return frame


def _require(path: Path, present: list[str], wanted: list[str] | None) -> None:
    missing = [c for c in wanted or [] if c not in present]
    if missing:
        raise SDCInputError(
            f"{path.name} has no column {missing[0]!r}; its columns are {', '.join(present)}."
        )


def effective_rules(
    policy: Path | None = None,
    policies_dir: Path | None = None,
    holder: str | None = None,
    dataset: str | None = None,
) -> Rules:
    """The rules for a check: platform default, holder, dataset, then ``--policy FILE``."""
    if policies_dir is None:
        from spe.config import get_settings

        policies_dir = Path(get_settings().policies_dir)
    return load_rules(policies_dir, holder=holder, dataset=dataset, extra=policy)


def crosstab_command(
    data: Path,
    index: str | Sequence[str],
    columns: str | Sequence[str],
    values: str | None = None,
    agg: str = "count",
    person_id: str | None = None,
    policy: Path | None = None,
    *,
    policies_dir: Path | None = None,
    holder: str | None = None,
    dataset: str | None = None,
    released: Sequence[ReleasedTable] = (),
) -> TableReport:
    """`spe sdc crosstab --data FILE --index COLS --columns COLS [...] --json`."""
    index_names, column_names = parse_columns(index), parse_columns(columns)
    needed = [*index_names, *column_names, *(c for c in (values, person_id) if c)]
    frame = read_data(data, needed)
    rules = effective_rules(policy, policies_dir, holder, dataset)
    return check_table(
        frame,
        index_names,
        column_names,
        values=values,
        agg=agg,
        person_id=person_id,
        rules=rules,
        released=released,
    )


def model_command(
    data: Path,
    formula: str,
    kind: str = "ols",
    person_id: str | None = None,
    policy: Path | None = None,
    *,
    policies_dir: Path | None = None,
    holder: str | None = None,
    dataset: str | None = None,
) -> ModelReport:
    """`spe sdc model --data FILE --formula "y ~ x1 + x2" --kind ols|logit|probit --json`."""
    frame = read_data(data)
    rules = effective_rules(policy, policies_dir, holder, dataset)
    return check_formula(frame, formula, kind, rules, person_id=person_id)
