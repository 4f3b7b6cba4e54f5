"""The plan evaluator against an independent pandas oracle, on generated extracts.

The same evaluator runs in the workspace (preview) and on the server (release), so agreeing
with itself proves nothing: the oracle below is written from the language's definition (SQL
null logic, division by zero and log/sqrt of a non-positive are null, cast to int goes towards
zero, ties in windows and quantile groups broken by the other columns) in plain pandas.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spe.analysis.plan import Catalogue, ColumnInfo, PlanError, SourceInfo, evaluate, validate
from spe.analysis.plan.document import validate_frame
from spe.analysis.plan.evaluate import evaluate_frame

COUNTIES = ("03", "11", "15", "50")  # 50 is declared but never occurs


# -- generated extracts ----------------------------------------------------------------------
def make_extracts(folder: Path, persons: int = 40, seed: int = 3) -> Catalogue:
    """income (several years per person, nulls) and population (another person column name)."""
    rng = np.random.default_rng(seed)
    ids = [f"p{i:04d}" for i in range(persons)]
    rows = []
    rid = 0
    for pid in ids[: persons - 4]:  # the last persons have no income rows
        for year in rng.choice(np.arange(2016, 2024), rng.integers(1, 6), replace=False):
            rid += 1
            rows.append(
                {
                    "pid": pid,
                    "rid": rid,
                    "year": int(year),
                    "wage": None if rng.random() < 0.1 else float(rng.lognormal(10, 1) - 5000),
                    "hours": None if rng.random() < 0.1 else int(rng.integers(0, 60)),
                    "county": None if rng.random() < 0.05 else str(rng.choice(COUNTIES[:3])),
                    "employed": None if rng.random() < 0.1 else bool(rng.random() < 0.6),
                }
            )
    income = pd.DataFrame(rows)
    income["hours"] = income["hours"].astype("Int64")
    income["employed"] = income["employed"].astype("boolean")
    population = pd.DataFrame(
        {
            "person": ids[2:],  # the first persons are not in population (left joins)
            "prid": np.arange(persons - 2) + 1,
            "sex": rng.choice(["F", "M"], persons - 2),
            "birth_date": [
                dt.date(1940, 1, 1) + dt.timedelta(days=int(d))
                for d in rng.integers(0, 25_000, persons - 2)
            ],
            "height": rng.normal(170, 10, persons - 2),
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    income.to_parquet(folder / "income.parquet", index=False)
    population.to_parquet(folder / "population.parquet", index=False)
    return Catalogue(
        "demo-project",
        {
            "income": SourceInfo(
                "income",
                3,
                folder / "income.parquet",
                "pid",
                {
                    "rid": ColumnInfo("rid", "int"),
                    "year": ColumnInfo("year", "year"),
                    "wage": ColumnInfo("wage", "float", bins=(-1e4, 0, 1e4, 1e5, 1e6)),
                    "hours": ColumnInfo("hours", "int"),
                    "county": ColumnInfo("county", "string", categories=COUNTIES),
                    "employed": ColumnInfo("employed", "bool"),
                },
            ),
            "population": SourceInfo(
                "population",
                1,
                folder / "population.parquet",
                "person",
                {
                    "prid": ColumnInfo("prid", "int"),
                    "sex": ColumnInfo("sex", "string", categories=("F", "M")),
                    "birth_date": ColumnInfo("birth_date", "date"),
                    "height": ColumnInfo("height", "float"),
                },
            ),
        },
    )


@pytest.fixture(scope="module")
def extracts(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    return make_extracts(tmp_path_factory.mktemp("extracts"))


# -- the oracle ------------------------------------------------------------------------------
NA = pd.NA


def oracle_scan(source: SourceInfo) -> pd.DataFrame:
    raw = pd.read_parquet(source.path)
    out = pd.DataFrame({source.person_column: raw[source.person_column].astype("string")})
    for name, info in source.columns.items():
        column = raw[name]
        if info.kind in ("int", "float", "year"):
            out[name] = column.astype("Float64")
        elif info.kind == "bool":
            out[name] = column.astype("boolean")
        elif info.kind == "string":
            out[name] = column.astype("string")
        else:
            out[name] = column
    return out


def _series(value: Any, index: pd.Index) -> pd.Series:
    if value is None:
        return pd.Series(NA, index=index, dtype="Float64")
    if isinstance(value, bool):
        return pd.Series(value, index=index, dtype="boolean")
    if isinstance(value, int | float):
        return pd.Series(float(value), index=index, dtype="Float64")
    return pd.Series(value, index=index, dtype="string")


def _masked(x: pd.Series, keep: pd.Series, fn: Any) -> pd.Series:
    out = pd.Series(NA, index=x.index, dtype="Float64")
    take = keep.fillna(False).astype(bool)
    out[take] = fn(x[take].astype(float).to_numpy())
    return out


def _cpp_round(v: np.ndarray) -> np.ndarray:
    """C's round(): halves away from zero."""
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def _decimal_text(d: Decimal) -> str:
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def oracle_expr(node: dict[str, Any], df: pd.DataFrame) -> pd.Series:
    """SQL semantics in pandas' nullable types (Kleene logic for and/or)."""
    idx = df.index
    if "col" in node:
        return df[node["col"]]
    if "lit" in node:
        return _series(node["lit"], idx)
    if "case" in node:
        result = oracle_expr(node["otherwise"], df).astype("Float64")
        decided = pd.Series(False, index=idx)
        for cond, value in node["case"]:
            take = oracle_expr(cond, df).fillna(False).astype(bool) & ~decided
            result = result.where(~take, oracle_expr(value, df).astype("Float64"))
            decided |= take
        return result
    if "bin" in node:
        x = oracle_expr(node["bin"], df).astype("Float64")
        if "width" in node:
            k = np.floor(x.astype(float) / node["width"])
            return k.astype("Float64")  # the index; labelled when compared
        edges = node["edges"]
        out = pd.Series(NA, index=idx, dtype="Float64")
        v = x.astype(float)
        for i in range(len(edges) - 1):
            last = i == len(edges) - 2
            inside = (v >= edges[i]) & ((v <= edges[i + 1]) if last else (v < edges[i + 1]))
            out[inside.fillna(False).astype(bool)] = i
        return out
    fn, raw = node["fn"], node["args"]
    if fn == "is_in":
        x = oracle_expr(raw[0], df)
        out = x.isin(raw[1]["values"]).astype("boolean")
        out[x.isna()] = NA
        return out
    args = [oracle_expr(a, df) for a in raw]
    a = args[0]
    if fn == "add":
        return a + args[1]
    if fn == "sub":
        return a - args[1]
    if fn == "mul":
        return a * args[1]
    if fn == "div":
        den = args[1].astype("Float64")
        out = a.astype("Float64") / den.where(den != 0, NA)
        return out
    if fn == "neg":
        return -a
    if fn in ("eq", "ne", "lt", "le", "gt", "ge"):
        b = args[1]
        return {
            "eq": lambda: a == b,
            "ne": lambda: a != b,
            "lt": lambda: a < b,
            "le": lambda: a <= b,
            "gt": lambda: a > b,
            "ge": lambda: a >= b,
        }[fn]().astype("boolean")
    if fn == "and":
        out = args[0]
        for b in args[1:]:
            out = out & b
        return out
    if fn == "or":
        out = args[0]
        for b in args[1:]:
            out = out | b
        return out
    if fn == "not":
        return ~a
    if fn == "is_null":
        return a.isna().astype("boolean")
    if fn == "between":
        return ((a >= args[1]) & (a <= args[2])).astype("boolean")
    if fn == "coalesce":
        out = args[0].astype("Float64")
        for b in args[1:]:
            out = out.where(out.notna(), b.astype("Float64"))
        return out
    if fn == "abs":
        return a.abs()
    if fn == "log":
        return _masked(a, a > 0, np.log)
    if fn == "exp":
        return _masked(a, a <= 709.0, np.exp)
    if fn == "sqrt":
        return _masked(a, a >= 0, np.sqrt)
    if fn == "round":
        p = 10.0 ** (raw[1]["lit"] if len(raw) > 1 else 0)
        return _masked(a, a.notna(), lambda v: _cpp_round(v * p) / p)
    if fn == "clip":
        return a.clip(args[1], args[2])
    if fn == "cast":
        if node["to"] == "int":
            return _masked(a.astype("Float64"), a.notna(), np.trunc)
        return a.astype("Float64")
    if fn in ("year", "month"):
        dates = pd.to_datetime(a)
        return getattr(dates.dt, fn).astype("Float64")
    raise AssertionError(fn)


