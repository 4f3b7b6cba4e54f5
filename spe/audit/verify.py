"""Verification of the audit log against its signed checkpoints (and an external copy of them).

It recomputes every sealed event's leaf hash from the stored fields, rebuilds the Merkle tree,
and checks each signed checkpoint's root at its tree size. It names the first bad ``seq`` for
each kind of tampering: an edited, deleted, inserted or reordered event, a truncated tail, a
forged or altered checkpoint.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Engine

from spe.audit.log import AuditError
from spe.audit.merkle import MerkleTree
from spe.audit.seal import checkpoint_message
from spe.keys.signing import key_id_of, verify_signature

_EVENT_COLUMNS = "seq, time, actor, action, target, project, dataset, details, leaf_hash"


@dataclass(frozen=True)
class Finding:
    seq: int | None
    problem: str

    def __str__(self) -> str:
        where = f"seq {self.seq}: " if self.seq is not None else ""
        return where + self.problem


@dataclass
class VerifyReport:
    events_verified: int = 0
    checkpoints_verified: int = 0
    external_checkpoints_verified: int = 0
    unsealed: int = 0
    oldest_unsealed: str | None = None
    late_unsealed: int = 0
    last_checkpoint: dict[str, Any] | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def first_bad_seq(self) -> int | None:
        seqs = [f.seq for f in self.findings if f.seq is not None]
        return min(seqs) if seqs else None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events_verified": self.events_verified,
            "checkpoints_verified": self.checkpoints_verified,
            "external_checkpoints_verified": self.external_checkpoints_verified,
            "unsealed": self.unsealed,
            "oldest_unsealed": self.oldest_unsealed,
            "late_unsealed": self.late_unsealed,
            "first_bad_seq": self.first_bad_seq,
            "last_checkpoint": self.last_checkpoint,
            "findings": [{"seq": f.seq, "problem": f.problem} for f in self.findings],
        }


class _Snapshot:
    """One reading transaction on a raw driver connection, so checkpoints and events agree.

    SQLite (WAL) gives a snapshot from the first read; PostgreSQL runs REPEATABLE READ.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"

    def __enter__(self) -> _Snapshot:
        self.raw = self.engine.raw_connection()
        self.driver = cast(Any, self.raw.driver_connection)
        if self.postgres:
            import psycopg

            self.raw.rollback()
            self.driver.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        else:
            self.driver.execute("BEGIN")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.raw.rollback()
            if self.postgres:
                self.driver.isolation_level = None
        finally:
            self.raw.close()

    def all(self, query: str) -> list[tuple[Any, ...]]:
        cursor = self.raw.cursor()
        cursor.execute(query)
        rows = list(cursor.fetchall())
        cursor.close()
        return rows

    def stream(self, query: str, batch: int = 20000) -> Iterator[list[tuple[Any, ...]]]:
        if self.postgres:
            cursor = self.driver.cursor(name="spe_audit_verify")  # server-side
            cursor.itersize = batch
        else:
            cursor = self.raw.cursor()
        cursor.execute(query)
        while rows := cursor.fetchmany(batch):
            yield rows
        cursor.close()


_PARALLEL_FROM = 200_000
_ZERO = b"\x00" * 32


def _scan(
    batches: Iterator[list[tuple[Any, ...]]], expected: int, progress: Callable[[int], None] | None
) -> tuple[list[bytes], list[Finding], int]:
    """Recompute leaf hashes of events in seq order from ``expected`` on (the hot loop)."""
    from json.encoder import encode_basestring as enc

    leaves: list[bytes] = []
    append = leaves.append
    findings: list[Finding] = []
    sha256 = hashlib.sha256
    for rows in batches:
        for seq, t, actor, action, target, project, dataset, details, stored in rows:
            if seq != expected:
                if seq > expected:
                    findings.append(
                        Finding(expected, f"events {expected}..{seq - 1} are missing (deleted)")
                    )
                else:
                    findings.append(Finding(seq, "this seq appears twice"))
                # Keep positions aligned with seq so later checks name the right events.
                while expected < seq:
                    append(_ZERO)
                    expected += 1
            # Inlined "\x00" + event_bytes(...) (RFC 9162 leaf input); the sealer uses
            # event_bytes, so any drift would fail every verification.
            leaf = sha256(
                (
                    f'\x00{{"action":{enc(action)},"actor":{enc(actor)},'
                    f'"dataset":{"null" if dataset is None else enc(dataset)},'
                    f'"details":{details},'
                    f'"project":{"null" if project is None else enc(project)},'
                    f'"seq":{seq},"target":{enc(target)},"time":{enc(t)}}}'
                ).encode()
            ).digest()
            if stored is None or leaf != stored:
                findings.append(
                    Finding(
                        seq,
                        "the event does not match its sealed hash: it was edited, moved or "
                        "inserted",
                    )
                )
            append(leaf)
            expected += 1
        if progress:
            progress(len(leaves))
    return leaves, findings, expected


