"""Ingest: a registry extract (CSV or Parquet) becomes a pseudonymised, versioned dataset.

Streamed in batches with pyarrow (memory stays flat in file size). Person identifiers are
validated and replaced at once by the holder-level pseudonym; raw identifiers are never stored.
Rejected rows, each with its reason, go to a quarantine file for the data holder. Both files
are sealed as they are written (AES-256-GCM, the version's own data key, spe.keys.datasets):
nothing plain ever reaches the disk. The output is written under a temporary name and renamed
into place, and only then entered in the catalogue with its audit event: a killed ingest leaves
no visible dataset, and the same input always gives the same version (the same plaintext hash).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from sqlalchemy import func, select

from spe.accounts.models import Organisation, User
from spe.accounts.permissions import Action, Target, check_can
from spe.audit import record
from spe.catalogue.models import Dataset, DatasetVersion, Variable
from spe.config import get_settings
from spe.db import transaction
from spe.errors import NotFound, SPEError
from spe.ingest import identifiers as ids
from spe.ingest.policy import (
    CONTROL_CHARACTERS,
    ColumnClass,
    ColumnPolicy,
    ColumnType,
    DatasetPolicy,
    Generalisation,
    generalised_categories,
)
from spe.ingest.store import DATA_FILE, QUARANTINE_FILE, file_context, read_quarantine_bytes
from spe.keys.datasets import (
    DATASET_VERSION,
    ENCRYPTION,
    dataset_cipher,
    ensure_dataset_key,
    seal_dataset_stream,
)
from spe.keys.pseudonyms import HOLDER_PSEUDONYM, ensure_scope_key, holder_pseudonymiser
from spe.storage import data_storage, sha256_file

PERSON_COLUMN = "person_id"
# Bytes of CSV per batch (~36k rows of the population register). Small blocks parse faster
# (they stay in cache) and bound memory: the reader reads up to 32 blocks ahead.
BLOCK_SIZE = 1 << 21
# Rows read per Parquet row group and quarantine frame: batches are written in groups.
ROWS_PER_GROUP = 1 << 17
_SCAN_CHUNK = 1 << 24
# Stable context codes inside the pseudonym block (never renumber: pseudonyms depend on them).
_KIND_CONTEXT = {
    ids.IdKind.FNR: 1,
    ids.IdKind.D_NUMBER: 2,
    ids.IdKind.H_NUMBER: 3,
    ids.IdKind.SYNTHETIC: 4,
}
DUPLICATE_PERSON = "duplicate_person"
BAD_VALUE = "bad_value"
MISSING_REQUIRED = "missing_required"
NOT_IN_CODE_LIST = "not_in_code_list"
CONTROL_CHARACTER = "control_character"
# Bytes that may begin a control character in UTF-8 text: C0 controls but tab, DEL, and 0xC2
# (the lead byte of C1 controls U+0080-U+009F, and of some printable characters like '°').
_SUSPECT_BYTE = np.zeros(256, dtype=bool)
_SUSPECT_BYTE[[*range(9), *range(10, 32), 0x7F, 0xC2]] = True
_INT = re.compile(r"^[+-]?\d{1,18}$").pattern
_FLOAT = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$").pattern


@functools.cache
def _context_lut() -> np.ndarray:
    """Kind code (spe.ingest.identifiers) → the stable context code in the pseudonym block."""
    lut = np.zeros(max(ids.KIND_CODES) + 1, dtype=np.uint8)
    for code, kind in ids.KIND_CODES.items():
        lut[code] = _KIND_CONTEXT[kind]
    return lut


class IngestError(SPEError):
    """The extract cannot be ingested as it is; the message names the row or column and the fix."""


class NothingAccepted(IngestError):
    """Every row was rejected: nothing is published (an empty version would become the newest)."""

    def __init__(self, message: str, rows: int, rejected: dict[str, int]) -> None:
        super().__init__(message)
        self.rows = rows
        self.rejected = rejected


@dataclass
class ScanResult:
    sha256: str
    size: int
    encoding: str
    delimiter: str
    header: list[str]
    lines: int


@dataclass
class IngestResult:
    dataset: str
    version: int
    created: bool
    accepted: int
    rejected: dict[str, int]
    path: str
    report: dict[str, Any] = field(default_factory=dict)


# --- scanning ----------------------------------------------------------------------------------


def _line_of(data: bytes | bytearray, offset: int, lines_before: int) -> int:
    return lines_before + data.count(b"\n", 0, offset) + 1


def _check_line_lengths(
    path: Path, chunk: bytes | bytearray, current: int, lines_before: int, max_line: int
) -> int:
    """Refuse a line longer than ``max_line``; returns the length of the line left open.

    A line that long must contain a whole aligned window of ``max_line // 2`` bytes, so one
    ``find`` per window clears a chunk; only a window without a newline is looked at closely.
    """
    first = chunk.find(b"\n")
    if first < 0:
        if current + len(chunk) > max_line:
            _too_long(path, lines_before + 1, max_line)
        return current + len(chunk)
    if current + first > max_line:
        _too_long(path, lines_before + 1, max_line)
    last = chunk.rfind(b"\n")
    half = max(1, max_line // 2)
    for start in range(first + 1, last, half):
        end = min(start + half, last)
        if chunk.find(b"\n", start, end) >= 0:
            continue
        before = chunk.rfind(b"\n", 0, start)
        after = chunk.find(b"\n", end)
        if after - before - 1 > max_line:
            _too_long(path, lines_before + chunk.count(b"\n", 0, before + 1) + 1, max_line)
    return len(chunk) - last - 1


def _too_long(path: Path, line: int, max_line: int) -> None:
    raise IngestError(
        f"{path.name} line {line} is longer than {max_line:,} bytes; lines that long are "
        "refused (is the file really CSV with one record per line?)."
    )


def _incomplete_tail(chunk: bytearray) -> int:
    """How many bytes at the end of ``chunk`` begin a UTF-8 character that it cuts short."""
    for back in range(1, min(3, len(chunk)) + 1):
        byte = chunk[-back]
        if byte < 0x80:
            return 0
        if byte >= 0xC0:  # a lead byte: 110xxxxx, 1110xxxx or 11110xxx start 2, 3, 4 bytes
            needs = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return back if needs > back else 0
    return 0


def _is_utf8(chunk: bytearray) -> bool:
    """Arrow's UTF-8 validation (several times faster than decoding with Python)."""
    offsets = pa.py_buffer(np.array([0, len(chunk)], dtype=np.int32))
    text = pa.Array.from_buffers(pa.string(), 1, [None, offsets, pa.py_buffer(chunk)])
    try:
        text.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def scan_csv(
    path: Path,
    declared: str,
    delimiter: str | None,
    max_line: int,
    tick: Callable[[], None] | None = None,
) -> ScanResult:
    """One pass over the raw bytes: hash, encoding check, longest line, header.

    Chunks end on whole UTF-8 characters (a character cut at the end of a read is read again
    with the next chunk), so each chunk is checked on its own.
    """
    size = path.stat().st_size
    if size == 0:
        raise IngestError(f"{path.name} is empty (0 bytes); export the extract again.")
    digest = hashlib.sha256()
    utf8_ok, non_ascii = True, False
    first_bad_line = 0
    lines = 0
    current_line = 0  # length of the line in progress
    header_bytes = b""
    buffer = bytearray(max(4, min(_SCAN_CHUNK, size + 1)))  # small files, small buffers
    newline = np.empty(len(buffer), dtype=bool)
    with open(path, "rb") as fh:
        while read := fh.readinto(buffer):
            if tick:
                tick()
            if read < len(buffer):
                chunk = buffer[:read]  # the end of the file
            else:
                cut = _incomplete_tail(buffer) if read > 3 else 0
                chunk = buffer[: read - cut] if cut else buffer
                if cut:
                    fh.seek(-cut, io.SEEK_CUR)
            digest.update(chunk)
            if not header_bytes:
                header_bytes = bytes(chunk[: chunk.find(b"\n") + 1 or len(chunk)])
            if utf8_ok and not chunk.isascii():
                non_ascii = True
                if not _is_utf8(chunk):
                    utf8_ok = False
                    try:
                        bytes(chunk).decode("utf-8")
                    except UnicodeDecodeError as exc:
                        first_bad_line = _line_of(chunk, exc.start, lines)
            current_line = _check_line_lengths(path, chunk, current_line, lines, max_line)
            codes = np.frombuffer(chunk, dtype=np.uint8)
            lines += int(np.count_nonzero(np.equal(codes, 10, out=newline[: len(codes)])))
    if current_line:
        lines += 1
    if declared == "utf-8" and not utf8_ok:
        raise IngestError(
            f"{path.name} is not valid UTF-8 (first at line {first_bad_line}), but the policy "
            "says utf-8; set encoding: latin-1 (or auto) in the policy, or re-export as UTF-8."
        )
    if declared == "latin-1" and utf8_ok and non_ascii:
        raise IngestError(
            f"{path.name} looks like UTF-8, but the policy says latin-1, which would garble "
            "letters like æ, ø and å; set encoding: utf-8 (or auto) in the policy."
        )
    encoding = declared if declared != "auto" else ("utf-8" if utf8_ok else "latin-1")
    header_text = header_bytes.decode(encoding, errors="replace").rstrip("\r\n").lstrip("\ufeff")
    if delimiter is None:
        delimiter = ";" if header_text.count(";") > header_text.count(",") else ","
    header = next(csv.reader([header_text], delimiter=delimiter), [])
    header = [h.strip() for h in header]
    if lines < 2:
        raise IngestError(f"{path.name} has a header but no data rows.")
    return ScanResult(digest.hexdigest(), size, encoding, delimiter, header, lines)


