"""Disclosure rules as data: the platform default, per data holder, per dataset, per researcher.

Rules live in policies/sdc/*.yaml. Files are merged so that every override can only tighten the
rules (strictest wins); a value that would weaken them is ignored and the reason is kept in
``Rules.notes``, which every report shows. Files are validated at load: errors name file, line, fix.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spe.policyfile import Located, compose, pairs, suggest
from spe.sdc.errors import SDCPolicyError

DEFAULT_FILE = "default.yaml"
HOLDERS_DIR = "holders"
DATASETS_DIR = "datasets"


class Verdict(enum.StrEnum):
    """The outcome of one rule for one cell, and of a whole output."""

    PASS = "pass"  # noqa: S105 - a verdict, not a password
    REVIEW = "review"
    FAIL = "fail"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]

    @classmethod
    def from_severity(cls, severity: int) -> Verdict:
        return _BY_SEVERITY[int(severity)]


_SEVERITY = {Verdict.PASS: 0, Verdict.REVIEW: 1, Verdict.FAIL: 2}
_BY_SEVERITY = {v: k for k, v in _SEVERITY.items()}


@dataclass(frozen=True)
class Rules:
    """The effective disclosure rules for one check.

    The defaults here equal policies/sdc/default.yaml (a test proves it), so a check without a
    policies folder still applies the platform's rules.
    """

    threshold: int = 10  # distinct persons behind every released cell
    dominance_n: int = 2  # (n, k) dominance: the n largest contributors ...
    dominance_k: float = 0.9  # ... may not hold more than this share of a cell's total
    p_percent: float = 10.0  # p % rule, in percent
    residual_dof: int = 10  # models: residual degrees of freedom at least this
    zeros: Verdict = Verdict.FAIL  # empty cells (class disclosure)
    full_cells: Verdict = Verdict.REVIEW  # a row/column of a count table all in one cell
    negative_values: Verdict = Verdict.REVIEW  # magnitude cells holding a negative value
    extremes: Verdict = Verdict.FAIL  # min/max/mode shared by < threshold persons, or by all
    # A median is released only where >= threshold persons lie within this share of its size.
    position_tolerance: float = 0.10
    position_rounding: str = "none"  # "grid": released medians are rounded to position_digits
    position_digits: int = 2  # significant digits of the grid
    leverage: Verdict = Verdict.REVIEW  # models: a person weighing >= 1/(threshold-1) of the fit
    auto_release: bool = True  # outputs whose every check passes leave without a reviewer
    sources: tuple[str, ...] = ()  # the files merged, in order
    origins: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    notes: tuple[str, ...] = ()  # weaker values that were ignored, with file and line

    @property
    def p(self) -> float:
        """The p of the p % rule as a fraction (0.1 for 10 %)."""
        return self.p_percent / 100.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "dominance": {"n": self.dominance_n, "k": self.dominance_k},
            "p_percent": self.p_percent,
            "residual_dof": self.residual_dof,
            "zeros": self.zeros.value,
            "full_cells": self.full_cells.value,
            "negative_values": self.negative_values.value,
            "extremes": self.extremes.value,
            "positions": {
                "tolerance": self.position_tolerance,
                "rounding": self.position_rounding,
                "digits": self.position_digits,
            },
            "leverage": self.leverage.value,
            "auto_release": self.auto_release,
            "sources": list(self.sources),
            "notes": list(self.notes),
        }


# Each key: (Rules field, kind, "stricter" direction). Direction +1: a higher value is stricter.
_NUMERIC: dict[str, tuple[str, str, int]] = {
    "threshold": ("threshold", "int", +1),
    "p_percent": ("p_percent", "float", +1),
    "residual_dof": ("residual_dof", "int", +1),
    "position_tolerance": ("position_tolerance", "float", -1),
    "position_digits": ("position_digits", "int", -1),
}
_DOMINANCE: dict[str, tuple[str, str, int]] = {
    "n": ("dominance_n", "int", +1),
    "k": ("dominance_k", "float", -1),
}
_VERDICTS = ("zeros", "full_cells", "negative_values", "extremes", "leverage")
POSITION_ROUNDINGS = ("none", "grid")  # in order of strictness
_TOP_KEYS = {
    *_NUMERIC,
    "dominance",
    *_VERDICTS,
    "position_rounding",
    "auto_release",
    "description",
    "holder",
    "dataset",
}
_LIMITS: dict[str, tuple[float, float, str]] = {
    "threshold": (1, 10_000, "a whole number of persons such as 10"),
    "p_percent": (0.0, 100.0, "a percentage above 0 and at most 100, such as 10"),
    "residual_dof": (0, 1_000_000, "a whole number such as 10"),
    "n": (1, 100, "the number of largest contributors, a whole number such as 2"),
    "k": (0.0, 1.0, "a fraction above 0 and at most 1, such as 0.9 (not 90)"),
    "position_tolerance": (0.0, 1.0, "a fraction above 0 and at most 1, such as 0.1 (not 10)"),
    "position_digits": (1, 15, "a whole number of significant digits such as 2"),
}


def _number(loc: Located, node: yaml.Node, key: str, kind: str) -> float | int:
    low, high, hint = _LIMITS[key]
    if not isinstance(node, yaml.ScalarNode):
        raise loc.fail(node, f"{key} must be a single number: {hint}.")
    text = str(node.value).strip()
    try:
        value: float | int = int(text) if kind == "int" else float(text)
    except ValueError:
        raise loc.fail(node, f"{key} is {text!r}; it must be {hint}.") from None
    if kind == "float" and value != value:  # NaN
        raise loc.fail(node, f"{key} is not a number; it must be {hint}.")
    too_low = value <= low if kind == "float" else value < low
    if too_low or value > high:
        raise loc.fail(node, f"{key} is {text}; it must be {hint}.")
    return value


def _verdict(loc: Located, node: yaml.Node, key: str) -> Verdict:
    options = [v.value for v in Verdict]
    text = str(node.value).strip().lower() if isinstance(node, yaml.ScalarNode) else ""
    if text not in options:
        shown = text or "not a single word"
        raise loc.fail(
            node,
            f"{key} is {shown!r}; use one of {', '.join(options)}{suggest(text, options, '.')}",
        )
    return Verdict(text)


def _read(path: Path) -> tuple[Located, dict[str, tuple[Any, yaml.Node]]]:
    """Parse and validate one rules file: {key: (value, node)} for the keys it sets."""
    loc, root, _text = compose(
        path, SDCPolicyError, "disclosure policy", "; give at least one rule or delete it"
    )
    values: dict[str, tuple[Any, yaml.Node]] = {}
    for key, key_node, node in pairs(loc, root, "the policy"):
        if key not in _TOP_KEYS:
            raise loc.fail(key_node, f"unknown rule {key!r}{suggest(key, _TOP_KEYS, '.')}")
        if key in _NUMERIC:
            values[key] = (_number(loc, node, key, _NUMERIC[key][1]), node)
        elif key in _VERDICTS:
            values[key] = (_verdict(loc, node, key), node)
        elif key == "auto_release":
            text = str(node.value).strip().lower() if isinstance(node, yaml.ScalarNode) else ""
            if text not in ("true", "false"):
                raise loc.fail(node, "auto_release must be true or false.")
            values[key] = (text == "true", node)
        elif key == "position_rounding":
            text = str(node.value).strip().lower() if isinstance(node, yaml.ScalarNode) else ""
            if text not in POSITION_ROUNDINGS:
                raise loc.fail(
                    node,
                    f"position_rounding is {text or 'not a single word'!r}; use none (medians "
                    "released as computed) or grid (rounded to position_digits significant "
                    "digits).",
                )
            values[key] = (text, node)
        elif key == "dominance":
            for sub, sub_node, sub_value in pairs(loc, node, "dominance"):
                if sub not in _DOMINANCE:
                    raise loc.fail(
                        sub_node,
                        f"dominance takes n and k, not {sub!r}{suggest(sub, _DOMINANCE, '.')}",
                    )
                values[sub] = (_number(loc, sub_value, sub, _DOMINANCE[sub][1]), sub_value)
        elif not isinstance(node, yaml.ScalarNode):
            raise loc.fail(node, f"{key} must be a single line of text.")
    return loc, values


def _merge(rules: Rules, path: Path, *, base: bool, label: str | None = None) -> Rules:
    """Apply one file to ``rules``: everything when it is the base, else only what tightens."""
    loc, values = _read(path)
    shown = label or str(path)
    changes: dict[str, Any] = {}
    origins = dict(rules.origins)
    notes = list(rules.notes)
    for key, (value, node) in values.items():
        if key in _NUMERIC:
            attr, _, direction = _NUMERIC[key]
        elif key in _DOMINANCE:
            attr, _, direction = _DOMINANCE[key]
        elif key in _VERDICTS or key in ("auto_release", "position_rounding"):
            attr, direction = key, +1
        else:
            continue
        current = getattr(rules, attr)
        if base:
            changes[attr] = value
            origins[attr] = shown
            continue
        if key in _VERDICTS:
            stricter = value.severity > current.severity
            weaker = value.severity < current.severity
        elif key == "auto_release":  # False (always a reviewer) is the stricter
            stricter, weaker = current and not value, value and not current
        elif key == "position_rounding":
            rank = POSITION_ROUNDINGS.index
            stricter, weaker = rank(value) > rank(current), rank(value) < rank(current)
        else:
            stricter = (value - current) * direction > 0
            weaker = (value - current) * direction < 0
        if stricter:
            changes[attr] = value
            origins[attr] = shown
        elif weaker:
            name = "dominance " + key if key in _DOMINANCE else key
            notes.append(
                f"{shown}{loc.where(node)}: {name} {_show(value)} is weaker than "
                f"{_show(current)} from {rules.origins.get(attr, 'the platform default')} and "
                "was ignored; a policy can only tighten the rules."
            )
    return dataclasses.replace(
        rules,
        **changes,
        sources=(*rules.sources, shown),
        origins=origins,
        notes=tuple(notes),
    )


def _show(value: Any) -> str:
    if isinstance(value, Verdict):
        return value.value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


_SLUG_MAP = str.maketrans({"æ": "ae", "ø": "o", "å": "a", "Æ": "ae", "Ø": "o", "Å": "a"})


def holder_slug(holder: str) -> str:
    """The stem of a holder's rules file: 'Demo Registry Agency' -> 'demo-registry-agency'."""
    text = unicodedata.normalize("NFKD", holder.translate(_SLUG_MAP))
    text = text.encode("ascii", "ignore").decode().lower()
    slug = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
    if not slug:
        raise SDCPolicyError(
            f"The data holder name {holder!r} has no letters or digits to name its rules file by."
        )
    return slug


