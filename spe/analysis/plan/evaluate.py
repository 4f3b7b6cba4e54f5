"""The one evaluator of plans, in the workspace (preview) and in the control plane (release).

A validated plan is compiled to one DuckDB query: identifiers quoted after validation, every
literal a bound parameter, a fixed set of SQL functions, no user-defined functions. Each run has
its own in-memory connection with a memory cap, spilling to a temporary folder, that can read
only the catalogue's extract files and cannot change its own configuration.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spe.analysis.outputs import edge_text, interval_labels
from spe.analysis.plan.catalogue import NAME, Catalogue, SourceInfo
from spe.analysis.plan.document import (
    MODEL_COMMANDS,
    BinSpec,
    Expr,
    Field,
    FrameNode,
    Plan,
    Schema,
)
from spe.analysis.plan.errors import PlanError
from spe.analysis.plan.grid import width_edge

SQL_TYPES = {
    "int": "BIGINT",
    "float": "DOUBLE",
    "string": "VARCHAR",
    "date": "DATE",
    "bool": "BOOLEAN",
    "year": "BIGINT",
    "bin": "BIGINT",  # the bin's index; its label is made from the index after the query
}
_MEMORY = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")
_MAX_WIDTH_BINS = 10_000
_EXP_MAX = 709.0  # exp above this overflows a double; the plan language gives null instead
_BINARY = {"add": "+", "sub": "-", "mul": "*"}
# The person-space key carried beside the rows when the map is read in step with its extract: a
# name no plan column can have (the grammar has no colon; DuckDB folds case even when quoted).
SPACE = '"spe:space"'
_MISALIGNED = "spe: the person map is not in step with its extract"
_COMPARE = {"eq": "=", "ne": "<>", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


@dataclass
class Evidence:
    """The rows an output is computed from, and the command and spec to compute it with."""

    frame: pd.DataFrame
    command: str
    spec: dict[str, Any]
    datasets: list[str]


def quote(name: str) -> str:
    """An identifier for SQL: only names the plan grammar accepts, in double quotes."""
    if not isinstance(name, str) or not NAME.match(name):
        raise PlanError(f"{name!r} is not a column name a plan can use.")
    return f'"{name}"'


class _Compiler:
    """Builds the SQL text from the checked tree; values go to ``params`` only."""

    def __init__(self, sources: dict[str, Path], aligned: tuple[str, Path] | None = None) -> None:
        self.sources = sources
        self.params: dict[str, Any] = {}
        self.ctes: list[str] = []
        # (dataset, its person map, row for row): the map is read beside the extract's scan and
        # its key carried through every frame, instead of a hash join on the pseudonyms after.
        self.aligned = aligned
        self.spaced: set[str] = set()  # the frames (CTE names) that carry SPACE

    def param(self, value: Any) -> str:
        key = f"p{len(self.params)}"
        self.params[key] = value
        return f"${key}"

    def literal(self, value: Any, kind: str) -> str:
        if value is None:
            return "NULL"
        return f"CAST({self.param(value)} AS {SQL_TYPES[kind]})"

    # -- frames -------------------------------------------------------------------------------
    def frame(self, node: FrameNode) -> str:
        inputs = [self.frame(child) for child in node.inputs]
        schema = node.schema
        person = quote(schema.person)
        spaced = bool(inputs) and inputs[0] in self.spaced
        carry = f", {SPACE}" if spaced else ""
        if node.op == "scan":
            path = self.sources[node.parts["dataset"]]
            aligned = self.aligned is not None and node.parts["dataset"] == self.aligned[0]
            x = "x." if aligned else ""
            items = [f"CAST({x}{person} AS VARCHAR) AS {person}"]
            for name in node.parts["columns"]:
                kind = schema.fields[name].kind
                items.append(f"CAST({x}{quote(name)} AS {SQL_TYPES[kind]}) AS {quote(name)}")
            source = f"read_parquet({self.param(str(path))})"
            if aligned and self.aligned is not None:
                # Every row's key is taken only from the map row that names the same pseudonym:
                # a map out of step fails the query, and the caller joins the map instead.
                items.append(
                    f"CASE WHEN m.person_id = CAST(x.{person} AS VARCHAR) THEN m.space ELSE "
                    f"error({self.param(_MISALIGNED)}) END AS {SPACE}"
                )
                source = (
                    f"{source} AS x POSITIONAL JOIN "
                    f"read_parquet({self.param(str(self.aligned[1]))}) AS m"
                )
                spaced = True
            body = f"SELECT {', '.join(items)} FROM {source}"
        elif node.op == "filter":
            where = self.expr(node.parts["where"])
            body = f"SELECT {self.columns(schema)}{carry} FROM {inputs[0]} WHERE {where}"
        elif node.op == "derive":
            derived = dict(node.parts["columns"])
            items = []
            for name in node.inputs[0].schema.fields:
                if name in derived:
                    items.append(f"{self.expr(derived.pop(name))} AS {quote(name)}")
                else:
                    items.append(quote(name))
            items += [f"{self.expr(e)} AS {quote(n)}" for n, e in derived.items()]
            body = f"SELECT {', '.join(items)}{carry} FROM {inputs[0]}"
        elif node.op == "select":
            body = f"SELECT {self.columns(schema)}{carry} FROM {inputs[0]}"
        elif node.op == "join":
            right_person = quote(node.inputs[1].schema.person)
            left_names = list(node.inputs[0].schema.fields)
            items = [f"l.{quote(n)}" for n in left_names]
            items += [f"r.{quote(n)}" for n in schema.fields if n not in left_names]
            how = {"inner": "INNER", "left": "LEFT"}[node.parts["how"]]
            # Joined on the pseudonym, both sides' keys agree; a left join keeps every left row,
            # so only the left side's key covers all of them.
            if spaced:
                items.append(f"l.{SPACE}")
            elif inputs[1] in self.spaced and how == "INNER":
                items.append(f"r.{SPACE}")
                spaced = True
            body = (
                f"SELECT {', '.join(items)} FROM {inputs[0]} AS l {how} JOIN {inputs[1]} AS r "
                f"ON l.{person} = r.{right_person}"
            )
        elif node.op == "window":
            child = node.inputs[0].schema
            order = self.order(node.parts["order_by"], child)
            window = f"PARTITION BY {person} ORDER BY {order}"
            items = [quote(n) for n in child.fields]
            for name, fn, of, n in node.parts["columns"]:
                kind = schema.fields[name].kind
                source = quote(of)
                if fn == "lag":
                    value = f"lag({source}, {self.param(n)}) OVER ({window})"
                elif fn == "lead":
                    value = f"lead({source}, {self.param(n)}) OVER ({window})"
                elif fn == "diff":
                    value = f"({source} - lag({source}, {self.param(n)}) OVER ({window}))"
                else:
                    value = (
                        f"sum({source}) OVER ({window} ROWS BETWEEN UNBOUNDED PRECEDING AND "
                        "CURRENT ROW)"
                    )
                items.append(f"CAST({value} AS {SQL_TYPES[kind]}) AS {quote(name)}")
            body = f"SELECT {', '.join(items)}{carry} FROM {inputs[0]}"
        elif node.op == "quantile_group":
            child = node.inputs[0].schema
            of = quote(node.parts["of"])
            partition = [*(quote(w) for w in node.parts["within"]), f"({of} IS NULL)"]
            others = [n for n in sorted(child.fields) if n not in (node.parts["of"], child.person)]
            order = ", ".join(
                f"{quote(n)} ASC NULLS LAST" for n in [node.parts["of"], child.person, *others]
            )
            rank = (
                f"ntile({self.param(node.parts['groups'])}) OVER (PARTITION BY "
                f"{', '.join(partition)} ORDER BY {order})"
            )
            items = [quote(n) for n in child.fields]
            items.append(
                f"CAST(CASE WHEN {of} IS NULL THEN NULL ELSE {rank} END AS BIGINT) AS "
                f"{quote(node.parts['name'])}"
            )
            body = f"SELECT {', '.join(items)}{carry} FROM {inputs[0]}"
        else:  # pragma: no cover - the validator admits no other operation
            raise PlanError(f"There is no frame operation {node.op!r}.")
        name = f"f{len(self.ctes)}"
        self.ctes.append(f"{name} AS ({body})")
        if spaced:
            self.spaced.add(name)
        return name

    def columns(self, schema: Schema) -> str:
        return ", ".join(quote(n) for n in schema.fields)

    def order(self, first: str, schema: Schema) -> str:
        """Within a person: the time column, then every other column, so ties are decided."""
        others = [n for n in sorted(schema.fields) if n not in (first, schema.person)]
        return ", ".join(f"{quote(n)} ASC NULLS LAST" for n in [first, *others])

    # -- expressions --------------------------------------------------------------------------
    def expr(self, e: Expr) -> str:
        op = e.op
        a = e.args
        if op == "col":
            return quote(e.name or "")
        if op == "lit":
            return self.literal(e.value, e.kind)
        if op in _BINARY:
            return f"({self.expr(a[0])} {_BINARY[op]} {self.expr(a[1])})"
        if op == "div":
            num, den = self.double(a[0]), self.double(a[1])
            return f"(CASE WHEN {den} = 0 THEN NULL ELSE {num} / {den} END)"
        if op == "neg":
            return f"(-{self.expr(a[0])})"
        if op in _COMPARE:
            return f"({self.expr(a[0])} {_COMPARE[op]} {self.expr(a[1])})"
        if op in ("and", "or"):
            return "(" + f" {op.upper()} ".join(self.expr(x) for x in a) + ")"
        if op == "not":
            return f"(NOT {self.expr(a[0])})"
        if op == "is_null":
            return f"({self.expr(a[0])} IS NULL)"
        if op == "is_in":
            values = []
            for v in e.value:
                kind = (
                    "bool"
                    if isinstance(v, bool)
                    else "int"
                    if isinstance(v, int)
                    else "float"
                    if isinstance(v, float)
                    else "string"
                )
                values.append(self.literal(v, kind))
            return f"({self.expr(a[0])} IN ({', '.join(values)}))"
        if op == "between":
            return f"({self.expr(a[0])} BETWEEN {self.expr(a[1])} AND {self.expr(a[2])})"
        if op == "coalesce":
            return self.typed(f"COALESCE({', '.join(self.expr(x) for x in a)})", e.kind)
        if op == "abs":
            return f"abs({self.expr(a[0])})"
        if op == "log":
            x = self.double(a[0])
            return f"(CASE WHEN {x} > 0 THEN ln({x}) ELSE NULL END)"
        if op == "exp":
            x = self.double(a[0])
            return f"(CASE WHEN {x} > {self.param(_EXP_MAX)} THEN NULL ELSE exp({x}) END)"
        if op == "sqrt":
            x = self.double(a[0])
            return f"(CASE WHEN {x} >= 0 THEN sqrt({x}) ELSE NULL END)"
        if op == "round":
            return f"round({self.double(a[0])}, {self.param(int(e.value))})"
        if op == "clip":
            x, low, high = (self.expr(v) for v in a)
            value = (
                f"CASE WHEN {x} IS NULL THEN NULL WHEN {x} < {low} THEN {low} "
                f"WHEN {x} > {high} THEN {high} ELSE {x} END"
            )
            return self.typed(value, e.kind)
        if op == "cast":
            if e.value == "float":
                return self.double(a[0])
            if a[0].kind == "float":
                # Towards zero, as Python's int() does (a plain CAST rounds).
                return f"CAST(trunc({self.double(a[0])}) AS BIGINT)"
            return f"CAST({self.expr(a[0])} AS BIGINT)"
        if op in ("year", "month"):
            return f"CAST({op}({self.expr(a[0])}) AS BIGINT)"
        if op == "case":
            pairs = " ".join(
                f"WHEN {self.expr(a[i])} THEN {self.expr(a[i + 1])}"
                for i in range(0, len(a) - 1, 2)
            )
            return self.typed(f"CASE {pairs} ELSE {self.expr(a[-1])} END", e.kind)
        if op == "bin":
            return self.bin(a[0], e.bin or BinSpec())
        raise PlanError(f"The function {op!r} is not in the plan language.")  # pragma: no cover

    def double(self, e: Expr) -> str:
        return f"CAST({self.expr(e)} AS DOUBLE)"

    def typed(self, sql: str, kind: str) -> str:
        return sql if kind == "null" else f"CAST({sql} AS {SQL_TYPES[kind]})"

    def bin(self, inner: Expr, spec: BinSpec) -> str:
        """The bin's index (0 = first bin); null for values outside the edges."""
        x = self.double(inner)
        if spec.width is not None:
            return f"CAST(floor({x} / {self.param(spec.width)}) AS BIGINT)"
        return bin_index_sql(self, x, spec.edges or ())