def check_columns(header: list[str], policy: DatasetPolicy, source: str) -> None:
    if len(set(header)) != len(header):
        dup = next(h for h in header if header.count(h) > 1)
        raise IngestError(f"{source} has the column {dup!r} twice; rename one of them.")
    unclassified = [h for h in header if policy.column(h) is None]
    if unclassified:
        raise IngestError(
            f"{source} has the column {unclassified[0]!r}, which the policy {policy.path.name} "
            "does not classify; add it under columns: with a class (person_id, "
            "direct_identifier, quasi_identifier or attribute), or remove it from the extract."
        )
    missing = [c.name for c in policy.columns if c.name not in header]
    if missing:
        raise IngestError(
            f"{source} has no column {missing[0]!r}, which the policy {policy.path.name} "
            "expects; check the extract's header or the policy."
        )


def check_parquet_types(schema: pa.Schema, policy: DatasetPolicy, source: str) -> None:
    """Refuse nested columns and an identifier column that is not text, naming the column."""
    for fld in schema:
        kind = fld.type.value_type if pa.types.is_dictionary(fld.type) else fld.type
        if pa.types.is_nested(kind):
            raise IngestError(
                f"{source} has the nested column {fld.name!r} ({fld.type}); SPE ingests flat "
                "columns only: export one value per row in that column."
            )
        if fld.name == policy.person_column.name and not (
            pa.types.is_string(kind) or pa.types.is_large_string(kind)
        ):
            raise IngestError(
                f"{source} has the identifier column {fld.name!r} as {fld.type}, not text; "
                "export it as a string column of 11 digits (a number loses leading zeros, so "
                "SPE does not convert it)."
            )


# --- batches -----------------------------------------------------------------------------------