_DATASET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def load_rules(
    policies_dir: Path,
    holder: str | None = None,
    dataset: str | None = None,
    extra: Path | None = None,
) -> Rules:
    """The effective rules: platform default, then the holder's, the dataset's, a researcher's file.

    ``policies_dir`` is the policies folder (its ``sdc/`` subfolder is used) or ``policies/sdc``
    itself. Holder and dataset files are optional; a researcher's ``extra`` file must exist. Every
    file after the default can only tighten: weaker values are ignored and listed in ``notes``.
    """
    policies_dir = Path(policies_dir)
    sdc_dir = policies_dir / "sdc" if (policies_dir / "sdc").is_dir() else policies_dir
    default = sdc_dir / DEFAULT_FILE
    if not default.is_file():
        raise SDCPolicyError(
            f"There is no platform default disclosure policy at {default}; restore "
            "policies/sdc/default.yaml or point the policies directory at the right folder."
        )
    rules = _merge(Rules(origins={}), default, base=True, label=_relative(default, sdc_dir))
    if holder:
        path = sdc_dir / HOLDERS_DIR / f"{holder_slug(holder)}.yaml"
        if path.is_file():
            rules = _merge(rules, path, base=False, label=_relative(path, sdc_dir))
    if dataset:
        if not _DATASET_NAME.match(dataset):
            raise SDCPolicyError(
                f"{dataset!r} is not a dataset name; use its short lower-case name, like 'income'."
            )
        path = sdc_dir / DATASETS_DIR / f"{dataset}.yaml"
        if path.is_file():
            rules = _merge(rules, path, base=False, label=_relative(path, sdc_dir))
    if extra is not None:
        rules = _merge(rules, Path(extra), base=False)
    return rules