def bin_index_sql(compiler: _Compiler, x: str, edges: tuple[float, ...]) -> str:
    """CASE over the edges: [e0, e1) -> 0, ..., [e_{n-1}, e_n] -> n - 1 (the last bin closed)."""
    parts = [
        f"WHEN {x} IS NULL OR isnan({x}) THEN NULL",
        f"WHEN {x} < {compiler.param(edges[0])} THEN NULL",
    ]
    for k, edge in enumerate(edges[1:-1]):
        parts.append(f"WHEN {x} < {compiler.param(edge)} THEN {k}")
    parts.append(f"WHEN {x} <= {compiler.param(edges[-1])} THEN {len(edges) - 2}")
    return f"(CASE {' '.join(parts)} ELSE NULL END)"


# -- labels ---------------------------------------------------------------------------------
def width_labels(low: int, high: int, width: float) -> list[str]:
    """'[a, b)' for the bins low..high of ``width``: every label a grid bin."""
    if high - low + 1 > _MAX_WIDTH_BINS:
        raise PlanError(
            f"A bin width of {edge_text(width)} makes {high - low + 1} bins here; choose a wider "
            "width."
        )
    return [
        f"[{edge_text(width_edge(k, width))}, {edge_text(width_edge(k + 1, width))})"
        for k in range(low, high + 1)
    ]