_BIT = np.array([1 << i for i in range(8)], dtype=np.uint8)


class _Dedup:
    """Remembers the person numbers seen so far, for one-row-per-person data.

    A bitmap over the slots of valid numbers (``ids.fnr_slot_count``: 28 MB, 112 MB with the
    2032 rule) that the OS hands out as it is touched: memory does not grow with the file,
    and a batch costs a sort of itself, one read and one write of the bitmap.
    """

    def __init__(self, slot_count: int) -> None:
        self.seen = np.zeros((slot_count + 7) // 8, dtype=np.uint8)

    def duplicates(self, slots: np.ndarray) -> np.ndarray:
        """Mask of slots already seen (earlier batches, or earlier in this batch)."""
        n = len(slots)
        row_bits = max(1, (n - 1).bit_length())
        # Slot and row in one key: sorted, each slot's rows are together, the first row first.
        keys = (slots.astype(np.int64) << row_bits) | np.arange(n, dtype=np.int64)
        keys.sort()
        ordered = keys >> row_bits
        repeat = np.zeros(n, dtype=bool)
        repeat[1:] = ordered[1:] == ordered[:-1]
        byte = ordered >> 3
        bit = np.take(_BIT, ordered & 7)
        old = np.take(self.seen, byte)
        repeat |= (old & bit) != 0
        dup = np.zeros(n, dtype=bool)
        dup[keys[repeat] & ((1 << row_bits) - 1)] = True
        # Slots sharing a byte are adjacent: OR their bits across each run of equal bytes
        # (doubling steps), so every write of a byte below carries the same, complete value.
        bits = bit
        step = 1
        while True:
            same = (byte[step:] == byte[:-step]).view(np.uint8)
            if not same.any():
                break
            if bits is bit:
                bits = bit.copy()
            bits[step:] |= bits[:-step] * same
            bits[:-step] |= bits[step:] * same
            step *= 2
        self.seen[byte] = old | bits
        return dup


# Arrow arrays from numpy and back through their buffers: pa.array, pa.scalar and to_numpy of
# a boolean array would do, but the first of any of them imports pandas (a quarter second).


def _arrow_mask(mask: np.ndarray) -> pa.Array:
    """A numpy bool array as an Arrow boolean array."""
    bits = pa.py_buffer(np.packbits(mask, bitorder="little"))
    return pa.Array.from_buffers(pa.bool_(), len(mask), [None, bits])


def _value_set(categories: tuple[str | int, ...]) -> pa.Array:
    """A code list as an Arrow array: int64 for ints, else strings (from buffers, see above)."""
    if all(isinstance(c, int) for c in categories):
        ints = np.array(categories, dtype=np.int64)
        return pa.Array.from_buffers(pa.int64(), len(ints), [None, pa.py_buffer(ints)])
    encoded = [str(c).encode() for c in categories]
    offsets = np.cumsum([0, *(len(e) for e in encoded)], dtype=np.int32)
    return pa.Array.from_buffers(
        pa.string(),
        len(encoded),
        [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))],
    )


def _inside(col: pa.Array, value_set: pa.Array) -> np.ndarray:
    """Mask of the values of ``col`` that are in ``value_set`` (null is not)."""
    return _true(pc.is_in(col, value_set=value_set))


def _arrow_indices(rows: np.ndarray) -> pa.Array:
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(rows), [None, pa.py_buffer(rows)])


