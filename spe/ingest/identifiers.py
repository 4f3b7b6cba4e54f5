"""Norwegian person and organisation identifiers: the exact validation rules of issue 3.

One value at a time (``check_fnr``, ``check_orgnr``) or a whole column at once, vectorised over
the fixed-width bytes (``check_fnr_array``, ``check_orgnr_array``); plus makers of valid numbers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

# Both check digits are tested in the "weighted sum including the check digit" form, which is
# the classic `11 - (sum mod 11)` rule (10 impossible, 11 -> 0) restated so that the 2032 rule
# is a set of accepted remainders. The unit tests prove the two forms agree.
K1_WEIGHTS = (3, 7, 6, 1, 8, 9, 4, 5, 2, 1)  # digits 1-10
K2_WEIGHTS = (5, 4, 3, 2, 7, 6, 5, 4, 3, 2, 1)  # digits 1-11
ORGNR_WEIGHTS = (3, 2, 7, 6, 5, 4, 3, 2, 1)  # digits 1-9
K1_REMAINDERS_CLASSIC = frozenset({0})
K1_REMAINDERS_2032 = frozenset({0, 1, 2, 3})

D_NUMBER_DAY_OFFSET = 40
H_NUMBER_MONTH_OFFSET = 40
SYNTHETIC_MONTH_OFFSET = 80

FNR_LENGTH = 11
ORGNR_LENGTH = 9


@dataclass(frozen=True)
class IdentifierRules:
    """What a dataset policy accepts beyond the ordinary fødselsnummer."""

    allow_d_number: bool = False
    allow_h_number: bool = False
    allow_synthetic: bool = False
    allow_2032_rule: bool = False


class IdKind(StrEnum):
    FNR = "fnr"
    D_NUMBER = "d_number"  # day + 40: people without a fødselsnummer
    H_NUMBER = "h_number"  # month + 40: help numbers of the health sector
    SYNTHETIC = "synthetic"  # month + 80: test numbers, never real people


class Reason(StrEnum):
    MISSING = "missing"
    NOT_11_DIGITS = "not_11_digits"
    BAD_CHECK_DIGIT = "bad_check_digit"
    IMPLAUSIBLE_DATE = "implausible_date"
    D_NUMBER_NOT_ALLOWED = "d_number_not_allowed"
    H_NUMBER_NOT_ALLOWED = "h_number_not_allowed"
    SYNTHETIC_NOT_ALLOWED = "synthetic_not_allowed"
    NOT_9_DIGITS = "not_9_digits"  # organisation numbers only


_REASON_TEXT: dict[Reason, str] = {
    Reason.MISSING: "The identifier is empty; every row needs one.",
    Reason.NOT_11_DIGITS: (
        "A fødselsnummer is exactly 11 digits 0-9, without spaces, punctuation or other "
        "characters; check the extract's formatting (leading zeros lost to a number column?)."
    ),
    Reason.BAD_CHECK_DIGIT: (
        "A check digit does not match the digits before it, so the number was mistyped or "
        "corrupted; correct it at the source."
    ),
    Reason.IMPLAUSIBLE_DATE: (
        "The number does not encode a real birth date in the past (after removing the D-, H- "
        "or test-number offsets, with the century its individual number gives)."
    ),
    Reason.D_NUMBER_NOT_ALLOWED: (
        "This is a D-number (day + 40); the dataset policy does not accept D-numbers. Allow "
        "them in the policy if the extract may hold people without a fødselsnummer."
    ),
    Reason.H_NUMBER_NOT_ALLOWED: (
        "This is an H-number (month + 40); the dataset policy does not accept H-numbers. Allow "
        "them in the policy if the extract comes from the health sector."
    ),
    Reason.SYNTHETIC_NOT_ALLOWED: (
        "This is a synthetic test number (month + 80), not a real person's; the dataset policy "
        "does not accept test numbers. Allow them only for test and demo data."
    ),
    Reason.NOT_9_DIGITS: (
        "An organisation number is exactly 9 digits 0-9, without spaces or other characters."
    ),
}


def describe(reason: Reason) -> str:
    """The sentence shown to a person for a rejection reason."""
    return _REASON_TEXT[reason]


# Codes of the vectorised checkers: 0 means valid (reasons) or no kind (kinds).
REASON_CODES: dict[int, Reason] = {i: reason for i, reason in enumerate(Reason, start=1)}
KIND_CODES: dict[int, IdKind] = {i: kind for i, kind in enumerate(IdKind, start=1)}
CODE_OF_REASON: dict[Reason, int] = {reason: i for i, reason in REASON_CODES.items()}
CODE_OF_KIND: dict[IdKind, int] = {kind: i for i, kind in KIND_CODES.items()}


# --------------------------------------------------------------------------- one value


def _century(individual: int, yy: int) -> int | None:
    """The century of a birth year from the individual number, or None where none is issued."""
    if individual <= 499:
        return 1900
    if individual <= 749 and yy >= 54:
        return 1800
    if yy <= 39:
        return 2000
    if individual >= 900:
        return 1900
    return None


def individual_numbers(year: int) -> list[int]:
    """The individual numbers ``III`` issued to people born in ``year``, by the century table."""
    yy = year % 100
    return [individual for individual in range(1000) if _century(individual, yy) == year - yy]


def _is_ascii_digits(value: str, length: int) -> bool:
    return len(value) == length and value.isascii() and value.isdigit()


@dataclass(frozen=True)
class _Decoded:
    kind: IdKind
    birth: dt.date
    day_offset: bool  # a D-number's day, also on a synthetic number


def _decode(value: str) -> _Decoded | None:
    """Kind and birth date of 11 ASCII digits; None when they encode no real date."""
    dd, mm, yy, individual = int(value[0:2]), int(value[2:4]), int(value[4:6]), int(value[6:9])
    day_offset = dd >= D_NUMBER_DAY_OFFSET
    if mm >= SYNTHETIC_MONTH_OFFSET:
        kind, month = IdKind.SYNTHETIC, mm - SYNTHETIC_MONTH_OFFSET
    elif mm >= H_NUMBER_MONTH_OFFSET:
        if day_offset:  # no number is both a D- and an H-number
            return None
        kind, month = IdKind.H_NUMBER, mm - H_NUMBER_MONTH_OFFSET
    else:
        kind, month = (IdKind.D_NUMBER if day_offset else IdKind.FNR), mm
    day = dd - D_NUMBER_DAY_OFFSET if day_offset else dd
    century = _century(individual, yy)
    if century is None:
        return None
    try:
        birth = dt.date(century + yy, month, day)
    except ValueError:
        return None
    return _Decoded(kind, birth, day_offset)


def _today(today: dt.date | None) -> dt.date:
    return today if today is not None else dt.datetime.now(dt.UTC).date()


def _refusal(decoded: _Decoded, rules: IdentifierRules) -> Reason | None:
    if decoded.kind is IdKind.SYNTHETIC and not rules.allow_synthetic:
        return Reason.SYNTHETIC_NOT_ALLOWED
    if decoded.kind is IdKind.H_NUMBER and not rules.allow_h_number:
        return Reason.H_NUMBER_NOT_ALLOWED
    if decoded.day_offset and not rules.allow_d_number:
        return Reason.D_NUMBER_NOT_ALLOWED
    return None


def check_fnr(
    value: str | None, rules: IdentifierRules, today: dt.date | None = None
) -> tuple[IdKind | None, Reason | None]:
    """Validate one person identifier: ``(kind, None)`` when valid, else ``(kind?, reason)``.

    The kind accompanies a refusal only when the number is well formed but its kind is not
    allowed (``*_NOT_ALLOWED``). Reasons are tested in the order: missing, shape, check
    digits, date, kind. A synthetic number with a D-number day needs both flags.
    """
    if value is None or value == "":
        return None, Reason.MISSING
    if not isinstance(value, str):
        raise TypeError(f"identifiers are str, not {type(value).__name__}")
    if not _is_ascii_digits(value, FNR_LENGTH):
        return None, Reason.NOT_11_DIGITS
    digits = [ord(c) - 48 for c in value]
    r1 = sum(w * d for w, d in zip(K1_WEIGHTS, digits, strict=False)) % 11
    r2 = sum(w * d for w, d in zip(K2_WEIGHTS, digits, strict=True)) % 11
    remainders = K1_REMAINDERS_2032 if rules.allow_2032_rule else K1_REMAINDERS_CLASSIC
    if r2 != 0 or r1 not in remainders:
        return None, Reason.BAD_CHECK_DIGIT
    decoded = _decode(value)
    if decoded is None or decoded.birth > _today(today):
        return None, Reason.IMPLAUSIBLE_DATE
    refusal = _refusal(decoded, rules)
    return decoded.kind, refusal


def birth_date(value: str) -> dt.date:
    """The birth date a well-formed person identifier encodes (offsets removed).

    Check the number with ``check_fnr`` first: this does not test the check digits.
    """
    if not isinstance(value, str) or not _is_ascii_digits(value, FNR_LENGTH):
        raise ValueError("a person identifier is 11 ASCII digits")
    decoded = _decode(value)
    if decoded is None:
        raise ValueError(f"{value[:6]}-{value[6:9]} does not encode a real birth date")
    return decoded.birth


def check_orgnr(value: str | None) -> Reason | None:
    """Validate one organisation number: None when valid, else the reason."""
    if value is None or value == "":
        return Reason.MISSING
    if not isinstance(value, str):
        raise TypeError(f"organisation numbers are str, not {type(value).__name__}")
    if not _is_ascii_digits(value, ORGNR_LENGTH):
        return Reason.NOT_9_DIGITS
    if sum(w * (ord(c) - 48) for w, c in zip(ORGNR_WEIGHTS, value, strict=True)) % 11:
        return Reason.BAD_CHECK_DIGIT
    return None


# --------------------------------------------------------------------------- makers


def _control_digit(weighted_sum: int) -> int:
    """`11 - (sum mod 11)` with 11 -> 0; 10 means no digit fits."""
    return (11 - weighted_sum % 11) % 11


def make_fnr(
    birth: dt.date,
    individual: int,
    sex: str,
    kind: IdKind = IdKind.FNR,
    rules_2032: bool = False,
) -> str | None:
    """A valid number for a birth date and individual number ``III``; None when none fits.

    ``III`` must belong to the birth year's century and be odd for ``sex="M"``, even for "F".
    None means the check digits would need a 10: try the next individual number of the same
    parity. With ``rules_2032`` a k1 of 10 becomes 0 (remainder 1, valid only under that rule).
    """
    if sex not in ("M", "F"):
        raise ValueError(f"sex is 'M' or 'F', not {sex!r}")
    if not 0 <= individual <= 999:
        raise ValueError(f"the individual number is 0-999, not {individual}")
    if individual % 2 != (1 if sex == "M" else 0):
        raise ValueError(f"individual number {individual:03d} does not belong to sex {sex}")
    yy = birth.year % 100
    if _century(individual, yy) != birth.year - yy:
        raise ValueError(f"individual number {individual:03d} is not issued for {birth.year}")
    dd, mm = birth.day, birth.month
    if kind is IdKind.D_NUMBER:
        dd += D_NUMBER_DAY_OFFSET
    elif kind is IdKind.H_NUMBER:
        mm += H_NUMBER_MONTH_OFFSET
    elif kind is IdKind.SYNTHETIC:
        mm += SYNTHETIC_MONTH_OFFSET
    first9 = f"{dd:02d}{mm:02d}{yy:02d}{individual:03d}"
    digits = [int(c) for c in first9]
    k1 = _control_digit(sum(w * d for w, d in zip(K1_WEIGHTS, digits, strict=False)))
    if k1 == 10:
        if not rules_2032:
            return None
        k1 = 0
    digits.append(k1)
    k2 = _control_digit(sum(w * d for w, d in zip(K2_WEIGHTS, digits, strict=False)))
    if k2 == 10:
        return None
    return f"{first9}{k1}{k2}"


def make_orgnr(base8: int) -> str | None:
    """The organisation number with these first eight digits, or None when the control is 10."""
    if not 0 <= base8 <= 99_999_999:
        raise ValueError(f"the base of an organisation number is 8 digits, not {base8}")
    first8 = f"{base8:08d}"
    control = _control_digit(sum(w * int(c) for w, c in zip(ORGNR_WEIGHTS, first8, strict=False)))
    return None if control == 10 else f"{first8}{control}"


# --------------------------------------------------------------------------- vectorised


def _century_table() -> np.ndarray:
    """``_century`` for every (individual, yy), -1 where none: one gather instead of masks."""
    band_starts = (0, 500, 750, 900)  # `_century` is constant within these bands
    per_band = np.array(
        [[_century(start, yy) or -1 for yy in range(100)] for start in band_starts], np.int16
    )
    band_of = np.searchsorted(band_starts, np.arange(1000), side="right") - 1
    return per_band[band_of].reshape(-1)


_CENTURY = _century_table()


@dataclass
class _FixedWidth:
    """A column's values of exactly ``width`` characters, as rows of character codes.

    Only those rows are worth testing digit by digit: any other value is missing or has the
    wrong length, which the masks alone decide.
    """

    fits: np.ndarray  # (n,) bool: present, exactly `width` characters
    codes: np.ndarray  # (fits.sum(), width) uint8: the characters of the fitting rows, in order
    missing: np.ndarray  # (n,) bool: null or empty

    def spread(self, part: np.ndarray, others: np.ndarray | int) -> np.ndarray:
        """A value per fitting row (``part``) as a column of all rows, ``others`` elsewhere."""
        if len(part) == len(self.fits):
            return part
        out = np.empty(len(self.fits), part.dtype)
        out[:] = others
        out[self.fits] = part
        return out


def _digits(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(width, k) int16 digits, one contiguous row per position, and the rows that are all
    ASCII digits; other rows read as zeros, which keeps table look-ups in range."""
    k, width = codes.shape
    not_digit = (codes.reshape(-1) - np.uint8(48)) > np.uint8(9)  # wraps below '0'
    well_formed = np.ones(k, bool)
    if not_digit.any():
        bad = np.flatnonzero(not_digit) // width
        well_formed[bad] = False
        codes = codes.copy()
        codes[bad] = 48
    by_position = np.array(codes.T, order="C")  # a copy: `codes` may be the caller's buffer
    by_position -= np.uint8(48)
    return by_position.astype(np.int16), well_formed


