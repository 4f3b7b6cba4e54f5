"""The policy grid every researcher-chosen edge and width must lie on: {1, 2, 5} x 10^k, 0, -x.

A number off the grid is refused with the nearest grid values named, so no edge or label of a
released output can carry data in its digits (a pseudonym in the decimals of a bin edge).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

from spe.analysis.plan.errors import PlanError

MANTISSAS = (1, 2, 5)
MIN_EXPONENT = -6
MAX_EXPONENT = 15
MAX_EDGES = 200
_REL = 1e-9


def grid_value(mantissa: int, exponent: int) -> float:
    """m x 10^k as the double nearest the exact decimal (so 3 x 0.1 prints as 0.3)."""
    return float(f"{mantissa}e{exponent}")


def _neighbours(x: float) -> tuple[float, float]:
    """The grid values just below and just above ``x`` (x itself off the grid)."""
    if x == 0:
        return 0.0, 0.0
    magnitude = abs(x)
    exponent = math.floor(math.log10(magnitude))
    ladder = sorted(
        grid_value(m, k) for k in (exponent - 1, exponent, exponent + 1) for m in MANTISSAS
    )
    below = max(v for v in ladder if v <= magnitude)
    above = min(v for v in ladder if v >= magnitude)
    if x < 0:
        return -above, -below
    return below, above


def on_grid(x: float) -> float | None:
    """The canonical grid value equal to ``x`` (within rounding), or None."""
    if x == 0:
        return 0.0
    magnitude = abs(x)
    exponent = math.floor(math.log10(magnitude))
    for k in (exponent - 1, exponent, exponent + 1):
        if not MIN_EXPONENT <= k <= MAX_EXPONENT:
            continue
        for m in MANTISSAS:
            value = grid_value(m, k)
            if abs(value - magnitude) <= _REL * value:
                return math.copysign(value, x)
    return None


def _text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def _number(value: Any, what: str) -> float:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(float(value))
    ):
        raise PlanError(f"The {what} must be finite numbers.")
    return float(value)


def snap(value: Any, what: str) -> float:
    """``value`` as its grid value; refused with the nearest grid values when off the grid."""
    x = _number(value, what)
    found = on_grid(x)
    if found is None:
        below, above = _neighbours(x)
        raise PlanError(
            f"{_text(x)} is not on the policy grid of {what} (1, 2 or 5 times a power of ten); "
            f"the nearest grid values are {_text(below)} and {_text(above)}."
        )
    return found


def check_edges(
    edges: Any, declared: Sequence[float] | None, what: str = "bin edges"
) -> tuple[float, ...]:
    """Strictly increasing edges, each on the grid, or exactly the edges the catalogue declares."""
    if not isinstance(edges, list):
        raise PlanError(f"The {what} must be a list of numbers.")
    if not 2 <= len(edges) <= MAX_EDGES:
        raise PlanError(f"Give from 2 to {MAX_EDGES} {what}.")
    numbers = [_number(e, what) for e in edges]
    if declared is not None and [float(d) for d in declared] == numbers:
        out = tuple(numbers)
    else:
        out = tuple(snap(e, what) for e in numbers)
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise PlanError(f"The {what} must increase strictly.")
    return out


def check_width(value: Any) -> float:
    """A bin width: m x 10^k, positive."""
    x = _number(value, "bin width")
    if x <= 0:
        raise PlanError("A bin width must be positive, such as 1, 2, 5, 10 or 20.")
    return snap(x, "bin width")


def width_edge(index: int, width: float) -> float:
    """The lower edge of bin ``index`` of width ``width``, as the nearest double to the decimal."""
    mantissa, exponent = _decompose(width)
    return float(f"{index * mantissa}e{exponent}")


def _decompose(width: float) -> tuple[int, int]:
    exponent = math.floor(math.log10(width))
    for k in (exponent - 1, exponent, exponent + 1):
        for m in MANTISSAS:
            if grid_value(m, k) == width:
                return m, k
    raise PlanError(f"The bin width {_text(width)} is not on the policy grid.")
