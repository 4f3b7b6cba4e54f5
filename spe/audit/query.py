"""Reading the audit log: filters, export (JSON lines, CSV), tail, and proofs for third parties.

Proofs are self-contained JSON documents: the event, its leaf index, the signed checkpoint and
the RFC 9162 audit path, checkable offline with ``spe audit check-proof`` and the public key.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session

from spe.audit.canonical import event_bytes
from spe.audit.log import AuditError
from spe.audit.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from spe.audit.models import AuditCheckpoint, AuditEvent
from spe.audit.seal import checkpoint_message
from spe.keys.signing import key_id_of, verify_signature

CSV_COLUMNS = ["seq", "time", "actor", "action", "target", "project", "dataset", "details"]


def parse_time(text: str, option: str) -> str:
    """An ISO date or time from the command line, as the log's fixed-width UTC text."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise AuditError(
            f"{option} {text!r} is not a date or time; use e.g. 2026-11-23 or 2026-11-23T10:00Z."
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class EventFilter:
    since: str | None = None
    until: str | None = None
    actor: str | None = None
    project: str | None = None
    action: str | None = None
    dataset: str | None = None

    def apply(self, query: Select[Any]) -> Select[Any]:
        e = AuditEvent
        if self.since:
            query = query.where(e.time >= self.since)
        if self.until:
            query = query.where(e.time < self.until)
        if self.actor:
            query = query.where(e.actor == self.actor)
        if self.project:
            query = query.where(e.project == self.project)
        if self.dataset:
            query = query.where(e.dataset == self.dataset)
        if self.action:
            if self.action.endswith(".*") or "." not in self.action:
                prefix = self.action.removesuffix(".*")
                query = query.where(or_(e.action == prefix, e.action.startswith(prefix + ".")))
            else:
                query = query.where(e.action == self.action)
        return query


def event_dict(row: AuditEvent) -> dict[str, Any]:
    return {
        "seq": row.seq,
        "time": row.time,
        "actor": row.actor,
        "action": row.action,
        "target": row.target,
        "project": row.project,
        "dataset": row.dataset,
        "details": json.loads(row.details),
        "sealed": row.seq is not None,
    }


def iter_events(
    session: Session, filt: EventFilter, batch: int = 5000, limit: int | None = None
) -> Iterator[AuditEvent]:
    """Events in log order: sealed ones by seq, then the not yet sealed by insertion."""
    last_seq, last_id, sent = 0, 0, 0
    sealed_done = False
    while True:
        if not sealed_done:
            query = filt.apply(
                select(AuditEvent).where(AuditEvent.seq > last_seq).order_by(AuditEvent.seq)
            )
        else:
            query = filt.apply(
                select(AuditEvent)
                .where(and_(AuditEvent.seq.is_(None), AuditEvent.id > last_id))
                .order_by(AuditEvent.id)
            )
        rows = session.scalars(query.limit(batch)).all()
        for row in rows:
            yield row
            sent += 1
            if limit is not None and sent >= limit:
                return
        if len(rows) < batch:
            if sealed_done:
                return
            sealed_done = True
            continue
        if not sealed_done:
            last_seq = rows[-1].seq or 0
        else:
            last_id = rows[-1].id


def export_events(session: Session, filt: EventFilter, fmt: str, out: TextIO) -> int:
    """Write matching events as JSON lines or CSV; returns how many were written."""
    if fmt not in ("jsonl", "csv"):
        raise AuditError(f"Unknown export format {fmt!r}; use jsonl or csv.")
    count = 0
    writer = None
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow([*CSV_COLUMNS, "sealed"])
    for row in iter_events(session, filt):
        if writer is not None:
            writer.writerow(
                [
                    row.seq if row.seq is not None else "",
                    row.time,
                    row.actor,
                    row.action,
                    row.target,
                    row.project or "",
                    row.dataset or "",
                    row.details,
                    "yes" if row.seq is not None else "no",
                ]
            )
        else:
            out.write(json.dumps(event_dict(row), ensure_ascii=False, sort_keys=True) + "\n")
        count += 1
    return count


def last_events(session: Session, n: int, filt: EventFilter | None = None) -> list[AuditEvent]:
    filt = filt or EventFilter()
    rows = session.scalars(
        filt.apply(select(AuditEvent)).order_by(AuditEvent.id.desc()).limit(n)
    ).all()
    return list(reversed(rows))


def _checkpoint_at_or_after(session: Session, size: int | None) -> AuditCheckpoint:
    query = select(AuditCheckpoint).order_by(AuditCheckpoint.tree_size.desc()).limit(1)
    if size is not None:
        query = (
            select(AuditCheckpoint)
            .where(AuditCheckpoint.tree_size >= size)
            .order_by(AuditCheckpoint.tree_size)
            .limit(1)
        )
    cp = session.scalar(query)
    if cp is None:
        raise AuditError("No signed checkpoint covers that event yet; run `spe audit seal`.")
    return cp


