"""The audit log stays whole and ordered under concurrent writers and sealers, on both databases.

Eight writer threads each record events one per transaction while two sealer threads seal in a
loop: no event is lost or sealed twice, seq runs 1..N without gaps, every sealed event keeps
its place and content, and the log verifies. A state change and its event commit or roll back
together, and a transaction that changes data without recording an event is refused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text

from spe.audit import AuditError, record
from spe.audit.models import AuditCheckpoint, AuditEvent
from spe.audit.seal import seal_all, seal_once
from spe.audit.verify import load_external_checkpoints, verify_log
from spe.config import get_settings
from spe.db import get_engine, readonly, transaction
from spe.keys.signing import audit_public_key

WRITERS = 8
PER_WRITER = 150


def _event_count() -> int:
    with readonly() as s:
        return int(s.scalar(select(func.count()).select_from(AuditEvent)) or 0)


def _sealed_contents() -> dict[int, tuple[Any, ...]]:
    """seq -> everything an event is, for the events sealed so far."""
    e = AuditEvent
    with readonly() as s:
        rows = s.execute(
            select(
                e.seq, e.time, e.actor, e.action, e.target, e.project, e.details, e.leaf_hash
            ).where(e.seq.is_not(None))
        ).all()
    return {r[0]: (*r[1:-1], bytes(r[-1]) if r[-1] is not None else None) for r in rows}


def _run_threads(targets: list[Callable[[], None]]) -> list[threading.Thread]:
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for t in threads:
        t.start()
    return threads


def test_concurrent_writers_and_sealers_lose_nothing_and_keep_order(spe_env: Any) -> None:
    before = _event_count()
    errors: list[BaseException] = []
    writers_done = threading.Event()
    half_written = threading.Semaphore(0)
    seals = [0, 0]

    def writer(w: int) -> None:
        try:
            for i in range(PER_WRITER):
                with transaction() as s:
                    record(s, f"system:writer{w}", "test.write", f"w{w}-{i}", {"w": w, "i": i})
                if i == PER_WRITER // 2:
                    half_written.release()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def sealer(n: int) -> None:
        try:
            while not writers_done.is_set():
                if seal_once(batch_max=97) is not None:
                    seals[n] += 1
                else:
                    time.sleep(0.002)
        except BaseException as exc:
            errors.append(exc)

    started = time.monotonic()
    sealers = _run_threads([lambda n=n: sealer(n) for n in range(2)])
    writers = _run_threads([lambda w=w: writer(w) for w in range(WRITERS)])

    # Mid-run, once every writer is half way: remember what each sealed seq holds.
    for _ in range(WRITERS):
        assert half_written.acquire(timeout=60), errors
    snapshot = _sealed_contents()

    for t in writers:
        t.join(timeout=120)
    writers_done.set()
    for t in sealers:
        t.join(timeout=60)
    assert not errors, errors
    assert not any(t.is_alive() for t in writers + sealers)
    seal_all()
    elapsed = time.monotonic() - started

    total = before + WRITERS * PER_WRITER
    assert _event_count() == total, "events were lost or duplicated"
    final = _sealed_contents()
    assert sorted(final) == list(range(1, total + 1)), "seq must run 1..N, each once"
    assert all(content[-1] is not None for content in final.values()), "unhashed sealed event"
    assert snapshot, "the sealers sealed nothing while the writers ran"
    changed = [seq for seq, content in snapshot.items() if final[seq] != content]
    assert not changed, f"sealed events changed place or content: {changed[:10]}"
    assert seals[0] and seals[1], f"both sealers should have sealed something: {seals}"

    # Every writer's events were sealed in the order it committed them, each exactly once.
    by_target = {content[3]: seq for seq, content in final.items()}
    for w in range(WRITERS):
        seqs = [by_target[f"w{w}-{i}"] for i in range(PER_WRITER)]
        assert seqs == sorted(seqs), f"writer {w}'s events are out of order"

    with readonly() as s:
        public = audit_public_key(s)
        sizes = list(
            s.scalars(select(AuditCheckpoint.tree_size).order_by(AuditCheckpoint.tree_size))
        )
    assert sizes[-1] == total
    assert len(sizes) == len(set(sizes))
    external = load_external_checkpoints(get_settings().checkpoint_file)
    assert sorted(cp["tree_size"] for cp in external) == sizes
    report = verify_log(get_engine(), public, external)
    assert report.ok, report.findings[:5]
    assert report.events_verified == total
    assert report.external_checkpoints_verified == len(sizes)
    assert elapsed < 20, f"took {elapsed:.1f} s"


# --- no change without its event, no event without its change -----------------------------------


def _org_names() -> set[str]:
    from spe.accounts.models import Organisation

    with readonly() as s:
        return set(s.scalars(select(Organisation.name)))


def test_transaction_that_raises_after_record_keeps_neither_change_nor_event(
    spe_env: Any,
) -> None:
    from spe.accounts.models import Organisation, OrgKind

    events = _event_count()
    with pytest.raises(RuntimeError, match="boom"), transaction() as s:
        s.add(Organisation(name="Doomed Agency", kind=OrgKind.DATA_HOLDER))
        record(s, "system:test", "org.create", "org:doomed", {"name": "Doomed Agency"})
        s.flush()  # both rows are sent to the database before the failure
        assert s.scalar(select(func.count()).select_from(AuditEvent)) == events + 1
        raise RuntimeError("boom")
    assert "Doomed Agency" not in _org_names()
    assert _event_count() == events


def _add_orm(s: Any) -> None:
    from spe.accounts.models import Organisation, OrgKind

    s.add(Organisation(name="Silent Agency", kind=OrgKind.DATA_HOLDER))


def _update_orm(s: Any) -> None:
    from spe.accounts.models import Organisation

    s.scalar(select(Organisation).where(Organisation.name == "Quiet Agency")).name = "Silent Agency"


def _insert_core(s: Any) -> None:
    import uuid

    from spe.accounts.models import Organisation

    s.execute(
        insert(Organisation).values(id=uuid.uuid4(), name="Silent Agency", kind="data_holder")
    )


def _insert_text(s: Any) -> None:
    s.execute(text("UPDATE organisations SET name = 'Silent Agency' WHERE name = 'Quiet Agency'"))


def _update_via_connection(s: Any) -> None:
    from spe.accounts.models import Organisation

    s.connection().execute(
        Organisation.__table__.update()
        .where(Organisation.__table__.c.name == "Quiet Agency")
        .values(name="Silent Agency")
    )


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(_add_orm, id="orm-add"),
        pytest.param(_update_orm, id="orm-update"),
        pytest.param(_insert_core, id="core-insert"),
        pytest.param(_insert_text, id="sql-text"),
        pytest.param(
            _update_via_connection,
            id="connection-execute",
        ),
    ],
)
def test_transaction_changing_data_without_record_is_refused_and_leaves_nothing(
    spe_env: Any, change: Callable[[Any], None]
) -> None:
    from spe.accounts.models import Organisation, OrgKind

    with transaction() as s:
        s.add(Organisation(name="Quiet Agency", kind=OrgKind.DATA_HOLDER))
        record(s, "system:test", "org.create", "org:quiet", {"name": "Quiet Agency"})
    events = _event_count()
    orgs = _org_names()

    with pytest.raises(AuditError, match="without recording an audit event"), transaction() as s:
        change(s)
    assert _org_names() == orgs
    assert _event_count() == events