def _bits(buffer: pa.Buffer, offset: int, n: int) -> np.ndarray:
    """``n`` bits of an Arrow bitmap from bit ``offset``, as a numpy bool array."""
    packed = np.frombuffer(buffer, dtype=np.uint8, count=(offset + n + 7) // 8)
    return np.unpackbits(packed, count=offset + n, bitorder="little")[offset:].view(bool)


def _present(col: pa.Array) -> np.ndarray:
    """Mask of the values that are not null."""
    if not col.null_count:
        return np.ones(len(col), dtype=bool)
    return _bits(col.buffers()[0], col.offset, len(col))


def _true(col: pa.Array) -> np.ndarray:
    """Mask of the values of a boolean array that are true (null is not)."""
    return _bits(col.buffers()[1], col.offset, len(col)) & _present(col)


def _with_nulls(col: pa.Array, present: np.ndarray) -> pa.Array:
    """The same string array with only the values in ``present`` left non-null."""
    bitmap = np.zeros(col.offset + len(col), dtype=bool)
    bitmap[col.offset :] = present
    validity = pa.py_buffer(np.packbits(bitmap, bitorder="little"))
    buffers = col.buffers()
    return pa.Array.from_buffers(col.type, len(col), [validity, *buffers[1:]], offset=col.offset)


def _offsets(col: pa.Array) -> np.ndarray:
    """The ``len(col) + 1`` offsets of a string or binary array into its data buffer."""
    large = pa.types.is_large_string(col.type) or pa.types.is_large_binary(col.type)
    offset_type = np.dtype(np.int64 if large else np.int32)
    if not len(col):
        return np.zeros(1, dtype=offset_type)
    return np.frombuffer(
        col.buffers()[1],
        dtype=offset_type,
        count=len(col) + 1,
        offset=col.offset * offset_type.itemsize,
    )


def _empty_to_null(col: pa.Array, trim: bool = False) -> pa.Array:
    if trim:
        col = pc.utf8_trim_whitespace(col)
    empty = np.diff(_offsets(col)) == 0
    if not empty.any():
        return col
    return _with_nulls(col, _present(col) & ~empty)


def _control_rows(col: pa.Array) -> np.ndarray | None:
    """Mask of the text values holding a control character (tab is allowed), or None for none.

    One table look-up per byte of the column clears it; only a column with a suspect byte is
    searched value by value.
    """
    offsets = _offsets(col)
    start, end = int(offsets[0]), int(offsets[-1])
    if end == start:
        return None
    data = np.frombuffer(col.buffers()[2], dtype=np.uint8, count=end)[start:end]
    if not _SUSPECT_BYTE[data].any():
        return None
    found = _true(pc.match_substring_regex(col, CONTROL_CHARACTERS.pattern))
    return found if found.any() else None


def _check_ids(col: pa.Array, rules: ids.IdentifierRules) -> ids.FnrVerdicts:
    """``check_fnr_numbers`` of the values with whitespace trimmed.

    Only a value that is not 11 digits can change when trimmed, so only those are trimmed and
    checked again (an empty value is missing to the check, as null is).
    """
    verdicts = ids.check_fnr_numbers(col, rules)
    again = np.flatnonzero(verdicts.reasons == ids.CODE_OF_REASON[ids.Reason.NOT_11_DIGITS])
    if len(again):
        trimmed = pc.utf8_trim_whitespace(col.take(_arrow_indices(again)))
        for whole, part in zip(verdicts, ids.check_fnr_numbers(trimmed, rules), strict=True):
            whole[again] = part
    return verdicts


def _convert(col: pa.Array, spec: ColumnPolicy) -> tuple[pa.Array, np.ndarray]:
    """Typed column and a mask of values that did not convert."""
    col = _empty_to_null(col)
    if spec.type == ColumnType.STRING:
        return col, np.zeros(len(col), dtype=bool)
    present = _present(col)
    if spec.type in (ColumnType.INT, ColumnType.FLOAT):
        ok = _true(pc.match_substring_regex(col, _INT if spec.type == ColumnType.INT else _FLOAT))
        bad = present & ~ok
        target = pa.int64() if spec.type == ColumnType.INT else pa.float64()
        valid = _with_nulls(col, present & ~bad)
        try:
            return pc.cast(valid, target), bad
        except pa.ArrowInvalid:  # Arrow reads no '+' sign in an integer: drop it (rare)
            return pc.cast(pc.replace_substring_regex(valid, r"^\+", ""), target), bad
    try:
        # The cast reads strict YYYY-MM-DD only, and those the same as strptime does; it
        # refuses anything else (strptime also takes 2023-2-3 and rolls 02-30 over), and then
        # strptime decides, value by value.
        return pc.cast(col, pa.date32()), np.zeros(len(col), dtype=bool)
    except pa.ArrowInvalid:
        parsed = pc.strptime(col, format="%Y-%m-%d", unit="s", error_is_null=True)
    return pc.cast(parsed, pa.date32()), present & ~_present(parsed)


def generalise(col: pa.Array, how: Generalisation) -> pa.Array:
    if how == Generalisation.YEAR:
        return pc.cast(pc.year(col), pa.int32())
    return pc.utf8_slice_codeunits(col, 0, 2)  # municipality → county


def output_type(spec: ColumnPolicy) -> pa.DataType:
    if spec.generalise == Generalisation.YEAR:
        return pa.int32()
    return {
        ColumnType.STRING: pa.string(),
        ColumnType.INT: pa.int64(),
        ColumnType.FLOAT: pa.float64(),
        ColumnType.DATE: pa.date32(),
    }[spec.type]


def code_lists(policy: DatasetPolicy) -> dict[str, dict[str, list[Any]]]:
    """The public categories and bins of the held columns (after the policy's own
    generalisation), as the ingest enforced them: the catalogue shows them."""
    out: dict[str, dict[str, list[Any]]] = {}
    for spec in policy.kept_columns:
        categories = generalised_categories(spec, None)
        entry: dict[str, list[Any]] = {}
        if categories is not None:
            entry["categories"] = list(categories)
        if spec.bins is not None:
            entry["bins"] = [int(e) if e.is_integer() else e for e in spec.bins]
        if entry:
            out[spec.name] = entry
    return out


def output_schema(policy: DatasetPolicy) -> pa.Schema:
    fields = [pa.field(PERSON_COLUMN, pa.binary(16), nullable=False)]
    for spec in policy.kept_columns:
        if spec.cls != ColumnClass.PERSON_ID:
            fields.append(pa.field(spec.name, output_type(spec)))
    return pa.schema(fields)


class IdentifierHistory:
    """Old identifier → current identifier, applied before pseudonymisation so a person whose
    number changed (D-number to fødselsnummer, corrections) stays one person."""

    def __init__(self, old: pa.Array, new: pa.Array, sha256: str) -> None:
        self.old, self.new, self.sha256 = old, new, sha256

    @classmethod
    def load(cls, path: Path, rules: ids.IdentifierRules) -> IdentifierHistory:
        try:
            table = pacsv.read_csv(
                path,
                convert_options=pacsv.ConvertOptions(
                    column_types={"old": pa.string(), "new": pa.string()}
                ),
            )
        except (pa.ArrowInvalid, OSError) as exc:
            raise IngestError(
                f"The identifier history {path.name} must be a CSV with columns old,new: {exc}"
            ) from None
        if set(table.column_names) != {"old", "new"}:
            raise IngestError(f"The identifier history {path.name} must have columns old,new.")
        old = pc.utf8_trim_whitespace(table["old"].combine_chunks())
        new = pc.utf8_trim_whitespace(table["new"].combine_chunks())
        reasons, _ = ids.check_fnr_array(new, rules)
        if reasons.any():
            line = int(np.argmax(reasons != 0)) + 2
            raise IngestError(
                f"The identifier history {path.name} line {line} maps to an invalid number "
                f"({ids.describe(ids.REASON_CODES[int(reasons[line - 2])])})."
            )
        if len(pc.unique(old)) != len(old):
            raise IngestError(f"The identifier history {path.name} lists an old number twice.")
        return cls(old, new, sha256_file(path))

    def apply(self, col: pa.Array) -> pa.Array:
        index = pc.index_in(col, value_set=self.old)
        mapped = pc.take(self.new, index)
        return pc.if_else(pc.is_valid(index), mapped, col)


@dataclass
class _Batcher:
    policy: DatasetPolicy
    rules: ids.IdentifierRules
    pseudonymiser: Any
    history: IdentifierHistory | None
    dedup: _Dedup | None
    schema: pa.Schema
    counts: Counter[str] = field(default_factory=Counter)
    by_column: Counter[str] = field(default_factory=Counter)  # "reason:column" -> rows
    accepted: int = 0
    rows: int = 0
    code_lists: dict[str, pa.Array] = field(init=False)

    def __post_init__(self) -> None:
        # Int categories are compared as ints, after the value is read as a number.
        self.code_lists = {
            c.name: _value_set(c.categories)
            for c in self.policy.kept_columns
            if c.categories is not None
        }

    def process(self, batch: pa.RecordBatch, first_line: int) -> tuple[pa.Table | None, list[str]]:
        """Accepted rows as an output table, and quarantine lines for the rejected."""
        n = batch.num_rows
        self.rows += n
        person = self.policy.person_column
        raw_ids = batch.column(person.name)
        if self.history is not None:
            raw_ids = self.history.apply(_empty_to_null(raw_ids, trim=True))
        verdicts = _check_ids(raw_ids, self.rules)
        reason_codes, kind_codes = verdicts.reasons, verdicts.kinds
        reject = reason_codes != 0
        # Why each row is rejected, as an index into `reasons` ("" for none).
        reasons = [""]
        why = np.zeros(n, dtype=np.int16)
        for code in np.unique(reason_codes[reject]):
            reasons.append(ids.REASON_CODES[int(code)].value)
            why[reason_codes == code] = len(reasons) - 1
        columns: dict[str, pa.Array] = {}
        for spec in self.policy.kept_columns:
            if spec.cls == ColumnClass.PERSON_ID:
                continue
            typed, bad = _convert(batch.column(spec.name), spec)
            if bad.any():
                reasons.append(f"{BAD_VALUE}:{spec.name}")
                why[bad & ~reject] = len(reasons) - 1
                reject |= bad
            if spec.required and typed.null_count:
                missing = ~_present(typed) & ~reject
                reasons.append(f"{MISSING_REQUIRED}:{spec.name}")
                why[missing] = len(reasons) - 1
                reject |= missing
            if spec.type == ColumnType.STRING:
                control = _control_rows(typed)
                if control is not None:
                    reasons.append(f"{CONTROL_CHARACTER}:{spec.name}")
                    why[control & ~reject] = len(reasons) - 1
                    reject |= control
            if spec.categories is not None:
                outside = _present(typed) & ~_inside(typed, self.code_lists[spec.name])
                if outside.any():
                    reasons.append(f"{NOT_IN_CODE_LIST}:{spec.name}")
                    why[outside & ~reject] = len(reasons) - 1
                    reject |= outside
            if spec.generalise is not None:
                typed = generalise(typed, spec.generalise)
            columns[spec.name] = typed
        keep = ~reject
        if self.dedup is not None and keep.any():
            dup = np.zeros(n, dtype=bool)
            dup[keep] = self.dedup.duplicates(verdicts.slots[keep])
            reasons.append(DUPLICATE_PERSON)
            why[dup] = len(reasons) - 1
            keep &= ~dup
        quarantine: list[str] = []
        rejected = np.flatnonzero(~keep)
        if len(rejected):
            labels = [reasons[i] for i in why[rejected].tolist()]
            for reason, count in Counter(labels).items():
                self.counts[reason.split(":")[0] if reason else "rejected"] += count
                if ":" in reason:
                    self.by_column[reason] += count
            quarantine = _quarantine_lines(
                batch, rejected, self._explain(batch, rejected, labels), first_line
            )
        kept = n - len(rejected)
        self.accepted += kept
        if not kept:
            return None, quarantine
        mask = _arrow_mask(keep) if len(rejected) else None
        context = _context_lut()[kind_codes[keep]]
        pseudo = self.pseudonymiser.pseudonyms(verdicts.numbers[keep], context)
        arrays = [
            pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), kept, [None, pa.py_buffer(pseudo)])
        ]
        for fld in list(self.schema)[1:]:
            column = columns[fld.name] if mask is None else columns[fld.name].filter(mask)
            arrays.append(column if column.type == fld.type else column.cast(fld.type))
        return pa.Table.from_arrays(arrays, schema=self.schema), quarantine

    def _explain(self, batch: pa.RecordBatch, rows: np.ndarray, labels: list[str]) -> list[str]:
        """Quarantine reasons: a code-list or control-character rejection says which value."""
        out = list(labels)
        named: dict[str, list[int]] = {}
        for j, label in enumerate(labels):
            if label.startswith((f"{NOT_IN_CODE_LIST}:", f"{CONTROL_CHARACTER}:")):
                named.setdefault(label, []).append(j)
        for label, where in named.items():
            reason, _, column = label.partition(":")
            picked = _arrow_indices(rows[np.array(where, dtype=np.int64)])
            values = batch.column(column).take(picked).to_pylist()
            for j, value in zip(where, values, strict=True):
                out[j] = _reason_text(reason, column, str(value), self.policy.path.name)
        return out


