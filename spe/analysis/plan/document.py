"""The plan document (version 1): its closed schema, size limits, types and grouping rules.

``validate(document, catalogue)`` walks the JSON once and returns a ``Plan``: the checked tree of
frame nodes and typed expressions the evaluator compiles, and the plan's SHA-256. Anything not in
the language (an unknown key, operation or function, free text, an off-grid edge) is refused.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spe.analysis.errors import AnalysisError
from spe.analysis.plan.catalogue import DATASET_NAME, MAX_TEXT, NAME, Catalogue, SourceInfo
from spe.analysis.plan.errors import PlanError
from spe.analysis.plan.grid import check_edges, check_width
from spe.sdc.compute import AGGS

PLAN_VERSION = 1
MAX_DEPTH = 32
MAX_NODES = 2000
MAX_BYTES = 256 * 1024
MAX_SOURCES = 8
MAX_VALUES = 200
MAX_FORMULA = 2000

NUMERIC = ("int", "float", "year")
JOINS = ("inner", "left")
WINDOW_FNS = ("lag", "lead", "diff", "cum_sum")
SAFE = (None, "suppress", "round")
# Names compute() gives its own labels; a data column may not take them in an output.
RESERVED = ("statistic", "variable", "interval", "value", "at_risk", "events", "censored")
MODEL_COMMANDS = ("ols", "logit", "probit")
_CATEGORICAL_CALLS = ("C", "Treatment", "Sum", "Poly", "Diff", "Helmert")


def canonical_json(document: Any) -> bytes:
    """The canonical form of a plan: sorted keys, no spaces, UTF-8, no NaN or infinity."""
    try:
        text = json.dumps(
            document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise PlanError(
            f"The plan is not plain JSON ({exc}); build it with spe.analysis."
        ) from None
    except RecursionError:
        raise PlanError(f"The plan is nested deeper than {MAX_DEPTH} nodes; simplify it.") from None
    return text.encode("utf-8")


def plan_hash(document: Any) -> str:
    """SHA-256 (hex) of the plan's canonical JSON: the same plan always has the same hash."""
    return hashlib.sha256(canonical_json(_parsed(document))).hexdigest()


def _parsed(document: Any) -> Any:
    if isinstance(document, bytes | str):
        size = len(document.encode("utf-8") if isinstance(document, str) else document)
        if size > MAX_BYTES:
            raise PlanError(
                f"The plan is {size} bytes, more than {MAX_BYTES}; split it or simplify it."
            )
        try:
            return json.loads(document)
        except (ValueError, RecursionError):
            raise PlanError("The plan is not valid JSON; build it with spe.analysis.") from None
    return document


# -- the checked tree -----------------------------------------------------------------------
@dataclass(frozen=True)
class BinSpec:
    """How a number is cut into grid bins: explicit edges, or a width from 0."""

    edges: tuple[float, ...] | None = None
    width: float | None = None


@dataclass(frozen=True)
class Field:
    """A column of a frame: its kind and, when it may group a table, where its labels come from.

    ``key`` is "category" (declared code list), "bin", "quantile", "year", "month" or None.
    """

    name: str
    kind: str  # int, float, string, date, bool, year, bin
    key: str | None = None
    categories: tuple[str | int, ...] | None = None
    bins: tuple[float, ...] | None = None  # edges the catalogue declares for this column
    bin: BinSpec | None = None


@dataclass(frozen=True)
class Expr:
    """A typed expression node. ``op`` is "col", "lit", "case", "bin" or a function name."""

    op: str
    kind: str  # result kind; "null" for the literal null
    args: tuple[Expr, ...] = ()
    name: str | None = None  # col
    value: Any = None  # lit: the value; is_in: the values; round: digits; cast: target kind
    bin: BinSpec | None = None


@dataclass(frozen=True)
class Schema:
    """The columns of a frame, in order, and its person column."""

    person: str
    fields: Mapping[str, Field]


@dataclass(frozen=True)
class FrameNode:
    """A checked frame node; ``parts`` hold the node's own arguments by name."""

    op: str
    schema: Schema
    inputs: tuple[FrameNode, ...] = ()
    parts: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputNode:
    """A checked output: the command, its spec for compute (without person_id) and used columns."""

    command: str
    spec: Mapping[str, Any]
    used: tuple[str, ...]
    hist_bin: BinSpec | None = None


@dataclass(frozen=True)
class Plan:
    """A validated plan: its document, hash, checked frame tree and output."""

    document: Mapping[str, Any]
    sha256: str
    frame: FrameNode
    output: OutputNode
    datasets: tuple[str, ...]

    @property
    def person(self) -> str:
        return self.frame.schema.person


