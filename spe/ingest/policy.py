"""Dataset policies (policies/datasets/*.yaml): what each column is and how it is treated.

Every column of an extract must be classified: ``person_id`` (pseudonymised), ``direct_identifier``
(dropped), ``quasi_identifier`` (kept, or generalised) or ``attribute`` (kept). A kept column may
declare its public code list (``categories``, enforced at ingest) or public ``bins``; a text
column without categories is free text and can never be a grouping key of a released table.
A policy is validated at load; an error names the file, the line and the fix.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from spe.errors import SPEError
from spe.policyfile import Located, compose, pairs, suggest

if TYPE_CHECKING:
    from spe.dp.policy import DPPolicy


class PolicyError(SPEError):
    """A dataset policy is wrong; the message names file, line and fix."""


class ColumnClass(enum.StrEnum):
    PERSON_ID = "person_id"
    DIRECT_IDENTIFIER = "direct_identifier"
    QUASI_IDENTIFIER = "quasi_identifier"
    ATTRIBUTE = "attribute"


class ColumnType(enum.StrEnum):
    STRING = "string"
    INT = "int64"
    FLOAT = "float64"
    DATE = "date"


class Generalisation(enum.StrEnum):
    YEAR = "year"  # a date becomes its year
    COUNTY = "county"  # a 4-digit municipality number becomes its 2-digit county


GENERALISABLE = {Generalisation.YEAR: ColumnType.DATE, Generalisation.COUNTY: ColumnType.STRING}
# A code list is public information shown in the catalogue and used as table labels: bounded.
MAX_CATEGORIES = 10_000
MAX_CATEGORY_CHARS = 64
MAX_BIN_EDGES = 10_000
_INT_TEXT = re.compile(r"^[+-]?\d{1,18}$")
# C0 controls but tab, DEL and C1 controls: never in a category (nor in a kept text value).
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class ColumnPolicy:
    name: str
    cls: ColumnClass
    type: ColumnType = ColumnType.STRING
    description: str = ""
    generalise: Generalisation | None = None
    required: bool = False
    # The public code list: a value outside it is quarantined at ingest. Ints for int64.
    categories: tuple[str | int, ...] | None = None
    # Public bin edges of a numeric column (strictly increasing).
    bins: tuple[float, ...] | None = None

    @property
    def free_text(self) -> bool:
        """A kept text column without a code list: it can never be a grouping key."""
        return (
            self.cls in (ColumnClass.QUASI_IDENTIFIER, ColumnClass.ATTRIBUTE)
            and self.type == ColumnType.STRING
            and self.categories is None
        )


_KINDS = {
    ColumnType.STRING: "string",
    ColumnType.INT: "int",
    ColumnType.FLOAT: "float",
    ColumnType.DATE: "date",
}


def _generalisations(column: ColumnPolicy, how: Generalisation | None) -> list[Generalisation]:
    """The generalisations applied to a column: the policy's own at ingest, then the grant's."""
    steps = [g for g in (column.generalise, how) if g is not None]
    if how is not None and not (column.generalise == how == Generalisation.COUNTY):
        held = ColumnType.INT if column.generalise == Generalisation.YEAR else column.type
        if GENERALISABLE[how] != held:
            raise PolicyError(
                f"Column {column.name!r} ({column_kind(column, None)}) cannot be generalised to "
                f"{how.value}; {how.value} needs a {GENERALISABLE[how].value} column."
            )
    return steps


def column_kind(column: ColumnPolicy, how: Generalisation | None) -> str:
    """What a column is after the grant's generalisation: int, float, string, date or year."""
    if Generalisation.YEAR in _generalisations(column, how):
        return "year"
    return _KINDS[column.type]