def _reason_text(reason: str, column: str, value: str, policy_name: str) -> str:
    if reason == NOT_IN_CODE_LIST:
        shown = value if len(value) <= 40 else value[:40] + "..."
        return f"{reason}: {column} {shown!r} is not in the code list of policy {policy_name}"
    found = CONTROL_CHARACTERS.search(value)
    if found is None:
        return f"{reason}: {column} holds a control character"
    return (
        f"{reason}: {column} holds the control character U+{ord(found.group()):04X} at "
        f"character {found.start() + 1}"
    )


def _quarantine_lines(
    batch: pa.RecordBatch, rows: np.ndarray, why: list[str], first_line: int
) -> list[str]:
    taken = batch.take(_arrow_indices(rows))
    values = [taken.column(i).to_pylist() for i in range(taken.num_columns)]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for j, row in enumerate(rows.tolist()):
        fields = [("" if v[j] is None else str(v[j])) for v in values]
        writer.writerow([first_line + row, why[j], *fields])
    return [buffer.getvalue()]


# --- the whole ingest --------------------------------------------------------------------------


def _holder(session: Any, policy: DatasetPolicy) -> Organisation:
    org = session.scalar(select(Organisation).where(Organisation.name == policy.holder))
    if org is None:
        raise NotFound(
            f"The policy {policy.path.name} names the holder {policy.holder!r}, which is not an "
            "organisation here; fix the policy or add the organisation."
        )
    return org


