"""Disclosure-control benchmark: SPE's checked crosstab against plain pandas and against ACRO.

Prints one JSON line per figure. Sizes: 1 M and 10 M rows (``--rows N``, repeatable;
``--quick``: 100 k and 1 M) of synthetic data: three categorical dimensions of 20 x 10 x 5
categories (skewed sizes), a skewed numeric column (lognormal with a few dominant values) and a
person id. Each figure is measured in a fresh child process that loads the same Parquet file
first: its time is the best of ``--repeat`` runs, and its memory is the peak RSS while the
operation runs with the data already loaded (the peak is reset with /proc/self/clear_refs before
each run), reported whole and as the extra over the loaded data. ACRO runs in ``.venv-acro``
(it pins pandas < 3) through this same file, which imports nothing from SPE at module level.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ACRO_PYTHON = REPO / ".venv-acro" / "bin" / "python"
INDEX = ["a", "b"]
COLUMNS = "c"
DIMENSIONS = {"a": 20, "b": 10, "c": 5}
GOALS = {  # figure -> (goal, sentence)
    "spe_over_pandas.count": (1.5, "<= 1.5"),
    "spe_over_pandas.mean": (2.0, "<= 2"),
    "acro_over_spe": (10.0, ">= 10"),
    "memory": (1.5, "<= 1.5"),
}
OPERATIONS = ("count", "mean")
DIMS = ("string", "category")


def emit(name: str, value: float, unit: str, **extra: object) -> None:
    print(json.dumps({"name": name, "value": round(value, 4), "unit": unit, **extra}), flush=True)


def progress(text: str) -> None:
    print(f"[sdc] {text}", file=sys.stderr, flush=True)


# -- data -----------------------------------------------------------------------------------
def generate(
    rows: int, path: Path, rows_per_person: float, dims: str, pid: str, seed: int = 7
) -> None:
    """The synthetic table, written to Parquet.

    ``dims`` "string": the dimensions are plain text columns, as SPE's extracts store them
    (they read back as strings: pandas 3's Arrow strings in SPE, Python objects in ACRO's
    pandas 2); "category": pandas categoricals (Arrow dictionaries), which read back as
    categoricals in both. ``pid`` "int": int64 person numbers; "pseudonym": 32 hexadecimal
    characters in an Arrow string column, the form of the person column in SPE's extracts
    (``spe.projects.extracts._hex_strings``: a 16-byte pseudonym as text), which
    ``spe.analysis.load`` returns as pandas 3's Arrow-backed ``str``.
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    data: dict[str, Any] = {}
    for name, k in DIMENSIONS.items():
        weights = 1.0 / np.arange(1, k + 1)  # Zipf-like: the last categories are small
        codes = rng.choice(k, rows, p=weights / weights.sum())
        labels = [f"{name}{i:02d}" for i in range(k)]
        column = pd.Categorical.from_codes(codes, categories=labels)
        data[name] = column if dims == "category" else np.asarray(column, dtype=object)
    v = rng.lognormal(10.0, 1.0, rows)
    dominant = rng.choice(rows, min(rows, 50), replace=False)
    v[dominant] *= 1e4  # a few dominant earners
    data["v"] = v
    persons = max(int(rows / rows_per_person), 1)
    if rows_per_person == 1:
        person = rng.permutation(rows).astype(np.int64)
    else:
        person = rng.integers(0, persons, rows, dtype=np.int64)
    table = pa.Table.from_pandas(pd.DataFrame(data), preserve_index=False)
    if pid == "int":
        column = pa.array(person)
    else:
        raw = np.frombuffer(rng.bytes(16 * persons), dtype=np.uint8).reshape(persons, 16)
        digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
        hexes = np.empty((persons, 32), dtype=np.uint8)
        hexes[:, 0::2] = digits[raw >> 4]
        hexes[:, 1::2] = digits[raw & 15]
        # Built from the buffers as the extracts build it (an Arrow string column).
        small = 32 * rows < 2**31
        offsets = np.arange(0, 32 * (rows + 1), 32, dtype=np.int32 if small else np.int64)
        kind = pa.StringArray if small else pa.LargeStringArray
        column = kind.from_buffers(
            rows, pa.py_buffer(offsets), pa.py_buffer(hexes[person].tobytes())
        )
    pq.write_table(table.append_column("pid", column), path)