def _numpy_fixed(values: np.ndarray, width: int) -> _FixedWidth:
    """From numpy's fixed-width 'U' (UCS-4) or 'S' strings, without a Python loop."""
    values = np.ascontiguousarray(values.reshape(-1))
    n = values.shape[0]
    unit = np.uint32 if values.dtype.kind == "U" else np.uint8
    chars_per_item = values.dtype.itemsize // np.dtype(unit).itemsize
    codes = values.view(unit).reshape(n, chars_per_item)
    missing = codes[:, 0] == 0  # numpy strips trailing NULs: empty unless a NUL leads
    leading_nul = np.flatnonzero(missing)
    missing[leading_nul] = ~codes[leading_nul].any(axis=1)
    if chars_per_item < width:
        return _FixedWidth(np.zeros(n, bool), np.zeros((0, width), np.uint8), missing)
    # numpy pads with NUL: a value has `width` characters when nothing follows them (a NUL
    # among them makes it shorter, and fails the digit test like any other non-digit)
    fits = ~missing & ~codes[:, width:].any(axis=1)
    head = codes[fits, :width]
    if unit is np.uint32:
        ascii_range = np.less(head, 128).all(axis=1)
        fits[np.flatnonzero(fits)[~ascii_range]] = False
        head = head[ascii_range]
    return _FixedWidth(fits, head.astype(np.uint8), missing)


