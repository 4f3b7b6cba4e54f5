"""Runs the peer, ACRO, on tables described by SPE's agreement test; prints nothing, writes JSON.

Runs under ``.venv-acro/bin/python`` (ACRO pins pandas < 3; SPE runs on pandas 3), so it imports
nothing from SPE. One process checks every table, because importing ACRO takes seconds:

    .venv-acro/bin/python tests/acro_runner.py DATA.parquet TABLES.json OUT.json

DATA.parquet holds every case's rows with a ``case`` column; TABLES.json is a list of
``{"id", "case", "index": [..], "columns": [..], "values": name or null, "agg": name}``.
OUT.json gets, per table id, ACRO's overall status, each check's status, and per cell the
checks that flagged it (ACRO's ``outcome`` frame, "ok" being no check), labels as strings.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from importlib.metadata import version
from typing import Any


def _labels(label: Any, levels: int) -> list[str]:
    parts = label if isinstance(label, tuple) else (label,)
    return [str(p) for p in parts[-levels:]]


def _flags(text: Any) -> list[str]:
    """ACRO writes "ok" or the flagging checks as "NameA; NameB; " into each outcome cell."""
    text = str(text).strip()
    if text in ("", "ok"):
        return []
    return [part.strip() for part in text.split(";") if part.strip()]


def check_tables(data: Any, tables: list[dict[str, Any]]) -> dict[str, Any]:
    import acro

    logging.disable(logging.CRITICAL)  # ACRO logs every table at INFO level
    session = acro.ACRO(suppress=False)
    by_case = {case: part.reset_index(drop=True) for case, part in data.groupby("case")}
    out: dict[str, Any] = {}
    for spec in tables:
        df = by_case[spec["case"]]
        index = [df[name] for name in spec["index"]]
        columns = [df[name] for name in spec["columns"]]
        agg = spec["agg"]
        try:
            if agg == "count":
                session.crosstab(index, columns)
            else:
                session.crosstab(index, columns, values=df[spec["values"]], aggfunc=agg)
        except Exception as exc:  # reported per table; the test names it
            out[spec["id"]] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        record = list(session.results.results.values())[-1]
        outcome = record.outcome
        n_cols = len(spec["columns"])
        cells = []
        for row_label, row in outcome.iterrows():
            for col_label, text in row.items():
                cells.append(
                    [
                        _labels(row_label, len(spec["index"])),
                        _labels(col_label, n_cols),
                        _flags(text),
                    ]
                )
        out[spec["id"]] = {
            "status": record.status,
            "check_status": dict(record.fair.get("check_status", {})),
            "cells": cells,
        }
    return out


def main(argv: list[str]) -> int:
    data_path, tables_path, out_path = argv
    warnings.filterwarnings("ignore")
    import pandas as pd

    # ACRO formats whole frames into debug messages even when logging is off; tiny display
    # limits make that cheap (about 40 % of its time on small tables) and change no outcome.
    pd.set_option("display.max_rows", 1, "display.max_columns", 1, "display.width", 40)
    started = time.perf_counter()
    data = pd.read_parquet(data_path)
    with open(tables_path, encoding="utf-8") as fh:
        tables = json.load(fh)
    results = check_tables(data, tables)
    with open(out_path, "w", encoding="utf-8") as fh:
        json.dump(
            {
                "acro_version": version("acro"),
                "pandas_version": pd.__version__,
                "seconds": round(time.perf_counter() - started, 3),
                "tables": results,
            },
            fh,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
