"""Recording releases for the audit and loading a holder's history, in the caller's transaction.

``record_release`` stores a released output's cells (hashed person sets) and brings the holder's
compact history up to date in the same transaction; ``load_history`` reads that compact form,
or rebuilds it from the recorded cells when it is missing or behind. In sum spaces it also
keeps what each person contributed (server-computed outputs only), sealed under the platform
key (spe.keys.sealing) with a context naming the row, and ``load_value_maps`` opens them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from spe.audit import record, state_change
from spe.db.base import utcnow
from spe.sdc.audit.history import COUNT_SPACE, History, NewCell, ReleaseInfo, sum_space
from spe.sdc.audit.models import (
    SDCHistorySnapshot,
    SDCRelease,
    SDCReleaseCells,
    SDCReleaseValues,
    SDCValueMap,
)
from spe.sdc.audit.values import ValueMap
from spe.sdc.errors import SDCError

ACTOR = "system:sdc-audit"


def _cells_bytes(cells: Sequence[NewCell]) -> bytes:
    offsets = np.zeros(len(cells) + 1, dtype=np.int64)
    np.cumsum([len(c.persons) for c in cells], out=offsets[1:])
    meta = [{"kind": c.kind, "variable": c.variable, "label": c.label} for c in cells]
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        offsets=offsets,
        persons=np.concatenate([c.persons for c in cells]) if cells else np.zeros(0, np.int64),
        meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
    )
    return buffer.getvalue()


def _cells_from_bytes(data: bytes) -> list[NewCell]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            offsets, persons = npz["offsets"], npz["persons"]
            meta = json.loads(npz["meta"].tobytes().decode())
    except (OSError, ValueError, KeyError) as exc:
        raise SDCError(
            f"Recorded release cells cannot be read ({exc}); the audit cannot go on without them."
        ) from None
    return [
        NewCell(m["kind"], persons[offsets[i] : offsets[i + 1]], m["variable"], m["label"])
        for i, m in enumerate(meta)
    ]


def _values_context(cells_id: object) -> str:
    return f"sdc-release-values:{cells_id}"


def _map_context(holder: str, space: str) -> str:
    return f"sdc-value-map:{holder}:{space}"


def _seal(data: bytes, context: str) -> bytes:
    from spe.keys.sealing import seal_secret

    return seal_secret(data, context)


def _open(data: bytes, context: str) -> bytes:
    from spe.keys.sealing import open_secret

    return open_secret(data, context)


def _values_bytes(cells: Sequence[NewCell]) -> bytes | None:
    """The cells' values aligned with ``_cells_bytes``'s persons (NaN for a cell without), or
    None when no cell carries any."""
    if not any(c.values is not None for c in cells):
        return None
    parts = [
        np.asarray(c.values, np.float64)
        if c.values is not None
        else np.full(len(c.persons), np.nan)
        for c in cells
    ]
    buffer = io.BytesIO()
    np.savez(buffer, values=np.concatenate(parts) if parts else np.zeros(0))
    return buffer.getvalue()


def _with_values(cells: list[NewCell], data: bytes) -> list[NewCell]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        values = npz["values"]
    out, at = [], 0
    for c in cells:
        out.append(
            NewCell(c.kind, c.persons, c.variable, c.label, values[at : at + len(c.persons)])
        )
        at += len(c.persons)
    return out


def _info(row: SDCRelease) -> ReleaseInfo:
    return ReleaseInfo(row.release_id, row.project, row.title, row.released_at, row.output_name)


def _space_of(variable: str | None) -> str:
    return COUNT_SPACE if variable is None else sum_space(variable)


def _rebuild(session: Session, holder: str, space: str) -> History:
    history = History.empty(holder, space)
    rows = session.execute(
        select(SDCReleaseCells.data, SDCRelease)
        .join(SDCRelease, SDCRelease.id == SDCReleaseCells.release)
        .where(SDCReleaseCells.holder == holder, SDCReleaseCells.space == space)
        .order_by(SDCReleaseCells.seq)
    )
    for data, release in rows:
        history = history.extended(_info(release), _cells_from_bytes(data))
    return history


def _load(session: Session, holder: str, space: str, *, lock: bool) -> tuple[History, int]:
    query = select(SDCHistorySnapshot).where(
        SDCHistorySnapshot.holder == holder, SDCHistorySnapshot.space == space
    )
    if lock:
        query = query.with_for_update()
    snapshot = session.scalars(query).one_or_none()
    count = session.scalar(
        select(func.count())
        .select_from(SDCReleaseCells)
        .where(SDCReleaseCells.holder == holder, SDCReleaseCells.space == space)
    )
    count = int(count or 0)
    if snapshot is not None and snapshot.n_releases == count:
        return History.from_bytes(snapshot.data), count
    return _rebuild(session, holder, space), count


def load_history(session: Session, holder: str, *, variable: str | None = None) -> History:
    """Everything ``holder`` has released, from any project, in one space: counts (and the
    counts of means) when ``variable`` is None, else sums (and means) of ``variable``."""
    history, _ = _load(session, holder, _space_of(variable), lock=False)
    return history


def _rebuild_values(session: Session, holder: str, space: str) -> ValueMap:
    rows = session.execute(
        select(SDCReleaseCells.data, SDCReleaseValues.data, SDCReleaseValues.cells)
        .join(SDCReleaseValues, SDCReleaseValues.cells == SDCReleaseCells.id)
        .where(SDCReleaseCells.holder == holder, SDCReleaseCells.space == space)
        .order_by(SDCReleaseCells.seq)
    )
    cells: list[NewCell] = []
    for data, sealed, cells_id in rows:
        opened = _open(sealed, _values_context(cells_id))
        cells += _with_values(_cells_from_bytes(data), opened)
    return ValueMap.of_cells(cells, space)


def _load_values(session: Session, holder: str, space: str, count: int) -> ValueMap:
    row = session.get(SDCValueMap, (holder, space))
    if row is not None and row.n_releases == count:
        return ValueMap.from_bytes(_open(row.data, _map_context(holder, space)))
    return _rebuild_values(session, holder, space)


def load_value_maps(session: Session, holder: str, cells: Sequence[NewCell]) -> dict[str, ValueMap]:
    """Each person's released value in every sum space the cells are statistics in (the
    holder's, from any project): what the p % rule of ``audit_output`` reads. Never shown."""
    spaces = sorted({s for c in cells for s in c.spaces if s != COUNT_SPACE})
    out = {}
    for space in spaces:
        count = session.scalar(
            select(func.count())
            .select_from(SDCReleaseCells)
            .where(SDCReleaseCells.holder == holder, SDCReleaseCells.space == space)
        )
        out[space] = _load_values(session, holder, space, int(count or 0))
    return out


