"""Sealing: committed events get their place in the Merkle tree under a signed checkpoint.

Writers never wait on a chain head: they only insert. One sealer at a time (a database lock)
takes the unsealed events in insertion order, gives them consecutive ``seq`` numbers and leaf
hashes, extends the tree from the last checkpoint's frontier, and signs the new checkpoint.
The checkpoint is then appended to the checkpoint file meant to be shipped off the machine.
"""

from __future__ import annotations

import json
import os
import time as _time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, insert, select, text

from spe.audit.canonical import event_bytes
from spe.audit.log import AuditError, now_text
from spe.audit.merkle import Frontier, leaf_hash
from spe.audit.models import AuditCheckpoint, AuditEvent
from spe.config import get_settings
from spe.db.session import SPESession, session_maker
from spe.keys.signing import checkpoint_signer

# An arbitrary constant naming the sealer's advisory lock on PostgreSQL.
_SEAL_LOCK = 0x5E_A1_0001


@dataclass(frozen=True)
class Checkpoint:
    tree_size: int
    root_hash: str
    time: str
    key_id: str
    signature: str
    sealed: int = 0  # events sealed by this checkpoint (not part of the signed statement)

    def to_json(self) -> dict[str, object]:
        return {
            "tree_size": self.tree_size,
            "root_hash": self.root_hash,
            "time": self.time,
            "key_id": self.key_id,
            "signature": self.signature,
        }


def checkpoint_message(tree_size: int, root_hex: str, time: str) -> bytes:
    """The exact bytes an audit checkpoint signature covers."""
    return f"SPE audit checkpoint v1\n{tree_size}\n{root_hex}\n{time}\n".encode()


def _lock(session: SPESession) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SEAL_LOCK})
    # SQLite: the transaction began with BEGIN IMMEDIATE, which already excludes other writers.


def seal_once(batch_max: int | None = None) -> Checkpoint | None:
    """Seal up to ``batch_max`` pending events; returns the new checkpoint, or None if idle."""
    settings = get_settings()
    batch_max = batch_max or settings.seal_batch_max
    table = AuditEvent.__table__
    with session_maker()() as session, session.begin():
        _lock(session)
        last = session.execute(
            select(AuditCheckpoint.tree_size, AuditCheckpoint.frontier)
            .order_by(AuditCheckpoint.tree_size.desc())
            .limit(1)
        ).first()
        frontier = Frontier.from_json(json.loads(last.frontier)) if last else Frontier()
        rows = session.execute(
            select(
                table.c.id,
                table.c.time,
                table.c.actor,
                table.c.action,
                table.c.target,
                table.c.project,
                table.c.dataset,
                table.c.details,
            )
            .where(table.c.seq.is_(None))
            .order_by(table.c.id)
            .limit(batch_max)
        ).all()
        if not rows:
            return None
        taken = session.scalar(select(func.max(table.c.seq)))
        if taken is not None and taken > frontier.size:
            raise AuditError(
                f"The audit log has sealed events beyond its last checkpoint (seq {taken} > "
                f"{frontier.size}); run `spe audit verify` before sealing again."
            )
        ids, seqs, leaves = [], [], []
        seq = frontier.size
        for row_id, t, actor, action, target, project, dataset, details in rows:
            seq += 1
            leaf = leaf_hash(event_bytes(seq, t, actor, action, target, project, dataset, details))
            frontier.append(leaf)
            ids.append(row_id)
            seqs.append(seq)
            leaves.append(leaf)
        _write_seals(session, ids, seqs, leaves)
        signer = checkpoint_signer(session)
        stamp = now_text()
        root_hex = frontier.root().hex()
        checkpoint = Checkpoint(
            tree_size=frontier.size,
            root_hash=root_hex,
            time=stamp,
            key_id=signer.key_id,
            signature=signer.sign(checkpoint_message(frontier.size, root_hex, stamp)),
            sealed=len(rows),
        )
        session.connection().execute(
            insert(AuditCheckpoint.__table__),  # type: ignore[arg-type]
            {**checkpoint.to_json(), "frontier": json.dumps(frontier.to_json())},
        )
    append_checkpoint_file(checkpoint)
    return checkpoint


def _write_seals(session: SPESession, ids: list[int], seqs: list[int], leaves: list[bytes]) -> None:
    """Give sealed events their seq and leaf hash: one set-based statement per batch."""
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            "UPDATE audit_events AS e SET seq = v.seq, leaf_hash = v.leaf "
            "FROM (SELECT unnest(%(ids)s::bigint[]) AS id, unnest(%(seqs)s::bigint[]) AS seq, "
            "unnest(%(leaves)s::bytea[]) AS leaf) AS v WHERE e.id = v.id",
            {"ids": ids, "seqs": seqs, "leaves": leaves},
        )
    else:
        conn.exec_driver_sql(
            "UPDATE audit_events SET seq = ?, leaf_hash = ? WHERE id = ?",
            list(zip(seqs, leaves, ids, strict=True)),
        )


def seal_all() -> list[Checkpoint]:
    """Seal until nothing is pending."""
    done = []
    while (checkpoint := seal_once()) is not None:
        done.append(checkpoint)
    return done


def append_checkpoint_file(checkpoint: Checkpoint, path: Path | None = None) -> None:
    """Append one line to the checkpoint file (fsynced), for shipping to a witness."""
    path = Path(path or get_settings().checkpoint_file)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(checkpoint.to_json(), sort_keys=True) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def run_sealer(
    interval: float | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_seal: Callable[[Checkpoint], None] | None = None,
) -> None:
    """Seal every ``interval`` seconds (default: the configured bound) until told to stop."""
    settings = get_settings()
    interval = interval or settings.seal_interval_seconds
    while not should_stop():
        started = _time.monotonic()
        # Seal what is pending; keep going only while batches come back full (a backlog),
        # so that under steady load there is about one checkpoint per interval.
        while (checkpoint := seal_once()) is not None:
            if on_seal:
                on_seal(checkpoint)
            if checkpoint.sealed < settings.seal_batch_max:
                break
        _time.sleep(max(0.01, interval - (_time.monotonic() - started)))
