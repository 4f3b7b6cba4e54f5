"""Each person's value of a summed variable, for the p % rule of the cumulative audit.

A sum space's cells say who is behind each released total; the p % rule also needs what each
of them contributed. The server knows it for the outputs it computed itself (plan outputs), so
their cells carry it (``NewCell.values``), and a holder's released values are kept per space as
one sorted map, sealed at rest (spe.sdc.audit.store): the extract a value came from may be
destroyed with its project, the history must not forget it. A person absent from the map has no
known value (released only by outputs the server did not compute); a person whose released
contributions disagree (two cells, two years under one column name) has NaN: not one number.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from spe.sdc.audit.history import NewCell
from spe.sdc.errors import SDCError


def _same(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Whether two computations of one contribution agree (up to summation order)."""
    return np.abs(high - low) <= 1e-9 * np.maximum(1.0, np.abs(high))


def _collapse(persons: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One value per person: the common value, or NaN where values disagree (or one is NaN)."""
    if not len(persons):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    order = np.argsort(persons, kind="stable")
    persons, values = persons[order], values[order]
    starts = np.flatnonzero(np.concatenate([[True], persons[1:] != persons[:-1]]))
    if len(starts) == len(persons):
        return persons, values
    low = np.minimum.reduceat(values, starts)  # NaN propagates: a NaN member makes it NaN
    high = np.maximum.reduceat(values, starts)
    return persons[starts], np.where(_same(low, high), low, np.nan)


@dataclass(frozen=True)
class ValueMap:
    """Person hash -> value of one variable (sorted by person; NaN: not one known number)."""

    persons: np.ndarray
    values: np.ndarray

    @classmethod
    def empty(cls) -> ValueMap:
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64))

    @classmethod
    def of_cells(cls, cells: Sequence[NewCell], space: str) -> ValueMap:
        """The values the cells of ``space`` carry (cells without values add nothing)."""
        chosen = [c for c in cells if space in c.spaces and c.values is not None and len(c.persons)]
        if not chosen:
            return cls.empty()
        persons = np.concatenate([c.persons for c in chosen])
        values = np.concatenate([np.asarray(c.values, dtype=np.float64) for c in chosen])
        return cls(*_collapse(persons, values))

    def __len__(self) -> int:
        return len(self.persons)

    def merged(self, other: ValueMap) -> ValueMap:
        if not len(other):
            return self
        if not len(self):
            return other
        return ValueMap(
            *_collapse(
                np.concatenate([self.persons, other.persons]),
                np.concatenate([self.values, other.values]),
            )
        )

    def lookup(self, persons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values, found) for ``persons``: NaN and False where the map has no value."""
        persons = np.asarray(persons, dtype=np.int64)
        if not len(self.persons):
            return np.full(len(persons), np.nan), np.zeros(len(persons), dtype=bool)
        at = np.minimum(np.searchsorted(self.persons, persons), len(self.persons) - 1)
        found = self.persons[at] == persons
        return np.where(found, self.values[at], np.nan), found

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, persons=self.persons, values=self.values)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ValueMap:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                persons, values = npz["persons"], npz["values"]
        except (OSError, ValueError, KeyError) as exc:
            raise SDCError(
                f"The stored released values cannot be read ({exc}); the audit cannot go on "
                "without them."
            ) from None
        return cls(persons.astype(np.int64), values.astype(np.float64))


def contributions_of(
    maps: dict[str, ValueMap], cells: Sequence[NewCell]
) -> Callable[[str, np.ndarray], np.ndarray]:
    """The audit's ``contributions(variable, persons)``: each person's value from the holder's
    released values (``maps``, per sum space) and from ``cells`` (the new output and this
    request's earlier ones); NaN where no value is known or two disagree."""
    from spe.sdc.audit.history import sum_space

    overlays: dict[str, ValueMap] = {}

    def contributions(variable: str, persons: np.ndarray) -> np.ndarray:
        space = sum_space(variable)
        if space not in overlays:
            overlays[space] = ValueMap.of_cells(cells, space)
        old, old_found = maps.get(space, ValueMap.empty()).lookup(persons)
        new, new_found = overlays[space].lookup(persons)
        both = old_found & new_found
        agree = np.zeros(len(old), dtype=bool)
        agree[both] = _same(old[both], new[both])
        values = np.where(new_found, new, old)
        return np.where(both & ~agree, np.nan, values)

    return contributions