def _prefetch(batches: Iterator[list[tuple[Any, ...]]]) -> Iterator[list[tuple[Any, ...]]]:
    """Read the next batches in a thread while this one hashes (the driver waits on the
    network without holding the GIL)."""
    import queue
    import threading

    box: queue.Queue[Any] = queue.Queue(maxsize=4)
    done = object()

    def reader() -> None:
        try:
            for batch in batches:
                box.put(batch)
        except BaseException as exc:  # handed to the consumer below
            box.put(exc)
        box.put(done)

    thread = threading.Thread(target=reader, daemon=True, name="verify-reader")
    thread.start()
    while (item := box.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item
    thread.join()


def _pad(part: tuple[list[bytes], list[Finding], int], last: int) -> None:
    """Events missing at the end of a range: report them and keep positions aligned."""
    leaves, findings, expected = part
    if expected <= last:
        findings.append(Finding(expected, f"events {expected}..{last} are missing (deleted)"))
        leaves.extend([_ZERO] * (last - expected + 1))


def _scan_sqlite_range(
    path: str, first: int, last: int
) -> tuple[bytes, list[tuple[int, str]], int]:
    """In a forked process: hash events first..last of a SQLite log read-only."""
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cursor = conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM audit_events WHERE seq BETWEEN ? AND ? ORDER BY seq",  # noqa: S608
            (first, last),
        )

        def batches() -> Iterator[list[tuple[Any, ...]]]:
            while rows := cursor.fetchmany(20000):
                yield rows

        leaves, findings, expected = _scan(batches(), first, None)
    finally:
        conn.close()
    return b"".join(leaves), [(f.seq or 0, f.problem) for f in findings], expected


def load_external_checkpoints(path: Path) -> list[dict[str, Any]]:
    """Parse a checkpoint file; a malformed line is an error naming the line."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise AuditError(f"Cannot read the checkpoint file {path}: {exc.strerror}.") from None
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            cp: dict[str, Any] = {
                "tree_size": int(obj["tree_size"]),
                "root_hash": str(obj["root_hash"]),
                "time": str(obj["time"]),
                "key_id": str(obj["key_id"]),
                "signature": str(obj["signature"]),
            }
            bytes.fromhex(cp["root_hash"])
            bytes.fromhex(cp["signature"])
        except (ValueError, KeyError, TypeError):
            raise AuditError(
                f"The checkpoint file {path} is corrupt at line {number}: each line must be a "
                "JSON checkpoint as written by SPE; restore the file from its off-site copy."
            ) from None
        out.append(cp)
    return out


def verify_log(
    engine: Engine,
    public_key_hex: str,
    external: list[dict[str, Any]] | None = None,
    seal_bound_seconds: float = 1.0,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Verify the whole log; the report lists every problem found, in seq order."""
    report = VerifyReport()
    key_id = key_id_of(bytes.fromhex(public_key_hex))

    # 1. Checkpoints in the database: each must carry a valid signature by the audit key.
    with _Snapshot(engine) as snapshot:
        return _verify_in(
            snapshot, report, key_id, public_key_hex, external, seal_bound_seconds, progress
        )