def _rules(policy: DatasetPolicy) -> ids.IdentifierRules:
    p = policy.identifiers
    return ids.IdentifierRules(
        allow_d_number=p.allow_d_number,
        allow_h_number=p.allow_h_number,
        allow_synthetic=p.allow_synthetic,
        allow_2032_rule=p.allow_2032_rule,
    )


def ingest_key(source_sha: str, policy: DatasetPolicy, history: IdentifierHistory | None) -> str:
    parts = [source_sha, policy.sha256, history.sha256 if history else ""]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def ingest(
    actor_name: str,
    source: Path,
    policy: DatasetPolicy,
    history_path: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> IngestResult:
    """Ingest ``source`` under ``policy`` as ``actor_name``; idempotent for the same input.

    A refused ingest (an :class:`IngestError`) publishes nothing and leaves an audit event
    ``dataset.ingest_refused`` with its sentence.
    """
    started = time.perf_counter()
    source = Path(source)
    with transaction() as session:
        actor = session.scalar(select(User).where(User.username == actor_name))
        if actor is None:
            raise NotFound(f"There is no user named {actor_name!r}.")
        holder = _holder(session, policy)
        check_can(session, actor, Action.DATASET_INGEST, Target(organisation=holder))
        holder_id = str(holder.id)
        if ensure_scope_key(session, HOLDER_PSEUDONYM, holder_id):
            record(session, "system:keys", "key.create", f"key:{HOLDER_PSEUDONYM}:{holder_id}")
    try:
        if not source.exists():
            raise IngestError(f"There is no file {source}.")
        return _ingest(actor_name, source, policy, holder_id, history_path, progress, started)
    except IngestError as exc:
        _record_refusal(actor_name, policy, source, exc)
        raise


def _record_refusal(actor_name: str, policy: DatasetPolicy, source: Path, exc: IngestError) -> None:
    """The audit event of a refused ingest, in its own transaction (nothing else changed)."""
    details: dict[str, Any] = {"source": source.name, "sentence": exc.message}
    if isinstance(exc, NothingAccepted):
        details["rows_read"] = exc.rows
        details["rejected"] = exc.rejected
    with transaction() as session:
        actor = session.scalar(select(User).where(User.username == actor_name))
        record(
            session,
            actor if actor is not None else actor_name,
            "dataset.ingest_refused",
            f"dataset:{policy.dataset}",
            details,
            dataset=policy.dataset,
        )


def _ingest(
    actor_name: str,
    source: Path,
    policy: DatasetPolicy,
    holder_id: str,
    history_path: Path | None,
    progress: Callable[[int, int], None] | None,
    started: float,
) -> IngestResult:
    settings = get_settings()
    rules = _rules(policy)
    history = IdentifierHistory.load(history_path, rules) if history_path else None
    fmt = "parquet" if source.suffix.lower() in (".parquet", ".pq") else "csv"
    if fmt == "csv":
        scan = scan_csv(
            source,
            policy.encoding,
            policy.delimiter,
            settings.ingest_max_line_bytes,
            (lambda: progress(0, 0)) if progress else None,
        )
        check_columns(scan.header, policy, source.name)
        source_sha, encoding, total = scan.sha256, scan.encoding, scan.lines - 1
    else:
        if source.stat().st_size == 0:
            raise IngestError(f"{source.name} is empty (0 bytes); export the extract again.")
        try:
            parquet = pq.ParquetFile(source)
        except (pa.ArrowInvalid, OSError) as exc:
            raise IngestError(f"{source.name} is not a readable Parquet file ({exc}).") from None
        check_columns(parquet.schema_arrow.names, policy, source.name)
        check_parquet_types(parquet.schema_arrow, policy, source.name)
        source_sha, encoding, total = sha256_file(source), "binary", parquet.metadata.num_rows
    key = ingest_key(source_sha, policy, history)

    with transaction() as session:
        existing = session.scalar(
            select(DatasetVersion)
            .join(Dataset)
            .where(Dataset.name == policy.dataset, DatasetVersion.ingest_key == key)
        )
        if existing is not None and existing.withdrawn_at is not None:
            raise IngestError(
                f"This extract under this policy is version {existing.version} of "
                f"{policy.dataset!r}, which was withdrawn on {existing.withdrawn_at:%Y-%m-%d}; "
                "a withdrawn version does not come back. Change the extract or the policy to "
                "publish a new version."
            )
        if existing is not None:
            report = json.loads(existing.report)
            return IngestResult(
                policy.dataset,
                existing.version,
                False,
                existing.row_count,
                report["rejected"],
                existing.path,
                report,
            )
        pseudonymiser = holder_pseudonymiser(session, holder_id)
        # The version's data key is named by the ingest key (known before anything is
        # written): a rerun of a killed ingest finds it and seals with it again.
        if ensure_dataset_key(session, key):
            record(
                session,
                "system:keys",
                "key.create",
                f"key:{DATASET_VERSION}:{key}",
                {"dataset": policy.dataset},
                dataset=policy.dataset,
            )
        cipher = dataset_cipher(session, key)

    storage = data_storage()
    relative = f"holders/{holder_id}/datasets/{policy.dataset}/{key[:24]}"
    # Leftovers of a killed run (never visible as a dataset) go before we write again.
    storage.clean_stale_temporaries(f"holders/{holder_id}/datasets/{policy.dataset}")
    schema = output_schema(policy)
    batcher = _Batcher(
        policy,
        rules,
        pseudonymiser,
        history,
        _Dedup(ids.fnr_slot_count(rules)) if policy.one_row_per_person else None,
        schema,
    )
    with storage.atomic_dir(relative) as tmp:
        data_sink = open(tmp / DATA_FILE, "wb")  # noqa: SIM115 - closed below
        sealed_data = seal_dataset_stream(
            cipher, data_sink, file_context(policy.dataset, key, "data")
        )
        quarantine_sink = open(tmp / QUARANTINE_FILE, "wb")  # noqa: SIM115 - closed below
        quarantine = seal_dataset_stream(
            cipher, quarantine_sink, file_context(policy.dataset, key, "quarantine")
        )
        writer = pq.ParquetWriter(
            sealed_data,
            schema,
            # Pseudonyms are random: compression, dictionaries and statistics would only cost
            # time (zstd even makes them a little larger). Minimum and maximum of a string
            # column cost a comparison per value, a quarter of the write, and nothing reads
            # them (extracts read whole files): only fixed-width columns get statistics.
            compression={f.name: "none" if f.name == PERSON_COLUMN else "zstd" for f in schema},
            use_dictionary=[f.name for f in schema if f.name != PERSON_COLUMN],
            write_statistics=[
                f.name for f in schema if f.name != PERSON_COLUMN and not pa.types.is_string(f.type)
            ],
        )
        tables: list[pa.Table] = []
        q_lines: list[str] = []
        rows = 0
        try:
            for batch, first_line in _batches(
                source, fmt, policy, encoding, scan if fmt == "csv" else None
            ):
                table, rejected_lines = batcher.process(batch, first_line)
                if table is not None:
                    tables.append(table)
                q_lines += rejected_lines
                rows += batch.num_rows
                if rows >= ROWS_PER_GROUP:
                    _write_group(writer, tables, quarantine, q_lines)
                    rows = 0
                if progress:
                    progress(batcher.rows, total)
            _write_group(writer, tables, quarantine, q_lines)
        finally:
            writer.close()
            for sealed, sink in ((sealed_data, data_sink), (quarantine, quarantine_sink)):
                try:
                    sealed.close()
                finally:
                    sink.close()
        if not batcher.accepted:  # leaving the block by an error removes what was written
            raise _nothing_accepted(source.name, batcher)
        # The plaintext's hash and size, as before encryption: the same input, the same hash.
        data_sha, size = sealed_data.sha256, sealed_data.size
    rejected = dict(sorted(batcher.counts.items()))
    report = {
        "rows_read": batcher.rows,
        "accepted": batcher.accepted,
        "rejected": rejected,
        "rejected_by_column": dict(sorted(batcher.by_column.items())),
        "rejected_total": sum(rejected.values()),
        "encoding": encoding,
        "format": fmt,
        "source_sha256": source_sha,
        "policy_sha256": policy.sha256,
        "identifier_history_sha256": history.sha256 if history else None,
        "dropped_columns": [
            c.name for c in policy.columns if c.cls == ColumnClass.DIRECT_IDENTIFIER
        ],
        "generalised": {c.name: c.generalise.value for c in policy.columns if c.generalise},
        "code_lists": code_lists(policy),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return _register(
        actor_name, policy, holder_id, key, source, fmt, encoding, relative, data_sha, size, report
    )


def _nothing_accepted(name: str, batcher: _Batcher) -> NothingAccepted:
    rejected = dict(sorted(batcher.counts.items()))
    if not batcher.rows:
        return NothingAccepted(f"{name} has no data rows; nothing was published.", 0, rejected)
    named = {r.split(":")[0] for r in batcher.by_column}
    parts = {r: n for r, n in rejected.items() if r not in named} | dict(batcher.by_column)
    reasons = ", ".join(
        f"{reason.replace(':', ' in ')} {count:,}" for reason, count in sorted(parts.items())
    )
    return NothingAccepted(
        f"No row of {name} was accepted ({batcher.rows:,} rejected: {reasons}), so nothing was "
        "published; fix the extract or the policy and ingest it again.",
        batcher.rows,
        rejected,
    )


def _write_group(
    writer: pq.ParquetWriter, tables: list[pa.Table], quarantine: Any, q_lines: list[str]
) -> None:
    """Write and forget the tables (one row group) and quarantine lines so far."""
    if tables:
        writer.write_table(pa.concat_tables(tables))
        tables.clear()
    if q_lines:
        quarantine.write("".join(q_lines).encode())
        q_lines.clear()


def _batches(source: Path, fmt: str, policy: DatasetPolicy, encoding: str, scan: ScanResult | None):
    if fmt == "parquet":
        line = 1
        parquet = pq.ParquetFile(source)
        names = [c.name for c in policy.columns]
        for batch in parquet.iter_batches(batch_size=131072, columns=names):
            cols = []
            for name in names:
                col = batch.column(name)
                if not pa.types.is_string(col.type):
                    try:
                        col = pc.cast(col, pa.string())
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                        raise IngestError(
                            f"{source.name} column {name!r} ({col.type}) cannot be read as text "
                            f"near row {line}; export it as text, numbers or dates."
                        ) from None
                cols.append(col)
            yield pa.RecordBatch.from_arrays(cols, names=names), line
            line += batch.num_rows
        return
    assert scan is not None
    settings = get_settings()
    invalid: list[Any] = []

    def on_invalid(row: Any) -> str:
        invalid.append(row)
        return "skip"

    reader = pacsv.open_csv(
        source,
        read_options=pacsv.ReadOptions(
            encoding="latin1" if encoding == "latin-1" else "utf8",
            # A row longer than a block is an error to the reader; latin-1 can double in
            # length on its way to UTF-8.
            block_size=max(BLOCK_SIZE, 2 * (settings.ingest_max_line_bytes + 1)),
            use_threads=False,
        ),
        parse_options=pacsv.ParseOptions(
            delimiter=scan.delimiter, newlines_in_values=False, invalid_row_handler=on_invalid
        ),
        convert_options=pacsv.ConvertOptions(
            # Binary skips the reader's UTF-8 check: the scan has proved the file UTF-8 (or
            # the reader transcodes latin-1), and `_as_text` makes the columns strings again.
            column_types={name: pa.binary() for name in scan.header},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    line = 2  # the first data line
    try:
        for batch in reader:
            if invalid:
                break
            yield _as_text(batch), line
            line += batch.num_rows
    except pa.ArrowInvalid as exc:
        raise IngestError(f"{source.name} cannot be read as CSV near line {line}: {exc}.") from None
    if invalid:
        bad = invalid[0]
        where = f"line {bad.number}" if bad.number else f"near line {line}"
        raise IngestError(
            f"{source.name} {where} has {bad.actual_columns} fields where the header has "
            f"{bad.expected_columns}; quote values that contain {scan.delimiter!r} or fix the line."
        )


def _as_text(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Binary columns as strings, without a copy (their bytes are known to be UTF-8)."""
    columns = [c.view(pa.string()) if c.type == pa.binary() else c for c in batch.columns]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def _register(
    actor_name: str,
    policy: DatasetPolicy,
    holder_id: str,
    key: str,
    source: Path,
    fmt: str,
    encoding: str,
    relative: str,
    data_sha: str,
    size: int,
    report: dict[str, Any],
) -> IngestResult:
    with transaction() as session:
        actor = session.scalar(select(User).where(User.username == actor_name))
        dataset = session.scalar(select(Dataset).where(Dataset.name == policy.dataset))
        created_dataset = dataset is None
        if dataset is None:
            dataset = Dataset(
                name=policy.dataset,
                holder_id=uuid.UUID(holder_id),
                title=policy.title,
                description=policy.description,
                conditions=policy.conditions,
                access=policy.access,
            )
            session.add(dataset)
            session.flush()
        elif str(dataset.holder_id) != holder_id:
            raise IngestError(
                f"The dataset {policy.dataset!r} belongs to another data holder; rename it."
            )
        else:
            dataset.title, dataset.description = policy.title, policy.description
            dataset.conditions, dataset.access = policy.conditions, policy.access
        again = session.scalar(
            select(DatasetVersion).where(
                DatasetVersion.dataset_id == dataset.id, DatasetVersion.ingest_key == key
            )
        )
        if again is not None:  # a concurrent run of the same ingest finished first
            return IngestResult(
                policy.dataset,
                again.version,
                False,
                again.row_count,
                report["rejected"],
                again.path,
                report,
            )
        number = (
            session.scalar(
                select(func.max(DatasetVersion.version)).where(
                    DatasetVersion.dataset_id == dataset.id
                )
            )
            or 0
        ) + 1
        version = DatasetVersion(
            dataset_id=dataset.id,
            version=number,
            ingest_key=key,
            source_name=source.name,
            source_sha256=report["source_sha256"],
            source_format=fmt,
            source_encoding=encoding,
            policy_sha256=policy.sha256,
            path=f"{relative}/{DATA_FILE}",
            data_sha256=data_sha,
            size_bytes=size,
            row_count=report["accepted"],
            rejected_count=report["rejected_total"],
            report=json.dumps(report, sort_keys=True),
            quarantine_path=f"{relative}/{QUARANTINE_FILE}",
            temporal_coverage=policy.temporal_coverage,
            created_by=actor_name,
            encryption=ENCRYPTION,
        )
        session.add(version)
        session.flush()
        position = 0
        person = policy.person_column
        session.add(
            Variable(
                version_id=version.id,
                position=position,
                name=PERSON_COLUMN,
                type="pseudonym",
                classification=ColumnClass.PERSON_ID.value,
                generalisation=None,
                description=f"Pseudonymised {person.description or person.name}",
            )
        )
        for spec in policy.kept_columns:
            if spec.cls == ColumnClass.PERSON_ID:
                continue
            position += 1
            session.add(
                Variable(
                    version_id=version.id,
                    position=position,
                    name=spec.name,
                    type=str(output_type(spec)),
                    classification=spec.cls.value,
                    generalisation=spec.generalise.value if spec.generalise else None,
                    description=spec.description,
                )
            )
        record(
            session,
            actor if actor is not None else actor_name,
            "dataset.ingest",
            f"dataset:{policy.dataset}",
            {
                "version": number,
                "new_dataset": created_dataset,
                "source": source.name,
                "source_sha256": report["source_sha256"],
                "policy_sha256": policy.sha256,
                "data_sha256": data_sha,
                "accepted": report["accepted"],
                "rejected": report["rejected"],
            },
            dataset=policy.dataset,
        )
    return IngestResult(
        policy.dataset,
        number,
        True,
        report["accepted"],
        report["rejected"],
        f"{relative}/data.parquet",
        report,
    )


def read_quarantine(session: Any, version: DatasetVersion) -> str:
    """The quarantine file of a version, opened in memory for the data holder (CSV text)."""
    return read_quarantine_bytes(session, version).decode()
