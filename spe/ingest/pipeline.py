"""Ingest: a registry extract (CSV or Parquet) becomes a pseudonymised, versioned dataset.

Streamed in batches with pyarrow (memory stays flat in file size). Person identifiers are
validated and replaced at once by the holder-level pseudonym; raw identifiers are never stored.
Rejected rows, each with its reason, go to a quarantine file sealed for the data holder. The
output is written under a temporary name and renamed into place, and only then entered in the
catalogue with its audit event: a killed ingest leaves no visible dataset, and the same input
always gives the same version, byte for byte.
"""

from __future__ import annotations

import codecs
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
    ColumnClass,
    ColumnPolicy,
    ColumnType,
    DatasetPolicy,
    Generalisation,
)
from spe.keys.pseudonyms import (
    HOLDER_PSEUDONYM,
    HOLDER_QUARANTINE,
    ensure_scope_key,
    holder_pseudonymiser,
    quarantine_sealer,
)
from spe.storage import data_storage, sha256_file

PERSON_COLUMN = "person_id"
BLOCK_SIZE = 1 << 23  # bytes of CSV per batch: ~400k rows, bounded memory
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


def _line_of(data: bytes, offset: int, lines_before: int) -> int:
    return lines_before + data.count(b"\n", 0, offset) + 1


def _check_line_lengths(
    path: Path, chunk: bytes, current: int, lines_before: int, max_line: int
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


def scan_csv(
    path: Path,
    declared: str,
    delimiter: str | None,
    max_line: int,
    tick: Callable[[], None] | None = None,
) -> ScanResult:
    """One pass over the raw bytes: hash, encoding check, longest line, header."""
    size = path.stat().st_size
    if size == 0:
        raise IngestError(f"{path.name} is empty (0 bytes); export the extract again.")
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    utf8_ok, non_ascii = True, False
    first_bad_line = 0
    lines = 0
    current_line = 0  # length of the line in progress
    header_bytes = b""
    with open(path, "rb") as fh:
        while chunk := fh.read(_SCAN_CHUNK):
            if tick:
                tick()
            digest.update(chunk)
            if not header_bytes:
                header_bytes = chunk[: chunk.find(b"\n") + 1 or len(chunk)]
            # ASCII needs no decoding, unless a multi-byte character is still open.
            if utf8_ok and (not chunk.isascii() or decoder.getstate()[0]):
                non_ascii = True
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    utf8_ok = False
                    first_bad_line = _line_of(chunk, exc.start, lines)
            current_line = _check_line_lengths(path, chunk, current_line, lines, max_line)
            lines += chunk.count(b"\n")
    if utf8_ok:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            utf8_ok, first_bad_line = False, lines + 1
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


# --- batches -----------------------------------------------------------------------------------


class _Dedup:
    """Remembers the person numbers seen so far, for one-row-per-person data.

    Seen numbers are kept as a few sorted runs of decreasing size (merged when a run grows to
    half its elder's size), so each batch costs a sort of itself plus a binary search per run.
    """

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []

    def duplicates(self, values: np.ndarray) -> np.ndarray:
        """Mask of values already seen (earlier batches, or earlier in this batch)."""
        dup = np.zeros(len(values), dtype=bool)
        # A stable sort keeps each value's first occurrence first within the batch.
        order = np.argsort(values, kind="stable")
        ordered = values[order]
        repeat = np.concatenate(([False], ordered[1:] == ordered[:-1]))
        for run in self.runs:
            pos = np.searchsorted(run, ordered)
            pos[pos == len(run)] = 0
            repeat |= run[pos] == ordered
        dup[order[repeat]] = True
        self.runs.append(ordered[~repeat])
        while len(self.runs) > 1 and 2 * len(self.runs[-1]) >= len(self.runs[-2]):
            newer = self.runs.pop()
            # Two sorted runs: the stable sort (timsort) merges them in linear time.
            self.runs[-1] = np.sort(np.concatenate((self.runs[-1], newer)), kind="stable")
        return dup


def _empty_to_null(col: pa.Array, trim: bool = False) -> pa.Array:
    if trim:
        col = pc.utf8_trim_whitespace(col)
    return pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col)