def load_histories(session: Session, holder: str, cells: Sequence[NewCell]) -> dict[str, History]:
    """The histories of every space the cells are statistics in (for ``audit_output``)."""
    spaces = sorted({s for c in cells for s in c.spaces})
    return {s: _load(session, holder, s, lock=False)[0] for s in spaces}


def _record_values(
    session: Session,
    holder: str,
    space: str,
    count: int,
    cells_row: SDCReleaseCells,
    chosen: Sequence[NewCell],
) -> None:
    """Seal the cells' values and bring the space's value map up to date (count + 1)."""
    data = _values_bytes(chosen)
    if data is not None:
        session.flush()  # the cells row's id names the sealed values' context
        session.add(
            SDCReleaseValues(cells=cells_row.id, data=_seal(data, _values_context(cells_row.id)))
        )
    current = _load_values(session, holder, space, count)
    updated = current.merged(ValueMap.of_cells(chosen, space)) if data is not None else current
    sealed = _seal(updated.to_bytes(), _map_context(holder, space))
    row = session.get(SDCValueMap, (holder, space))
    if row is None:
        session.add(SDCValueMap(holder=holder, space=space, n_releases=count + 1, data=sealed))
    else:
        row.n_releases, row.data, row.updated_at = count + 1, sealed, utcnow()


@state_change("sdc.release_record")
def record_release(
    session: Session, holder: str, release_meta: ReleaseInfo, cells: Sequence[NewCell]
) -> bool:
    """Record a released output's cells for ``holder``'s audit; False if already recorded.

    Idempotent per (holder, release id, output name), so a task that runs twice records once.
    Concurrent recordings for one holder queue on the history row (PostgreSQL) or the write
    lock (SQLite); the (holder, space, seq) key refuses a lost update either way.
    """
    existing = session.scalars(
        select(SDCRelease).where(
            SDCRelease.holder == holder,
            SDCRelease.release_id == release_meta.release_id,
            SDCRelease.output_name == release_meta.output_name,
        )
    ).one_or_none()
    if existing is not None:
        return False
    row = SDCRelease(
        holder=holder,
        project=release_meta.project,
        release_id=release_meta.release_id,
        title=release_meta.title,
        released_at=release_meta.released_at,
        output_name=release_meta.output_name,
    )
    session.add(row)
    session.flush()
    spaces = sorted({s for c in cells if len(c.persons) for s in c.spaces})
    for space in spaces:
        chosen = [c for c in cells if space in c.spaces and len(c.persons)]
        history, count = _load(session, holder, space, lock=True)
        cells_row = SDCReleaseCells(
            release=row.id, holder=holder, space=space, seq=count, data=_cells_bytes(chosen)
        )
        session.add(cells_row)
        if space != COUNT_SPACE:
            _record_values(session, holder, space, count, cells_row, chosen)
        history = history.extended(release_meta, chosen)
        snapshot = session.get(SDCHistorySnapshot, (holder, space))
        if snapshot is None:
            session.add(
                SDCHistorySnapshot(
                    holder=holder, space=space, n_releases=count + 1, data=history.to_bytes()
                )
            )
        else:
            snapshot.n_releases = count + 1
            snapshot.data = history.to_bytes()
            snapshot.updated_at = utcnow()
    record(
        session,
        ACTOR,
        "sdc.release_record",
        f"{holder}/{release_meta.release_id}/{release_meta.output_name}",
        {"cells": len(cells), "spaces": spaces},
        project=release_meta.project,
    )
    return True