def generalised_categories(
    column: ColumnPolicy, how: Generalisation | None
) -> tuple[str | int, ...] | None:
    """The code list of a column after its generalisations (the policy's at ingest, then the
    grant's ``how``): county keeps the sorted distinct first two characters of municipality
    numbers; a date made a year has no code list (it is a year, binned on the grid)."""
    categories = column.categories
    for step in _generalisations(column, how):
        if categories is None or step == Generalisation.YEAR:
            return None
        categories = tuple(sorted({str(c)[:2] for c in categories}))
    return categories


@dataclass(frozen=True)
class IdentifierPolicy:
    allow_synthetic: bool = False
    allow_d_number: bool = False
    allow_h_number: bool = False
    allow_2032_rule: bool = False


@dataclass(frozen=True)
class DatasetPolicy:
    path: Path
    dataset: str
    title: str
    description: str
    holder: str
    conditions: str
    columns: tuple[ColumnPolicy, ...]
    identifiers: IdentifierPolicy = field(default_factory=IdentifierPolicy)
    one_row_per_person: bool = False
    encoding: str = "auto"
    delimiter: str | None = None
    access: str = "rows"
    temporal_coverage: str = ""
    sha256: str = ""
    dp: DPPolicy | None = None  # the budget and public bounds of an aggregate_only dataset
    # Bytes of files (not notebooks) a workspace granted this dataset may show in the browser
    # per UTC day, where stricter than the settings' workspace_read_bytes_per_day.
    read_bytes_per_day: int | None = None

    @property
    def person_column(self) -> ColumnPolicy:
        return next(c for c in self.columns if c.cls == ColumnClass.PERSON_ID)

    def column(self, name: str) -> ColumnPolicy | None:
        return next((c for c in self.columns if c.name == name), None)

    @property
    def kept_columns(self) -> list[ColumnPolicy]:
        """Columns that stay in the held dataset (the person id becomes its pseudonym)."""
        return [c for c in self.columns if c.cls != ColumnClass.DIRECT_IDENTIFIER]


_TOP_KEYS = {
    "dataset": True,
    "title": True,
    "description": False,
    "holder": True,
    "conditions": True,
    "columns": True,
    "identifiers": False,
    "one_row_per_person": False,
    "encoding": False,
    "delimiter": False,
    "access": False,
    "temporal_coverage": False,
    "dp": False,
    "read_bytes_per_day": False,
}
_COLUMN_KEYS = {"class", "type", "description", "generalise", "required", "categories", "bins"}
_ID_KEYS = {"allow_synthetic", "allow_d_number", "allow_h_number", "allow_2032_rule"}


def _scalar(loc: Located, node: yaml.Node, what: str) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise loc.fail(node, f"{what} must be a single value.")
    return str(node.value)


def _bool(loc: Located, node: yaml.Node, what: str) -> bool:
    text = _scalar(loc, node, what).lower()
    if text in ("true", "yes", "on"):
        return True
    if text in ("false", "no", "off"):
        return False
    raise loc.fail(node, f"{what} must be true or false, not {text!r}.")


def _enum(loc: Located, node: yaml.Node, kind: type[enum.StrEnum], what: str) -> Any:
    text = _scalar(loc, node, what)
    try:
        return kind(text)
    except ValueError:
        options = [m.value for m in kind]
        raise loc.fail(
            node,
            f"{what} is {text!r}; use one of {', '.join(options)}{suggest(text, options)}",
        ) from None