# -- one measured operation, in its own process -----------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS; False where Linux will not."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _operation(kind: str, df: Any) -> Any:
    """The callable a child times: (tool, statistic) -> a function of no arguments."""
    tool, agg = kind.split("-")
    if tool == "pandas":
        import pandas as pd

        index = [df[name] for name in INDEX]
        if agg == "count":
            return lambda: pd.crosstab(index, df[COLUMNS])
        return lambda: pd.crosstab(index, df[COLUMNS], values=df["v"], aggfunc="mean")
    if tool == "spe":
        from spe.sdc import Rules, check_table

        rules = Rules()

        def checked() -> Any:
            report = check_table(
                df,
                index=INDEX,
                columns=COLUMNS,
                values=None if agg == "count" else "v",
                agg=agg,
                person_id="pid",
                rules=rules,
            )
            return report.table, report.status  # the released table and its verdict

        return checked
    if tool == "acro":
        import logging
        import warnings

        warnings.filterwarnings("ignore")
        import acro

        logging.disable(logging.CRITICAL)
        session = acro.ACRO(suppress=False)
        index = [df[name] for name in INDEX]
        if agg == "count":
            return lambda: session.crosstab(index, df[COLUMNS])
        return lambda: session.crosstab(index, df[COLUMNS], values=df["v"], aggfunc="mean")
    raise SystemExit(f"unknown operation {kind!r}")


def child(kind: str, data: Path, repeat: int) -> None:
    """Load the data, then time ``kind`` ``repeat`` times; print one JSON object."""
    import pandas as pd

    columns = [*INDEX, COLUMNS, "v"] + ([] if kind.startswith("acro") else ["pid"])
    df = pd.read_parquet(data, columns=columns)
    run = _operation(kind, df)
    gc.collect()
    loaded = _status_kib("VmRSS")
    seconds = []
    peaks = []
    reset = True
    for _ in range(repeat):
        gc.collect()
        before = _status_kib("VmRSS")
        reset = _reset_peak() and reset
        started = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - started)
        peak = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peaks.append((peak, peak - before))
        del result
    print(
        json.dumps(
            {
                "seconds": seconds,
                "loaded_mib": loaded / 1024,
                "peak_mib": max(p for p, _ in peaks) / 1024,
                "extra_mib": max(e for _, e in peaks) / 1024,
                "peak_reset": reset,
                "pandas": pd.__version__,
            }
        )
    )