def _tree(session: Session, size: int) -> MerkleTree:
    leaves = list(
        session.scalars(
            select(AuditEvent.leaf_hash)
            .where(AuditEvent.seq.is_not(None), AuditEvent.seq <= size)
            .order_by(AuditEvent.seq)
        )
    )
    if len(leaves) != size or any(leaf is None for leaf in leaves):
        raise AuditError("The log does not hold every sealed event; run `spe audit verify`.")
    return MerkleTree([bytes(leaf) for leaf in leaves if leaf is not None])


def _cp_json(cp: AuditCheckpoint) -> dict[str, Any]:
    return {
        "tree_size": cp.tree_size,
        "root_hash": cp.root_hash,
        "time": cp.time,
        "key_id": cp.key_id,
        "signature": cp.signature,
    }


def inclusion_proof(session: Session, seq: int) -> dict[str, Any]:
    """A proof that event ``seq`` is in the log, against the newest signed checkpoint."""
    event = session.scalar(select(AuditEvent).where(AuditEvent.seq == seq))
    if event is None:
        raise AuditError(f"There is no sealed event with seq {seq}.")
    cp = _checkpoint_at_or_after(session, None)
    tree = _tree(session, cp.tree_size)
    return {
        "kind": "spe-audit-inclusion-proof/v1",
        "event": {k: v for k, v in event_dict(event).items() if k != "sealed"},
        "leaf_index": seq - 1,
        "checkpoint": _cp_json(cp),
        "audit_path": [h.hex() for h in tree.inclusion_proof(seq - 1, cp.tree_size)],
    }


def consistency_proof(session: Session, old: int, new: int) -> dict[str, Any]:
    """A proof that the log at tree size ``new`` extends the log at ``old`` (both checkpoints)."""
    cps = {
        cp.tree_size: cp
        for cp in session.scalars(
            select(AuditCheckpoint).where(AuditCheckpoint.tree_size.in_([old, new]))
        )
    }
    for size in (old, new):
        if size not in cps:
            raise AuditError(f"There is no signed checkpoint at tree size {size}.")
    if not 0 < old <= new:
        raise AuditError("Give two checkpoint sizes with OLD <= NEW.")
    tree = _tree(session, new)
    return {
        "kind": "spe-audit-consistency-proof/v1",
        "old": _cp_json(cps[old]),
        "new": _cp_json(cps[new]),
        "proof": [h.hex() for h in tree.consistency_proof(old, new)],
    }


def _check_cp(cp: dict[str, Any], public_hex: str) -> None:
    msg = checkpoint_message(int(cp["tree_size"]), cp["root_hash"], cp["time"])
    if cp["key_id"] != key_id_of(bytes.fromhex(public_hex)) or not verify_signature(
        public_hex, msg, cp["signature"]
    ):
        raise AuditError(
            f"The checkpoint at tree size {cp['tree_size']} is not signed by this public key."
        )


def check_proof(proof: dict[str, Any], public_hex: str) -> str:
    """Check a proof document offline; returns a sentence on success, raises AuditError."""
    try:
        kind = proof["kind"]
        if kind == "spe-audit-inclusion-proof/v1":
            cp, ev = proof["checkpoint"], proof["event"]
            _check_cp(cp, public_hex)
            from spe.audit.canonical import canonical_details

            data = event_bytes(
                int(ev["seq"]),
                ev["time"],
                ev["actor"],
                ev["action"],
                ev["target"],
                ev["project"],
                ev["dataset"],
                canonical_details(ev["details"]),
            )
            ok = verify_inclusion(
                leaf_hash(data),
                int(proof["leaf_index"]),
                int(cp["tree_size"]),
                [bytes.fromhex(h) for h in proof["audit_path"]],
                bytes.fromhex(cp["root_hash"]),
            )
            if not ok or int(ev["seq"]) != int(proof["leaf_index"]) + 1:
                raise AuditError("The event is NOT in the log signed by this checkpoint.")
            return (
                f"Event seq {ev['seq']} is in the log of {cp['tree_size']} events signed at "
                f"{cp['time']}."
            )
        if kind == "spe-audit-consistency-proof/v1":
            old, new = proof["old"], proof["new"]
            _check_cp(old, public_hex)
            _check_cp(new, public_hex)
            ok = verify_consistency(
                int(old["tree_size"]),
                int(new["tree_size"]),
                bytes.fromhex(old["root_hash"]),
                bytes.fromhex(new["root_hash"]),
                [bytes.fromhex(h) for h in proof["proof"]],
            )
            if not ok:
                raise AuditError("The newer checkpoint does NOT extend the older one.")
            return (
                f"The log of {new['tree_size']} events extends the log of {old['tree_size']} "
                "events: nothing in between was changed."
            )
    except (KeyError, TypeError, ValueError):
        raise AuditError(
            "The proof document is malformed; produce it with `spe audit prove`."
        ) from None
    raise AuditError(f"Unknown proof kind {proof.get('kind')!r}.")