def _back_to_back(array: pa.Array, rows: int, width: int) -> np.ndarray:
    """The data of a string/binary array whose values all have ``width`` bytes, as rows."""
    large = pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type)
    offset_type = np.dtype(np.int64 if large else np.int32)
    buffers = array.buffers()
    start = int(
        np.frombuffer(
            buffers[1], dtype=offset_type, count=1, offset=array.offset * offset_type.itemsize
        )[0]
    )
    if buffers[2] is None or rows == 0:
        return np.zeros((0, width), np.uint8)
    data = np.frombuffer(buffers[2], np.uint8)
    return data[start : start + rows * width].reshape(rows, width)


def _arrow_fixed(array: pa.Array, width: int) -> _FixedWidth:
    """From an Arrow string or binary array, reading its offsets and data buffers directly."""
    n = len(array)
    if n == 0 or pa.types.is_null(array.type):
        return _FixedWidth(np.zeros(n, bool), np.zeros((0, width), np.uint8), np.ones(n, bool))
    large = pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type)
    offset_type = np.dtype(np.int64 if large else np.int32)
    offsets = np.frombuffer(
        array.buffers()[1],
        dtype=offset_type,
        count=n + 1,
        offset=array.offset * offset_type.itemsize,
    )
    lengths = np.diff(offsets)
    fits = lengths == width
    missing = lengths == 0
    if array.null_count:
        # the validity bitmap itself (to_numpy of a boolean array would import pandas)
        bits = np.frombuffer(array.buffers()[0], np.uint8, count=(array.offset + n + 7) // 8)
        present = np.unpackbits(bits, count=array.offset + n, bitorder="little")
        present = present[array.offset :].view(bool)
        fits &= present
        missing |= ~present
    rows = int(np.count_nonzero(fits))
    if rows == n or not lengths[~fits].any():
        # the other values take no bytes, so the fitting ones lie back to back
        codes = _back_to_back(array, rows, width)
    else:
        keep = pa.py_buffer(np.packbits(fits, bitorder="little"))
        codes = _back_to_back(
            array.filter(pa.Array.from_buffers(pa.bool_(), n, [None, keep])), rows, width
        )
    return _FixedWidth(fits, codes, missing)


def _arrow_chunks(values: Any) -> Iterator[pa.Array]:
    """The values as Arrow string/binary arrays, chunk by chunk."""
    if isinstance(values, pa.ChunkedArray):
        chunks: Iterable[pa.Array] = values.chunks
    elif isinstance(values, pa.Array):
        chunks = [values]
    elif isinstance(values, np.ndarray):
        chunks = [pa.array(values.reshape(-1), type=pa.string(), from_pandas=True)]
    else:
        chunks = [pa.array(list(values), type=pa.string(), from_pandas=True)]
    for chunk in chunks:
        chunk_type = chunk.type
        if pa.types.is_dictionary(chunk_type):
            chunk = chunk.dictionary_decode()
            chunk_type = chunk.type
        if pa.types.is_string_view(chunk_type) or pa.types.is_binary_view(chunk_type):
            chunk = chunk.cast(pa.large_binary())
        elif not (
            pa.types.is_string(chunk_type)
            or pa.types.is_large_string(chunk_type)
            or pa.types.is_binary(chunk_type)
            or pa.types.is_large_binary(chunk_type)
            or pa.types.is_null(chunk_type)
        ):
            raise TypeError(
                f"identifiers must be read as strings, not {chunk_type}: a number column "
                "loses leading zeros (set the column type to string when reading the file)"
            )
        yield chunk


def _fixed_width(values: Any, width: int) -> list[_FixedWidth]:
    if isinstance(values, np.ndarray) and values.dtype.kind in "US":
        return [_numpy_fixed(values, width)]
    return [_arrow_fixed(chunk, width) for chunk in _arrow_chunks(values)]


def _weighted_sum(columns: np.ndarray, weights: tuple[int, ...]) -> np.ndarray:
    """The weighted digit sum (int16: at most 9 * 46)."""
    total = columns[0] * np.int16(weights[0])
    for column, weight in zip(columns[1:], weights[1:], strict=False):
        total += column if weight == 1 else column * np.int16(weight)
    return total


# `sum % 11` as a look-up: numpy's integer remainder is not vectorised, `take` is.
_REMAINDER_11 = np.arange(9 * max(map(sum, (K1_WEIGHTS, K2_WEIGHTS, ORGNR_WEIGHTS))) + 1) % 11
_REMAINDER_11 = _REMAINDER_11.astype(np.int16)


def _remainder(columns: np.ndarray, weights: tuple[int, ...]) -> np.ndarray:
    """The weighted digit sum mod 11."""
    return np.take(_REMAINDER_11, _weighted_sum(columns, weights))


# The failed tests of a value as bits, strongest first; a table turns them into the reason
# of the strongest failure, so the verdict costs one gather instead of a masked write per test.
_FAILURE_ORDER = (
    Reason.MISSING,
    Reason.NOT_11_DIGITS,
    Reason.BAD_CHECK_DIGIT,
    Reason.IMPLAUSIBLE_DATE,
    Reason.SYNTHETIC_NOT_ALLOWED,  # before D: a synthetic D-number is reported as synthetic
    Reason.H_NUMBER_NOT_ALLOWED,
    Reason.D_NUMBER_NOT_ALLOWED,
)
_BIT_OF = {reason: 1 << (len(_FAILURE_ORDER) - 1 - i) for i, reason in enumerate(_FAILURE_ORDER)}


def _failure_tables() -> tuple[np.ndarray, np.ndarray]:
    """Reason code and "the kind stands" for every combination of failure bits."""
    reason_of = np.zeros(1 << len(_FAILURE_ORDER), np.int8)
    keeps_kind = np.ones(1 << len(_FAILURE_ORDER), bool)
    for bits in range(1, len(reason_of)):
        strongest = next(r for r in _FAILURE_ORDER if bits & _BIT_OF[r])
        reason_of[bits] = CODE_OF_REASON[strongest]
        keeps_kind[bits] = strongest in _NOT_ALLOWED
    return reason_of, keeps_kind


_NOT_ALLOWED = frozenset(
    {Reason.SYNTHETIC_NOT_ALLOWED, Reason.H_NUMBER_NOT_ALLOWED, Reason.D_NUMBER_NOT_ALLOWED}
)
_REASON_OF_FAILURES, _KEEPS_KIND = _failure_tables()
# Kind by the offsets present (bit 0 day + 40, bit 1 month + 40, bit 2 month + 80): synthetic
# wins over D; D with H never gets past the date test.
_KIND_OF_OFFSETS = np.array(
    [CODE_OF_KIND[k] for k in (IdKind.FNR, IdKind.D_NUMBER, IdKind.H_NUMBER, IdKind.H_NUMBER)]
    + [CODE_OF_KIND[IdKind.SYNTHETIC]] * 4,
    np.int8,
)
# a kind goes with a valid number and with a refusal of that kind, with nothing else: the kind
# for (failure bits << 3 | offsets)
_KIND_OF_VERDICT = (_KEEPS_KIND[:, None] * _KIND_OF_OFFSETS[None, :]).astype(np.int8).reshape(-1)
# 1 in leap years, by year + 1 (a year of -1 stands for "no century")
_LEAP = np.array(
    [0] + [(y % 4 == 0 and y % 100 != 0) or y % 400 == 0 for y in range(2100)], np.int16
)
# days in the month by leap * 40 + month; 0 for the months (0, 13-39) that do not exist
_DAYS_IN_MONTH = np.zeros(80, np.int16)
_DAYS_IN_MONTH[1:13] = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_DAYS_IN_MONTH[41:53] = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
# Slots of valid numbers: a valid number is fixed by its first nine digits and the remainder
# its k1 leaves (k1 and k2 follow from them), and those nine digits by day (1-31, maybe + 40),
# month (1-12, maybe + 40 or + 80), year and individual number.
_SLOTS_PER_REMAINDER = 62 * 36 * 100 * 1000


def fnr_slot_count(rules: IdentifierRules) -> int:
    """How many slots ``check_fnr_numbers`` can give valid numbers under ``rules``."""
    return _SLOTS_PER_REMAINDER * (len(K1_REMAINDERS_2032) if rules.allow_2032_rule else 1)


def _bits(mask: np.ndarray, reason: Reason) -> np.ndarray:
    return mask.view(np.uint8) * np.uint8(_BIT_OF[reason])


class FnrVerdicts(NamedTuple):
    """Verdicts of ``check_fnr_numbers``, one per value."""

    reasons: np.ndarray  # int8: 0 valid, else a key of REASON_CODES
    kinds: np.ndarray  # int8: 0 none, else a key of KIND_CODES
    numbers: np.ndarray  # int64: the 11 digits as a number where valid, else 0
    slots: np.ndarray  # int32: where valid, a slot in [0, fnr_slot_count(rules)) that no
    # other valid number shares, else 0


def _check_fnr_digits(
    c: np.ndarray, well_formed: np.ndarray, rules: IdentifierRules, today: dt.date, full: bool
) -> FnrVerdicts:
    """Verdicts for values of 11 characters, from their digits by position.

    Every step is a vectorised operation or a `take` from a small table (numpy's fancy
    indexing and integer remainder are several times slower).
    """
    r1 = _remainder(c, K1_WEIGHTS)
    k1_ok = r1 <= max(K1_REMAINDERS_2032) if rules.allow_2032_rule else r1 == 0
    checks_ok = k1_ok & (_remainder(c, K2_WEIGHTS) == 0)

    dd = c[0] * np.int16(10) + c[1]
    mm = c[2] * np.int16(10) + c[3]
    yy = c[4] * np.int16(10) + c[5]
    individual = c[6] * np.int16(100) + c[7] * np.int16(10) + c[8]
    day_offset = dd >= D_NUMBER_DAY_OFFSET
    synthetic = mm >= SYNTHETIC_MONTH_OFFSET
    h_number = (mm >= H_NUMBER_MONTH_OFFSET) & ~synthetic
    day = dd - day_offset * np.int16(D_NUMBER_DAY_OFFSET)
    month = (
        mm
        - synthetic * np.int16(SYNTHETIC_MONTH_OFFSET)
        - h_number * np.int16(H_NUMBER_MONTH_OFFSET)
    )  # 0-39
    century = np.take(_CENTURY, individual.astype(np.int32) * 100 + yy)
    year = century + yy  # -1 to 98 without a century
    days_in_month = np.take(_DAYS_IN_MONTH, np.take(_LEAP, year + 1) * np.int16(40) + month)
    born = year.astype(np.int32) * 10000 + month * np.int16(100) + day
    today_key = today.year * 10000 + today.month * 100 + today.day
    date_ok = (
        (century > 0)
        & (day >= 1)
        & (day <= days_in_month)  # 0 for a month that does not exist
        & ~(day_offset & h_number)
        & (born <= today_key)
    )

    failures = (
        _bits(~well_formed, Reason.NOT_11_DIGITS)
        | _bits(~checks_ok, Reason.BAD_CHECK_DIGIT)
        | _bits(~date_ok, Reason.IMPLAUSIBLE_DATE)
    )
    if not rules.allow_synthetic:
        failures |= _bits(synthetic, Reason.SYNTHETIC_NOT_ALLOWED)
    if not rules.allow_h_number:
        failures |= _bits(h_number, Reason.H_NUMBER_NOT_ALLOWED)
    if not rules.allow_d_number:
        failures |= _bits(day_offset, Reason.D_NUMBER_NOT_ALLOWED)
    reasons = np.take(_REASON_OF_FAILURES, failures)
    verdict = (
        (failures.astype(np.uint16) << np.uint16(3))
        | day_offset.view(np.uint8)
        | (h_number.view(np.uint8) << np.uint8(1))
        | (synthetic.view(np.uint8) << np.uint8(2))
    )
    kinds = np.take(_KIND_OF_VERDICT, verdict)
    if not full:
        return FnrVerdicts(reasons, kinds, np.zeros(0, np.int64), np.zeros(0, np.int32))

    invalid = reasons != 0
    first9 = ((dd.astype(np.int32) * 100 + mm) * 100 + yy) * 1000 + individual
    numbers = first9.astype(np.int64) * 100 + (c[9] * np.int16(10) + c[10])
    day_code = day - np.int16(1) + day_offset * np.int16(31)  # 0-61 where valid
    month_code = month - np.int16(1) + h_number * np.int16(12) + synthetic * np.int16(24)  # 0-35
    slots = ((day_code.astype(np.int32) * 36 + month_code) * 100 + yy) * 1000 + individual
    if rules.allow_2032_rule:
        slots = slots * len(K1_REMAINDERS_2032) + r1
    numbers[invalid] = 0
    slots[invalid] = 0
    return FnrVerdicts(reasons, kinds, numbers, slots)


def _check_fnr_fixed(
    fixed: _FixedWidth, rules: IdentifierRules, today: dt.date, full: bool
) -> FnrVerdicts:
    digits, well_formed = _digits(fixed.codes)
    part = _check_fnr_digits(digits, well_formed, rules, today, full)
    others = np.where(fixed.missing, CODE_OF_REASON[Reason.MISSING], 0).astype(np.int8)
    others[~fixed.fits & ~fixed.missing] = CODE_OF_REASON[Reason.NOT_11_DIGITS]
    return FnrVerdicts(
        fixed.spread(part.reasons, others),
        fixed.spread(part.kinds, 0),
        fixed.spread(part.numbers, 0) if full else part.numbers,
        fixed.spread(part.slots, 0) if full else part.slots,
    )


def _check(values: Any, rules: IdentifierRules, today: dt.date | None, full: bool) -> FnrVerdicts:
    day = _today(today)
    results = [_check_fnr_fixed(f, rules, day, full) for f in _fixed_width(values, FNR_LENGTH)]
    if len(results) == 1:
        return results[0]
    if not results:
        empty8 = np.zeros(0, np.int8)
        return FnrVerdicts(empty8, empty8, np.zeros(0, np.int64), np.zeros(0, np.int32))
    return FnrVerdicts(*(np.concatenate(parts) for parts in zip(*results, strict=True)))


def check_fnr_array(
    values: pa.Array | pa.ChunkedArray | np.ndarray | Iterable[str | None],
    rules: IdentifierRules,
    today: dt.date | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a column of person identifiers; the same verdicts as ``check_fnr``.

    Returns ``(reason_codes, kind_codes)``, int8 arrays: reason 0 is valid, others map through
    ``REASON_CODES``; kind 0 is none, others map through ``KIND_CODES``. Takes Arrow string or
    binary arrays (chunked too) and numpy 'U', 'S' or object arrays.
    """
    verdicts = _check(values, rules, today, full=False)
    return verdicts.reasons, verdicts.kinds


def check_fnr_numbers(
    values: pa.Array | pa.ChunkedArray | np.ndarray | Iterable[str | None],
    rules: IdentifierRules,
    today: dt.date | None = None,
) -> FnrVerdicts:
    """``check_fnr_array``, plus each valid number as an integer and as a dense slot.

    The slots let a caller remember which numbers it has seen in a bitmap of
    ``fnr_slot_count(rules)`` bits, whatever the size of the input.
    """
    return _check(values, rules, today, full=True)


def check_orgnr_array(
    values: pa.Array | pa.ChunkedArray | np.ndarray | Iterable[str | None],
) -> np.ndarray:
    """Validate a column of organisation numbers; int8 codes as in ``REASON_CODES`` (0 valid)."""
    parts = []
    for fixed in _fixed_width(values, ORGNR_LENGTH):
        digits, well_formed = _digits(fixed.codes)
        reasons = np.zeros(len(well_formed), np.int8)
        reasons[_remainder(digits, ORGNR_WEIGHTS) != 0] = CODE_OF_REASON[Reason.BAD_CHECK_DIGIT]
        reasons[~well_formed] = CODE_OF_REASON[Reason.NOT_9_DIGITS]
        others = np.where(
            fixed.missing, CODE_OF_REASON[Reason.MISSING], CODE_OF_REASON[Reason.NOT_9_DIGITS]
        ).astype(np.int8)
        parts.append(fixed.spread(reasons, others))
    return np.concatenate(parts) if parts else np.zeros(0, np.int8)