def _column(loc: Located, name_node: yaml.Node, node: yaml.Node) -> ColumnPolicy:
    name = _scalar(loc, name_node, "a column name")
    if isinstance(node, yaml.ScalarNode):  # shorthand: `name: attribute`
        return ColumnPolicy(name, _enum(loc, node, ColumnClass, f"column {name!r}'s class"))
    values: dict[str, Any] = {}
    nodes: dict[str, yaml.Node] = {}
    for key, key_node, value_node in pairs(loc, node, f"column {name!r}"):
        if key not in _COLUMN_KEYS:
            raise loc.fail(
                key_node,
                f"column {name!r} has an unknown key {key!r}{suggest(key, _COLUMN_KEYS)}",
            )
        nodes[key] = value_node
    if "class" not in nodes:
        raise loc.fail(
            node,
            f"column {name!r} needs a class: person_id, direct_identifier, quasi_identifier or "
            "attribute.",
        )
    values["cls"] = _enum(loc, nodes["class"], ColumnClass, f"column {name!r}'s class")
    if "type" in nodes:
        values["type"] = _enum(loc, nodes["type"], ColumnType, f"column {name!r}'s type")
    if "description" in nodes:
        values["description"] = _scalar(loc, nodes["description"], "description")
    if "required" in nodes:
        values["required"] = _bool(loc, nodes["required"], f"column {name!r}'s required")
    if "generalise" in nodes:
        gen = _enum(loc, nodes["generalise"], Generalisation, f"column {name!r}'s generalise")
        if values["cls"] != ColumnClass.QUASI_IDENTIFIER:
            raise loc.fail(nodes["generalise"], "only a quasi_identifier can be generalised.")
        needed = GENERALISABLE[gen]
        if values.get("type", ColumnType.STRING) != needed:
            raise loc.fail(
                nodes["generalise"],
                f"generalise: {gen.value} needs a column of type {needed.value}.",
            )
        values["generalise"] = gen
    kind = values.get("type", ColumnType.STRING)
    if "categories" in nodes:
        values["categories"] = _categories(loc, nodes["categories"], name, values["cls"], kind)
    if "bins" in nodes:
        values["bins"] = _bins(loc, nodes["bins"], name, values["cls"], kind)
    return ColumnPolicy(name=name, **values)


def _list(loc: Located, node: yaml.Node, what: str, most: int) -> list[yaml.ScalarNode]:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise loc.fail(node, f"{what} must be a non-empty list, like [a, b].")
    if len(node.value) > most:
        raise loc.fail(
            node, f"{what} has {len(node.value):,} entries; at most {most:,} are allowed."
        )
    for item in node.value:
        if not isinstance(item, yaml.ScalarNode):
            raise loc.fail(item, f"each entry of {what} must be a single value.")
    return list(node.value)


def _categories(
    loc: Located, node: yaml.Node, name: str, cls: ColumnClass, kind: ColumnType
) -> tuple[str | int, ...]:
    what = f"column {name!r}'s categories"
    if cls not in (ColumnClass.QUASI_IDENTIFIER, ColumnClass.ATTRIBUTE):
        raise loc.fail(node, f"{what}: only a quasi_identifier or attribute has categories.")
    if kind not in (ColumnType.STRING, ColumnType.INT):
        raise loc.fail(
            node,
            f"{what}: a {kind.value} column has no code list; categories suit string and int64 "
            "columns (give a numeric column bins instead).",
        )
    out: list[str | int] = []
    seen: set[str | int] = set()
    for item in _list(loc, node, what, MAX_CATEGORIES):
        text = str(item.value)
        value: str | int
        if kind == ColumnType.INT:
            if item.style is not None or not _INT_TEXT.match(text):
                raise loc.fail(
                    item, f"{what}: {text!r} is not a whole number, and the column is int64."
                )
            value = int(text)
        else:
            if not text or text != text.strip() or CONTROL_CHARACTERS.search(text):
                raise loc.fail(
                    item,
                    f"{what}: {text!r} must be text without surrounding spaces or control "
                    "characters.",
                )
            if len(text) > MAX_CATEGORY_CHARS:
                raise loc.fail(
                    item,
                    f"{what}: {text[:20]!r}... is longer than {MAX_CATEGORY_CHARS} characters.",
                )
            value = text
        if value in seen:
            raise loc.fail(item, f"{what} list {text!r} twice; keep one.")
        seen.add(value)
        out.append(value)
    return tuple(out)