def _codes(series: pd.Series) -> np.ndarray:
    return series.to_numpy(dtype=np.float64, na_value=np.nan)


def bin_categorical(series: pd.Series, spec: BinSpec) -> pd.Categorical:
    """The bin indexes the query made, as an ordered Categorical of all the bins' labels."""
    index = _codes(series)
    present = ~np.isnan(index)
    if spec.width is not None:
        if present.any():
            low, high = int(index[present].min()), int(index[present].max())
            labels = width_labels(low, high, spec.width)
        else:
            low, labels = 0, []
        codes = np.where(present, index - low, -1).astype(np.int64)
    else:
        labels = interval_labels(list(spec.edges or ()), closed_last=True)
        codes = np.where(present, index, -1).astype(np.int64)
    return pd.Categorical.from_codes(codes, categories=labels, ordered=True)


def label_column(series: pd.Series, f: Field, *, model: bool = False) -> Any:
    """A grouping column as pandas shows it in a table: every declared label, observed or not."""
    if f.key == "bin" and f.bin is not None:
        cat = bin_categorical(series, f.bin)
        return cat.remove_unused_categories() if model else cat
    if model or f.key is None:
        return series
    if f.key == "year":
        values = series.dropna().unique()
        levels = sorted({int(v) for v in values})
        return _categorical(series, levels)
    if f.categories is not None:
        return _categorical(series, list(f.categories))
    return series