def _ntile(n: int, groups: int) -> np.ndarray:
    """SQL ntile: the first n % groups groups hold one row more."""
    q, rem = divmod(n, groups)
    r = np.arange(n)
    if q == 0:
        return r + 1
    big = rem * (q + 1)
    return np.where(r < big, r // (q + 1) + 1, rem + (r - big) // q + 1)


def oracle_frame(node: dict[str, Any], catalogue: Catalogue) -> pd.DataFrame:
    op = node["op"]
    if op == "scan":
        source = catalogue.sources[node["dataset"]]
        df = oracle_scan(source)
        if node["columns"] is not None:
            df = df[[source.person_column, *node["columns"]]]
        return df
    if op == "filter":
        df = oracle_frame(node["input"], catalogue)
        keep = oracle_expr(node["where"], df).fillna(False).astype(bool)
        return df[keep.to_numpy()].reset_index(drop=True)
    if op == "derive":
        df = oracle_frame(node["input"], catalogue)
        new = {name: oracle_expr(e, df) for name, e in node["columns"].items()}
        df = df.copy()
        for name, values in new.items():
            df[name] = values
        return df
    if op == "select":
        df = oracle_frame(node["input"], catalogue)
        person = df.columns[0]
        return df[[person, *(c for c in node["columns"] if c != person)]]
    if op == "join":
        left = oracle_frame(node["left"], catalogue)
        right = oracle_frame(node["right"], catalogue)
        lp, rp = left.columns[0], right.columns[0]
        merged = left.merge(right, left_on=lp, right_on=rp, how=node["how"])
        if rp != lp:
            merged = merged.drop(columns=[rp])
        return merged.reset_index(drop=True)
    df = oracle_frame(node["input"], catalogue)
    person = df.columns[0]
    if op == "window":
        order_by = node["order_by"]
        others = [c for c in sorted(df.columns) if c not in (order_by, person)]
        ordered = df.sort_values([person, order_by, *others], na_position="last", kind="stable")
        groups = ordered.groupby(person, sort=False)
        out = ordered.copy()
        for name, spec in node["columns"].items():
            of, fn, n = spec["of"], spec["fn"], spec.get("n", 1)
            values = ordered[of]
            if fn == "lag":
                out[name] = groups[of].shift(n)
            elif fn == "lead":
                out[name] = groups[of].shift(-n)
            elif fn == "diff":
                out[name] = values - groups[of].shift(n)
            else:
                filled = values.astype("Float64").fillna(0)
                seen = values.notna().astype(int).groupby(ordered[person], sort=False).cumsum()
                total = filled.groupby(ordered[person], sort=False).cumsum()
                out[name] = total.where(seen > 0, NA)
        return out.reset_index(drop=True)
    if op == "quantile_group":
        of, within, groups = node["of"], node["within"], node["groups"]
        others = [c for c in sorted(df.columns) if c not in (of, person)]
        ordered = df.sort_values([of, person, *others], na_position="last", kind="stable")
        labels = pd.Series(NA, index=ordered.index, dtype="Float64")
        keyed = ordered[ordered[of].notna()]
        if within:
            by = within[0] if len(within) == 1 else within
            parts = keyed.groupby(by, sort=False, dropna=False).groups.values()
        else:
            parts = [keyed.index]
        for part in parts:
            members = [i for i in keyed.index if i in set(part)]
            labels[members] = _ntile(len(members), groups)
        out = ordered.copy()
        out[node["name"]] = labels
        return out.reset_index(drop=True)
    raise AssertionError(op)


# -- comparing ---------------------------------------------------------------------------------
def _comparable(series: pd.Series) -> tuple[str, np.ndarray]:
    if isinstance(series.dtype, pd.CategoricalDtype):
        return "text", np.array([None if pd.isna(v) else str(v) for v in series], dtype=object)
    if pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_numeric_dtype(series.dtype):
        return "number", series.astype("Float64").astype(float).to_numpy()
    values = [None if v is None or (not isinstance(v, str) and pd.isna(v)) else v for v in series]
    return "text", np.array([str(v) if v is not None else None for v in values], dtype=object)


def _width_label(k: float, width: float) -> str | None:
    if math.isnan(k):
        return None
    w = Decimal(repr(width))
    return f"[{_decimal_text(int(k) * w)}, {_decimal_text((int(k) + 1) * w)})"


def _edges_label(i: float, edges: list[float]) -> str | None:
    if math.isnan(i):
        return None
    k = int(i)
    right = "]" if k == len(edges) - 2 else ")"
    low, high = (_decimal_text(Decimal(repr(edges[j]))) for j in (k, k + 1))
    return f"[{low}, {high}{right}"


def assert_same(got: pd.DataFrame, want: pd.DataFrame, bins: dict[str, dict[str, Any]]) -> None:
    assert list(got.columns) == list(want.columns)
    keys = [c for c in ("pid", "rid", "prid") if c in got.columns]
    got = got.sort_values(keys, kind="stable").reset_index(drop=True)
    want = want.sort_values(keys, kind="stable").reset_index(drop=True)
    assert len(got) == len(want)
    for name in got.columns:
        if name in bins:
            spec = bins[name]
            index = want[name].astype(float).to_numpy()
            labels = [
                _width_label(k, spec["width"])
                if "width" in spec
                else _edges_label(k, spec["edges"])
                for k in index
            ]
            want_values = np.array(labels, dtype=object)
            kind, got_values = _comparable(got[name])
            assert kind == "text", name
        else:
            kind, got_values = _comparable(got[name])
            _, want_values = _comparable(want[name])
        if kind == "number":
            np.testing.assert_allclose(
                got_values, want_values.astype(float), rtol=1e-9, atol=1e-9, err_msg=name
            )
        else:
            assert list(got_values) == list(want_values), name


# -- random plans -----------------------------------------------------------------------------
NUMERIC_COLUMNS = ("wage", "hours", "year")


@st.composite
def numeric_expr(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    leaves = st.one_of(
        st.sampled_from([{"col": c} for c in NUMERIC_COLUMNS]),
        st.integers(-20, 20).map(lambda v: {"lit": v}),
        st.floats(-100, 100, allow_nan=False).map(lambda v: {"lit": round(v, 3)}),
    )
    if depth >= 3:
        return draw(leaves)
    kind = draw(
        st.sampled_from(
            [
                *("leaf", "leaf", "add", "sub", "mul", "div", "neg", "abs", "log", "exp"),
                *("sqrt", "round", "clip", "cast_int", "cast_float", "coalesce", "case"),
            ]
        )
    )
    sub = numeric_expr(depth + 1)
    if kind == "leaf":
        return draw(leaves)
    if kind in ("add", "sub", "mul", "div"):
        return {"fn": kind, "args": [draw(sub), draw(sub)]}
    if kind == "exp":
        return {"fn": "exp", "args": [{"fn": "div", "args": [draw(sub), {"lit": 1000}]}]}
    if kind in ("neg", "abs", "log", "sqrt"):
        return {"fn": kind, "args": [draw(sub)]}
    if kind == "round":
        return {"fn": "round", "args": [draw(sub), {"lit": draw(st.integers(0, 3))}]}
    if kind == "clip":
        low = draw(st.integers(-50, 50))
        return {
            "fn": "clip",
            "args": [draw(sub), {"lit": low}, {"lit": low + draw(st.integers(0, 80))}],
        }
    if kind in ("cast_int", "cast_float"):
        return {"fn": "cast", "args": [draw(sub)], "to": kind[5:]}
    if kind == "coalesce":
        return {
            "fn": "coalesce",
            "args": [draw(sub), draw(st.sampled_from([{"lit": None}, {"lit": 0}])), draw(sub)],
        }
    return {
        "case": [[draw(bool_expr(depth + 1)), draw(sub)], [draw(bool_expr(depth + 1)), draw(sub)]],
        "otherwise": draw(st.one_of(sub, st.just({"lit": None}))),
    }


@st.composite
def bool_expr(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    kind = draw(
        st.sampled_from(
            ["cmp", "cmp", "county", "county_in", "is_in", "between", "is_null", "employed"]
            + ([] if depth >= 3 else ["and", "or", "not"])
        )
    )
    sub = numeric_expr(depth + 1)
    if kind == "cmp":
        fn = draw(st.sampled_from(["eq", "ne", "lt", "le", "gt", "ge"]))
        return {"fn": fn, "args": [draw(sub), draw(sub)]}
    if kind == "county":
        fn = draw(st.sampled_from(["eq", "ne"]))
        return {"fn": fn, "args": [{"col": "county"}, {"lit": draw(st.sampled_from(COUNTIES))}]}
    if kind == "county_in":
        values = draw(st.lists(st.sampled_from(COUNTIES), min_size=1, max_size=3, unique=True))
        return {"fn": "is_in", "args": [{"col": "county"}, {"values": values}]}
    if kind == "is_in":
        values = draw(st.lists(st.integers(0, 60), min_size=1, max_size=8, unique=True))
        return {"fn": "is_in", "args": [{"col": "hours"}, {"values": values}]}
    if kind == "between":
        low = draw(st.integers(0, 40))
        return {"fn": "between", "args": [draw(sub), {"lit": low}, {"lit": low + 20}]}
    if kind == "is_null":
        return {"fn": "is_null", "args": [draw(sub)]}
    if kind == "employed":
        return {"col": "employed"}
    if kind == "not":
        return {"fn": "not", "args": [draw(bool_expr(depth + 1))]}
    return {"fn": kind, "args": [draw(bool_expr(depth + 1)), draw(bool_expr(depth + 1))]}


@st.composite
def frame_plan(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A random frame: scan, filter, derive (with bins), join, window, quantile group."""
    node: dict[str, Any] = {"op": "scan", "dataset": "income", "version": 3, "columns": None}
    bins: dict[str, dict[str, Any]] = {}
    if draw(st.booleans()):
        node = {"op": "filter", "input": node, "where": draw(bool_expr())}
    derived = {"x1": draw(numeric_expr()), "flag": draw(bool_expr())}
    if draw(st.booleans()):
        spec: dict[str, Any] = {"width": draw(st.sampled_from([1, 2, 5, 10, 20, 0.5, 1000]))}
    else:
        spec = {
            "edges": draw(st.sampled_from([[0, 10, 20, 50], [-100, 0, 100], [1, 2, 5, 10, 20]]))
        }
    derived["b1"] = {"bin": draw(numeric_expr(2)), **spec}
    bins["b1"] = spec
    node = {"op": "derive", "input": node, "columns": derived}
    if draw(st.booleans()):
        right: dict[str, Any] = {
            "op": "scan",
            "dataset": "population",
            "version": 1,
            "columns": None,
        }
        if draw(st.booleans()):
            right = {
                "op": "derive",
                "input": right,
                "columns": {
                    "born": {"fn": "year", "args": [{"col": "birth_date"}]},
                    "born_month": {"fn": "month", "args": [{"col": "birth_date"}]},
                    "female": {"fn": "eq", "args": [{"col": "sex"}, {"lit": "F"}]},
                },
            }
        node = {
            "op": "join",
            "left": node,
            "right": right,
            "how": draw(st.sampled_from(["inner", "left"])),
        }
    if draw(st.booleans()):
        fn = draw(st.sampled_from(["lag", "lead", "diff", "cum_sum"]))
        of = draw(st.sampled_from(["wage", "hours", "x1"]))
        window: dict[str, Any] = {"fn": fn, "of": of}
        if fn != "cum_sum":
            window["n"] = draw(st.integers(1, 3))
        extra = {"fn": "lag", "of": "county", "n": 1}
        node = {
            "op": "window",
            "input": node,
            "order_by": "year",
            "columns": {"w1": window, "w2": extra},
        }
    if draw(st.booleans()):
        node = {
            "op": "quantile_group",
            "input": node,
            "name": "q",
            "of": draw(st.sampled_from(["wage", "x1", "hours"])),
            "groups": draw(st.integers(2, 10)),
            "within": draw(st.sampled_from([[], ["year"], ["county"]])),
        }
    return node, bins


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frame_plan())
def test_evaluator_equals_pandas_oracle_on_random_plans(
    extracts: Catalogue, drawn: tuple[dict[str, Any], dict[str, dict[str, Any]]]
) -> None:
    node, bins = drawn
    checked = validate_frame(node, extracts)
    want = oracle_frame(node, extracts)
    try:
        got = evaluate_frame(checked, extracts, limit=10**9)
    except PlanError as exc:
        # The two documented refusals of evaluation: a whole number beyond 64 bits, and a width
        # that really makes too many bins for a table.
        if "out of range" in exc.message:
            return
        assert "choose a wider width" in exc.message
        k = want["b1"].astype(float).dropna()
        assert k.max() - k.min() + 1 > 10_000
        return
    assert_same(got, want, bins)


# -- evidence of outputs ----------------------------------------------------------------------
def _plan(frame: dict[str, Any], output: dict[str, Any]) -> dict[str, Any]:
    return {"spe_plan": 1, "project": "demo-project", "frame": frame, "output": output}


INCOME = {"op": "scan", "dataset": "income", "version": 3, "columns": None}


def test_evidence_holds_the_person_column_and_only_the_used_columns(extracts: Catalogue) -> None:
    frame = {
        "op": "derive",
        "input": INCOME,
        "columns": {"band": {"bin": {"col": "hours"}, "width": 10}},
    }
    output = {
        "command": "crosstab",
        "index": ["county"],
        "columns": ["band"],
        "values": "wage",
        "agg": "mean",
        "safe": None,
    }
    evidence = evaluate(validate(_plan(frame, output), extracts), extracts)
    assert list(evidence.frame.columns) == ["pid", "county", "band", "wage"]
    assert evidence.spec["person_id"] == "pid"
    # Every declared county is a category, also 50 which never occurs.
    assert list(evidence.frame["county"].cat.categories) == list(COUNTIES)
    assert evidence.frame["band"].cat.ordered
    assert evidence.frame["band"].cat.categories[0] == "[0, 10)"
    want = oracle_scan(extracts.sources["income"])
    assert len(evidence.frame) == len(want)


def test_hist_evidence_is_the_bin_labels_of_its_edges(extracts: Catalogue) -> None:
    output = {
        "command": "hist",
        "column": "hours",
        "edges": [0, 10, 20, 50],
        "by": [],
        "safe": None,
    }
    evidence = evaluate(validate(_plan(INCOME, output), extracts), extracts)
    assert evidence.spec["edges"] == [0, 10, 20, 50]
    hours = oracle_scan(extracts.sources["income"])["hours"].astype(float)

    def label(h: float) -> str:
        if math.isnan(h) or h < 0 or h > 50:
            return "left out"
        if h < 10:
            return "[0, 10)"
        return "[10, 20)" if h < 20 else "[20, 50]"

    got = ["left out" if pd.isna(v) else v for v in evidence.frame["hours"]]
    assert sorted(got) == sorted(label(h) for h in hours)
    assert list(evidence.frame["hours"].cat.categories) == ["[0, 10)", "[10, 20)", "[20, 50]"]


def test_hist_by_width_has_grid_edges_covering_the_values(extracts: Catalogue) -> None:
    output = {"command": "hist", "column": "wage", "width": 20000, "by": [], "safe": None}
    evidence = evaluate(validate(_plan(INCOME, output), extracts), extracts)
    edges = evidence.spec["edges"]
    wages = oracle_scan(extracts.sources["income"])["wage"].astype(float).dropna()
    assert edges[0] <= wages.min() and edges[-1] > wages.max()
    assert all(e % 20000 == 0 for e in edges)
    assert evidence.frame["wage"].notna().sum() == len(wages)


# -- the person-space key, read beside its extract -------------------------------------------
def _space_keys(catalogue: Catalogue) -> dict[str, int]:
    """A person-space key per pseudonym of either extract (negative ones too, as real keys)."""
    rng = np.random.default_rng(11)
    ids = sorted(
        set(pd.read_parquet(catalogue.sources["income"].path)["pid"])
        | set(pd.read_parquet(catalogue.sources["population"].path)["person"])
    )
    keys = rng.integers(-(2**63), 2**63 - 1, size=len(ids), dtype=np.int64)
    return dict(zip(ids, keys.tolist(), strict=True))


def _person_map(
    catalogue: Catalogue, dataset: str, folder: Path, *, shuffled: bool = False
) -> Path:
    """The map spe.projects.extracts writes beside an extract: a row per extract row, in the
    extract's order (``shuffled``: in another order, as a map written otherwise would be)."""
    source = catalogue.sources[dataset]
    ids = pd.read_parquet(source.path)[source.person_column].astype(str)
    keys = _space_keys(catalogue)
    frame = pd.DataFrame({"person_id": ids, "space": [keys[i] for i in ids]})
    if shuffled:
        frame = frame.sample(frac=1.0, random_state=5)
    path = folder / "person-space" / dataset / ("shuffled" if shuffled else "k") / "persons.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path


JOINED_MEAN = _plan(
    {
        "op": "join",
        "left": INCOME,
        "right": {"op": "scan", "dataset": "population", "version": 1, "columns": None},
        "how": "inner",
    },
    {
        "command": "crosstab",
        "index": ["county"],
        "columns": ["sex"],
        "values": "wage",
        "agg": "mean",
        "safe": None,
    },
)


def _pandas_cells(catalogue: Catalogue) -> tuple[pd.DataFrame, dict[tuple[Any, ...], set[int]]]:
    """The evidence and each cell's persons of JOINED_MEAN, computed plainly in pandas."""
    income = pd.read_parquet(catalogue.sources["income"].path)
    population = pd.read_parquet(catalogue.sources["population"].path)
    joined = income.merge(population, left_on="pid", right_on="person", how="inner")
    keys = _space_keys(catalogue)
    joined["space"] = joined["pid"].map(keys).astype(np.int64)
    joined["county"] = joined["county"].where(joined["county"].isin(COUNTIES))
    evidence = joined[["space", "county", "sex", "wage"]]
    cells: dict[tuple[Any, ...], set[int]] = {}
    for row in evidence.dropna(subset=["county", "sex", "wage"]).itertuples(index=False):
        cells.setdefault((row.county, row.sex), set()).add(int(row.space))
    return evidence, cells


def _assert_as_pandas(evidence: Any, catalogue: Catalogue) -> None:
    from spe.analysis.outputs import compute
    from spe.sdc import Rules
    from spe.sdc.differencing import hash_person_ids

    want, want_cells = _pandas_cells(catalogue)
    got = evidence.frame
    assert got["pid"].dtype == np.int64

    def rows(frame: pd.DataFrame, person: str) -> list[tuple[Any, ...]]:
        return sorted(
            (
                int(r[0]),
                "" if pd.isna(r[1]) else str(r[1]),
                str(r[2]),
                -1e300 if pd.isna(r[3]) else round(float(r[3]), 6),
            )
            for r in frame[[person, "county", "sex", "wage"]].itertuples(index=False)
        )

    assert rows(got, "pid") == rows(want, "space")
    computed = compute(evidence.command, got, evidence.spec, Rules(), ())
    (table,) = computed.released_tables("t")
    seen = set()
    for i in range(len(table)):
        label = dict(table.labels[i])
        if set(label) != {"county", "sex"}:
            continue  # a margin
        key = (label["county"], label["sex"])
        expected = np.unique(hash_person_ids(np.array(sorted(want_cells[key]), dtype=np.int64)))
        assert np.array_equal(np.sort(table.cell(i)), expected), key
        seen.add(key)
    assert seen == set(want_cells)
    means = want.dropna(subset=["county", "wage"]).groupby(["county", "sex"])["wage"].mean()
    for (county, sex), mean in means.items():
        assert computed.table.loc[county, sex] == pytest.approx(mean, rel=1e-12)


@pytest.mark.parametrize("dataset", ["population", "income"])
def test_person_space_key_read_beside_its_extract_gives_the_pandas_persons(
    extracts: Catalogue, tmp_path: Path, dataset: str
) -> None:
    from spe.analysis.plan.evaluate import aligned_dataset, compile_plan

    person_map = _person_map(extracts, dataset, tmp_path)
    plan = validate(JOINED_MEAN, extracts)
    paths = {name: Path(s.path) for name, s in extracts.sources.items() if s.path is not None}
    assert aligned_dataset(paths, [person_map]) == dataset
    sql, _ = compile_plan(plan, paths, [person_map], aligned=dataset)
    assert "POSITIONAL JOIN" in sql and "DISTINCT" not in sql
    evidence = evaluate(plan, extracts, person_maps=[person_map])
    _assert_as_pandas(evidence, extracts)


def test_a_person_map_out_of_step_with_its_extract_is_joined_on_the_pseudonyms(
    extracts: Catalogue, tmp_path: Path
) -> None:
    person_map = _person_map(extracts, "population", tmp_path, shuffled=True)
    evidence = evaluate(validate(JOINED_MEAN, extracts), extracts, person_maps=[person_map])
    _assert_as_pandas(evidence, extracts)


def test_a_map_that_does_not_reach_every_row_is_joined_on_the_pseudonyms(
    extracts: Catalogue, tmp_path: Path
) -> None:
    """Population's map, population on the right of a left join: income rows without a
    population row would have no key, so the map is joined on the pseudonyms instead."""
    from spe.analysis.plan.evaluate import compile_plan

    person_map = _person_map(extracts, "population", tmp_path)
    document = json.loads(json.dumps(JOINED_MEAN))
    document["frame"]["how"] = "left"
    plan = validate(document, extracts)
    paths = {name: Path(s.path) for name, s in extracts.sources.items() if s.path is not None}
    sql, _ = compile_plan(plan, paths, [person_map], aligned="population")
    assert "POSITIONAL JOIN" not in sql and "DISTINCT" in sql
    evidence = evaluate(plan, extracts, person_maps=[person_map])
    _assert_as_pandas(evidence, extracts)  # the map has no key for income-only persons


POPULATION = {"op": "scan", "dataset": "population", "version": 1, "columns": None}
COUNT = {
    "command": "crosstab",
    "index": ["county"],
    "columns": ["q"],
    "values": None,
    "agg": "count",
    "safe": None,
}
IN_STEP_FRAMES = {
    # income's map: a filter, a window and quantile groups on the aligned side, then a join
    "income": {
        "op": "join",
        "left": {
            "op": "quantile_group",
            "input": {
                "op": "window",
                "input": {
                    "op": "filter",
                    "input": INCOME,
                    "where": {"fn": "ge", "args": [{"col": "year"}, {"lit": 2018}]},
                },
                "order_by": "year",
                "columns": {"w1": {"fn": "lag", "of": "wage", "n": 1}},
            },
            "name": "q",
            "of": "wage",
            "groups": 3,
            "within": ["year"],
        },
        "right": POPULATION,
        "how": "inner",
    },
    # population's map: population filtered, on the left of a left join
    "population": {
        "op": "quantile_group",
        "input": {
            "op": "join",
            "left": {
                "op": "filter",
                "input": POPULATION,
                "where": {"fn": "eq", "args": [{"col": "sex"}, {"lit": "F"}]},
            },
            "right": INCOME,
            "how": "left",
        },
        "name": "q",
        "of": "wage",
        "groups": 2,
        "within": [],
    },
}


@pytest.mark.parametrize("dataset", sorted(IN_STEP_FRAMES))
def test_the_key_read_in_step_equals_the_key_joined_on_the_pseudonyms(
    extracts: Catalogue, tmp_path: Path, dataset: str
) -> None:
    from spe.analysis.plan.evaluate import compile_plan

    plan = validate(_plan(IN_STEP_FRAMES[dataset], COUNT), extracts)
    in_step = _person_map(extracts, dataset, tmp_path)
    out_of_step = _person_map(extracts, dataset, tmp_path, shuffled=True)
    paths = {name: Path(s.path) for name, s in extracts.sources.items() if s.path is not None}
    sql, _ = compile_plan(plan, paths, [in_step], aligned=dataset)
    assert "POSITIONAL JOIN" in sql and "DISTINCT" not in sql

    def rows(person_map: Path) -> list[tuple[str, ...]]:
        frame = evaluate(plan, extracts, person_maps=[person_map]).frame
        return sorted(tuple(map(str, r)) for r in frame.itertuples(index=False))

    got = rows(in_step)
    assert len(got) > 10
    assert got == rows(out_of_step)