def _bins(
    loc: Located, node: yaml.Node, name: str, cls: ColumnClass, kind: ColumnType
) -> tuple[float, ...]:
    what = f"column {name!r}'s bins"
    if cls not in (ColumnClass.QUASI_IDENTIFIER, ColumnClass.ATTRIBUTE):
        raise loc.fail(node, f"{what}: only a quasi_identifier or attribute has bins.")
    if kind not in (ColumnType.INT, ColumnType.FLOAT):
        raise loc.fail(node, f"{what}: only an int64 or float64 column has bins.")
    edges: list[float] = []
    for item in _list(loc, node, what, MAX_BIN_EDGES):
        try:
            edge = float(item.value)
        except ValueError:
            raise loc.fail(item, f"{what}: {item.value!r} is not a number.") from None
        if not math.isfinite(edge):
            raise loc.fail(item, f"{what}: {item.value!r} is not a finite number.")
        if edges and edge <= edges[-1]:
            raise loc.fail(item, f"{what} must be strictly increasing; {item.value} is not.")
        edges.append(edge)
    if len(edges) < 2:
        raise loc.fail(node, f"{what} need at least two edges (one bin).")
    return tuple(edges)


def load_policy(path: Path) -> DatasetPolicy:
    """Load and validate one dataset policy file."""
    path = Path(path)
    loc, root, text = compose(path, PolicyError, "dataset policy")
    top: dict[str, yaml.Node] = {}
    for key, key_node, value_node in pairs(loc, root, "the policy"):
        if key not in _TOP_KEYS:
            raise loc.fail(key_node, f"unknown key {key!r}{suggest(key, set(_TOP_KEYS))}")
        top[key] = value_node
    for key, required in _TOP_KEYS.items():
        if required and key not in top:
            raise loc.fail(root, f"the policy needs a {key!r} entry.")
    columns = tuple(_column(loc, k, v) for _, k, v in pairs(loc, top["columns"], "columns"))
    names = [c.name for c in columns]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise loc.fail(top["columns"], f"column {sorted(duplicates)[0]!r} is listed twice.")
    persons = [c for c in columns if c.cls == ColumnClass.PERSON_ID]
    if len(persons) != 1:
        raise loc.fail(
            top["columns"],
            f"exactly one column must be the person_id; found {len(persons)}.",
        )
    identifiers = IdentifierPolicy()
    if "identifiers" in top:
        flags = {}
        for key, key_node, value_node in pairs(loc, top["identifiers"], "identifiers"):
            if key not in _ID_KEYS:
                raise loc.fail(key_node, f"unknown identifier rule {key!r}{suggest(key, _ID_KEYS)}")
            flags[key] = _bool(loc, value_node, key)
        identifiers = IdentifierPolicy(**flags)
    dataset = _scalar(loc, top["dataset"], "dataset")
    if not dataset.replace("-", "").replace("_", "").isalnum() or not dataset.islower():
        raise loc.fail(top["dataset"], "dataset must be a short lower-case name like 'income'.")
    encoding = _scalar(loc, top["encoding"], "encoding").lower() if "encoding" in top else "auto"
    if encoding not in ("auto", "utf-8", "latin-1"):
        raise loc.fail(top["encoding"], "encoding must be auto, utf-8 or latin-1.")
    delimiter = _scalar(loc, top["delimiter"], "delimiter") if "delimiter" in top else None
    if delimiter not in (None, ",", ";"):
        raise loc.fail(top["delimiter"], "delimiter must be ',' or ';'.")
    access = _scalar(loc, top["access"], "access") if "access" in top else "rows"
    if access not in ("rows", "aggregate_only"):
        raise loc.fail(top["access"], "access must be rows or aggregate_only.")
    dp = _dp_block(loc, top, access, columns)
    read_budget = None
    if "read_bytes_per_day" in top:
        raw = _scalar(loc, top["read_bytes_per_day"], "read_bytes_per_day")
        if not raw.isdigit():
            raise loc.fail(
                top["read_bytes_per_day"],
                "read_bytes_per_day must be a whole number of bytes, 0 or more (for example "
                "4194304 for 4 MiB): what a workspace may show of files in the browser per day.",
            )
        read_budget = int(raw)
    return DatasetPolicy(
        path=path,
        dataset=dataset,
        title=_scalar(loc, top["title"], "title"),
        description=_scalar(loc, top["description"], "description") if "description" in top else "",
        holder=_scalar(loc, top["holder"], "holder"),
        conditions=_scalar(loc, top["conditions"], "conditions"),
        columns=columns,
        identifiers=identifiers,
        one_row_per_person=(
            _bool(loc, top["one_row_per_person"], "one_row_per_person")
            if "one_row_per_person" in top
            else False
        ),
        encoding=encoding,
        delimiter=delimiter,
        access=access,
        temporal_coverage=(
            _scalar(loc, top["temporal_coverage"], "temporal_coverage")
            if "temporal_coverage" in top
            else ""
        ),
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        dp=dp,
        read_bytes_per_day=read_budget,
    )