def _categorical(series: pd.Series, categories: list[Any]) -> pd.Categorical:
    """``series`` as an ordered Categorical of ``categories`` (a value outside them is missing),
    looked up in one vectorised pass: a million rows take milliseconds, not seconds."""
    levels = pd.Index(categories)
    values: Any = series
    if levels.dtype.kind in "iu" and series.dtype.kind == "f":
        whole = series.notna() & (series == np.floor(series))
        values = series.where(whole)  # 3.0 finds the category 3; 3.5 finds none
    codes = levels.get_indexer(pd.Index(values))
    return pd.Categorical.from_codes(codes, categories=categories, ordered=True)


# -- running it -----------------------------------------------------------------------------
def _resolve(plan_sources: list[SourceInfo], catalogue: Catalogue) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    for source in plan_sources:
        current = catalogue.sources.get(source.dataset)
        if current is None:
            raise PlanError(
                f"The dataset {source.dataset!r} is not one of this project's extracts; validate "
                "the plan against this catalogue."
            )
        if current.version != source.version:
            raise PlanError(
                f"version {source.version} of {source.dataset} is not this project's extract (it "
                f"has version {current.version}); scan it again."
            )
        if current.path is None or not Path(current.path).is_file():
            raise PlanError(
                f"The extract file of {source.dataset!r} is not available here; extract it again."
            )
        paths[source.dataset] = Path(current.path).resolve()
    return paths