def _relative(path: Path, sdc_dir: Path) -> str:
    try:
        return str(Path("policies/sdc") / path.relative_to(sdc_dir))
    except ValueError:
        return str(path)


def validate_policy_file(path: Path) -> None:
    """Check one rules file on its own (for CI and the data holder's editor); raises on error."""
    _read(Path(path))


def strictest(all_rules: list[Rules]) -> Rules:
    """One set of rules at least as strict as each given (an output drawn from several datasets)."""
    if not all_rules:
        return Rules()
    out = all_rules[0]
    for other in all_rules[1:]:
        changes: dict[str, Any] = {}
        for attr, direction in (
            ("threshold", +1),
            ("p_percent", +1),
            ("residual_dof", +1),
            ("dominance_n", +1),
            ("dominance_k", -1),
            ("position_tolerance", -1),
            ("position_digits", -1),
        ):
            mine, theirs = getattr(out, attr), getattr(other, attr)
            if (theirs - mine) * direction > 0:
                changes[attr] = theirs
        for attr in _VERDICTS:
            if getattr(other, attr).severity > getattr(out, attr).severity:
                changes[attr] = getattr(other, attr)
        if POSITION_ROUNDINGS.index(other.position_rounding) > POSITION_ROUNDINGS.index(
            out.position_rounding
        ):
            changes["position_rounding"] = other.position_rounding
        changes["auto_release"] = out.auto_release and other.auto_release
        out = dataclasses.replace(
            out,
            **changes,
            sources=tuple(dict.fromkeys((*out.sources, *other.sources))),
            origins={**other.origins, **out.origins},
            notes=tuple(dict.fromkeys((*out.notes, *other.notes))),
        )
    return out