def _convert(col: pa.Array, spec: ColumnPolicy) -> tuple[pa.Array, np.ndarray]:
    """Typed column and a mask of values that did not convert."""
    col = _empty_to_null(col)
    present = pc.is_valid(col)
    if spec.type == ColumnType.STRING:
        return col, np.zeros(len(col), dtype=bool)
    if spec.type == ColumnType.INT:
        ok = pc.match_substring_regex(col, _INT)
        bad = pc.and_(present, pc.invert(pc.fill_null(ok, False)))
        out = pc.cast(pc.if_else(bad, pa.scalar(None, pa.string()), col), pa.int64())
    elif spec.type == ColumnType.FLOAT:
        ok = pc.match_substring_regex(col, _FLOAT)
        bad = pc.and_(present, pc.invert(pc.fill_null(ok, False)))
        out = pc.cast(pc.if_else(bad, pa.scalar(None, pa.string()), col), pa.float64())
    else:  # DATE
        parsed = pc.strptime(col, format="%Y-%m-%d", unit="s", error_is_null=True)
        bad = pc.and_(present, pc.is_null(parsed))
        out = pc.cast(parsed, pa.date32())
    return out, np.asarray(pc.fill_null(bad, False).to_numpy(zero_copy_only=False), dtype=bool)


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
    accepted: int = 0
    rows: int = 0

    def process(self, batch: pa.RecordBatch, first_line: int) -> tuple[pa.Table | None, list[str]]:
        """Accepted rows as an output table, and quarantine lines for the rejected."""
        n = batch.num_rows
        self.rows += n
        person = self.policy.person_column
        raw_ids = _empty_to_null(batch.column(person.name), trim=True)
        if self.history is not None:
            raw_ids = self.history.apply(raw_ids)
        reason_codes, kind_codes = ids.check_fnr_array(raw_ids, self.rules)
        reject = np.asarray(reason_codes != 0)
        why = np.full(n, "", dtype=object)
        for code in np.unique(reason_codes[reject]):
            why[reason_codes == code] = ids.REASON_CODES[int(code)].value
        columns: dict[str, pa.Array] = {}
        for spec in self.policy.kept_columns:
            if spec.cls == ColumnClass.PERSON_ID:
                continue
            typed, bad = _convert(batch.column(spec.name), spec)
            new_bad = bad & ~reject
            why[new_bad] = f"{BAD_VALUE}:{spec.name}"
            reject |= bad
            if spec.required:
                missing = np.asarray(pc.is_null(typed).to_numpy(zero_copy_only=False)) & ~reject
                why[missing] = f"{MISSING_REQUIRED}:{spec.name}"
                reject |= missing
            if spec.generalise is not None:
                typed = generalise(typed, spec.generalise)
            columns[spec.name] = typed
        keep = ~reject
        numbers = np.zeros(n, dtype=np.int64)
        if keep.any():
            numbers[keep] = np.asarray(
                pc.cast(pc.filter(raw_ids, pa.array(keep)), pa.int64()).to_numpy(), dtype=np.int64
            )
        if self.dedup is not None and keep.any():
            dup = np.zeros(n, dtype=bool)
            dup[keep] = self.dedup.duplicates(numbers[keep])
            why[dup] = DUPLICATE_PERSON
            keep &= ~dup
        quarantine: list[str] = []
        rejected = np.flatnonzero(~keep)
        if len(rejected):
            for reason, count in Counter(why[rejected].tolist()).items():
                self.counts[reason.split(":")[0] if reason else "rejected"] += count
            quarantine = _quarantine_lines(batch, rejected, why, first_line)
        kept = int(keep.sum())
        self.accepted += kept
        if not kept:
            return None, quarantine
        mask = pa.array(keep)
        context = _context_lut()[kind_codes[keep]]
        pseudo = self.pseudonymiser.pseudonyms(numbers[keep], context)
        arrays = [
            pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(16), kept, [None, pa.py_buffer(pseudo.tobytes())]
            )
        ]
        for fld in list(self.schema)[1:]:
            arrays.append(pc.filter(columns[fld.name], mask).cast(fld.type))
        return pa.Table.from_arrays(arrays, schema=self.schema), quarantine