# -- validation -----------------------------------------------------------------------------
def _size_limits(document: Any) -> None:
    """Depth (objects nested in objects) and node count, walked without recursion."""
    stack: list[tuple[Any, int]] = [(document, 1 if isinstance(document, dict) else 0)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            nodes += 1
            if nodes > MAX_NODES:
                raise PlanError(f"The plan has more than {MAX_NODES} nodes; simplify it.")
            if depth > MAX_DEPTH:
                raise PlanError(
                    f"The plan is nested deeper than {MAX_DEPTH} nodes; simplify it or split it "
                    "into steps."
                )
            stack.extend((v, depth + (1 if isinstance(v, dict) else 0)) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + (1 if isinstance(v, dict) else 0)) for v in value)


def _keys(node: Any, required: Sequence[str], what: str, optional: Sequence[str] = ()) -> dict:
    if not isinstance(node, dict):
        raise PlanError(f"The {what} must be a JSON object.")
    extra = sorted(set(node) - set(required) - set(optional))
    if extra:
        raise PlanError(
            f"The {what} has the unknown field {_shown(extra[0])}; a plan holds only the fields "
            "of its language."
        )
    missing = [k for k in required if k not in node]
    if missing:
        raise PlanError(f"The {what} lacks the field {missing[0]!r}.")
    return node


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise PlanError(
            f"The {what} {_shown(value)} is not a column name: use lower-case letters, digits "
            "and '_' (at most 63, not starting with a digit)."
        )
    return value


def _names(value: Any, what: str, *, minimum: int = 0) -> list[str]:
    if not isinstance(value, list):
        raise PlanError(f"The {what} must be a list of column names.")
    if len(value) < minimum:
        raise PlanError(f"Give at least {minimum} {what} column.")
    out = [_name(v, what) for v in value]
    if len(set(out)) != len(out):
        raise PlanError(f"The {what} names a column twice.")
    return out


def _int(value: Any, what: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise PlanError(f"The {what} must be a whole number from {low} to {high}.")
    return value


def _number(value: Any, what: str) -> float:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(float(value))
    ):
        raise PlanError(f"The {what} must be a finite number.")
    return float(value)


def _numeric_kind(kind: str) -> bool:
    return kind in NUMERIC


def _unify(kinds: Sequence[str], what: str) -> str:
    real = [k for k in kinds if k != "null"]
    if not real:
        return "null"
    if all(_numeric_kind(k) for k in real):
        return "float" if "float" in real else "int"
    first = real[0]
    if any(k != first for k in real) or first == "bin":
        raise PlanError(
            f"The values of {what} mix kinds ({', '.join(sorted(set(real)))}); cast them to "
            "one kind first."
        )
    return first