def measure(kind: str, data: Path, repeat: int) -> dict[str, Any]:
    python = str(ACRO_PYTHON) if kind.startswith("acro") else sys.executable
    out = subprocess.run(
        [python, __file__, "--child", kind, "--data", str(data), "--repeat", str(repeat)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{kind} failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the benchmark ------------------------------------------------------------------------------
def _goal(figure: str, goal: str, ratio: float, **extra: object) -> None:
    """One ratio with its goal (a GOALS key) and whether it is met."""
    limit, sentence = GOALS[goal]
    passed = ratio >= limit if sentence.startswith(">=") else ratio <= limit
    emit(f"sdc.{figure}", ratio, "ratio", goal=sentence, passed=passed, **extra)


def crosstabs(rows: int, dims: str, work: Path, args: argparse.Namespace) -> list[str]:
    """All figures for one size and kind of dimension; returns the parts that failed."""
    path = work / f"sdc-{rows}-{dims}.parquet"
    started = time.perf_counter()
    generate(rows, path, args.rows_per_person, dims, args.pid)
    progress(f"{rows:,} rows ({dims} dimensions) in {time.perf_counter() - started:.1f} s")
    repeat = args.repeat or (3 if rows <= 2_000_000 else 2)
    tools = ["pandas", "spe"]
    acro_reason = None
    if args.no_acro:
        acro_reason = "--no-acro"
    elif not ACRO_PYTHON.exists():
        acro_reason = f"{ACRO_PYTHON.parent.parent.name} is missing: run make setup"
    else:
        tools.append("acro")
    failed = []
    results: dict[str, dict[str, Any]] = {}
    common = {"rows": rows, "dims": dims, "pid": args.pid, "rows_per_person": args.rows_per_person}
    for agg in OPERATIONS:
        for tool in tools:
            kind = f"{tool}-{agg}"
            runs = 1 if tool == "acro" and rows > 2_000_000 else repeat
            progress(f"{rows:,} rows, {dims}: {kind} x {runs}")
            try:
                res = measure(kind, path, runs)
            except RuntimeError as exc:
                emit(f"sdc.{tool}.{agg}.error", 1, "error", error=str(exc), **common)
                failed.append(kind)
                continue
            results[kind] = res
            emit(
                f"sdc.{tool}.{agg}",
                min(res["seconds"]),
                "s",
                per_run=[round(s, 3) for s in res["seconds"]],
                pandas=res["pandas"],
                **common,
            )
            emit(
                f"sdc.{tool}.{agg}.peak_rss",
                res["peak_mib"],
                "MiB",
                loaded_mib=round(res["loaded_mib"], 1),
                extra_mib=round(res["extra_mib"], 1),
                measured="peak RSS while the operation runs, data loaded first"
                + ("" if res["peak_reset"] else " (peak not resettable: lifetime maxrss)"),
                **common,
            )
        if acro_reason:
            emit(f"sdc.acro.{agg}", 0, "s", skipped=True, reason=acro_reason, **common)
        pandas, spe, peer = (results.get(f"{t}-{agg}") for t in ("pandas", "spe", "acro"))
        if pandas and spe:
            p_s, s_s = min(pandas["seconds"]), min(spe["seconds"])
            _goal(
                f"spe_over_pandas.{agg}",
                f"spe_over_pandas.{agg}",
                s_s / p_s,
                spe_s=round(s_s, 3),
                pandas_s=round(p_s, 3),
                **common,
            )
            _goal(
                f"memory.{agg}",
                "memory",
                spe["extra_mib"] / max(pandas["extra_mib"], 1.0),
                basis="extra MiB over the loaded data, SPE/pandas",
                peak_ratio=round(spe["peak_mib"] / pandas["peak_mib"], 3),
                spe_extra_mib=round(spe["extra_mib"], 1),
                pandas_extra_mib=round(pandas["extra_mib"], 1),
                **common,
            )
        if spe and peer:
            _goal(
                f"acro_over_spe.{agg}",
                "acro_over_spe",
                min(peer["seconds"]) / min(spe["seconds"]),
                acro_s=round(min(peer["seconds"]), 3),
                **common,
            )
    path.unlink()
    return failed


def safe_version_figure(
    cells_per_side: int = 50, seed: int = 11, columns: int | None = None
) -> None:
    """Secondary suppression on a 50 x 50 (or rows x ``columns``) count table with some small
    cells, each failing cell's protection levels checked by LP (issue 14)."""
    import numpy as np
    import pandas as pd

    from spe.sdc import check_table, safe_version

    rng = np.random.default_rng(seed)
    k, m = cells_per_side, columns or cells_per_side
    counts = rng.integers(15, 200, (k, m))
    small = rng.random((k, m)) < 0.05
    counts[small] = rng.integers(1, 10, int(small.sum()))
    r, c = np.divmod(np.repeat(np.arange(k * m), counts.ravel()), m)
    df = pd.DataFrame({"r": r, "c": c, "pid": np.arange(len(r))})
    report = check_table(df, "r", "c", person_id="pid")
    seconds = []
    for _ in range(3):
        started = time.perf_counter()
        safe = safe_version(report, "suppress")
        seconds.append(time.perf_counter() - started)
    kinds = [change.kind for change in safe.changes]
    emit(
        "sdc.safe_version.suppress",
        min(seconds),
        "s",
        shape=[k, m],
        rows=len(df),
        primary=kinds.count("primary"),
        secondary=kinds.count("secondary"),
        status=safe.status.value,
        per_run=[round(s, 3) for s in seconds],
    )


def _history_world(persons: int, seed: int) -> dict[str, Any]:
    """Persons with public categories: region (10), age 20-69, sex (2), education (4)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = np.unique(rng.integers(-(2**63), 2**63 - 1, size=persons + persons // 10, dtype=np.int64))
    ids = ids[:persons]  # sorted, so every subset taken in order is sorted too
    return {
        "id": ids,
        "region": rng.integers(0, 10, persons),
        "age": rng.integers(20, 70, persons),
        "sex": rng.integers(0, 2, persons),
        "edu": rng.choice(4, persons, p=[0.1, 0.3, 0.4, 0.2]),
    }


def _history_table(world: dict[str, Any], rng: Any, which: int | None = None) -> list[Any]:
    """A 100-cell table: region x 5-year age band, over all persons or a public subgroup."""
    import numpy as np

    which = int(rng.integers(0, 4)) if which is None else which
    if which == 0:
        mask = np.ones(len(world["id"]), dtype=bool)
    elif which == 1:
        mask = world["sex"] == rng.integers(0, 2)
    elif which == 2:
        mask = world["edu"] == rng.integers(0, 4)
    else:
        mask = world["age"] <= rng.integers(25, 69)
    cell = world["region"] * 10 + (world["age"] - 20) // 5
    keys = cell[mask]
    ids = world["id"][mask]
    order = np.argsort(keys, kind="stable")
    bounds = np.searchsorted(keys[order], np.arange(101))
    return [ids[order][bounds[c] : bounds[c + 1]] for c in range(100)]


def history_figures(counts: tuple[int, ...] = (10, 100, 1000), persons: int = 1_000_000) -> None:
    """The cumulative audit against a holder's history of 100-cell tables over 1 M persons.

    The history is built release by release as record_release builds it (History.extended),
    kept as the stored compact form in a SQLite table, and for each size a new 100-cell table
    is checked: load (read the row, decode) plus audit. Goal: <= 2 s at 1,000 tables.
    """
    import sqlite3

    import numpy as np

    from spe.sdc.audit import History, NewCell, ReleaseInfo, audit

    world = _history_world(persons, seed=21)
    rng = np.random.default_rng(22)
    history = History.empty("bench-holder")
    built = 0
    build_seconds = 0.0
    previous = None
    with tempfile.TemporaryDirectory(prefix="spe-bench-history-") as tmp:
        db = sqlite3.connect(str(Path(tmp) / "history.db"))
        db.execute("CREATE TABLE snap (n INTEGER, data BLOB)")
        for target in counts:
            while built < target:
                cells = [NewCell("count", c) for c in _history_table(world, rng) if len(c)]
                when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=built)
                info = ReleaseInfo(f"r{built}", f"p{built % 7}", f"T{built}", when, "t.csv")
                started = time.perf_counter()
                history = history.extended(info, cells)
                build_seconds += time.perf_counter() - started
                built += 1
            blob = history.to_bytes()
            db.execute("DELETE FROM snap")
            db.execute("INSERT INTO snap VALUES (?, ?)", (target, blob))
            db.commit()
            # the audited table covers every person: the most work for the audit
            new = [NewCell("count", c) for c in _history_table(world, rng, 0) if len(c)]
            runs = []
            for _ in range(2):
                started = time.perf_counter()
                (data,) = db.execute("SELECT data FROM snap").fetchone()
                loaded = History.from_bytes(data)
                load_s = time.perf_counter() - started
                result = audit(loaded, new, 10)
                runs.append((time.perf_counter() - started, load_s))
            total, load_s = min(runs)
            emit(
                "sdc.history.audit",
                total,
                "s",
                tables=target,
                cells=history.n_cells,
                persons=len(history.persons),
                atoms=history.n_atoms,
                rank=history.basis.rank,
                stored_mib=round(len(blob) / 2**20, 1),
                load_s=round(load_s, 3),
                audit_s=round(total - load_s, 3),
                findings=len(result.findings),
                bounds_s=round(result.figures.get("bounds_seconds", 0.0), 3),
                small_atoms_bounded=int(result.figures.get("bounds_candidates", 0)),
                bounds_witnessed=int(result.figures.get("bounds_witnessed", 0)),
                bounds_lps=int(result.figures.get("bounds_lps", 0)),
                growth=None if previous is None else round(total / previous, 2),
                goal="<= 2 s at 1,000 tables",
                record_s_per_table=round(build_seconds / built, 3),
            )
            previous = total
        db.close()


def sum_history_figures(
    counts: tuple[int, ...] = (10, 100, 1000), persons: int = 1_000_000
) -> None:
    """The same history as ``history_figures``, of sums of a wage with each person's value (as
    the export path passes them): a new 100-cell sum table is checked with the p % rule on the
    values, read as the export check reads them (the stored history decoded, the holder's
    value map unsealed and decoded, spe.sdc.audit.contributions_of). Goal: <= 2 s at 1,000."""
    import os
    import sqlite3

    import numpy as np

    from spe.keys.platform import PlatformKey
    from spe.sdc.audit import History, NewCell, ReleaseInfo, ValueMap, audit, contributions_of
    from spe.sdc.audit.history import sum_space

    variable = "bench.wage"
    space = sum_space(variable)
    key = PlatformKey(os.urandom(32))  # the platform key's recipe, a throw-away key
    world = _history_world(persons, seed=21)
    wage = np.random.default_rng(23).lognormal(10.0, 0.7, persons)
    rng = np.random.default_rng(22)

    def table(which: int | None = None) -> list[Any]:
        out = []
        for c in _history_table(world, rng, which):
            if len(c):
                at = np.searchsorted(world["id"], c)
                out.append(NewCell("sum", c, variable, "", wage[at]))
        return out

    history = History.empty("bench-holder", space)
    values = ValueMap.empty()
    built = 0
    record_seconds = 0.0
    previous = None
    with tempfile.TemporaryDirectory(prefix="spe-bench-sum-history-") as tmp:
        db = sqlite3.connect(str(Path(tmp) / "history.db"))
        db.execute("CREATE TABLE snap (n INTEGER, data BLOB, sealed BLOB)")
        for target in counts:
            while built < target:
                cells = table()
                when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=built)
                info = ReleaseInfo(f"r{built}", f"p{built % 7}", f"T{built}", when, "t.csv")
                started = time.perf_counter()
                history = history.extended(info, cells)
                values = values.merged(ValueMap.of_cells(cells, space))
                record_seconds += time.perf_counter() - started
                built += 1
            blob = history.to_bytes()
            sealed = key.wrap(values.to_bytes(), f"sdc-value-map:bench-holder:{space}")
            db.execute("DELETE FROM snap")
            db.execute("INSERT INTO snap VALUES (?, ?, ?)", (target, blob, sealed))
            db.commit()
            new = table(0)  # over every person: the most work for the audit
            runs = []
            for _ in range(2):
                started = time.perf_counter()
                data, stored = db.execute("SELECT data, sealed FROM snap").fetchone()
                loaded = History.from_bytes(data)
                opened = ValueMap.from_bytes(
                    key.unwrap(stored, f"sdc-value-map:bench-holder:{space}")
                )
                load_s = time.perf_counter() - started
                result = audit(
                    loaded, new, 10, contributions=contributions_of({space: opened}, new)
                )
                runs.append((time.perf_counter() - started, load_s))
            total, load_s = min(runs)
            emit(
                "sdc.history.sum_audit",
                total,
                "s",
                tables=target,
                cells=history.n_cells,
                persons=len(history.persons),
                atoms=history.n_atoms,
                values_mib=round(len(sealed) / 2**20, 1),
                load_s=round(load_s, 3),
                audit_s=round(total - load_s, 3),
                findings=len(result.findings),
                rules=sorted({f.rule for f in result.findings}),
                bounds_s=round(result.figures.get("bounds_seconds", 0.0), 3),
                growth=None if previous is None else round(total / previous, 2),
                goal="<= 2 s at 1,000 tables",
                record_s_per_table=round(record_seconds / built, 3),
                loadavg_1min=os.getloadavg()[0],
            )
            previous = total
        db.close()


def small_groups_figure(persons: int = 20_000, tables: int = 100) -> None:
    """The audit's bounds where the history leaves many small groups: the same 100-cell tables
    over 20,000 persons (cells below 10 left out, as the threshold would), so that most atoms
    hold fewer than 10 persons; a new table over everyone is audited with the default budget
    and with one long enough to settle every group (how long the bounds take in full)."""
    import numpy as np

    from spe.sdc.audit import History, NewCell, ReleaseInfo, audit
    from spe.sdc.audit.bounds import BOUNDS_SECONDS

    world = _history_world(persons, seed=21)
    rng = np.random.default_rng(22)
    history = History.empty("bench-holder")
    for n in range(tables):
        cells = [NewCell("count", c) for c in _history_table(world, rng) if len(c) >= 10]
        when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=n)
        history = history.extended(ReleaseInfo(f"r{n}", "p", f"T{n}", when, "t.csv"), cells)
    new = [NewCell("count", c) for c in _history_table(world, rng, 0) if len(c)]
    for budget in (BOUNDS_SECONDS, 120.0):
        started = time.perf_counter()
        result = audit(history, new, 10, bounds_seconds=budget)
        figures = result.figures
        emit(
            "sdc.history.small_groups",
            time.perf_counter() - started,
            "s",
            persons=persons,
            tables=tables,
            atoms=history.n_atoms,
            small_atoms=int((history.sizes < 10).sum()),
            budget_s=budget,
            bounds_s=round(figures.get("bounds_seconds", 0.0), 3),
            small_atoms_bounded=int(figures.get("bounds_candidates", 0)),
            bounds_witnessed=int(figures.get("bounds_witnessed", 0)),
            bounds_lps=int(figures.get("bounds_lps", 0)),
            status=result.status.value,
            rules=sorted({f.rule for f in result.findings}),
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 k and 1 M rows")
    parser.add_argument("--rows", type=int, action="append", help="rows (repeatable)")
    parser.add_argument("--no-acro", action="store_true", help="do not run ACRO")
    parser.add_argument(
        "--dims", choices=DIMS, action="append", help="kind of dimension column (default: both)"
    )
    parser.add_argument("--repeat", type=int, help="runs per figure (default 3; 2 above 2 M rows)")
    parser.add_argument(
        "--rows-per-person",
        type=float,
        default=1.0,
        help="1 (default): one row per person; more: repeated persons (person-years)",
    )
    parser.add_argument(
        "--pid",
        choices=("int", "pseudonym"),
        default="int",
        help="person ids: int64 numbers (default) or 32-character hex pseudonyms as in SPE's "
        "extracts",
    )
    parser.add_argument(
        "--history-only", action="store_true", help="only the cumulative audit's history figures"
    )
    parser.add_argument(
        "--history-tables",
        type=int,
        action="append",
        help="history sizes in released tables (default 10, 100, 1000)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    # run.py hands every benchmark the same arguments: ignore the other benchmarks' ones.
    args, _ = parser.parse_known_args(argv)
    if args.child:
        child(args.child, args.data, args.repeat or 1)
        return 0
    sizes = args.rows or ([100_000, 1_000_000] if args.quick else [1_000_000, 10_000_000])
    failed: list[str] = []
    if not args.history_only:
        with tempfile.TemporaryDirectory(prefix="spe-bench-sdc-") as tmp:
            for rows in sorted(sizes):
                for dims in args.dims or DIMS:
                    failed += crosstabs(rows, dims, Path(tmp), args)
        try:
            safe_version_figure()
            safe_version_figure(20, columns=10)
        except Exception as exc:
            emit("sdc.safe_version.error", 1, "error", error=f"{type(exc).__name__}: {exc}")
            failed.append("safe_version")
    try:
        history_figures(tuple(sorted(args.history_tables or [10, 100, 1000])))
    except Exception as exc:
        emit("sdc.history.error", 1, "error", error=f"{type(exc).__name__}: {exc}")
        failed.append("history")
    try:
        sum_history_figures(tuple(sorted(args.history_tables or [10, 100, 1000])))
    except Exception as exc:
        emit("sdc.history.sum_audit.error", 1, "error", error=f"{type(exc).__name__}: {exc}")
        failed.append("sum_history")
    try:
        small_groups_figure()
    except Exception as exc:
        emit("sdc.history.small_groups.error", 1, "error", error=f"{type(exc).__name__}: {exc}")
        failed.append("small_groups")
    if failed:
        progress(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