def _sources(node: FrameNode) -> list[SourceInfo]:
    out: list[SourceInfo] = []
    stack = [node]
    while stack:
        current = stack.pop()
        if current.op == "scan" and current.parts["source"] not in out:
            out.append(current.parts["source"])
        stack.extend(current.inputs)
    return out


@contextlib.contextmanager
def _connection(
    paths: list[Path], memory_limit: str, threads: int, temp_directory: Path | None
) -> Any:
    """An in-memory DuckDB that may read only ``paths`` and spill to a temporary folder."""
    import duckdb

    if not isinstance(memory_limit, str) or not _MEMORY.match(memory_limit.strip()):
        raise PlanError(f"The memory limit {memory_limit!r} is not a size such as '2GB'.")
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise PlanError("The evaluator needs at least one thread.")
    own = temp_directory is None
    spill = Path(tempfile.mkdtemp(prefix="spe-plan-")) if own else Path(temp_directory or ".")
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET memory_limit=$v", {"v": memory_limit.strip()})
        con.execute("SET threads=$v", {"v": threads})
        con.execute("SET temp_directory=$v", {"v": str(spill)})
        con.execute("SET preserve_insertion_order=false")
        con.execute("SET autoinstall_known_extensions=false")
        con.execute("SET autoload_known_extensions=false")
        # DuckDB binds a view's files lazily, so views registered before this would not read
        # either: the extract files are named as the only allowed paths instead.
        con.execute("SET allowed_paths=$v", {"v": [str(p) for p in paths]})
        con.execute("SET enable_external_access=false")
        con.execute("SET lock_configuration=true")
        yield con
    finally:
        con.close()
        if own:
            shutil.rmtree(spill, ignore_errors=True)


class _Misaligned(Exception):
    """A person map read in step with its extract named another pseudonym on some row."""


def aligned_dataset(paths: dict[str, Path], person_maps: Sequence[Path]) -> str | None:
    """The dataset whose extract the one person map may list row for row: one with as many
    rows as the map, the dataset the map's folder names first (maps are laid out as
    ``.../person-space/<dataset>/<key>/persons.parquet``). Only a candidate: the query checks
    every row's pseudonym against the map's."""
    if len(person_maps) != 1:
        return None
    import pyarrow.parquet as pq

    path = Path(person_maps[0])
    try:
        rows = pq.ParquetFile(path).metadata.num_rows
        named = path.parent.parent.name
        order = sorted(paths, key=lambda d: d != named)
        for dataset in order:
            if pq.ParquetFile(paths[dataset]).metadata.num_rows == rows:
                return dataset
    except (OSError, ValueError):
        return None  # unreadable here: the plain join reports it
    return None


def _run(con: Any, sql: str, params: dict[str, Any], memory_limit: str) -> pd.DataFrame:
    import duckdb

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # A relation's Arrow result, not a DB-API result's: no extra copy of the rows.
            table = con.sql(sql, params=params).to_arrow_table()
    except duckdb.OutOfMemoryException:
        raise PlanError(
            f"The plan needs more memory than the evaluator's cap of {memory_limit}; filter rows "
            "or select fewer columns before joins and windows."
        ) from None
    except duckdb.PermissionException:
        raise PlanError(
            "The plan tried to read a file that is not one of this project's extracts."
        ) from None
    except (duckdb.OutOfRangeException, duckdb.ConversionException) as exc:
        raise PlanError(
            f"A value is out of range while evaluating the plan ({_first_line(exc)}); cast to "
            "float or filter the rows first."
        ) from None
    except duckdb.Error as exc:
        if _MISALIGNED in str(exc):
            raise _Misaligned() from None
        raise PlanError(f"The plan could not be evaluated ({_first_line(exc)}).") from None
    return table.to_pandas()


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def _bools(frame: pd.DataFrame, schema: Schema) -> None:
    for name in frame.columns:
        f = schema.fields.get(name)
        if f is not None and f.kind == "bool" and frame[name].dtype == object:
            frame[name] = frame[name].astype("boolean")