class _Validator:
    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self.scans = 0
        self.datasets: list[str] = []

    # -- frames -------------------------------------------------------------------------------
    def frame(self, node: Any) -> FrameNode:
        if not isinstance(node, dict) or "op" not in node:
            raise PlanError("Each frame step must be an object with an 'op'.")
        op = node["op"]
        handler = {
            "scan": self.scan,
            "filter": self.filter,
            "derive": self.derive,
            "select": self.select,
            "join": self.join,
            "window": self.window,
            "quantile_group": self.quantile_group,
        }.get(op if isinstance(op, str) else "")
        if handler is None:
            raise PlanError(
                f"There is no frame operation {_shown(op)}; use scan, filter, derive, select, "
                "join, window or quantile_group."
            )
        return handler(node)

    def scan(self, node: dict) -> FrameNode:
        _keys(node, ("op", "dataset", "version", "columns"), "scan")
        dataset = node["dataset"]
        if not isinstance(dataset, str) or not DATASET_NAME.match(dataset):
            raise PlanError(f"The dataset name {_shown(dataset)} is not a dataset name.")
        self.scans += 1
        if self.scans > MAX_SOURCES:
            raise PlanError(f"A plan may scan at most {MAX_SOURCES} sources; join fewer.")
        source = self.catalogue.sources.get(dataset)
        if source is None:
            known = ", ".join(sorted(self.catalogue.sources)) or "none"
            raise PlanError(
                f"The dataset {dataset!r} is not one of this project's extracts ({known}); "
                "scan one of those."
            )
        version = node["version"]
        if not isinstance(version, int) or isinstance(version, bool):
            raise PlanError(f"The version of {dataset!r} must be a whole number.")
        if version != source.version:
            raise PlanError(
                f"version {version} of {dataset} is not this project's extract (it has version "
                f"{source.version}); scan it again."
            )
        granted = {n: c for n, c in source.columns.items() if NAME.match(n)}
        person = source.person_column
        if node["columns"] is None:
            wanted = [n for n in granted if n != person]
        else:
            wanted = [c for c in _names(node["columns"], "scan") if c != person]
        fields: dict[str, Field] = {person: Field(person, "string")}
        for name in wanted:
            info = granted.get(name)
            if info is None:
                raise PlanError(
                    f"The column {name!r} of {dataset} is not granted to this project; the "
                    f"granted columns are {', '.join(sorted(granted)) or 'none'}."
                )
            fields[name] = _source_field(info.name, info.kind, info.categories, info.bins)
        if dataset not in self.datasets:
            self.datasets.append(dataset)
        return FrameNode(
            "scan",
            Schema(person, fields),
            parts={"dataset": dataset, "columns": tuple(wanted), "source": source},
        )

    def filter(self, node: dict) -> FrameNode:
        _keys(node, ("op", "input", "where"), "filter")
        child = self.frame(node["input"])
        where = self.expr(node["where"], child.schema)
        if where.kind not in ("bool", "null"):
            raise PlanError("A filter's condition must be true or false (a comparison).")
        return FrameNode("filter", child.schema, (child,), {"where": where})

    def derive(self, node: dict) -> FrameNode:
        _keys(node, ("op", "input", "columns"), "derive")
        child = self.frame(node["input"])
        columns = node["columns"]
        if not isinstance(columns, dict) or not columns:
            raise PlanError("derive needs columns: an object of new column names to expressions.")
        fields = dict(child.schema.fields)
        derived = []
        for name, raw in columns.items():
            _name(name, "derived column")
            if name == child.schema.person:
                raise PlanError(f"The person column {name!r} cannot be replaced; use another name.")
            expr = self.expr(raw, child.schema)
            if expr.op == "lit" and expr.kind == "string":
                raise PlanError(_TEXT_REFUSED)
            if expr.kind == "null":
                raise PlanError(f"The column {name!r} would hold only nulls; give it a value.")
            derived.append((name, expr))
            fields[name] = _expr_field(name, expr, child.schema)
        return FrameNode(
            "derive", Schema(child.schema.person, fields), (child,), {"columns": tuple(derived)}
        )

    def select(self, node: dict) -> FrameNode:
        _keys(node, ("op", "input", "columns"), "select")
        child = self.frame(node["input"])
        person = child.schema.person
        names = [n for n in _names(node["columns"], "select") if n != person]
        fields = {person: child.schema.fields[person]}
        for name in names:
            fields[name] = self.field(name, child.schema)
        return FrameNode("select", Schema(person, fields), (child,), {"columns": tuple(names)})

    def join(self, node: dict) -> FrameNode:
        _keys(node, ("op", "left", "right", "how"), "join")
        left = self.frame(node["left"])
        right = self.frame(node["right"])
        how = node["how"]
        if how not in JOINS:
            raise PlanError(f"A join is 'inner' or 'left', not {_shown(how)}.")
        person = left.schema.person
        fields = dict(left.schema.fields)
        for name, f in right.schema.fields.items():
            if name == right.schema.person:
                continue
            if name in fields:
                raise PlanError(
                    f"Both sides of the join have a column {name!r}: select it on one side only, "
                    "or derive a copy under another name and select that, before joining."
                )
            fields[name] = f
        return FrameNode("join", Schema(person, fields), (left, right), {"how": how})

    def window(self, node: dict) -> FrameNode:
        _keys(node, ("op", "input", "order_by", "columns"), "window")
        child = self.frame(node["input"])
        schema = child.schema
        order_by = self.field(_name(node["order_by"], "order_by column"), schema)
        if order_by.kind not in (*NUMERIC, "date"):
            raise PlanError(
                f"A window is ordered by a time column (a number, year or date); "
                f"{order_by.name!r} is {order_by.kind}."
            )
        columns = node["columns"]
        if not isinstance(columns, dict) or not columns:
            raise PlanError("window needs columns: new names to {fn, of, n}.")
        fields = dict(schema.fields)
        specs = []
        for name, raw in columns.items():
            _name(name, "window column")
            if name in schema.fields:
                raise PlanError(f"The window column {name!r} exists already; use a new name.")
            if not isinstance(raw, dict):
                raise PlanError(f"The window column {name!r} must be an object {{fn, of, n}}.")
            fn = raw.get("fn")
            if fn not in WINDOW_FNS:
                raise PlanError(
                    f"There is no window function {_shown(fn)}; use lag, lead, diff or cum_sum "
                    "(a group's minimum, maximum, first or last value is not in the language)."
                )
            if fn == "cum_sum":
                _keys(raw, ("fn", "of"), f"window column {name!r}")
                n = 1
            else:
                _keys(raw, ("fn", "of", "n"), f"window column {name!r}")
                n = _int(raw["n"], f"n of the window column {name!r}", 1, 12)
            of = self.field(_name(raw["of"], "window input"), schema)
            if of.name == schema.person:
                raise PlanError("A window cannot take the person column.")
            if fn in ("diff", "cum_sum") and not _numeric_kind(of.kind):
                raise PlanError(f"{fn} needs a numeric column; {of.name!r} is {of.kind}.")
            if fn in ("lag", "lead"):
                # A neighbouring row's value is still one of the column's labels.
                new = Field(name, of.kind, of.key, of.categories, None, of.bin)
            else:
                new = Field(name, "float" if of.kind == "float" else "int")
            fields[name] = new
            specs.append((name, fn, of.name, n))
        return FrameNode(
            "window",
            Schema(schema.person, fields),
            (child,),
            {"order_by": order_by.name, "columns": tuple(specs)},
        )

    def quantile_group(self, node: dict) -> FrameNode:
        _keys(node, ("op", "input", "name", "of", "groups", "within"), "quantile_group")
        child = self.frame(node["input"])
        schema = child.schema
        name = _name(node["name"], "quantile group name")
        if name in schema.fields:
            raise PlanError(f"The column {name!r} exists already; name the groups otherwise.")
        of = self.field(_name(node["of"], "quantile_group's of"), schema)
        if not _numeric_kind(of.kind):
            raise PlanError(f"Quantile groups rank numbers; {of.name!r} is {of.kind}.")
        groups = _int(node["groups"], "number of quantile groups", 2, 100)
        within = _names(node["within"], "within")
        for w in within:
            self.field(w, schema)
        fields = dict(schema.fields)
        fields[name] = Field(name, "int", "quantile", tuple(range(1, groups + 1)))
        return FrameNode(
            "quantile_group",
            Schema(schema.person, fields),
            (child,),
            {"name": name, "of": of.name, "groups": groups, "within": tuple(within)},
        )

    def field(self, name: str, schema: Schema) -> Field:
        found = schema.fields.get(name)
        if found is None:
            raise PlanError(
                f"There is no column {name!r} here; the columns are {', '.join(schema.fields)}."
            )
        return found

    # -- expressions ----------------------------------------------------------------------------
    def expr(self, node: Any, schema: Schema) -> Expr:
        if not isinstance(node, dict):
            raise PlanError(f"An expression must be an object, not {_shown(node)}.")
        if "col" in node:
            _keys(node, ("col",), "column reference")
            f = self.field(_name(node["col"], "column"), schema)
            return Expr("col", f.kind, name=f.name)
        if "lit" in node:
            _keys(node, ("lit",), "literal")
            return _literal(node["lit"])
        if "case" in node:
            return self.case(node, schema)
        if "bin" in node:
            return self.bin(node, schema)
        if "fn" in node:
            return self.function(node, schema)
        raise PlanError(
            f"The expression {_shown(node)} is not in the language: use col, lit, fn, case or bin."
        )

    def case(self, node: dict, schema: Schema) -> Expr:
        _keys(node, ("case", "otherwise"), "case")
        branches = node["case"]
        if not isinstance(branches, list) or not branches:
            raise PlanError("case needs a list of [condition, value] pairs.")
        args: list[Expr] = []
        for pair in branches:
            if not isinstance(pair, list) or len(pair) != 2:
                raise PlanError("Each case branch is a pair [condition, value].")
            condition = self.expr(pair[0], schema)
            if condition.kind not in ("bool", "null"):
                raise PlanError("A case condition must be true or false (a comparison).")
            args += [condition, self.value(pair[1], schema)]
        otherwise = self.value(node["otherwise"], schema)
        kind = _unify([*(a.kind for a in args[1::2]), otherwise.kind], "case")
        return Expr("case", kind, (*args, otherwise))

    def value(self, node: Any, schema: Schema) -> Expr:
        """An expression whose value ends up in a column: no free text."""
        out = self.expr(node, schema)
        if out.op == "lit" and out.kind == "string":
            raise PlanError(_TEXT_REFUSED)
        if out.kind == "bin":
            raise PlanError("A bin can only be a column of its own; derive it, then group by it.")
        return out

    def bin(self, node: dict, schema: Schema) -> Expr:
        if "edges" in node:
            _keys(node, ("bin", "edges"), "bin")
        else:
            _keys(node, ("bin", "width"), "bin")
        inner = self.value(node["bin"], schema)
        if not _numeric_kind(inner.kind):
            raise PlanError(f"Only numbers can be cut into bins, not {inner.kind}.")
        declared = None
        if inner.op == "col":
            declared = schema.fields[inner.name or ""].bins
        if "edges" in node:
            spec = BinSpec(edges=check_edges(node["edges"], declared, "bin edges"))
        else:
            spec = BinSpec(width=check_width(node["width"]))
        return Expr("bin", "bin", (inner,), bin=spec)

    def function(self, node: dict, schema: Schema) -> Expr:
        fn = node.get("fn")
        if not isinstance(fn, str) or fn not in _FUNCTIONS:
            raise PlanError(
                f"There is no function {_shown(fn)} in the plan language; the functions are "
                f"{', '.join(_FUNCTIONS)}."
            )
        if fn == "cast":
            _keys(node, ("fn", "args", "to"), "cast")
        else:
            _keys(node, ("fn", "args"), f"function {fn}")
        raw = node["args"]
        low, high = _FUNCTIONS[fn]
        if not isinstance(raw, list) or not low <= len(raw) <= high:
            count = str(low) if low == high else f"{low} to {high}"
            raise PlanError(f"{fn} takes {count} arguments.")
        if fn in ("eq", "ne"):
            return self.equality(fn, raw, schema)
        if fn == "is_in":
            return self.is_in(raw, schema)
        if fn == "round":
            x = self.value(raw[0], schema)
            _need_numeric(fn, [x])
            digits = 0
            if len(raw) == 2:
                lit = raw[1]
                if not isinstance(lit, dict) or set(lit) != {"lit"}:
                    raise PlanError("round's number of digits must be a literal from 0 to 6.")
                digits = _int(lit["lit"], "number of digits of round", 0, 6)
            return Expr("round", "float", (x,), value=digits)
        if fn == "clip":
            x = self.value(raw[0], schema)
            bounds = []
            for bound in raw[1:]:
                if not isinstance(bound, dict) or set(bound) != {"lit"}:
                    raise PlanError("clip's lower and upper bounds must be numbers.")
                bounds.append(_literal(bound["lit"]))
            _need_numeric(fn, [x, *bounds])
            if float(bounds[0].value) > float(bounds[1].value):
                raise PlanError("clip's lower bound must not be above its upper bound.")
            return Expr("clip", _unify([x.kind, *(b.kind for b in bounds)], "clip"), (x, *bounds))
        args = [self.value(a, schema) for a in raw]
        kinds = [a.kind for a in args]
        if fn in ("add", "sub", "mul"):
            _need_numeric(fn, args)
            return Expr(fn, "float" if "float" in kinds else "int", tuple(args))
        if fn == "div":
            _need_numeric(fn, args)
            return Expr(fn, "float", tuple(args))
        if fn in ("neg", "abs"):
            _need_numeric(fn, args)
            return Expr(fn, "float" if kinds[0] == "float" else "int", tuple(args))
        if fn in ("log", "exp", "sqrt"):
            _need_numeric(fn, args)
            return Expr(fn, "float", tuple(args))
        if fn in ("lt", "le", "gt", "ge", "between"):
            if all(k in ("date", "null") for k in kinds) and "date" in kinds:
                return Expr(fn, "bool", tuple(args))
            _need_numeric(fn, args)
            return Expr(fn, "bool", tuple(args))
        if fn in ("and", "or", "not"):
            for a in args:
                if a.kind not in ("bool", "null"):
                    raise PlanError(f"{fn} combines conditions (true or false), not {a.kind}.")
            return Expr(fn, "bool", tuple(args))
        if fn == "is_null":
            return Expr(fn, "bool", tuple(args))
        if fn == "coalesce":
            return Expr(fn, _unify(kinds, "coalesce"), tuple(args))
        if fn == "cast":
            to = node["to"]
            if to not in ("int", "float"):
                raise PlanError(f"cast converts to 'int' or 'float', not {_shown(to)}.")
            if kinds[0] not in (*NUMERIC, "bool", "null"):
                raise PlanError(f"Only numbers and true/false can be cast, not {kinds[0]}.")
            return Expr(fn, to, tuple(args), value=to)
        if fn in ("year", "month"):
            if kinds[0] not in ("date", "null"):
                raise PlanError(f"{fn} takes a date, not {kinds[0]}.")
            return Expr(fn, "int", tuple(args))
        raise PlanError(f"The function {fn} is not in the plan language.")  # pragma: no cover

    def equality(self, fn: str, raw: list, schema: Schema) -> Expr:
        args = [self.expr(a, schema) for a in raw]
        texts = [a for a in args if a.op == "lit" and a.kind == "string"]
        if texts:
            other = args[1] if args[0] in texts else args[0]
            _check_categories(other, [t.value for t in texts], schema)
            return Expr(fn, "bool", tuple(args))
        for a in args:
            if a.kind == "bin":
                raise PlanError("A bin cannot be compared; filter on the number it cuts.")
        kinds = [a.kind for a in args]
        _unify(kinds, fn)
        return Expr(fn, "bool", tuple(args))

    def is_in(self, raw: list, schema: Schema) -> Expr:
        x = self.expr(raw[0], schema)
        values = raw[1]
        if not isinstance(values, dict) or set(values) != {"values"}:
            raise PlanError('is_in takes an expression and {"values": [literals]}.')
        items = values["values"]
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_VALUES:
            raise PlanError(f"is_in takes from 1 to {MAX_VALUES} values.")
        literals = [_literal(v) for v in items]
        if any(lit.kind == "null" for lit in literals):
            raise PlanError("is_in cannot hold null; use is_null for missing values.")
        if any(lit.kind == "string" for lit in literals):
            _check_categories(x, [lit.value for lit in literals], schema)
        elif x.kind == "bin":
            raise PlanError("A bin cannot be compared; filter on the number it cuts.")
        else:
            _unify([x.kind, *(lit.kind for lit in literals)], "is_in")
        return Expr("is_in", "bool", (x,), value=tuple(lit.value for lit in literals))

    # -- outputs ------------------------------------------------------------------------------
    def output(self, node: Any, schema: Schema) -> OutputNode:
        if not isinstance(node, dict) or "command" not in node:
            raise PlanError("The output must be an object with a 'command'.")
        command = node["command"]
        if command in ("crosstab", "pivot_table"):
            _keys(node, ("command", "index", "columns", "values", "agg", "safe"), command)
            index = _names(node["index"], "index", minimum=1)
            columns = _names(node["columns"], "columns", minimum=1)
            values = node["values"]
            agg = node["agg"]
            if agg not in AGGS:
                raise PlanError(f"agg is {_shown(agg)}; use one of {', '.join(AGGS)}.")
            if values is None:
                if command == "pivot_table" or agg != "count":
                    raise PlanError(f"{command} with agg {agg!r} needs values, a column.")
            else:
                values = _name(values, "values column")
                f = self.field(values, schema)
                if agg != "count" and f.kind not in (*NUMERIC, "bool"):
                    raise PlanError(f"{agg} needs numbers; the column {values!r} is {f.kind}.")
            self.keys([*index, *columns], schema)
            if node["safe"] == "round" and agg != "count":
                raise PlanError(
                    f"Rounding protects counts; this is a table of {agg}. Use safe='suppress'."
                )
            used = [*index, *columns, *([values] if values else [])]
            spec = {
                "index": index,
                "columns": columns,
                "values": values,
                "agg": agg,
                "safe": _safe(node["safe"], SAFE),
            }
            return self.finish(command, spec, used, schema)
        if command == "hist":
            if "edges" in node:
                _keys(node, ("command", "column", "edges", "by", "safe"), "hist")
            else:
                _keys(node, ("command", "column", "width", "by", "safe"), "hist")
            column = _name(node["column"], "histogram column")
            f = self.field(column, schema)
            if not _numeric_kind(f.kind):
                raise PlanError(f"A histogram needs numbers; the column {column!r} is {f.kind}.")
            by = _names(node["by"], "by")
            self.keys(by, schema)
            if "edges" in node:
                spec_bin = BinSpec(edges=check_edges(node["edges"], f.bins, "histogram edges"))
            else:
                spec_bin = BinSpec(width=check_width(node["width"]))
            spec = {"column": column, "by": by, "safe": _safe(node["safe"], SAFE)}
            if spec_bin.edges is not None:
                spec["edges"] = list(spec_bin.edges)
            out = self.finish("hist", spec, [*by, column], schema)
            return OutputNode(out.command, out.spec, out.used, spec_bin)
        if command == "describe":
            _keys(node, ("command", "columns", "by", "safe"), "describe")
            columns = _names(node["columns"], "describe", minimum=1)
            by = _names(node["by"], "by")
            for name in columns:
                f = self.field(name, schema)
                if f.kind not in (*NUMERIC, "bool"):
                    raise PlanError(f"describe needs numbers; the column {name!r} is {f.kind}.")
            self.keys(by, schema)
            spec = {"columns": columns, "by": by, "safe": _safe(node["safe"], (None, "suppress"))}
            return self.finish("describe", spec, [*by, *columns], schema)
        if command in MODEL_COMMANDS:
            _keys(node, ("command", "formula"), command)
            formula = node["formula"]
            if not isinstance(formula, str) or len(formula) > MAX_FORMULA:
                raise PlanError(f"The formula must be text of at most {MAX_FORMULA} characters.")
            from spe.analysis.formula import formula_columns

            usable = [n for n in schema.fields if n != schema.person]
            try:
                used = formula_columns(formula, usable)
            except AnalysisError as exc:
                raise PlanError(exc.message) from None
            categorical = _categorical_terms(formula)
            for name in used:
                f = schema.fields[name]
                if f.kind in ("date",):
                    raise PlanError(f"A model cannot use the date {name!r}; use its year().")
                if (f.kind in ("string", "bin") or name in categorical) and f.key is None:
                    raise PlanError(_not_a_key(f) + " Model terms are labelled by its values.")
            spec = {"formula": formula, "model": command, "columns": used}
            return self.finish(command, spec, used, schema)
        if command == "survival":
            _keys(node, ("command", "duration", "event", "by", "edges"), "survival")
            duration = _name(node["duration"], "duration column")
            event = _name(node["event"], "event column")
            d, e = self.field(duration, schema), self.field(event, schema)
            if not _numeric_kind(d.kind):
                raise PlanError(f"The duration {duration!r} must be a number, not {d.kind}.")
            if e.kind not in (*NUMERIC, "bool"):
                raise PlanError(f"The event {event!r} must be 0/1 or true/false, not {e.kind}.")
            by = _names(node["by"], "by")
            self.keys(by, schema)
            edges = check_edges(node["edges"], d.bins, "survival interval edges")
            spec = {"duration": duration, "event": event, "by": by, "edges": list(edges)}
            return self.finish("survival", spec, [*by, duration, event], schema)
        raise PlanError(
            f"There is no output command {_shown(command)}; use crosstab, pivot_table, hist, "
            "describe, ols, logit, probit or survival."
        )

    def keys(self, names: Sequence[str], schema: Schema) -> None:
        for name in names:
            f = self.field(name, schema)
            if f.key is None:
                raise PlanError(_not_a_key(f))

    def finish(
        self, command: str, spec: dict[str, Any], used: list[str], schema: Schema
    ) -> OutputNode:
        for name in used:
            self.field(name, schema)
            if name == schema.person:
                raise PlanError(f"The person column {name!r} cannot be a column of the output.")
            if name in RESERVED and command not in MODEL_COMMANDS:
                raise PlanError(
                    f"Rename the column {name!r} (derive a copy under another name): {command} "
                    "uses that name for its own labels."
                )
        if len(set(used)) != len(used):
            raise PlanError("An output may use each column only once.")
        return OutputNode(command, spec, tuple(used))