def _quarantine_lines(
    batch: pa.RecordBatch, rows: np.ndarray, why: np.ndarray, first_line: int
) -> list[str]:
    taken = batch.take(pa.array(rows))
    values = [taken.column(i).to_pylist() for i in range(taken.num_columns)]
    out = []
    for j, row in enumerate(rows):
        fields = [("" if v[j] is None else str(v[j])) for v in values]
        buffer = io.StringIO()
        csv.writer(buffer).writerow([first_line + int(row), why[row], *fields])
        out.append(buffer.getvalue())
    return out


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
    """Ingest ``source`` under ``policy`` as ``actor_name``; idempotent for the same input."""
    settings = get_settings()
    started = time.perf_counter()
    source = Path(source)
    if not source.exists():
        raise IngestError(f"There is no file {source}.")
    with transaction() as session:
        actor = session.scalar(select(User).where(User.username == actor_name))
        if actor is None:
            raise NotFound(f"There is no user named {actor_name!r}.")
        holder = _holder(session, policy)
        check_can(session, actor, Action.DATASET_INGEST, Target(organisation=holder))
        holder_id = str(holder.id)
        for purpose in (HOLDER_PSEUDONYM, HOLDER_QUARANTINE):
            if ensure_scope_key(session, purpose, holder_id):
                record(session, "system:keys", "key.create", f"key:{purpose}:{holder_id}")
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
        source_sha, encoding, total = sha256_file(source), "binary", parquet.metadata.num_rows
    key = ingest_key(source_sha, policy, history)

    with transaction() as session:
        existing = session.scalar(
            select(DatasetVersion)
            .join(Dataset)
            .where(Dataset.name == policy.dataset, DatasetVersion.ingest_key == key)
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
        sealer = quarantine_sealer(session, holder_id)

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
        _Dedup() if policy.one_row_per_person else None,
        schema,
    )
    q_context = f"quarantine:{policy.dataset}:{key}"
    with storage.atomic_dir(relative) as tmp:
        writer = pq.ParquetWriter(
            tmp / "data.parquet",
            schema,
            compression="zstd",
            # Pseudonyms are random: dictionaries and statistics would only cost time.
            use_dictionary=[f.name for f in schema if f.name != PERSON_COLUMN],
            write_statistics=[f.name for f in schema if f.name != PERSON_COLUMN],
        )
        quarantine = open(tmp / "quarantine.sealed", "wb")  # noqa: SIM115 - closed below
        frame = 0
        try:
            for batch, first_line in _batches(
                source, fmt, policy, encoding, scan if fmt == "csv" else None
            ):
                table, q_lines = batcher.process(batch, first_line)
                if table is not None:
                    writer.write_table(table)
                if q_lines:
                    _write_frame(quarantine, sealer, q_context, frame, "".join(q_lines).encode())
                    frame += 1
                if progress:
                    progress(batcher.rows, total)
            _write_frame(quarantine, sealer, q_context, frame, b"", final=True)
        finally:
            writer.close()
            quarantine.close()
        data_sha = sha256_file(tmp / "data.parquet")
        size = (tmp / "data.parquet").stat().st_size
    rejected = dict(sorted(batcher.counts.items()))
    report = {
        "rows_read": batcher.rows,
        "accepted": batcher.accepted,
        "rejected": rejected,
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
        "seconds": round(time.perf_counter() - started, 3),
    }
    return _register(
        actor_name, policy, holder_id, key, source, fmt, encoding, relative, data_sha, size, report
    )


def _write_frame(
    fh: Any, sealer: Any, context: str, index: int, data: bytes, final: bool = False
) -> None:
    sealed = sealer.seal(data, f"{context}:{index}:{'final' if final else 'more'}")
    fh.write(len(sealed).to_bytes(8, "big") + (b"F" if final else b"M") + sealed)


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
                    col = pc.cast(col, pa.string())
                    if name == policy.person_column.name:
                        col = pc.utf8_lpad(col, 11, "0")
                cols.append(col)
            yield pa.RecordBatch.from_arrays(cols, names=names), line
            line += batch.num_rows
        return
    assert scan is not None
    invalid: list[Any] = []

    def on_invalid(row: Any) -> str:
        invalid.append(row)
        return "skip"

    reader = pacsv.open_csv(
        source,
        read_options=pacsv.ReadOptions(
            encoding="latin1" if encoding == "latin-1" else "utf8",
            block_size=BLOCK_SIZE,
            use_threads=False,
        ),
        parse_options=pacsv.ParseOptions(
            delimiter=scan.delimiter, newlines_in_values=False, invalid_row_handler=on_invalid
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string() for name in scan.header},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    line = 2  # the first data line
    try:
        for batch in reader:
            if invalid:
                break
            yield batch, line
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
            path=f"{relative}/data.parquet",
            data_sha256=data_sha,
            size_bytes=size,
            row_count=report["accepted"],
            rejected_count=report["rejected_total"],
            report=json.dumps(report, sort_keys=True),
            quarantine_path=f"{relative}/quarantine.sealed",
            temporal_coverage=policy.temporal_coverage,
            created_by=actor_name,
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
    """The quarantine file of a version, opened for the data holder (CSV text)."""
    storage = data_storage()
    if not version.quarantine_path:
        return ""
    sealer = quarantine_sealer(session, str(version.dataset.holder_id))
    context = f"quarantine:{version.dataset.name}:{version.ingest_key}"
    blob = storage.path(version.quarantine_path).read_bytes()
    out, offset, index = [], 0, 0
    while offset < len(blob):
        length = int.from_bytes(blob[offset : offset + 8], "big")
        kind = blob[offset + 8 : offset + 9]
        sealed = blob[offset + 9 : offset + 9 + length]
        final = kind == b"F"
        out.append(sealer.open(sealed, f"{context}:{index}:{'final' if final else 'more'}"))
        offset += 9 + length
        index += 1
        if final:
            if offset != len(blob):
                raise IngestError("The quarantine file has data after its end; it was altered.")
            return b"".join(out).decode()
    raise IngestError("The quarantine file is truncated; it was altered or cut short.")