def _verify_in(
    snapshot: _Snapshot,
    report: VerifyReport,
    key_id: str,
    public_key_hex: str,
    external: list[dict[str, Any]] | None,
    seal_bound_seconds: float,
    progress: Callable[[int], None] | None,
) -> VerifyReport:
    findings = report.findings
    checkpoints = [
        {"tree_size": int(r[0]), "root_hash": r[1], "time": r[2], "key_id": r[3], "signature": r[4]}
        for r in snapshot.all(
            "SELECT tree_size, root_hash, time, key_id, signature FROM audit_checkpoints "
            "ORDER BY tree_size"
        )
    ]
    unsealed = snapshot.all("SELECT count(*), min(time) FROM audit_events WHERE seq IS NULL")[0]
    report.unsealed, report.oldest_unsealed = int(unsealed[0]), unsealed[1]
    if report.unsealed and report.oldest_unsealed:
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seal_bound_seconds * 5 + 5)
        if report.oldest_unsealed < cutoff.strftime("%Y-%m-%dT%H:%M:%S.%fZ"):
            report.late_unsealed = report.unsealed

    def check_signature(cp: dict[str, Any], origin: str) -> bool:
        msg = checkpoint_message(cp["tree_size"], cp["root_hash"], cp["time"])
        if cp["key_id"] != key_id or not verify_signature(public_key_hex, msg, cp["signature"]):
            findings.append(
                Finding(
                    cp["tree_size"],
                    f"{origin} checkpoint at tree size {cp['tree_size']} has an invalid "
                    "signature: it was forged or altered",
                )
            )
            return False
        return True

    valid_db = [cp for cp in checkpoints if check_signature(cp, "database")]
    valid_ext = [cp for cp in (external or []) if check_signature(cp, "external")]

    # 2. Events: contiguous seq, content matching its sealed leaf hash. A large SQLite log is
    # split in two seq ranges, the first hashed by a forked process while this one hashes the
    # second (reading and hashing are both CPU-bound here; PostgreSQL needs the other core).
    top = int(snapshot.all("SELECT coalesce(max(seq), 0) FROM audit_events")[0][0])
    split = top // 2 if (not snapshot.postgres and top >= _PARALLEL_FROM) else 0
    future = None
    if split:
        import concurrent.futures
        import multiprocessing

        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("fork")
        )
        future = pool.submit(_scan_sqlite_range, str(snapshot.engine.url.database), 1, split)
    query = f"SELECT {_EVENT_COLUMNS} FROM audit_events WHERE seq > {split} ORDER BY seq"  # noqa: S608
    batches = snapshot.stream(query)
    if snapshot.postgres:
        batches = _prefetch(batches)
    second = _scan(batches, split + 1, progress)
    if future is not None:
        first_leaves, first_findings, first_end = future.result()
        pool.shutdown()
        first = (
            [first_leaves[i : i + 32] for i in range(0, len(first_leaves), 32)],
            [Finding(seq, problem) for seq, problem in first_findings],
            first_end,
        )
        _pad(first, split)
        leaves = first[0] + second[0]
        findings.extend(first[1])
    else:
        leaves = second[0]
    findings.extend(second[1])
    total = len(leaves)
    report.events_verified = total

    # 3. Roots at every checkpoint size, and the tail against the newest checkpoints. Only the
    # first mismatching checkpoint of each origin is reported: later ones cover the same damage.
    tree = MerkleTree(leaves)
    direct = sorted(f.seq for f in findings if f.seq is not None)
    for origin, cps in (("database", valid_db), ("external", valid_ext)):
        good = 0
        blamed = False
        for cp in sorted(cps, key=lambda c: c["tree_size"]):
            size = cp["tree_size"]
            if size > total:
                findings.append(
                    Finding(
                        total + 1,
                        f"the log is truncated: the {origin} checkpoint of {cp['time']} covers "
                        f"{size} events but only {total} are present",
                    )
                )
                break
            if tree.root(size).hex() == cp["root_hash"]:
                good = size
                continue
            if blamed:
                continue
            blamed = True
            # Name the first event already caught in this range, else the range's start.
            named = next((seq for seq in direct if good < seq <= size), good + 1)
            findings.append(
                Finding(
                    named,
                    f"events {good + 1}..{size} do not match the {origin} checkpoint at "
                    f"tree size {size}: an event in that range was edited, inserted, "
                    "deleted or reordered",
                )
            )
        if origin == "database":
            report.checkpoints_verified = len(cps)
        else:
            report.external_checkpoints_verified = len(cps)
    covered = max([cp["tree_size"] for cp in valid_db] or [0])
    if total > covered:
        findings.append(
            Finding(
                covered + 1,
                f"events {covered + 1}..{total} are sealed but no signed checkpoint covers "
                "them: they were inserted",
            )
        )
    if checkpoints:
        report.last_checkpoint = checkpoints[-1]
    findings.sort(key=lambda f: (f.seq is None, f.seq or 0))
    return report