_TEXT_REFUSED = (
    "Text is allowed only as a declared category compared with eq, ne or is_in against its "
    "column; a plan carries no other text."
)

# name -> (fewest, most) arguments
_FUNCTIONS: dict[str, tuple[int, int]] = {
    "add": (2, 2),
    "sub": (2, 2),
    "mul": (2, 2),
    "div": (2, 2),
    "neg": (1, 1),
    "eq": (2, 2),
    "ne": (2, 2),
    "lt": (2, 2),
    "le": (2, 2),
    "gt": (2, 2),
    "ge": (2, 2),
    "and": (2, 16),
    "or": (2, 16),
    "not": (1, 1),
    "is_null": (1, 1),
    "is_in": (2, 2),
    "between": (3, 3),
    "coalesce": (2, 8),
    "abs": (1, 1),
    "log": (1, 1),
    "exp": (1, 1),
    "sqrt": (1, 1),
    "round": (1, 2),
    "clip": (3, 3),
    "cast": (1, 1),
    "year": (1, 1),
    "month": (1, 1),
}


def _source_field(
    name: str, kind: str, categories: tuple[str | int, ...] | None, bins: tuple[float, ...] | None
) -> Field:
    if categories is not None:
        return Field(name, kind, "category", categories, bins)
    if kind == "year":
        return Field(name, kind, "year", None, bins)
    return Field(name, kind, None, None, bins)