def _dp_block(
    loc: Located, top: dict[str, yaml.Node], access: str, columns: tuple[ColumnPolicy, ...]
) -> DPPolicy | None:
    """An aggregate_only dataset needs a dp block (its budget and public bounds), and one row
    per person: a person is the unit differential privacy protects."""
    from spe.dp.policy import parse_dp

    if access != "aggregate_only":
        if "dp" in top:
            raise loc.fail(top["dp"], "a dp block needs access: aggregate_only.")
        return None
    if "dp" not in top:
        raise loc.fail(top["access"], "access: aggregate_only needs a dp block with epsilon_total.")
    one_row = top.get("one_row_per_person")
    if one_row is None or not _bool(loc, one_row, "one_row_per_person"):
        raise loc.fail(
            top["access"],
            "access: aggregate_only needs one_row_per_person: true (a person is the unit "
            "differential privacy protects).",
        )
    dp = parse_dp(loc, top["dp"], {c.name: c.cls.value for c in columns})
    return _dp_categories_from_columns(loc, top["dp"], dp, columns)


def _dp_categories_from_columns(
    loc: Located, node: yaml.Node, dp: DPPolicy, columns: tuple[ColumnPolicy, ...]
) -> DPPolicy:
    """One truth for categories: the columns' code lists. A dp variable without bounds of its
    own takes its column's categories; one that repeats them must list the same categories."""
    from spe.dp.policy import VariableBounds

    declared: dict[str, yaml.Node] = {}
    for key, _key_node, value_node in pairs(loc, node, "dp"):
        if key == "variables":
            declared = {name: n for name, _k, n in pairs(loc, value_node, "dp.variables")}
    variables = dict(dp.variables)
    for column in columns:
        held = generalised_categories(column, None)
        codes = None if held is None else tuple(str(c) for c in held)
        bounds = variables.get(column.name)
        if bounds is not None and bounds.categories:
            if codes is None:
                raise loc.fail(
                    declared.get(column.name),
                    f"dp.variables.{column.name} lists categories, but the column has no code "
                    f"list; declare them once, under columns: {column.name}: categories.",
                )
            if set(bounds.categories) != set(codes):
                raise loc.fail(
                    declared.get(column.name),
                    f"dp.variables.{column.name}.categories differ from the column's code list; "
                    "drop them here (DP queries take the column's categories).",
                )
        elif bounds is None and codes is not None:
            variables[column.name] = VariableBounds(column.name, categories=codes)
    return replace(dp, variables=variables)


def find_policy(name_or_path: str, policies_dir: Path) -> DatasetPolicy:
    """A policy by file path, or by name in policies/datasets/."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        return load_policy(candidate)
    folder = policies_dir / "datasets"
    path = folder / f"{name_or_path}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise PolicyError(
            f"There is no dataset policy {name_or_path!r} in {folder}"
            + (f"; known: {', '.join(known)}." if known else ".")
        )
    return load_policy(path)
