"""record() in a Core transaction (events that change nothing else): committed with it, rolled
back with it, sealed and verified like any other event; refused outside a transaction."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from spe.audit import AuditError, record
from spe.audit.models import AuditEvent
from spe.audit.seal import seal_all
from spe.audit.verify import verify_log
from spe.db import readonly
from spe.db.session import get_engine
from spe.keys.signing import audit_public_key


def _count() -> int:
    with get_engine().connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(AuditEvent)))


def test_event_on_a_connection_commits_and_rolls_back_with_its_transaction(spe_env):
    engine = get_engine()
    before = _count()
    with engine.begin() as conn:
        record(conn, "alice", "user.login", "user:alice", {"source": "test"})
    assert _count() == before + 1
    with pytest.raises(RuntimeError), engine.begin() as conn:
        record(conn, "alice", "user.login", "user:alice", {"source": "test"})
        raise RuntimeError("the caller's transaction fails")
    assert _count() == before + 1
    seal_all()
    with readonly() as s:
        report = verify_log(engine, audit_public_key(s))
    assert report.ok and report.events_verified == before + 1


def test_event_on_a_connection_without_a_transaction_is_refused(spe_env):
    with get_engine().connect() as conn, pytest.raises(AuditError, match="open transaction"):
        conn.commit()
        record(conn, "alice", "user.login", "user:alice")


def test_unclean_text_is_refused_with_a_sentence(spe_env):
    with get_engine().begin() as conn:
        with pytest.raises(AuditError, match=r"target .* not clean text"):
            record(conn, "alice", "user.login", "user:\x00alice")
        with pytest.raises(AuditError, match=r"actor .* not clean text"):
            record(conn, "al\udc80ice", "user.login", "user:alice")
        with pytest.raises(AuditError, match=r"noun\.verb"):
            record(conn, "alice", "Login", "user:alice")