def _expr_field(name: str, expr: Expr, schema: Schema) -> Field:
    """The derived column's field: a plain copy keeps its labels, a bin or year/month makes them."""
    if expr.op == "col":
        source = schema.fields[expr.name or ""]
        return Field(name, source.kind, source.key, source.categories, source.bins, source.bin)
    if expr.op == "bin":
        return Field(name, "bin", "bin", None, None, expr.bin)
    if expr.op == "year":
        return Field(name, "int", "year")
    if expr.op == "month":
        return Field(name, "int", "month", tuple(range(1, 13)))
    return Field(name, expr.kind)


def _literal(value: Any) -> Expr:
    if value is None:
        return Expr("lit", "null", value=None)
    if isinstance(value, bool):
        return Expr("lit", "bool", value=value)
    if isinstance(value, int):
        if abs(value) > 2**53:
            raise PlanError(f"The number {value} is too large for a plan.")
        return Expr("lit", "int", value=value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PlanError("Numbers in a plan must be finite.")
        return Expr("lit", "float", value=value)
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise PlanError(
                f"Text in a plan is at most {MAX_TEXT} characters; it names a category."
            )
        return Expr("lit", "string", value=value)
    raise PlanError(f"A literal is a number, true/false, text or null, not {_shown(value)}.")


def _check_categories(other: Expr, texts: Sequence[Any], schema: Schema) -> None:
    """Text may only be a declared category of the column it is compared with."""
    if other.op != "col":
        raise PlanError(_TEXT_REFUSED)
    f = schema.fields[other.name or ""]
    if f.key != "category" or f.categories is None:
        raise PlanError(
            f"The column {f.name!r} declares no categories, so it cannot be compared with text; "
            "a plan carries no free text."
        )
    for text in texts:
        if not isinstance(text, str) or text not in f.categories:
            raise PlanError(
                f"{_shown(text)} is not a category of {f.name!r}; use one of its declared "
                f"categories ({', '.join(map(str, f.categories[:10]))}"
                + (", ..." if len(f.categories) > 10 else "")
                + ")."
            )


def _need_numeric(fn: str, args: Sequence[Expr]) -> None:
    for a in args:
        if not (_numeric_kind(a.kind) or a.kind == "null"):
            raise PlanError(f"{fn} needs numbers, not {a.kind}; cast or choose another column.")


def _safe(value: Any, allowed: Sequence[str | None]) -> str | None:
    if value not in allowed:
        raise PlanError(
            "safe is " + ", ".join("null" if a is None else repr(a) for a in allowed) + "."
        )
    return value


def _not_a_key(f: Field) -> str:
    if f.kind in NUMERIC:
        why, fix = "a number", "cut it into bins with .bin(width=...) first"
    elif f.kind == "date":
        why, fix = "a date", "group by its .year() or .month()"
    elif f.kind == "string":
        why, fix = (
            "text without declared categories",
            "group by a column whose categories the dataset policy declares",
        )
    else:
        why, fix = f"{f.kind}", "group by a declared category or a bin"
    return (
        f"The column {f.name!r} cannot label a table: it is {why} (labels must be public "
        f"categories or grid bins); {fix}."
    )


def _categorical_terms(formula: str) -> set[str]:
    """Columns a formula turns into categories (inside C(...) or a contrast): their values label
    terms."""
    from patsy import ModelDesc

    names: set[str] = set()
    desc = ModelDesc.from_formula(formula)
    for term in [*desc.lhs_termlist, *desc.rhs_termlist]:
        for factor in term.factors:
            tree = ast.parse(getattr(factor, "code", ""), mode="eval")
            for call in ast.walk(tree):
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Name)
                    and call.func.id in _CATEGORICAL_CALLS
                    and call.args
                ):
                    for inner in ast.walk(call.args[0]):
                        if isinstance(inner, ast.Name):
                            names.add(inner.id)
                        elif isinstance(inner, ast.Constant) and isinstance(inner.value, str):
                            names.add(inner.value)
    return names