def coded_columns(plan: Plan) -> dict[str, tuple[str | int, ...]]:
    """The output's grouping columns whose labels the query returns as category codes (0 for
    the first declared category, -1 for a value outside them or missing), with their
    categories: text and integer columns with declared code lists, in tables. Looking a label
    up in the engine, as a small integer, saves turning millions of strings into pandas ones."""
    output = plan.output
    if output.command in MODEL_COMMANDS:
        return {}
    out: dict[str, tuple[str | int, ...]] = {}
    for name in output.used:
        if output.command == "hist" and name == output.spec["column"]:
            continue
        f = plan.frame.schema.fields.get(name)
        if f is None or f.key != "category" or not f.categories:
            continue
        texts = f.kind == "string" and all(isinstance(c, str) for c in f.categories)
        numbers = f.kind == "int" and all(
            isinstance(c, int) and not isinstance(c, bool) for c in f.categories
        )
        if texts or numbers:
            out[name] = f.categories
    return out


def _code_sql(compiler: _Compiler, column: str, kind: str, categories: Sequence[Any]) -> str:
    """The position of ``column``'s value among ``categories`` (0-based), -1 when none."""
    listed = compiler.param(list(categories))
    of = "VARCHAR[]" if kind == "string" else "BIGINT[]"
    return (
        f"CAST(CASE WHEN {column} IS NULL THEN -1 ELSE "
        f"coalesce(list_position(CAST({listed} AS {of}), {column}), 0) - 1 END AS INTEGER)"
    )