def validate(document: Any, catalogue: Catalogue) -> Plan:
    """The checked plan, or a PlanError saying in one sentence what is wrong and what to do."""
    document = _parsed(document)
    raw = canonical_json(document)
    if len(raw) > MAX_BYTES:
        raise PlanError(
            f"The plan is {len(raw)} bytes, more than {MAX_BYTES}; split it or simplify it."
        )
    _size_limits(document)
    _keys(document, ("spe_plan", "project", "frame", "output"), "plan")
    version = document["spe_plan"]
    if version != PLAN_VERSION or isinstance(version, bool):
        raise PlanError(
            f"This is plan version {_shown(version)}; SPE reads version {PLAN_VERSION}. Build it "
            "again with spe.analysis."
        )
    project = document["project"]
    if not isinstance(project, str) or len(project) > 128:
        raise PlanError("The plan's project must be the project's slug.")
    if project != catalogue.project:
        raise PlanError(
            f"This plan was made in project {project!r}, not in {catalogue.project!r}; build it "
            "again in this project's workspace."
        )
    checker = _Validator(catalogue)
    frame = checker.frame(document["frame"])
    output = checker.output(document["output"], frame.schema)
    return Plan(
        document=document,
        sha256=hashlib.sha256(raw).hexdigest(),
        frame=frame,
        output=output,
        datasets=tuple(checker.datasets),
    )


def validate_frame(node: Any, catalogue: Catalogue) -> FrameNode:
    """A checked frame without an output (for a workspace preview; never released)."""
    _size_limits(node)
    return _Validator(catalogue).frame(node)


def source_of(plan: Plan) -> list[SourceInfo]:
    """The sources a plan scans, in the order it names them."""
    out: list[SourceInfo] = []
    stack = [plan.frame]
    while stack:
        node = stack.pop()
        if node.op == "scan" and node.parts["source"] not in out:
            out.append(node.parts["source"])
        stack.extend(reversed(node.inputs))
    return out