def compile_plan(
    plan: Plan,
    paths: dict[str, Path],
    person_maps: Sequence[Path] = (),
    *,
    aligned: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """The SQL text and its parameters for ``plan`` (paths: each dataset's extract file).

    With ``person_maps`` (the server's maps from the project's pseudonyms to the holder's
    person space: Parquet files of ``person_id`` and ``space``) the person column of the result
    is the person-space key, joined in the engine rather than looked up row by row after.

    ``aligned`` names the dataset whose extract the one map in ``person_maps`` lists row for row
    (spe.projects.extracts writes them together): the map is then read in step with that scan
    (a positional join that checks every row's pseudonym) and its key carried to the result,
    which saves a hash join and a DISTINCT over the pseudonyms. When no key reaches every
    result row that way (the dataset is not scanned, or only on the right of a left join), the
    map is joined on the pseudonyms as without ``aligned``."""
    pair = (aligned, Path(person_maps[0])) if aligned and len(person_maps) == 1 else None
    compiler = _Compiler(paths, pair)
    last = compiler.frame(plan.frame)
    output = plan.output
    schema = plan.frame.schema
    items = [quote(schema.person)]
    coded = coded_columns(plan)
    for name in output.used:
        if output.command == "hist" and name == output.spec["column"]:
            spec = output.hist_bin or BinSpec()
            x = f"CAST({quote(name)} AS DOUBLE)"
            if spec.width is not None:
                value = f"CAST(floor({x} / {compiler.param(spec.width)}) AS BIGINT)"
            else:
                value = bin_index_sql(compiler, x, spec.edges or ())
            items.append(f"{value} AS {quote(name)}")
        elif name in coded:
            value = _code_sql(compiler, quote(name), schema.fields[name].kind, coded[name])
            items.append(f"{value} AS {quote(name)}")
        else:
            items.append(quote(name))
    sql = f"WITH {', '.join(compiler.ctes)} SELECT {', '.join(items)} FROM {last}"
    if person_maps and last in compiler.spaced:
        items[0] = f"{SPACE} AS {quote(schema.person)}"
        sql = f"WITH {', '.join(compiler.ctes)} SELECT {', '.join(items)} FROM {last}"
    elif person_maps:
        if pair is not None:  # the carried key does not reach every row: join the map after
            return compile_plan(plan, paths, person_maps)
        person = quote(schema.person)
        maps = compiler.param([str(p) for p in person_maps])
        outer = [f"m.space AS {person}", *(f"e.{quote(n)}" for n in output.used)]
        sql = (
            f"WITH {', '.join(compiler.ctes)}, e AS (SELECT {', '.join(items)} FROM {last}), "
            f"m AS (SELECT DISTINCT person_id, space FROM read_parquet({maps})) "
            f"SELECT {', '.join(outer)} FROM e JOIN m ON e.{person} = m.person_id"
        )
    return sql, compiler.params


def evaluate(
    plan: Plan,
    catalogue: Catalogue,
    *,
    memory_limit: str = "2GB",
    threads: int = 2,
    temp_directory: Path | None = None,
    person_maps: Sequence[Path] = (),
) -> Evidence:
    """The evidence rows of ``plan`` read from the catalogue's extracts, ready for compute().

    ``person_maps`` (server only): the person column comes back as the holder's person-space
    key (int64), see ``compile_plan``."""
    paths = _resolve(_sources(plan.frame), catalogue)
    aligned = aligned_dataset(paths, person_maps)
    readable = [*paths.values(), *(Path(p).resolve() for p in person_maps)]
    with _connection(readable, memory_limit, threads, temp_directory) as con:
        frame = None
        if aligned is not None:
            sql, params = compile_plan(plan, paths, person_maps, aligned=aligned)
            try:
                frame = _run(con, sql, params, memory_limit)
            except _Misaligned:
                frame = None  # a map written otherwise: joined on the pseudonyms below
        if frame is None:
            sql, params = compile_plan(plan, paths, person_maps)
            frame = _run(con, sql, params, memory_limit)
    schema = plan.frame.schema
    output = plan.output
    _bools(frame, schema)
    spec = {**output.spec, "person_id": schema.person}
    model = output.command in MODEL_COMMANDS
    coded = coded_columns(plan)
    for name in output.used:
        if name in coded:
            codes = frame[name].to_numpy(dtype=np.int64)
            frame[name] = pd.Categorical.from_codes(
                codes, categories=list(coded[name]), ordered=True
            )
            continue
        if output.command == "hist" and name == output.spec["column"]:
            bin_spec = output.hist_bin or BinSpec()
            if bin_spec.width is not None:
                index = _codes(frame[name])
                present = ~np.isnan(index)
                low = int(index[present].min()) if present.any() else 0
                high = int(index[present].max()) if present.any() else 0
                edges = [width_edge(k, bin_spec.width) for k in range(low, high + 2)]
                width_labels(low, high, bin_spec.width)  # refuses too many bins
                spec["edges"] = edges
                bin_spec = BinSpec(edges=tuple(edges))
                frame[name] = np.where(present, index - low, np.nan)
            frame[name] = bin_categorical(frame[name], bin_spec)
            continue
        frame[name] = label_column(frame[name], schema.fields[name], model=model)
    return Evidence(frame=frame, command=output.command, spec=spec, datasets=list(plan.datasets))


def evaluate_frame(
    node: FrameNode,
    catalogue: Catalogue,
    *,
    limit: int = 10,
    memory_limit: str = "2GB",
    threads: int = 2,
) -> pd.DataFrame:
    """The first ``limit`` rows of a frame (a preview in the workspace; never released)."""
    paths = _resolve(_sources(node), catalogue)
    compiler = _Compiler(paths)
    last = compiler.frame(node)
    sql = f"WITH {', '.join(compiler.ctes)} SELECT * FROM {last} LIMIT {compiler.param(limit)}"
    with _connection(list(paths.values()), memory_limit, threads, None) as con:
        frame = _run(con, sql, compiler.params, memory_limit)
    _bools(frame, node.schema)
    for name, f in node.schema.fields.items():
        if f.key == "bin" and f.bin is not None:
            frame[name] = bin_categorical(frame[name], f.bin)
    return frame
